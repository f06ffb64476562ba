//! `sofamq topic ...`: create, update, delete and list topics on every master
//! a NameServer knows (or on one broker given with `--broker-addr`).

use anyhow::{Context, bail};
use sofamq_broker::topics::TopicType;
use sofamq_proto::admin::{CreateTopicRequest, DeleteTopicRequest, ListTopicsRequest, TopicSpec};
use sofamq_proto::v2::{Code, MessageType};

/// `sofamq topic` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum TopicCmd {
    /// Create (or update) a topic on every master (or those of `--groups`).
    Create {
        /// Topic name.
        name: String,
        /// Number of queues per broker group (0 = the broker's default).
        #[arg(long, default_value_t = 8)]
        queues: u32,
        /// NORMAL, FIFO, DELAY or TRANSACTION.
        #[arg(long = "type", default_value = "NORMAL")]
        topic_type: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a topic from every master.
    Delete {
        /// Topic name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// One topic: type, queues and each queue's offsets and message count.
    Describe {
        /// Topic name.
        name: String,
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List topics with their queues' offsets.
    List {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

use crate::target::{Target, channel, masters};

fn check(status: Option<sofamq_proto::v2::Status>, what: &str) -> anyhow::Result<()> {
    let s = status.unwrap_or_default();
    if s.code != Code::Ok as i32 {
        bail!("{what}: code {} ({})", s.code, s.message);
    }
    Ok(())
}

/// Runs a topic subcommand.
pub async fn run(cmd: TopicCmd) -> anyhow::Result<()> {
    match cmd {
        TopicCmd::Create {
            name,
            queues,
            topic_type,
            target,
        } => {
            let ty = TopicType::parse(&topic_type)
                .with_context(|| format!("unknown topic type {topic_type:?}"))?;
            let mt = MessageType::from(ty);
            for (broker, addr) in masters(&target).await? {
                let mut c = crate::auth::admin_client(channel(&addr).await?);
                let r = c
                    .create_topic(CreateTopicRequest {
                        topic: Some(TopicSpec {
                            name: name.clone(),
                            queue_count: queues,
                            message_type: mt as i32,
                            perm: 0,
                        }),
                    })
                    .await?
                    .into_inner();
                check(r.status, &format!("create {name} on {broker}"))?;
                let spec = r.topic.unwrap_or_default();
                println!(
                    "created {} on {broker}: {} queues, {}",
                    spec.name,
                    spec.queue_count,
                    ty.as_str()
                );
            }
        }
        TopicCmd::Delete { name, target } => {
            for (broker, addr) in masters(&target).await? {
                let mut c = crate::auth::admin_client(channel(&addr).await?);
                let r = c
                    .delete_topic(DeleteTopicRequest { name: name.clone() })
                    .await?
                    .into_inner();
                check(r.status, &format!("delete {name} on {broker}"))?;
                println!(
                    "{} {name} on {broker}",
                    if r.existed {
                        "deleted"
                    } else {
                        "no such topic"
                    }
                );
            }
        }
        TopicCmd::Describe { name, target, json } => {
            crate::ops::describe_topic(&name, &target, json).await?;
        }
        TopicCmd::List { target, json } => {
            let mut rows = Vec::new();
            for (broker, addr) in masters(&target).await? {
                let mut c = crate::auth::admin_client(channel(&addr).await?);
                let r = c.list_topics(ListTopicsRequest {}).await?.into_inner();
                check(r.status, &format!("list on {broker}"))?;
                for t in r.topics {
                    let spec = t.spec.unwrap_or_default();
                    let messages: u64 = t.queues.iter().map(|q| q.max_offset - q.min_offset).sum();
                    rows.push(serde_json::json!({
                        "broker": broker,
                        "topic": spec.name,
                        "queues": spec.queue_count,
                        "type": MessageType::try_from(spec.message_type).map(|m| m.as_str_name()).unwrap_or("?"),
                        "messages": messages,
                    }));
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                use crate::table::{Align::*, Table};
                let mut t = Table::new(&[
                    ("BROKER", Left),
                    ("TOPIC", Left),
                    ("QUEUES", Right),
                    ("TYPE", Left),
                    ("MESSAGES", Right),
                ]);
                for r in rows {
                    t.row([
                        r["broker"].as_str().unwrap_or("").to_string(),
                        r["topic"].as_str().unwrap_or("").to_string(),
                        r["queues"].to_string(),
                        r["type"].as_str().unwrap_or("").to_string(),
                        r["messages"].to_string(),
                    ]);
                }
                t.print();
            }
        }
    }
    Ok(())
}
