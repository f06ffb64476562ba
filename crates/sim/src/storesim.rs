//! The real store (`sofamq_store::Store`: group-commit writer, segments, consume queues,
//! checkpoint, epoch history, recovery) on a simulated disk, under crashes drawn from a seed.
//!
//! One turmoil host runs the store with [`Driver::Caller`] (its writer and flusher are a task
//! on the host's runtime, so every file operation happens in an order the seed decides) and
//! two appenders that send small batches to random queues. The harness crashes the host at
//! seeded times (a crash keeps only synced bytes; unsynced writes may survive torn, in 4- or
//! 512-byte blocks, or flushed early by the "OS") and restarts it. After every restart the
//! host re-opens the store (recovery) and checks, before it appends again:
//!
//! * every acknowledged record is still there: same log offset, topic, queue, queue offset
//!   and body, and the consume queue finds it at its queue offset (acked-then-lost);
//! * every record in the log was submitted, once (nothing invented or doubled);
//! * each queue's offsets count 0, 1, 2... in log order;
//! * the store did not open fenced (a crash alone never damages synced data).
//!
//! Seeds also vary the fault plan: `EIO` on every Nth fdatasync (the store must fence, fail
//! the covered appends, and recover after a restart), a small disk (`ENOSPC`), and async vs.
//! sync flushing of the "OS". A seed replays exactly: same trace, same acks.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sofamq_store::{Driver, NewRecord, Store, StoreConfig};

use crate::disk::{DiskFaults, SimDisk};
use crate::journal::Journal;
use crate::wall::sim_wall_ms;

const HOST: &str = "store";
/// Appenders stop (ms).
const APPEND_STOP: u64 = 4_000;
/// The last crash and restart (ms); its checks read only what was durable.
const FINAL_CRASH: u64 = 4_300;
/// The run ends (ms).
const END: u64 = 4_800;
const TOPICS: [&str; 2] = ["orders", "audit"];
const QUEUES: u32 = 3;

/// What a seed changes besides timing.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreKnobs {
    /// Broken variant: the disk acks fdatasync without syncing (as a store that acks before
    /// its fdatasync would).
    pub lie_on_sync: bool,
}

/// One acknowledged record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Acked {
    topic: &'static str,
    queue: u32,
    log_offset: u64,
    queue_offset: u64,
}

#[derive(Default)]
struct Ledger {
    j: Journal,
    /// Every record ever handed to `append`: id -> (topic, queue).
    submitted: RefCell<HashMap<u64, (&'static str, u32)>>,
    acked: RefCell<BTreeMap<u64, Acked>>,
    next_id: Cell<u64>,
    opens: Cell<u64>,
    append_errors: Cell<u64>,
    /// Whether the last start verified an open store (false: it never opened).
    verified_last: Cell<bool>,
}

/// The result of one seed.
#[derive(Debug)]
pub struct StoreOutcome {
    /// The seed.
    pub seed: u64,
    /// Check failures (empty: every check passed).
    pub violations: Vec<String>,
    /// Records acknowledged.
    pub acks: usize,
    /// Store opens (the first plus one per restart).
    pub opens: u64,
    /// Appends that failed (EIO, ENOSPC, a crash mid-append...).
    pub append_errors: u64,
    /// Whether the store opened (and was checked) after the final crash. It does not when a
    /// full disk leaves recovery no room (a seed with a small disk).
    pub final_open: bool,
    /// Time-stamped events.
    pub trace: Vec<String>,
}

fn body(id: u64) -> Bytes {
    Bytes::from(format!("id={id};").repeat(1 + (id % 7) as usize))
}

fn id_of(body: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(body).ok()?;
    s.strip_prefix("id=")?.split(';').next()?.parse().ok()
}

/// Checks the freshly recovered store against the ledger.
fn verify(store: &Store, l: &Ledger) {
    if let Some(why) = store.fenced() {
        l.j.violate(format!("store opened fenced: {why}"));
        return;
    }
    for (id, a) in l.acked.borrow().iter() {
        match store.read_at(a.log_offset) {
            Ok(r) => {
                if id_of(&r.body) != Some(*id)
                    || r.topic != a.topic
                    || r.queue_id != a.queue
                    || r.queue_offset != a.queue_offset
                {
                    l.j.violate(format!(
                        "acked id {id} at {} changed: found id {:?} {}/{} qo {}",
                        a.log_offset,
                        id_of(&r.body),
                        r.topic,
                        r.queue_id,
                        r.queue_offset
                    ));
                }
            }
            Err(e) => {
                l.j.violate(format!("acked id {id} at {} lost: {e}", a.log_offset))
            }
        }
        match store.read_queue(a.topic, a.queue, a.queue_offset, 1, 1 << 20) {
            Ok(v) if v.first().is_some_and(|r| r.log_offset == a.log_offset) => {}
            other => l.j.violate(format!(
                "acked id {id}: queue {}/{} offset {} does not lead to it: {:?}",
                a.topic,
                a.queue,
                a.queue_offset,
                other.map(|v| v.first().map(|r| r.log_offset))
            )),
        }
    }
    let submitted = l.submitted.borrow();
    let mut seen = HashSet::new();
    let mut next_qo: HashMap<(String, u32), u64> = HashMap::new();
    let mut records = 0u64;
    for r in store.scan(0) {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                l.j.violate(format!("scan of the recovered log failed: {e}"));
                break;
            }
        };
        records += 1;
        let Some(id) = id_of(&r.body) else {
            l.j.violate(format!("record at {} has a body nobody sent", r.log_offset));
            continue;
        };
        match submitted.get(&id) {
            Some((t, q)) if *t == r.topic && *q == r.queue_id => {}
            _ => l.j.violate(format!(
                "record at {} (id {id}) was never submitted to {}/{}",
                r.log_offset, r.topic, r.queue_id
            )),
        }
        if !seen.insert(id) {
            l.j.violate(format!("id {id} is in the log twice"));
        }
        let want = next_qo.entry((r.topic.clone(), r.queue_id)).or_default();
        if r.queue_offset != *want {
            l.j.violate(format!(
                "record at {} has queue offset {}, expected {want}",
                r.log_offset, r.queue_offset
            ));
        }
        *want = r.queue_offset + 1;
    }
    l.j.log(&format!(
        "open {}: log_end {} records {records} acked {}",
        l.opens.get(),
        store.log_end_offset(),
        l.acked.borrow().len()
    ));
}

async fn append_loop(store: Store, l: Rc<Ledger>, mut rng: StdRng, who: u32) {
    loop {
        let now = turmoil::sim_elapsed().unwrap_or_default();
        if now >= Duration::from_millis(APPEND_STOP) || store.fenced().is_some() {
            return;
        }
        let n = rng.random_range(1..=6);
        let mut recs = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let id = l.next_id.get();
            l.next_id.set(id + 1);
            let topic = TOPICS[rng.random_range(0..TOPICS.len())];
            let queue = rng.random_range(0..QUEUES);
            l.submitted.borrow_mut().insert(id, (topic, queue));
            ids.push((id, topic, queue));
            recs.push(NewRecord {
                topic: topic.into(),
                queue_id: queue,
                body: body(id),
                ..Default::default()
            });
        }
        match store.append(recs).await {
            Ok(done) => {
                let mut acked = l.acked.borrow_mut();
                for ((id, topic, queue), a) in ids.into_iter().zip(done) {
                    acked.insert(
                        id,
                        Acked {
                            topic,
                            queue,
                            log_offset: a.log_offset,
                            queue_offset: a.queue_offset,
                        },
                    );
                }
            }
            Err(e) => {
                l.append_errors.set(l.append_errors.get() + 1);
                l.j.error(&format!("appender {who}: append failed: {e}"));
            }
        }
        // Often none (the two appenders then share a batch), up to 12 ms.
        let pause = rng.random_range(0..12u64).saturating_sub(2);
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}

async fn host(l: Rc<Ledger>, cfg: StoreConfig, seed: u64) -> turmoil::Result {
    let open = l.opens.get() + 1;
    l.opens.set(open);
    l.verified_last.set(false);
    let store = loop {
        match Store::open(cfg.clone()) {
            Ok(s) => break s,
            // EIO during recovery: an operator (or systemd) would start it again.
            Err(e) => {
                l.j.error(&format!("open failed: {e}"));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    verify(&store, &l);
    l.verified_last.set(true);
    let driver = tokio::task::spawn_local({
        let s = store.clone();
        async move { s.drive().await }
    });
    let mut rng = StdRng::seed_from_u64(seed ^ open.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let a = tokio::task::spawn_local(append_loop(
        store.clone(),
        l.clone(),
        StdRng::seed_from_u64(rng.random()),
        0,
    ));
    let b = tokio::task::spawn_local(append_loop(
        store.clone(),
        l.clone(),
        StdRng::seed_from_u64(rng.random()),
        1,
    ));
    let _ = a.await;
    let _ = b.await;
    if let Some(why) = store.fenced() {
        l.j.log(&format!("store fenced: {why}"));
    }
    drop(store);
    let _ = driver.await;
    // Stay up until the harness crashes the host.
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs one seed of the store simulation.
pub fn run_store_seed(seed: u64, knobs: StoreKnobs) -> StoreOutcome {
    // Record timestamps from the simulated time (undone when the guard drops).
    let _wall = sofamq_store::clock::drive_wall_clock(sim_wall_ms);
    let mut rng = StdRng::seed_from_u64(seed);
    let block = if rng.random_bool(0.5) { 4 } else { 512 };
    let flush = if rng.random_bool(0.5) { 0.0 } else { 0.2 };
    let faults = DiskFaults {
        eio_every_nth_sync: if rng.random_bool(0.25) {
            rng.random_range(15..60)
        } else {
            0
        },
        lie_on_sync: knobs.lie_on_sync,
    };
    let small_disk = rng.random_bool(0.2);
    let mut b = turmoil::Builder::new();
    b.rng_seed(seed)
        .simulation_duration(Duration::from_millis(END + 10_000))
        .tick_duration(Duration::from_millis(1));
    b.fs().block_size(block).sync_probability(flush);
    if small_disk {
        b.fs().capacity(rng.random_range(48..160) * 1024);
    }
    let mut sim = b.build();
    let l = Rc::new(Ledger::default());
    l.j.log(&format!(
        "seed {seed}: block {block} os-flush {flush} eio-every {} small-disk {small_disk} lie {}",
        faults.eio_every_nth_sync, faults.lie_on_sync
    ));
    let cfg = StoreConfig {
        segment_size: rng.random_range(4..24) * 1024,
        max_batch_bytes: rng.random_range(1..16) * 1024,
        cq_flush_interval: Duration::from_millis(rng.random_range(20..300)),
        scrub_bytes_per_sec: 0,
        fs: SimDisk::shared(faults),
        driver: Driver::Caller,
        ..StoreConfig::new(PathBuf::from("/data"))
    };
    {
        let l = l.clone();
        sim.host(HOST, move || host(l.clone(), cfg.clone(), seed));
    }
    let mut crashes: Vec<u64> = (0..rng.random_range(2..6))
        .map(|_| rng.random_range(100..APPEND_STOP))
        .collect();
    crashes.push(FINAL_CRASH);
    crashes.sort_unstable();
    crashes.reverse();
    loop {
        let t = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
        if t >= END {
            break;
        }
        l.j.set_now(t);
        if crashes.last().is_some_and(|&c| c <= t) {
            crashes.pop();
            l.j.log("CRASH and restart");
            sim.crash(HOST);
            sim.bounce(HOST);
        }
        if let Err(e) = sim.step() {
            l.j.violate(format!("simulation error: {e}"));
            break;
        }
    }
    let expected_opens = 1 + crashes_planned(&l);
    if l.opens.get() < expected_opens {
        l.j.violate(format!(
            "the store was opened {} times, {expected_opens} expected",
            l.opens.get()
        ));
    }
    let (violations, trace) = l.j.take();
    StoreOutcome {
        seed,
        violations,
        acks: l.acked.borrow().len(),
        opens: l.opens.get(),
        append_errors: l.append_errors.get(),
        final_open: l.verified_last.get(),
        trace,
    }
}

fn crashes_planned(l: &Ledger) -> u64 {
    l.j.count_lines_ending("CRASH and restart") as u64
}
