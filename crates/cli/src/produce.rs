//! `sofamq produce`: send messages with the SDK and print each receipt;
//! timer messages (`--delay`, `--deliver-at`) and transactional ones
//! (`--transaction commit|rollback`). `sofamq recall`: cancel a pending timer.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use sofamq_client::{Message, Producer, ProducerConfig, SendReceipt};

use crate::timefmt::{parse_duration, parse_instant};

/// How `--transaction` ends each half message.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndWith {
    /// Commit: consumers see the message.
    Commit,
    /// Roll back: the message is discarded.
    Rollback,
}

/// Options of `sofamq produce`.
#[derive(clap::Args, Debug)]
pub struct ProduceArgs {
    /// NameServer address(es), comma separated.
    #[arg(
        long,
        default_value = "127.0.0.1:9876",
        value_delimiter = ',',
        env = "SOFAMQ_ACCESS_POINT"
    )]
    pub access_point: Vec<String>,
    /// Topic to send to.
    #[arg(long)]
    pub topic: String,
    /// Number of messages.
    #[arg(long, default_value_t = 1)]
    pub count: u64,
    /// Body text (default: `message-<i>` padded to --size).
    #[arg(long)]
    pub body: Option<String>,
    /// Body size in bytes when --body is not given.
    #[arg(long)]
    pub size: Option<usize>,
    /// Tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Key (repeatable).
    #[arg(long = "key")]
    pub keys: Vec<String>,
    /// FIFO message group.
    #[arg(long, conflicts_with_all = ["deliver_at", "delay", "transaction"])]
    pub group: Option<String>,
    /// Timer message (DELAY topic): deliver at this time, RFC 3339
    /// (2025-06-01T12:00:00Z) or epoch milliseconds. Prints the recall handle.
    #[arg(long, value_parser = parse_instant, conflicts_with_all = ["delay", "transaction"])]
    pub deliver_at: Option<SystemTime>,
    /// Timer message (DELAY topic): deliver this long after sending, like 30s,
    /// 5m, 1500ms, 1h30m. Prints the recall handle.
    #[arg(long, value_parser = parse_duration, conflicts_with = "transaction")]
    pub delay: Option<Duration>,
    /// Transactional message (TRANSACTION topic): store each as a half
    /// message, then commit or roll it back.
    #[arg(long, value_enum)]
    pub transaction: Option<EndWith>,
    /// Send attempts per message (including the first).
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
}

/// Options of `sofamq recall`.
#[derive(clap::Args, Debug)]
pub struct RecallArgs {
    /// NameServer address(es), comma separated.
    #[arg(
        long,
        default_value = "127.0.0.1:9876",
        value_delimiter = ',',
        env = "SOFAMQ_ACCESS_POINT"
    )]
    pub access_point: Vec<String>,
    /// Topic of the timer message.
    #[arg(long)]
    pub topic: String,
    /// Recall handle printed by `sofamq produce --delay/--deliver-at`.
    #[arg(long)]
    pub handle: String,
}

fn body_for(args: &ProduceArgs, i: u64) -> Vec<u8> {
    match (&args.body, args.size) {
        (Some(b), _) => b.clone().into_bytes(),
        (None, size) => {
            let mut b = format!("message-{i}").into_bytes();
            if let Some(n) = size {
                b.resize(n.max(1), b'.');
            }
            b
        }
    }
}

fn ok_line(r: &SendReceipt) -> String {
    format!(
        "OK {} {} {} {}",
        r.message_id, r.topic, r.broker, r.queue_offset
    )
}

/// Sends `--count` messages, printing `OK <message id> <topic> <broker> <queue offset>` per
/// receipt, followed by `recall_handle=<handle>` for timer messages and
/// `transaction_id=<id> committed|rolled-back` for transactional ones.
pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let mut cfg =
        ProducerConfig::new(args.access_point.clone()).with_max_attempts(args.max_attempts);
    cfg.credentials = crate::auth::credentials();
    // No transaction checker: this process ends every transaction it opens at once, and
    // would be the wrong one to answer checks about other producers' transactions.
    let producer = Producer::start(cfg).await.context("starting producer")?;
    let mut failures = 0u64;
    for i in 0..args.count {
        let mut b = Message::builder(args.topic.clone(), body_for(&args, i));
        if let Some(t) = &args.tag {
            b = b.tag(t.clone());
        }
        for k in &args.keys {
            b = b.key(k.clone());
        }
        if let Some(g) = &args.group {
            b = b.message_group(g.clone());
        }
        let message = b.build();
        if let Some(end) = args.transaction {
            if !send_transactional(&producer, message, end).await {
                failures += 1;
            }
            continue;
        }
        let sent = match (args.deliver_at, args.delay) {
            (Some(at), _) => producer.send_at(message, at).await,
            (None, Some(d)) => producer.send_delayed(message, d).await,
            (None, None) => producer.send(message).await,
        };
        match sent {
            Ok(r) => match &r.recall_handle {
                Some(h) => println!("{} recall_handle={h}", ok_line(&r)),
                None if args.deliver_at.is_some() || args.delay.is_some() => println!(
                    "{} (no recall handle: is {} a DELAY topic?)",
                    ok_line(&r),
                    r.topic
                ),
                None => println!("{}", ok_line(&r)),
            },
            Err(e) => {
                failures += 1;
                println!("FAILED {} {}", e.message_id, e);
            }
        }
    }
    producer.shutdown().await;
    anyhow::ensure!(failures == 0, "{failures} of {} sends failed", args.count);
    Ok(())
}

/// Stores one half message and ends it; prints the outcome. False on failure.
async fn send_transactional(producer: &Producer, message: Message, end: EndWith) -> bool {
    let txn = match producer.send_half(message).await {
        Ok(t) => t,
        Err(e) => {
            println!("FAILED {} {}", e.message_id, e);
            return false;
        }
    };
    let (ended, word) = match end {
        EndWith::Commit => (txn.commit().await, "committed"),
        EndWith::Rollback => (txn.rollback().await, "rolled-back"),
    };
    match ended {
        Ok(()) => {
            println!(
                "{} transaction_id={} {word}",
                ok_line(txn.receipt()),
                txn.transaction_id()
            );
            true
        }
        Err(e) => {
            println!(
                "FAILED {} transaction_id={} stored as a half message, not {word}: {e}",
                txn.message_id(),
                txn.transaction_id()
            );
            false
        }
    }
}

/// `sofamq recall`: cancels a pending timer message; prints `RECALLED <message id>`.
pub async fn recall(args: RecallArgs) -> anyhow::Result<()> {
    let mut cfg = ProducerConfig::new(args.access_point.clone());
    cfg.credentials = crate::auth::credentials();
    let producer = Producer::start(cfg).await.context("starting producer")?;
    let r = producer.recall(&args.topic, &args.handle).await;
    producer.shutdown().await;
    let id = r.with_context(|| format!("recalling from {}", args.topic))?;
    println!("RECALLED {id} {}", args.topic);
    Ok(())
}
