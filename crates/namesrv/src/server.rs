//! Serving: one listener carries both `MessagingService` and
//! `NameServerAdmin`; a background task expires silent brokers.

use std::sync::Arc;
use std::time::Instant;

use sofamq_proto::namesrv::name_server_admin_server::NameServerAdminServer;
use sofamq_proto::v2::messaging_service_server::MessagingServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::AdminService;
use crate::config::NamesrvConfig;
use crate::error::NamesrvError;
use crate::messaging::NamesrvMessaging;
use crate::registry::{Registry, RegistryLimits};

/// Serves the name server on `listener` until `shutdown` completes.
///
/// On shutdown, open Telemetry streams are closed, connections are given
/// `shutdown_grace_ms` to finish, and the function returns.
pub async fn run(
    listener: TcpListener,
    config: NamesrvConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NamesrvError> {
    config.validate()?;
    let addr = listener.local_addr().map_err(NamesrvError::LocalAddr)?;
    let registry = Arc::new(Registry::new(RegistryLimits::from(&config)));
    let token = CancellationToken::new();

    let signal = token.clone();
    let waiter = tokio::spawn(async move {
        shutdown.await;
        signal.cancel();
    });

    let scanner = tokio::spawn(expiry_loop(
        Arc::clone(&registry),
        config.clone(),
        token.clone(),
    ));

    let messaging = NamesrvMessaging::new(
        Arc::clone(&registry),
        config.session.clone(),
        config.max_telemetry_streams,
        token.clone(),
    );
    let messaging = MessagingServiceServer::new(messaging)
        .max_decoding_message_size(config.max_grpc_decode_bytes)
        .max_encoding_message_size(config.max_grpc_decode_bytes);
    let admin = NameServerAdminServer::new(AdminService::new(Arc::clone(&registry)))
        .max_decoding_message_size(config.max_grpc_decode_bytes)
        .max_encoding_message_size(config.max_grpc_decode_bytes);

    info!(%addr, "name server listening");
    let serve = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(config.max_concurrent_streams_per_connection)
        .add_service(messaging)
        .add_service(admin)
        .serve_with_incoming_shutdown(
            crate::net::incoming(listener),
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
    waiter.abort();
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
