//! Where an admin or topic command goes: the target brokers (all masters a NameServer lists,
//! some groups, or one address), the channel to each, and the status check of their answers.
//! A leaf: the command modules use it and it uses none of them.

use anyhow::{Context, bail};
use sofamq_proto::namesrv::ListBrokersRequest;
use sofamq_proto::namesrv::name_server_admin_client::NameServerAdminClient;
use sofamq_proto::v2::Code;
use tonic::transport::Channel;

/// An error unless the broker's answer is OK.
pub(crate) fn check(status: Option<sofamq_proto::v2::Status>) -> anyhow::Result<()> {
    let s = status.unwrap_or_default();
    if s.code != Code::Ok as i32 {
        bail!("{} ({})", s.message, s.code);
    }
    Ok(())
}

/// Which brokers a topic command addresses.
#[derive(clap::Args, Debug)]
pub struct Target {
    /// NameServer address; the command goes to every master it lists.
    #[arg(long, default_value = "127.0.0.1:9876", env = "SOFAMQ_ACCESS_POINT")]
    pub access_point: String,
    /// Talk to this broker's gRPC address directly instead.
    #[arg(long, conflicts_with = "groups")]
    pub broker_addr: Option<String>,
    /// Only these broker groups (comma separated), e.g. a group just added to the
    /// cluster; each must have a master registered with the NameServer.
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<String>,
}

pub(crate) async fn channel(addr: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

/// (broker name, gRPC address) of every master the target names.
pub(crate) async fn masters(t: &Target) -> anyhow::Result<Vec<(String, String)>> {
    if let Some(a) = &t.broker_addr {
        return Ok(vec![(a.clone(), a.clone())]);
    }
    let mut ns = NameServerAdminClient::new(channel(&t.access_point).await?);
    let groups = ns
        .list_brokers(ListBrokersRequest::default())
        .await
        .context("ListBrokers")?
        .into_inner()
        .groups;
    let out: Vec<_> = groups
        .iter()
        .filter(|g| t.groups.is_empty() || t.groups.contains(&g.broker_name))
        .filter_map(|g| {
            g.members
                .iter()
                .find(|m| m.broker_id == 0)
                .map(|m| (g.broker_name.clone(), m.grpc_endpoint.clone()))
        })
        .collect();
    if let Some(missing) = t
        .groups
        .iter()
        .find(|g| !out.iter().any(|(name, _)| name == *g))
    {
        bail!(
            "broker group {missing:?} has no master registered with {}",
            t.access_point
        );
    }
    if out.is_empty() {
        bail!("no master broker is registered with {}", t.access_point);
    }
    Ok(out)
}
