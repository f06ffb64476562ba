//! `sofamq consume` (receive and ack with the SDK's SimpleConsumer) and the
//! consumer-group admin commands (`sofamq admin group|dlq ...`).

use std::time::Duration;

use anyhow::{Context, bail};
use sofamq_client::{ConsumerConfig, SimpleConsumer};
use sofamq_proto::admin::{ListGroupsRequest, ResendDeadLettersRequest};
use sofamq_proto::v2::Code;

use crate::topic::{Target, channel, masters};

/// Options of `sofamq consume`.
#[derive(clap::Args, Debug)]
pub struct ConsumeArgs {
    /// NameServer address(es), comma separated.
    #[arg(
        long,
        default_value = "127.0.0.1:9876",
        value_delimiter = ',',
        env = "SOFAMQ_ACCESS_POINT"
    )]
    pub access_point: Vec<String>,
    /// Topic to consume.
    #[arg(long)]
    pub topic: String,
    /// Consumer group.
    #[arg(long)]
    pub group: String,
    /// Stop after this many messages (default: run until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
    /// Tag filter expression: `*` or `a || b`.
    #[arg(long, default_value = "*")]
    pub tag: String,
    /// Messages per receive.
    #[arg(long, default_value_t = 32)]
    pub batch: u32,
    /// Invisible duration of received messages, seconds.
    #[arg(long, default_value_t = 30)]
    pub invisible_secs: u64,
    /// Stop after this many seconds without a message (0 = never).
    #[arg(long, default_value_t = 0)]
    pub idle_exit_secs: u64,
}

/// Receives, prints one JSON line per message and acks it.
pub async fn run(a: ConsumeArgs) -> anyhow::Result<()> {
    let mut cfg = ConsumerConfig::new(a.access_point.clone(), a.group.clone())
        .with_long_polling_timeout(Duration::from_secs(5));
    cfg.credentials = crate::auth::credentials();
    let c = SimpleConsumer::start(cfg, vec![(a.topic.clone(), a.tag.clone())]).await?;
    let mut n = 0u64;
    let mut idle_since = std::time::Instant::now();
    let want = a.count.unwrap_or(u64::MAX);
    while n < want {
        let max = a
            .batch
            .min(u32::try_from(want - n).unwrap_or(u32::MAX))
            .max(1);
        let msgs = tokio::select! {
            r = c.receive(max, Duration::from_secs(a.invisible_secs)) => r?,
            _ = tokio::signal::ctrl_c() => break,
        };
        if msgs.is_empty() {
            if a.idle_exit_secs > 0 && idle_since.elapsed().as_secs() >= a.idle_exit_secs {
                break;
            }
            continue;
        }
        idle_since = std::time::Instant::now();
        for m in msgs {
            println!(
                "{}",
                serde_json::json!({
                    "message_id": m.message_id, "topic": m.topic, "tag": m.tag,
                    "keys": m.keys, "queue_id": m.queue_id, "queue_offset": m.queue_offset,
                    "attempt": m.delivery_attempt, "message_group": m.message_group,
                    "properties": m.properties, "body": String::from_utf8_lossy(&m.body),
                })
            );
            c.ack(&m).await.context("ack")?;
            n += 1;
        }
    }
    eprintln!("consumed {n} message(s)");
    Ok(())
}

/// `sofamq admin group ...`.
#[derive(clap::Subcommand, Debug)]
pub enum GroupCmd {
    /// Every consumer group with its total lag.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// One group's progress and lag per queue, as JSON.
    Describe {
        /// Consumer group.
        group: String,
        #[command(flatten)]
        target: Target,
    },
}

/// `sofamq admin dlq ...`.
#[derive(clap::Subcommand, Debug)]
pub enum DlqCmd {
    /// Move a group's dead letters back to their original topic.
    Resend {
        /// Consumer group.
        #[arg(long)]
        group: String,
        /// Only dead letters of this topic.
        #[arg(long)]
        topic: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

fn check(s: Option<sofamq_proto::v2::Status>) -> anyhow::Result<()> {
    let s = s.unwrap_or_default();
    if s.code != Code::Ok as i32 {
        bail!("{} ({})", s.message, s.code);
    }
    Ok(())
}

/// Runs a group command against every master.
pub async fn group(cmd: GroupCmd) -> anyhow::Result<()> {
    let (target, only) = match &cmd {
        GroupCmd::List { target } => (target, String::new()),
        GroupCmd::Describe { group, target } => (target, group.clone()),
    };
    use crate::table::{Align::*, Table};
    let mut list = Table::new(&[
        ("BROKER", Left),
        ("GROUP", Left),
        ("TOPICS", Left),
        ("LAG", Right),
    ]);
    for (name, addr) in masters(target).await? {
        let r = crate::auth::admin_client(channel(&addr).await?)
            .list_groups(ListGroupsRequest {
                group: only.clone(),
            })
            .await
            .context("ListGroups")?
            .into_inner();
        check(r.status)?;
        for g in r.groups {
            match cmd {
                GroupCmd::List { .. } => {
                    list.row([name.clone(), g.group, g.topics.join(","), g.lag.to_string()])
                }
                GroupCmd::Describe { .. } => {
                    let queues: Vec<_> = g
                        .queues
                        .iter()
                        .map(|q| {
                            serde_json::json!({
                                "topic": q.topic, "queue_id": q.queue_id,
                                "committed": q.committed_offset, "scan": q.scan_offset,
                                "max": q.max_offset, "lag": q.lag, "inflight": q.inflight,
                            })
                        })
                        .collect();
                    println!(
                        "{}",
                        serde_json::json!({"broker": name, "group": g.group, "lag": g.lag, "queues": queues})
                    );
                }
            }
        }
    }
    if matches!(cmd, GroupCmd::List { .. }) {
        list.print();
    }
    Ok(())
}

/// Runs a DLQ command against every master.
pub async fn dlq(cmd: DlqCmd) -> anyhow::Result<()> {
    let DlqCmd::Resend {
        group,
        topic,
        target,
    } = cmd;
    for (name, addr) in masters(&target).await? {
        let r = crate::auth::admin_client(channel(&addr).await?)
            .resend_dead_letters(ResendDeadLettersRequest {
                group: group.clone(),
                topic: topic.clone().unwrap_or_default(),
                max: 0,
            })
            .await
            .context("ResendDeadLetters")?
            .into_inner();
        check(r.status)?;
        println!("{name}: resent {} dead letter(s) of {group}", r.resent);
    }
    Ok(())
}
