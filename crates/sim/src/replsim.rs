//! The real master and slave (`sofamq_broker::repl::Replication` over `sofamq_store::Store`) on
//! simulated disks and a simulated network, under seeded crashes, partitions and a final power
//! cut of both machines.
//!
//! Host `m` runs a store and `Replication` as the master (static roles, no controller), with two
//! producers that are admitted (`Replication::admit`: enough in-sync replicas), append a batch
//! and count it acked only once `wait_replicated` returns OK, exactly what the broker's send
//! path does around the append. Half the seeds give the master's or the slave's disk a slow
//! fdatasync (1 to 40 ms of simulated time, [`SimDisk::set_sync_latency`]): a batch is then
//! written and streamed long before it is durable where it was written. Host `s` runs the slave, which
//! dials the master through turmoil's TCP (the replication `Connector`/`Acceptor` seam). Both
//! stores run with `Driver::Caller`, so their writers are tasks on their host's runtime.
//!
//! Faults from the seed, before the power cut: the slave crashed and restarted, the master
//! crashed and restarted (it loses its unsynced tail; a slave that streamed it must cut it),
//! the link between them cut for a while. Then both machines lose power at once while the
//! producers are sending, and restart; each records its recovered log before replicating.
//!
//! Checks on the recovered logs:
//! * every acked record is on the master, at its offset (acked only after its fdatasync);
//! * every acked record is on the slave, at the same offset (acked only after the slave had
//!   it durably: what lets a slave take over without loss);
//! * the two logs agree wherever both hold a record (a slave cut what its master lost);
//! * nothing in either log was never sent.
//!
//! A seed replays exactly, in one process and across processes: same trace, same recovered
//! logs, same acks. What makes it so, on every path this runs:
//! * time: every decision (in-sync lag, ack timeout, reconnect back-off) reads
//!   `sofamq_broker::clock::Instant`, tokio's, which is the host runtime's simulated clock;
//!   the wall clock (`sofamq_store::clock::now_ms`: record timestamps) is driven by the
//!   simulated time through a per-thread override ([`run_repl_seed`] installs it, turmoil
//!   runs every host on the calling thread);
//! * randomness: the broker's own draws (`sofamq_broker::clock::random`: the dedup window's
//!   hash seeds) come from a per-thread RNG seeded from the seed; turmoil's from its seed;
//! * order: no `HashMap`/`HashSet` iteration decides anything (the in-sync tracker keeps its
//!   slaves in a `BTreeMap`, the store touches queue files in sorted order);
//! * tokio's runtime RNG, which turmoil seeds only under `--cfg tokio_unstable` and which a
//!   current-thread runtime draws from in an unbiased `select!` and in `watch::Receiver`'s
//!   `changed`/`wait_for` (it picks one of 8 notify shards, and a send wakes the shards in
//!   index order, so the wake order of waiters would follow the RNG): every `select!` on
//!   these paths is `biased;`, and `wait_replicated` waits on a `Notify` (FIFO), not the
//!   watch.
//!
//! `REPL_SIM_SEED=N` prints a seed's trace; the `repl` test checks the replay in one process
//! and in child processes of the test binary.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sofamq_broker::repl::{Replication, ReplicationConfig, Role};
use sofamq_store::{Driver, NewRecord, Store, StoreConfig};
use tokio_util::sync::CancellationToken;

use crate::disk::{DiskFaults, SimDisk};
use crate::host::{TurmoilAcceptor, TurmoilConnector};
use crate::journal::{Journal, seed_guards, two_host_world};
use crate::links::Links;

const MASTER: &str = "m";
const SLAVE: &str = "s";
const PORT: u16 = 10912;
/// Faults happen before this (ms).
const FAULTS_END: u64 = 3_000;
/// The run ends (ms).
const END: u64 = 5_200;

/// What a seed changes besides timing.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplKnobs {
    /// Broken variant: the send path acks once the master's append is durable, without
    /// waiting for the slave (`wait_replicated` skipped).
    pub ack_before_slave: bool,
}

#[derive(Default)]
struct Ledger {
    j: Journal,
    submitted: RefCell<BTreeSet<u64>>,
    /// id -> log offset.
    acked: RefCell<BTreeMap<u64, u64>>,
    /// Each host's log as recovered at its latest start: (offset, id).
    recovered: RefCell<BTreeMap<&'static str, Vec<(u64, u64)>>>,
    next_id: Cell<u64>,
    /// Set at the power cut: the restarted hosts only record their logs.
    cut: Cell<bool>,
    /// fdatasync latency of the master's and the slave's disk (ms; 0: none).
    sync_ms: Cell<[u64; 2]>,
}

/// The result of one seed.
#[derive(Debug)]
pub struct ReplOutcome {
    /// The seed.
    pub seed: u64,
    /// Check failures (empty: every check passed).
    pub violations: Vec<String>,
    /// Records acknowledged (stored on the master and, as required, on the slave).
    pub acks: usize,
    /// Time-stamped events.
    pub trace: Vec<String>,
    /// Each host's log as recovered after the power cut: host -> (offset, id) in log order.
    pub logs: BTreeMap<&'static str, Vec<(u64, u64)>>,
}

fn id_of(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body)
        .ok()?
        .strip_prefix("id=")?
        .parse()
        .ok()
}

async fn produce(
    store: Store,
    repl: Arc<Replication>,
    l: Rc<Ledger>,
    mut rng: StdRng,
    knobs: ReplKnobs,
) {
    while !l.cut.get() {
        let n = rng.random_range(1..=4);
        let ids: Vec<u64> = (0..n)
            .map(|_| {
                let id = l.next_id.get();
                l.next_id.set(id + 1);
                l.submitted.borrow_mut().insert(id);
                id
            })
            .collect();
        let recs = ids
            .iter()
            .map(|id| NewRecord {
                topic: "t".into(),
                queue_id: (id % 2) as u32,
                body: format!("id={id}").into(),
                ..Default::default()
            })
            .collect();
        // Admission, as the broker's send path does it before the append: a fenced log, or
        // fewer in-sync replicas than required, refuses the batch (nothing is stored, so a
        // slave that fell behind can catch up and rejoin); it gives the term the batch is
        // sent in.
        match repl.admit() {
            Err(e) => {
                l.j.error(&format!("refused: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(admitted) => match store.append(recs).await {
                Ok(done) => {
                    let end = done.last().map_or(0, |a| a.log_offset + u64::from(a.size));
                    let replicated = if knobs.ack_before_slave {
                        Ok(())
                    } else {
                        repl.wait_replicated(admitted, end).await
                    };
                    match replicated {
                        Ok(()) => {
                            let mut acked = l.acked.borrow_mut();
                            for (id, a) in ids.iter().zip(&done) {
                                acked.insert(*id, a.log_offset);
                            }
                        }
                        Err(e) => l.j.error(&format!("not acked: {e}")),
                    }
                }
                Err(e) => l.j.error(&format!("append failed: {e}")),
            },
        }
        let pause = rng.random_range(0..8u64).saturating_sub(2);
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}

fn record_log(store: &Store, l: &Ledger, who: &'static str) {
    let mut log = Vec::new();
    // The newest store timestamp: the wall clock is simulated too, so it replays.
    let mut stamped = 0;
    for r in store.scan(0) {
        match r {
            Ok(r) if r.topic == "t" => match id_of(&r.body) {
                Some(id) => {
                    log.push((r.log_offset, id));
                    stamped = stamped.max(r.store_ts_ms);
                }
                None => l.j.violate(format!(
                    "{who}: record at {} has an unknown body",
                    r.log_offset
                )),
            },
            Ok(_) => {}
            Err(e) => {
                l.j.violate(format!("{who}: scan of the recovered log failed: {e}"));
                break;
            }
        }
    }
    if let Some(why) = store.fenced() {
        l.j.violate(format!("{who}: store opened fenced: {why}"));
    }
    l.j.log(&format!(
        "{who} opened: log_end {} records {} last stamped {stamped}",
        store.log_end_offset(),
        log.len()
    ));
    l.recovered.borrow_mut().insert(who, log);
}

async fn host(l: Rc<Ledger>, who: &'static str, seed: u64, knobs: ReplKnobs) -> turmoil::Result {
    let cfg = StoreConfig {
        segment_size: 16 * 1024,
        cq_flush_interval: Duration::from_millis(100),
        scrub_bytes_per_sec: 0,
        fs: {
            let d = SimDisk::new(DiskFaults::default());
            let ms = l.sync_ms.get()[usize::from(who != MASTER)];
            d.set_sync_latency(Duration::from_millis(ms));
            Arc::new(d)
        },
        driver: Driver::Caller,
        ..StoreConfig::new(PathBuf::from("/data"))
    };
    let store = loop {
        match Store::open(cfg.clone()) {
            Ok(s) => break s,
            Err(e) => {
                l.j.error(&format!("{who}: open failed: {e}"));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    record_log(&store, &l, who);
    let driver = store.clone();
    tokio::spawn(async move { driver.drive().await });
    if l.cut.get() {
        // After the power cut the logs are only read.
        return idle().await;
    }
    let master = who == MASTER;
    let rcfg = ReplicationConfig {
        role: Some(if master { Role::Master } else { Role::Slave }),
        listen: master.then(|| ([0, 0, 0, 0], PORT).into()),
        master_addr: (!master).then(|| format!("{MASTER}:{PORT}")),
        min_insync_replicas: 2,
        ack_timeout_ms: 1_000,
        handshake_timeout_ms: 1_000,
        reconnect_backoff_ms: 50,
        ..Default::default()
    };
    let repl = match Replication::open(rcfg, "g", u64::from(!master), store.clone()) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            l.j.violate(format!("{who}: replication did not open: {e}"));
            return idle().await;
        }
    };
    let token = CancellationToken::new();
    if master {
        let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
        repl.start_with(Some(Box::new(TurmoilAcceptor(listener))), token.clone());
        let mut rng = StdRng::seed_from_u64(seed ^ l.next_id.get());
        for _ in 0..2 {
            let r = StdRng::seed_from_u64(rng.random());
            tokio::task::spawn_local(produce(store.clone(), repl.clone(), l.clone(), r, knobs));
        }
    } else {
        repl.use_connector(Arc::new(TurmoilConnector));
        repl.start(None, token.clone());
    }
    idle().await
}

async fn idle() -> turmoil::Result {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn check(l: &Ledger) {
    let rec = l.recovered.borrow();
    let empty = Vec::new();
    let m = rec.get(MASTER).unwrap_or(&empty);
    let s = rec.get(SLAVE).unwrap_or(&empty);
    let m_at: HashMap<u64, u64> = m.iter().copied().collect();
    let s_at: HashMap<u64, u64> = s.iter().copied().collect();
    for (id, off) in l.acked.borrow().iter() {
        if m_at.get(off) != Some(id) {
            l.j.violate(format!("acked id {id} at {off} is not on the master"));
        }
        if s_at.get(off) != Some(id) {
            l.j.violate(format!("acked id {id} at {off} is not on the slave"));
        }
    }
    for (off, id) in m {
        if let Some(other) = s_at.get(off)
            && other != id
        {
            l.j.violate(format!(
                "the logs disagree at {off}: master has id {id}, slave id {other}"
            ));
        }
    }
    let submitted = l.submitted.borrow();
    for (who, log) in [(MASTER, m), (SLAVE, s)] {
        let mut seen = BTreeSet::new();
        for (off, id) in log {
            if !submitted.contains(id) {
                l.j.violate(format!("{who}: id {id} at {off} was never sent"));
            }
            if !seen.insert(id) {
                l.j.violate(format!("{who}: id {id} is in the log twice"));
            }
        }
    }
}

/// Runs one seed of the replication simulation.
pub fn run_repl_seed(seed: u64, knobs: ReplKnobs) -> ReplOutcome {
    let _seeded = seed_guards(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut sim, disk) = two_host_world(seed, &mut rng, Duration::from_millis(END + 10_000));
    let l = Rc::new(Ledger::default());
    // Half the seeds have slow disks: a batch is written (and streamed) well before its
    // fdatasync completes, on the master and on the slave.
    let mut slow = || {
        if rng.random_bool(0.5) {
            rng.random_range(1..=40)
        } else {
            0
        }
    };
    l.sync_ms.set([slow(), slow()]);
    l.j.log(&format!(
        "seed {seed}: {disk} fdatasync ms (master, slave) {:?} ack-before-slave {}",
        l.sync_ms.get(),
        knobs.ack_before_slave
    ));
    for who in [MASTER, SLAVE] {
        let l = l.clone();
        sim.host(who, move || host(l.clone(), who, seed, knobs));
    }
    // (time, what): 0 crash the slave, 1 crash the master, 2 cut the link, 3 heal it.
    let mut plan: Vec<(u64, u8)> = Vec::new();
    for _ in 0..rng.random_range(1..4) {
        let at = rng.random_range(300..FAULTS_END);
        match rng.random_range(0..3) {
            0 => plan.push((at, 0)),
            1 => plan.push((at, 1)),
            _ => {
                plan.push((at, 2));
                plan.push((at + rng.random_range(100..1_500), 3));
            }
        }
    }
    let power_cut = rng.random_range(FAULTS_END + 500..FAULTS_END + 1_500);
    plan.push((power_cut, 4));
    plan.sort_unstable();
    plan.reverse();
    let mut links = Links::new();
    loop {
        let t = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
        if t >= END {
            break;
        }
        l.j.set_now(t);
        while plan.last().is_some_and(|&(at, _)| at <= t) {
            let Some((_, what)) = plan.pop() else { break };
            match what {
                0 | 1 => {
                    let h = if what == 0 { SLAVE } else { MASTER };
                    l.j.log(&format!("CRASH and restart {h}"));
                    links.crash(&mut sim, h);
                    sim.bounce(h);
                }
                2 => {
                    l.j.log("PARTITION m | s");
                    links.partition(&sim, MASTER, SLAVE);
                }
                3 => {
                    l.j.log("HEAL m | s");
                    links.repair(&sim, MASTER, SLAVE);
                }
                _ => {
                    l.j.log("POWER CUT of both");
                    l.cut.set(true);
                    l.recovered.borrow_mut().clear();
                    links.repair(&sim, MASTER, SLAVE);
                    for h in [MASTER, SLAVE] {
                        links.crash(&mut sim, h);
                        sim.bounce(h);
                    }
                }
            }
        }
        if let Err(e) = sim.step() {
            l.j.violate(format!("simulation error: {e}"));
            break;
        }
    }
    if l.recovered.borrow().len() < 2 || !l.cut.get() {
        l.j.violate("a host never reopened after the power cut".into());
    }
    check(&l);
    let (violations, trace) = l.j.take();
    ReplOutcome {
        seed,
        violations,
        acks: l.acked.borrow().len(),
        trace,
        logs: l.recovered.take(),
    }
}
