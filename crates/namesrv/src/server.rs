//! Serving: one listener carries both `MessagingService` and
//! `NameServerAdmin`; a background task expires silent brokers.

use std::sync::Arc;
use std::time::Instant;

use sofamq_proto::namesrv::name_server_admin_server::NameServerAdminServer;
use sofamq_proto::v2::messaging_service_server::MessagingServiceServer;
use sofamq_server::Shutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::AdminService;
use crate::config::NamesrvConfig;
use crate::error::NamesrvError;
use crate::messaging::NamesrvMessaging;
use crate::proxy::Proxy;
use crate::registry::{Registry, RegistryLimits};

/// The sockets a name server serves on.
#[derive(Debug)]
pub struct Listeners {
    /// Client and broker gRPC (`MessagingService` and `NameServerAdmin`).
    pub grpc: TcpListener,
    /// `/metrics`, `/health` and the console; when `None`, [`run`] binds
    /// `config.http_listen` if that is set.
    pub http: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(grpc: TcpListener) -> Self {
        Self { grpc, http: None }
    }
}

/// Serves the name server on `listeners` until `shutdown` trips.
///
/// On shutdown, open Telemetry streams are closed, connections are given
/// `shutdown_grace_ms` to finish, and the function returns.
pub async fn run(
    listeners: impl Into<Listeners>,
    config: NamesrvConfig,
    shutdown: Shutdown,
) -> Result<(), NamesrvError> {
    let Listeners {
        grpc: listener,
        http,
    } = listeners.into();
    let http = match (http, config.http_listen) {
        (Some(l), _) => Some(l),
        (None, Some(addr)) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| NamesrvError::HttpBind { addr, source })?,
        ),
        (None, None) => None,
    };
    config.validate()?;
    // TLS files are checked before anything starts.
    let builder = sofamq_server::tls::apply(tonic::transport::Server::builder(), &config.tls)?;
    let addr = listener.local_addr().map_err(NamesrvError::LocalAddr)?;
    let registry = Arc::new(Registry::new(RegistryLimits::from(&config)));
    // Stops this server's tasks with `shutdown`, or alone when the transport fails.
    let token = shutdown.child().token().clone();

    let scanner = tokio::spawn(expiry_loop(
        Arc::clone(&registry),
        config.clone(),
        token.clone(),
    ));

    let proxy = match config.proxy.enabled {
        true => Some(Arc::new(
            Proxy::new(Arc::clone(&registry), config.proxy.clone()).map_err(NamesrvError::Proxy)?,
        )),
        false => None,
    };
    let mut messaging = NamesrvMessaging::new(
        Arc::clone(&registry),
        config.session.clone(),
        config.max_telemetry_streams,
        token.clone(),
    );
    if let Some(p) = &proxy {
        messaging = messaging.with_proxy(Arc::clone(p), addr);
    }
    let messaging = MessagingServiceServer::new(messaging)
        .max_decoding_message_size(config.max_grpc_decode_bytes)
        .max_encoding_message_size(config.max_grpc_decode_bytes);
    let admin = NameServerAdminServer::new(AdminService::new(Arc::clone(&registry)))
        .max_decoding_message_size(config.max_grpc_decode_bytes)
        .max_encoding_message_size(config.max_grpc_decode_bytes);

    let conns = Arc::new(sofamq_server::metrics::Connections::default());
    if let Some(l) = http {
        let o = Arc::new(NamesrvObservable {
            registry: Arc::clone(&registry),
            conns: Arc::clone(&conns),
            labels: sofamq_server::metrics::labels(&[("addr", &addr.to_string())]),
            proxy: proxy.clone(),
        });
        let console = config
            .console
            .enabled
            .then(|| crate::console::router(Arc::clone(&registry), config.console.clone()));
        info!(%addr, http = ?l.local_addr().ok(), console = config.console.enabled, "name server HTTP endpoint (/metrics, /health, /console/)");
        sofamq_server::http::spawn_with(l, o, console, token.clone());
    }

    info!(%addr, tls = config.tls.enabled(), proxy = config.proxy.enabled, "name server listening");
    let serve = builder
        .tcp_nodelay(true)
        .max_concurrent_streams(config.max_concurrent_streams_per_connection)
        .add_service(messaging)
        .add_service(admin)
        .serve_with_incoming_shutdown(
            sofamq_server::metrics::counted(
                sofamq_server::net::incoming_limited(listener, config.max_connections_per_ip),
                conns,
            ),
            token.clone().cancelled_owned(),
        );
    tokio::pin!(serve);

    let grace = config.shutdown_grace();
    let result = tokio::select! {
        r = &mut serve => r,
        () = async { token.cancelled().await; tokio::time::sleep(grace).await } => {
            warn!(%addr, grace_ms = config.shutdown_grace_ms, "connections still open after shutdown grace; stopping anyway");
            Ok(())
        }
    };
    token.cancel();
    if let Err(e) = scanner.await {
        warn!(error = %e, "expiry task ended abnormally");
    }
    info!(%addr, "name server stopped");
    result.map_err(|source| NamesrvError::Transport { addr, source })
}

/// Periodically drops brokers silent past their expiry until `token` is
/// cancelled.
async fn expiry_loop(registry: Arc<Registry>, config: NamesrvConfig, token: CancellationToken) {
    let mut tick = tokio::time::interval(config.scan_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = tick.tick() => {
                let expired = registry.expire(Instant::now());
                if !expired.is_empty() {
                    info!(count = expired.len(), remaining = registry.len(), "expired silent brokers");
                }
            }
        }
    }
}

/// What the name server's `/metrics` and `/health` show.
struct NamesrvObservable {
    registry: Arc<Registry>,
    conns: Arc<sofamq_server::metrics::Connections>,
    labels: String,
    proxy: Option<Arc<Proxy>>,
}

impl sofamq_server::http::Observable for NamesrvObservable {
    fn metrics(&self) -> String {
        let mut t = sofamq_server::metrics::Text::new();
        let l = &self.labels;
        t.single(
            "sofamq_namesrv_up",
            "gauge",
            "1 while the name server serves.",
            l,
            1.0,
        );
        t.single(
            "sofamq_namesrv_brokers",
            "gauge",
            "Registered broker members (all clusters).",
            l,
            self.registry.len() as f64,
        );
        t.single(
            "sofamq_connections_open",
            "gauge",
            "Open client gRPC connections.",
            l,
            self.conns.open() as f64,
        );
        t.single(
            "sofamq_connections_accepted_total",
            "counter",
            "Client gRPC connections accepted since start.",
            l,
            self.conns.accepted() as f64,
        );
        if let Some(p) = &self.proxy {
            let c = &p.counters;
            for (name, help, v) in [
                (
                    "sofamq_proxy_forwarded_total",
                    "Client calls forwarded to a broker (each try counts).",
                    &c.forwarded,
                ),
                (
                    "sofamq_proxy_held_total",
                    "Client calls held at least once while their broker group had no reachable master.",
                    &c.held,
                ),
                (
                    "sofamq_proxy_hold_expired_total",
                    "Client calls whose hold ran out (answered HA_NOT_AVAILABLE or the last broker answer).",
                    &c.hold_expired,
                ),
                (
                    "sofamq_proxy_moved_total",
                    "Sends moved to another broker group: theirs took no writes (too few in-sync replicas) and held none of them.",
                    &c.moved,
                ),
            ] {
                t.single(
                    name,
                    "counter",
                    help,
                    l,
                    v.load(std::sync::atomic::Ordering::Relaxed) as f64,
                );
            }
        }
        t.finish()
    }

    fn health(&self) -> (bool, String) {
        (
            true,
            format!(
                "{{\"status\":\"ok\",\"role\":\"namesrv\",\"brokers\":{}}}",
                self.registry.len()
            ),
        )
    }
}
