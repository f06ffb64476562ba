//! The ACL half of the admin API: user and rule management through the log.
//! Only reachable by admins (the admin service's interceptor, see
//! [`super::Acl::admin_interceptor`]).

use sofamq_proto::admin::AclUser;

use super::{Rule, User};
use crate::broker::Broker;
use crate::error::BrokerError;

fn parse_rules(rules: &[String]) -> Result<Vec<Rule>, BrokerError> {
    rules
        .iter()
        .map(|r| Rule::parse(r).map_err(BrokerError::BadRequest))
        .collect()
}

/// The wire form of a user; the secret is never sent back.
pub fn wire_user(u: &User) -> AclUser {
    AclUser {
        access_key: u.access_key.clone(),
        secret_key: String::new(),
        admin: u.admin,
        rules: u.rules.iter().map(ToString::to_string).collect(),
    }
}

impl Broker {
    /// Creates or replaces a user.
    pub async fn acl_put_user(&self, u: AclUser) -> Result<(), BrokerError> {
        let user = User {
            access_key: u.access_key,
            secret_key: u.secret_key,
            admin: u.admin,
            rules: parse_rules(&u.rules)?,
        };
        self.writable()?;
        self.acl().put_user(user).await?;
        self.repl().log_grew();
        Ok(())
    }

    /// Deletes a user; false when there was none.
    pub async fn acl_delete_user(&self, access_key: &str) -> Result<bool, BrokerError> {
        self.writable()?;
        let existed = self.acl().delete_user(access_key).await?;
        self.repl().log_grew();
        Ok(existed)
    }

    /// Adds and removes rules of a user.
    pub async fn acl_update_rules(
        &self,
        access_key: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<AclUser, BrokerError> {
        let add = parse_rules(add)?;
        let remove = parse_rules(remove)?;
        self.writable()?;
        let u = self.acl().update_rules(access_key, add, &remove).await?;
        self.repl().log_grew();
        Ok(wire_user(&u))
    }
}
