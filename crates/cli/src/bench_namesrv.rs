//! `sofamq bench namesrv`: the control plane at scale. Starts a namesrv and a controller as
//! child processes of this binary, simulates broker groups (a master and a slave each)
//! registering with the namesrv and heartbeating the controller as real brokers do, and
//! clients querying routes as official RocketMQ 5 clients do; reports the route-query
//! latency and each child's CPU and memory (read from `/proc/PID/stat` and `/status`).
//!
//! Shape of the simulated cluster: `--queues` queues in `--topics` topics, each topic on
//! as many groups as it takes with `--topic-queues` queues on each (defaults: 1,250 topics
//! × 10 groups × 8 queues = 100,000 queues; 1,000 groups carry 12 or 13 topics, 100 queues,
//! each). Client `i` queries topic `i mod topics`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use sofamq_controller::{AlterInSync, BrokerAddrs, ControllerClient, ControllerStatus, Heartbeat};
use sofamq_proto::namesrv::name_server_admin_client::NameServerAdminClient;
use sofamq_proto::namesrv::{
    ListBrokersRequest, PERM_READ_WRITE, RegisterBrokerRequest, TopicRoute,
};
use sofamq_proto::prost::Message as _;
use sofamq_proto::v2::messaging_service_client::MessagingServiceClient;
use sofamq_proto::v2::{Code, Endpoints, QueryRouteRequest, Resource};
use sofamq_server::Shutdown;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tonic::transport::Channel;

/// The namesrv's default `max_connections_per_ip`: the bench opens all its gRPC
/// connections from 127.0.0.1, so it stays below.
const NAMESRV_MAX_CONNS_PER_IP: usize = 256;
/// The namesrv's default `max_brokers`.
const NAMESRV_MAX_BROKERS: usize = 4096;
/// One RPC's bound (registration, route query).
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// A route query starting later than this after its due time counts as late (the load
/// generator fell behind).
const LATE: Duration = Duration::from_millis(100);
const CLUSTER: &str = "DefaultCluster";

/// Options of `sofamq bench namesrv`.
#[derive(clap::Args, Debug, Clone)]
pub struct NamesrvBenchArgs {
    /// Broker groups (a master and a slave each).
    #[arg(long, default_value_t = 1000)]
    pub groups: usize,
    /// Queues in all (summed over topics and groups).
    #[arg(long, default_value_t = 100_000)]
    pub queues: u64,
    /// Topics (fewer when there are fewer topic placements than this).
    #[arg(long, default_value_t = 1250)]
    pub topics: usize,
    /// Queues of one topic on one group.
    #[arg(long, default_value_t = 8)]
    pub topic_queues: u32,
    /// Simulated clients, each querying one topic's route every --route-interval.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Seconds between two route queries of one client (official clients: 30).
    #[arg(long, default_value_t = 30.0)]
    pub route_interval: f64,
    /// Seconds of the measured window.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Namesrv registration (heartbeat) period of each member, ms (brokers' default).
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// Controller heartbeat period of each member, ms (brokers' default).
    #[arg(long, default_value_t = 300)]
    pub controller_heartbeat_ms: u64,
    /// HTTP/2 connections carrying the registrations.
    #[arg(long, default_value_t = 16)]
    pub register_conns: usize,
    /// HTTP/2 connections carrying the route queries.
    #[arg(long, default_value_t = 64)]
    pub client_conns: usize,
    /// TCP connections to the controller (one call at a time on each, as a broker's client).
    #[arg(long, default_value_t = 256)]
    pub controller_conns: usize,
    /// Host the controller inside the namesrv process (one child) instead of its own.
    #[arg(long)]
    pub embedded_controller: bool,
    /// Skip the burst phase (every client querying at once, as after a client restart storm).
    #[arg(long)]
    pub no_burst: bool,
    /// Longest wait, seconds, for every group to register and elect a master.
    #[arg(long, default_value_t = 180)]
    pub warmup_timeout: u64,
    /// Parent of the children's temporary data directory (default: the system temp dir).
    #[arg(long)]
    pub tmp_dir: Option<PathBuf>,
    /// Write the report as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Copy the children's logs into this directory before their temporary one is removed.
    #[arg(long)]
    pub keep_logs: Option<PathBuf>,
}

impl NamesrvBenchArgs {
    fn check(&self) -> anyhow::Result<()> {
        ensure!((1..=100_000).contains(&self.groups), "--groups: 1..=100000");
        ensure!(
            (1..=10_000_000).contains(&self.queues),
            "--queues: 1..=10000000"
        );
        ensure!(
            (1..=1_000_000).contains(&self.topics),
            "--topics: 1..=1000000"
        );
        ensure!(
            (1..=1024).contains(&self.topic_queues),
            "--topic-queues: 1..=1024"
        );
        ensure!(
            (1..=1_000_000).contains(&self.clients),
            "--clients: 1..=1000000"
        );
        ensure!(
            (0.1..=3600.0).contains(&self.route_interval),
            "--route-interval: 0.1..=3600 s"
        );
        ensure!(
            (0.5..=86_400.0).contains(&self.duration),
            "--duration: 0.5..=86400 s"
        );
        ensure!(
            (10..=600_000).contains(&self.heartbeat_ms),
            "--heartbeat-ms: 10..=600000"
        );
        ensure!(
            (10..=60_000).contains(&self.controller_heartbeat_ms),
            "--controller-heartbeat-ms: 10..=60000"
        );
        ensure!(
            (1..=4096).contains(&self.controller_conns),
            "--controller-conns: 1..=4096"
        );
        ensure!(
            self.register_conns >= 1
                && self.client_conns >= 1
                && self.register_conns + self.client_conns < NAMESRV_MAX_CONNS_PER_IP,
            "--register-conns + --client-conns must stay below the namesrv's \
             max_connections_per_ip ({NAMESRV_MAX_CONNS_PER_IP}): all come from 127.0.0.1"
        );
        ensure!(
            (1..=3600).contains(&self.warmup_timeout),
            "--warmup-timeout: 1..=3600 s"
        );
        Ok(())
    }
}

/// Which topics each group carries, and how many queues each topic's route lists.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    /// Per group: (topic index, queue count).
    groups: Vec<Vec<(usize, u32)>>,
    /// Per topic: the queues its route lists (over all its groups).
    topic_queues: Vec<u64>,
    /// Per topic: on how many groups.
    topic_groups: Vec<usize>,
}

impl Plan {
    /// Spreads `queues` over `topics` topics, `per` queues of a topic on each group it is
    /// on, placements laid round-robin over the groups (so a topic's groups are distinct).
    fn new(groups: usize, queues: u64, topics: usize, per: u32) -> anyhow::Result<Self> {
        ensure!(
            groups > 0 && queues > 0 && topics > 0 && per > 0,
            "empty plan"
        );
        let per64 = u64::from(per);
        let placements = usize::try_from(queues.div_ceil(per64))?;
        let topics = topics.min(placements);
        let base = placements / topics;
        let extra = placements % topics;
        ensure!(
            base + usize::from(extra > 0) <= groups,
            "{topics} topics of {per} queues per group would need {} groups each, there are \
             {groups}: raise --topics or --topic-queues",
            base + usize::from(extra > 0)
        );
        let mut plan = Plan {
            groups: vec![Vec::new(); groups],
            topic_queues: vec![0; topics],
            topic_groups: vec![0; topics],
        };
        let mut cursor = 0usize;
        for t in 0..topics {
            let span = base + usize::from(t < extra);
            for _ in 0..span {
                let q = if cursor + 1 == placements {
                    // The last placement takes the remainder, so the total is exact.
                    u32::try_from(queues - per64 * (placements as u64 - 1))?
                } else {
                    per
                };
                plan.groups[cursor % groups].push((t, q));
                plan.topic_queues[t] += u64::from(q);
                plan.topic_groups[t] += 1;
                cursor += 1;
            }
        }
        Ok(plan)
    }

    fn topics(&self) -> usize {
        self.topic_queues.len()
    }
}

fn topic_name(t: usize) -> String {
    format!("scale-topic-{t:05}")
}

fn group_name(g: usize) -> String {
    format!("broker-{g:05}")
}

/// Counters the simulation adds to; snapshots of them bound the measured window.
#[derive(Clone, Copy, Debug)]
enum C {
    RegOk,
    RegErr,
    RegBytes,
    HbOk,
    HbErr,
    AlterOk,
    AlterErr,
    MasterChanges,
    RouteOk,
    RouteErr,
    RouteWrong,
    RouteLate,
    RouteBytes,
    RouteMinBytes,
    RouteMaxBytes,
}
const NC: usize = 15;

struct Stats {
    c: [AtomicU64; NC],
    reg: Mutex<Histogram<u64>>,
    hb: Mutex<Histogram<u64>>,
    route: Mutex<Histogram<u64>>,
    /// The JSON size of one controller heartbeat and of its reply (member 0's).
    hb_req_bytes: AtomicU64,
    hb_reply_bytes: AtomicU64,
}

fn hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("static histogram bounds")
}

fn record(h: &Mutex<Histogram<u64>>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    h.lock()
        .unwrap_or_else(|e| e.into_inner())
        .saturating_record(us);
}

impl Stats {
    fn new() -> Self {
        let s = Self {
            c: std::array::from_fn(|_| AtomicU64::new(0)),
            reg: Mutex::new(hist()),
            hb: Mutex::new(hist()),
            route: Mutex::new(hist()),
            hb_req_bytes: AtomicU64::new(0),
            hb_reply_bytes: AtomicU64::new(0),
        };
        s.c[C::RouteMinBytes as usize].store(u64::MAX, Ordering::Relaxed);
        s
    }
    fn add(&self, c: C, n: u64) {
        self.c[c as usize].fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self, c: C) -> u64 {
        self.c[c as usize].load(Ordering::Relaxed)
    }
    fn snap(&self) -> [u64; NC] {
        std::array::from_fn(|i| self.c[i].load(Ordering::Relaxed))
    }
    /// Empties the histograms and resets the route size extremes (start of a phase).
    fn reset(&self) {
        for h in [&self.reg, &self.hb, &self.route] {
            h.lock().unwrap_or_else(|e| e.into_inner()).reset();
        }
        self.c[C::RouteMinBytes as usize].store(u64::MAX, Ordering::Relaxed);
        self.c[C::RouteMaxBytes as usize].store(0, Ordering::Relaxed);
    }
    fn take(h: &Mutex<Histogram<u64>>) -> Histogram<u64> {
        h.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn quantiles(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| (v as f64 / 1000.0 * 1000.0).round() / 1000.0;
    json!({
        "samples": h.len(),
        "p50": ms(h.value_at_quantile(0.5)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
    })
}

// ---------------------------------------------------------------- child processes

/// A child process of this binary, killed (by its PID) and reaped when dropped.
struct ChildProc {
    role: &'static str,
    child: Child,
    log: PathBuf,
}

impl ChildProc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its log, for an error message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Lines of its log at WARN or ERROR.
    fn log_warnings(&self) -> u64 {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .count() as u64
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        // Child::kill signals this child's PID only (SIGKILL); wait reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `exe args...` with stdout piped (its ready lines come back on the channel) and
/// stderr (its log) written to `log`.
fn spawn_child(
    role: &'static str,
    exe: &Path,
    args: &[String],
    log: PathBuf,
) -> anyhow::Result<(ChildProc, mpsc::UnboundedReceiver<String>)> {
    let err = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err))
        .env("NO_COLOR", "1")
        .spawn()
        .with_context(|| format!("starting {} {}", exe.display(), args.join(" ")))?;
    let stdout = child.stdout.take();
    let proc = ChildProc { role, child, log };
    let (tx, rx) = mpsc::unbounded_channel();
    if let Some(out) = stdout {
        // Drains stdout until the child exits, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
    }
    Ok((proc, rx))
}

/// Waits (bounded) for the line `"{what} ready on ADDR ..."` and returns ADDR.
async fn ready_addr(
    proc: &ChildProc,
    rx: &mut mpsc::UnboundedReceiver<String>,
    what: &str,
) -> anyhow::Result<String> {
    let prefix = format!("{what} ready on ");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let line = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => bail!(
                "{} (pid {}) printed no \"{what} ready\" line in 30 s; log:\n{}",
                proc.role,
                proc.pid(),
                proc.log_tail()
            ),
            Ok(None) => bail!(
                "{} (pid {}) exited before it was ready; log:\n{}",
                proc.role,
                proc.pid(),
                proc.log_tail()
            ),
            Ok(Some(l)) => l,
        };
        if let Some(rest) = line.strip_prefix(&prefix) {
            let addr = rest.split_whitespace().next().unwrap_or_default();
            ensure!(!addr.is_empty(), "no address in {line:?}");
            return Ok(addr.to_string());
        }
    }
}

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: Option<&Path>) -> anyhow::Result<Self> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = parent.join(format!(
            "sofamq-bench-namesrv-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------- /proc readings

/// Clock ticks per second of `/proc/PID/stat` times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of `/proc/<pid>/stat` text, in ticks (fields 14 and 15; the command name
/// in parentheses may hold spaces, so count from the last ')').
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A `kB` line of `/proc/<pid>/status` text (`VmRSS`, `VmHWM`), in KiB.
fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One process as `/proc` shows it.
#[derive(Clone, Copy, Debug, Default)]
struct ProcSample {
    cpu_s: f64,
    rss_kib: u64,
    hwm_kib: u64,
}

fn sample(pid: &str, tick: f64) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample {
        cpu_s: parse_stat_ticks(&stat)? as f64 / tick,
        rss_kib: parse_status_kib(&status, "VmRSS")?,
        hwm_kib: parse_status_kib(&status, "VmHWM")?,
    })
}

/// A watched process: its PID (or "self") and the samples taken at phase boundaries, plus
/// the highest RSS and 1-second CPU seen by the sampler during the window.
struct Watched {
    role: &'static str,
    pid: String,
    before_load: ProcSample,
    after_warmup: ProcSample,
    window_end: ProcSample,
    burst_start: ProcSample,
    burst_end: ProcSample,
    window_max_rss_kib: u64,
    window_max_cpu_1s: f64,
}

// ---------------------------------------------------------------- simulated brokers

/// One simulated broker process (a group's master or slave).
struct Member {
    index: usize,
    group: String,
    id: u64,
    request: RegisterBrokerRequest,
    addrs: BrokerAddrs,
    /// The epoch it registers with: the group's master epoch once the controller elected.
    epoch: AtomicU64,
}

fn members(plan: &Plan) -> Vec<Arc<Member>> {
    let mut out = Vec::with_capacity(plan.groups.len() * 2);
    for (g, topics) in plan.groups.iter().enumerate() {
        for id in 0..2u64 {
            let index = out.len();
            // Addresses nothing listens on: the namesrv and the controller only store them.
            let port = 20_000 + (index % 40_000);
            let grpc = format!("127.0.0.1:{port}");
            let repl = format!("127.0.0.2:{port}");
            let request = RegisterBrokerRequest {
                cluster: CLUSTER.into(),
                broker_name: group_name(g),
                broker_id: id as i64,
                grpc_endpoint: grpc.clone(),
                replication_endpoint: repl.clone(),
                epoch: 0,
                topics: topics
                    .iter()
                    .map(|(t, q)| TopicRoute {
                        name: topic_name(*t),
                        queue_count: *q,
                        perm: PERM_READ_WRITE,
                        // NORMAL
                        message_type: 1,
                    })
                    .collect(),
                heartbeat_timeout_ms: 0,
            };
            out.push(Arc::new(Member {
                index,
                group: group_name(g),
                id,
                request,
                addrs: BrokerAddrs { grpc, repl },
                epoch: AtomicU64::new(0),
            }));
        }
    }
    out
}

/// Re-registers `m` with the namesrv every `period`, first at `first`.
async fn register_loop(
    m: Arc<Member>,
    mut client: NameServerAdminClient<Channel>,
    stats: Arc<Stats>,
    first: tokio::time::Instant,
    period: Duration,
    stop: Shutdown,
) {
    let mut tick = tokio::time::interval_at(first, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.wait() => return,
            _ = tick.tick() => {}
        }
        let mut req = m.request.clone();
        req.epoch = m.epoch.load(Ordering::Relaxed);
        let len = req.encoded_len() as u64;
        let t0 = Instant::now();
        match tokio::time::timeout(RPC_TIMEOUT, client.register_broker(req)).await {
            Ok(Ok(_)) => {
                record(&stats.reg, t0.elapsed());
                stats.add(C::RegOk, 1);
                stats.add(C::RegBytes, len);
            }
            Ok(Err(e)) => {
                tracing::debug!(group = %m.group, id = m.id, error = %e, "registration failed");
                stats.add(C::RegErr, 1);
            }
            Err(_) => stats.add(C::RegErr, 1),
        }
    }
}

/// Heartbeats the controller for `m` every `period` (first at `first`) and acts on the
/// view as a broker does: the elected master reports itself acting in the master epoch and
/// then the slave in sync (one AlterInSync per epoch); both register with that epoch.
async fn controller_loop(
    m: Arc<Member>,
    client: Arc<ControllerClient>,
    stats: Arc<Stats>,
    first: tokio::time::Instant,
    period: Duration,
    stop: Shutdown,
) {
    let mut tick = tokio::time::interval_at(first, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let incarnation = (u64::from(std::process::id()) << 32) ^ (m.index as u64) ^ 0x5f3a_9c1d;
    let mut acting: Option<u64> = None;
    let mut last_master: Option<u64> = None;
    let mut insync_asked_epoch = 0u64;
    loop {
        tokio::select! {
            () = stop.wait() => return,
            _ = tick.tick() => {}
        }
        let epoch = m.epoch.load(Ordering::Relaxed);
        let hb = Heartbeat {
            group: m.group.clone(),
            broker_id: m.id,
            incarnation,
            addrs: m.addrs.clone(),
            store_epoch: epoch,
            log_end: 0,
            prefer_master: m.id == 0,
            acting_master_epoch: acting,
            master_refused: None,
            fenced: None,
        };
        if m.index == 0 && stats.hb_req_bytes.load(Ordering::Relaxed) == 0 {
            let req = sofamq_controller::rpc::Request::Heartbeat(hb.clone());
            let n = serde_json::to_vec(&req).map_or(0, |v| v.len() as u64 + 4);
            stats.hb_req_bytes.store(n, Ordering::Relaxed);
        }
        let t0 = Instant::now();
        let reply = match client.heartbeat(&hb).await {
            Ok(r) => {
                record(&stats.hb, t0.elapsed());
                stats.add(C::HbOk, 1);
                r
            }
            Err(e) => {
                tracing::debug!(group = %m.group, id = m.id, error = %e, "controller heartbeat failed");
                stats.add(C::HbErr, 1);
                continue;
            }
        };
        if m.index == 0 {
            let n = serde_json::to_vec(&sofamq_controller::rpc::Response::Heartbeat(Ok(
                reply.clone()
            )))
            .map_or(0, |v| v.len() as u64 + 4);
            stats.hb_reply_bytes.store(n, Ordering::Relaxed);
        }
        let view = reply.view;
        if m.id == 0 && last_master.is_some() && view.master != last_master {
            stats.add(C::MasterChanges, 1);
        }
        last_master = view.master;
        if view.master.is_some() {
            m.epoch.store(view.master_epoch, Ordering::Relaxed);
        }
        acting = (view.master == Some(m.id)).then_some(view.master_epoch);
        let whole: BTreeSet<u64> = [0, 1].into();
        if acting.is_some() && view.insync != whole && insync_asked_epoch != view.master_epoch {
            insync_asked_epoch = view.master_epoch;
            let req = AlterInSync {
                group: m.group.clone(),
                master: m.id,
                master_epoch: view.master_epoch,
                insync: whole,
            };
            match client.alter_insync(&req).await {
                Ok(_) => stats.add(C::AlterOk, 1),
                Err(e) => {
                    tracing::debug!(group = %m.group, error = %e, "in-sync change refused");
                    stats.add(C::AlterErr, 1);
                    insync_asked_epoch = 0;
                }
            }
        }
    }
}

// ---------------------------------------------------------------- simulated clients

/// What a route query needs.
struct RouteCtx {
    topic_names: Vec<String>,
    topic_queues: Vec<u64>,
    /// The access point as official clients send it.
    access: Endpoints,
    stats: Arc<Stats>,
}

/// One QueryRoute of `topic`; counts it as ok, failed, or wrong (not every queue listed).
async fn query_route(
    ctx: Arc<RouteCtx>,
    mut client: MessagingServiceClient<Channel>,
    topic: usize,
) {
    let req = QueryRouteRequest {
        topic: Some(Resource {
            resource_namespace: String::new(),
            name: ctx.topic_names[topic].clone(),
        }),
        endpoints: Some(ctx.access.clone()),
    };
    let t0 = Instant::now();
    let stats = &ctx.stats;
    match tokio::time::timeout(RPC_TIMEOUT, client.query_route(req)).await {
        Ok(Ok(resp)) => {
            let took = t0.elapsed();
            let r = resp.into_inner();
            let code = r.status.as_ref().map_or(0, |s| s.code);
            if code != Code::Ok as i32 {
                tracing::debug!(code, topic, "route query answered an error status");
                stats.add(C::RouteErr, 1);
                return;
            }
            if r.message_queues.len() as u64 != ctx.topic_queues[topic] {
                stats.add(C::RouteWrong, 1);
            }
            record(&stats.route, took);
            let n = r.encoded_len() as u64;
            stats.add(C::RouteOk, 1);
            stats.add(C::RouteBytes, n);
            stats.c[C::RouteMinBytes as usize].fetch_min(n, Ordering::Relaxed);
            stats.c[C::RouteMaxBytes as usize].fetch_max(n, Ordering::Relaxed);
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, topic, "route query failed");
            stats.add(C::RouteErr, 1);
        }
        Err(_) => stats.add(C::RouteErr, 1),
    }
}

/// Runs the clients of one connection: client `i` queries at `start + k * interval +
/// i * interval / clients` until `end`; at most `inflight` queries of all drivers at once.
#[allow(clippy::too_many_arguments)]
async fn route_driver(
    ctx: Arc<RouteCtx>,
    client: MessagingServiceClient<Channel>,
    mine: Vec<(Duration, usize)>,
    start: tokio::time::Instant,
    end: tokio::time::Instant,
    interval: Duration,
    inflight: Arc<Semaphore>,
) {
    let mut tasks = JoinSet::new();
    'rounds: for k in 0u32.. {
        for (offset, topic) in &mine {
            let due = start + interval * k + *offset;
            if due >= end {
                break 'rounds;
            }
            tokio::time::sleep_until(due).await;
            let Ok(permit) = inflight.clone().acquire_owned().await else {
                break 'rounds;
            };
            if tokio::time::Instant::now() > due + LATE {
                ctx.stats.add(C::RouteLate, 1);
            }
            let (ctx, client, topic) = (ctx.clone(), client.clone(), *topic);
            tasks.spawn(async move {
                query_route(ctx, client, topic).await;
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        if mine.is_empty() {
            break;
        }
    }
    while tasks.join_next().await.is_some() {}
}

async fn connect(addr: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to the namesrv at {addr}"))?;
        out.push(ch);
    }
    Ok(out)
}

// ---------------------------------------------------------------- the run

/// Runs the bench; the children are killed (by PID) however it ends, Ctrl-C included.
pub async fn run(args: NamesrvBenchArgs) -> anyhow::Result<()> {
    args.check()?;
    let stop = Shutdown::from_signals();
    let tmp = TempDir::new(args.tmp_dir.as_deref())?;
    let mut children: Vec<ChildProc> = Vec::new();
    let result = tokio::select! {
        r = Box::pin(bench(&args, &tmp, &mut children)) => r,
        () = stop.wait() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Some(dir) = &args.keep_logs {
        let copied = std::fs::create_dir_all(dir).and_then(|()| {
            for c in &children {
                if let Some(name) = c.log.file_name() {
                    std::fs::copy(&c.log, dir.join(name))?;
                }
            }
            Ok(())
        });
        if let Err(e) = copied {
            eprintln!("could not keep the logs in {}: {e}", dir.display());
        }
    }
    // Children first (their PIDs, this process's own children only), then their files.
    drop(children);
    drop(tmp);
    result
}

async fn bench(
    args: &NamesrvBenchArgs,
    tmp: &TempDir,
    children: &mut Vec<ChildProc>,
) -> anyhow::Result<()> {
    let plan = Plan::new(args.groups, args.queues, args.topics, args.topic_queues)?;
    let member_list = members(&plan);
    let n_members = member_list.len();
    let tick = clock_ticks();
    let load_start = loadavg();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let exe = std::env::current_exe().context("finding this binary")?;

    // The namesrv's limits: raised only where this size needs it (as a deployment would).
    let mut overrides = Vec::new();
    if n_members > NAMESRV_MAX_BROKERS {
        overrides.push(format!("max_brokers = {}", n_members + n_members / 4));
    }
    let config = tmp.0.join("namesrv.toml");
    std::fs::write(&config, overrides.join("\n") + "\n")?;
    let ctl_dir = tmp.0.join("controller");
    let mut namesrv_args: Vec<String> = vec![
        "namesrv".into(),
        "--config".into(),
        config.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    let (namesrv_addr, controller_addr);
    if args.embedded_controller {
        namesrv_args.extend([
            "--controller-id".into(),
            "1".into(),
            "--controller-listen".into(),
            "127.0.0.1:0".into(),
            "--controller-data-dir".into(),
            ctl_dir.display().to_string(),
        ]);
        let (p, mut rx) = spawn_child(
            "namesrv+controller",
            &exe,
            &namesrv_args,
            tmp.0.join("namesrv.log"),
        )?;
        children.push(p);
        controller_addr = ready_addr(&children[0], &mut rx, "controller").await?;
        namesrv_addr = ready_addr(&children[0], &mut rx, "namesrv").await?;
    } else {
        let ctl_args: Vec<String> = vec![
            "controller".into(),
            "--id".into(),
            "1".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            ctl_dir.display().to_string(),
        ];
        let (p, mut rx) = spawn_child("controller", &exe, &ctl_args, tmp.0.join("controller.log"))?;
        children.push(p);
        let (p, mut nrx) = spawn_child("namesrv", &exe, &namesrv_args, tmp.0.join("namesrv.log"))?;
        children.push(p);
        controller_addr = ready_addr(&children[0], &mut rx, "controller").await?;
        namesrv_addr = ready_addr(&children[1], &mut nrx, "namesrv").await?;
    }
    // Let the processes settle (the controller elects itself) before the "before load" sample.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut watched: Vec<Watched> = children
        .iter()
        .map(|c| c.pid().to_string())
        .chain(std::iter::once("self".to_string()))
        .zip(
            children
                .iter()
                .map(|c| c.role)
                .chain(std::iter::once("bench (load generator)")),
        )
        .map(|(pid, role)| {
            let s = sample(&pid, tick).unwrap_or_default();
            Watched {
                role,
                pid,
                before_load: s,
                after_warmup: s,
                window_end: s,
                burst_start: s,
                burst_end: s,
                window_max_rss_kib: 0,
                window_max_cpu_1s: 0.0,
            }
        })
        .collect();
    eprintln!(
        "bench namesrv: namesrv {namesrv_addr}, controller {controller_addr}; {} groups, {n_members} \
         members, {} queues in {} topics; {} clients",
        args.groups,
        args.queues,
        plan.topics(),
        args.clients
    );

    // ---- warm-up: every member registers and heartbeats; wait for every group's master.
    let stats = Arc::new(Stats::new());
    let stop = Shutdown::new();
    let _stop_on_exit = stop.token().clone().drop_guard();
    let reg_channels = connect(&namesrv_addr, args.register_conns).await?;
    let ctl_clients: Vec<Arc<ControllerClient>> = (0..args.controller_conns.min(n_members))
        .map(|_| {
            Arc::new(ControllerClient::new(
                vec![controller_addr.clone()],
                Duration::from_secs(1),
            ))
        })
        .collect();
    let reg_period = Duration::from_millis(args.heartbeat_ms);
    let hb_period = Duration::from_millis(args.controller_heartbeat_ms);
    let t_start = tokio::time::Instant::now();
    let warm_cpu0: Vec<ProcSample> = watched
        .iter()
        .map(|w| sample(&w.pid, tick).unwrap_or_default())
        .collect();
    let mut member_tasks = JoinSet::new();
    for m in &member_list {
        // Spread over the period: member i beats at i/n of it.
        let frac = m.index as f64 / n_members as f64;
        member_tasks.spawn(register_loop(
            m.clone(),
            NameServerAdminClient::new(reg_channels[m.index % reg_channels.len()].clone()),
            stats.clone(),
            t_start + reg_period.mul_f64(frac),
            reg_period,
            stop.clone(),
        ));
        member_tasks.spawn(controller_loop(
            m.clone(),
            ctl_clients[m.index % ctl_clients.len()].clone(),
            stats.clone(),
            t_start + hb_period.mul_f64(frac),
            hb_period,
            stop.clone(),
        ));
    }
    let status_client =
        ControllerClient::new(vec![controller_addr.clone()], Duration::from_secs(5));
    let mut admin =
        NameServerAdminClient::new(reg_channels[0].clone()).max_decoding_message_size(256 << 20);
    let warm_deadline = Instant::now() + Duration::from_secs(args.warmup_timeout);
    let (mut registered, mut full_groups, mut elected) = (0usize, 0usize, 0usize);
    let mut last_note = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(Ok(r)) = tokio::time::timeout(
            RPC_TIMEOUT,
            admin.list_brokers(ListBrokersRequest {
                cluster: CLUSTER.into(),
            }),
        )
        .await
        {
            let groups = r.into_inner().groups;
            registered = groups.iter().map(|g| g.members.len()).sum();
            full_groups = groups.iter().filter(|g| g.members.len() == 2).count();
        }
        if let Ok(s) = status_client.status().await {
            elected = count_elected(&s);
        }
        if full_groups == args.groups && elected == args.groups {
            break;
        }
        for c in children.iter_mut() {
            if let Ok(Some(st)) = c.child.try_wait() {
                bail!(
                    "{} exited ({st}) during warm-up; log:\n{}",
                    c.role,
                    c.log_tail()
                );
            }
        }
        if Instant::now() >= warm_deadline {
            bail!(
                "warm-up not done in {} s: {full_groups}/{} groups registered with both members \
                 ({registered}/{n_members} members), {elected}/{} groups with a master and both \
                 in sync; errors: register {}, controller {}",
                args.warmup_timeout,
                args.groups,
                args.groups,
                stats.get(C::RegErr),
                stats.get(C::HbErr)
            );
        }
        if last_note.elapsed() >= Duration::from_secs(5) {
            last_note = Instant::now();
            eprintln!(
                "warm-up: {registered}/{n_members} members registered, {elected}/{} groups elected",
                args.groups
            );
        }
    }
    // One more full heartbeat round of both kinds, so every member beats in steady state.
    tokio::time::sleep(reg_period.max(hb_period) + Duration::from_millis(200)).await;
    let warmup_s = t_start.elapsed().as_secs_f64();
    let warm_errors = (
        stats.get(C::RegErr),
        stats.get(C::HbErr),
        stats.get(C::AlterErr),
    );
    for w in watched.iter_mut() {
        w.after_warmup = sample(&w.pid, tick).unwrap_or_default();
    }
    let warm_cpu: Vec<f64> = watched
        .iter()
        .zip(&warm_cpu0)
        .map(|(w, c0)| w.after_warmup.cpu_s - c0.cpu_s)
        .collect();

    // ---- the measured window: steady heartbeats plus route queries spread over the interval.
    let client_channels = connect(&namesrv_addr, args.client_conns).await?;
    let ns_sock: std::net::SocketAddr = namesrv_addr.parse().context("namesrv address")?;
    let ctx = Arc::new(RouteCtx {
        topic_names: (0..plan.topics()).map(topic_name).collect(),
        topic_queues: plan.topic_queues.clone(),
        access: Endpoints {
            scheme: sofamq_proto::v2::AddressScheme::IPv4 as i32,
            addresses: vec![sofamq_proto::v2::Address {
                host: ns_sock.ip().to_string(),
                port: i32::from(ns_sock.port()),
            }],
        },
        stats: stats.clone(),
    });
    let interval = Duration::from_secs_f64(args.route_interval);
    let window = Duration::from_secs_f64(args.duration);
    let mut per_conn: Vec<Vec<(Duration, usize)>> = vec![Vec::new(); client_channels.len()];
    for i in 0..args.clients {
        let offset = interval.mul_f64(i as f64 / args.clients as f64);
        per_conn[i % client_channels.len()].push((offset, i % plan.topics()));
    }
    let inflight = Arc::new(Semaphore::new(4096));
    stats.reset();
    let snap0 = stats.snap();
    for w in watched.iter_mut() {
        w.after_warmup = sample(&w.pid, tick).unwrap_or(w.after_warmup);
    }
    let w_start = tokio::time::Instant::now();
    let w_end = w_start + window;
    let mut drivers = JoinSet::new();
    for (mine, ch) in per_conn.into_iter().zip(&client_channels) {
        drivers.spawn(route_driver(
            ctx.clone(),
            MessagingServiceClient::new(ch.clone()).max_decoding_message_size(64 << 20),
            mine,
            w_start,
            w_end,
            interval,
            inflight.clone(),
        ));
    }
    let bar = indicatif::ProgressBar::new(window.as_secs().max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} s {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut prev: Vec<ProcSample> = watched.iter().map(|w| w.after_warmup).collect();
    let mut prev_t = Instant::now();
    while tokio::time::Instant::now() < w_end {
        let left = w_end - tokio::time::Instant::now();
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        let dt = prev_t.elapsed().as_secs_f64().max(1e-3);
        prev_t = Instant::now();
        for (w, p) in watched.iter_mut().zip(prev.iter_mut()) {
            if let Some(s) = sample(&w.pid, tick) {
                w.window_max_rss_kib = w.window_max_rss_kib.max(s.rss_kib);
                if dt >= 0.5 {
                    w.window_max_cpu_1s = w.window_max_cpu_1s.max((s.cpu_s - p.cpu_s) / dt);
                }
                *p = s;
            }
        }
        bar.set_position(w_start.elapsed().as_secs());
        bar.set_message(format!(
            "{} route queries, {} errors",
            stats.get(C::RouteOk) - snap0[C::RouteOk as usize],
            stats.get(C::RouteErr) - snap0[C::RouteErr as usize]
        ));
    }
    bar.finish_and_clear();
    for w in watched.iter_mut() {
        w.window_end = sample(&w.pid, tick).unwrap_or(w.window_end);
        w.window_max_rss_kib = w.window_max_rss_kib.max(w.window_end.rss_kib);
    }
    let window_s = w_start.elapsed().as_secs_f64();
    let load_end = loadavg();
    let snap1 = stats.snap();
    let reg_h = Stats::take(&stats.reg);
    let hb_h = Stats::take(&stats.hb);
    // Queries still in flight at the window's end finish (bounded by RPC_TIMEOUT) and count.
    let drain = tokio::time::timeout(RPC_TIMEOUT * 2, async {
        while drivers.join_next().await.is_some() {}
    })
    .await;
    if drain.is_err() {
        drivers.abort_all();
    }
    let snap_routes = stats.snap();
    let route_h = Stats::take(&stats.route);
    let d = |c: C| snap1[c as usize] - snap0[c as usize];
    let dr = |c: C| snap_routes[c as usize] - snap0[c as usize];

    // ---- the burst: every client queries at once (a restart storm), heartbeats going on.
    let mut burst = Value::Null;
    if !args.no_burst {
        stats.reset();
        let b0 = stats.snap();
        for w in watched.iter_mut() {
            w.burst_start = sample(&w.pid, tick).unwrap_or_default();
        }
        let t0 = Instant::now();
        let mut all = JoinSet::new();
        for i in 0..args.clients {
            let client =
                MessagingServiceClient::new(client_channels[i % client_channels.len()].clone())
                    .max_decoding_message_size(64 << 20);
            all.spawn(query_route(ctx.clone(), client, i % plan.topics()));
        }
        let done = tokio::time::timeout(RPC_TIMEOUT * 2, async {
            while all.join_next().await.is_some() {}
        })
        .await;
        if done.is_err() {
            all.abort_all();
        }
        let took = t0.elapsed().as_secs_f64();
        for w in watched.iter_mut() {
            w.burst_end = sample(&w.pid, tick).unwrap_or_default();
        }
        let b1 = stats.snap();
        let bd = |c: C| b1[c as usize] - b0[c as usize];
        burst = json!({
            "queries": args.clients,
            "answered": bd(C::RouteOk),
            "errors": bd(C::RouteErr) + bd(C::RouteWrong) + (args.clients as u64).saturating_sub(bd(C::RouteOk) + bd(C::RouteErr)),
            "seconds": took,
            "latency_ms": quantiles(&Stats::take(&stats.route)),
            "registration_errors": bd(C::RegErr),
            "controller_errors": bd(C::HbErr) + bd(C::AlterErr),
            "master_changes": bd(C::MasterChanges),
            "cpu_s": watched.iter().map(|w| json!({"role": w.role, "cpu_s": w.burst_end.cpu_s - w.burst_start.cpu_s})).collect::<Vec<_>>(),
        });
    }

    // ---- stop the members, check the children lived through it, report.
    stop.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while member_tasks.join_next().await.is_some() {}
    })
    .await;
    member_tasks.abort_all();
    for c in children.iter_mut() {
        if let Ok(Some(st)) = c.child.try_wait() {
            bail!(
                "{} exited ({st}) during the bench; log:\n{}",
                c.role,
                c.log_tail()
            );
        }
    }
    let route_ok = dr(C::RouteOk);
    let procs: Vec<Value> = watched
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let cpu = w.window_end.cpu_s - w.after_warmup.cpu_s;
            json!({
                "role": w.role,
                "pid": if w.pid == "self" { std::process::id().to_string() } else { w.pid.clone() },
                "window_cpu_s": cpu,
                "window_cpu_pct_of_one_core": 100.0 * cpu / window_s,
                "window_max_1s_cpu_pct": 100.0 * w.window_max_cpu_1s,
                "warmup_cpu_s": warm_cpu[i],
                "rss_before_load_mib": mib(w.before_load.rss_kib),
                "rss_after_warmup_mib": mib(w.after_warmup.rss_kib),
                "rss_window_max_mib": mib(w.window_max_rss_kib),
                "rss_peak_vmhwm_mib": mib(w.window_end.hwm_kib),
                "rss_peak_after_burst_vmhwm_mib": mib(w.window_end.hwm_kib.max(w.burst_end.hwm_kib)),
                "log_warnings": children.get(i).map_or(0, ChildProc::log_warnings),
            })
        })
        .collect();
    let topic_groups_min = plan.topic_groups.iter().min().copied().unwrap_or(0);
    let topic_groups_max = plan.topic_groups.iter().max().copied().unwrap_or(0);
    let per_group: Vec<usize> = plan.groups.iter().map(Vec::len).collect();
    let report = json!({
        "shape": {
            "groups": args.groups,
            "members": n_members,
            "queues": args.queues,
            "topics": plan.topics(),
            "topic_queues_per_group": args.topic_queues,
            "groups_per_topic": [topic_groups_min, topic_groups_max],
            "topics_per_group": [per_group.iter().min(), per_group.iter().max()],
            "clients": args.clients,
            "route_interval_s": args.route_interval,
            "heartbeat_ms": args.heartbeat_ms,
            "controller_heartbeat_ms": args.controller_heartbeat_ms,
            "register_conns": args.register_conns,
            "client_conns": args.client_conns,
            "controller_conns": ctl_clients.len(),
            "embedded_controller": args.embedded_controller,
            "namesrv_config": if overrides.is_empty() { "defaults".to_string() } else { overrides.join("; ") },
            "cores": cores,
            "loadavg_at_start": load_start,
            "loadavg_at_window_end": load_end,
        },
        "warmup": {
            "seconds": warmup_s,
            "members_registered": registered,
            "groups_registered": full_groups,
            "groups_elected": elected,
            "errors": { "register": warm_errors.0, "controller": warm_errors.1, "alter_insync": warm_errors.2 },
            "alter_insync_ok": stats.get(C::AlterOk),
        },
        "window": {
            "seconds": window_s,
            "route_queries": route_ok,
            "route_queries_per_s": route_ok as f64 / window_s,
            "route_errors": dr(C::RouteErr),
            "route_wrong": dr(C::RouteWrong),
            "route_late": dr(C::RouteLate),
            "route_latency_ms": quantiles(&route_h),
            "route_response_bytes": {
                "mean": dr(C::RouteBytes).checked_div(route_ok).unwrap_or(0),
                "min": if route_ok > 0 { snap_routes[C::RouteMinBytes as usize] } else { 0 },
                "max": snap_routes[C::RouteMaxBytes as usize],
            },
            "registrations": d(C::RegOk),
            "registrations_per_s": d(C::RegOk) as f64 / window_s,
            "registration_errors": d(C::RegErr),
            "registration_bytes_per_s": d(C::RegBytes) as f64 / window_s,
            "registration_request_bytes": if d(C::RegOk) > 0 { d(C::RegBytes) / d(C::RegOk) } else { 0 },
            "registration_latency_ms": quantiles(&reg_h),
            "controller_heartbeats": d(C::HbOk),
            "controller_heartbeats_per_s": d(C::HbOk) as f64 / window_s,
            "controller_errors": d(C::HbErr) + d(C::AlterErr),
            "controller_heartbeat_bytes": stats.hb_req_bytes.load(Ordering::Relaxed),
            "controller_reply_bytes": stats.hb_reply_bytes.load(Ordering::Relaxed),
            "controller_latency_ms": quantiles(&hb_h),
            "master_changes": d(C::MasterChanges),
            "errors": dr(C::RouteErr) + dr(C::RouteWrong) + d(C::RegErr) + d(C::HbErr) + d(C::AlterErr),
        },
        "processes": procs,
        "burst": burst,
    });
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The 1, 5 and 15 minute load averages (other work on the machine shows here).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Groups with a master and both members in sync.
fn count_elected(s: &ControllerStatus) -> usize {
    s.groups
        .iter()
        .filter(|g| g.master.is_some() && g.insync.len() >= 2)
        .count()
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

fn lat_line(v: &Value) -> String {
    format!(
        "p50 {} p99 {} p99.9 {} max {} ms (n={})",
        v["p50"], v["p99"], v["p999"], v["max"], v["samples"]
    )
}

fn print_report(r: &Value) {
    let s = &r["shape"];
    let w = &r["window"];
    let wu = &r["warmup"];
    println!(
        "namesrv bench: {} groups x 2 = {} members, {} queues in {} topics ({} queues per topic \
         per group, {}-{} groups per topic); {} clients querying every {} s; {} cores (load \
         average {} at start, {} at the window's end); namesrv config: {}",
        s["groups"],
        s["members"],
        s["queues"],
        s["topics"],
        s["topic_queues_per_group"],
        s["groups_per_topic"][0],
        s["groups_per_topic"][1],
        s["clients"],
        s["route_interval_s"],
        s["cores"],
        s["loadavg_at_start"].as_str().unwrap_or_default(),
        s["loadavg_at_window_end"].as_str().unwrap_or_default(),
        s["namesrv_config"].as_str().unwrap_or_default()
    );
    println!(
        "warm-up: {}/{} groups registered ({} members), {}/{} groups elected with both in sync, \
         in {:.1} s; warm-up errors: register {}, controller {}, alter-insync {}",
        wu["groups_registered"],
        s["groups"],
        wu["members_registered"],
        wu["groups_elected"],
        s["groups"],
        wu["seconds"].as_f64().unwrap_or(0.0),
        wu["errors"]["register"],
        wu["errors"]["controller"],
        wu["errors"]["alter_insync"]
    );
    println!("window: {:.1} s", w["seconds"].as_f64().unwrap_or(0.0));
    println!(
        "route queries: {} ({:.1}/s), errors {}, incomplete routes {}, late starts {}",
        w["route_queries"],
        w["route_queries_per_s"].as_f64().unwrap_or(0.0),
        w["route_errors"],
        w["route_wrong"],
        w["route_late"]
    );
    println!("route latency: {}", lat_line(&w["route_latency_ms"]));
    println!(
        "route response bytes: mean {} min {} max {}",
        w["route_response_bytes"]["mean"],
        w["route_response_bytes"]["min"],
        w["route_response_bytes"]["max"]
    );
    println!(
        "registrations: {} ({:.1}/s, {:.1} KiB/s, {} B each), errors {}, latency {}",
        w["registrations"],
        w["registrations_per_s"].as_f64().unwrap_or(0.0),
        w["registration_bytes_per_s"].as_f64().unwrap_or(0.0) / 1024.0,
        w["registration_request_bytes"],
        w["registration_errors"],
        lat_line(&w["registration_latency_ms"])
    );
    println!(
        "controller heartbeats: {} ({:.1}/s, {} B request, {} B reply), errors {}, master changes {}, latency {}",
        w["controller_heartbeats"],
        w["controller_heartbeats_per_s"].as_f64().unwrap_or(0.0),
        w["controller_heartbeat_bytes"],
        w["controller_reply_bytes"],
        w["controller_errors"],
        w["master_changes"],
        lat_line(&w["controller_latency_ms"])
    );
    println!("errors: {}", w["errors"]);
    for p in r["processes"].as_array().into_iter().flatten() {
        println!(
            "process {} (pid {}): cpu {:.1}% of one core over the window ({:.2} s cpu; busiest \
             second {:.0}%), warm-up cpu {:.2} s; rss before load {} MiB, after warm-up {} MiB, \
             window max {} MiB, peak (VmHWM) {} MiB before the burst, {} MiB after; log \
             warnings {}",
            p["role"].as_str().unwrap_or_default(),
            p["pid"].as_str().unwrap_or_default(),
            p["window_cpu_pct_of_one_core"].as_f64().unwrap_or(0.0),
            p["window_cpu_s"].as_f64().unwrap_or(0.0),
            p["window_max_1s_cpu_pct"].as_f64().unwrap_or(0.0),
            p["warmup_cpu_s"].as_f64().unwrap_or(0.0),
            p["rss_before_load_mib"],
            p["rss_after_warmup_mib"],
            p["rss_window_max_mib"],
            p["rss_peak_vmhwm_mib"],
            p["rss_peak_after_burst_vmhwm_mib"],
            p["log_warnings"]
        );
    }
    let b = &r["burst"];
    if !b.is_null() {
        let cpus: Vec<String> = b["cpu_s"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                format!(
                    "{} {:.2} s",
                    c["role"].as_str().unwrap_or_default(),
                    c["cpu_s"].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        println!(
            "burst: {} queries at once, {} answered in {:.2} s, errors {}, latency {}; cpu: {}; \
             meanwhile registration errors {}, controller errors {}, master changes {}",
            b["queries"],
            b["answered"],
            b["seconds"].as_f64().unwrap_or(0.0),
            b["errors"],
            lat_line(&b["latency_ms"]),
            cpus.join(", "),
            b["registration_errors"],
            b["controller_errors"],
            b["master_changes"]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_plan_is_100k_queues_on_1000_groups() {
        let p = Plan::new(1000, 100_000, 1250, 8).unwrap();
        assert_eq!(p.topics(), 1250);
        assert_eq!(p.topic_queues.iter().sum::<u64>(), 100_000);
        assert!(p.topic_groups.iter().all(|g| *g == 10));
        assert!(p.topic_queues.iter().all(|q| *q == 80));
        let per_group: Vec<u32> = p
            .groups
            .iter()
            .map(|g| g.iter().map(|(_, q)| q).sum())
            .collect();
        assert!(per_group.iter().all(|q| (96..=104).contains(q)));
        // A topic's groups are distinct.
        for t in 0..p.topics() {
            let on = p
                .groups
                .iter()
                .filter(|g| g.iter().any(|(x, _)| *x == t))
                .count();
            assert_eq!(on, p.topic_groups[t]);
        }
    }

    #[test]
    fn small_and_uneven_plans_keep_the_total() {
        let p = Plan::new(5, 200, 1250, 8).unwrap();
        assert_eq!(p.topics(), 25);
        assert_eq!(p.topic_queues.iter().sum::<u64>(), 200);
        let p = Plan::new(3, 101, 5, 8).unwrap();
        assert_eq!(p.topic_queues.iter().sum::<u64>(), 101);
        assert!(p.topic_groups.iter().all(|g| *g <= 3));
        assert!(Plan::new(2, 1000, 1, 8).is_err());
    }

    #[test]
    fn proc_files_parse() {
        let stat = "1234 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0";
        assert_eq!(parse_stat_ticks(stat), Some(300));
        let status = "Name:\tsofamq\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        assert!(sample("self", 100.0).is_some_and(|s| s.rss_kib > 0));
    }
}
