//! The operator HTTP endpoint every SofaMQ server can expose next to its gRPC port:
//! `GET /metrics` (Prometheus text format) and `GET /health` (small JSON; 200 healthy,
//! 503 not). Served by axum on a listener the caller bound.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What a server exposes over HTTP.
pub trait Observable: Send + Sync + 'static {
    /// The Prometheus text document.
    fn metrics(&self) -> String;
    /// `(healthy, JSON body)`.
    fn health(&self) -> (bool, String);
}

async fn metrics(State(o): State<Arc<dyn Observable>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        o.metrics(),
    )
        .into_response()
}

async fn health(State(o): State<Arc<dyn Observable>>) -> Response {
    let (ok, body) = o.health();
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Serves `/metrics` and `/health` for `o` on `listener` until `token` is cancelled.
pub async fn serve(
    listener: TcpListener,
    o: Arc<dyn Observable>,
    token: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, o, None, token).await
}

/// [`serve`] plus the routes of `extra` (the name server's console).
pub async fn serve_with(
    listener: TcpListener,
    o: Arc<dyn Observable>,
    extra: Option<Router>,
    token: CancellationToken,
) -> std::io::Result<()> {
    let mut app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(o);
    if let Some(extra) = extra {
        app = app.merge(extra);
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(token.cancelled_owned())
        .await
}

/// Spawns [`serve`], logging (not propagating) a failure: the HTTP endpoint is an
/// operator aid and never takes the server down.
pub fn spawn(listener: TcpListener, o: Arc<dyn Observable>, token: CancellationToken) {
    spawn_with(listener, o, None, token);
}

/// [`spawn`] with extra routes (see [`serve_with`]).
pub fn spawn_with(
    listener: TcpListener,
    o: Arc<dyn Observable>,
    extra: Option<Router>,
    token: CancellationToken,
) {
    let addr = listener.local_addr().ok();
    tokio::spawn(async move {
        if let Err(e) = serve_with(listener, o, extra, token).await {
            tracing::warn!(?addr, error = %e, "HTTP endpoint stopped");
        }
    });
}
