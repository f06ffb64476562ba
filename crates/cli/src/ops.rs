//! Operator commands: `sofamq admin cluster`, `sofamq admin message get`,
//! `sofamq admin pending` and `sofamq topic describe`. Every one prints a
//! table, or JSON with `--json`.

use anyhow::Context;
use sofamq_proto::admin::{
    BrokerStatusRequest, GetMessageRequest, ListTopicsRequest, PendingRequest,
};
use sofamq_proto::namesrv::ListBrokersRequest;
use sofamq_proto::namesrv::name_server_admin_client::NameServerAdminClient;
use sofamq_proto::v2::MessageType;

use crate::target::check;
use crate::target::{Target, channel, masters};

/// Options of `sofamq admin cluster`.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// NameServer address.
    #[arg(long, default_value = "127.0.0.1:9876", env = "SOFAMQ_ACCESS_POINT")]
    pub access_point: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Controller addresses (comma separated): also show each group's master, epoch,
    /// in-sync set and per-replica lag as the controller committed them.
    #[arg(long, value_delimiter = ',', env = "SOFAMQ_CONTROLLER")]
    pub controller: Option<Vec<String>>,
}

/// `sofamq admin message ...`.
#[derive(clap::Subcommand, Debug)]
pub enum MessageCmd {
    /// Find a message by id (any topic, or `--topic`) or by key (`--topic` required):
    /// a bounded scan of the newest records of the topic's queues on every master.
    Get {
        /// Message id.
        #[arg(long, conflicts_with = "key", required_unless_present = "key")]
        id: Option<String>,
        /// Message key.
        #[arg(long, requires = "topic")]
        key: Option<String>,
        /// Topic to search.
        #[arg(long)]
        topic: Option<String>,
        /// Most records each broker reads (0: its default, 100000).
        #[arg(long, default_value_t = 0)]
        max_scan: u64,
        /// Most matches per broker.
        #[arg(long, default_value_t = 16)]
        max_results: u32,
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Options of `sofamq admin pending`.
#[derive(clap::Args, Debug)]
pub struct PendingArgs {
    /// Only this topic (default: every topic with something pending).
    #[arg(long)]
    pub topic: Option<String>,
    #[command(flatten)]
    pub target: Target,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn bytes_h(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", U[i])
}

/// `sofamq admin cluster`: every broker group and member the NameServer knows, with each
/// member's own view (role, epoch, offsets, in-sync, disk use).
pub async fn cluster(args: ClusterArgs) -> anyhow::Result<()> {
    let mut ns = NameServerAdminClient::new(channel(&args.access_point).await?);
    let groups = ns
        .list_brokers(ListBrokersRequest::default())
        .await
        .context("ListBrokers")?
        .into_inner()
        .groups;
    let mut rows = Vec::new();
    for g in &groups {
        for m in &g.members {
            let status = match channel(&m.grpc_endpoint).await {
                Ok(ch) => crate::auth::admin_client(ch)
                    .broker_status(BrokerStatusRequest {})
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|e| e.message().to_string()),
                Err(e) => Err(format!("{e:#}")),
            };
            let mut row = serde_json::json!({
                "cluster": g.cluster, "broker": g.broker_name, "broker_id": m.broker_id,
                "address": m.grpc_endpoint, "replication_address": m.replication_endpoint,
                "registered_epoch": m.epoch, "heartbeat_age_ms": m.last_heartbeat_age_ms,
            });
            match status {
                Ok(s) => {
                    row["role"] = s.role.clone().into();
                    row["epoch"] = s.epoch.into();
                    row["log_end_offset"] = s.log_end_offset.into();
                    row["durable_offset"] = s.durable_offset.into();
                    row["disk_bytes"] = s.disk_bytes.into();
                    row["http_address"] = s.http_addr.clone().into();
                    row["in_sync_slaves"] = s.in_sync_slaves.into();
                    row["min_insync_replicas"] = s.min_insync_replicas.into();
                    row["fenced_reason"] = s.fenced_reason.clone().into();
                }
                Err(e) => row["error"] = e.into(),
            }
            rows.push(row);
        }
    }
    let controller = match &args.controller {
        Some(addrs) => Some(
            sofamq_controller::ControllerClient::new(
                addrs.clone(),
                std::time::Duration::from_secs(3),
            )
            .status()
            .await
            .map_err(|e| anyhow::anyhow!("controller status: {e}"))?,
        ),
        None => None,
    };
    if args.json {
        match &controller {
            None => println!("{}", serde_json::to_string_pretty(&rows)?),
            Some(c) => println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "brokers": rows,
                    "controller": controller_json(c, &rows),
                }))?
            ),
        }
        return Ok(());
    }
    if let Some(c) = &controller {
        print_controller(c, &rows);
    }
    use crate::table::{Align::*, Table};
    let mut tb = Table::new(&[
        ("BROKER", Left),
        ("ID", Right),
        ("ROLE", Left),
        ("EPOCH", Right),
        ("ADDRESS", Left),
        ("HTTP", Left),
        ("IN-SYNC", Right),
        ("LOG END", Right),
        ("DISK", Right),
        ("STATE", Left),
    ]);
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        let u = |k: &str| r[k].as_u64().unwrap_or(0);
        let state = if let Some(e) = r["error"].as_str() {
            format!("unreachable: {e}")
        } else if !s("fenced_reason").is_empty() {
            format!("FENCED: {}", s("fenced_reason"))
        } else {
            "ok".into()
        };
        let in_sync = if s("role") == "master" {
            format!("{}/{}", u("in_sync_slaves") + 1, u("min_insync_replicas"))
        } else {
            "-".into()
        };
        tb.row([
            s("broker"),
            r["broker_id"].to_string(),
            s("role"),
            u("epoch").to_string(),
            s("address"),
            if s("http_address").is_empty() {
                "-".into()
            } else {
                s("http_address")
            },
            in_sync,
            u("log_end_offset").to_string(),
            bytes_h(u("disk_bytes")),
            state,
        ]);
    }
    tb.print();
    Ok(())
}

/// Bytes each replica of `group` is behind its master's log end, by the brokers' own
/// status rows (`None` when a member could not be asked).
fn replica_lag(
    group: &sofamq_controller::GroupState,
    rows: &[serde_json::Value],
) -> Vec<(u64, Option<u64>)> {
    let addr_row = |id: u64| {
        let a = group.brokers.get(&id)?;
        rows.iter()
            .find(|r| r["broker"] == group.group.as_str() && r["address"] == a.grpc.as_str())
    };
    let master_end = group
        .master
        .and_then(addr_row)
        .and_then(|r| r["log_end_offset"].as_u64());
    group
        .brokers
        .keys()
        .map(|id| {
            let durable = addr_row(*id).and_then(|r| r["durable_offset"].as_u64());
            (
                *id,
                master_end.zip(durable).map(|(m, d)| m.saturating_sub(d)),
            )
        })
        .collect()
}

fn controller_json(
    c: &sofamq_controller::ControllerStatus,
    rows: &[serde_json::Value],
) -> serde_json::Value {
    let groups: Vec<_> = c
        .groups
        .iter()
        .map(|g| {
            let lag: serde_json::Map<String, serde_json::Value> = replica_lag(g, rows)
                .into_iter()
                .map(|(id, l)| (id.to_string(), l.into()))
                .collect();
            serde_json::json!({
                "group": g.group, "master": g.master, "master_epoch": g.master_epoch,
                "unavailable": c.unavailable.get(&g.group),
                "insync": g.insync, "insync_epoch": g.insync_epoch, "lag_bytes": lag,
                "brokers": g.brokers.iter().map(|(id, a)| (id.to_string(), serde_json::json!({"grpc": a.grpc, "repl": a.repl}))).collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect();
    serde_json::json!({
        "node": c.node, "leader": c.leader, "leader_addr": c.leader_addr, "term": c.term,
        "catching_up": c.catching_up, "groups": groups,
    })
}

fn print_controller(c: &sofamq_controller::ControllerStatus, rows: &[serde_json::Value]) {
    println!(
        "controller: leader {} ({}), term {}",
        c.leader.map_or("none".to_string(), |l| l.to_string()),
        c.leader_addr.as_deref().unwrap_or("-"),
        c.term
    );
    if let Some(why) = &c.catching_up {
        println!("controller {} CATCHING UP (not voting): {why}", c.node);
    }
    use crate::table::{Align::*, Table};
    let mut tb = Table::new(&[
        ("GROUP", Left),
        ("MASTER", Right),
        ("EPOCH", Right),
        ("IN-SYNC", Left),
        ("LAG (bytes behind the master, per broker id)", Left),
    ]);
    let mut unavailable = Vec::new();
    for g in &c.groups {
        let insync = g
            .insync
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let lag = replica_lag(g, rows)
            .into_iter()
            .map(|(id, l)| format!("{id}:{}", l.map_or("?".to_string(), |x| x.to_string())))
            .collect::<Vec<_>>()
            .join(" ");
        tb.row([
            g.group.clone(),
            g.master.map_or("none".to_string(), |m| m.to_string()),
            g.master_epoch.to_string(),
            format!("{{{insync}}}"),
            lag,
        ]);
        if let Some(why) = c.unavailable.get(&g.group) {
            unavailable.push(format!("{}: UNAVAILABLE: {why}", g.group));
        }
    }
    tb.print();
    for u in unavailable {
        println!("{u}");
    }
    println!();
}

/// `sofamq admin message get`.
pub async fn message(cmd: MessageCmd) -> anyhow::Result<()> {
    let MessageCmd::Get {
        id,
        key,
        topic,
        max_scan,
        max_results,
        target,
        json,
    } = cmd;
    let mut out = Vec::new();
    for (broker, addr) in masters(&target).await? {
        let r = crate::auth::admin_client(channel(&addr).await?)
            .get_message(GetMessageRequest {
                topic: topic.clone().unwrap_or_default(),
                message_id: id.clone().unwrap_or_default(),
                key: key.clone().unwrap_or_default(),
                max_scan,
                max_results,
            })
            .await
            .context("GetMessage")?
            .into_inner();
        check(r.status)?;
        if r.truncated {
            eprintln!(
                "{broker}: scan stopped after {} records (raise --max-scan to look further back)",
                r.scanned
            );
        }
        for m in r.messages {
            let mut props: Vec<_> = m.properties.into_iter().collect();
            props.sort();
            out.push(serde_json::json!({
                "broker": broker, "topic": m.topic, "queue_id": m.queue_id,
                "queue_offset": m.queue_offset, "log_offset": m.log_offset,
                "message_id": m.message_id, "tag": m.tag,
                "born_timestamp_ms": m.born_timestamp_ms, "store_timestamp_ms": m.store_timestamp_ms,
                "epoch": m.epoch,
                "properties": props.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect::<serde_json::Map<_, _>>(),
                "body": String::from_utf8_lossy(&m.body),
                "body_bytes": m.body.len(),
            }));
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if out.is_empty() {
        println!("not found");
    } else {
        for m in &out {
            println!(
                "{} {}/{} offset {} (log {}) id {} tag {:?} stored {} ms: {}",
                m["broker"].as_str().unwrap_or(""),
                m["topic"].as_str().unwrap_or(""),
                m["queue_id"],
                m["queue_offset"],
                m["log_offset"],
                m["message_id"].as_str().unwrap_or(""),
                m["tag"].as_str().unwrap_or(""),
                m["store_timestamp_ms"],
                m["body"].as_str().unwrap_or("")
            );
        }
    }
    if out.is_empty() {
        anyhow::bail!("no message matched");
    }
    Ok(())
}

/// `sofamq topic describe NAME`: type, queues and per-queue offsets on every master.
pub async fn describe_topic(name: &str, target: &Target, json: bool) -> anyhow::Result<()> {
    let mut out = Vec::new();
    for (broker, addr) in masters(target).await? {
        let r = crate::auth::admin_client(channel(&addr).await?)
            .list_topics(ListTopicsRequest {})
            .await
            .context("ListTopics")?
            .into_inner();
        check(r.status)?;
        for t in r.topics {
            let spec = t.spec.unwrap_or_default();
            if spec.name != name {
                continue;
            }
            let queues: Vec<_> = t
                .queues
                .iter()
                .map(|q| {
                    serde_json::json!({
                        "queue_id": q.queue_id, "min_offset": q.min_offset, "max_offset": q.max_offset,
                        "messages": q.max_offset.saturating_sub(q.min_offset),
                    })
                })
                .collect();
            let messages: u64 = t
                .queues
                .iter()
                .map(|q| q.max_offset.saturating_sub(q.min_offset))
                .sum();
            out.push(serde_json::json!({
                "broker": broker, "topic": spec.name, "queue_count": spec.queue_count,
                "type": MessageType::try_from(spec.message_type).map(|m| m.as_str_name()).unwrap_or("?"),
                "perm": spec.perm, "messages": messages, "queues": queues,
            }));
        }
    }
    anyhow::ensure!(!out.is_empty(), "topic {name} not found");
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for t in &out {
        println!(
            "{} on {}: {} queues, {}, perm {}, {} messages",
            t["topic"].as_str().unwrap_or(""),
            t["broker"].as_str().unwrap_or(""),
            t["queue_count"],
            t["type"].as_str().unwrap_or(""),
            t["perm"],
            t["messages"]
        );
        use crate::table::{Align::*, Table};
        let mut tb = Table::new(&[
            ("  QUEUE", Right),
            ("MIN", Right),
            ("MAX", Right),
            ("MESSAGES", Right),
        ]);
        for q in t["queues"].as_array().into_iter().flatten() {
            tb.row([
                q["queue_id"].to_string(),
                q["min_offset"].to_string(),
                q["max_offset"].to_string(),
                q["messages"].to_string(),
            ]);
        }
        tb.print();
    }
    Ok(())
}

/// `sofamq admin pending`: per master and topic, timers not yet due (nor recalled), half
/// messages neither committed nor rolled back and the age of the oldest; per master, when
/// the next timer is due.
pub async fn pending(args: PendingArgs) -> anyhow::Result<()> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut brokers = Vec::new();
    for (broker, addr) in masters(&args.target).await? {
        let r = crate::auth::admin_client(channel(&addr).await?)
            .pending(PendingRequest {
                topic: args.topic.clone().unwrap_or_default(),
            })
            .await
            .context("Pending")?
            .into_inner();
        check(r.status)?;
        let topics: Vec<_> = r
            .topics
            .iter()
            .map(|t| {
                let age =
                    (t.oldest_half_ms > 0).then(|| now_ms.saturating_sub(t.oldest_half_ms).max(0));
                serde_json::json!({
                    "topic": t.topic, "pending_timers": t.pending_timers, "open_half": t.open_half,
                    "oldest_half_ms": t.oldest_half_ms, "oldest_half_age_ms": age,
                })
            })
            .collect();
        brokers.push(serde_json::json!({
            "broker": broker, "next_due_ms": r.next_due_ms, "topics": topics,
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&brokers)?);
        return Ok(());
    }
    let rows: usize = brokers
        .iter()
        .map(|b| b["topics"].as_array().map_or(0, Vec::len))
        .sum();
    if rows == 0 {
        println!("no pending timer or open half message");
    } else {
        use crate::table::{Align::*, Table};
        let mut tb = Table::new(&[
            ("BROKER", Left),
            ("TOPIC", Left),
            ("PENDING-TIMERS", Right),
            ("OPEN-HALF", Right),
            ("OLDEST-HALF-AGE", Right),
        ]);
        for b in &brokers {
            let broker = b["broker"].as_str().unwrap_or("");
            for t in b["topics"].as_array().into_iter().flatten() {
                let age = t["oldest_half_age_ms"]
                    .as_i64()
                    .map_or("-".to_string(), |ms| {
                        crate::timefmt::format_age(std::time::Duration::from_millis(
                            ms.max(0) as u64
                        ))
                    });
                tb.row([
                    broker.to_string(),
                    t["topic"].as_str().unwrap_or("").to_string(),
                    t["pending_timers"].as_u64().unwrap_or(0).to_string(),
                    t["open_half"].as_u64().unwrap_or(0).to_string(),
                    age,
                ]);
            }
        }
        tb.print();
    }
    for b in &brokers {
        let broker = b["broker"].as_str().unwrap_or("");
        match b["next_due_ms"].as_i64().unwrap_or(0) {
            0 => println!("{broker}: no pending timer on the broker"),
            due => {
                let when = if due > now_ms {
                    format!(
                        "in {}",
                        crate::timefmt::format_age(std::time::Duration::from_millis(
                            (due - now_ms) as u64
                        ))
                    )
                } else {
                    "now".to_string()
                };
                println!(
                    "{broker}: next timer due on the broker {} ({when})",
                    crate::timefmt::format_epoch_ms(due)
                );
            }
        }
    }
    Ok(())
}
