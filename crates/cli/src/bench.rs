//! `sofamq bench ...`: the store bench (commit log against a raw write +
//! fdatasync loop) and the produce bench (end-to-end sends through a cluster).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use sofamq_client::{Message, Producer, ProducerConfig};

#[derive(Args, Debug)]
pub struct StoreBenchArgs {
    /// Scratch directory (default: a temporary directory under the current directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Seconds per concurrency level.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Record body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Comma-separated concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub concurrency: Vec<usize>,
}

pub fn bench_store(args: StoreBenchArgs) -> anyhow::Result<()> {
    let base = match args.dir {
        Some(d) => d,
        None => std::env::current_dir()?,
    };
    let dir = base.join(format!(".sofamq-bench-store-{}", std::process::id()));
    let opts = sofamq_store::bench::BenchOptions {
        dir: dir.clone(),
        duration: Duration::from_secs_f64(args.seconds),
        record_size: args.size,
        concurrency: args.concurrency,
    };
    let res = sofamq_store::bench::run(&opts);
    let _ = std::fs::remove_dir_all(&dir);
    let report = res?;
    println!(
        "store bench: {} B bodies, sync flush, {} s per level",
        args.size, args.seconds
    );
    print!("{report}");
    Ok(())
}

/// Options of `sofamq bench produce`.
#[derive(Args, Debug)]
pub struct ProduceBenchArgs {
    /// NameServer address.
    #[arg(long, default_value = "127.0.0.1:9876", env = "SOFAMQ_ACCESS_POINT")]
    pub access_point: String,
    /// Topic to send to (must exist).
    #[arg(long)]
    pub topic: String,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Concurrent sends in flight (each a task awaiting its receipt).
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,
    /// Messages per `send_batch` call (1 = single sends).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Seconds to run (after a 1 s warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Max messages per coalesced request in the SDK.
    #[arg(long, default_value_t = 64)]
    pub max_request_messages: usize,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs the produce bench and prints msgs/s, MiB/s and latency percentiles.
pub async fn bench_produce(args: ProduceBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.inflight > 0 && args.batch > 0,
        "--inflight and --batch must be positive"
    );
    let cfg = ProducerConfig::new([args.access_point.clone()])
        .with_batch_limits(args.max_request_messages.max(args.batch), 16 << 20);
    let producer = Producer::start(cfg).await?;
    // Resolve the route once before timing.
    producer
        .send(Message::new(args.topic.clone(), vec![b'w'; args.size]))
        .await
        .context("warm-up send")?;
    let body = bytes::Bytes::from(vec![b'x'; args.size]);
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.inflight {
        let (p, topic, body) = (producer.clone(), args.topic.clone(), body.clone());
        let (stop, measuring, sent, failed) = (
            stop.clone(),
            measuring.clone(),
            sent.clone(),
            failed.clone(),
        );
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let ok = if batch == 1 {
                    p.send(Message::new(topic.clone(), body.clone()))
                        .await
                        .is_ok()
                } else {
                    let msgs = (0..batch)
                        .map(|_| Message::new(topic.clone(), body.clone()))
                        .collect();
                    p.send_batch(msgs).await.is_ok()
                };
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        sent.fetch_add(batch as u64, Ordering::Relaxed);
                        let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                    } else {
                        failed.fetch_add(batch as u64, Ordering::Relaxed);
                    }
                }
            }
            hist
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let bar = indicatif::ProgressBar::new((args.seconds * 10.0) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let deadline = t0 + Duration::from_secs_f64(args.seconds);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rate = sent.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
        bar.inc(1);
        bar.set_message(format!("{rate:.0} msg/s"));
    }
    measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    bar.finish_and_clear();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        hist.add(t.await?)?;
    }
    producer.shutdown().await;
    let n = sent.load(Ordering::Relaxed);
    let rate = n as f64 / elapsed;
    let mib = rate * args.size as f64 / (1024.0 * 1024.0);
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    println!(
        "produce: {} B, {} in flight, batch {}: {rate:.0} msg/s, {mib:.1} MiB/s, failed {}",
        args.size,
        args.inflight,
        args.batch,
        failed.load(Ordering::Relaxed)
    );
    println!(
        "latency per call (ms): p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        hist.max() as f64 / 1000.0
    );
    if let Some(path) = args.json {
        let v = serde_json::json!({
            "size": args.size, "inflight": args.inflight, "batch": args.batch,
            "seconds": elapsed, "messages": n, "msgs_per_sec": rate, "mib_per_sec": mib,
            "failed": failed.load(Ordering::Relaxed),
            "latency_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": hist.max() as f64 / 1000.0},
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&v)?)?;
    }
    Ok(())
}

/// Options of `sofamq bench consume`.
#[derive(Args, Debug)]
pub struct ConsumeBenchArgs {
    /// NameServer address.
    #[arg(long, default_value = "127.0.0.1:9876", env = "SOFAMQ_ACCESS_POINT")]
    pub access_point: String,
    /// Topic to consume (must exist).
    #[arg(long)]
    pub topic: String,
    /// Consumer group (default: a fresh one, so it starts at the beginning).
    #[arg(long)]
    pub group: Option<String>,
    /// Messages to pre-load with the producer before timing (0 = none).
    #[arg(long, default_value_t = 200_000)]
    pub preload: u64,
    /// Body size of pre-loaded messages.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Messages per receive.
    #[arg(long, default_value_t = 32)]
    pub batch: u32,
    /// Concurrent consumers (receive + ack loops).
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// Longest run in seconds (stops earlier when the topic is drained).
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Pre-loads the topic, then receives and acks as fast as possible; prints
/// produce and consume msgs/s of the same run and receive latency percentiles.
pub async fn bench_consume(args: ConsumeBenchArgs) -> anyhow::Result<()> {
    use sofamq_client::{ConsumerConfig, SimpleConsumer};
    anyhow::ensure!(
        args.batch > 0 && args.consumers > 0,
        "--batch and --consumers must be positive"
    );
    let mut produce_rate = 0.0;
    if args.preload > 0 {
        let producer = Producer::start(ProducerConfig::new([args.access_point.clone()])).await?;
        let body = bytes::Bytes::from(vec![b'x'; args.size]);
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        let per = args.preload / 64 + 1;
        let left = Arc::new(AtomicU64::new(args.preload));
        for _ in 0..64 {
            let (p, topic, body, left) = (
                producer.clone(),
                args.topic.clone(),
                body.clone(),
                left.clone(),
            );
            tasks.push(tokio::spawn(async move {
                for _ in 0..per {
                    if left
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(32))
                        .is_err()
                    {
                        break;
                    }
                    let msgs = (0..32)
                        .map(|_| Message::new(topic.clone(), body.clone()))
                        .collect();
                    p.send_batch(msgs).await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        produce_rate = args.preload as f64 / t0.elapsed().as_secs_f64();
        producer.shutdown().await;
        println!("produce (preload, batches of 32): {produce_rate:.0} msg/s");
    }
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| format!("bench-{}", std::process::id()));
    let received = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.consumers {
        let cfg = ConsumerConfig::new([args.access_point.clone()], group.clone())
            .with_long_polling_timeout(Duration::from_millis(500));
        let c = SimpleConsumer::start(cfg, vec![(args.topic.clone(), "*".into())]).await?;
        let (received, batch) = (received.clone(), args.batch);
        tasks.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut empty = 0;
            while Instant::now() < deadline && empty < 2 {
                let t = Instant::now();
                let msgs = c.receive(batch, Duration::from_secs(60)).await?;
                if msgs.is_empty() {
                    empty += 1;
                    continue;
                }
                empty = 0;
                let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                c.ack_all(&msgs).await?;
                received.fetch_add(msgs.len() as u64, Ordering::Relaxed);
            }
            anyhow::Ok(hist)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        hist.add(t.await??)?;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let n = received.load(Ordering::Relaxed);
    let rate = n as f64 / elapsed;
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    println!(
        "consume: {} consumers, batch {}: {n} messages in {elapsed:.2} s = {rate:.0} msg/s (receive + ack each)",
        args.consumers, args.batch
    );
    println!(
        "receive latency (ms): p50 {:.3}  p99 {:.3}  max {:.3}",
        q(0.5),
        q(0.99),
        hist.max() as f64 / 1000.0
    );
    if let Some(path) = args.json {
        let v = serde_json::json!({
            "produce_msgs_per_sec": produce_rate, "consume_msgs_per_sec": rate, "messages": n,
            "consumers": args.consumers, "batch": args.batch, "size": args.size,
            "receive_latency_ms": {"p50": q(0.5), "p99": q(0.99), "max": hist.max() as f64 / 1000.0},
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&v)?)?;
    }
    Ok(())
}
