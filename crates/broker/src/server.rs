//! Serving a broker: `run(listeners, config, shutdown)` opens the log, serves
//! the client and admin gRPC services on the listeners and keeps the broker
//! registered with its NameServers until `shutdown` trips; `serve(listeners,
//! broker, shutdown)` is the same for a broker the caller opened.

use std::time::Duration;

use sofamq_proto::admin::broker_admin_server::BrokerAdminServer;
use sofamq_proto::v2::messaging_service_server::MessagingServiceServer;
use sofamq_server::Shutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::AdminService;
use crate::broker::Broker;
use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::register::Registrar;
use crate::service::BrokerService;

/// The sockets a broker serves on.
#[derive(Debug)]
pub struct Listeners {
    /// Client and admin gRPC.
    pub grpc: TcpListener,
    /// Replication (the master side; a slave's, used once it is promoted). When `None`,
    /// `replication.listen` is bound if set.
    pub replication: Option<TcpListener>,
    /// `/metrics` and `/health`. When `None`, `http_listen` is bound if set.
    pub http: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(grpc: TcpListener) -> Self {
        Self {
            grpc,
            replication: None,
            http: None,
        }
    }
}

/// Opens the broker described by `config` (recovering its log) and serves it on
/// `listeners` until `shutdown` trips.
pub async fn run(
    listeners: impl Into<Listeners>,
    config: BrokerConfig,
    shutdown: Shutdown,
) -> Result<(), BrokerError> {
    let mut listeners = listeners.into();
    // A taken replication port is reported before the log is recovered.
    if listeners.replication.is_none()
        && let Some(a) = config.replication.listen
    {
        listeners.replication = Some(bind_replication(a).await?);
    }
    let broker = open(config).await?;
    serve(listeners, broker, shutdown).await
}

/// Binds the replication port (`replication.listen`).
pub async fn bind_replication(addr: std::net::SocketAddr) -> Result<TcpListener, BrokerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| BrokerError::Internal(format!("binding replication port {addr}: {e}")))
}

/// Opens a broker off the async runtime (recovery reads the whole log tail).
pub async fn open(config: BrokerConfig) -> Result<Broker, BrokerError> {
    // A bad TLS file stops the broker before its log is opened.
    config.check_tls()?;
    tokio::task::spawn_blocking(move || Broker::open(config))
        .await
        .map_err(|e| BrokerError::Internal(format!("open task failed: {e}")))?
}

/// [`run`] for a broker already opened (by [`open`]): the caller keeps a handle to
/// create topics, watch its role or wait for [`Broker::registered`]. Serves client gRPC,
/// replication (master side, and the follower when a slave), the HTTP endpoint, the
/// timer, transaction and controller loops and the NameServer registration until
/// `shutdown` trips.
pub async fn serve(
    listeners: impl Into<Listeners>,
    broker: Broker,
    shutdown: Shutdown,
) -> Result<(), BrokerError> {
    let Listeners {
        grpc: listener,
        replication: repl_listener,
        http,
    } = listeners.into();
    // TLS files (client port, replication, namesrv) are checked before anything starts.
    broker.config().check_tls()?;
    let builder =
        sofamq_server::tls::apply(tonic::transport::Server::builder(), &broker.config().tls)
            .map_err(|e| BrokerError::Internal(format!("client port {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| BrokerError::Internal(format!("listener address: {e}")))?;
    let endpoint = broker.advertised(bound);
    let http = match (http, broker.config().http_listen) {
        (Some(l), _) => Some(l),
        (None, Some(a)) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|e| BrokerError::Internal(format!("binding HTTP port {a}: {e}")))?,
        ),
        (None, None) => None,
    };
    if let Some(a) = http.as_ref().and_then(|l| l.local_addr().ok()) {
        broker.metrics().set_http_addr(a);
    }
    let repl_listener = match (repl_listener, broker.config().replication.listen) {
        (Some(l), _) => Some(l),
        (None, Some(a)) => Some(bind_replication(a).await?),
        (None, None) => None,
    };
    let limits = broker.config().limits.clone();
    let repl_endpoint = match &repl_listener {
        Some(l) => {
            let a = l
                .local_addr()
                .map_err(|e| BrokerError::Internal(format!("replication address: {e}")))?;
            broker
                .config()
                .replication
                .advertise
                .clone()
                .unwrap_or_else(|| a.to_string())
        }
        None => String::new(),
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let registrar = Registrar::new(broker.clone(), endpoint.clone(), repl_endpoint.clone());
    let reg_task = tokio::spawn(registrar.run(stop_rx));

    // One token ends the server, open Telemetry streams, replication and the registrar:
    // it trips with `shutdown`, or alone when the gRPC transport fails.
    let token = shutdown.child().token().clone();
    broker.repl().start(repl_listener, token.clone());
    tokio::spawn(crate::timer::service::run(broker.clone(), token.clone()));
    tokio::spawn(crate::txn::service::run(broker.clone(), token.clone()));
    if broker.config().replication.controlled() {
        let addrs = sofamq_controller::BrokerAddrs {
            grpc: endpoint.clone(),
            repl: repl_endpoint,
        };
        tokio::spawn(crate::control::run(broker.clone(), addrs, token.clone()));
    }
    if let Some(l) = http {
        sofamq_server::http::spawn(
            l,
            std::sync::Arc::new(crate::metrics::Observed(broker.clone())),
            token.clone(),
        );
    }

    let messaging = MessagingServiceServer::new(BrokerService::new(broker.clone(), token.clone()))
        .max_decoding_message_size(limits.max_grpc_message_bytes)
        .max_encoding_message_size(limits.max_grpc_message_bytes);
    // Every admin RPC (present and future) needs an admin user when ACL is on.
    let admin = tonic::service::interceptor::InterceptedService::new(
        BrokerAdminServer::new(AdminService::new(broker.clone()))
            .max_decoding_message_size(limits.max_grpc_message_bytes)
            .max_encoding_message_size(limits.max_grpc_message_bytes),
        broker.acl().admin_interceptor(),
    );

    tracing::info!(
        broker = %broker.config().broker_name,
        id = broker.repl().broker_id(),
        role = broker.repl().role().as_str(),
        %endpoint,
        tls = broker.config().tls.enabled(),
        "broker serving"
    );
    let serve = builder
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .add_service(messaging)
        .add_service(admin)
        .serve_with_incoming_shutdown(
            sofamq_server::metrics::counted(
                sofamq_server::net::incoming_limited(listener, limits.max_connections_per_ip),
                broker.metrics().connections(),
            ),
            token.clone().cancelled_owned(),
        );
    tokio::pin!(serve);
    let grace = Duration::from_millis(limits.shutdown_grace_ms);
    let result = tokio::select! {
        biased;
        r = &mut serve => r,
        () = async { token.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("connections still open after the shutdown grace; stopping anyway");
            Ok(())
        }
    };
    token.cancel();
    let _ = stop_tx.send(true);
    let _ = reg_task.await;
    result.map_err(|e| BrokerError::Internal(format!("gRPC server: {e}")))
}
