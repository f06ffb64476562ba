//! ACL users and rules, on every master.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use serde::Deserialize;
use serde_json::json;
use sofamq_proto::admin::{AclUser, DeleteAclUserRequest, ListAclUsersRequest, PutAclUserRequest};

use super::auth::Caller;
use super::brokers::{ok, why};
use super::{ApiResult, Console};

/// `GET /console/api/acl`: users and rules (never secrets), per master.
pub(crate) async fn acl_users(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Caller>,
) -> ApiResult {
    let mut out = Vec::new();
    for (bg, addr) in c.masters() {
        let r = async {
            let r = c
                .admin(&addr, who.creds.as_ref())
                .map_err(|e| e.1)?
                .list_acl_users(ListAclUsersRequest {})
                .await
                .map_err(|e| why(&e))?
                .into_inner();
            ok(r.status)?;
            Ok::<_, String>(r.users)
        }
        .await;
        out.push(match r {
            Ok(us) => json!({"broker": bg, "users": us.iter().map(|u| json!({
                "access_key": u.access_key, "admin": u.admin, "rules": u.rules})).collect::<Vec<_>>()}),
            Err(e) => json!({"broker": bg, "error": e}),
        });
    }
    Ok(Json(json!({ "brokers": out })))
}

#[derive(Deserialize)]
pub(crate) struct NewUser {
    access_key: String,
    secret_key: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    rules: Vec<String>,
}

/// `POST /console/api/acl/users`: adds or replaces a user on every master.
pub(crate) async fn acl_put(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Caller>,
    Json(u): Json<NewUser>,
) -> ApiResult {
    let mut results = Vec::new();
    for (bg, addr) in c.masters() {
        let user = AclUser {
            access_key: u.access_key.clone(),
            secret_key: u.secret_key.clone(),
            admin: u.admin,
            rules: u.rules.clone(),
        };
        let x = async {
            let x = c
                .admin(&addr, who.creds.as_ref())
                .map_err(|e| e.1)?
                .put_acl_user(PutAclUserRequest { user: Some(user) })
                .await
                .map_err(|e| why(&e))?
                .into_inner();
            ok(x.status)
        }
        .await;
        tracing::info!(target_user = %u.access_key, broker = %bg, user = ?who.user, ok = x.is_ok(), "console: put ACL user");
        results.push(json!({"broker": bg, "error": x.err()}));
    }
    Ok(Json(json!({ "results": results })))
}

#[derive(Deserialize)]
pub(crate) struct DelUser {
    access_key: String,
}

/// `POST /console/api/acl/users/delete`: deletes a user on every master.
pub(crate) async fn acl_delete(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Caller>,
    Json(u): Json<DelUser>,
) -> ApiResult {
    let mut results = Vec::new();
    for (bg, addr) in c.masters() {
        let x = async {
            let x = c
                .admin(&addr, who.creds.as_ref())
                .map_err(|e| e.1)?
                .delete_acl_user(DeleteAclUserRequest {
                    access_key: u.access_key.clone(),
                })
                .await
                .map_err(|e| why(&e))?
                .into_inner();
            ok(x.status).map(|()| x.existed)
        }
        .await;
        tracing::info!(target_user = %u.access_key, broker = %bg, user = ?who.user, ok = x.is_ok(), "console: delete ACL user");
        results.push(match x {
            Ok(e) => json!({"broker": bg, "existed": e}),
            Err(e) => json!({"broker": bg, "error": e}),
        });
    }
    Ok(Json(json!({ "results": results })))
}
