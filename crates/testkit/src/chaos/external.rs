//! The chaos workload against a cluster that is already running somewhere else (for example
//! `scripts/multihost.sh`, hosts in network namespaces): SDK producers with sequence-numbered
//! messages across every broker group, a live consumer, a watcher of the controller's view,
//! and at the end an audit drain judged by [`super::checker`].
//!
//! Differences from the in-process scenarios ([`super::scenarios`]):
//!
//! * No log-divergence check: the logs live on other hosts, so the history has no log pairs.
//! * Several broker groups: a delivery's place is (group, queue, offset), with the group
//!   found from the broker address the message came from (the controller's view lists every
//!   member's address). [`ReadRecord::queue`] then carries `group index * 1000 + queue id`.
//! * The access points are a list (every name server), so losing one name server is not
//!   losing the cluster.
//! * An optional second topic written by another client (the official Python client): its
//!   acked message ids come from a file; the audit drain reads that topic too and counts
//!   lost (acked, never read) and duplicated (read at two places) ids.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sofamq_client::{ConsumerConfig, Message, Producer, ProducerConfig, SimpleConsumer};
use sofamq_controller::{ControllerClient, ControllerStatus};
use tokio::task::JoinHandle;

use super::checker::{self, Report};
use super::history::{History, PROP_PRODUCER, PROP_SEQ, ReadRecord, SendOutcome, SendRecord};
use super::workload::{classify, read_record};

/// What to run against the existing cluster.
#[derive(Debug, Clone)]
pub struct ExternalOptions {
    /// Name server addresses (the SDK tries them in turn).
    pub namesrv: Vec<String>,
    /// Controller addresses (for the watcher; empty: no watcher).
    pub controllers: Vec<String>,
    /// Topic of the SDK producers.
    pub topic: String,
    /// SDK producers (one send in flight each).
    pub producers: u32,
    /// Sends per second per producer.
    pub rate: u32,
    /// Attempts per send (the SDK retries onto another broker group).
    pub max_attempts: u32,
    /// Live consumers of the SDK topic during the load phase.
    pub consumers: u32,
    /// The load phase ends when this file exists ...
    pub stop_file: PathBuf,
    /// ... or after this long, whichever comes first.
    pub max_duration: Duration,
    /// The official client's topic, read by the audit drain too.
    pub official_topic: Option<String>,
    /// JSON lines of the official client's sends (`{"ok":true,"message_id":..}`), read
    /// once the load phase ended.
    pub official_acked: Option<PathBuf>,
    /// Every change of the controller's view, one JSON line each (append).
    pub events: Option<PathBuf>,
    /// The controller's latest view as text, rewritten on every poll.
    pub state: Option<PathBuf>,
    /// Broker groups the cluster has (the state file says `healthy` only when it sees
    /// this many, each with a master and an in-sync slave).
    pub groups: usize,
    /// Poll period of the watcher.
    pub poll: Duration,
}

impl ExternalOptions {
    /// Defaults: 3 producers at 20 msg/s, 3 attempts, 1 live consumer, 150 ms polls.
    pub fn new(namesrv: Vec<String>, topic: &str, stop_file: PathBuf) -> Self {
        Self {
            namesrv,
            controllers: Vec::new(),
            topic: topic.to_string(),
            producers: 3,
            rate: 20,
            max_attempts: 3,
            consumers: 1,
            stop_file,
            max_duration: Duration::from_secs(3600),
            official_topic: None,
            official_acked: None,
            events: None,
            state: None,
            groups: 0,
            poll: Duration::from_millis(150),
        }
    }
}

/// The official client's load, judged.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OfficialReport {
    /// Sends the client saw acked.
    pub acked: u64,
    /// Sends that failed (the client raised).
    pub failed: u64,
    /// Distinct message ids the audit drain read from the official topic.
    pub read: u64,
    /// Acked, never read by the audit drain.
    pub lost: u64,
    /// Read, but not a message of the driver (its body is not `p<P>-s<S>`).
    pub unexpected: u64,
    /// Extra places a message id was read at (stored twice).
    pub dup: u64,
    /// Read although the client never saw an ack (a failed send that was stored after all).
    pub recovered: u64,
    /// A few examples of what went wrong.
    pub examples: Vec<String>,
}

/// Everything the run observed, judged.
#[derive(Debug, Clone, Serialize)]
pub struct ExternalReport {
    /// The SDK load, by the chaos checker (no log-divergence check in this mode).
    pub sdk: Report,
    /// The official client's load, when there was one.
    pub official: Option<OfficialReport>,
    /// Elections that named a different master than the group had (as the watcher saw).
    pub failovers: u64,
    /// Broker groups the watcher saw.
    pub groups: usize,
    /// The audit drain read everything it had to and went quiet (false: it gave up).
    pub drained: bool,
    /// Of [`ExternalReport::dup`]: extra copies in another broker group than the first
    /// copy (a client retried a send whose outcome it did not know onto another group,
    /// where that group's idempotence window cannot see the first copy).
    pub dup_cross_group: u64,
    /// Of [`ExternalReport::dup`]: extra copies within one broker group (what the group's
    /// idempotence window should have prevented).
    pub dup_within_group: u64,
}

impl ExternalReport {
    /// Acked sends, SDK and official together.
    pub fn acked(&self) -> u64 {
        self.sdk.ok + self.official.as_ref().map_or(0, |o| o.acked)
    }
    /// Lost, SDK and official together.
    pub fn lost(&self) -> u64 {
        self.sdk.lost() + self.official.as_ref().map_or(0, |o| o.lost)
    }
    /// Unexpected (and aborted: read although the send definitely failed), together.
    pub fn unexpected(&self) -> u64 {
        self.sdk.unexpected + self.sdk.aborted + self.official.as_ref().map_or(0, |o| o.unexpected)
    }
    /// Duplicated, together.
    pub fn dup(&self) -> u64 {
        self.sdk.duplicated + self.official.as_ref().map_or(0, |o| o.dup)
    }
    /// Nothing lost, unexpected or duplicated, and something was acked.
    pub fn pass(&self) -> bool {
        self.lost() == 0 && self.unexpected() == 0 && self.dup() == 0 && self.sdk.ok > 0
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Splits the extra copies of messages read at several places (group, queue, offset) into
/// (within one group, across groups): a message at places in g distinct groups, n places
/// in all, has g - 1 cross-group extra copies and n - g within-group ones.
fn split_dups<K: std::hash::Hash + Eq>(
    places: impl Iterator<Item = (K, (i32, i32, i64))>,
) -> (u64, u64) {
    let mut by: HashMap<K, BTreeSet<(i32, i32, i64)>> = HashMap::new();
    for (k, p) in places {
        by.entry(k).or_default().insert(p);
    }
    let (mut within, mut cross) = (0, 0);
    for at in by.values() {
        let groups: BTreeSet<i32> = at.iter().map(|p| p.0).collect();
        cross += groups.len() as u64 - 1;
        within += (at.len() - groups.len()) as u64;
    }
    (within, cross)
}

/// A delivery of the official topic: message id, body, place.
struct OfficialRead {
    msg_id: String,
    body_ok: bool,
    place: (i32, i32, i64),
}

#[derive(Default)]
struct Shared {
    sends: Mutex<Vec<SendRecord>>,
    reads: Mutex<Vec<ReadRecord>>,
    official_reads: Mutex<Vec<OfficialRead>>,
    /// Broker gRPC address -> group name (from the controller's view).
    group_of: Mutex<HashMap<String, String>>,
    /// Every group name seen, sorted: a group's index is its place here.
    group_names: Mutex<BTreeSet<String>>,
    /// Deliveries whose broker address no view listed (group index 900 and up).
    unknown_endpoint: AtomicU64,
    delivered: AtomicU64,
    acked: AtomicU64,
    failovers: AtomicU64,
}

impl Shared {
    /// The group index of a broker address (900 and up when unknown).
    fn group_index(&self, endpoint: &str) -> i32 {
        let group = lock(&self.group_of).get(endpoint).cloned();
        match group {
            Some(g) => lock(&self.group_names)
                .iter()
                .position(|n| *n == g)
                .map_or(899, |i| i as i32),
            None => {
                // Not in any view: a stable index of its own, apart from the known groups.
                self.unknown_endpoint.fetch_add(1, Ordering::Relaxed);
                900 + (super::history::digest(&[endpoint.as_bytes()]) % 99) as i32
            }
        }
    }
}

/// One poll of every controller node at once; the answer of the node that says it leads,
/// in the highest term (a cut-off old leader may still believe it leads). None when no node
/// leads: a follower's view may lag (a node cut off from the leader keeps an old state while
/// its term grows), so it is never taken.
async fn poll_controllers(addrs: &[String], timeout: Duration) -> Option<ControllerStatus> {
    let calls = addrs.iter().map(|a| {
        let c = ControllerClient::new(vec![a.clone()], timeout);
        async move { tokio::time::timeout(timeout, c.status()).await.ok()?.ok() }
    });
    let answers: Vec<ControllerStatus> = futures_join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect();
    answers
        .iter()
        .filter(|s| s.leader == Some(s.node))
        .max_by_key(|s| s.term)
        .cloned()
}

/// `join_all` without the futures crate: spawn each and await in order.
async fn futures_join_all<F, T>(fs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<JoinHandle<T>> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// Watches the controller: writes every change of a group's (master, epoch, in-sync set)
/// as a JSON line to `events`, and the latest view to `state`; counts failovers.
fn spawn_watcher(
    o: &ExternalOptions,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    let addrs = o.controllers.clone();
    let (events, state, want, poll) = (o.events.clone(), o.state.clone(), o.groups, o.poll);
    tokio::spawn(async move {
        use std::io::Write as _;
        let mut events = events.and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        // Per group: (master, epoch, in-sync) last seen, and the last master it had.
        let mut last: BTreeMap<String, (Option<u64>, u64, Vec<u64>)> = BTreeMap::new();
        // Per group: the newest (master epoch, in-sync epoch) seen; both only grow, so a
        // view below it is an old one (a leader of a higher term that has not applied the
        // log yet) and is skipped.
        let mut newest: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut last_master: BTreeMap<String, u64> = BTreeMap::new();
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let t = now_ms();
            let Some(s) = poll_controllers(&addrs, poll.max(Duration::from_millis(300))).await
            else {
                if let Some(p) = &state {
                    let _ = write_atomic(
                        p,
                        &format!(
                            "t_ms {t}\nhealthy 0\nerror no controller node answered as the leader\n"
                        ),
                    );
                }
                continue;
            };
            {
                let mut g = lock(&shared.group_of);
                let mut names = lock(&shared.group_names);
                for gs in &s.groups {
                    names.insert(gs.group.clone());
                    for a in gs.brokers.values() {
                        g.insert(a.grpc.clone(), gs.group.clone());
                    }
                }
            }
            let mut text = String::new();
            let mut healthy = s.groups.len() >= want;
            for gs in &s.groups {
                let version = (gs.master_epoch, gs.insync_epoch);
                if newest.get(&gs.group).is_some_and(|v| version < *v) {
                    healthy = false;
                    continue;
                }
                newest.insert(gs.group.clone(), version);
                let insync: Vec<u64> = gs.insync.iter().copied().collect();
                let now = (gs.master, gs.master_epoch, insync.clone());
                if last.get(&gs.group) != Some(&now) {
                    if let (Some(m), Some(prev)) = (gs.master, last_master.get(&gs.group))
                        && m != *prev
                    {
                        shared.failovers.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(f) = events.as_mut() {
                        let line = serde_json::json!({
                            "t_ms": t, "group": gs.group, "master": gs.master,
                            "epoch": gs.master_epoch, "insync": insync,
                            "master_addr": gs.master_addrs().map(|a| a.grpc.clone()),
                            "leader": s.leader, "term": s.term,
                        });
                        let _ = writeln!(f, "{line}");
                    }
                    last.insert(gs.group.clone(), now);
                }
                if let Some(m) = gs.master {
                    last_master.insert(gs.group.clone(), m);
                }
                let ok = gs.master.is_some() && gs.insync.len() >= 2.min(gs.brokers.len().max(1));
                healthy &= ok && gs.brokers.len() >= 2;
                text.push_str(&format!(
                    "group {} master {} epoch {} insync {} brokers {}\n",
                    gs.group,
                    gs.master.map_or("none".into(), |m| m.to_string()),
                    gs.master_epoch,
                    insync.len(),
                    gs.brokers.len()
                ));
            }
            if let Some(p) = &state {
                let head = format!(
                    "t_ms {t}\nhealthy {}\nleader {}\nterm {}\nfailovers {}\n",
                    u8::from(healthy),
                    s.leader.map_or("none".into(), |l| l.to_string()),
                    s.term,
                    shared.failovers.load(Ordering::Relaxed)
                );
                let _ = write_atomic(p, &(head + &text));
            }
        }
    })
}

fn write_atomic(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

async fn spawn_producer(
    o: &ExternalOptions,
    p: u32,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<()>> {
    let pc = ProducerConfig::new(o.namesrv.clone())
        .with_client_id(format!("multihost-producer-{p}"))
        .with_request_timeout(Duration::from_secs(2))
        .with_max_attempts(o.max_attempts)
        .with_retry_backoff(Duration::from_millis(100), Duration::from_secs(1), 2.0);
    let producer = Producer::start(pc).await?;
    let topic = o.topic.clone();
    let period = Duration::from_secs_f64(1.0 / f64::from(o.rate.max(1)));
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            seq += 1;
            let msg = Message::builder(topic.as_str(), format!("p{p}-s{seq}"))
                .key(format!("p{p}-s{seq}"))
                .property(PROP_PRODUCER, p.to_string())
                .property(PROP_SEQ, seq.to_string())
                .build();
            let (msg_id, outcome) = match producer.send(msg).await {
                Ok(r) => {
                    shared.acked.fetch_add(1, Ordering::Relaxed);
                    (
                        r.message_id.clone(),
                        SendOutcome::Ok {
                            queue_offset: r.queue_offset,
                            broker: r.broker.clone(),
                        },
                    )
                }
                Err(e) => (e.message_id.clone(), classify(&e)),
            };
            lock(&shared.sends).push(SendRecord {
                producer: p,
                seq,
                msg_id,
                outcome,
                kind: Default::default(),
            });
        }
        producer.shutdown().await;
    }))
}

async fn spawn_consumer(
    o: &ExternalOptions,
    group: &str,
    n: u32,
    audit: bool,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<()>> {
    let mut cc = ConsumerConfig::new(o.namesrv.clone(), group)
        .with_long_polling_timeout(Duration::from_millis(500))
        .with_request_timeout(Duration::from_secs(3));
    cc.client_id = format!("multihost-{group}-{n}");
    let mut topics = vec![o.topic.clone()];
    if audit && let Some(t) = &o.official_topic {
        topics.push(t.clone());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let consumer = loop {
        let subs = topics
            .iter()
            .map(|t| (t.clone(), "*".to_string()))
            .collect();
        match SimpleConsumer::start(cc.clone(), subs).await {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    };
    let official = o.official_topic.clone();
    Ok(tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let msgs = match consumer.receive(32, Duration::from_secs(10)).await {
                Ok(m) => m,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if msgs.is_empty() {
                continue;
            }
            let now = now_ms();
            for m in &msgs {
                let g = shared.group_index(&m.endpoint);
                if official.as_deref() == Some(m.topic.as_str()) {
                    let body = String::from_utf8_lossy(&m.body);
                    lock(&shared.official_reads).push(OfficialRead {
                        msg_id: m.message_id.clone(),
                        body_ok: is_driver_body(&body),
                        place: (g, m.queue_id, m.queue_offset),
                    });
                    continue;
                }
                lock(&shared.reads).push(read_record(m, g * 1000 + m.queue_id, audit, now));
            }
            shared
                .delivered
                .fetch_add(msgs.len() as u64, Ordering::Relaxed);
            // A lost ack only means a redelivery.
            let _ = consumer.ack_all(&msgs).await;
        }
    }))
}

/// `p<P>-s<S>`: what `scripts/compat/python_failover_producer.py` sends.
fn is_driver_body(b: &str) -> bool {
    let Some(rest) = b.strip_prefix('p') else {
        return false;
    };
    let Some((p, s)) = rest.split_once("-s") else {
        return false;
    };
    !p.is_empty()
        && !s.is_empty()
        && p.bytes().all(|c| c.is_ascii_digit())
        && s.bytes().all(|c| c.is_ascii_digit())
}

/// The official driver's output: (acked message ids, failed sends).
fn read_official_acked(path: &std::path::Path) -> anyhow::Result<(HashSet<String>, u64)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let mut acked = HashSet::new();
    let mut failed = 0;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        match v.get("ok").and_then(serde_json::Value::as_bool) {
            Some(true) => {
                if let Some(id) = v.get("message_id").and_then(|x| x.as_str()) {
                    acked.insert(id.to_string());
                }
            }
            Some(false) => failed += 1,
            None => {}
        }
    }
    Ok((acked, failed))
}

/// Runs the load until the stop file appears, drains, and judges. Progress goes to stderr.
pub async fn run(o: ExternalOptions) -> anyhow::Result<ExternalReport> {
    let shared = Arc::new(Shared::default());
    let stop_watch = Arc::new(AtomicBool::new(false));
    let stop_load = Arc::new(AtomicBool::new(false));
    let stop_live = Arc::new(AtomicBool::new(false));
    let watcher =
        (!o.controllers.is_empty()).then(|| spawn_watcher(&o, shared.clone(), stop_watch.clone()));
    // The first view names the groups (and their addresses) before anything is read.
    if watcher.is_some() {
        let deadline = Instant::now() + Duration::from_secs(30);
        while lock(&shared.group_names).len() < o.groups.max(1) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut live = Vec::new();
    for n in 0..o.consumers {
        live.push(
            spawn_consumer(
                &o,
                "multihost-live",
                n,
                false,
                shared.clone(),
                stop_live.clone(),
            )
            .await?,
        );
    }
    let mut producers = Vec::new();
    for p in 1..=o.producers {
        producers.push(spawn_producer(&o, p, shared.clone(), stop_load.clone()).await?);
    }
    eprintln!(
        "external: {} producers at {}/s on {} through {}",
        o.producers,
        o.rate,
        o.topic,
        o.namesrv.join(",")
    );
    // The load phase.
    let start = Instant::now();
    let mut last_report = Instant::now();
    while !o.stop_file.exists() && start.elapsed() < o.max_duration {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "external: {:>4}s acked {} delivered {} failovers {}",
                start.elapsed().as_secs(),
                shared.acked.load(Ordering::Relaxed),
                shared.delivered.load(Ordering::Relaxed),
                shared.failovers.load(Ordering::Relaxed)
            );
        }
    }
    eprintln!("external: load phase over, stopping producers");
    stop_load.store(true, Ordering::Relaxed);
    for p in producers {
        let _ = tokio::time::timeout(Duration::from_secs(30), p).await;
    }
    stop_live.store(true, Ordering::Relaxed);
    for c in live {
        let _ = tokio::time::timeout(Duration::from_secs(15), c).await;
    }
    // What the drain must read.
    let acked: HashSet<(u32, u64)> = lock(&shared.sends)
        .iter()
        .filter(|s| matches!(s.outcome, SendOutcome::Ok { .. }))
        .map(|s| (s.producer, s.seq))
        .collect();
    let official = match &o.official_acked {
        Some(p) if o.official_topic.is_some() => Some(read_official_acked(p)?),
        _ => None,
    };
    eprintln!(
        "external: draining ({} SDK and {} official acked messages to read)",
        acked.len(),
        official.as_ref().map_or(0, |(a, _)| a.len())
    );
    let stop_audit = Arc::new(AtomicBool::new(false));
    let group = format!("multihost-audit-{}", now_ms());
    let mut audit = Vec::new();
    for n in 0..2 {
        audit.push(spawn_consumer(&o, &group, n, true, shared.clone(), stop_audit.clone()).await?);
    }
    let (idle, give_up, max) = (
        Duration::from_secs(3),
        Duration::from_secs(30),
        Duration::from_secs(240),
    );
    let drain_start = Instant::now();
    let mut last = shared.delivered.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    let drained = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let d = shared.delivered.load(Ordering::Relaxed);
        if d != last {
            last = d;
            last_change = Instant::now();
        }
        let sdk_done = {
            let reads = lock(&shared.reads);
            let seen: HashSet<(u32, u64)> = reads
                .iter()
                .filter(|r| r.audit)
                .filter_map(|r| Some((r.producer?, r.seq?)))
                .collect();
            acked.iter().all(|k| seen.contains(k))
        };
        let official_done = match &official {
            None => true,
            Some((ids, _)) => {
                let reads = lock(&shared.official_reads);
                let seen: HashSet<&str> = reads.iter().map(|r| r.msg_id.as_str()).collect();
                ids.iter().all(|i| seen.contains(i.as_str()))
            }
        };
        let quiet = last_change.elapsed();
        if sdk_done && official_done && quiet >= idle {
            break true;
        }
        if quiet >= give_up || drain_start.elapsed() >= max {
            break false;
        }
    };
    stop_audit.store(true, Ordering::Relaxed);
    for c in audit {
        let _ = tokio::time::timeout(Duration::from_secs(15), c).await;
    }
    stop_watch.store(true, Ordering::Relaxed);
    if let Some(w) = watcher {
        let _ = tokio::time::timeout(Duration::from_secs(5), w).await;
    }
    let unknown = shared.unknown_endpoint.load(Ordering::Relaxed);
    if unknown > 0 {
        eprintln!(
            "external: {unknown} deliveries came from a broker address no controller view \
             listed (their group counted as one unknown group)"
        );
    }
    // Judge the SDK load with the chaos checker.
    let history = History {
        sends: std::mem::take(&mut *lock(&shared.sends)),
        reads: std::mem::take(&mut *lock(&shared.reads)),
        audited: true,
        log_pairs: Vec::new(),
        timer_late_bound_ms: 0,
        txn_checks: 0,
    };
    let sdk = checker::check("multihost", &history);
    let (sdk_within, sdk_cross) = split_dups(history.reads.iter().filter_map(|r| {
        let key = (r.producer?, r.seq?);
        Some((key, (r.queue / 1000, r.queue % 1000, r.offset)))
    }));
    let (off_within, off_cross) = split_dups(
        lock(&shared.official_reads)
            .iter()
            .filter(|d| d.body_ok)
            .map(|d| (d.msg_id.clone(), d.place))
            .collect::<Vec<_>>()
            .into_iter(),
    );
    // Judge the official load.
    let official = official.map(|(ids, failed)| {
        let reads = lock(&shared.official_reads);
        let mut r = OfficialReport {
            acked: ids.len() as u64,
            failed,
            ..OfficialReport::default()
        };
        let mut places: HashMap<&str, BTreeSet<(i32, i32, i64)>> = HashMap::new();
        for d in reads.iter() {
            if !d.body_ok {
                r.unexpected += 1;
                if r.examples.len() < 5 {
                    r.examples.push(format!(
                        "official unexpected: {} is not the driver's",
                        d.msg_id
                    ));
                }
                continue;
            }
            places.entry(d.msg_id.as_str()).or_default().insert(d.place);
        }
        r.read = places.len() as u64;
        for (id, at) in &places {
            if at.len() > 1 {
                r.dup += at.len() as u64 - 1;
                if r.examples.len() < 5 {
                    r.examples
                        .push(format!("official duplicated: {id} at {at:?}"));
                }
            }
            if !ids.contains(*id) {
                r.recovered += 1;
            }
        }
        for id in &ids {
            if !places.contains_key(id.as_str()) {
                r.lost += 1;
                if r.examples.len() < 5 {
                    r.examples
                        .push(format!("official lost: {id} acked, never read"));
                }
            }
        }
        r
    });
    Ok(ExternalReport {
        sdk,
        official,
        failovers: shared.failovers.load(Ordering::Relaxed),
        groups: lock(&shared.group_names).len(),
        drained,
        dup_cross_group: sdk_cross + off_cross,
        dup_within_group: sdk_within + off_within,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_split_by_group() {
        let places = [
            ("a", (0, 1, 5)),
            ("a", (0, 1, 5)), // a redelivery: the same place
            ("a", (1, 3, 7)), // another group
            ("b", (2, 0, 1)),
            ("b", (2, 4, 9)), // the same group, another place
            ("c", (0, 0, 0)),
        ];
        assert_eq!(split_dups(places.into_iter()), (1, 1));
    }

    #[test]
    fn driver_bodies() {
        assert!(is_driver_body("p0-s12"));
        assert!(is_driver_body("p3-s0"));
        assert!(!is_driver_body("p-s1"));
        assert!(!is_driver_body("x0-s1"));
        assert!(!is_driver_body("p0-s1x"));
    }

    #[test]
    fn official_output_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("o.jsonl");
        std::fs::write(
            &f,
            concat!(
                "{\"producer\":0,\"event\":\"started\",\"at_ms\":1}\n",
                "{\"producer\":0,\"seq\":0,\"ok\":true,\"message_id\":\"A\"}\n",
                "{\"producer\":0,\"seq\":1,\"ok\":false,\"error\":\"x\"}\n",
                "not json\n",
            ),
        )
        .unwrap();
        let (ids, failed) = read_official_acked(&f).unwrap();
        assert_eq!(ids, HashSet::from(["A".to_string()]));
        assert_eq!(failed, 1);
    }
}
