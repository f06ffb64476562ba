//! peerbench: confirmed-publish load generators for SofaMQ's peers.
//!
//! Each subcommand keeps a window of `--inflight` publishes outstanding on one
//! connection, counts a message only when the server has confirmed it (NATS
//! JetStream: the PubAck; RabbitMQ: the publisher confirm), and prints one
//! JSON line with throughput and latency (publish call to confirm).
//!
//! The server side decides durability (see scripts/bench/peers.sh and
//! docs/benchmarks.md): JetStream with `sync_interval: always` and RabbitMQ
//! quorum queues only confirm after an fsync.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, BoxError>;
type Pending = Pin<Box<dyn Future<Output = (Instant, Result<()>)> + Send>>;

#[derive(Parser)]
#[command(
    name = "peerbench",
    about = "Confirmed-publish benchmark against NATS JetStream or RabbitMQ"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// JetStream publish (PubAck awaited) to a file-storage stream.
    Nats {
        /// Server URL (loopback only).
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        url: String,
        /// Stream name (deleted and recreated at start).
        #[arg(long, default_value = "BENCH")]
        stream: String,
        #[command(flatten)]
        common: Common,
    },
    /// Publish with publisher confirms to a durable quorum queue, persistent messages.
    Rabbitmq {
        /// AMQP URI (loopback only).
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        url: String,
        /// Queue name (deleted and redeclared as `x-queue-type: quorum` at start).
        #[arg(long, default_value = "bench")]
        queue: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Publishes outstanding (sent, not yet confirmed) at any time.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Measured duration in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Unmeasured warm-up before the measurement, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Replica count: NATS creates the stream with it; for RabbitMQ it is only
    /// reported (the quorum queue spans every node of the cluster).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Label for the "system" field of the JSON line.
    #[arg(long)]
    label: Option<String>,
}

/// Something that can start one confirmed publish.
trait Publisher {
    /// Sends one message; the returned future resolves when it is confirmed.
    fn publish(&mut self, body: &[u8]) -> impl Future<Output = Result<Pending>>;
}

struct Report {
    msgs: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
}

/// Drives `p` with a window of `c.inflight` outstanding publishes: a warm-up,
/// then a measured phase; drains the window at the end of each phase.
async fn drive<P: Publisher>(p: &mut P, c: &Common) -> Result<Report> {
    let body: Vec<u8> = (0..c.size).map(|i| (i % 251) as u8).collect();
    let inflight = c.inflight.max(1);
    let _ = run_phase(p, &body, inflight, Duration::from_secs_f64(c.warmup)).await?;
    run_phase(p, &body, inflight, Duration::from_secs_f64(c.seconds)).await
}

async fn run_phase<P: Publisher>(
    p: &mut P,
    body: &[u8],
    inflight: usize,
    dur: Duration,
) -> Result<Report> {
    // 1 us .. 60 s, 3 significant digits; values in microseconds.
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut window: FuturesUnordered<Pending> = FuturesUnordered::new();
    let start = Instant::now();
    let deadline = start + dur;
    let mut msgs = 0u64;
    let mut record = |sent: Instant, r: Result<()>| -> Result<()> {
        r?;
        let us = sent.elapsed().as_micros().max(1) as u64;
        hist.saturating_record(us);
        msgs += 1;
        Ok(())
    };
    while Instant::now() < deadline {
        while window.len() < inflight {
            window.push(p.publish(body).await?);
        }
        if let Some((sent, r)) = window.next().await {
            record(sent, r)?;
        }
    }
    // Drain: count everything that was sent, and the time it took to confirm.
    while let Some((sent, r)) = window.next().await {
        record(sent, r)?;
    }
    let elapsed = start.elapsed();
    Ok(Report {
        msgs,
        elapsed,
        hist,
    })
}

struct Nats {
    js: async_nats::jetstream::Context,
    subject: String,
}

impl Publisher for Nats {
    async fn publish(&mut self, body: &[u8]) -> Result<Pending> {
        let sent = Instant::now();
        let ack = self
            .js
            .publish(self.subject.clone(), body.to_vec().into())
            .await?;
        Ok(Box::pin(async move {
            let r = ack.await.map(|_| ()).map_err(|e| Box::new(e) as BoxError);
            (sent, r)
        }))
    }
}

async fn run_nats(url: &str, stream: &str, c: &Common) -> Result<Report> {
    use async_nats::jetstream::{self, stream::Config, stream::StorageType};
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client);
    let _ = js.delete_stream(stream).await; // absent on a fresh server
    let subject = format!("{}.msgs", stream.to_lowercase());
    let config = Config {
        name: stream.to_string(),
        subjects: vec![subject.clone()],
        storage: StorageType::File,
        num_replicas: c.replicas,
        ..Default::default()
    };
    // A cluster that has just started may not have a JetStream meta leader yet:
    // retry for a bounded time.
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        match js.create_stream(config.clone()).await {
            Ok(_) => break,
            Err(e) if Instant::now() < give_up => {
                eprintln!("peerbench: create stream: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut p = Nats { js, subject };
    let report = drive(&mut p, c).await?;
    let _ = p.js.delete_stream(stream).await;
    Ok(report)
}

struct Rabbit {
    channel: lapin::Channel,
    queue: String,
}

impl Publisher for Rabbit {
    async fn publish(&mut self, body: &[u8]) -> Result<Pending> {
        use lapin::{BasicProperties, options::BasicPublishOptions};
        let sent = Instant::now();
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                // delivery_mode 2 = persistent
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        Ok(Box::pin(async move {
            let r = match confirm.await {
                Ok(c) if c.is_ack() => Ok(()),
                Ok(_) => Err("publish not acknowledged (nack)".into()),
                Err(e) => Err(Box::new(e) as BoxError),
            };
            (sent, r)
        }))
    }
}

async fn run_rabbitmq(url: &str, queue: &str, c: &Common) -> Result<Report> {
    use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut p = Rabbit {
        channel,
        queue: queue.to_string(),
    };
    let report = drive(&mut p, c).await?;
    let _ = p
        .channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "bye".into()).await;
    Ok(report)
}

fn print(system: &str, c: &Common, r: &Report) {
    let ms = |q: f64| r.hist.value_at_quantile(q) as f64 / 1000.0;
    let line = serde_json::json!({
        "system": system,
        "replicas": c.replicas,
        "inflight": c.inflight,
        "size": c.size,
        "msgs": r.msgs,
        "seconds": r.elapsed.as_secs_f64(),
        "msgs_per_sec": (r.msgs as f64 / r.elapsed.as_secs_f64()).round(),
        "p50_ms": ms(0.50),
        "p99_ms": ms(0.99),
        "max_ms": r.hist.max() as f64 / 1000.0,
    });
    println!("{line}");
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Two worker threads: the machine this runs on has two cores shared with the server.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.cmd {
            Cmd::Nats {
                url,
                stream,
                common,
            } => {
                let r = run_nats(&url, &stream, &common).await?;
                print(common.label.as_deref().unwrap_or("nats"), &common, &r);
            }
            Cmd::Rabbitmq { url, queue, common } => {
                let r = run_rabbitmq(&url, &queue, &common).await?;
                print(common.label.as_deref().unwrap_or("rabbitmq"), &common, &r);
            }
        }
        Ok(())
    })
}
