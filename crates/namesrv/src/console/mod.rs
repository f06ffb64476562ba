//! The web console: `/console/` on the name server's HTTP address.
//!
//! A single page (hand-written HTML, CSS and JS under `assets/`, embedded with
//! `include_str!`, no front-end libraries) over a small JSON API under
//! `/console/api/`. The API calls the brokers' admin gRPC service
//! (`sofamq.admin.v1.BrokerAdmin`) for every broker group this name server knows,
//! the controller's status when `[console] controllers` is set, and the brokers' own
//! Prometheus `/metrics` for the charts. With ACL on every API call needs a session
//! of an admin user (login form, `HttpOnly`/`SameSite=Strict` cookie) and the user's
//! credentials sign the broker calls; state-changing calls also need the session's
//! CSRF token in `x-csrf-token` and a same-origin `Origin` (see [`auth`]).

mod acl;
mod api;
mod assets;
mod auth;
mod brokers;
mod messages;
mod scrape;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use crate::config::ConsoleConfig;
use crate::registry::Registry;

/// Shared state of the console's handlers.
pub(crate) struct Console {
    registry: Arc<Registry>,
    config: ConsoleConfig,
    sessions: auth::Sessions,
    channels: brokers::Channels,
}

/// An API failure: a status and a plain message, sent as `{"error": ...}`.
#[derive(Debug)]
pub(crate) struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub(crate) fn bad(msg: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, msg.into())
    }
    pub(crate) fn upstream(msg: impl Into<String>) -> Self {
        Self(StatusCode::BAD_GATEWAY, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

pub(crate) type ApiResult = Result<axum::Json<serde_json::Value>, ApiError>;

/// The console's routes, to merge into the name server's HTTP router.
pub fn router(registry: Arc<Registry>, config: ConsoleConfig) -> Router {
    let st = Arc::new(Console {
        registry,
        sessions: auth::Sessions::new(
            config.max_sessions.max(1),
            Duration::from_secs(config.session_ttl_secs.max(60)),
        ),
        channels: brokers::Channels::new(Duration::from_millis(config.rpc_timeout_ms.max(100))),
        config,
    });
    let api = Router::new()
        .route("/console/api/session", get(auth::session))
        .route("/console/api/login", post(auth::login))
        .route("/console/api/logout", post(auth::logout))
        .route("/console/api/cluster", get(api::cluster))
        .route(
            "/console/api/topics",
            get(api::topics).post(api::create_topic),
        )
        .route("/console/api/topics/delete", post(api::delete_topic))
        .route("/console/api/groups", get(api::groups))
        .route("/console/api/groups/reset", post(api::reset_offset))
        .route("/console/api/messages", get(messages::lookup))
        .route("/console/api/queue", get(messages::browse))
        .route("/console/api/location", get(messages::location))
        .route("/console/api/dlq", get(messages::dead_letters))
        .route("/console/api/dlq/resend", post(messages::resend))
        .route("/console/api/acl", get(acl::acl_users))
        .route("/console/api/acl/users", post(acl::acl_put))
        .route("/console/api/acl/users/delete", post(acl::acl_delete))
        .route("/console/api/acl/rules", post(acl::acl_rules))
        .route("/console/api/metrics", get(scrape::metrics))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&st),
            auth::guard,
        ));
    Router::new()
        .route("/console", get(assets::redirect))
        .route("/console/", get(assets::index))
        .route("/console/app.js", get(assets::js))
        .route("/console/app.css", get(assets::css))
        .merge(api)
        .with_state(st)
}
