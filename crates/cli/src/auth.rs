//! Credentials for every command (`--access-key` / `--secret-key`, or
//! `SOFAMQ_ACCESS_KEY` / `SOFAMQ_SECRET_KEY`): the SDK signs client requests,
//! and admin clients sign through [`Signer`].

use std::sync::OnceLock;

use sofamq_client::Credentials;
use sofamq_proto::admin::broker_admin_client::BrokerAdminClient;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Global credential options.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AuthArgs {
    /// Access key to sign requests with (brokers with ACL on).
    #[arg(long, global = true, env = "SOFAMQ_ACCESS_KEY")]
    pub access_key: Option<String>,
    /// Secret key of --access-key.
    #[arg(long, global = true, env = "SOFAMQ_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
}

static CREDENTIALS: OnceLock<Option<Credentials>> = OnceLock::new();

/// Records the process's credentials (once, from the command line).
pub fn init(args: &AuthArgs) -> anyhow::Result<()> {
    let c = match (&args.access_key, &args.secret_key) {
        (Some(ak), Some(sk)) => Some(Credentials::new(ak.clone(), sk.clone())),
        (None, None) => None,
        _ => anyhow::bail!("--access-key and --secret-key go together"),
    };
    let _ = CREDENTIALS.set(c);
    Ok(())
}

/// The process's credentials, if any.
pub fn credentials() -> Option<Credentials> {
    CREDENTIALS.get().cloned().flatten()
}

/// Signs each request with the process's credentials (a no-op without them).
#[derive(Clone, Debug, Default)]
pub struct Signer;

impl Interceptor for Signer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(c) = credentials() {
            c.sign(&mut req)?;
        }
        Ok(req)
    }
}

/// A broker admin client that signs its requests.
pub type AdminClient = BrokerAdminClient<InterceptedService<Channel, Signer>>;

/// Wraps `channel` in a signing admin client.
pub fn admin_client(channel: Channel) -> AdminClient {
    BrokerAdminClient::with_interceptor(channel, Signer)
}

/// `sofamq admin acl ...`.
#[derive(clap::Subcommand, Debug)]
pub enum AclCmd {
    /// Users: add (or replace), delete, list.
    #[command(subcommand)]
    User(UserCmd),
    /// Rules of a user: add or remove (`allow|deny:topic|group:PATTERN:pub,sub`).
    #[command(subcommand)]
    Rule(RuleCmd),
}

/// `sofamq admin acl user ...`.
#[derive(clap::Subcommand, Debug)]
pub enum UserCmd {
    /// Creates or replaces a user.
    Add {
        /// The master broker's client gRPC address.
        #[arg(long)]
        broker_addr: String,
        /// The new user's access key.
        #[arg(long)]
        user: String,
        /// The new user's secret key.
        #[arg(long, env = "SOFAMQ_NEW_USER_SECRET", hide_env_values = true)]
        user_secret: String,
        /// Make the user an admin.
        #[arg(long)]
        admin: bool,
        /// A rule, `allow|deny:topic|group:PATTERN:pub,sub`. Repeatable.
        #[arg(long = "rule")]
        rules: Vec<String>,
    },
    /// Deletes a user.
    Delete {
        /// The master broker's client gRPC address.
        #[arg(long)]
        broker_addr: String,
        /// Access key of the user.
        #[arg(long)]
        user: String,
    },
    /// Lists users and rules (never secrets), as JSON.
    List {
        /// The broker's client gRPC address.
        #[arg(long)]
        broker_addr: String,
    },
}

/// `sofamq admin acl rule ...`.
#[derive(clap::Subcommand, Debug)]
pub enum RuleCmd {
    /// Adds rules to a user.
    Add {
        /// The master broker's client gRPC address.
        #[arg(long)]
        broker_addr: String,
        /// Access key of the user.
        #[arg(long)]
        user: String,
        /// Rules to add. Repeatable.
        #[arg(long = "rule", required = true)]
        rules: Vec<String>,
    },
    /// Removes rules from a user.
    Remove {
        /// The master broker's client gRPC address.
        #[arg(long)]
        broker_addr: String,
        /// Access key of the user.
        #[arg(long)]
        user: String,
        /// Rules to remove. Repeatable.
        #[arg(long = "rule", required = true)]
        rules: Vec<String>,
    },
}

impl AclCmd {
    /// The broker the command talks to.
    pub fn broker_addr(&self) -> &str {
        match self {
            AclCmd::User(UserCmd::Add { broker_addr, .. })
            | AclCmd::User(UserCmd::Delete { broker_addr, .. })
            | AclCmd::User(UserCmd::List { broker_addr })
            | AclCmd::Rule(RuleCmd::Add { broker_addr, .. })
            | AclCmd::Rule(RuleCmd::Remove { broker_addr, .. }) => broker_addr,
        }
    }
}

fn user_json(u: &sofamq_proto::admin::AclUser) -> serde_json::Value {
    serde_json::json!({ "access_key": u.access_key, "admin": u.admin, "rules": u.rules })
}

/// Runs an ACL command.
pub async fn acl(mut c: AdminClient, cmd: AclCmd) -> anyhow::Result<()> {
    use anyhow::Context;
    use sofamq_proto::admin::*;
    match cmd {
        AclCmd::User(UserCmd::Add {
            user,
            user_secret,
            admin,
            rules,
            ..
        }) => {
            let r = c
                .put_acl_user(PutAclUserRequest {
                    user: Some(AclUser {
                        access_key: user.clone(),
                        secret_key: user_secret,
                        admin,
                        rules,
                    }),
                })
                .await
                .context("PutAclUser")?
                .into_inner();
            crate::target::check(r.status)?;
            println!("user {user} stored");
        }
        AclCmd::User(UserCmd::Delete { user, .. }) => {
            let r = c
                .delete_acl_user(DeleteAclUserRequest {
                    access_key: user.clone(),
                })
                .await
                .context("DeleteAclUser")?
                .into_inner();
            crate::target::check(r.status)?;
            if r.existed {
                println!("user {user} deleted");
            } else {
                println!("no user {user}");
            }
        }
        AclCmd::User(UserCmd::List { .. }) => {
            let r = c
                .list_acl_users(ListAclUsersRequest {})
                .await
                .context("ListAclUsers")?
                .into_inner();
            crate::target::check(r.status)?;
            let users: Vec<_> = r.users.iter().map(user_json).collect();
            println!("{}", serde_json::to_string_pretty(&users)?);
        }
        AclCmd::Rule(RuleCmd::Add { user, rules, .. }) => {
            let r = c
                .update_acl_rules(UpdateAclRulesRequest {
                    access_key: user,
                    add: rules,
                    remove: Vec::new(),
                })
                .await
                .context("UpdateAclRules")?
                .into_inner();
            crate::target::check(r.status)?;
            println!("{}", user_json(&r.user.unwrap_or_default()));
        }
        AclCmd::Rule(RuleCmd::Remove { user, rules, .. }) => {
            let r = c
                .update_acl_rules(UpdateAclRulesRequest {
                    access_key: user,
                    add: Vec::new(),
                    remove: rules,
                })
                .await
                .context("UpdateAclRules")?
                .into_inner();
            crate::target::check(r.status)?;
            println!("{}", user_json(&r.user.unwrap_or_default()));
        }
    }
    Ok(())
}
