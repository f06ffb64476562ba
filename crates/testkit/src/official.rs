//! Official RocketMQ 5 clients through kill -9 of the master (issue 15): the measurement
//! harness.
//!
//! Separate processes on 127.0.0.1: one namesrv, one `sofamq controller`, three brokers of
//! one group (`min_insync_replicas` 2) under controller failover, and one driver process
//! of an official client (Python `rocketmq-python-client` 5.1.2, Node
//! `rocketmq-client-nodejs` 1.0.8 or Rust `rocketmq` 5.0.0; `scripts/compat/`) that runs
//! several producers, each with one send in flight, in the client's default configuration
//! (only the access point, the namesrv, and the topic are set). Every `interval` the
//! current master is killed with SIGKILL:
//!
//! * variant A (`restart_after: Some(d)`): the killed broker is started again `d` later;
//! * variant B (`restart_after: None`): it stays dead for the window and is started again
//!   only [`B_RESTART_LEAD`] before the next kill is due; the next kill waits until it is
//!   back in sync (otherwise killing the next master would leave one in-sync broker, below
//!   `min_insync_replicas`, and the group could not take writes at all).
//!
//! Then the producers are stopped (their standard input is closed), the topic is read back
//! completely by a fresh consumer group of the SofaMQ SDK, and a [`Report`] is computed:
//! per producer and kill the stretch without an OK that spans the kill (client-side
//! receipt times), per producer the longest stretch of the run, sends that failed after
//! the client's own retries (by error text), acked messages missing after the drain, and
//! duplicates.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use sofamq_client::{ConsumerConfig, SimpleConsumer};

use crate::controller::Controllers;
use crate::repl::ReplBroker;
use crate::{Cluster, compat_python, repo_root};

/// The broker group of the scenario.
pub const GROUP: &str = "broker-a";
/// The topic the producers send to.
pub const TOPIC: &str = "fo";
/// Queues of the topic.
pub const QUEUES: u32 = 4;
/// Brokers in the group.
pub const BROKERS: u64 = 3;
/// Variant B: how long before the next kill is due the killed broker is started again.
pub const B_RESTART_LEAD: Duration = Duration::from_secs(2);

/// Which official client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfficialClient {
    /// `rocketmq-python-client` 5.1.2 (`scripts/compat/setup-python.sh`).
    Python,
    /// `rocketmq-client-nodejs` 1.0.8 (`scripts/compat/setup-node.sh`).
    Node,
    /// crate `rocketmq` 5.0.0 (`scripts/compat/setup-rust.sh`).
    Rust,
}

impl OfficialClient {
    /// Parses `python`, `node` or `rust`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "python" | "py" => Ok(Self::Python),
            "node" | "nodejs" | "js" => Ok(Self::Node),
            "rust" | "rs" => Ok(Self::Rust),
            other => bail!("unknown client {other:?} (python, node or rust)"),
        }
    }

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Python => "python (rocketmq-python-client 5.1.2)",
            Self::Node => "node (rocketmq-client-nodejs 1.0.8)",
            Self::Rust => "rust (rocketmq 5.0.0)",
        }
    }
}

/// How to start one driver process (its arguments: ACCESS_POINT TOPIC PRODUCERS DURATION_S).
#[derive(Debug, Clone)]
pub struct Driver {
    /// Program to run.
    pub program: PathBuf,
    /// Arguments before the driver's own.
    pub prefix: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

fn tool_works(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run_setup(script: &str) -> anyhow::Result<String> {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/compat").join(script))
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {script}"))?;
    anyhow::ensure!(out.status.success(), "{script} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text
        .lines()
        .last()
        .with_context(|| format!("{script} printed nothing"))?;
    Ok(last.trim().to_string())
}

/// Installs (once) the driver of `client` and says how to run it; `Ok(None)` (with the
/// reason) when the client's toolchain is not on this machine (Node: node and npm; Rust:
/// cargo). Python is always installable (`setup-python.sh` needs only python3).
pub fn driver(client: OfficialClient) -> anyhow::Result<Result<Driver, String>> {
    let scripts = repo_root().join("scripts/compat");
    Ok(Ok(match client {
        OfficialClient::Python => Driver {
            program: compat_python()?,
            prefix: vec![
                scripts
                    .join("python_failover_producer.py")
                    .display()
                    .to_string(),
            ],
            env: Vec::new(),
        },
        OfficialClient::Node => {
            if !tool_works("node") || !tool_works("npm") {
                return Ok(Err("node and npm are not installed".into()));
            }
            let modules = run_setup("setup-node.sh")?;
            Driver {
                program: PathBuf::from("node"),
                prefix: vec![scripts.join("node_producer.js").display().to_string()],
                env: vec![("NODE_PATH".into(), modules)],
            }
        }
        OfficialClient::Rust => {
            if !tool_works("cargo") {
                return Ok(Err("cargo is not installed".into()));
            }
            Driver {
                program: PathBuf::from(run_setup("setup-rust.sh")?),
                prefix: Vec::new(),
                env: Vec::new(),
            }
        }
    }))
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The official client.
    pub client: OfficialClient,
    /// Producers (one send in flight each).
    pub producers: usize,
    /// Master kills.
    pub kills: usize,
    /// Time between kills (and after the last one, before the producers stop).
    pub interval: Duration,
    /// Variant A: restart the killed broker this long after the kill. `None`: variant B.
    pub restart_after: Option<Duration>,
    /// Sending before the first kill, once every producer had an OK.
    pub warmup: Duration,
    /// Extra `sofamq controller` flags (none: the defaults).
    pub controller_flags: Vec<String>,
    /// Copy the driver's output and the report here when set.
    pub out_dir: Option<PathBuf>,
    /// Official consumers (one group each) that receive and ack beside the producers.
    pub consumers: Vec<ConsumerMode>,
}

impl Scenario {
    /// The measurement of issue 15: 4 producers, a kill every 15 s, variant A (restart
    /// after 1 s) or B.
    pub fn standard(client: OfficialClient, restart: bool, kills: usize) -> Self {
        Self {
            client,
            producers: 4,
            kills,
            interval: Duration::from_secs(15),
            restart_after: restart.then_some(Duration::from_secs(1)),
            warmup: Duration::from_secs(5),
            controller_flags: Vec::new(),
            out_dir: None,
            consumers: Vec::new(),
        }
    }

    /// [`Scenario::standard`] from the environment: `FAILOVER_CLIENT` (python, node,
    /// rust; default python), `FAILOVER_RESTART` (1: variant A, default; 0: variant B),
    /// `FAILOVER_KILLS` (default 10), `FAILOVER_INTERVAL_S` (default 15),
    /// `FAILOVER_PRODUCERS` (default 4), `FAILOVER_OUT` (a directory for the raw results),
    /// `FAILOVER_CONSUMERS` (`simple`, `push` or `simple,push`: official consumers beside
    /// the producers; Python only).
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let client = OfficialClient::parse(&var("FAILOVER_CLIENT").unwrap_or("python".into()))?;
        let restart = var("FAILOVER_RESTART").is_none_or(|v| v != "0");
        let kills = var("FAILOVER_KILLS").map_or(Ok(10), |v| v.parse())?;
        let mut s = Self::standard(client, restart, kills);
        if let Some(v) = var("FAILOVER_INTERVAL_S") {
            s.interval = Duration::from_secs(v.parse()?);
        }
        if let Some(v) = var("FAILOVER_PRODUCERS") {
            s.producers = v.parse()?;
        }
        s.out_dir = var("FAILOVER_OUT").map(PathBuf::from);
        for c in var("FAILOVER_CONSUMERS").unwrap_or_default().split(',') {
            match c.trim() {
                "" => {}
                "simple" => s.consumers.push(ConsumerMode::Simple),
                "push" => s.consumers.push(ConsumerMode::Push),
                other => bail!("unknown consumer {other:?} in FAILOVER_CONSUMERS (simple, push)"),
            }
        }
        Ok(s)
    }
}

/// One kill.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Kill {
    /// Broker id killed.
    pub broker: u64,
    /// When (epoch ms).
    pub at_ms: u64,
    /// When the controller had a new master (epoch ms), if within the window.
    pub new_master_ms: Option<u64>,
    /// The new master.
    pub new_master: Option<u64>,
    /// When the killed broker was started again (epoch ms).
    pub restarted_ms: Option<u64>,
}

/// One send result line of a driver.
#[derive(Debug, Clone, serde::Deserialize)]
struct SendLine {
    producer: usize,
    seq: u64,
    ok: bool,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    error: Option<String>,
    start_ms: u64,
    end_ms: u64,
}

/// A stretch without an OK, seen by one producer around one kill.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Gap {
    /// Producer.
    pub producer: usize,
    /// Kill index.
    pub kill: usize,
    /// The stretch without an OK (ms, between consecutive OK receipts, or from the last OK
    /// to the end of sending when `recovered` is false) that covers most of the kill's
    /// window (the kill to the next kill), whole.
    pub ms: u64,
    /// Whether an OK came after the kill at all.
    pub recovered: bool,
}

/// The figures of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Client name.
    pub client: String,
    /// "A (restart after 1 s)" or "B (...)".
    pub variant: String,
    /// The kills.
    pub kills: Vec<Kill>,
    /// Per producer and kill.
    pub gaps: Vec<Gap>,
    /// Per producer: the longest stretch without an OK over the whole run, in ms
    /// (start to first OK, between OKs, last OK to the end of sending).
    pub longest_per_producer: Vec<u64>,
    /// Median of `gaps` (ms).
    pub gap_median_ms: u64,
    /// Max of `gaps` (ms).
    pub gap_max_ms: u64,
    /// Sends that returned an OK with a message id.
    pub acked: usize,
    /// Sends that failed after the client's own retries.
    pub failed: usize,
    /// Failures by (normalized) error text.
    pub failures_by_reason: BTreeMap<String, usize>,
    /// Failures whose result came within each kill's window (kill to next kill / end).
    pub failures_per_kill: Vec<usize>,
    /// Producers that never started (with the error).
    pub start_failures: Vec<String>,
    /// Messages of the drivers read back by the drain.
    pub drained: usize,
    /// Acked message ids not read back.
    pub lost: usize,
    /// Acked messages read back with another body than the one sent.
    pub body_mismatch: usize,
    /// Message ids stored more than once (at different queue offsets).
    pub duplicate_ids: usize,
    /// Bodies (producer, seq) stored under more than one message id.
    pub duplicate_bodies: usize,
    /// Stored messages whose send the client saw fail (or never saw end).
    pub stored_not_acked: usize,
    /// Whether the drain ended because the topic ran dry (true) or on its time limit.
    pub drain_complete: bool,
    /// The `sofamq` binary the servers ran (path, size, modification time): a shared
    /// target directory may hold another branch's build, so pin it with `SOFAMQ_BIN`.
    pub sofamq_bin: String,
    /// The official consumers that ran beside the producers.
    pub consumers: Vec<ConsumerReport>,
}

/// The goals of issue 15 for one run: a stretch without an OK (or, for a consumer, without
/// a receipt) of at most [`GOAL_GAP_MAX_MS`], a median of at most [`GOAL_GAP_MEDIAN_MS`].
pub const GOAL_GAP_MAX_MS: u64 = 8000;
/// See [`GOAL_GAP_MAX_MS`].
pub const GOAL_GAP_MEDIAN_MS: u64 = 5000;

/// How long a consumer may go without a new receipt, after the producers stopped, while
/// it has not received every acked message (a message whose ack failed comes back after
/// its 10 s invisible duration).
pub const CONSUMER_CATCH_UP: Duration = Duration::from_secs(30);
/// The longest a consumer may take, after the producers stopped, to catch up.
pub const CONSUMER_CATCH_UP_MAX: Duration = Duration::from_secs(300);

impl Report {
    /// What broke a promise: nothing acked lost or stored twice, every consumer received
    /// every acked message, and, when `goals`, the gap bounds and no send that failed
    /// after the client's retries. Empty when the run passes.
    pub fn violations(&self, goals: bool) -> Vec<String> {
        let mut v = Vec::new();
        let mut need = |ok: bool, what: String| {
            if !ok {
                v.push(what);
            }
        };
        need(
            self.start_failures.is_empty(),
            format!("producers did not start: {:?}", self.start_failures),
        );
        need(self.acked > 0, "nothing acked".into());
        need(
            self.drain_complete,
            "the drain did not run dry in time".into(),
        );
        need(self.lost == 0, format!("{} acked messages lost", self.lost));
        need(
            self.body_mismatch == 0,
            format!("{} read back with another body", self.body_mismatch),
        );
        need(
            self.duplicate_ids == 0,
            format!("{} messages stored twice", self.duplicate_ids),
        );
        need(
            self.duplicate_bodies == 0,
            format!("{} sends stored under two ids", self.duplicate_bodies),
        );
        for c in &self.consumers {
            need(
                c.start_error.is_none(),
                format!("{} did not start: {:?}", c.mode, c.start_error),
            );
            need(
                c.missing == 0,
                format!("{}: {} acked messages never received", c.mode, c.missing),
            );
        }
        if goals {
            need(
                self.gap_median_ms <= GOAL_GAP_MEDIAN_MS,
                format!(
                    "gap median {} ms > {GOAL_GAP_MEDIAN_MS} ms",
                    self.gap_median_ms
                ),
            );
            need(
                self.gap_max_ms <= GOAL_GAP_MAX_MS,
                format!("gap max {} ms > {GOAL_GAP_MAX_MS} ms", self.gap_max_ms),
            );
            need(
                self.failed == 0,
                format!("{} sends failed after the client's retries", self.failed),
            );
            for c in &self.consumers {
                need(
                    c.gap_max_ms <= GOAL_GAP_MAX_MS,
                    format!(
                        "{}: {} ms without a receipt > {GOAL_GAP_MAX_MS} ms",
                        c.mode, c.gap_max_ms
                    ),
                );
            }
        }
        v
    }
}

/// Which official consumer runs beside the producers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerMode {
    /// SimpleConsumer: receive up to 16 with a 10 s invisible duration, ack each.
    Simple,
    /// PushConsumer: the listener returns SUCCESS, the client acks.
    Push,
}

impl ConsumerMode {
    /// The driver's mode argument.
    pub fn arg(self) -> &'static str {
        match self {
            Self::Simple => "simple",
            Self::Push => "push",
        }
    }

    /// Its consumer group (one per mode: each receives every message).
    pub fn group(self) -> String {
        format!("fo-{}", self.arg())
    }

    fn name(self) -> &'static str {
        match self {
            Self::Simple => "SimpleConsumer",
            Self::Push => "PushConsumer",
        }
    }
}

/// How to run the consumer driver of `client` in `mode`; `Ok(Err(why))` when there is
/// none (only the Python client has one).
pub fn consumer_driver(
    client: OfficialClient,
    mode: ConsumerMode,
) -> anyhow::Result<Result<Driver, String>> {
    if client != OfficialClient::Python {
        return Ok(Err(format!("no consumer driver for {}", client.name())));
    }
    let script = repo_root().join("scripts/compat/python_failover_consumer.py");
    Ok(Ok(Driver {
        program: compat_python()?,
        prefix: vec![script.display().to_string(), mode.arg().into()],
        env: Vec::new(),
    }))
}

/// The figures of one official consumer through the kills.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsumerReport {
    /// SimpleConsumer or PushConsumer.
    pub mode: String,
    /// Its consumer group.
    pub group: String,
    /// Why it did not start, if it did not.
    pub start_error: Option<String>,
    /// Acked messages it received (distinct message ids).
    pub received: usize,
    /// Deliveries of the drivers' messages (a redelivery counts again).
    pub deliveries: usize,
    /// Deliveries beyond the first of a message id.
    pub redelivered: usize,
    /// Acked messages it never received: must be 0 (at-least-once).
    pub missing: usize,
    /// Acks that failed (SimpleConsumer only; the PushConsumer acks inside the client).
    pub ack_failed: usize,
    /// Of those, messages that were delivered again after the failed ack.
    pub ack_failed_redelivered: usize,
    /// Failed acks by error text.
    pub ack_failures_by_reason: BTreeMap<String, usize>,
    /// Receive calls that failed (SimpleConsumer only).
    pub receive_errors: usize,
    /// Failed receives by error text.
    pub receive_errors_by_reason: BTreeMap<String, usize>,
    /// Per kill: the stretch without a receipt covering most of the kill's window (ms).
    pub gaps_ms: Vec<u64>,
    /// Max of `gaps_ms`.
    pub gap_max_ms: u64,
    /// Whether it had received every acked message before it was stopped.
    pub caught_up: bool,
}

fn consumer_report(
    mode: ConsumerMode,
    lines: &[serde_json::Value],
    acked: &HashMap<String, (usize, u64)>,
    kills: &[Kill],
    stop_ms: u64,
) -> ConsumerReport {
    let ev = |l: &serde_json::Value, e: &str| l["event"].as_str() == Some(e);
    let start_error = lines
        .iter()
        .find(|l| ev(l, "start_failed"))
        .map(|l| l["error"].as_str().unwrap_or("?").to_string());
    let started = lines
        .iter()
        .find(|l| ev(l, "started"))
        .and_then(|l| l["at_ms"].as_u64())
        .unwrap_or(stop_ms);
    let ours: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| ev(l, "received"))
        .filter(|l| l["id"].as_str().is_some_and(|id| acked.contains_key(id)))
        .collect();
    let ids: HashSet<&str> = ours.iter().filter_map(|l| l["id"].as_str()).collect();
    let mut at: Vec<u64> = ours
        .iter()
        .filter_map(|l| l["at_ms"].as_u64())
        .filter(|t| *t <= stop_ms)
        .collect();
    at.sort_unstable();
    let (_, per_kill) = stretches(started, &at, stop_ms, kills);
    let gaps_ms: Vec<u64> = per_kill.iter().map(|g| g.0).collect();
    let by_reason = |event: &str, ok_false: bool| {
        let mut m = BTreeMap::new();
        for l in lines
            .iter()
            .filter(|l| ev(l, event) && (!ok_false || l["ok"].as_bool() == Some(false)))
        {
            *m.entry(normalize_error(l["error"].as_str().unwrap_or("?")))
                .or_insert(0) += 1;
        }
        m
    };
    // A failed ack, then a later delivery of the same id.
    let mut failed_acks: Vec<(&str, u64)> = Vec::new();
    for l in lines
        .iter()
        .filter(|l| ev(l, "ack") && l["ok"].as_bool() == Some(false))
    {
        if let (Some(id), Some(t)) = (l["id"].as_str(), l["at_ms"].as_u64()) {
            failed_acks.push((id, t));
        }
    }
    let mut last_delivery: HashMap<&str, u64> = HashMap::new();
    for l in &ours {
        if let (Some(id), Some(t)) = (l["id"].as_str(), l["at_ms"].as_u64()) {
            let e = last_delivery.entry(id).or_insert(t);
            *e = (*e).max(t);
        }
    }
    let ack_failed_redelivered = failed_acks
        .iter()
        .filter(|(id, t)| last_delivery.get(id).is_some_and(|x| x > t))
        .count();
    let ack_failures_by_reason = by_reason("ack", true);
    let receive_errors_by_reason = by_reason("receive_error", false);
    ConsumerReport {
        mode: mode.name().into(),
        group: mode.group(),
        start_error,
        received: ids.len(),
        deliveries: ours.len(),
        redelivered: ours.len() - ids.len(),
        missing: acked.keys().filter(|id| !ids.contains(id.as_str())).count(),
        ack_failed: failed_acks.len(),
        ack_failed_redelivered,
        ack_failures_by_reason,
        receive_errors: receive_errors_by_reason.values().sum(),
        receive_errors_by_reason,
        gap_max_ms: gaps_ms.iter().copied().max().unwrap_or(0),
        gaps_ms,
        caught_up: false,
    }
}

impl Report {
    /// A human-readable summary.
    pub fn render(&self) -> String {
        let s = |ms: u64| format!("{:.2}", ms as f64 / 1000.0);
        let mut o = String::new();
        let _ = writeln!(o, "client {}; variant {}", self.client, self.variant);
        let _ = writeln!(o, "servers: {}", self.sofamq_bin);
        let t0 = self.kills.first().map_or(0, |k| k.at_ms);
        for (i, k) in self.kills.iter().enumerate() {
            let mut gaps: Vec<&Gap> = self.gaps.iter().filter(|g| g.kill == i).collect();
            gaps.sort_by_key(|g| g.producer);
            let gaps: Vec<String> = gaps
                .iter()
                .map(|g| format!("{}{}", s(g.ms), if g.recovered { "" } else { "+" }))
                .collect();
            let _ = writeln!(
                o,
                "kill {i} at +{}s: b{} killed; new master {} after {}; restarted after {}; gaps per producer (s): [{}]; failures {}",
                s(k.at_ms - t0),
                k.broker,
                k.new_master.map_or("none".into(), |m| format!("b{m}")),
                k.new_master_ms.map_or("-".into(), |t| format!(
                    "{} s",
                    s(t.saturating_sub(k.at_ms))
                )),
                k.restarted_ms.map_or("-".into(), |t| format!(
                    "{} s",
                    s(t.saturating_sub(k.at_ms))
                )),
                gaps.join(", "),
                self.failures_per_kill.get(i).copied().unwrap_or(0),
            );
        }
        let _ = writeln!(
            o,
            "gap over producers and kills: median {} s, max {} s (+ = no OK until the producers stopped)",
            s(self.gap_median_ms),
            s(self.gap_max_ms)
        );
        let longest: Vec<String> = self.longest_per_producer.iter().map(|x| s(*x)).collect();
        let _ = writeln!(
            o,
            "longest stretch without an OK per producer (s): [{}]",
            longest.join(", ")
        );
        let _ = writeln!(
            o,
            "acked {}, failed after the client's retries {}, drained {} (complete: {}), lost {}, body mismatch {}, duplicate ids {}, duplicate bodies {}, stored but not acked {}",
            self.acked,
            self.failed,
            self.drained,
            self.drain_complete,
            self.lost,
            self.body_mismatch,
            self.duplicate_ids,
            self.duplicate_bodies,
            self.stored_not_acked
        );
        for (reason, n) in &self.failures_by_reason {
            let _ = writeln!(o, "  {n:>7} x {reason}");
        }
        for e in &self.start_failures {
            let _ = writeln!(o, "  producer did not start: {e}");
        }
        for c in &self.consumers {
            let gaps: Vec<String> = c.gaps_ms.iter().map(|x| s(*x)).collect();
            let _ = writeln!(
                o,
                "consumer {} (group {}): received {} of {} acked, missing {}; {} deliveries ({} redelivered); acks failed {} ({} delivered again); receive errors {}; stretch without a receipt per kill (s): [{}], max {}; caught up: {}",
                c.mode,
                c.group,
                c.received,
                self.acked,
                c.missing,
                c.deliveries,
                c.redelivered,
                c.ack_failed,
                c.ack_failed_redelivered,
                c.receive_errors,
                gaps.join(", "),
                s(c.gap_max_ms),
                c.caught_up
            );
            if let Some(e) = &c.start_error {
                let _ = writeln!(o, "  did not start: {e}");
            }
            for (reason, n) in c
                .ack_failures_by_reason
                .iter()
                .chain(&c.receive_errors_by_reason)
            {
                let _ = writeln!(o, "  {n:>7} x {reason}");
            }
        }
        o
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Error text with request ids, timestamps, log offsets (runs of 8+ hex digits, or 6+
/// decimal digits; ports and status codes stay) masked,
/// so that the same failure counts as one reason.
pub fn normalize_error(e: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        let digits = run.chars().filter(char::is_ascii_digit).count();
        if (run.len() >= 8 && digits > 0) || (digits >= 6 && digits == run.len()) {
            out.push('#');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in e.chars() {
        if c.is_ascii_hexdigit() || c == '-' {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    let one_line = out.replace('\n', " ");
    if one_line.chars().count() > 200 {
        one_line.chars().take(200).collect::<String>() + "…"
    } else {
        one_line
    }
}

/// The median of `v` (the upper middle for an even count); 0 when empty.
pub fn median(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

struct Running {
    cluster: Cluster,
    ctl: Controllers,
    brokers: Vec<ReplBroker>,
    broker_flags: Vec<String>,
}

impl Running {
    fn start(controller_flags: &[String]) -> anyhow::Result<Self> {
        let cluster = Cluster::start_namesrv()?;
        let dir = cluster.dir.path().to_path_buf();
        let flags: Vec<&str> = controller_flags.iter().map(String::as_str).collect();
        let ctl = Controllers::start(&dir, 1, &flags)?;
        let broker_flags = vec![
            "--topic".to_string(),
            format!("{TOPIC}:{QUEUES}"),
            "--min-insync-replicas".into(),
            "2".into(),
        ];
        let mut me = Self {
            cluster,
            ctl,
            brokers: Vec::new(),
            broker_flags,
        };
        for id in 0..BROKERS {
            let b = ReplBroker::new(&dir, &me.cluster.namesrv.addr, GROUP, &format!("b{id}"))?;
            me.brokers.push(b);
            me.restart(id)?;
        }
        Ok(me)
    }

    fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let addrs = self.ctl.addrs();
        let flags: Vec<&str> = self.broker_flags.iter().map(String::as_str).collect();
        self.brokers[id as usize].start_controlled(GROUP, &addrs, id, &flags)
    }

    async fn state(&self) -> Option<sofamq_controller::GroupState> {
        self.ctl.group(GROUP).await
    }

    /// Waits up to `wait` for a master with every running broker in sync.
    async fn wait_healthy(&self, wait: Duration) -> Option<sofamq_controller::GroupState> {
        let deadline = Instant::now() + wait;
        loop {
            let running = self.brokers.iter().filter(|b| b.node.is_some()).count();
            if let Some(g) = self.state().await
                && g.master.is_some()
                && g.insync.len() >= running
            {
                return Some(g);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

struct DriverProc {
    child: Child,
    out: PathBuf,
}

impl DriverProc {
    /// Starts `d` with `args` after its prefix; its output goes to `<name>.jsonl` and
    /// `<name>.err` in `dir`.
    fn spawn(d: &Driver, dir: &Path, name: &str, args: &[String]) -> anyhow::Result<Self> {
        let out = dir.join(format!("{name}.jsonl"));
        let home = dir.join(format!("{name}-home"));
        std::fs::create_dir_all(&home)?;
        let child = Command::new(&d.program)
            .args(&d.prefix)
            .args(args)
            .envs(d.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // The clients' own log files (~/logs/...) go with the run.
            .env("HOME", &home)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(std::fs::File::create(&out)?))
            .stderr(Stdio::from(std::fs::File::create(
                dir.join(format!("{name}.err")),
            )?))
            .spawn()
            .with_context(|| format!("spawning {}", d.program.display()))?;
        Ok(Self { child, out })
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Closes its standard input (the producers stop) and waits up to `wait` for it to
    /// exit; SIGKILL after that.
    fn stop(&mut self, wait: Duration) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!("driver did not exit within {wait:?}; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DriverProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A message of the drivers read back: (message id, body, queue, offset).
type Drained = Vec<(String, String, i32, i64)>;

/// Reads the topic back completely with a fresh consumer group (acking everything); ends
/// after the topic has been dry for a few long polls once `expect` messages were read, or
/// after `limit`. Returns the messages and whether it ran dry (rather than out of time).
async fn drain(namesrv: &str, expect: usize, limit: Duration) -> anyhow::Result<(Drained, bool)> {
    let cfg = ConsumerConfig::new([namesrv.to_string()], format!("fo-drain-{}", now_ms()))
        .with_long_polling_timeout(Duration::from_secs(1))
        .with_request_timeout(Duration::from_secs(3));
    let deadline = Instant::now() + limit;
    let consumer = loop {
        match SimpleConsumer::start(cfg.clone(), vec![(TOPIC.into(), "*".into())]).await {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => bail!("drain consumer: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    };
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut dry = 0;
    while Instant::now() < deadline {
        match consumer.receive(64, Duration::from_secs(60)).await {
            Ok(msgs) if msgs.is_empty() => {
                dry += 1;
                // Dry for 3 long polls after everything expected, or for 10 in any case.
                if (seen.len() >= expect && dry >= 3) || dry >= 10 {
                    return Ok((out, true));
                }
            }
            Ok(msgs) => {
                dry = 0;
                for m in &msgs {
                    // A redelivery (same queue offset) is not a second copy.
                    if seen.insert((m.queue_id, m.queue_offset)) {
                        out.push((
                            m.message_id.clone(),
                            String::from_utf8_lossy(&m.body).into_owned(),
                            m.queue_id,
                            m.queue_offset,
                        ));
                    }
                }
                let _ = consumer.ack_all(&msgs).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    Ok((out, false))
}

/// Runs `s` end to end and computes the figures.
pub async fn run(s: &Scenario, driver: &Driver) -> anyhow::Result<Report> {
    let mut r = Running::start(&s.controller_flags)?;
    let dir = r.cluster.dir.path().to_path_buf();
    r.wait_healthy(Duration::from_secs(60))
        .await
        .context("no healthy group at start")?;
    // The route must be at the namesrv before the clients prefetch it.
    let probe = ConsumerConfig::new([r.cluster.namesrv.addr.clone()], "fo-probe");
    let deadline = Instant::now() + Duration::from_secs(30);
    while SimpleConsumer::start(probe.clone(), vec![(TOPIC.into(), "*".into())])
        .await
        .is_err()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no route of {TOPIC} at the namesrv"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The driver bounds itself; the harness stops it earlier through its stdin.
    let budget = s.warmup + s.interval * (s.kills as u32 + 1) * 3 + Duration::from_secs(120);
    // The consumers first, so that they are subscribed before the first send.
    let mut consumers = Vec::new();
    for &mode in &s.consumers {
        let d = consumer_driver(s.client, mode)?
            .map_err(|why| anyhow::anyhow!("no {mode:?} consumer driver: {why}"))?;
        let p = DriverProc::spawn(
            &d,
            &dir,
            mode.arg(),
            &[
                r.cluster.namesrv.addr.clone(),
                TOPIC.into(),
                mode.group(),
                budget.as_secs().to_string(),
            ],
        )?;
        consumers.push((mode, p));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (mode, p) in &consumers {
        while !p
            .lines()
            .iter()
            .any(|l| matches!(l["event"].as_str(), Some("started") | Some("start_failed")))
        {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the {mode:?} consumer did not start within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut proc = DriverProc::spawn(
        driver,
        &dir,
        "driver",
        &[
            r.cluster.namesrv.addr.clone(),
            TOPIC.into(),
            s.producers.to_string(),
            budget.as_secs().to_string(),
        ],
    )?;
    // Every producer started (or failed to) and had a first OK.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let lines = proc.lines();
        let mut ok = HashSet::new();
        let mut gone = HashSet::new();
        for l in &lines {
            let p = l["producer"].as_u64().unwrap_or(u64::MAX);
            if l["ok"].as_bool() == Some(true) {
                ok.insert(p);
            }
            if l["event"].as_str() == Some("start_failed") {
                gone.insert(p);
            }
        }
        if ok.len() + gone.len() >= s.producers {
            break;
        }
        if let Ok(Some(st)) = proc.child.try_wait() {
            bail!(
                "driver exited early ({st}): {}",
                std::fs::read_to_string(dir.join("driver.err")).unwrap_or_default()
            );
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "producers had no OK within 90 s; driver stderr:\n{}",
            std::fs::read_to_string(dir.join("driver.err")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(s.warmup).await;

    let mut kills: Vec<Kill> = Vec::new();
    let mut dead: Option<u64> = None;
    for k in 0..s.kills {
        // The next kill is due one interval after the previous one.
        if let Some(prev) = kills.last() {
            let due = prev.at_ms + s.interval.as_millis() as u64;
            if let Some(id) = dead.take() {
                // Variant B: back only right before the next kill.
                let back = due.saturating_sub(B_RESTART_LEAD.as_millis() as u64);
                sleep_until_ms(back).await;
                r.restart(id)?;
                kills.last_mut().expect("a kill").restarted_ms = Some(now_ms());
            }
            sleep_until_ms(due).await;
        }
        // Kill a master with its group whole, waiting (bounded) for that.
        let g = match r.wait_healthy(Duration::from_secs(30)).await {
            Some(g) => g,
            None => {
                tracing::warn!("kill {k}: group not whole within 30 s; killing the master anyway");
                r.state()
                    .await
                    .filter(|g| g.master.is_some())
                    .context("no master to kill")?
            }
        };
        let master = g.master.context("no master")?;
        r.brokers[master as usize].kill9();
        let at_ms = now_ms();
        kills.push(Kill {
            broker: master,
            at_ms,
            new_master_ms: None,
            new_master: None,
            restarted_ms: None,
        });
        // Watch for the new master; variant A restarts the killed broker meanwhile.
        let window_end = at_ms + s.interval.as_millis() as u64;
        let restart_at = s.restart_after.map(|d| at_ms + d.as_millis() as u64);
        let mut restarted = false;
        while now_ms() < window_end.saturating_sub(B_RESTART_LEAD.as_millis() as u64) {
            if let Some(t) = restart_at
                && !restarted
                && now_ms() >= t
            {
                r.restart(master)?;
                restarted = true;
                kills.last_mut().expect("a kill").restarted_ms = Some(now_ms());
            }
            let kill = kills.last_mut().expect("a kill");
            if kill.new_master.is_none()
                && let Some(g2) = r.state().await
                && let Some(m) = g2.master
                && m != master
                && g2.master_epoch > g.master_epoch
            {
                kill.new_master = Some(m);
                kill.new_master_ms = Some(now_ms());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if s.restart_after.is_some() && !restarted {
            r.restart(master)?;
            kills.last_mut().expect("a kill").restarted_ms = Some(now_ms());
        }
        if s.restart_after.is_none() {
            dead = Some(master);
        }
        eprintln!(
            "kill {k}: b{master} killed; new master {:?}",
            kills.last().and_then(|k| k.new_master)
        );
    }
    // The last window runs its full length, then the producers stop.
    if let Some(last) = kills.last() {
        sleep_until_ms(last.at_ms + s.interval.as_millis() as u64).await;
    }
    let stop_ms = now_ms();
    proc.stop(Duration::from_secs(40));
    if let Some(id) = dead.take() {
        r.restart(id)?;
        if let Some(k) = kills.last_mut() {
            k.restarted_ms = Some(now_ms());
        }
    }

    let raw = std::fs::read_to_string(&proc.out).unwrap_or_default();
    let mut sends = Vec::new();
    let mut start_failures = Vec::new();
    let mut started_ms: HashMap<usize, u64> = HashMap::new();
    for line in raw.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        match v["event"].as_str() {
            Some("start_failed") => start_failures.push(format!(
                "producer {}: {}",
                v["producer"],
                v["error"].as_str().unwrap_or("?")
            )),
            Some("started") => {
                if let (Some(p), Some(t)) = (v["producer"].as_u64(), v["at_ms"].as_u64()) {
                    started_ms.insert(p as usize, t);
                }
            }
            Some(_) => {}
            None => {
                if let Ok(l) = serde_json::from_value::<SendLine>(v) {
                    sends.push(l);
                }
            }
        }
    }

    // Drain after the group is whole again (bounded).
    let _ = r.wait_healthy(Duration::from_secs(30)).await;
    let acked: HashMap<String, (usize, u64)> = sends
        .iter()
        .filter(|l| l.ok)
        .filter_map(|l| Some((l.message_id.clone()?, (l.producer, l.seq))))
        .collect();
    // The consumers go on until each has received every acked message (a message whose
    // ack failed comes back after its invisible duration): bounded by CONSUMER_CATCH_UP
    // without a new receipt, and by CONSUMER_CATCH_UP_MAX in all.
    let mut consumer_reports = Vec::new();
    for (mode, mut p) in consumers {
        let hard = Instant::now() + CONSUMER_CATCH_UP_MAX;
        let mut stall = Instant::now() + CONSUMER_CATCH_UP;
        let mut seen_lines = 0;
        let caught_up = loop {
            let lines = p.lines();
            let got: HashSet<&str> = lines
                .iter()
                .filter(|l| l["event"].as_str() == Some("received"))
                .filter_map(|l| l["id"].as_str())
                .collect();
            if acked.keys().all(|id| got.contains(id.as_str())) {
                break true;
            }
            if lines.len() > seen_lines {
                seen_lines = lines.len();
                stall = Instant::now() + CONSUMER_CATCH_UP;
            }
            let now = Instant::now();
            if now > stall || now > hard || matches!(p.child.try_wait(), Ok(Some(_))) {
                break false;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        p.stop(Duration::from_secs(20));
        let lines = p.lines();
        let mut c = consumer_report(mode, &lines, &acked, &kills, stop_ms);
        c.caught_up = caught_up;
        if let Some(out) = &s.out_dir {
            std::fs::create_dir_all(out)?;
            std::fs::copy(&p.out, out.join(format!("{}.jsonl", mode.arg())))?;
        }
        consumer_reports.push(c);
    }
    let (drained, drain_complete) = drain(
        &r.cluster.namesrv.addr,
        acked.len(),
        Duration::from_secs(180),
    )
    .await?;

    let mut report = compute(
        s,
        &kills,
        &sends,
        &started_ms,
        stop_ms,
        &drained,
        drain_complete,
    );
    report.start_failures = start_failures;
    report.consumers = consumer_reports;
    if let Some(out) = &s.out_dir {
        std::fs::create_dir_all(out)?;
        std::fs::copy(&proc.out, out.join("driver.jsonl"))?;
        let _ = std::fs::copy(dir.join("driver.err"), out.join("driver.err"));
        let mut f = std::fs::File::create(out.join("report.json"))?;
        writeln!(f, "{}", serde_json::to_string_pretty(&report)?)?;
        std::fs::write(out.join("report.txt"), report.render())?;
        // The servers' logs (one per process start), for the timing of each election.
        let logs = out.join("server-logs");
        std::fs::create_dir_all(&logs)?;
        for e in walk_logs(&dir) {
            if let Some(name) = e.file_name() {
                let _ = std::fs::copy(&e, logs.join(name));
            }
        }
    }
    Ok(report)
}

/// The `*.log` files in `dir` and one level below.
fn walk_logs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let entries = |d: &Path| std::fs::read_dir(d).into_iter().flatten().flatten();
    for e in entries(dir) {
        let p = e.path();
        if p.is_dir() {
            out.extend(
                entries(&p)
                    .map(|x| x.path())
                    .filter(|x| x.extension().is_some_and(|x| x == "log")),
            );
        } else if p.extension().is_some_and(|x| x == "log") {
            out.push(p);
        }
    }
    out
}

async fn sleep_until_ms(t: u64) {
    let now = now_ms();
    if t > now {
        tokio::time::sleep(Duration::from_millis(t - now)).await;
    }
}

fn variant(s: &Scenario) -> String {
    match s.restart_after {
        Some(d) => format!(
            "A (killed broker restarted {} ms after the kill; a kill every {} s)",
            d.as_millis(),
            s.interval.as_secs()
        ),
        None => format!(
            "B (killed broker left dead until {} s before the next kill, which waits for it to be back in sync; a kill every {} s)",
            B_RESTART_LEAD.as_secs(),
            s.interval.as_secs()
        ),
    }
}

/// Stretches without an event (an OK, a receipt) of one client between `start` and `end`,
/// `events` sorted: the longest of the run, and per kill the one that covers most of the
/// kill's window (the kill to the next kill, or to `end`), whole, with whether an event
/// came after it. Not simply the stretch around the kill instant: a receipt the killed
/// master had sent just before dying can arrive a few ms after the kill and would hide the
/// outage that follows it.
fn stretches(start: u64, events: &[u64], end: u64, kills: &[Kill]) -> (u64, Vec<(u64, bool)>) {
    let mut points = vec![start];
    points.extend(events.iter().copied());
    points.push(end);
    let longest = points
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .max()
        .unwrap_or(0);
    let per_kill = kills
        .iter()
        .enumerate()
        .map(|(k, kill)| {
            let window_end = kills.get(k + 1).map_or(end, |n| n.at_ms);
            points
                .windows(2)
                .filter_map(|w| {
                    let overlap = w[1].min(window_end).checked_sub(w[0].max(kill.at_ms))?;
                    let recovered = w[1] != end || events.last() == Some(&end);
                    Some((overlap, w[1].saturating_sub(w[0]), recovered))
                })
                .max_by_key(|x| (x.0, x.1))
                .map_or((0, true), |x| (x.1, x.2))
        })
        .collect();
    (longest, per_kill)
}

fn compute(
    s: &Scenario,
    kills: &[Kill],
    sends: &[SendLine],
    started_ms: &HashMap<usize, u64>,
    stop_ms: u64,
    drained: &Drained,
    drain_complete: bool,
) -> Report {
    let mut gaps = Vec::new();
    let mut longest_per_producer = Vec::new();
    for p in 0..s.producers {
        let mut oks: Vec<u64> = sends
            .iter()
            .filter(|l| l.producer == p && l.ok)
            .map(|l| l.end_ms)
            .collect();
        oks.sort_unstable();
        let first_start = sends
            .iter()
            .filter(|l| l.producer == p)
            .map(|l| l.start_ms)
            .min();
        let start = started_ms
            .get(&p)
            .copied()
            .or(first_start)
            .unwrap_or(stop_ms);
        let end = sends
            .iter()
            .filter(|l| l.producer == p)
            .map(|l| l.end_ms)
            .max()
            .unwrap_or(stop_ms)
            .max(stop_ms);
        let (longest, per_kill) = stretches(start, &oks, end, kills);
        longest_per_producer.push(longest);
        for (k, (ms, recovered)) in per_kill.into_iter().enumerate() {
            gaps.push(Gap {
                producer: p,
                kill: k,
                ms,
                recovered,
            });
        }
    }
    let gap_values: Vec<u64> = gaps.iter().map(|g| g.ms).collect();

    let failed: Vec<&SendLine> = sends.iter().filter(|l| !l.ok).collect();
    let mut failures_by_reason = BTreeMap::new();
    for l in &failed {
        *failures_by_reason
            .entry(normalize_error(
                l.error.as_deref().unwrap_or("(no error text)"),
            ))
            .or_insert(0) += 1;
    }
    let failures_per_kill = kills
        .iter()
        .enumerate()
        .map(|(k, kill)| {
            let until = kills.get(k + 1).map_or(u64::MAX, |n| n.at_ms);
            failed
                .iter()
                .filter(|l| l.end_ms >= kill.at_ms && l.end_ms < until)
                .count()
        })
        .collect();

    // Read back: only the drivers' messages (body p<P>-s<S>).
    let acked: HashMap<&str, String> = sends
        .iter()
        .filter(|l| l.ok)
        .filter_map(|l| {
            Some((
                l.message_id.as_deref()?,
                format!("p{}-s{}", l.producer, l.seq),
            ))
        })
        .collect();
    let ours: Vec<&(String, String, i32, i64)> = drained
        .iter()
        .filter(|m| m.1.starts_with('p') && m.1.contains("-s"))
        .collect();
    let mut by_id: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut ids_by_body: HashMap<&str, HashSet<&str>> = HashMap::new();
    for m in &ours {
        by_id.entry(m.0.as_str()).or_default().push(m.1.as_str());
        ids_by_body
            .entry(m.1.as_str())
            .or_default()
            .insert(m.0.as_str());
    }
    let lost = acked.keys().filter(|id| !by_id.contains_key(*id)).count();
    let body_mismatch = acked
        .iter()
        .filter(|(id, body)| by_id.get(*id).is_some_and(|b| b.iter().any(|x| x != body)))
        .count();
    let duplicate_ids = by_id.values().filter(|v| v.len() > 1).count();
    let duplicate_bodies = ids_by_body.values().filter(|v| v.len() > 1).count();
    let stored_not_acked = by_id.keys().filter(|id| !acked.contains_key(*id)).count();

    Report {
        client: s.client.name().into(),
        variant: variant(s),
        kills: kills.to_vec(),
        gap_median_ms: median(&gap_values),
        gap_max_ms: gap_values.iter().copied().max().unwrap_or(0),
        gaps,
        longest_per_producer,
        acked: acked.len(),
        failed: failed.len(),
        failures_by_reason,
        failures_per_kill,
        start_failures: Vec::new(),
        drained: ours.len(),
        lost,
        body_mismatch,
        duplicate_ids,
        duplicate_bodies,
        stored_not_acked,
        drain_complete,
        sofamq_bin: describe_bin(&crate::sofamq_bin()),
        consumers: Vec::new(),
    }
}

fn describe_bin(p: &Path) -> String {
    match std::fs::metadata(p) {
        Ok(m) => {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            format!(
                "{} ({} bytes, modified {mtime} s after the epoch)",
                p.display(),
                m.len()
            )
        }
        Err(e) => format!("{} ({e})", p.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_ids_but_keeps_short_words() {
        assert_eq!(
            normalize_error("UNAVAILABLE: request 0A1B2C3D4E5F6789 failed at 1796305612770"),
            "UNAVAILABLE: request # failed at #"
        );
        assert_eq!(normalize_error("code 40013 bad"), "code 40013 bad");
        assert_eq!(
            normalize_error("fell before offset 6594063 on 127.0.0.1:28081"),
            "fell before offset # on 127.0.0.1:28081"
        );
    }

    #[test]
    fn median_takes_the_upper_middle() {
        assert_eq!(median(&[]), 0);
        assert_eq!(median(&[3, 1, 2]), 2);
        assert_eq!(median(&[4, 1, 3, 2]), 3);
    }

    fn line(producer: usize, seq: u64, ok: bool, end_ms: u64) -> SendLine {
        SendLine {
            producer,
            seq,
            ok,
            message_id: ok.then(|| format!("id{producer}-{seq}")),
            error: (!ok).then(|| "boom".to_string()),
            start_ms: end_ms.saturating_sub(1),
            end_ms,
        }
    }

    #[test]
    fn a_receipt_just_after_the_kill_does_not_hide_the_outage() {
        let mut s = Scenario::standard(OfficialClient::Python, true, 2);
        s.producers = 1;
        let kill = |at_ms| Kill {
            broker: 0,
            at_ms,
            new_master_ms: None,
            new_master: None,
            restarted_ms: None,
        };
        let kills = vec![kill(1000), kill(3000)];
        let sends = vec![
            line(0, 0, true, 990),
            line(0, 1, true, 1005),
            line(0, 2, false, 2000),
            line(0, 3, true, 2500),
            line(0, 4, true, 3001),
        ];
        let started = HashMap::from([(0, 0)]);
        let r = compute(&s, &kills, &sends, &started, 6000, &Vec::new(), true);
        assert_eq!(r.gaps[0].ms, 1495, "1005 -> 2500, not 990 -> 1005");
        assert!(r.gaps[0].recovered);
        assert_eq!(r.gaps[1].ms, 2999, "3001 -> the end");
        assert!(!r.gaps[1].recovered);
    }

    #[test]
    fn gaps_span_the_kill_and_count_lost_and_duplicates() {
        let mut s = Scenario::standard(OfficialClient::Python, true, 1);
        s.producers = 2;
        let kills = vec![Kill {
            broker: 0,
            at_ms: 1000,
            new_master_ms: None,
            new_master: None,
            restarted_ms: None,
        }];
        let sends = vec![
            line(0, 0, true, 900),
            line(0, 1, false, 1500),
            line(0, 2, true, 4000),
            line(1, 0, true, 950),
            line(1, 1, false, 2000),
        ];
        let started = HashMap::from([(0, 100), (1, 100)]);
        let drained: Drained = vec![
            ("id0-0".into(), "p0-s0".into(), 0, 0),
            ("id0-2".into(), "p0-s2".into(), 1, 0),
            ("id0-2".into(), "p0-s2".into(), 1, 1),
            ("other".into(), "p0-s2".into(), 2, 0),
        ];
        let r = compute(&s, &kills, &sends, &started, 5000, &drained, true);
        assert_eq!(r.gaps[0].ms, 3100);
        assert!(r.gaps[0].recovered);
        assert_eq!(r.gaps[1].ms, 4050);
        assert!(!r.gaps[1].recovered);
        assert_eq!(r.longest_per_producer, vec![3100, 4050]);
        assert_eq!(r.failed, 2);
        assert_eq!(r.failures_per_kill, vec![2]);
        assert_eq!(r.acked, 3);
        assert_eq!(r.lost, 1, "id1-0 was not read back");
        assert_eq!(r.duplicate_ids, 1);
        assert_eq!(r.duplicate_bodies, 1);
        assert_eq!(r.stored_not_acked, 1);
    }

    #[test]
    fn a_consumer_misses_what_it_never_received_and_a_failed_ack_comes_back() {
        let acked: HashMap<String, (usize, u64)> = [("a", 0), ("b", 1), ("c", 2)]
            .into_iter()
            .map(|(id, seq)| (id.to_string(), (0, seq)))
            .collect();
        let kills = vec![Kill {
            broker: 0,
            at_ms: 1000,
            new_master_ms: None,
            new_master: None,
            restarted_ms: None,
        }];
        let lines: Vec<serde_json::Value> = [
            r#"{"event":"started","at_ms":100}"#,
            r#"{"event":"received","id":"a","body":"p0-s0","at_ms":900}"#,
            r#"{"event":"ack","id":"a","ok":false,"error":"InternalError: 50002, not master","at_ms":1100}"#,
            r#"{"event":"receive_error","error":"UNAVAILABLE","at_ms":1200}"#,
            r#"{"event":"received","id":"b","body":"p0-s1","at_ms":3500}"#,
            r#"{"event":"received","id":"a","body":"p0-s0","at_ms":4000}"#,
            r#"{"event":"received","id":"zz","body":"other","at_ms":4100}"#,
        ]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
        let c = consumer_report(ConsumerMode::Simple, &lines, &acked, &kills, 5000);
        assert_eq!(c.received, 2);
        assert_eq!(c.missing, 1, "c never came");
        assert_eq!(c.deliveries, 3, "a twice, b once; zz is not ours");
        assert_eq!(c.redelivered, 1);
        assert_eq!(c.ack_failed, 1);
        assert_eq!(c.ack_failed_redelivered, 1);
        assert_eq!(c.receive_errors, 1);
        assert_eq!(c.gaps_ms, vec![2600], "900 -> 3500 covers the kill");
        assert!(c.start_error.is_none());
    }

    #[test]
    fn violations_name_what_broke() {
        let s = Scenario::standard(OfficialClient::Python, true, 1);
        let kills = vec![Kill {
            broker: 0,
            at_ms: 1000,
            new_master_ms: None,
            new_master: None,
            restarted_ms: None,
        }];
        let sends = vec![line(0, 0, true, 900), line(0, 1, true, 9950)];
        let started = HashMap::from([(0, 100), (1, 100), (2, 100), (3, 100)]);
        let drained: Drained = vec![
            ("id0-0".into(), "p0-s0".into(), 0, 0),
            ("id0-1".into(), "p0-s1".into(), 0, 1),
        ];
        let r = compute(&s, &kills, &sends, &started, 10_000, &drained, true);
        assert!(r.violations(false).is_empty(), "{:?}", r.violations(false));
        // Producers 1-3 never had an OK: 9.9 s without one.
        let v = r.violations(true);
        assert!(v.iter().any(|x| x.starts_with("gap max")), "{v:?}");
    }
}
