//! Serving a broker: `run(listener, config, shutdown)` opens the log, serves
//! the client and admin gRPC services on the listener and keeps the broker
//! registered with its NameServers until `shutdown` resolves.

use std::future::Future;
use std::time::Duration;

use sofamq_proto::admin::broker_admin_server::BrokerAdminServer;
use sofamq_proto::v2::messaging_service_server::MessagingServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminService;
use crate::broker::Broker;
use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::register::Registrar;
use crate::service::BrokerService;

/// Opens the broker described by `config` (recovering its log) and serves it on
/// `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: BrokerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BrokerError> {
    let repl = match config.replication.listen {
        Some(a) => Some(bind_replication(a).await?),
        None => None,
    };
    let broker = open(config).await?;
    serve_with(broker, listener, repl, shutdown, None).await
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

/// Serves an opened broker without a replication port. `registered`, when given, turns
/// true once at least one NameServer accepted the broker's registration.
pub async fn serve(
    broker: Broker,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    registered: Option<watch::Sender<bool>>,
) -> Result<(), BrokerError> {
    serve_with(broker, listener, None, shutdown, registered).await
}

/// Serves an opened broker: client gRPC on `listener`, replication (master side, and the
/// follower when a slave) on `repl_listener`.
pub async fn serve_with(
    broker: Broker,
    listener: TcpListener,
    repl_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    registered: Option<watch::Sender<bool>>,
) -> Result<(), BrokerError> {
    // TLS files (client port, replication, namesrv) are checked before anything starts.
    broker.config().check_tls()?;
    let builder =
        sofamq_server::tls::apply(tonic::transport::Server::builder(), &broker.config().tls)
            .map_err(|e| BrokerError::Internal(format!("client port {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| BrokerError::Internal(format!("listener address: {e}")))?;
    let endpoint = broker.advertised(bound);
    let http = match broker.config().http_listen {
        Some(a) => {
            let l = TcpListener::bind(a)
                .await
                .map_err(|e| BrokerError::Internal(format!("binding HTTP port {a}: {e}")))?;
            if let Ok(a) = l.local_addr() {
                broker.metrics().set_http_addr(a);
            }
            Some(l)
        }
        None => None,
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
    let registered = registered.unwrap_or_else(|| watch::channel(false).0);
    let registrar = Registrar::new(broker.clone(), endpoint.clone(), repl_endpoint.clone());
    let reg_task = tokio::spawn(registrar.run(stop_rx, registered));

    // One token ends the server, open Telemetry streams, replication and the registrar.
    let token = CancellationToken::new();
    broker.repl().start(repl_listener, token.clone());
    tokio::spawn(crate::timer::run(broker.clone(), token.clone()));
    tokio::spawn(crate::txn::run(broker.clone(), token.clone()));
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
    let signal = token.clone();
    let waiter = tokio::spawn(async move {
        shutdown.await;
        signal.cancel();
    });

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
        r = &mut serve => r,
        () = async { token.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("connections still open after the shutdown grace; stopping anyway");
            Ok(())
        }
    };
    token.cancel();
    waiter.abort();
    let _ = stop_tx.send(true);
    let _ = reg_task.await;
    result.map_err(|e| BrokerError::Internal(format!("gRPC server: {e}")))
}
