//! `sofamq bench ...`: the store bench (commit log against a raw write + fdatasync loop), the
//! fsync bench (a raw small append + fdatasync loop's latency) and the cluster benches:
//! `produce` (confirmed sends), `consume` (receive + ack) and `e2e` (send-to-receive
//! latency, the send time travels in the body).
//!
//! The cluster benches share one output: a live progress bar (rate, p99), then a table of
//! msgs/s, MiB/s and latency p50/p90/p99/p99.9/max from an HDR histogram, the SDK's retry
//! and failure counters, and with `--json FILE` the same as JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use sofamq_client::{ConsumerConfig, Message, Producer, ProducerConfig, SimpleConsumer};

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
    /// The store's zero-fill ahead in MiB (as a broker's `prefill_bytes`); 0 turns it off.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(0..=1024))]
    pub prefill_mb: u64,
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
        prefill: args.prefill_mb << 20,
    };
    let res = sofamq_store::bench::run(&opts);
    let _ = std::fs::remove_dir_all(&dir);
    let report = res?;
    println!(
        "store bench: {} B bodies, sync flush, {} s per level, zero-fill ahead {} MiB",
        args.size, args.seconds, args.prefill_mb
    );
    print!("{report}");
    Ok(())
}

#[derive(Args, Debug)]
pub struct FsyncBenchArgs {
    /// Directory on the disk to measure (default: the current directory); the scratch file
    /// goes to `DIR/.sofamq-bench-fsync-<pid>/` and is removed afterwards.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Bytes per append.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Appends, each followed by its own fdatasync.
    #[arg(long, default_value_t = 3000)]
    pub count: usize,
    /// Loops running at once, each on its own file, each doing `--count` appends: 2 stands
    /// for a master and its slave syncing on the same disk (what a replicated send waits for
    /// at best when both copies share it). The figures are over every loop's appends.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// Allocate the file's blocks first (`fallocate` to `--size` x `--count`, fsynced), so
    /// the appends write inside the file and no fdatasync commits a new file size. The blocks
    /// are unwritten extents, so a write into a new block still commits their conversion;
    /// `--zeroed` is what SofaMQ's log does.
    #[arg(long, conflicts_with = "zeroed")]
    pub preallocate: bool,
    /// Write zeros over the file's final size first (`--size` x `--count`, fsynced), so the
    /// appends overwrite existing bytes: what SofaMQ's own writes do in its active segment
    /// with the zero-fill ahead on (`prefill_bytes`, the default).
    #[arg(long)]
    pub zeroed: bool,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Times `--count` appends of `--size` bytes, each followed by an fdatasync, one at a time:
/// the disk's floor under a send at 1 in flight (DESIGN.md section 11 compares the p50s).
pub fn bench_fsync(args: FsyncBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.size > 0 && args.count > 0,
        "--size and --count must be positive"
    );
    let base = match args.dir {
        Some(d) => d,
        None => std::env::current_dir()?,
    };
    let dir = base.join(format!(".sofamq-bench-fsync-{}", std::process::id()));
    use sofamq_store::bench::RawFile;
    let file = match (args.preallocate, args.zeroed) {
        (true, _) => RawFile::Fallocated,
        (_, true) => RawFile::Zeroed,
        _ => RawFile::Empty,
    };
    let t0 = Instant::now();
    let res: Result<Vec<_>, _> = std::thread::scope(|s| {
        let loops: Vec<_> = (0..args.parallel)
            .map(|i| {
                let d = dir.join(format!("loop-{i}"));
                s.spawn(move || {
                    sofamq_store::bench::raw_fsync_latencies(&d, args.size, args.count, file)
                })
            })
            .collect();
        loops
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("fsync loop panicked").into()))
            })
            .collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    let t = Timings::new(res?.into_iter().flatten().collect(), secs);
    let mut at_once = if args.parallel > 1 {
        format!(" ({} loops at once)", args.parallel)
    } else {
        String::new()
    };
    match file {
        RawFile::Fallocated => at_once.push_str(" into a preallocated file"),
        RawFile::Zeroed => at_once.push_str(" into a zeroed file"),
        RawFile::Empty => {}
    }
    println!(
        "raw fdatasync: {} B appends, {} iterations{at_once}: {}",
        args.size,
        t.count(),
        t.text()
    );
    let mut v = serde_json::json!({
        "mode": "fsync", "size": args.size, "iterations": t.count(), "parallel": args.parallel,
        "preallocate": args.preallocate, "zeroed": args.zeroed,
    });
    t.write_json(&mut v, args.json.as_deref())
}

/// One-at-a-time latencies of a raw loop (`bench fsync`, `bench floor`) and the seconds
/// they took: the figures both print and write alike.
pub(crate) struct Timings {
    sorted: Vec<Duration>,
    secs: f64,
}

impl Timings {
    pub(crate) fn new(mut lat: Vec<Duration>, secs: f64) -> Self {
        lat.sort_unstable();
        Timings { sorted: lat, secs }
    }

    pub(crate) fn count(&self) -> usize {
        self.sorted.len()
    }

    fn ms(&self, q: f64) -> f64 {
        sofamq_store::bench::quantile(&self.sorted, q).as_secs_f64() * 1000.0
    }

    fn per_sec(&self) -> f64 {
        self.sorted.len() as f64 / self.secs.max(1e-9)
    }

    /// `p50 .. ms, p90 .. ms, p99 .. ms, max .. ms, N/s`.
    pub(crate) fn text(&self) -> String {
        format!(
            "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms, {:.0}/s",
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(1.0),
            self.per_sec()
        )
    }

    /// Adds the figures to `v` (a JSON object) and writes it to `path` if given.
    pub(crate) fn write_json(
        &self,
        v: &mut serde_json::Value,
        path: Option<&std::path::Path>,
    ) -> anyhow::Result<()> {
        if let Some(o) = v.as_object_mut() {
            for (k, x) in [
                ("per_sec", self.per_sec()),
                ("p50_ms", self.ms(0.5)),
                ("p90_ms", self.ms(0.9)),
                ("p99_ms", self.ms(0.99)),
                ("max_ms", self.ms(1.0)),
            ] {
                o.insert(k.into(), x.into());
            }
        }
        if let Some(path) = path {
            std::fs::write(path, serde_json::to_vec_pretty(v)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ client metrics

/// The SDK reports retries and final failures through the `metrics` facade; the bench
/// installs this recorder (counters only, summed over labels) to print and export them.
struct ClientCounters;

fn counters() -> &'static Mutex<BTreeMap<String, Arc<AtomicU64>>> {
    static C: OnceLock<Mutex<BTreeMap<String, Arc<AtomicU64>>>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(BTreeMap::new()))
}

impl metrics::Recorder for ClientCounters {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let mut g = counters().lock().unwrap_or_else(|e| e.into_inner());
        let c = g.entry(key.name().to_string()).or_default().clone();
        metrics::Counter::from_arc(c)
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

fn install_client_metrics() {
    // A second install (never in the CLI) keeps the first recorder.
    let _ = metrics::set_global_recorder(ClientCounters);
}

fn client_counter(name: &str) -> u64 {
    counters()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

// ------------------------------------------------------------------ shared machinery

fn new_hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds")
}

/// Progress shared by the worker tasks and the progress bar.
struct Live {
    done: AtomicU64,
    failed: AtomicU64,
    /// Latencies in microseconds.
    hist: Mutex<Histogram<u64>>,
    measuring: AtomicBool,
    stop: AtomicBool,
    /// Messages still to send in `--count` mode (`u64::MAX`: time mode).
    left: AtomicU64,
}

impl Live {
    fn new(count: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            hist: Mutex::new(new_hist()),
            measuring: AtomicBool::new(count.is_some()),
            stop: AtomicBool::new(false),
            left: AtomicU64::new(count.unwrap_or(u64::MAX)),
        })
    }

    /// Takes up to `n` messages of the `--count` budget; 0 when it is spent or stopped.
    fn claim(&self, n: u64) -> u64 {
        if self.stop.load(Ordering::Relaxed) {
            return 0;
        }
        let mut got = 0;
        let _ = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                got = v.min(n);
                (got > 0).then(|| v - got)
            });
        got
    }

    fn record(&self, n: u64, latency: Duration) {
        if !self.measuring.load(Ordering::Relaxed) {
            return;
        }
        self.done.fetch_add(n, Ordering::Relaxed);
        let us = (latency.as_micros() as u64).clamp(1, 600_000_000);
        let mut h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
        let _ = h.record_n(us, n.max(1));
    }

    fn fail(&self, n: u64) {
        if self.measuring.load(Ordering::Relaxed) {
            self.failed.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn p99_ms(&self) -> f64 {
        self.hist
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .value_at_quantile(0.99) as f64
            / 1000.0
    }
}

/// Shows rate and p99 until `until` resolves; `count` sets the bar length.
async fn progress(live: &Live, count: Option<u64>, seconds: f64, mut until: impl FnMut() -> bool) {
    let (len, template) = match count {
        Some(n) => (n, "{bar:30} {pos}/{len} {elapsed} {msg}"),
        None => ((seconds * 10.0) as u64, "{bar:30} {elapsed} {msg}"),
    };
    let bar = indicatif::ProgressBar::new(len.max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let t0 = Instant::now();
    while !until() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let done = live.done.load(Ordering::Relaxed);
        let rate = done as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        match count {
            Some(_) => bar.set_position(done),
            None => bar.set_position((t0.elapsed().as_secs_f64() * 10.0) as u64),
        }
        bar.set_message(format!("{rate:.0} msg/s  p99 {:.3} ms", live.p99_ms()));
    }
    bar.finish_and_clear();
}

/// The result of a cluster bench.
struct Report {
    mode: &'static str,
    /// What the latency measures.
    latency_of: &'static str,
    size: usize,
    messages: u64,
    failed: u64,
    seconds: f64,
    hist: Histogram<u64>,
    params: serde_json::Value,
    extra: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    fn q(&self, p: f64) -> f64 {
        self.hist.value_at_quantile(p) as f64 / 1000.0
    }

    fn json(&self) -> serde_json::Value {
        let rate = self.messages as f64 / self.seconds.max(1e-9);
        let mut v = serde_json::json!({
            "mode": self.mode,
            "size": self.size,
            "messages": self.messages,
            "failed": self.failed,
            "seconds": self.seconds,
            "msgs_per_sec": rate,
            "mib_per_sec": rate * self.size as f64 / (1024.0 * 1024.0),
            "latency_of": self.latency_of,
            "latency_ms": {
                "p50": self.q(0.5), "p90": self.q(0.9), "p99": self.q(0.99),
                "p999": self.q(0.999), "max": self.hist.max() as f64 / 1000.0,
                "samples": self.hist.len(),
            },
            "client": {
                "send_retries": client_counter(sofamq_client::METRIC_SEND_RETRIES),
                "send_failures": client_counter(sofamq_client::METRIC_SEND_FAILURES),
            },
            "params": self.params,
        });
        if let Some(o) = v.as_object_mut() {
            for (k, x) in &self.extra {
                o.insert(k.clone(), x.clone());
            }
        }
        v
    }

    fn print(&self) {
        let v = self.json();
        println!("{} bench ({}): {}", self.mode, self.latency_of, self.params);
        println!(
            "{:>12} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
            "messages",
            "msgs/s",
            "MiB/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "failed",
            "seconds"
        );
        println!(
            "{:>12} {:>10.0} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9} {:>8.2}",
            self.messages,
            v["msgs_per_sec"].as_f64().unwrap_or(0.0),
            v["mib_per_sec"].as_f64().unwrap_or(0.0),
            self.q(0.5),
            self.q(0.9),
            self.q(0.99),
            self.q(0.999),
            self.hist.max() as f64 / 1000.0,
            self.failed,
            self.seconds
        );
        for (k, x) in &self.extra {
            println!("{k}: {x}");
        }
        println!(
            "client: send retries {}, send failures {}",
            v["client"]["send_retries"], v["client"]["send_failures"]
        );
    }

    fn finish(&self, json: Option<&PathBuf>) -> anyhow::Result<()> {
        self.print();
        if let Some(path) = json {
            std::fs::write(path, serde_json::to_vec_pretty(&self.json())?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

/// Where and what the cluster benches load.
#[derive(Args, Debug, Clone)]
pub struct Load {
    /// NameServer address.
    #[arg(long, default_value = "127.0.0.1:9876", env = "SOFAMQ_ACCESS_POINT")]
    pub access_point: String,
    /// Topic (must exist unless `--queues` is given).
    #[arg(long)]
    pub topic: String,
    /// Create (or update) the topic with this many queues on every master first.
    #[arg(long)]
    pub queues: Option<u32>,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Creates the topic (of type `ty`) on every master when `--queues` asks for it.
async fn ensure_topic(load: &Load, ty: sofamq_proto::v2::MessageType) -> anyhow::Result<()> {
    let Some(queues) = load.queues else {
        return Ok(());
    };
    let target = crate::target::Target {
        access_point: load.access_point.clone(),
        broker_addr: None,
        groups: Vec::new(),
    };
    for (broker, addr) in crate::target::masters(&target).await? {
        let r = crate::auth::admin_client(crate::target::channel(&addr).await?)
            .create_topic(sofamq_proto::admin::CreateTopicRequest {
                topic: Some(sofamq_proto::admin::TopicSpec {
                    name: load.topic.clone(),
                    queue_count: queues,
                    message_type: ty as i32,
                    perm: 0,
                }),
            })
            .await
            .context("CreateTopic")?
            .into_inner();
        crate::target::check(r.status).with_context(|| format!("creating topic on {broker}"))?;
    }
    // Let the brokers re-register so the route includes the topic.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Ok(())
}

/// Options shared by the sending side of `produce` and `e2e`.
#[derive(Args, Debug, Clone)]
pub struct Send {
    /// Producer instances (each its own SDK producer and connections).
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Concurrent calls in flight per producer (each a task awaiting its receipt).
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,
    /// Messages per `send_batch` call (1 = single sends).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Seconds to measure (after `--warmup`); ignored with `--count`.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Send exactly this many messages (no warm-up) instead of running for `--seconds`.
    #[arg(long)]
    pub count: Option<u64>,
    /// Unmeasured seconds before measuring (time mode).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Max messages per coalesced request in the SDK (the SDK's default).
    #[arg(long, default_value_t = 256)]
    pub max_request_messages: usize,
    /// Max concurrent requests per broker in the SDK (default: the SDK's own).
    #[arg(long)]
    pub max_inflight_requests: Option<usize>,
    /// Send DELAY messages due this long after each send (e.g. `1h`, so they stay
    /// pending); the topic must be a DELAY topic (`--queues` creates it as one).
    #[arg(long, value_parser = crate::timefmt::parse_duration)]
    pub delay: Option<Duration>,
    /// With `--delay`: spread the due times evenly over `[delay, delay + spread)`.
    #[arg(long, value_parser = crate::timefmt::parse_duration, requires = "delay")]
    pub delay_spread: Option<Duration>,
}

impl Send {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.producers > 0 && self.inflight > 0 && self.batch > 0,
            "--producers, --inflight and --batch must be positive"
        );
        anyhow::ensure!(
            self.seconds > 0.0 || self.count.is_some(),
            "--seconds must be positive"
        );
        Ok(())
    }

    fn params(&self) -> serde_json::Value {
        serde_json::json!({
            "producers": self.producers, "inflight": self.inflight, "batch": self.batch,
            "count": self.count, "seconds": self.seconds,
            "delay_ms": self.delay.map(|d| d.as_millis() as u64),
            "delay_spread_ms": self.delay_spread.map(|d| d.as_millis() as u64),
        })
    }

    /// The message type of the topic these sends need.
    fn topic_type(&self) -> sofamq_proto::v2::MessageType {
        match self.delay {
            Some(_) => sofamq_proto::v2::MessageType::Delay,
            None => sofamq_proto::v2::MessageType::Normal,
        }
    }
}

/// When the messages of a `--delay` run are due: `delay` after the send, plus an offset in
/// `[0, spread)` that visits the range evenly (a golden-ratio sequence over the message
/// number), so a long run lays its timers over the whole range.
#[derive(Debug, Clone, Copy, Default)]
struct DueTimes {
    delay: Option<Duration>,
    spread: Duration,
}

impl DueTimes {
    fn of(send: &Send) -> Self {
        Self {
            delay: send.delay,
            spread: send.delay_spread.unwrap_or_default(),
        }
    }

    /// The offset into the spread of message number `n`.
    fn offset(&self, n: u64) -> Duration {
        let ms = self.spread.as_millis() as u64;
        if ms == 0 {
            return Duration::ZERO;
        }
        // Fractional part of n * (golden ratio - 1), as a 64-bit fixed-point fraction.
        let frac = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Duration::from_millis(((u128::from(frac) * u128::from(ms)) >> 64) as u64)
    }

    /// The message to send: plain, or due at `now + delay + offset(n)`.
    fn message(&self, topic: &str, body: bytes::Bytes, n: u64) -> Message {
        match self.delay {
            None => Message::new(topic.to_string(), body),
            Some(d) => Message::builder(topic.to_string(), body)
                .delivery_timestamp(SystemTime::now() + d + self.offset(n))
                .build(),
        }
    }
}

/// Starts the producers and their sending tasks. `body(i)` makes the i-th body (called at
/// send time, so it can carry a timestamp). Returns the producers and the tasks.
async fn start_senders(
    load: &Load,
    send: &Send,
    live: &Arc<Live>,
    body: fn(usize, &bytes::Bytes) -> bytes::Bytes,
) -> anyhow::Result<(Vec<Producer>, Vec<tokio::task::JoinHandle<()>>)> {
    let mut producers = Vec::new();
    let mut tasks = Vec::new();
    let pad = bytes::Bytes::from(vec![b'x'; load.size]);
    let due = DueTimes::of(send);
    let seq = Arc::new(AtomicU64::new(0));
    for _ in 0..send.producers {
        let mut cfg = ProducerConfig::new([load.access_point.clone()])
            .with_batch_limits(send.max_request_messages.max(send.batch), 16 << 20);
        if let Some(n) = send.max_inflight_requests {
            cfg = cfg.with_max_in_flight_per_broker(n);
        }
        let producer = Producer::start(cfg).await?;
        // Resolve the route before timing.
        producer
            .send(due.message(&load.topic, vec![b'w'; load.size].into(), 0))
            .await
            .context("warm-up send")?;
        for _ in 0..send.inflight {
            let (p, topic, live, pad, seq) = (
                producer.clone(),
                load.topic.clone(),
                live.clone(),
                pad.clone(),
                seq.clone(),
            );
            let (batch, size) = (send.batch as u64, load.size);
            tasks.push(tokio::spawn(async move {
                loop {
                    let n = live.claim(batch);
                    if n == 0 {
                        break;
                    }
                    let t0 = Instant::now();
                    let first = seq.fetch_add(n, Ordering::Relaxed);
                    let ok = if n == 1 {
                        p.send(due.message(&topic, body(size, &pad), first))
                            .await
                            .is_ok()
                    } else {
                        let msgs = (first..first + n)
                            .map(|i| due.message(&topic, body(size, &pad), i))
                            .collect();
                        p.send_batch(msgs).await.is_ok()
                    };
                    if ok {
                        live.record(n, t0.elapsed());
                    } else {
                        live.fail(n);
                    }
                }
            }));
        }
        producers.push(producer);
    }
    Ok((producers, tasks))
}

/// Runs the senders for `--seconds` after `--warmup`, or until `--count` is sent, showing
/// progress. Returns the measured seconds and what the machine's cores did meanwhile.
async fn drive(
    send: &Send,
    live: &Arc<Live>,
    tasks: &[tokio::task::JoinHandle<()>],
) -> (f64, Option<crate::cpu::CpuShare>) {
    if send.count.is_none() && send.warmup > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(send.warmup)).await;
    }
    live.measuring.store(true, Ordering::Relaxed);
    let cpu0 = crate::cpu::CpuTimes::now();
    let t0 = Instant::now();
    match send.count {
        Some(_) => {
            progress(live, send.count, send.seconds, || {
                tasks.iter().all(|t| t.is_finished())
            })
            .await
        }
        None => {
            let end = t0 + Duration::from_secs_f64(send.seconds);
            progress(live, None, send.seconds, || Instant::now() >= end).await;
            live.measuring.store(false, Ordering::Relaxed);
            live.stop.store(true, Ordering::Relaxed);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = cpu0
        .zip(crate::cpu::CpuTimes::now())
        .and_then(|(a, b)| a.share_until(&b, cores));
    (secs, cpu)
}

/// Every message shares the one padding buffer (`Bytes` is reference-counted and the SDK
/// never copies a body before writing it to the socket buffer), so the load generator does
/// not spend a body copy per message.
fn plain_body(_size: usize, pad: &bytes::Bytes) -> bytes::Bytes {
    pad.clone()
}

// ------------------------------------------------------------------ produce

/// Options of `sofamq bench produce`.
#[derive(Args, Debug)]
pub struct ProduceBenchArgs {
    #[command(flatten)]
    pub load: Load,
    #[command(flatten)]
    pub send: Send,
    /// After the run, write the confirmed messages' bytes twice with a raw loop in this
    /// directory (put it on the broker's disk) and print the run's msgs/s as a share of the
    /// raw loop's (see `RawTwoCopy`).
    #[arg(long)]
    pub raw_dir: Option<PathBuf>,
    /// With `--raw-dir`: the master's HTTP address (`host:port`, serving `/metrics`). The
    /// raw loop then writes in the broker's own mean fdatasync batch over the run (synced
    /// bytes / fdatasyncs), instead of one batch per send call.
    #[arg(long, requires = "raw_dir")]
    pub raw_metrics: Option<String>,
}

/// The master's commit-log fdatasync counters: (fdatasyncs, bytes they made durable).
async fn fsync_counters(http: &str) -> anyhow::Result<(f64, f64)> {
    let (code, body) = sofamq_testkit::http::get(http, "/metrics", Duration::from_secs(5)).await?;
    anyhow::ensure!(code == 200, "GET {http}/metrics: status {code}");
    Ok((
        metric_sum(&body, "sofamq_store_fsync_seconds_count"),
        metric_sum(&body, "sofamq_store_synced_bytes_total"),
    ))
}

/// The sum of a Prometheus text metric's samples over every label set.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// The raw two-copy loop a replicated produce run is compared with (DESIGN.md section 11:
/// batched sends at >= 80 % of a raw loop writing the same bytes twice on the same disk).
///
/// With `--raw-metrics`, the batches are the broker's own: its mean fdatasync batch over the
/// run, read from the master's `/metrics`. Without, the plan is the client's: one batch per
/// send call (`--batch` messages; the last one holds the rest); the broker's group commit
/// merges many calls into one fsync, so that raw loop fsyncs far more often and flatters the
/// ratio. Each message counts [`approx_record_len`] bytes. Both copies write every batch,
/// each to its own file in its own thread, appending and fdatasyncing per batch
/// (`store::bench::raw_copies`).
#[derive(Debug, Clone, PartialEq)]
struct RawTwoCopy {
    /// Messages the run confirmed (and the raw loop wrote, twice).
    messages: u64,
    /// Seconds the run measured.
    run_secs: f64,
    /// Seconds the raw loop took for both copies.
    raw_secs: f64,
    /// Batches (fsyncs) per copy.
    batches: usize,
    /// Bytes of a full batch.
    batch_bytes: u64,
    /// Bytes counted per message.
    record_len: usize,
}

impl RawTwoCopy {
    fn raw_msgs_per_sec(&self) -> f64 {
        self.messages as f64 / self.raw_secs.max(1e-9)
    }

    /// The run's msgs/s over the raw loop's: raw time over run time for the same messages.
    fn ratio(&self) -> f64 {
        self.raw_secs / self.run_secs.max(1e-9)
    }

    fn line(&self) -> String {
        format!(
            "raw two-copy: {:.0} msgs/s, ratio {:.1}% ({} batches of {} B per copy, {} B a message)",
            self.raw_msgs_per_sec(),
            self.ratio() * 100.0,
            self.batches,
            self.batch_bytes,
            self.record_len
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "msgs_per_sec": self.raw_msgs_per_sec(), "ratio": self.ratio(),
            "seconds": self.raw_secs, "batches": self.batches, "batch_bytes": self.batch_bytes,
            "record_len": self.record_len,
        })
    }
}

/// What a message of `size` body bytes on `topic`, sent by the SDK from `born_host`, takes in
/// the commit log: the record header, topic and the properties the broker adds to every plain
/// message (message id, the SDK's 42 characters; type; born host). Consume-queue entries are
/// left out: the broker does not fsync them per batch.
fn approx_record_len(topic: &str, size: usize, born_host: &str) -> usize {
    use sofamq_broker::validate::keys;
    let rec = sofamq_store::NewRecord {
        topic: topic.to_string(),
        properties: vec![
            (keys::MSG_ID.to_string(), "0".repeat(42)),
            (keys::TYPE.to_string(), "1".to_string()),
            (keys::BORN_HOST.to_string(), born_host.to_string()),
        ],
        body: bytes::Bytes::from(vec![0u8; size]),
        ..Default::default()
    };
    sofamq_store::record::encoded_len(&rec).unwrap_or(sofamq_store::record::HEADER_LEN + size)
}

/// Byte counts of the raw loop's batches: `messages` in batches of `batch` (the last one
/// holds the rest), `record_len` bytes each.
fn raw_plan(messages: u64, batch: usize, record_len: usize) -> Vec<u64> {
    let batch = batch.max(1) as u64;
    let mut plan = vec![batch * record_len as u64; (messages / batch) as usize];
    let rest = messages % batch;
    if rest > 0 {
        plan.push(rest * record_len as u64);
    }
    plan
}

/// Byte counts of batches of `batch_bytes` (at least one record) covering `messages`
/// records of `record_len` bytes; the last batch holds the rest.
fn raw_plan_bytes(messages: u64, batch_bytes: u64, record_len: usize) -> Vec<u64> {
    let total = messages * record_len as u64;
    let batch = batch_bytes.max(record_len as u64).max(1);
    let mut plan = vec![batch; (total / batch) as usize];
    if !total.is_multiple_of(batch) {
        plan.push(total % batch);
    }
    plan
}

/// Runs the raw two-copy loop for a run that confirmed `messages` in `run_secs`; with
/// `broker_batch`, in batches of that many bytes (the broker's mean fdatasync batch).
fn raw_two_copy(
    dir: &std::path::Path,
    load: &Load,
    send: &Send,
    messages: u64,
    run_secs: f64,
    broker_batch: Option<u64>,
) -> anyhow::Result<RawTwoCopy> {
    let record_len = approx_record_len(&load.topic, load.size, &sofamq_client::host_name());
    let plan = match broker_batch {
        Some(b) => raw_plan_bytes(messages, b, record_len),
        None => raw_plan(messages, send.batch, record_len),
    };
    let scratch = dir.join(format!(".sofamq-bench-raw-{}", std::process::id()));
    let res = sofamq_store::bench::raw_copies(&scratch, &plan, 2);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(RawTwoCopy {
        messages,
        run_secs,
        raw_secs: res.context("raw two-copy loop")?,
        batches: plan.len(),
        batch_bytes: plan.iter().copied().max().unwrap_or(0),
        record_len,
    })
}

/// Runs the produce bench: confirmed sends, latency per call.
pub async fn bench_produce(args: ProduceBenchArgs) -> anyhow::Result<()> {
    args.send.check()?;
    install_client_metrics();
    ensure_topic(&args.load, args.send.topic_type()).await?;
    let live = Live::new(args.send.count);
    let before = match &args.raw_metrics {
        Some(http) => Some(fsync_counters(http).await?),
        None => None,
    };
    let (producers, tasks) = start_senders(&args.load, &args.send, &live, plain_body).await?;
    let (seconds, cpu) = drive(&args.send, &live, &tasks).await;
    for t in tasks {
        t.await?;
    }
    for p in producers {
        p.shutdown().await;
    }
    // The broker's mean fdatasync batch over the run (warm-up included).
    let broker_batch = match (&args.raw_metrics, before) {
        (Some(http), Some((f0, b0))) => {
            let (f1, b1) = fsync_counters(http).await?;
            anyhow::ensure!(
                f1 > f0,
                "the broker at {http} made no fdatasync during the run"
            );
            Some(((b1 - b0) / (f1 - f0)).round() as u64)
        }
        _ => None,
    };
    let hist = live.hist.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let messages = live.done.load(Ordering::Relaxed);
    let mut extra = serde_json::Map::new();
    let raw = match &args.raw_dir {
        Some(dir) => Some(raw_two_copy(
            dir,
            &args.load,
            &args.send,
            messages,
            seconds,
            broker_batch,
        )?),
        None => None,
    };
    if let Some(r) = &raw {
        extra.insert("raw_two_copy".into(), r.json());
    }
    if let Some(c) = &cpu {
        extra.insert("cpu".into(), c.json());
    }
    let report = Report {
        mode: "produce",
        latency_of: "send call until receipt",
        size: args.load.size,
        messages,
        failed: live.failed.load(Ordering::Relaxed),
        seconds,
        hist,
        params: args.send.params(),
        extra,
    };
    report.finish(args.load.json.as_ref())?;
    if let Some(c) = &cpu {
        println!("{}", c.line());
    }
    if let Some(r) = &raw {
        println!("{}", r.line());
    }
    Ok(())
}

// ------------------------------------------------------------------ consume

/// Options of `sofamq bench consume`.
#[derive(Args, Debug)]
pub struct ConsumeBenchArgs {
    #[command(flatten)]
    pub load: Load,
    /// Consumer group (default: a fresh one, so it starts at the beginning).
    #[arg(long)]
    pub group: Option<String>,
    /// Messages to pre-load with the producer before timing (0 = none).
    #[arg(long, default_value_t = 200_000)]
    pub preload: u64,
    /// Messages per receive.
    #[arg(long, default_value_t = 32)]
    pub batch: u32,
    /// Concurrent consumers (receive + ack loops).
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// Longest run in seconds (stops earlier when the topic is drained).
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// Stop after receiving this many messages.
    #[arg(long)]
    pub count: Option<u64>,
}

/// Pre-loads the topic, then receives and acks as fast as possible.
pub async fn bench_consume(args: ConsumeBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.batch > 0 && args.consumers > 0,
        "--batch and --consumers must be positive"
    );
    install_client_metrics();
    ensure_topic(&args.load, sofamq_proto::v2::MessageType::Normal).await?;
    let mut produce_rate = 0.0;
    if args.preload > 0 {
        let send = Send {
            producers: 1,
            inflight: 64,
            batch: 32,
            seconds: 0.0,
            count: Some(args.preload),
            warmup: 0.0,
            max_request_messages: 256,
            max_inflight_requests: None,
            delay: None,
            delay_spread: None,
        };
        let live = Live::new(Some(args.preload));
        let (producers, tasks) = start_senders(&args.load, &send, &live, plain_body).await?;
        let t0 = Instant::now();
        for t in tasks {
            t.await?;
        }
        for p in producers {
            p.shutdown().await;
        }
        produce_rate = live.done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
        println!("preload (batches of 32): {produce_rate:.0} msg/s");
    }
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| format!("bench-{}", std::process::id()));
    let live = Live::new(Some(args.count.unwrap_or(u64::MAX)));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.consumers {
        let cfg = ConsumerConfig::new([args.load.access_point.clone()], group.clone())
            .with_long_polling_timeout(Duration::from_millis(500));
        let c = SimpleConsumer::start(cfg, vec![(args.load.topic.clone(), "*".into())]).await?;
        let (live, batch) = (live.clone(), args.batch);
        tasks.push(tokio::spawn(async move {
            let mut empty = 0;
            while Instant::now() < deadline && empty < 2 && !live.stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let msgs = c.receive(batch, Duration::from_secs(60)).await?;
                if msgs.is_empty() {
                    empty += 1;
                    continue;
                }
                empty = 0;
                let took = t.elapsed();
                c.ack_all(&msgs).await?;
                live.record(msgs.len() as u64, took);
                if live.claim(msgs.len() as u64) < msgs.len() as u64 {
                    live.stop.store(true, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    progress(&live, args.count, args.seconds, || {
        tasks.iter().all(|t| t.is_finished())
    })
    .await;
    for t in tasks {
        t.await??;
    }
    let hist = live.hist.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut extra = serde_json::Map::new();
    extra.insert("preload_msgs_per_sec".into(), produce_rate.into());
    let report = Report {
        mode: "consume",
        latency_of: "receive call (per batch)",
        size: args.load.size,
        messages: live.done.load(Ordering::Relaxed),
        failed: 0,
        seconds: t0.elapsed().as_secs_f64(),
        hist,
        params: serde_json::json!({
            "consumers": args.consumers, "batch": args.batch, "group": group,
            "preload": args.preload, "count": args.count,
        }),
        extra,
    };
    report.finish(args.load.json.as_ref())
}

// ------------------------------------------------------------------ e2e

/// Marks bodies written by `bench e2e`: magic, run id, send time (ns since the epoch).
const E2E_MAGIC: &[u8; 8] = b"SOFAE2E1";
const E2E_HEADER: usize = 24;

fn run_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        t ^ (u64::from(std::process::id()) << 32)
    })
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

fn e2e_body(size: usize, pad: &bytes::Bytes) -> bytes::Bytes {
    let mut b = Vec::with_capacity(size.max(E2E_HEADER));
    b.extend_from_slice(E2E_MAGIC);
    b.extend_from_slice(&run_id().to_be_bytes());
    b.extend_from_slice(&now_ns().to_be_bytes());
    if size > E2E_HEADER {
        b.extend_from_slice(&pad[..size - E2E_HEADER]);
    }
    bytes::Bytes::from(b)
}

/// The send time of a body written by this run, if it is one.
fn e2e_sent_at(body: &[u8]) -> Option<u64> {
    if body.len() < E2E_HEADER || &body[..8] != E2E_MAGIC {
        return None;
    }
    let id = u64::from_be_bytes(body[8..16].try_into().ok()?);
    (id == run_id()).then(|| u64::from_be_bytes(body[16..24].try_into().unwrap_or_default()))
}

/// Options of `sofamq bench e2e`.
#[derive(Args, Debug)]
pub struct E2eBenchArgs {
    #[command(flatten)]
    pub load: Load,
    #[command(flatten)]
    pub send: Send,
    /// Concurrent consumers (receive + ack loops).
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// Messages per receive.
    #[arg(long, default_value_t = 32)]
    pub receive_batch: u32,
    /// Consumer group (default: a fresh one).
    #[arg(long)]
    pub group: Option<String>,
    /// After the producers stop, how long to wait for the rest to arrive.
    #[arg(long, default_value_t = 10.0)]
    pub drain_seconds: f64,
}

/// Sends bodies carrying their send time and measures send-to-receive latency.
pub async fn bench_e2e(args: E2eBenchArgs) -> anyhow::Result<()> {
    args.send.check()?;
    anyhow::ensure!(
        args.consumers > 0 && args.receive_batch > 0,
        "--consumers and --receive-batch must be positive"
    );
    install_client_metrics();
    ensure_topic(&args.load, args.send.topic_type()).await?;
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| format!("bench-e2e-{}", std::process::id()));
    // Receivers first, so the group exists and follows from the start.
    let recv = Live::new(Some(u64::MAX));
    let stop_recv = Arc::new(AtomicBool::new(false));
    let mut consumers = Vec::new();
    for _ in 0..args.consumers {
        let cfg = ConsumerConfig::new([args.load.access_point.clone()], group.clone())
            .with_long_polling_timeout(Duration::from_millis(200));
        let c = SimpleConsumer::start(cfg, vec![(args.load.topic.clone(), "*".into())]).await?;
        let (recv, stop, batch) = (recv.clone(), stop_recv.clone(), args.receive_batch);
        consumers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let msgs = match c.receive(batch, Duration::from_secs(30)).await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "receive failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let now = now_ns();
                for m in &msgs {
                    if let Some(sent) = e2e_sent_at(&m.body) {
                        recv.record(1, Duration::from_nanos(now.saturating_sub(sent)));
                    }
                }
                if !msgs.is_empty() && c.ack_all(&msgs).await.is_err() {
                    tracing::warn!("ack failed");
                }
            }
            drop(c);
        }));
    }
    let sent = Live::new(args.send.count);
    let (producers, tasks) = start_senders(&args.load, &args.send, &sent, e2e_body).await?;
    // Receipt progress is what the bar shows (rate and p99 of end-to-end latency).
    if args.send.count.is_none() && args.send.warmup > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(args.send.warmup)).await;
    }
    sent.measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(args.send.seconds);
    let timed = args.send.count.is_none();
    progress(&recv, args.send.count, args.send.seconds, || {
        if timed && Instant::now() >= end {
            sent.measuring.store(false, Ordering::Relaxed);
            sent.stop.store(true, Ordering::Relaxed);
        }
        tasks.iter().all(|t| t.is_finished())
    })
    .await;
    let send_seconds = t0.elapsed().as_secs_f64();
    for t in tasks {
        t.await?;
    }
    for p in producers {
        p.shutdown().await;
    }
    // Wait until everything acknowledged arrived (or the drain time is up).
    let want = sent.done.load(Ordering::Relaxed);
    let drain_end = Instant::now() + Duration::from_secs_f64(args.drain_seconds);
    while recv.done.load(Ordering::Relaxed) < want && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    stop_recv.store(true, Ordering::Relaxed);
    for c in consumers {
        let _ = tokio::time::timeout(Duration::from_secs(5), c).await;
    }
    let received = recv.done.load(Ordering::Relaxed);
    let hist = recv.hist.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let send_hist = sent.hist.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut extra = serde_json::Map::new();
    extra.insert("sent".into(), want.into());
    extra.insert(
        "send_msgs_per_sec".into(),
        (want as f64 / send_seconds.max(1e-9)).into(),
    );
    extra.insert(
        "send_latency_ms".into(),
        serde_json::json!({
            "p50": send_hist.value_at_quantile(0.5) as f64 / 1000.0,
            "p99": send_hist.value_at_quantile(0.99) as f64 / 1000.0,
            "max": send_hist.max() as f64 / 1000.0,
        }),
    );
    extra.insert("missing".into(), want.saturating_sub(received).into());
    let mut params = args.send.params();
    params["consumers"] = args.consumers.into();
    params["receive_batch"] = args.receive_batch.into();
    params["group"] = group.into();
    let report = Report {
        mode: "e2e",
        latency_of: "send to receive",
        size: args.load.size.max(E2E_HEADER),
        messages: received,
        failed: sent.failed.load(Ordering::Relaxed),
        seconds,
        hist,
        params,
        extra,
    };
    report.finish(args.load.json.as_ref())
}

// ------------------------------------------------------------------ timers

/// Marks bodies written by `bench timers`: magic, run id, due time (ms since the epoch),
/// sequence number.
const TIMER_MAGIC: &[u8; 8] = b"SOFATMR1";
const TIMER_HEADER: usize = 32;

fn timer_body(size: usize, pad: &bytes::Bytes, due_ms: u64, seq: u64) -> bytes::Bytes {
    let mut b = Vec::with_capacity(size.max(TIMER_HEADER));
    b.extend_from_slice(TIMER_MAGIC);
    b.extend_from_slice(&run_id().to_be_bytes());
    b.extend_from_slice(&due_ms.to_be_bytes());
    b.extend_from_slice(&seq.to_be_bytes());
    if size > TIMER_HEADER {
        b.extend_from_slice(&pad[..size - TIMER_HEADER]);
    }
    bytes::Bytes::from(b)
}

/// `(due ms, sequence number)` of a body written by this run, if it is one.
fn timer_body_of(body: &[u8]) -> Option<(u64, u64)> {
    if body.len() < TIMER_HEADER || &body[..8] != TIMER_MAGIC {
        return None;
    }
    let word = |i: usize| body[i..i + 8].try_into().ok().map(u64::from_be_bytes);
    (word(8)? == run_id()).then_some((word(16)?, word(24)?))
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// How many messages a paced sender should have started `elapsed` into the run.
fn paced_target(rate: f64, elapsed: Duration, total: u64) -> u64 {
    ((elapsed.as_secs_f64() * rate) as u64).min(total)
}

/// Options of `sofamq bench timers`.
#[derive(Args, Debug)]
pub struct TimersBenchArgs {
    #[command(flatten)]
    pub load: Load,
    /// Timers sent per second, at a steady pace (so as many fall due per second).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Each timer is due this long after its send.
    #[arg(long, default_value = "5s", value_parser = crate::timefmt::parse_duration)]
    pub delay: Duration,
    /// Seconds of sending.
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// Most sends awaiting their receipt at once.
    #[arg(long, default_value_t = 256)]
    pub inflight: usize,
    /// Concurrent consumers (receive + ack loops).
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// Messages per receive.
    #[arg(long, default_value_t = 32)]
    pub receive_batch: u32,
    /// Consumer group (default: a fresh one).
    #[arg(long)]
    pub group: Option<String>,
    /// After the last timer is due, how long to wait for the rest to arrive.
    #[arg(long, default_value_t = 10.0)]
    pub drain_seconds: f64,
}

/// What the consumers of `bench timers` collect.
struct TimerRecv {
    /// Receive wall-clock time minus due time, µs (late side; early ones counted apart).
    late: Histogram<u64>,
    /// Store timestamp of the delivered copy minus due time, µs.
    store_late: Histogram<u64>,
    /// Received before their due time (receive clock).
    early: u64,
    /// Stored (delivered copy) before their due time.
    store_early: u64,
    seen: std::collections::HashSet<u64>,
    duplicates: u64,
}

impl TimerRecv {
    fn new() -> Self {
        Self {
            late: new_hist(),
            store_late: new_hist(),
            early: 0,
            store_early: 0,
            seen: Default::default(),
            duplicates: 0,
        }
    }

    /// Records one received timer: receive time `now_us`, store time `store_ms`.
    fn observe(&mut self, due_ms: u64, seq: u64, now_us: u64, store_ms: i64) {
        if !self.seen.insert(seq) {
            self.duplicates += 1;
            return;
        }
        let due_us = due_ms.saturating_mul(1000);
        if now_us < due_us {
            self.early += 1;
        }
        let _ = self
            .late
            .record(now_us.saturating_sub(due_us).clamp(1, 600_000_000));
        if store_ms > 0 {
            let store_us = (store_ms as u64).saturating_mul(1000);
            if store_us < due_us {
                self.store_early += 1;
            }
            let _ = self
                .store_late
                .record(store_us.saturating_sub(due_us).clamp(1, 600_000_000));
        }
    }
}

fn quantiles_ms(h: &Histogram<u64>) -> serde_json::Value {
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    serde_json::json!({
        "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
        "max": h.max() as f64 / 1000.0, "samples": h.len(),
    })
}

/// Sends timers at a steady rate, due `--delay` after each send, while consumers of a group
/// receive the topic; reports how late each arrived after its due time.
pub async fn bench_timers(args: TimersBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0.0 && args.seconds > 0.0 && args.inflight > 0,
        "--rate, --seconds and --inflight must be positive"
    );
    anyhow::ensure!(
        args.consumers > 0 && args.receive_batch > 0,
        "--consumers and --receive-batch must be positive"
    );
    install_client_metrics();
    ensure_topic(&args.load, sofamq_proto::v2::MessageType::Delay).await?;
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| format!("bench-timers-{}", std::process::id()));
    let size = args.load.size.max(TIMER_HEADER);
    let pad = bytes::Bytes::from(vec![b'x'; size]);

    // Receivers first, so the group exists and follows from the start.
    let recv = Arc::new(Mutex::new(TimerRecv::new()));
    let received = Arc::new(AtomicU64::new(0));
    let stop_recv = Arc::new(AtomicBool::new(false));
    let mut consumers = Vec::new();
    for _ in 0..args.consumers {
        let cfg = ConsumerConfig::new([args.load.access_point.clone()], group.clone())
            .with_long_polling_timeout(Duration::from_millis(500));
        let c = SimpleConsumer::start(cfg, vec![(args.load.topic.clone(), "*".into())]).await?;
        let (recv, received, stop, batch) = (
            recv.clone(),
            received.clone(),
            stop_recv.clone(),
            args.receive_batch,
        );
        consumers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let msgs = match c.receive(batch, Duration::from_secs(30)).await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "receive failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let now_us = now_ns() / 1000;
                {
                    let mut r = recv.lock().unwrap_or_else(|e| e.into_inner());
                    for m in &msgs {
                        if let Some((due, seq)) = timer_body_of(&m.body) {
                            r.observe(due, seq, now_us, m.store_timestamp_ms);
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if !msgs.is_empty() && c.ack_all(&msgs).await.is_err() {
                    tracing::warn!("ack failed");
                }
            }
            drop(c);
        }));
    }

    let producer = Producer::start(
        ProducerConfig::new([args.load.access_point.clone()]).with_batch_limits(256, 16 << 20),
    )
    .await?;
    // Resolve the route before timing (a timer due at once, from no run: never counted).
    producer
        .send_at(
            Message::new(args.load.topic.clone(), vec![b'w'; 8]),
            SystemTime::now(),
        )
        .await
        .context("warm-up send")?;

    let total = (args.rate * args.seconds).round() as u64;
    let sent = Live::new(None);
    sent.measuring.store(true, Ordering::Relaxed);
    let slots = Arc::new(tokio::sync::Semaphore::new(args.inflight));
    // Most sends behind the pace at any tick (the sender could not keep up).
    let mut max_behind = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut started = 0u64;
    let mut last_print = Instant::now();
    while started < total {
        tick.tick().await;
        let target = paced_target(args.rate, t0.elapsed(), total);
        while started < target {
            let permit = slots.clone().acquire_owned().await?;
            let due = SystemTime::now() + args.delay;
            let due_ms = epoch_ms(due);
            let msg = Message::builder(
                args.load.topic.clone(),
                timer_body(size, &pad, due_ms, started),
            )
            .delivery_timestamp(UNIX_EPOCH + Duration::from_millis(due_ms))
            .build();
            let (p, live) = (producer.clone(), sent.clone());
            tasks.spawn(async move {
                let t = Instant::now();
                match p.send(msg).await {
                    Ok(_) => live.record(1, t.elapsed()),
                    Err(e) => {
                        tracing::warn!(error = %e, "timer send failed");
                        live.fail(1);
                    }
                }
                drop(permit);
            });
            started += 1;
        }
        while tasks.try_join_next().is_some() {}
        max_behind = max_behind.max(paced_target(args.rate, t0.elapsed(), total) - started);
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            eprintln!(
                "{:>5.1} s: sent {}, received {}",
                t0.elapsed().as_secs_f64(),
                sent.done.load(Ordering::Relaxed),
                received.load(Ordering::Relaxed)
            );
        }
    }
    while tasks.join_next().await.is_some() {}
    let send_seconds = t0.elapsed().as_secs_f64();
    producer.shutdown().await;
    let ok = sent.done.load(Ordering::Relaxed);
    // The last timer is due `delay` after the last send; wait for the rest after that.
    let drain_end = Instant::now() + args.delay + Duration::from_secs_f64(args.drain_seconds);
    while received.load(Ordering::Relaxed) < ok && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            eprintln!(
                "{:>5.1} s: sent {ok}, received {}",
                t0.elapsed().as_secs_f64(),
                received.load(Ordering::Relaxed)
            );
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    stop_recv.store(true, Ordering::Relaxed);
    for c in consumers {
        let _ = tokio::time::timeout(Duration::from_secs(5), c).await;
    }
    let r = recv.lock().unwrap_or_else(|e| e.into_inner());
    let got = r.seen.len() as u64;
    let send_hist = sent.hist.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut extra = serde_json::Map::new();
    extra.insert("sent".into(), ok.into());
    extra.insert(
        "send_failed".into(),
        sent.failed.load(Ordering::Relaxed).into(),
    );
    extra.insert("received".into(), got.into());
    extra.insert("missing".into(), ok.saturating_sub(got).into());
    extra.insert("duplicates".into(), r.duplicates.into());
    extra.insert("early".into(), r.early.into());
    extra.insert(
        "send_msgs_per_sec".into(),
        (ok as f64 / send_seconds.max(1e-9)).into(),
    );
    extra.insert("max_behind_pace".into(), max_behind.into());
    extra.insert("send_latency_ms".into(), quantiles_ms(&send_hist));
    extra.insert(
        "store_lateness_ms".into(),
        serde_json::json!({
            "of": "store timestamp of the delivered copy minus due (ms resolution)",
            "quantiles": quantiles_ms(&r.store_late),
            "early": r.store_early,
        }),
    );
    let report = Report {
        mode: "timers",
        latency_of: "lateness: receive time minus due time",
        size,
        messages: got,
        failed: sent.failed.load(Ordering::Relaxed),
        seconds,
        hist: r.late.clone(),
        params: serde_json::json!({
            "rate": args.rate, "delay_ms": args.delay.as_millis() as u64,
            "seconds": args.seconds, "inflight": args.inflight,
            "consumers": args.consumers, "receive_batch": args.receive_batch, "group": group,
        }),
        extra,
    };
    report.finish(args.load.json.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_loops_at_once_each_do_their_count_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("out.json");
        bench_fsync(FsyncBenchArgs {
            dir: Some(dir.path().to_path_buf()),
            size: 512,
            count: 7,
            parallel: 3,
            preallocate: true,
            zeroed: false,
            json: Some(json.clone()),
        })
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(v["iterations"], 21);
        assert_eq!(v["parallel"], 3);
        assert_eq!(v["preallocate"], true);
        assert!(v["p50_ms"].as_f64().unwrap() > 0.0);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "out.json")
            .collect();
        assert!(left.is_empty(), "scratch left behind: {left:?}");
    }

    #[test]
    fn e2e_bodies_round_trip_and_foreign_bodies_are_ignored() {
        let pad = bytes::Bytes::from(vec![b'x'; 100]);
        let b = e2e_body(100, &pad);
        assert_eq!(b.len(), 100);
        let at = e2e_sent_at(&b).expect("own body");
        assert!(now_ns() >= at);
        assert_eq!(e2e_sent_at(b"short"), None);
        let mut other = b.to_vec();
        other[8] ^= 1; // another run
        assert_eq!(e2e_sent_at(&other), None);
        assert_eq!(e2e_body(4, &pad).len(), E2E_HEADER);
    }

    #[test]
    fn raw_plan_covers_every_message_once() {
        assert_eq!(raw_plan(100, 32, 10), vec![320, 320, 320, 40]);
        assert_eq!(raw_plan(64, 32, 10), vec![320, 320]);
        assert_eq!(raw_plan(3, 1, 7), vec![7, 7, 7]);
        assert_eq!(raw_plan(5, 0, 7), vec![7; 5]);
        assert!(raw_plan(0, 32, 10).is_empty());
    }

    #[test]
    fn record_len_counts_header_topic_properties_and_body() {
        let a = approx_record_len("bench", 1024, "h");
        assert!(a > 1024 + sofamq_store::record::HEADER_LEN + 42, "{a}");
        assert_eq!(approx_record_len("bench", 1024, "hh"), a + 1);
        assert_eq!(approx_record_len("bench", 1000, "h"), a - 24);
    }

    #[test]
    fn broker_batches_and_metric_sums() {
        assert_eq!(raw_plan_bytes(10, 4_000, 1_000), vec![4_000, 4_000, 2_000]);
        // A batch never holds less than one record.
        assert_eq!(raw_plan_bytes(2, 10, 1_000), vec![1_000, 1_000]);
        assert!(raw_plan_bytes(0, 4_000, 1_000).is_empty());
        let text = "# HELP x\n\
            sofamq_store_fsync_seconds_count{broker=\"a\"} 12\n\
            sofamq_store_fsync_seconds_count{broker=\"b\"} 3\n\
            sofamq_store_fsync_seconds_sum 0.5\n\
            sofamq_store_synced_bytes_total 4096\n";
        assert_eq!(metric_sum(text, "sofamq_store_fsync_seconds_count"), 15.0);
        assert_eq!(metric_sum(text, "sofamq_store_synced_bytes_total"), 4096.0);
        assert_eq!(metric_sum(text, "sofamq_store_fsync_seconds"), 0.0);
    }

    #[test]
    fn raw_two_copy_ratio_and_line() {
        let r = RawTwoCopy {
            messages: 100_000,
            run_secs: 1.0,
            raw_secs: 0.8,
            batches: 3125,
            batch_bytes: 36_000,
            record_len: 1125,
        };
        assert!((r.raw_msgs_per_sec() - 125_000.0).abs() < 1e-6);
        assert!((r.ratio() - 0.8).abs() < 1e-12);
        assert_eq!(
            r.line(),
            "raw two-copy: 125000 msgs/s, ratio 80.0% (3125 batches of 36000 B per copy, 1125 B a message)"
        );
        assert_eq!(r.json()["batches"], 3125);
    }

    #[test]
    fn count_budget_is_claimed_exactly() {
        let live = Live::new(Some(10));
        assert_eq!(live.claim(4), 4);
        assert_eq!(live.claim(4), 4);
        assert_eq!(live.claim(4), 2);
        assert_eq!(live.claim(4), 0);
    }

    #[test]
    fn timer_bodies_round_trip_and_lateness_is_recorded_once() {
        let pad = bytes::Bytes::from(vec![b'x'; 64]);
        let b = timer_body(64, &pad, 1_000, 7);
        assert_eq!(b.len(), 64);
        assert_eq!(timer_body_of(&b), Some((1_000, 7)));
        assert_eq!(timer_body_of(&e2e_body(64, &pad)), None);
        let mut r = TimerRecv::new();
        r.observe(1_000, 7, 1_020_000, 1_010);
        r.observe(1_000, 7, 1_030_000, 1_010); // a redelivery
        r.observe(2_000, 8, 1_999_000, 0); // early, no store time
        assert_eq!(
            (r.seen.len(), r.duplicates, r.early, r.store_early),
            (2, 1, 1, 0)
        );
        assert_eq!(r.late.len(), 2);
        assert_eq!(r.store_late.len(), 1);
        assert!(r.late.equivalent(r.late.max(), 20_000));
    }

    #[test]
    fn pace_and_due_spread() {
        assert_eq!(
            paced_target(1000.0, Duration::from_millis(1500), 10_000),
            1500
        );
        assert_eq!(
            paced_target(1000.0, Duration::from_secs(60), 10_000),
            10_000
        );
        let d = DueTimes {
            delay: Some(Duration::from_secs(3600)),
            spread: Duration::from_secs(3600),
        };
        // The offsets cover the spread evenly: every tenth of it gets about a tenth.
        let mut tenths = [0u32; 10];
        for n in 0..10_000 {
            let o = d.offset(n);
            assert!(o < d.spread);
            tenths[(o.as_millis() * 10 / d.spread.as_millis()) as usize] += 1;
        }
        assert!(
            tenths.iter().all(|&c| (900..=1100).contains(&c)),
            "{tenths:?}"
        );
        assert_eq!(DueTimes::default().offset(5), Duration::ZERO);
        assert!(
            DueTimes::default()
                .message("t", "b".into(), 0)
                .delivery_timestamp()
                .is_none()
        );
        assert!(d.message("t", "b".into(), 0).delivery_timestamp().is_some());
    }
}
