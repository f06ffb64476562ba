//! `sofamq consume` (receive and ack with the SDK's SimpleConsumer) and the
//! consumer-group admin commands (`sofamq admin group|dlq ...`).

use std::time::Duration;

use anyhow::{Context, bail};
use sofamq_client::{ConsumerConfig, SimpleConsumer};
use sofamq_proto::admin::{
    DeadLetterProgressRequest, ListGroupsRequest, ReadQueueRequest, ResendDeadLettersRequest,
};
use sofamq_proto::v2::Code;

use crate::target::{Target, channel, masters};

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
        /// Just the dead letters at these offsets of the group's dead-letter queue
        /// (comma separated, as `admin dlq list` shows them); needs `--broker` when the
        /// access point lists more than one master.
        #[arg(long, value_delimiter = ',', conflicts_with = "topic")]
        offsets: Vec<u64>,
        /// With `--offsets`: the broker group whose dead-letter queue they are in.
        #[arg(long, requires = "offsets")]
        broker: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// List a group's dead letters (the newest 100 per master) and whether each was resent.
    List {
        /// Consumer group.
        #[arg(long)]
        group: String,
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

/// Runs a DLQ command against every master (or the one `--broker` names).
pub async fn dlq(cmd: DlqCmd) -> anyhow::Result<()> {
    match cmd {
        DlqCmd::Resend {
            group,
            topic,
            offsets,
            broker,
            target,
        } => {
            let mut masters = masters(&target).await?;
            if let Some(b) = &broker {
                masters.retain(|(name, _)| name == b);
                if masters.is_empty() {
                    bail!("no master of broker group {b} at the access point");
                }
            } else if !offsets.is_empty() && masters.len() > 1 {
                bail!(
                    "offsets are per dead-letter queue and {} masters are listed: name one with --broker",
                    masters.len()
                );
            }
            for (name, addr) in masters {
                let r = crate::auth::admin_client(channel(&addr).await?)
                    .resend_dead_letters(ResendDeadLettersRequest {
                        group: group.clone(),
                        topic: topic.clone().unwrap_or_default(),
                        max: 0,
                        offsets: offsets.clone(),
                    })
                    .await
                    .context("ResendDeadLetters")?
                    .into_inner();
                check(r.status)?;
                println!("{name}: resent {} dead letter(s) of {group}", r.resent);
                for s in r.skipped {
                    println!("{name}: offset {} not resent: {}", s.offset, s.reason);
                }
            }
        }
        DlqCmd::List { group, target } => {
            let dlq = format!("%DLQ%{group}");
            use crate::table::{Align::*, Table};
            let mut t = Table::new(&[
                ("BROKER", Left),
                ("OFFSET", Right),
                ("MESSAGE ID", Left),
                ("FROM TOPIC", Left),
                ("RESENT", Left),
            ]);
            for (name, addr) in masters(&target).await? {
                let mut a = crate::auth::admin_client(channel(&addr).await?);
                let p = a
                    .dead_letter_progress(DeadLetterProgressRequest {
                        group: group.clone(),
                    })
                    .await
                    .context("DeadLetterProgress")?
                    .into_inner();
                check(p.status)?;
                let r = a
                    .read_queue(ReadQueueRequest {
                        topic: dlq.clone(),
                        queue_id: 0,
                        offset: p.end.saturating_sub(100),
                        max_count: 100,
                    })
                    .await
                    .context("ReadQueue")?
                    .into_inner();
                check(r.status)?;
                for m in r.messages {
                    let from = m.properties.get("__DLQ_TOPIC").cloned().unwrap_or_default();
                    let resent =
                        m.queue_offset < p.resent_below || p.chosen.contains(&m.queue_offset);
                    t.row([
                        name.clone(),
                        m.queue_offset.to_string(),
                        m.message_id,
                        from,
                        if resent { "yes" } else { "no" }.to_string(),
                    ]);
                }
            }
            t.print();
        }
    }
    Ok(())
}
