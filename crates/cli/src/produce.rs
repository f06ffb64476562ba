//! `sofamq produce`: send messages with the SDK and print each receipt.

use anyhow::Context;
use sofamq_client::{Message, Producer, ProducerConfig};

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
    #[arg(long)]
    pub group: Option<String>,
    /// Send attempts per message (including the first).
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
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

/// Sends `--count` messages, printing `OK <message id> <topic> <broker> <queue offset>` per receipt.
pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let mut cfg =
        ProducerConfig::new(args.access_point.clone()).with_max_attempts(args.max_attempts);
    cfg.credentials = crate::auth::credentials();
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
        match producer.send(b.build()).await {
            Ok(r) => println!(
                "OK {} {} {} {}",
                r.message_id, r.topic, r.broker, r.queue_offset
            ),
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
