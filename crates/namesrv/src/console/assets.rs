//! The page itself: one HTML shell, one script, one stylesheet, embedded in the
//! binary. The shell holds no cluster data (that comes from the API, which needs a
//! session when ACL is on), so it is served to anyone who may reach the address:
//! it is also the login page.

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};

const INDEX: &str = include_str!("assets/index.html");
const JS: &str = include_str!("assets/app.js");
const CSS: &str = include_str!("assets/app.css");

/// Headers every console document carries: no framing (clickjacking), no sniffing,
/// and a policy that runs only our own script (no inline script, no eval).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn doc(ctype: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(crate) async fn redirect() -> Redirect {
    Redirect::permanent("/console/")
}

pub(crate) async fn index() -> Response {
    doc("text/html; charset=utf-8", INDEX)
}

pub(crate) async fn js() -> Response {
    doc("text/javascript; charset=utf-8", JS)
}

pub(crate) async fn css() -> Response {
    doc("text/css; charset=utf-8", CSS)
}
