//! The real broker group with failover: two or three real brokers (`sofamq_broker::Broker`,
//! each on its own host's simulated disk with a caller-driven store), their real replication
//! (master and slave streams over turmoil TCP), each broker's real controller-follow loop
//! (`sofamq_broker::control::run_with`: heartbeats, lease, promote/follow/step down, in-sync
//! reports) talking the controller's real wire protocol to a controller host
//! ([`crate::standin`]: the real election rule and state machine, one node), and a producer
//! on its own host sending through the real `Broker::send` path.
//!
//! The producer speaks a small length-prefixed shim instead of gRPC: each frame is a
//! prost-encoded `SendMessageRequest`; the broker host decodes it, calls `Broker::send`, and
//! answers with its store's epoch and the encoded `SendMessageResponse`. Retries resend the
//! same request (same message ids) to the next broker, as the official clients and our SDK do,
//! so the broker's dedup is exercised across retries and failovers; a message counts as acked
//! only on an OK status.
//!
//! Faults from the seed, in the fault window: a broker crashed (its unsynced writes lost or
//! torn) and restarted later, the controller crashed and restarted, power lost on every broker
//! at once, full partitions (master | slave, broker | controller, producer | broker), one-way
//! partitions (broker → controller), a broker's links held (nothing in or out, then
//! everything delivered), a slow disk (each fdatasync of a broker's log 50 to 600 ms: what it
//! wrote is streamed to its slaves long before it is durable on it), and a stall (a process
//! stopped by the OS: links held, the disk stuck, and every send inside the broker held where
//! it is, its controller-follow loop and its replication (pushes to slaves, the count of
//! their acks, a slave's appends) held too, all to go on in no set order up to a second
//! after the stall). A stall starts once the broker holds a send it
//! admitted and has not appended yet (the window a stopped process leaves open), within
//! 1.5 s of its planned time; a crash ends it. Half the seeds also have a disk whose every
//! fdatasync takes 1 to 5 ms. Clocks drift: each host's clock runs within 5% of simulated
//! time, applied where each measures a duration (the stand-in's rules read a drifting clock;
//! a broker's configured periods and timeouts, and the lease it is granted, are scaled by its
//! rate, which for a constant rate is the same thing). Each broker's wall clock
//! ([`crate::wall`]) is up to 2 s off and runs at its rate, and one broker's steps 1 to 30
//! minutes forward or back at a time in the fault window.
//!
//! Holds ([`sofamq_broker::pause`]): besides stalls, a fifth of the sends are held 1 to
//! 100 ms between admission and append, and a fifth between append and the wait for the
//! slaves, as a descheduled thread would be, so other steps of the broker (a step-down, a
//! truncation, a re-election) run in between.
//!
//! Then everything heals, the group settles, the producer stops, every broker is crashed
//! and restarted (only what was durable survives), and the checks run:
//! * log matching, while the seed runs: every record any log holds at an (epoch, offset),
//!   even one cut later, is the same record (one master per epoch);
//! * the group recovered: a send was acked in the last second before the producer stopped,
//!   and every broker was in the in-sync set just before the final crash;
//! * every acked message is in the final master's log exactly once, at one offset, with its
//!   body, and at the same offset in every replica the controller's final view names in sync;
//! * no message is stored twice in any log (dedup across retries and failover);
//! * any two replicas agree wherever both hold a record (each rejoining master cut its
//!   divergent tail);
//! * no two brokers acked in the same epoch;
//! * each log's epoch history strictly increases and every record carries the epoch its
//!   history assigns to its offset.
//!
//! Broken variants (per seed, [`GroupKnobs`]): the controller elects an out-of-sync replica;
//! a rejoining master skips its truncation (`Mutant::SkipRejoinTruncation` in the broker); a
//! master that steps down still appends the sends it admitted before
//! (`Mutant::AppendAfterStepDown`); a promoted master ages its dedup window's ids by its
//! own wall clock (`Mutant::WallClockDedup`). Every seed has one failover of the kind each
//! of the first three breaks: an isolated master that rejoins, a stalled master, or (three
//! brokers) a master crash while one slave lags out of the in-sync set, or a master cut
//! from the controller alone (still streaming to its slaves while one of them is elected);
//! and every seed steps one broker's wall clock, which the fourth needs.
//!
//! A seed replays exactly: time is the simulated clock (tokio's `Instant` in the broker and
//! the stand-in), the wall clocks and the broker's random draws follow the seed
//! (`drive_wall_clock`, `seed_thread_rng`), turmoil orders the hosts, and a crash sends
//! nothing on the network ([`crate::links`]); the group test reruns seeds here and in child
//! processes and compares. `GROUP_SIM_SEED=N` prints a seed's whole trace.
//!
//! Files: this one draws a seed's plan and runs it; [`producer`] is the producer host and
//! the send shim, [`holds`] the pause hook, [`faults`] the faults and their heals,
//! [`checks`] every check.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sofamq_broker::mutant::{self, Mutant};
use sofamq_broker::pause::{self, Point};
use sofamq_broker::repl::{ReplicationConfig, Role};
use sofamq_broker::topics::TopicType;
use sofamq_broker::{Broker, BrokerConfig};
use sofamq_controller::network::{Acceptor, AsyncStream, BoxFuture, Connector};
use sofamq_controller::{BrokerAddrs, ControllerClient, GroupState};
use sofamq_proto::v2::{
    Code, Message, MessageType, Resource, SendMessageRequest, SendMessageResponse, SystemProperties,
};
use sofamq_store::{Driver, EpochEntry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::disk::{DiskFaults, SimDisk};
use crate::journal::Journal;
use crate::links::Links;
use crate::standin::{self, CtlShared, CtlTiming};
use crate::wall::{self, WallSkew};

mod checks;
mod faults;
mod holds;
mod producer;

use checks::*;
use faults::*;
use holds::*;
use producer::*;

const CTL: &str = "ctl";
const PRODUCER: &str = "p";
const CTL_PORT: u16 = 9876;
const SEND_PORT: u16 = 8081;
const REPL_PORT: u16 = 10912;
const GROUP: &str = "g";
/// Concurrent senders on the producer host.
const PRODUCERS: u64 = 3;
const TOPIC: &str = "t";
/// Faults start in [FAULTS_FROM, FAULTS_END) (ms).
const FAULTS_FROM: u64 = 1_500;
/// Everything is healed here (ms).
const FAULTS_END: u64 = 9_000;
/// The producer stops (ms).
const PRODUCER_STOP: u64 = 12_000;
/// Every broker is crashed and restarted to read what was durable (ms).
const FINAL_CRASH: u64 = 14_500;
/// The checks run (ms).
const END: u64 = 15_500;
/// A stalled broker's tasks are held in steps of this long (ms).
const STALL_STEP_MS: u64 = 50;
/// A stall waits at most this long (ms) for its broker to hold an admitted send.
const STALL_WAIT_MS: u64 = 1_500;
/// Once healed, the group acks sends again: the last ack is at most this long before the
/// producer stops (ms).
const RECOVERY_ACK_GAP_MS: u64 = 1_000;

/// Broken variants switched on for a seed.
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupKnobs {
    /// The controller elects the live broker with the shortest log, in sync or not.
    pub elect_out_of_sync: bool,
    /// A master that rejoins as a slave keeps the tail its new master lacks.
    pub skip_rejoin_truncation: bool,
    /// A master that steps down still takes the local appends of sends it admitted as
    /// master (`Mutant::AppendAfterStepDown` in the broker).
    pub append_after_step_down: bool,
    /// A promoted master ages the ids of its dedup window by its own wall clock
    /// (`Mutant::WallClockDedup` in the broker).
    pub wall_clock_dedup: bool,
}

/// The result of one seed.
#[derive(Debug)]
pub struct GroupOutcome {
    /// The seed.
    pub seed: u64,
    /// Brokers in the group.
    pub brokers: u64,
    /// Check failures (empty: every check passed).
    pub violations: Vec<String>,
    /// Messages acked.
    pub acks: usize,
    /// Masters elected (distinct epochs committed by the controller).
    pub epochs: usize,
    /// Milliseconds in which a slave held durably more of the log than its master had
    /// synced (the master's fdatasync still running: a slow disk).
    pub slave_ahead_ms: u64,
    /// Time-stamped events.
    pub trace: Vec<String>,
}

/// Brokers in the group for `seed`: even seeds two, odd seeds three (where the in-sync set
/// can be a strict subset of the slaves and so decides who may win).
pub fn brokers_for(seed: u64) -> u64 {
    if seed.is_multiple_of(2) { 2 } else { 3 }
}

fn host(id: u64) -> String {
    format!("b{id}")
}

struct TurmoilAcceptor(turmoil::net::TcpListener);

impl Acceptor for TurmoilAcceptor {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(Box<dyn AsyncStream>, String)>> {
        Box::pin(async move {
            let (s, peer) = self.0.accept().await?;
            Ok((Box::new(s) as Box<dyn AsyncStream>, peer.to_string()))
        })
    }
}

struct TurmoilConnector;

impl Connector for TurmoilConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Box<dyn AsyncStream>>> {
        Box::pin(async move {
            let s = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(s) as Box<dyn AsyncStream>)
        })
    }
}

/// One record of topic `t` in a recovered log.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    offset: u64,
    epoch: u64,
    id: u64,
    body_ok: bool,
}

/// A broker's log as recovered at its latest start.
#[derive(Debug, Clone, Default)]
struct Recovered {
    recs: Vec<Rec>,
    hist: Vec<EpochEntry>,
}

/// An OK receipt.
#[derive(Debug, Clone, Copy)]
struct Ack {
    broker: u64,
    epoch: u64,
}

struct Ledger {
    j: Rc<Journal>,
    ctl: Rc<CtlShared>,
    brokers: u64,
    sent: RefCell<BTreeSet<u64>>,
    acked: RefCell<BTreeMap<u64, Ack>>,
    /// (epoch, broker) of every ack.
    ack_epochs: RefCell<BTreeMap<u64, BTreeSet<u64>>>,
    recovered: RefCell<BTreeMap<u64, Recovered>>,
    /// Set at the final crash: restarted brokers only record their logs.
    final_phase: Cell<bool>,
    stop_producer: Cell<bool>,
    next_id: Cell<u64>,
    knobs: GroupKnobs,
    /// Each broker's disk (kept across its restarts, so its latency setting is too).
    disks: Vec<SimDisk>,
    /// Each broker's clock rate against simulated time (drift).
    rates: Vec<f64>,
    /// Each running broker's durable offset and when it was last read (simulated ms).
    durable: RefCell<BTreeMap<u64, (u64, u64)>>,
    /// When the producer last got an OK (simulated ms).
    last_ack_ms: Cell<u64>,
    /// The controller's view just before the final crash.
    settled_view: RefCell<Option<GroupState>>,
    /// Brokers stalled, and until when (simulated ms).
    stalled_until: RefCell<BTreeMap<u64, u64>>,
    /// Draws the holds of sends on the send path ([`hold`]).
    holds: RefCell<StdRng>,
    /// (epoch, offset) -> (topic, message id) of the first record seen there, and in which
    /// broker's log ([`match_new_records`]).
    matching: RefCell<HashMap<(u64, u64), (RecordKey, u64)>>,
    /// (broker, until) of each hold of a send before its append.
    held_appends: RefCell<Vec<(u64, u64)>>,
}

fn id_of(msg_id: &str) -> Option<u64> {
    msg_id.strip_prefix("M")?.parse().ok()
}

fn body_of(id: u64) -> String {
    format!("body of message {id}")
}

fn record_log(broker: &Broker, l: &Ledger, id: u64) {
    let store = broker.store();
    let mut rec = Recovered {
        hist: store.epoch_history(),
        ..Recovered::default()
    };
    for r in store.scan(0) {
        match r {
            Ok(r) if r.topic == TOPIC => {
                let msg_id = r
                    .properties
                    .iter()
                    .find(|(k, _)| k == sofamq_broker::validate::keys::MSG_ID)
                    .and_then(|(_, v)| id_of(v));
                match msg_id {
                    Some(m) => rec.recs.push(Rec {
                        offset: r.log_offset,
                        epoch: r.epoch,
                        id: m,
                        body_ok: r.body.as_ref() == body_of(m).as_bytes(),
                    }),
                    None => l.j.violate(format!(
                        "b{id}: record at {} has no message id of the producer",
                        r.log_offset
                    )),
                }
            }
            Ok(_) => {}
            Err(e) => {
                l.j.violate(format!("b{id}: scan of the recovered log failed: {e}"));
                break;
            }
        }
    }
    if let Some(why) = store.fenced() {
        l.j.violate(format!("b{id}: store opened fenced: {why}"));
    }
    l.j.log(&format!(
        "b{id} opened: epoch {} log_end {} records {}",
        store.current_epoch(),
        store.log_end_offset(),
        rec.recs.len()
    ));
    l.recovered.borrow_mut().insert(id, rec);
}

/// Broker `id`'s configuration, its durations as a clock running at `rate` measures them.
fn broker_config(id: u64, rate: f64) -> BrokerConfig {
    let h = host(id);
    let ms = |v: u64| (v as f64 / rate).round() as u64;
    BrokerConfig {
        broker_name: GROUP.into(),
        broker_id: id,
        data_dir: PathBuf::from("/broker"),
        segment_bytes: 64 * 1024,
        scrub_bytes_per_sec: 0,
        default_queue_count: 2,
        replication: ReplicationConfig {
            listen: Some(SocketAddr::from(([0, 0, 0, 0], REPL_PORT))),
            advertise: Some(format!("{h}:{REPL_PORT}")),
            min_insync_replicas: 2,
            ack_timeout_ms: ms(1_000),
            max_lag_ms: ms(1_000),
            handshake_timeout_ms: ms(1_000),
            reconnect_backoff_ms: ms(50),
            controller: vec![format!("{CTL}:{CTL_PORT}")],
            controller_heartbeat_ms: ms(300),
            controller_timeout_ms: ms(500),
            ..ReplicationConfig::default()
        },
        ..BrokerConfig::default()
    }
}

async fn broker_host(l: Rc<Ledger>, id: u64) -> turmoil::Result {
    let mut on = Vec::new();
    if l.knobs.skip_rejoin_truncation {
        on.push(Mutant::SkipRejoinTruncation);
    }
    if l.knobs.append_after_step_down {
        on.push(Mutant::AppendAfterStepDown);
    }
    if l.knobs.wall_clock_dedup {
        on.push(Mutant::WallClockDedup);
    }
    mutant::set(&on);
    let cfg = broker_config(id, l.rates[id as usize]);
    let disk: Arc<dyn sofamq_store::io::Fs> = Arc::new(l.disks[id as usize].clone());
    let broker = loop {
        let d = disk.clone();
        match Broker::open_with(cfg.clone(), &move |sc| {
            sc.fs = d.clone();
            sc.driver = Driver::Caller;
            sc.cq_flush_interval = Duration::from_millis(200);
        }) {
            Ok(b) => break b,
            Err(e) => {
                l.j.error(&format!("b{id}: open failed: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    record_log(&broker, &l, id);
    let driver = broker.store().clone();
    tokio::spawn(async move { driver.drive().await });
    {
        // Publishes this broker's durable offset every millisecond, for the harness.
        let (l, store) = (l.clone(), broker.store().clone());
        tokio::task::spawn_local(async move {
            loop {
                let t = u64::try_from(turmoil::sim_elapsed().unwrap_or_default().as_millis())
                    .unwrap_or(u64::MAX);
                l.durable
                    .borrow_mut()
                    .insert(id, (store.durable_offset(), t));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    }
    {
        // Checks every record this broker's log takes against every other log, as it is
        // written (a record later cut counts too).
        let (l, store) = (l.clone(), broker.store().clone());
        tokio::task::spawn_local(async move {
            let mut from = 0;
            loop {
                from = match_new_records(&l, id, &store, from);
                tokio::time::sleep(Duration::from_millis(MATCH_EVERY_MS)).await;
            }
        });
    }
    if l.final_phase.get() {
        return idle().await;
    }
    let token = CancellationToken::new();
    let repl = broker.repl().clone();
    repl.use_connector(Arc::new(TurmoilConnector));
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", REPL_PORT)).await?;
    repl.start_with(Some(Box::new(TurmoilAcceptor(listener))), token.clone());
    let client = ControllerClient::with_connector(
        vec![format!("{CTL}:{CTL_PORT}")],
        Duration::from_millis(500).div_f64(l.rates[id as usize]),
        Arc::new(TurmoilConnector),
    );
    let h = host(id);
    let addrs = BrokerAddrs {
        grpc: format!("{h}:{SEND_PORT}"),
        repl: format!("{h}:{REPL_PORT}"),
    };
    tokio::spawn(sofamq_broker::control::run_with(
        broker.clone(),
        addrs,
        client,
        token.clone(),
    ));
    // The topic is created by whoever is master (through the log, so it replicates).
    let b = broker.clone();
    tokio::task::spawn_local(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if b.repl().role() == Role::Master && b.topics().get(TOPIC).is_none() {
                let _ = b.create_topic(TOPIC, 2, TopicType::Normal).await;
            }
        }
    });
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", SEND_PORT)).await?;
    loop {
        let (s, _) = listener.accept().await?;
        tokio::task::spawn_local(serve_sends(s, broker.clone()));
    }
}

/// One tick of `sim`, between host registrations (an error is traced).
fn step_once(sim: &mut turmoil::Sim<'_>, j: &Journal) {
    if let Err(e) = sim.step() {
        j.error(&format!("step: {e}"));
    }
}

/// Runs one seed of the group simulation.
pub fn run_group_seed(seed: u64, knobs: GroupKnobs) -> GroupOutcome {
    let _seeded = crate::journal::seed_guards(seed);
    let n = brokers_for(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let j = Rc::new(Journal::default());
    // Clock drift: each host's clock runs within 5% of simulated time (the timings leave
    // the lease a 20% margin under the controller's shortest timeout).
    let mut drift = || 1.0 + rng.random_range(-0.05..=0.05);
    let ctl_rate = drift();
    let rates: Vec<f64> = (0..n).map(|_| drift()).collect();
    // Half the seeds have a disk whose every fdatasync takes 1 to 5 ms.
    let disk_ms = if rng.random_bool(0.5) {
        rng.random_range(1..=5)
    } else {
        0
    };
    let disks: Vec<SimDisk> = (0..n)
        .map(|_| {
            let d = SimDisk::new(DiskFaults::default());
            d.set_sync_latency(Duration::from_millis(disk_ms));
            d
        })
        .collect();
    let ctl = Rc::new(CtlShared {
        j: j.clone(),
        view: RefCell::new(None),
        elect_out_of_sync: knobs.elect_out_of_sync,
        timing: CtlTiming {
            lease: 1_000,
            master_timeout: 2_000,
            refused_timeout: 1_200,
        },
        rate: ctl_rate,
        broker_rates: rates.clone(),
    });
    let l = Rc::new(Ledger {
        j: j.clone(),
        ctl: ctl.clone(),
        brokers: n,
        sent: RefCell::default(),
        acked: RefCell::default(),
        ack_epochs: RefCell::default(),
        recovered: RefCell::default(),
        final_phase: Cell::new(false),
        stop_producer: Cell::new(false),
        next_id: Cell::new(0),
        knobs,
        disks,
        rates,
        durable: RefCell::default(),
        last_ack_ms: Cell::new(0),
        settled_view: RefCell::default(),
        stalled_until: RefCell::default(),
        holds: RefCell::new(StdRng::seed_from_u64(seed ^ 0x401d)),
        held_appends: RefCell::default(),
        matching: RefCell::default(),
    });
    let _holds = HoldHook::install(&l);
    // Wall clocks: each broker's is up to 2 s off and runs at its drift rate, and one
    // broker's steps 1 to 30 minutes forward or back at a time in the fault window (an NTP
    // step, a VM resumed). Drawn apart from the fault plan, so a seed's faults stay put.
    let mut wrng = StdRng::seed_from_u64(seed ^ 0x3a11_c10c);
    let stepped = wrng.random_range(0..n);
    let step = (
        wrng.random_range(FAULTS_FROM..FAULTS_END),
        wrng.random_range(1..=30i64) * 60_000 * if wrng.random_bool(0.5) { 1 } else { -1 },
    );
    let walls: Vec<WallSkew> = (0..n)
        .map(|id| WallSkew {
            offset_ms: wrng.random_range(-2_000..=2_000),
            rate: l.rates[id as usize],
            step: (id == stepped).then_some(step),
        })
        .collect();
    // Hosts are told apart by when they were registered (crate::wall): broker `id` at
    // `id + 1` ms.
    let _walls = wall::skew_walls(walls.iter().zip(1..).map(|(w, at)| (at, *w)).collect());
    let mut b = turmoil::Builder::new();
    let latency = rng.random_range(2..30);
    let block = if rng.random_bool(0.5) { 4 } else { 512 };
    let flush = if rng.random_bool(0.5) { 0.0 } else { 0.2 };
    b.rng_seed(seed)
        .simulation_duration(Duration::from_millis(END + 10_000))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(latency));
    b.fs().block_size(block).sync_probability(flush);
    let mut sim = b.build();
    j.log(&format!(
        "seed {seed}: {n} brokers, latency <= {latency} ms, block {block}, os-flush {flush}, \
         fdatasync {disk_ms} ms, clock rates: controller {ctl_rate:.3}, brokers {:.3?}, \
         wall clock offsets (ms) {:?}, b{stepped}'s steps {} ms at {} ms, {knobs:?}",
        l.rates,
        walls.iter().map(|w| w.offset_ms).collect::<Vec<_>>(),
        step.1,
        step.0,
    ));
    {
        let c = ctl.clone();
        sim.host(CTL, move || standin::run(c.clone(), CTL_PORT));
    }
    for id in 0..n {
        let l = l.clone();
        step_once(&mut sim, &j);
        sim.host(host(id).as_str(), move || broker_host(l.clone(), id));
    }
    step_once(&mut sim, &j);
    {
        let l = l.clone();
        sim.host(PRODUCER, move || producer(l.clone(), seed));
    }
    // The plan: (start, duration, fault).
    let mut plan: Vec<(u64, u64, Fault)> = (0..rng.random_range(2..=6))
        .map(|_| {
            let at = rng.random_range(FAULTS_FROM..FAULTS_END - 1_000);
            let dur = rng.random_range(200..3_000);
            let master = rng.random_bool(0.7);
            let f = match rng.random_range(0..16) {
                0 | 1 => Fault::CrashBroker(master),
                2 => Fault::CrashController,
                3 => Fault::PowerLoss,
                4 => Fault::PartitionBrokers,
                5 => Fault::PartitionController(master),
                6 => Fault::PartitionProducer(master),
                7 => Fault::OneWayToController(master),
                8 => Fault::Hold(master),
                9 | 10 => Fault::IsolateMaster,
                11 | 12 => Fault::LagThenCrash,
                13 | 14 => Fault::SlowDisk(master),
                _ => Fault::Stall(master, at + STALL_WAIT_MS),
            };
            (at, dur, f)
        })
        .collect();
    // Every seed has one failover that only the rules make safe: an isolated master
    // (its tail must be cut when it rejoins) or, with three brokers, a crash while one
    // slave lags (only an in-sync replica may win), or a master cut from the controller
    // alone (it still streams to its slaves while one of them is elected).
    let at = rng.random_range(FAULTS_FROM..FAULTS_END - 3_000);
    let key = match (n, rng.random_range(0..4)) {
        (3, 0) => Fault::LagThenCrash,
        (3, 1) => Fault::PartitionController(true),
        (_, 2) => Fault::Stall(true, at + STALL_WAIT_MS),
        _ => Fault::IsolateMaster,
    };
    plan.push((at, rng.random_range(2_500..4_000), key));
    plan.sort_by_key(|p| p.0);
    plan.reverse();
    // Heal actions: (time, what to undo).
    let mut heals: Vec<(u64, Vec<Heal>)> = Vec::new();
    let mut down: BTreeSet<String> = BTreeSet::new();
    let mut final_done = false;
    let mut slave_ahead_ms = 0;
    let mut links = Links::new();
    let mut disk_over = DiskOverrides::new(n, Duration::from_millis(disk_ms));
    let mut stalls = Stalls::default();
    loop {
        let t = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
        if t >= END {
            break;
        }
        j.set_now(t);
        if !final_done && slave_ahead(&l, t) {
            slave_ahead_ms += 1;
        }
        while plan.last().is_some_and(|p| p.0 <= t) {
            let Some((_, dur, f)) = plan.pop() else { break };
            let view = ctl.view.borrow().clone();
            let master = view.as_ref().and_then(|g| g.master).unwrap_or(0);
            let pick = |is_master: bool| if is_master { master } else { (master + 1) % n };
            let mut undo = Vec::new();
            match f {
                Fault::CrashBroker(w) => {
                    let id = pick(w);
                    let h = host(id);
                    if down.insert(h.clone()) {
                        j.log(&format!("CRASH {h} for {dur} ms"));
                        links.crash(&mut sim, h.as_str());
                        stalls.end(&l, &mut disk_over, id);
                        undo.push(Heal::Restart(h));
                    }
                }
                Fault::CrashController => {
                    if down.insert(CTL.into()) {
                        j.log(&format!("CRASH controller for {dur} ms"));
                        links.crash(&mut sim, CTL);
                        undo.push(Heal::Restart(CTL.into()));
                    }
                }
                Fault::PowerLoss => {
                    j.log(&format!("POWER LOSS of every broker for {dur} ms"));
                    for id in 0..n {
                        let h = host(id);
                        if down.insert(h.clone()) {
                            links.crash(&mut sim, h.as_str());
                            stalls.end(&l, &mut disk_over, id);
                            undo.push(Heal::Restart(h));
                        }
                    }
                }
                Fault::PartitionBrokers => {
                    let (a, b) = (host(master), host((master + 1) % n));
                    j.log(&format!("PARTITION {a} | {b} for {dur} ms"));
                    links.partition(&sim, a.as_str(), b.as_str());
                    undo.push(Heal::Repair(a, b));
                }
                Fault::PartitionController(w) => {
                    let h = host(pick(w));
                    j.log(&format!("PARTITION {h} | controller for {dur} ms"));
                    links.partition(&sim, h.as_str(), CTL);
                    undo.push(Heal::Repair(h, CTL.into()));
                }
                Fault::PartitionProducer(w) => {
                    let h = host(pick(w));
                    j.log(&format!("PARTITION {h} | producer for {dur} ms"));
                    links.partition(&sim, h.as_str(), PRODUCER);
                    undo.push(Heal::Repair(h, PRODUCER.into()));
                }
                Fault::OneWayToController(w) => {
                    let h = host(pick(w));
                    j.log(&format!(
                        "PARTITION {h} -> controller (one way) for {dur} ms"
                    ));
                    links.partition_oneway(&sim, h.as_str(), CTL);
                    undo.push(Heal::RepairOneway(h, CTL.into()));
                }
                Fault::Hold(w) => {
                    let h = host(pick(w));
                    j.log(&format!("HOLD every link of {h} for {dur} ms"));
                    hold_every_link(&sim, &mut links, &h, n, &mut undo);
                }
                Fault::IsolateMaster => {
                    let h = host(master);
                    j.log(&format!("ISOLATE {h} (all but the producer) for {dur} ms"));
                    let others: Vec<String> = (0..n)
                        .map(host)
                        .filter(|o| *o != h)
                        .chain([CTL.to_string()])
                        .collect();
                    for o in others {
                        links.partition(&sim, h.as_str(), o.as_str());
                        undo.push(Heal::Repair(h.clone(), o));
                    }
                }
                Fault::SlowDisk(w) => {
                    let id = pick(w);
                    let slow = rng.random_range(50..=600);
                    j.log(&format!(
                        "SLOW DISK of {} ({slow} ms per fdatasync) for {dur} ms",
                        host(id)
                    ));
                    undo.push(disk_over.push(&l.disks, id, Duration::from_millis(slow)));
                }
                Fault::Stall(w, latest) => {
                    let id = pick(w);
                    let h = host(id);
                    if down.contains(&h) {
                        // Nothing runs to be stopped.
                        continue;
                    }
                    if t < latest && !holds_an_append(&l, id, t) {
                        plan.push((t + 1, dur, f));
                        plan.sort_by_key(|p| std::cmp::Reverse(p.0));
                        continue;
                    }
                    j.log(&format!(
                        "STALL {h} (links held, disk stuck, sends held) for {dur} ms"
                    ));
                    let until = t + dur;
                    let mut stalled = l.stalled_until.borrow_mut();
                    let e = stalled.entry(id).or_default();
                    *e = (*e).max(until);
                    drop(stalled);
                    undo.push(Heal::Unstall(id, until));
                    let disk = disk_over.push(&l.disks, id, Duration::from_millis(dur));
                    stalls.began(id, until, &disk);
                    undo.push(disk);
                    hold_every_link(&sim, &mut links, &h, n, &mut undo);
                }
                Fault::LagThenCrash => {
                    let (a, b) = (host(master), host((master + n - 1) % n));
                    let lag = rng.random_range(1_200..2_000);
                    j.log(&format!(
                        "PARTITION {a} | {b} for {} ms, crash {a} after {lag} ms",
                        lag + dur
                    ));
                    links.partition(&sim, a.as_str(), b.as_str());
                    heals.push((t + lag + dur, vec![Heal::Repair(a, b)]));
                    // Within the fault window, as every fault: a crash after it would
                    // leave the producer's requests to it hanging past the recovery check.
                    let at = (t + lag).min(FAULTS_END - 1_000);
                    plan.push((at, dur, Fault::CrashBroker(true)));
                    plan.sort_by_key(|p| std::cmp::Reverse(p.0));
                }
            }
            if !undo.is_empty() {
                heals.push((t + dur, undo));
            }
        }
        let due: Vec<Heal> = heals
            .iter()
            .filter(|(at, _)| *at <= t || t >= FAULTS_END)
            .flat_map(|(_, u)| u.clone())
            .collect();
        if !due.is_empty() {
            heals.retain(|(at, _)| *at > t && t < FAULTS_END);
            for h in due {
                match h {
                    Heal::Restart(x) => {
                        j.log(&format!("RESTART {x}"));
                        down.remove(&x);
                        sim.bounce(x.as_str());
                    }
                    Heal::Repair(a, b) => {
                        j.log(&format!("HEAL {a} | {b}"));
                        links.repair(&sim, a.as_str(), b.as_str());
                    }
                    Heal::RepairOneway(a, b) => {
                        j.log(&format!("HEAL {a} -> {b}"));
                        links.repair_oneway(&sim, a.as_str(), b.as_str());
                    }
                    Heal::Release(a, b) => {
                        links.release(&sim, a.as_str(), b.as_str());
                    }
                    Heal::Unstall(id, until) => {
                        let mut stalls = l.stalled_until.borrow_mut();
                        if stalls.get(&id) == Some(&until) {
                            stalls.remove(&id);
                        }
                    }
                    Heal::DiskLatency(id, key) => {
                        let d = disk_over.pop(&l.disks, id, key);
                        j.log(&format!(
                            "DISK of {} back to {} ms",
                            host(id),
                            d.as_millis()
                        ));
                    }
                }
            }
        }
        if t >= PRODUCER_STOP && !l.stop_producer.get() {
            l.stop_producer.set(true);
            j.log("producer stops");
        }
        if t >= FINAL_CRASH && !final_done {
            final_done = true;
            j.log("final crash and restart of every broker");
            l.final_phase.set(true);
            *l.settled_view.borrow_mut() = ctl.view.borrow().clone();
            l.recovered.borrow_mut().clear();
            for id in 0..n {
                let h = host(id);
                links.crash(&mut sim, h.as_str());
                sim.bounce(h.as_str());
            }
        }
        if let Err(e) = sim.step() {
            j.violate(format!("simulation error: {e}"));
            break;
        }
    }
    if l.recovered.borrow().len() as u64 != n {
        j.violate("a broker never reopened after the final crash".into());
    }
    check(&l);
    drop(sim);
    let epochs = j.count_containing("controller: commit (election)");
    let (violations, trace) = j.take();
    GroupOutcome {
        seed,
        brokers: n,
        violations,
        acks: l.acked.borrow().len(),
        epochs,
        slave_ahead_ms,
        trace,
    }
}
