//! Serving a controller node, in the shape every SofaMQ server has: `run(listener,
//! config, shutdown)`. [`serve`] is the same for a node the caller started (it prints its
//! ready line or keeps the handle), [`serve_with`] for connections from any [`Acceptor`].

use std::io;
use std::time::Duration;

use sofamq_server::Shutdown;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::ControllerConfig;
use crate::network::{Acceptor, AsyncStream};
use crate::node::{Controller, StartError};
use crate::rpc::{FrameError, MIN_VERSION, Request, Response, negotiate, read_frame, write_frame};
use crate::types::ControllerError;

/// How long a connection may sit idle between requests.
const IDLE: Duration = Duration::from_secs(120);

/// Why [`run`] ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The node could not start (configuration, data directory, Raft).
    #[error("starting the controller: {0}")]
    Start(#[from] StartError),
    /// Serving the listener failed.
    #[error("serving the controller: {0}")]
    Serve(#[from] io::Error),
}

/// Starts the node `config` describes and serves it on `listener` until `shutdown`
/// trips; returns once the server and the node have stopped.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: ControllerConfig,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    // The node and its server stop together, on `shutdown` or when serving fails, without
    // tripping `shutdown` for the other servers in the process.
    let own = shutdown.child();
    let controller = Controller::start(config, own.clone()).await?;
    let served = serve(listener, controller.clone(), own.clone()).await;
    own.trigger();
    controller.stopped().await;
    Ok(served?)
}

/// Serves `controller` (started by [`Controller::start`]) on a bound tokio listener until
/// `shutdown` trips.
pub async fn serve(
    listener: tokio::net::TcpListener,
    controller: Controller,
    shutdown: Shutdown,
) -> io::Result<()> {
    serve_with(listener, controller, shutdown).await
}

/// Serves `controller` on connections from any acceptor (a simulator's listener, say).
/// Returns after `shutdown` trips, once every connection task has ended; the acceptor is
/// dropped (the port freed) before it returns.
pub async fn serve_with<A: Acceptor>(
    mut acceptor: A,
    controller: Controller,
    shutdown: Shutdown,
) -> io::Result<()> {
    let shutdown: CancellationToken = shutdown.token().clone();
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = acceptor.accept() => match r {
                Ok((stream, peer)) => {
                    tasks.spawn(connection(stream, peer, controller.clone(), shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "controller accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    drop(acceptor);
    tasks.shutdown().await;
    Ok(())
}

async fn connection(
    mut s: Box<dyn AsyncStream>,
    peer: String,
    ctl: Controller,
    shutdown: CancellationToken,
) {
    let limits = ctl.config().frame_limits();
    // Every connection starts in version 1; a first request Hello may raise it.
    let mut version = MIN_VERSION;
    let mut first = true;
    loop {
        let req = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = read_frame::<_, Request>(&mut s, limits, Some(IDLE), version) => r,
        };
        let mut next = version;
        let resp = match req {
            Ok(Request::Hello { min, max }) if first => {
                match negotiate(limits.versions, (min, max)) {
                    Ok(v) => {
                        next = v;
                        Response::Hello { version: v }
                    }
                    Err(why) => {
                        tracing::warn!(%peer, "{why}");
                        Response::Error(ControllerError::Transport(why))
                    }
                }
            }
            Ok(req) => ctl.handle(req).await,
            Err(FrameError::Closed) => return,
            Err(e @ FrameError::Decode(_)) => {
                tracing::debug!(%peer, error = %e, "bad controller request");
                Response::Error(ControllerError::Transport(e.to_string()))
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "controller connection dropped");
                return;
            }
        };
        let fatal = matches!(resp, Response::Error(_));
        if let Err(e) = write_frame(&mut s, &resp, limits, version).await {
            tracing::debug!(%peer, error = %e, "controller reply failed");
            return;
        }
        if fatal {
            return;
        }
        first = false;
        version = next;
    }
}
