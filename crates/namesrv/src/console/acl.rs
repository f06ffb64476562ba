//! ACL users and rules, on every master.

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use serde::Deserialize;
use serde_json::{Value, json};
use sofamq_proto::admin::{
    AclUser, DeleteAclUserRequest, ListAclUsersRequest, PutAclUserRequest, UpdateAclRulesRequest,
};

use super::auth::Caller;
use super::brokers::{Admin, ok, why};
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

/// Runs `call` on every master's admin client, logging `what` with the console user: one
/// JSON object per broker group, `{"broker", ...fields}` or `{"broker", "error"}`.
async fn each_master<F, Fut>(
    c: &Console,
    who: &Caller,
    what: &str,
    target: &str,
    call: F,
) -> Vec<Value>
where
    F: Fn(Admin) -> Fut,
    Fut: Future<Output = Result<Value, String>>,
{
    let mut results = Vec::new();
    for (bg, addr) in c.masters() {
        let x = match c.admin(&addr, who.creds.as_ref()) {
            Ok(a) => call(a).await,
            Err(e) => Err(e.1),
        };
        tracing::info!(target_user = %target, broker = %bg, user = ?who.user, ok = x.is_ok(), "console: {what}");
        results.push(match x {
            Ok(Value::Object(mut m)) => {
                m.insert("broker".into(), json!(bg));
                Value::Object(m)
            }
            Ok(_) => json!({"broker": bg}),
            Err(e) => json!({"broker": bg, "error": e}),
        });
    }
    results
}

/// `POST /console/api/acl/users`: adds or replaces a user on every master.
pub(crate) async fn acl_put(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Caller>,
    Json(u): Json<NewUser>,
) -> ApiResult {
    let user = AclUser {
        access_key: u.access_key.clone(),
        secret_key: u.secret_key,
        admin: u.admin,
        rules: u.rules,
    };
    let results = each_master(&c, &who, "put ACL user", &u.access_key, |mut a| {
        let user = user.clone();
        async move {
            let x = a
                .put_acl_user(PutAclUserRequest { user: Some(user) })
                .await
                .map_err(|e| why(&e))?
                .into_inner();
            ok(x.status).map(|()| json!({}))
        }
    })
    .await;
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
    let results = each_master(&c, &who, "delete ACL user", &u.access_key, |mut a| {
        let access_key = u.access_key.clone();
        async move {
            let x = a
                .delete_acl_user(DeleteAclUserRequest { access_key })
                .await
                .map_err(|e| why(&e))?
                .into_inner();
            ok(x.status).map(|()| json!({ "existed": x.existed }))
        }
    })
    .await;
    Ok(Json(json!({ "results": results })))
}

#[derive(Deserialize)]
pub(crate) struct RuleChange {
    access_key: String,
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// `POST /console/api/acl/rules`: adds and removes rules of an existing user on every
/// master (its secret untouched).
pub(crate) async fn acl_rules(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Caller>,
    Json(r): Json<RuleChange>,
) -> ApiResult {
    let results = each_master(&c, &who, "update ACL rules", &r.access_key, |mut a| {
        let req = UpdateAclRulesRequest {
            access_key: r.access_key.clone(),
            add: r.add.clone(),
            remove: r.remove.clone(),
        };
        async move {
            let x = a
                .update_acl_rules(req)
                .await
                .map_err(|e| why(&e))?
                .into_inner();
            ok(x.status)?;
            Ok(json!({ "rules": x.user.map(|u| u.rules).unwrap_or_default() }))
        }
    })
    .await;
    Ok(Json(json!({ "results": results })))
}
