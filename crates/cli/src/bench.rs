//! `sofamq bench ...`: the store bench (commit log against a raw write + fdatasync loop)
//! and the cluster benches: `produce` (confirmed sends), `consume` (receive + ack) and
//! `e2e` (send-to-receive latency, the send time travels in the body).
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

/// Creates the topic on every master when `--queues` asks for it.
async fn ensure_topic(load: &Load) -> anyhow::Result<()> {
    let Some(queues) = load.queues else {
        return Ok(());
    };
    let target = crate::topic::Target {
        access_point: load.access_point.clone(),
        broker_addr: None,
    };
    for (broker, addr) in crate::topic::masters(&target).await? {
        let r = crate::auth::admin_client(crate::topic::channel(&addr).await?)
            .create_topic(sofamq_proto::admin::CreateTopicRequest {
                topic: Some(sofamq_proto::admin::TopicSpec {
                    name: load.topic.clone(),
                    queue_count: queues,
                    message_type: sofamq_proto::v2::MessageType::Normal as i32,
                    perm: 0,
                }),
            })
            .await
            .context("CreateTopic")?
            .into_inner();
        crate::admin::check(r.status).with_context(|| format!("creating topic on {broker}"))?;
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
        })
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
    for _ in 0..send.producers {
        let mut cfg = ProducerConfig::new([load.access_point.clone()])
            .with_batch_limits(send.max_request_messages.max(send.batch), 16 << 20);
        if let Some(n) = send.max_inflight_requests {
            cfg = cfg.with_max_in_flight_per_broker(n);
        }
        let producer = Producer::start(cfg).await?;
        // Resolve the route before timing.
        producer
            .send(Message::new(load.topic.clone(), vec![b'w'; load.size]))
            .await
            .context("warm-up send")?;
        for _ in 0..send.inflight {
            let (p, topic, live, pad) = (
                producer.clone(),
                load.topic.clone(),
                live.clone(),
                pad.clone(),
            );
            let (batch, size) = (send.batch as u64, load.size);
            tasks.push(tokio::spawn(async move {
                loop {
                    let n = live.claim(batch);
                    if n == 0 {
                        break;
                    }
                    let t0 = Instant::now();
                    let ok = if n == 1 {
                        p.send(Message::new(topic.clone(), body(size, &pad)))
                            .await
                            .is_ok()
                    } else {
                        let msgs = (0..n)
                            .map(|_| Message::new(topic.clone(), body(size, &pad)))
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
/// progress. Returns the measured seconds.
async fn drive(send: &Send, live: &Arc<Live>, tasks: &[tokio::task::JoinHandle<()>]) -> f64 {
    if send.count.is_none() && send.warmup > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(send.warmup)).await;
    }
    live.measuring.store(true, Ordering::Relaxed);
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
    t0.elapsed().as_secs_f64()
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
}

/// Runs the produce bench: confirmed sends, latency per call.
pub async fn bench_produce(args: ProduceBenchArgs) -> anyhow::Result<()> {
    args.send.check()?;
    install_client_metrics();
    ensure_topic(&args.load).await?;
    let live = Live::new(args.send.count);
    let (producers, tasks) = start_senders(&args.load, &args.send, &live, plain_body).await?;
    let seconds = drive(&args.send, &live, &tasks).await;
    for t in tasks {
        t.await?;
    }
    for p in producers {
        p.shutdown().await;
    }
    let hist = live.hist.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let report = Report {
        mode: "produce",
        latency_of: "send call until receipt",
        size: args.load.size,
        messages: live.done.load(Ordering::Relaxed),
        failed: live.failed.load(Ordering::Relaxed),
        seconds,
        hist,
        params: args.send.params(),
        extra: Default::default(),
    };
    report.finish(args.load.json.as_ref())
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
    ensure_topic(&args.load).await?;
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
    ensure_topic(&args.load).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn count_budget_is_claimed_exactly() {
        let live = Live::new(Some(10));
        assert_eq!(live.claim(4), 4);
        assert_eq!(live.claim(4), 4);
        assert_eq!(live.claim(4), 2);
        assert_eq!(live.claim(4), 0);
    }
}
