//! Consumers on the real broker: the real `Broker` (send, receive, ack, change-invisible,
//! consumer state on `%SYS%CONSUMER`, dead letters, replication, promotion) on two turmoil
//! hosts (see [`crate::host`]), with failover decided by the controller's real rules (the
//! stand-in of [`crate::standin`] on a third host, reached by each broker's real
//! controller-follow loop), under seeded faults, a failover and a final power cut.
//!
//! Hosts `m` and `s` follow the controller (`min_insync_replicas` 2); it elects one master.
//! The clients run on whichever host last became master (a new set starts there, the
//! previous set stops), calling the broker's request handlers
//! directly: two producers (`Broker::send`, message ids, an id retried with the same id until
//! answered OK; a send counts as acked on OK) and three consumers of group `g` on topic `t`
//! (`Broker::receive`; each message is then acked, left to expire, nacked with
//! `change_invisible`, or extended and then acked with the new handle, after the old one was
//! tried and refused). Every eighth id is a "poison" message nobody acks: it must end in
//! `%DLQ%g` after `max_attempts` deliveries. Client state (held receipt handles, ids whose
//! send was not answered) lives outside the hosts, so it outlives a crash, and a client on
//! the new master acks handles the old one issued.
//!
//! Faults from the seed: the slave crashed and restarted, the link cut for a while, the
//! master crashed and restarted (it loses its unsynced tail; the controller may hand the
//! group to the slave meanwhile). Then the failover: on half the seeds the link is cut first,
//! the master loses power, the controller elects the slave if it is in sync (else the group
//! waits for the old master), the clients continue on the new master, and the old master
//! comes back 2.5 to 3.5 s later as its slave (cutting what the new master lacks). Each
//! host's wall clock (invisibility deadlines, receipt times) is up to 2 s off
//! ([`crate::wall`]). Producers stop, the
//! consumers drain (ack everything but poison) until every acked send was delivered and every
//! acked poison message is in the dead-letter queue, then both machines lose power and
//! reopen read-only.
//!
//! Checks (what the broker guarantees, from `consume/` and ARCHITECTURE's Consumption):
//! * acked-then-lost consumption: every delivered message is in the surviving log (the final
//!   master's) at its queue and queue offset with the same body: a receive reads only below
//!   the readable offset (durable here and acked by the in-sync slaves), so a failover never
//!   loses what a consumer saw;
//! * no redelivery after an ack answered OK with the current handle, while the log that holds
//!   the ack stays the group's log (the master's crash-restarts included: the ack's state
//!   record is durable before the answer). An answer belongs to the reign of the broker that
//!   gave it: the old master may still answer a client of its own after another was
//!   elected. Across a failover this is NOT promised: consumer state records are acked
//!   after the master's own fsync, not the slaves' (at-least-once), so an ack the new
//!   master never received is delivered again; such redeliveries are counted
//!   ([`ConsumeOutcome::redelivered_across_failover`]), not failed;
//! * at-least-once: every acked send was delivered to the group (after the faults heal);
//! * delivery attempts: at most `max_attempts`, and rising from one delivery of a message to
//!   the next while the log stays the same; acked poison messages are in `%DLQ%g`;
//! * a handle made stale by `change_invisible` is refused by `ack`;
//! * after the power cut, every ack answered OK since the failover is in the new master's
//!   replayed consumer state (the message is finished, not in flight);
//! * both logs agree wherever both hold a record of `t`, and no acked id is stored twice.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sofamq_broker::mutant::{self, Mutant};
use sofamq_broker::repl::Role;
use sofamq_broker::topics::TopicType;
use sofamq_broker::{Broker, BrokerConfig};
use sofamq_controller::{BrokerAddrs, ControllerClient};
use sofamq_proto::v2::{
    AckMessageEntry, AckMessageRequest, ChangeInvisibleDurationRequest, Code, Message,
    MessageQueue, MessageType, ReceiveMessageRequest, Resource, SendMessageRequest,
    SystemProperties,
};
use tokio_util::sync::CancellationToken;

use crate::host::{self, BrokerHost, REPL_PORT, TurmoilConnector};
use crate::journal::Journal;
use crate::links::Links;
use crate::standin::{self, CtlShared, CtlTiming};
use crate::wall::{self, WallSkew};

const M: &str = "m";
const S: &str = "s";
/// The controller host (the stand-in running the controller's real rules).
const CTL: &str = "ctl";
const CTL_PORT: u16 = 9876;
const TOPIC: &str = "t";
const GROUP: &str = "g";
const DLQ: &str = "%DLQ%g";
const QUEUES: u32 = 4;
const MAX_ATTEMPTS: u32 = 3;
/// Faults before the failover happen in this window (ms).
const FAULTS: (u64, u64) = (300, 2_500);
/// The master loses power in this window (ms).
const FAILOVER: (u64, u64) = (2_800, 3_500);
/// Producers stop (ms); the consumers then drain.
const STOP_PRODUCING: u64 = 7_500;
/// The drain ends by this time at the latest (ms); the power cut follows.
const DRAIN_CAP: u64 = 15_000;

/// What a seed changes besides timing.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsumeKnobs {
    /// The broken variant [`Mutant::DeliverAboveReplicated`].
    pub deliver_above_replicated: bool,
}

/// What a consumer does with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Ack,
    /// Change the invisibility to this many ms; the message comes back.
    Nack(u64),
    /// Change the invisibility, try the old handle (must be refused), ack the new one.
    ExtendThenAck,
}

#[derive(Debug, Clone)]
struct Held {
    id: u64,
    queue: u32,
    qoff: u64,
    handle: String,
    action: Action,
    due: u64,
}

#[derive(Debug, Clone)]
struct Delivery {
    id: u64,
    queue: u32,
    qoff: u64,
    attempt: u32,
    at: u64,
    tenure: u32,
}

/// An ack answered OK.
#[derive(Debug, Clone)]
struct Acked {
    id: u64,
    queue: u32,
    qoff: u64,
    at: u64,
    tenure: u32,
}

#[derive(Default)]
struct Recovered {
    /// (queue, queue offset) -> id, topic `t`.
    t: BTreeMap<(u32, u64), u64>,
    /// Ids in the dead-letter queue.
    dlq: Vec<u64>,
    /// The consumer state of (g, t): per queue (scan, in-flight offsets).
    state: BTreeMap<u32, (u64, BTreeSet<u64>)>,
}

#[derive(Default)]
struct Ledger {
    j: Rc<Journal>,
    seed: u64,
    /// The host that last became master (clients run there).
    master: Cell<&'static str>,
    /// Bumped when another host becomes master: the group's log changed hands.
    tenure: Cell<u32>,
    /// The tenure of each broker's latest reign as master (by broker id: m 0, s 1). A
    /// delivery or ack belongs to the reign of the broker that answered it: a client of the
    /// old master may still get an answer from it after the tenure moved on.
    reign: RefCell<[u32; 2]>,
    /// Starts of client sets (keeps their RNG streams distinct); only the latest set runs.
    client_starts: Cell<u64>,
    next_id: Cell<u64>,
    /// Ids sent without an OK yet (retried with the same id).
    unanswered: RefCell<BTreeSet<u64>>,
    /// Acked id -> queue offset from the receipt.
    acked: RefCell<BTreeMap<u64, u64>>,
    deliveries: RefCell<Vec<Delivery>>,
    /// Every ack answered OK.
    acks: RefCell<Vec<Acked>>,
    held: RefCell<VecDeque<Held>>,
    stop_producing: Cell<bool>,
    drained: Cell<Option<u64>>,
    cut: Cell<bool>,
    recovered: RefCell<HashMap<&'static str, Recovered>>,
    receives: Cell<u64>,
    receive_errors: Cell<u64>,
    stale_refused: Cell<u64>,
    nacks: Cell<u64>,
    /// Deliveries of records above the readable offset when they were delivered.
    above_readable: Cell<u64>,
}

impl Ledger {
    fn now(&self) -> u64 {
        turmoil::sim_elapsed().map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The result of one seed.
#[derive(Debug)]
pub struct ConsumeOutcome {
    /// The seed.
    pub seed: u64,
    /// Check failures (empty: every check passed).
    pub violations: Vec<String>,
    /// Sends answered OK.
    pub acked_sends: usize,
    /// Deliveries to the group.
    pub deliveries: usize,
    /// Acks answered OK.
    pub acks: usize,
    /// Messages delivered again after an ack answered OK before the failover (allowed).
    pub redelivered_across_failover: usize,
    /// Stale handles refused after `change_invisible` (each one a check that passed).
    pub stale_refused: u64,
    /// Messages found in the dead-letter queue.
    pub dead_letters: usize,
    /// Receive calls, and those that failed (not master, persist timeout...).
    pub receives: (u64, u64),
    /// Nacks (`change_invisible` to a short duration) answered OK.
    pub nacks: u64,
    /// Deliveries of a record above the queue's readable end when the consumer got it: a
    /// direct probe of the replicated-offset cap, kept out of `violations` so the broken
    /// variant is judged by the end-to-end checks alone. Zero for the correct broker.
    pub above_readable: u64,
    /// Time-stamped events.
    pub trace: Vec<String>,
}

fn res(name: &str) -> Option<Resource> {
    Some(Resource {
        resource_namespace: String::new(),
        name: name.into(),
    })
}

fn msg_id(id: u64) -> String {
    format!("ID{id:016X}")
}

fn id_of(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body)
        .ok()?
        .strip_prefix("id=")?
        .parse()
        .ok()
}

fn poison(id: u64) -> bool {
    id.is_multiple_of(8)
}

fn dur(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn base_config() -> BrokerConfig {
    let mut c = BrokerConfig {
        broker_name: "broker-a".into(),
        segment_bytes: 64 * 1024,
        ..BrokerConfig::default()
    };
    c.replication.min_insync_replicas = 2;
    c.replication.ack_timeout_ms = 1_000;
    c.replication.handshake_timeout_ms = 1_000;
    c.replication.reconnect_backoff_ms = 50;
    c.consume.max_attempts = MAX_ATTEMPTS;
    c.limits.persist_timeout_ms = 1_000;
    c
}

/// Whether the client set started as number `set` is still the current one (a newer set
/// starts when a broker becomes master; the older one stops).
fn current(l: &Ledger, set: u64) -> bool {
    l.client_starts.get() == set + 1
}

async fn produce(b: Broker, l: Rc<Ledger>, mut rng: StdRng, set: u64) {
    while !l.stop_producing.get() && current(&l, set) {
        let retry: Vec<u64> = if rng.random_bool(0.5) {
            l.unanswered.borrow().iter().take(3).copied().collect()
        } else {
            Vec::new()
        };
        let ids = if retry.is_empty() {
            (0..rng.random_range(1..=3))
                .map(|_| {
                    let id = l.next_id.get();
                    l.next_id.set(id + 1);
                    l.unanswered.borrow_mut().insert(id);
                    id
                })
                .collect()
        } else {
            retry
        };
        let req = SendMessageRequest {
            messages: ids
                .iter()
                .map(|&id| Message {
                    topic: res(TOPIC),
                    system_properties: Some(SystemProperties {
                        message_id: msg_id(id),
                        message_type: MessageType::Normal as i32,
                        ..Default::default()
                    }),
                    body: format!("id={id}").into_bytes().into(),
                    ..Default::default()
                })
                .collect(),
        };
        let r = b.send(req).await;
        for (id, e) in ids.iter().zip(&r.entries) {
            let code = e.status.as_ref().map_or(-1, |s| s.code);
            if code == Code::Ok as i32 {
                l.unanswered.borrow_mut().remove(id);
                l.acked
                    .borrow_mut()
                    .entry(*id)
                    .or_insert(u64::try_from(e.offset).unwrap_or(u64::MAX));
            } else if let Some(s) = &e.status {
                l.j.error(&format!("send {id}: {} {}", s.code, s.message));
            }
        }
        if r.entries.len() != ids.len()
            && let Some(s) = &r.status
        {
            l.j.error(&format!("send: {} {}", s.code, s.message));
        }
        let pause = rng.random_range(0..10u64).saturating_sub(3);
        tokio::time::sleep(Duration::from_millis(pause.max(1))).await;
    }
}

/// The tenure of `b`'s latest reign as master: what an answer from `b` belongs to.
fn reign_of(l: &Ledger, b: &Broker) -> u32 {
    let i = usize::from(b.repl().identity() != 0);
    l.reign.borrow()[i]
}

async fn ack(b: &Broker, l: &Ledger, h: &Held, handle: &str) -> bool {
    let id = h.id;
    let r = b
        .ack(AckMessageRequest {
            group: res(GROUP),
            topic: res(TOPIC),
            entries: vec![AckMessageEntry {
                message_id: msg_id(id),
                receipt_handle: handle.to_string(),
                lite_topic: None,
            }],
        })
        .await;
    let ok = r
        .entries
        .first()
        .and_then(|e| e.status.as_ref())
        .is_some_and(|s| s.code == Code::Ok as i32);
    if ok {
        l.acks.borrow_mut().push(Acked {
            id,
            queue: h.queue,
            qoff: h.qoff,
            at: l.now(),
            tenure: reign_of(l, b),
        });
    } else if let Some(s) = r
        .entries
        .first()
        .and_then(|e| e.status.as_ref())
        .or(r.status.as_ref())
    {
        l.j.error(&format!("ack {id}: {} {}", s.code, s.message));
    }
    ok
}

async fn change(b: &Broker, id: u64, handle: &str, ms: u64) -> Result<String, String> {
    b.change_invisible(&ChangeInvisibleDurationRequest {
        group: res(GROUP),
        topic: res(TOPIC),
        receipt_handle: handle.to_string(),
        invisible_duration: Some(dur(ms)),
        message_id: msg_id(id),
        lite_topic: None,
        suspend: None,
    })
    .await
    .map_err(|e| e.to_string())
}

async fn act(b: &Broker, l: &Ledger, h: Held) {
    match h.action {
        Action::Ack => {
            ack(b, l, &h, &h.handle).await;
        }
        Action::Nack(ms) => match change(b, h.id, &h.handle, ms).await {
            Ok(_) => l.nacks.set(l.nacks.get() + 1),
            Err(e) => l.j.error(&format!("nack {}: {e}", h.id)),
        },
        Action::ExtendThenAck => match change(b, h.id, &h.handle, 2_000).await {
            Ok(new) => {
                if ack(b, l, &h, &h.handle).await {
                    l.j.violate(format!(
                        "id {}: ack with the handle change_invisible replaced answered OK",
                        h.id
                    ));
                } else {
                    l.stale_refused.set(l.stale_refused.get() + 1);
                }
                ack(b, l, &h, &new).await;
            }
            Err(e) => l.j.error(&format!("extend {}: {e}", h.id)),
        },
    }
}

async fn consume(b: Broker, l: Rc<Ledger>, mut rng: StdRng, set: u64) {
    let token = CancellationToken::new();
    while current(&l, set) {
        let now = l.now();
        // Handles due for their action, this consumer's or any consumer's before a crash.
        let due: Vec<Held> = {
            let mut held = l.held.borrow_mut();
            let mut due = Vec::new();
            let mut keep = VecDeque::new();
            while let Some(h) = held.pop_front() {
                if h.due <= now && due.len() < 8 {
                    due.push(h);
                } else {
                    keep.push_back(h);
                }
            }
            *held = keep;
            due
        };
        for h in due {
            act(&b, &l, h).await;
        }
        let draining = l.stop_producing.get();
        let invisible = rng.random_range(100..400u64);
        let req = ReceiveMessageRequest {
            group: res(GROUP),
            message_queue: Some(MessageQueue {
                topic: res(TOPIC),
                id: -1,
                ..Default::default()
            }),
            batch_size: rng.random_range(1..=8),
            invisible_duration: Some(dur(invisible)),
            ..Default::default()
        };
        l.receives.set(l.receives.get() + 1);
        match b.receive(&req, &token).await {
            Ok(msgs) => {
                let now = l.now();
                for m in msgs {
                    let Some(sp) = m.system_properties.as_ref() else {
                        l.j.violate("a delivery without system properties".into());
                        continue;
                    };
                    let Some(id) = id_of(&m.body) else {
                        l.j.violate(format!("a delivery with an unknown body {:?}", m.body));
                        continue;
                    };
                    if sp.message_id != msg_id(id) {
                        l.j.violate(format!("id {id} delivered as message id {}", sp.message_id));
                    }
                    let d = Delivery {
                        id,
                        queue: u32::try_from(sp.queue_id).unwrap_or(u32::MAX),
                        qoff: sp
                            .queue_offset
                            .and_then(|o| u64::try_from(o).ok())
                            .unwrap_or(u64::MAX),
                        attempt: sp
                            .delivery_attempt
                            .and_then(|a| u32::try_from(a).ok())
                            .unwrap_or(0),
                        at: now,
                        tenure: reign_of(&l, &b),
                    };
                    if d.qoff >= b.store().queue_offsets(TOPIC, d.queue).1 {
                        // Only the broken variant gets here (the trace shows it was exercised).
                        l.above_readable.set(l.above_readable.get() + 1);
                        l.j.error(&format!(
                            "id {id} delivered above the readable offset (queue {} offset {})",
                            d.queue, d.qoff
                        ));
                    }
                    l.deliveries.borrow_mut().push(d.clone());
                    let Some(handle) = sp.receipt_handle.clone() else {
                        l.j.violate(format!("id {id} delivered without a receipt handle"));
                        continue;
                    };
                    let action = if poison(id) {
                        Some(Action::Nack(rng.random_range(0..50)))
                    } else if draining {
                        Some(Action::Ack)
                    } else {
                        match rng.random_range(0..20) {
                            0..12 => Some(Action::Ack),
                            12..15 => None, // expires
                            15..18 => Some(Action::Nack(rng.random_range(0..100))),
                            _ => Some(Action::ExtendThenAck),
                        }
                    };
                    if let Some(action) = action {
                        l.held.borrow_mut().push_back(Held {
                            id,
                            queue: d.queue,
                            qoff: d.qoff,
                            handle,
                            action,
                            due: now + rng.random_range(0..60),
                        });
                    }
                }
            }
            Err(e) => {
                l.receive_errors.set(l.receive_errors.get() + 1);
                l.j.error(&format!("receive: {e}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(2..15))).await;
    }
}

/// Sets `drained` once every acked send was delivered and every acked poison id is in the
/// dead-letter queue of this (master) broker.
async fn watch_drain(b: Broker, l: Rc<Ledger>, set: u64) {
    while current(&l, set) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !l.stop_producing.get() || l.drained.get().is_some() {
            continue;
        }
        let delivered: BTreeSet<u64> = l.deliveries.borrow().iter().map(|d| d.id).collect();
        let acked = l.acked.borrow();
        if !acked.keys().all(|id| delivered.contains(id)) {
            continue;
        }
        let dead: BTreeSet<u64> = match b.store().read_queue(DLQ, 0, 0, 100_000, 64 << 20) {
            Ok(v) => v.iter().filter_map(|r| id_of(&r.body)).collect(),
            Err(_) => continue,
        };
        if acked
            .keys()
            .filter(|id| poison(**id))
            .all(|id| dead.contains(id))
        {
            l.j.log("drained: every acked send delivered, every acked poison id dead-lettered");
            l.drained.set(Some(l.now()));
        }
    }
}

fn start_clients(b: &Broker, l: &Rc<Ledger>) {
    let n = l.client_starts.get();
    l.client_starts.set(n + 1);
    let mut rng = StdRng::seed_from_u64(l.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n);
    for _ in 0..2 {
        let r = StdRng::seed_from_u64(rng.random());
        tokio::task::spawn_local(produce(b.clone(), l.clone(), r, n));
    }
    for _ in 0..3 {
        let r = StdRng::seed_from_u64(rng.random());
        tokio::task::spawn_local(consume(b.clone(), l.clone(), r, n));
    }
    tokio::task::spawn_local(watch_drain(b.clone(), l.clone(), n));
}

async fn serve_as_master(b: &Broker, l: &Rc<Ledger>, who: &str) {
    if let Err(e) = b.create_topic(TOPIC, QUEUES, TopicType::Normal).await {
        l.j.error(&format!("{who}: create topic: {e}"));
    }
    start_clients(b, l);
}

fn record(b: &Broker, l: &Ledger, who: &'static str) {
    let mut rec = Recovered::default();
    for r in b.store().scan(0) {
        match r {
            Ok(r) if r.topic == TOPIC => match id_of(&r.body) {
                Some(id) => {
                    rec.t.insert((r.queue_id, r.queue_offset), id);
                }
                None => l.j.violate(format!(
                    "{who}: record at {} has an unknown body",
                    r.log_offset
                )),
            },
            Ok(r) if r.topic == DLQ => rec.dlq.extend(id_of(&r.body)),
            Ok(_) => {}
            Err(e) => {
                l.j.violate(format!("{who}: scan of the recovered log failed: {e}"));
                break;
            }
        }
    }
    if let Some(why) = b.store().fenced() {
        l.j.violate(format!("{who}: log opened fenced: {why}"));
    }
    for (g, t, st) in b.consumers().snapshot() {
        if g == GROUP && t == TOPIC {
            for (q, qs) in st.queues {
                rec.state
                    .insert(q, (qs.scan, qs.inflight.keys().copied().collect()));
            }
        }
    }
    l.j.log(&format!(
        "{who} reopened after the power cut: log_end {} records of t {}",
        b.store().log_end_offset(),
        rec.t.len()
    ));
    l.recovered.borrow_mut().insert(who, rec);
}

/// The configuration of a broker that follows the controller (no static role).
fn controlled(bh: &BrokerHost, who: &str) -> BrokerConfig {
    let mut c = bh.config(Role::Slave, None);
    c.broker_id = u64::from(who != M);
    c.replication.role = None;
    c.replication.advertise = Some(format!("{who}:{REPL_PORT}"));
    c.replication.controller = vec![format!("{CTL}:{CTL_PORT}")];
    c.replication.controller_heartbeat_ms = 300;
    c.replication.controller_timeout_ms = 500;
    c.replication.max_lag_ms = 1_000;
    c
}

async fn broker_host(l: Rc<Ledger>, who: &'static str, bh: BrokerHost) -> turmoil::Result {
    let cut = l.cut.get();
    // After the power cut a broker is only read: a slave with no master to follow.
    let config = if cut {
        bh.config(Role::Slave, None)
    } else {
        controlled(&bh, who)
    };
    let b = loop {
        match host::open(config.clone(), bh.sync_latency) {
            Ok(b) => break b,
            Err(e) => {
                l.j.error(&format!("{who}: open failed: {e}"));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    if cut {
        record(&b, &l, who);
        return idle().await;
    }
    l.j.log(&format!(
        "{who} opened: log_end {} epoch {}",
        b.store().log_end_offset(),
        b.store().current_epoch()
    ));
    let token = CancellationToken::new();
    host::start_replication(&b, &token).await?;
    let client = ControllerClient::with_connector(
        vec![format!("{CTL}:{CTL_PORT}")],
        Duration::from_millis(500),
        Arc::new(TurmoilConnector),
    );
    let addrs = BrokerAddrs {
        grpc: format!("{who}:8081"),
        repl: format!("{who}:{REPL_PORT}"),
    };
    tokio::spawn(sofamq_broker::control::run_with(
        b.clone(),
        addrs,
        client,
        token.clone(),
    ));
    // The controller decides the roles; the clients follow whichever broker became master
    // (a new set of clients starts there, the previous set stops).
    let mut serving = false;
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let master = b.repl().role() == Role::Master;
        if master && !serving {
            if l.master.get() != who {
                l.tenure.set(l.tenure.get() + 1);
            }
            l.reign.borrow_mut()[usize::from(who != M)] = l.tenure.get();
            l.master.set(who);
            l.j.log(&format!(
                "{who} is master: epoch {}, log_end {}",
                b.store().current_epoch(),
                b.store().log_end_offset()
            ));
            serve_as_master(&b, &l, who).await;
        }
        serving = master;
    }
}

async fn idle() -> turmoil::Result {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    CrashSlave,
    CrashMaster,
    Cut,
    Heal,
    PowerLossMaster,
    RestartOld,
}

fn check(l: &Ledger) -> usize {
    let rec = l.recovered.borrow();
    let fin = l.master.get();
    let other = if fin == M { S } else { M };
    let (Some(fm), Some(fs)) = (rec.get(fin), rec.get(other)) else {
        l.j.violate("a host never reopened after the power cut".into());
        return 0;
    };
    let deliveries = l.deliveries.borrow();
    // Acked-then-lost consumption.
    let mut lost = 0;
    for d in deliveries.iter() {
        if fm.t.get(&(d.queue, d.qoff)) != Some(&d.id) {
            lost += 1;
            if lost <= 5 {
                l.j.violate(format!(
                    "id {} was delivered (queue {} offset {}, attempt {}, at {} ms) but the surviving log has {:?} there",
                    d.id,
                    d.queue,
                    d.qoff,
                    d.attempt,
                    d.at,
                    fm.t.get(&(d.queue, d.qoff))
                ));
            }
        }
    }
    if lost > 5 {
        l.j.violate(format!(
            "{lost} deliveries in all are not in the surviving log"
        ));
    }
    // The two logs agree.
    for (k, id) in &fs.t {
        if let Some(o) = fm.t.get(k)
            && o != id
        {
            l.j.violate(format!(
                "the logs disagree at queue {} offset {}: {fin} has id {o}, {other} id {id}",
                k.0, k.1
            ));
        }
    }
    // Acked sends: on the surviving log once, delivered.
    let mut copies: HashMap<u64, usize> = HashMap::new();
    for id in fm.t.values() {
        *copies.entry(*id).or_default() += 1;
    }
    let delivered: BTreeSet<u64> = deliveries.iter().map(|d| d.id).collect();
    for id in l.acked.borrow().keys() {
        match copies.get(id) {
            None => {
                l.j.violate(format!("acked id {id} is not in the surviving log"))
            }
            Some(&n) if n > 1 => l.j.violate(format!("acked id {id} is stored {n} times")),
            _ => {}
        }
        if !delivered.contains(id) {
            l.j.violate(format!("acked id {id} was never delivered to the group"));
        }
        if poison(*id) && !fm.dlq.contains(id) {
            l.j.violate(format!(
                "acked poison id {id} is not in the dead-letter queue"
            ));
        }
    }
    // Attempts, per message (queue, queue offset).
    let mut by_msg: HashMap<(u32, u64), Vec<&Delivery>> = HashMap::new();
    for d in deliveries.iter() {
        if d.attempt == 0 || d.attempt > MAX_ATTEMPTS {
            l.j.violate(format!(
                "id {} delivered with attempt {} (max {MAX_ATTEMPTS})",
                d.id, d.attempt
            ));
        }
        let v = by_msg.entry((d.queue, d.qoff)).or_default();
        if let Some(p) = v.last()
            && p.tenure == d.tenure
            && d.attempt <= p.attempt
        {
            l.j.violate(format!(
                "id {} delivered with attempt {} after attempt {} (at {} ms)",
                d.id, d.attempt, p.attempt, d.at
            ));
        }
        v.push(d);
    }
    // No redelivery after an ack on the same log; count those across the failover.
    let mut across = 0;
    for a in l.acks.borrow().iter() {
        let msg = (a.queue, a.qoff);
        if let Some(d) = by_msg.get(&msg).into_iter().flatten().find(|d| d.at > a.at) {
            if d.tenure == a.tenure {
                l.j.violate(format!(
                    "id {} acked OK at {} ms was delivered again at {} ms (attempt {})",
                    a.id, a.at, d.at, d.attempt
                ));
            } else {
                across += 1;
            }
        }
        // Acks on the final log are in its replayed state.
        if a.tenure == l.tenure.get() {
            let finished = fm
                .state
                .get(&a.queue)
                .is_some_and(|(scan, inflight)| a.qoff < *scan && !inflight.contains(&a.qoff));
            if !finished {
                l.j.violate(format!(
                    "id {} acked OK at {} ms is not finished in the consumer state replayed after the power cut",
                    a.id, a.at
                ));
            }
        }
    }
    across
}

/// Runs one seed of the consumer simulation.
pub fn run_consume_seed(seed: u64, knobs: ConsumeKnobs) -> ConsumeOutcome {
    // Invisibility and receipt times follow simulated time; the receipt-handle key, hash
    // seeds and incarnation follow the seed.
    let _seeded = crate::journal::seed_guards(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut sim, disk) =
        crate::journal::two_host_world(seed, &mut rng, Duration::from_millis(DRAIN_CAP + 5_000));
    let l = Rc::new(Ledger {
        seed,
        ..Ledger::default()
    });
    l.master.set(M);
    {
        let ctl = Rc::new(CtlShared {
            j: l.j.clone(),
            view: RefCell::new(None),
            elect_out_of_sync: false,
            timing: CtlTiming {
                lease: 1_000,
                master_timeout: 2_000,
                refused_timeout: 1_200,
            },
            rate: 1.0,
            broker_rates: vec![1.0, 1.0],
        });
        sim.host(CTL, move || standin::run(ctl.clone(), CTL_PORT));
    }
    // Half the seeds have slow disks (1 to 20 ms per fdatasync): what a broker wrote is
    // streamed, and may be acked by its slave, before it is durable where it was written.
    // Drawn apart from the fault plan, which stays what the seed drew without them.
    let mut disk_rng = StdRng::seed_from_u64(seed ^ 0xd15c);
    let mut slow = || {
        if disk_rng.random_bool(0.5) {
            disk_rng.random_range(1..=20)
        } else {
            0
        }
    };
    let sync_ms = [slow(), slow()];
    // Wall clocks (invisibility deadlines, receipt times): each host's up to 2 s off. No
    // steps here: a deadline is a wall-clock time set by the master that received the
    // message, so after a failover to a host whose clock is minutes behind it, in-flight
    // messages stay invisible that much longer, by design (as RocketMQ's do), beyond
    // what the drain waits; the group simulation steps clocks. Drawn apart from the plan.
    let mut wrng = StdRng::seed_from_u64(seed ^ 0x3a11_c10c);
    let walls: Vec<WallSkew> = (0..2)
        .map(|_| WallSkew {
            offset_ms: wrng.random_range(-2_000..=2_000),
            rate: 1.0,
            step: None,
        })
        .collect();
    // Hosts are told apart by when they were registered (crate::wall): m at 1 ms, s at 2.
    let _walls = wall::skew_walls(walls.iter().zip(1..).map(|(w, at)| (at, *w)).collect());
    l.j.log(&format!(
        "seed {seed}: {disk} fdatasync ms {sync_ms:?} wall clock offsets (ms) {:?}, \
         deliver-above-replicated {}",
        walls.iter().map(|w| w.offset_ms).collect::<Vec<_>>(),
        knobs.deliver_above_replicated
    ));
    for (i, who) in [M, S].into_iter().enumerate() {
        let l = l.clone();
        if let Err(e) = sim.step() {
            l.j.error(&format!("step: {e}"));
        }
        let bh = BrokerHost {
            data_dir: PathBuf::from("/data"),
            base: base_config(),
            sync_latency: Duration::from_millis(sync_ms[i]),
        };
        sim.host(who, move || broker_host(l.clone(), who, bh.clone()));
    }
    let mut plan: Vec<(u64, Ev)> = Vec::new();
    for _ in 0..rng.random_range(1..4) {
        let at = rng.random_range(FAULTS.0..FAULTS.1);
        match rng.random_range(0..3) {
            0 => plan.push((at, Ev::CrashSlave)),
            1 => plan.push((at, Ev::CrashMaster)),
            _ => {
                plan.push((at, Ev::Cut));
                plan.push((at + rng.random_range(100..1_500), Ev::Heal));
            }
        }
    }
    let f = rng.random_range(FAILOVER.0..FAILOVER.1);
    if rng.random_bool(0.5) {
        plan.push((f - rng.random_range(50..400), Ev::Cut));
    }
    plan.push((f, Ev::PowerLossMaster));
    let p = f + rng.random_range(100..500);
    plan.push((p, Ev::Heal));
    // The controller replaces the master after its timeout (or sooner, once the slave
    // finds the master's replication port refusing): the old master returns later.
    plan.push((f + rng.random_range(2_500..3_500), Ev::RestartOld));
    plan.sort_unstable();
    plan.reverse();
    mutant::set(if knobs.deliver_above_replicated {
        &[Mutant::DeliverAboveReplicated]
    } else {
        &[]
    });
    let mut links = Links::new();
    let mut cut_at = None;
    let mut powered_off = None;
    loop {
        let t = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
        l.j.set_now(t);
        if cut_at.is_some_and(|c| t >= c + 500) {
            break;
        }
        while plan.last().is_some_and(|&(at, _)| at <= t) {
            let Some((_, ev)) = plan.pop() else { break };
            let master = l.master.get();
            let slave = if master == M { S } else { M };
            match ev {
                Ev::CrashSlave => {
                    l.j.log(&format!("CRASH and restart {slave} (slave)"));
                    links.crash(&mut sim, slave);
                    sim.bounce(slave);
                }
                Ev::CrashMaster => {
                    l.j.log(&format!("CRASH and restart {master} (master)"));
                    links.crash(&mut sim, master);
                    sim.bounce(master);
                }
                Ev::Cut => {
                    l.j.log("PARTITION m | s");
                    links.partition(&sim, M, S);
                }
                Ev::Heal => {
                    l.j.log("HEAL m | s");
                    links.repair(&sim, M, S);
                }
                Ev::PowerLossMaster => {
                    l.j.log(&format!("POWER LOSS of the master {master}"));
                    links.crash(&mut sim, master);
                    powered_off = Some(master);
                }
                Ev::RestartOld => {
                    if let Some(h) = powered_off.take() {
                        l.j.log(&format!("RESTART {h} (the old master)"));
                        sim.bounce(h);
                    }
                }
            }
        }
        if t >= STOP_PRODUCING && !l.stop_producing.get() {
            l.j.log("producers stop; consumers drain");
            l.stop_producing.set(true);
        }
        if cut_at.is_none()
            && plan.is_empty()
            && (t >= DRAIN_CAP || l.drained.get().is_some_and(|d| t >= d + 50))
        {
            l.j.log("POWER CUT of both");
            cut_at = Some(t);
            l.cut.set(true);
            links.repair(&sim, M, S);
            for h in [M, S] {
                links.crash(&mut sim, h);
                sim.bounce(h);
            }
        }
        if let Err(e) = sim.step() {
            l.j.violate(format!("simulation error: {e}"));
            break;
        }
    }
    mutant::set(&[]);
    drop(sim);
    let across = check(&l);
    let (violations, trace) = l.j.take();
    let dead = l
        .recovered
        .borrow()
        .get(l.master.get())
        .map_or(0, |r| r.dlq.len());
    ConsumeOutcome {
        seed,
        violations,
        acked_sends: l.acked.borrow().len(),
        deliveries: l.deliveries.borrow().len(),
        acks: l.acks.borrow().len(),
        redelivered_across_failover: across,
        stale_refused: l.stale_refused.get(),
        dead_letters: dead,
        receives: (l.receives.get(), l.receive_errors.get()),
        nacks: l.nacks.get(),
        above_readable: l.above_readable.get(),
        trace,
    }
}
