//! Access control: users with HMAC credentials and Pub/Sub rules, stored as
//! records on the reserved topic [`ACL_LOG`] (so they replicate and survive
//! failover like everything else), checked on every RPC when enabled.
//!
//! Missing or invalid credentials: UNAUTHORIZED. Valid credentials without
//! the permission: FORBIDDEN. A bootstrap admin from the config file exists
//! so that the first users can be created.

pub mod admin;
pub mod guard;
pub mod policy;
pub mod sign;

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sofamq_store::Store;
use tonic::metadata::MetadataMap;

pub use policy::{Action, Kind, Rule, User};

use crate::error::BrokerError;
use crate::meta;

/// Reserved topic holding ACL records.
pub const ACL_LOG: &str = "%SYS%ACL";

/// ACL settings in the broker config (`[acl]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AclConfig {
    /// Check credentials and permissions on every RPC.
    pub enabled: bool,
    /// Access key of the bootstrap admin (not stored in the log).
    pub admin_access_key: String,
    /// Secret key of the bootstrap admin.
    pub admin_secret_key: String,
    /// A signed request whose `x-mq-date-time` is farther than this from the broker's
    /// clock is UNAUTHORIZED (bounds replay of a captured request); 0: no check.
    pub max_clock_skew_ms: u64,
}

/// Default of [`AclConfig::max_clock_skew_ms`]: 15 minutes.
pub const DEFAULT_MAX_CLOCK_SKEW_MS: u64 = 15 * 60 * 1000;

impl Default for AclConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            admin_access_key: String::new(),
            admin_secret_key: String::new(),
            max_clock_skew_ms: DEFAULT_MAX_CLOCK_SKEW_MS,
        }
    }
}

impl AclConfig {
    /// Refuses configurations that would let anyone in: a bootstrap admin
    /// without a secret (HMAC under an empty key is forgeable by anyone who
    /// knows the access key).
    pub fn validate(&self) -> Result<(), BrokerError> {
        if !self.admin_access_key.is_empty() && self.admin_secret_key.is_empty() {
            return Err(BrokerError::BadRequest(
                "acl.admin_access_key is set but acl.admin_secret_key is empty".into(),
            ));
        }
        if self.admin_access_key.len() > 255 || self.admin_secret_key.len() > 255 {
            return Err(BrokerError::BadRequest(
                "acl admin keys must be at most 255 bytes".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum AclOp {
    Put(User),
    Delete { access_key: String },
}

/// The live ACL, rebuilt from the log.
#[derive(Clone)]
pub struct Acl {
    config: AclConfig,
    store: Store,
    users: Arc<RwLock<BTreeMap<String, User>>>,
    /// Serializes writers so that the log order and the table agree.
    writes: Arc<tokio::sync::Mutex<()>>,
}

impl Acl {
    /// Replays every ACL record in `store`.
    pub fn load(store: Store, config: AclConfig) -> Result<Self, BrokerError> {
        config.validate()?;
        let acl = Self {
            config,
            store,
            users: Arc::new(RwLock::new(BTreeMap::new())),
            writes: Arc::new(tokio::sync::Mutex::new(())),
        };
        acl.reload()?;
        Ok(acl)
    }

    /// Rebuilds the user table from the log (after promotion, for instance).
    pub fn reload(&self) -> Result<(), BrokerError> {
        let mut table = BTreeMap::new();
        meta::replay(&self.store, ACL_LOG, "ACL", |op| match op {
            AclOp::Put(u) => {
                table.insert(u.access_key.clone(), u);
            }
            AclOp::Delete { access_key } => {
                table.remove(&access_key);
            }
        })?;
        *self.users.write() = table;
        Ok(())
    }

    /// Whether checks are on.
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    fn bootstrap(&self) -> Option<User> {
        (!self.config.admin_access_key.is_empty() && !self.config.admin_secret_key.is_empty()).then(
            || User {
                access_key: self.config.admin_access_key.clone(),
                secret_key: self.config.admin_secret_key.clone(),
                admin: true,
                rules: Vec::new(),
            },
        )
    }

    fn user(&self, access_key: &str) -> Option<User> {
        if let Some(b) = self.bootstrap()
            && b.access_key == access_key
        {
            return Some(b);
        }
        self.users.read().get(access_key).cloned()
    }

    /// Verifies the request's signature. `Ok(None)` when ACL is off.
    pub fn authenticate(&self, md: &MetadataMap) -> Result<Option<User>, BrokerError> {
        if !self.config.enabled {
            return Ok(None);
        }
        let unauthorized = |why: &str| BrokerError::Unauthorized(why.to_string());
        let header = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| unauthorized("no authorization header"))?;
        let auth =
            sign::parse(header).ok_or_else(|| unauthorized("malformed authorization header"))?;
        if auth.access_key.is_empty() {
            return Err(unauthorized("no access key in the authorization header"));
        }
        if !auth
            .signed_headers
            .split(';')
            .any(|h| h.trim().eq_ignore_ascii_case("x-mq-date-time"))
        {
            return Err(unauthorized(
                "x-mq-date-time is not among the signed headers",
            ));
        }
        let date = md
            .get("x-mq-date-time")
            .map(|v| v.as_bytes())
            .ok_or_else(|| unauthorized("no x-mq-date-time header"))?;
        // Same answer (and the same work) for an unknown key and a bad
        // signature: no user enumeration by message or by timing.
        match self.user(auth.access_key) {
            Some(u) if sign::verify(&u.secret_key, date, auth.signature) => {
                // The signature covers only the date: refuse old (replayed) ones.
                sign::check_clock_skew(
                    date,
                    std::time::SystemTime::now(),
                    std::time::Duration::from_millis(self.config.max_clock_skew_ms),
                )
                .map_err(BrokerError::Unauthorized)?;
                Ok(Some(u))
            }
            Some(_) => Err(unauthorized("invalid access key or signature")),
            None => {
                let _ = sign::verify("\0unknown-user", date, auth.signature);
                Err(unauthorized("invalid access key or signature"))
            }
        }
    }

    /// Checks that `user` may do `action` on the `kind` resource `name`.
    pub fn authorize(
        &self,
        user: Option<&User>,
        kind: Kind,
        name: &str,
        action: Action,
    ) -> Result<(), BrokerError> {
        if !self.config.enabled {
            return Ok(());
        }
        match user {
            Some(u) if u.permits(kind, name, action) => Ok(()),
            Some(u) => Err(BrokerError::Forbidden(format!(
                "user '{}' may not {:?} on {:?} '{name}'",
                u.access_key, action, kind
            ))),
            None => Err(BrokerError::Unauthorized("no credentials".into())),
        }
    }

    /// The one check every client RPC makes first: valid credentials, then
    /// every permission `req` needs (see [`guard::Needs`]).
    pub fn check<T: guard::Needs>(&self, md: &MetadataMap, req: &T) -> Result<(), BrokerError> {
        if !self.config.enabled {
            return Ok(());
        }
        let user = self.authenticate(md)?;
        for (kind, name, action) in req.needs() {
            self.authorize(user.as_ref(), kind, &name, action)?;
        }
        Ok(())
    }

    /// Authenticates and requires an admin (for the admin API).
    pub fn require_admin(&self, md: &MetadataMap) -> Result<(), BrokerError> {
        match self.authenticate(md)? {
            None => Ok(()),
            Some(u) if u.admin => Ok(()),
            Some(u) => Err(BrokerError::Forbidden(format!(
                "user '{}' is not an admin",
                u.access_key
            ))),
        }
    }

    /// A tonic interceptor for the admin service: every admin RPC, present
    /// and future, needs an admin user when ACL is on. The refusal is a gRPC
    /// status (UNAUTHENTICATED / PERMISSION_DENIED) whose message starts with
    /// the RocketMQ code, and `x-mq-status-code` carries the code too.
    pub fn admin_interceptor(
        &self,
    ) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone + use<>
    {
        let acl = self.clone();
        move |req: tonic::Request<()>| match acl.require_admin(req.metadata()) {
            Ok(()) => Ok(req),
            Err(e) => {
                let code = e.code() as i32;
                let grpc = match e {
                    BrokerError::Forbidden(_) => tonic::Code::PermissionDenied,
                    _ => tonic::Code::Unauthenticated,
                };
                let mut status = tonic::Status::new(grpc, format!("{code} {e}"));
                status
                    .metadata_mut()
                    .insert("x-mq-status-code", code.into());
                Err(status)
            }
        }
    }

    /// Every stored user (secrets included; callers decide what to show).
    pub fn users(&self) -> Vec<User> {
        self.users.read().values().cloned().collect()
    }

    /// The stored user `access_key` (not the bootstrap admin).
    pub fn stored_user(&self, access_key: &str) -> Option<User> {
        self.users.read().get(access_key).cloned()
    }

    /// Creates or replaces a user, durably.
    pub async fn put_user(&self, user: User) -> Result<(), BrokerError> {
        check_user(&user)?;
        if user.access_key == self.config.admin_access_key {
            return Err(BrokerError::BadRequest(format!(
                "'{}' is the bootstrap admin from the config file",
                user.access_key
            )));
        }
        let _w = self.writes.lock().await;
        self.write(&AclOp::Put(user.clone())).await?;
        self.users.write().insert(user.access_key.clone(), user);
        Ok(())
    }

    /// Adds and removes rules of an existing user, durably; the updated user.
    pub async fn update_rules(
        &self,
        access_key: &str,
        add: Vec<Rule>,
        remove: &[Rule],
    ) -> Result<User, BrokerError> {
        let _w = self.writes.lock().await;
        let mut user = self
            .stored_user(access_key)
            .ok_or_else(|| BrokerError::BadRequest(format!("no user '{access_key}'")))?;
        user.rules.retain(|r| !remove.contains(r));
        for r in add {
            if !user.rules.contains(&r) {
                user.rules.push(r);
            }
        }
        check_user(&user)?;
        self.write(&AclOp::Put(user.clone())).await?;
        self.users
            .write()
            .insert(user.access_key.clone(), user.clone());
        Ok(user)
    }

    /// Deletes a user; false when there was none.
    pub async fn delete_user(&self, access_key: &str) -> Result<bool, BrokerError> {
        let _w = self.writes.lock().await;
        if !self.users.read().contains_key(access_key) {
            return Ok(false);
        }
        self.write(&AclOp::Delete {
            access_key: access_key.to_string(),
        })
        .await?;
        self.users.write().remove(access_key);
        Ok(true)
    }

    async fn write(&self, op: &AclOp) -> Result<(), BrokerError> {
        meta::append(&self.store, ACL_LOG, op).await
    }
}

/// Most rules one user may have.
pub const MAX_RULES: usize = 1024;

fn check_user(user: &User) -> Result<(), BrokerError> {
    let key_ok = |k: &str| {
        !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic() && b != b',')
    };
    if !key_ok(&user.access_key) {
        return Err(BrokerError::BadRequest(
            "access key must be 1..=255 printable ASCII bytes without ','".into(),
        ));
    }
    if user.secret_key.is_empty() || user.secret_key.len() > 255 {
        return Err(BrokerError::BadRequest(
            "secret key must be 1..=255 bytes".into(),
        ));
    }
    if user.rules.len() > MAX_RULES {
        return Err(BrokerError::BadRequest(format!(
            "{} rules, the limit is {MAX_RULES}",
            user.rules.len()
        )));
    }
    Ok(())
}
