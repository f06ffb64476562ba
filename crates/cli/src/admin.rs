//! `sofamq admin ...`: replication switchover and status on one broker.

use anyhow::Context;
use sofamq_proto::admin::{DemoteRequest, PromoteRequest, ReplicationStatusRequest};
use tonic::transport::Channel;

/// `sofamq admin` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum AdminCmd {
    /// Consumer groups: list, describe (progress and lag per queue).
    #[command(subcommand)]
    Group(crate::consume::GroupCmd),
    /// Dead letters: resend to their original topic.
    #[command(subcommand)]
    Dlq(crate::consume::DlqCmd),
    /// Turn a caught-up slave into its group's master (a new, higher epoch).
    Promote {
        /// The slave's client gRPC address.
        #[arg(long)]
        broker_addr: String,
        /// Epoch to begin (at least; default: one above every epoch the slave has seen).
        #[arg(long)]
        epoch: Option<u64>,
    },
    /// Make a broker a slave of the master at `--master-addr` (its replication address).
    Demote {
        /// The broker's client gRPC address.
        #[arg(long)]
        broker_addr: String,
        /// The new master's replication address.
        #[arg(long)]
        master_addr: String,
    },
    /// Access control: users and their rules.
    #[command(subcommand)]
    Acl(crate::auth::AclCmd),
    /// Every broker group: members, roles, epochs, addresses, in-sync, disk use.
    Cluster(crate::ops::ClusterArgs),
    /// Message lookup by id or key.
    #[command(subcommand)]
    Message(crate::ops::MessageCmd),
    /// Timer and transactional messages not yet visible, per topic on every master:
    /// pending timers, open half messages, the oldest one's age, the next due time.
    Pending(crate::ops::PendingArgs),
    /// Role, epoch, offsets and slaves of one broker, as JSON.
    Status {
        /// The broker's client gRPC address.
        #[arg(long)]
        broker_addr: String,
    },
}

async fn client(addr: &str) -> anyhow::Result<crate::auth::AdminClient> {
    let ch = Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(crate::auth::admin_client(ch))
}

use crate::target::check;

/// Runs an admin command.
pub async fn run(cmd: AdminCmd) -> anyhow::Result<()> {
    match cmd {
        AdminCmd::Group(c) => crate::consume::group(c).await?,
        AdminCmd::Acl(c) => crate::auth::acl(client(c.broker_addr()).await?, c).await?,
        AdminCmd::Dlq(c) => crate::consume::dlq(c).await?,
        AdminCmd::Cluster(a) => crate::ops::cluster(a).await?,
        AdminCmd::Message(c) => crate::ops::message(c).await?,
        AdminCmd::Pending(a) => crate::ops::pending(a).await?,
        AdminCmd::Promote { broker_addr, epoch } => {
            let r = client(&broker_addr)
                .await?
                .promote(PromoteRequest {
                    epoch: epoch.unwrap_or(0),
                })
                .await
                .context("Promote")?
                .into_inner();
            check(r.status)?;
            println!(
                "promoted {broker_addr}: master with epoch {} at log end {}",
                r.epoch, r.log_end_offset
            );
        }
        AdminCmd::Demote {
            broker_addr,
            master_addr,
        } => {
            let r = client(&broker_addr)
                .await?
                .demote(DemoteRequest {
                    master_replication_addr: master_addr.clone(),
                })
                .await
                .context("Demote")?
                .into_inner();
            check(r.status)?;
            println!("{broker_addr} is now a slave of {master_addr}");
        }
        AdminCmd::Status { broker_addr } => {
            let r = client(&broker_addr)
                .await?
                .replication_status(ReplicationStatusRequest {})
                .await
                .context("ReplicationStatus")?
                .into_inner();
            check(r.status.clone())?;
            let slaves: Vec<_> = r
                .slaves
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "name": s.name, "acked_offset": s.acked_offset, "in_sync": s.in_sync,
                        "protocol_version": s.protocol_version,
                    })
                })
                .collect();
            let v = serde_json::json!({
                "role": r.role,
                "epoch": r.epoch,
                "log_end_offset": r.log_end_offset,
                "durable_offset": r.durable_offset,
                "readable_offset": r.readable_offset,
                "master_replication_addr": r.master_replication_addr,
                "min_insync_replicas": r.min_insync_replicas,
                "in_sync_slaves": r.in_sync_slaves,
                "slaves": slaves,
                "fenced_reason": r.fenced_reason,
            });
            println!("{v}");
        }
    }
    Ok(())
}
