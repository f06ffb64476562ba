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
