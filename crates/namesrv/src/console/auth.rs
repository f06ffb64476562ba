//! Who may use the console, and cross-site request protection.
//!
//! ACL on (a broker refuses an unsigned admin call): every API call needs a session,
//! created by `POST /console/api/login` with an admin user's access key and secret,
//! checked by a signed `BrokerStatus` call (the brokers' admin interceptor admits
//! admins only), so the console reuses the project's ACL users and keeps none of its
//! own. The session cookie is `HttpOnly; SameSite=Strict`; the secret stays in this
//! process's memory to sign the session's broker calls. ACL off: no login, and the
//! console is reachable by whoever reaches `http_listen` (loopback by default).
//!
//! Every POST (other than login) needs the session's CSRF token in `x-csrf-token`
//! (a custom header a cross-site form cannot send, and a value a cross-site script
//! cannot read), and any `Origin` must be this host's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use rand::RngCore;
use serde::Deserialize;
use sofamq_client::Credentials;

use super::{ApiError, Console};

const COOKIE: &str = "sofamq_console";
/// How long an "ACL is off" answer from the brokers is trusted.
const ACL_CACHE: Duration = Duration::from_secs(5);

/// The caller of one API request, as the guard established it.
#[derive(Clone)]
pub(crate) struct Caller {
    /// Signs broker calls; `None` with ACL off.
    pub creds: Option<Credentials>,
    pub csrf: String,
    pub user: Option<String>,
}

#[derive(Clone)]
struct Session {
    creds: Credentials,
    user: String,
    csrf: String,
    expires: Instant,
}

/// Logged-in sessions (bounded), plus the CSRF token used while ACL is off.
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    max: usize,
    ttl: Duration,
    open_csrf: String,
    acl: Mutex<Option<(bool, Instant)>>,
}

fn token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Equal-time comparison of two tokens.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    pub(crate) fn new(max: usize, ttl: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            max,
            ttl,
            open_csrf: token(),
            acl: Mutex::new(None),
        }
    }

    fn get(&self, id: &str) -> Option<Session> {
        let mut m = self.map.lock();
        let now = Instant::now();
        m.retain(|_, s| s.expires > now);
        m.get(id).cloned()
    }

    fn create(&self, creds: Credentials, user: String) -> String {
        let id = token();
        let mut m = self.map.lock();
        let now = Instant::now();
        m.retain(|_, s| s.expires > now);
        while m.len() >= self.max {
            let oldest = m
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => m.remove(&k),
                None => break,
            };
        }
        m.insert(
            id.clone(),
            Session {
                creds,
                user,
                csrf: token(),
                expires: now + self.ttl,
            },
        );
        id
    }

    fn remove(&self, id: &str) {
        self.map.lock().remove(id);
    }
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// An `Origin`, when present, must name this host (the `Host` header).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(host)) = (
        origin.to_str(),
        headers.get(header::HOST).and_then(|h| h.to_str().ok()),
    ) else {
        return false;
    };
    origin == format!("http://{host}") || origin == format!("https://{host}")
}

impl Console {
    fn session_of(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = cookie(headers)?;
        self.sessions.get(&id).map(|s| (id, s))
    }

    /// Whether the brokers check credentials: an unsigned `BrokerStatus` refused as
    /// unauthenticated means yes. No broker answering is an error (fail closed).
    pub(crate) async fn acl_on(&self) -> Result<bool, ApiError> {
        if let Some((on, at)) = *self.sessions.acl.lock()
            && (on || at.elapsed() < ACL_CACHE)
        {
            return Ok(on);
        }
        let mut last = "no broker is registered with this name server".to_string();
        for addr in self.member_addrs() {
            match self.status(&addr, None).await {
                Ok(_) => {
                    *self.sessions.acl.lock() = Some((false, Instant::now()));
                    return Ok(false);
                }
                Err(e)
                    if e.code() == tonic::Code::Unauthenticated
                        || e.code() == tonic::Code::PermissionDenied =>
                {
                    *self.sessions.acl.lock() = Some((true, Instant::now()));
                    return Ok(true);
                }
                Err(e) => last = format!("{addr}: {}", e.message()),
            }
        }
        Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot tell whether ACL is on, so refusing: {last}"),
        ))
    }
}

fn refuse(code: StatusCode, msg: &str) -> Response {
    ApiError(code, msg.to_string()).into_response()
}

/// Authentication, CSRF and Origin checks in front of every API route.
pub(crate) async fn guard(State(c): State<Arc<Console>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let write = req.method() != Method::GET && req.method() != Method::HEAD;
    if write && !same_origin(req.headers()) {
        return refuse(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    if path == "/console/api/login" || path == "/console/api/session" {
        return next.run(req).await;
    }
    let caller = match c.session_of(req.headers()) {
        Some((_, s)) => Caller {
            creds: Some(s.creds),
            csrf: s.csrf,
            user: Some(s.user),
        },
        None => match c.acl_on().await {
            Ok(false) => Caller {
                creds: None,
                csrf: c.sessions.open_csrf.clone(),
                user: None,
            },
            Ok(true) => return refuse(StatusCode::UNAUTHORIZED, "login required (ACL is on)"),
            Err(e) => return e.into_response(),
        },
    };
    if write {
        let sent = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !same(sent, &caller.csrf) {
            return refuse(StatusCode::FORBIDDEN, "missing or wrong x-csrf-token");
        }
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// `GET /console/api/session`: whether ACL is on, who is logged in, the CSRF token.
pub(crate) async fn session(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Some((_, s)) = c.session_of(&headers) {
        return Json(serde_json::json!({"acl": true, "user": s.user, "csrf": s.csrf}))
            .into_response();
    }
    match c.acl_on().await {
        Ok(true) => Json(serde_json::json!({"acl": true, "user": null})).into_response(),
        Ok(false) => {
            Json(serde_json::json!({"acl": false, "user": null, "csrf": c.sessions.open_csrf}))
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
pub(crate) struct Login {
    access_key: String,
    secret_key: String,
}

/// `POST /console/api/login`: checks the credentials with a signed admin call.
pub(crate) async fn login(State(c): State<Arc<Console>>, Json(l): Json<Login>) -> Response {
    if l.access_key.is_empty() || l.access_key.len() > 255 || l.secret_key.len() > 255 {
        return refuse(
            StatusCode::BAD_REQUEST,
            "access key and secret: 1 to 255 bytes",
        );
    }
    let creds = Credentials::new(l.access_key.clone(), l.secret_key);
    let mut last = "no broker is registered with this name server".to_string();
    for addr in c.member_addrs() {
        match c.status(&addr, Some(&creds)).await {
            Ok(_) => {
                let id = c.sessions.create(creds, l.access_key.clone());
                let cookie = format!(
                    "{COOKIE}={id}; Path=/console/; HttpOnly; SameSite=Strict; Max-Age={}",
                    c.sessions.ttl.as_secs()
                );
                return (
                    [(header::SET_COOKIE, cookie)],
                    Json(serde_json::json!({"user": l.access_key})),
                )
                    .into_response();
            }
            Err(e) if e.code() == tonic::Code::Unauthenticated => {
                tracing::info!(user = %l.access_key, "console login refused: bad credentials");
                tokio::time::sleep(Duration::from_millis(300)).await;
                return refuse(StatusCode::UNAUTHORIZED, "wrong access key or secret");
            }
            Err(e) if e.code() == tonic::Code::PermissionDenied => {
                return refuse(StatusCode::FORBIDDEN, "this user is not an admin");
            }
            Err(e) => last = format!("{addr}: {}", e.message()),
        }
    }
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("no broker could check the credentials: {last}"),
    )
}

/// `POST /console/api/logout`.
pub(crate) async fn logout(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Some((id, s)) = c.session_of(&headers) {
        let sent = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !same(sent, &s.csrf) {
            return refuse(StatusCode::FORBIDDEN, "missing or wrong x-csrf-token");
        }
        c.sessions.remove(&id);
    }
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/console/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Json(serde_json::json!({})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn origin_must_be_this_host() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:9881")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:9881"),
            ("origin", "http://127.0.0.1:9881")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:9881"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[(
            "origin",
            "http://127.0.0.1:9881"
        )])));
    }

    #[test]
    fn cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; sofamq_console=abc; b=2")]);
        assert_eq!(cookie(&h).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers(&[("cookie", "sofamq_consolex=1")])), None);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same("abcd", "abcd"));
        assert!(!same("abcd", "abce"));
        assert!(!same("abc", "abcd"));
        assert!(!same("", "abcd"));
    }

    #[test]
    fn sessions_are_bounded_and_expire() {
        let s = Sessions::new(2, Duration::from_secs(60));
        let a = s.create(Credentials::new("a", "x"), "a".into());
        let b = s.create(Credentials::new("b", "x"), "b".into());
        let c = s.create(Credentials::new("c", "x"), "c".into());
        assert!(s.get(&a).is_none(), "the oldest made room");
        assert!(s.get(&b).is_some() && s.get(&c).is_some());
        assert_ne!(s.get(&b).unwrap().csrf, s.get(&c).unwrap().csrf);
        s.remove(&b);
        assert!(s.get(&b).is_none());
        let short = Sessions::new(2, Duration::from_millis(1));
        let d = short.create(Credentials::new("d", "x"), "d".into());
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.get(&d).is_none(), "expired");
    }
}
