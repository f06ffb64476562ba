//! Deterministic simulation (turmoil, with its file-system shim) of a SofaMQ broker group's
//! failover. [`groupsim`] runs the real brokers (send path, store, replication, dedup,
//! controller-follow loop) with the controller's real rules ([`standin`]) under seeded
//! crashes, power loss, partitions and pauses; [`storesim`] and [`replsim`] the real store and
//! replication alone. The rest of this crate is the older model of a broker group:
//! one controller, two or three brokers and a producer, under crashes, partitions, held
//! links and process pauses drawn from a seed; then safety checks (see [`check`]).
//!
//! The brokers run the broker's real pure rules ([`rules`]: `decide` and `divergence`); the
//! controller runs the controller's real election rule (`sofamq_controller::logic::decide`)
//! and state-machine transition (`SmData::apply_command`), with Raft replaced by one node
//! that persists the applied state before it answers.
//!
//! Timeline of a run (simulated time): faults start in 2–27 s and each heals after
//! 0.2–6 s; at 30 s everything is healed; the producer stops at 34 s; at 42 s every broker
//! is crashed and restarted, so the checks at 43 s read only what was durable.
//!
//! As in the real broker, a master streams records it has written before its own fsync
//! completes (a per-seed fsync time); a crash loses or tears its unsynced writes, so a slave
//! can durably hold records its restarted master no longer has (cut by the epoch rule).
//!
//! Not modeled (see the crate's report for the full list): a multi-node Raft controller
//! (one node, crash = leader change), clock drift (all hosts share simulated time), the
//! broker's real send/replication/store code (a model of it runs the real rules), byte
//! offsets, consumers, idempotent retries, disk I/O errors, one-way partitions.

pub mod broker;
pub mod check;
pub mod controller;
pub mod disk;
pub mod faults;
pub mod groupsim;
pub mod journal;
pub mod log;
pub mod net;
pub mod producer;
pub mod replsim;
pub mod rules;
pub mod shared;
pub mod standin;
pub mod storesim;

use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use shared::Knobs;
use shared::{Shared, Timing, World};

/// End of the fault window (ms): everything is healed here.
const FAULTS_END: u64 = 30_000;
/// The producer stops sending (ms).
const PRODUCER_STOP: u64 = 34_000;
/// Every broker is crashed and restarted (unsynced data dropped) to read their disks (ms).
const FINAL_CRASH: u64 = 42_000;
/// The checks run (ms).
const END: u64 = 43_000;

/// The result of one seed.
#[derive(Debug)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Safety violations (empty: all checks passed).
    pub violations: Vec<String>,
    /// Number of receipts the producer got.
    pub acks: usize,
    /// The planned faults.
    pub plan: Vec<faults::Planned>,
    /// Time-stamped events.
    pub trace: Vec<String>,
}

impl Outcome {
    /// Trace lines containing `pat` (to see which paths a run exercised).
    pub fn count(&self, pat: &str) -> usize {
        self.trace.iter().filter(|l| l.contains(pat)).count()
    }

    /// A printable report: seed, violations, plan, and the trace's tail.
    pub fn report(&self, tail: usize) -> String {
        let t = &self.trace;
        format!(
            "seed {} ({} brokers) — {} violation(s), {} acks\n{}\nplan: {:#?}\ntrace (last {tail}):\n{}",
            self.seed,
            brokers_for(self.seed),
            self.violations.len(),
            self.acks,
            self.violations.join("\n"),
            self.plan,
            t[t.len().saturating_sub(tail)..].join("\n")
        )
    }
}

/// Brokers in the group for `seed`: even seeds run two (master + slave), odd seeds three
/// (where the in-sync set is a strict subset of the slaves and so decides who may win).
pub fn brokers_for(seed: u64) -> u64 {
    if seed.is_multiple_of(2) { 2 } else { 3 }
}

/// Runs one seed.
pub fn run_seed(seed: u64, knobs: Knobs) -> Outcome {
    let n = brokers_for(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let plan = faults::plan(&mut rng, 8, 2_000, FAULTS_END - 3_000);

    let max_latency = rng.random_range(2..60);
    let flush = if rng.random_bool(0.5) { 0.0 } else { 0.3 };
    // The master's fsync time: the window in which its slaves may hold a record it has
    // only written (and a crash loses).
    let fsync = rng.random_range(1..40);
    let sh: World = Rc::new(Shared {
        knobs,
        brokers: n,
        timing: Timing {
            fsync,
            ..Timing::default()
        },
        ..Shared::default()
    });
    sh.producer_stop.set(Duration::from_millis(PRODUCER_STOP));
    let mut b = turmoil::Builder::new();
    b.rng_seed(seed)
        .simulation_duration(Duration::from_millis(END + 10_000))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(max_latency));
    // Torn writes: a crash keeps a random number of 4-byte blocks of each unsynced write;
    // on half the seeds the "OS" also flushes unsynced writes at random.
    b.fs().block_size(4).sync_probability(flush);
    let mut sim = b.build();

    let s = sh.clone();
    sim.host("controller", move || controller::run(s.clone()));
    for id in 0..n {
        let s = sh.clone();
        sim.host(broker::host(id).as_str(), move || {
            broker::run(s.clone(), id)
        });
    }
    let s = sh.clone();
    sim.host("producer", move || producer::run(s.clone()));

    // (time, start index | heal index) events.
    let mut starts: Vec<(u64, usize)> = plan.iter().enumerate().map(|(i, p)| (p.at, i)).collect();
    starts.reverse();
    let mut heals: Vec<(u64, faults::Active)> = Vec::new();
    let mut active: BTreeSet<faults::Active> = BTreeSet::new();
    let mut violations = Vec::new();
    let mut final_crash_done = false;
    let mut healed_all = false;
    loop {
        let t = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
        if t >= END {
            break;
        }
        sh.clock.set(sim.elapsed());
        while let Some(&(at, i)) = starts.last() {
            if at > t {
                break;
            }
            starts.pop();
            if let Some(a) = faults::start(&mut sim, &sh, plan[i].fault, &active) {
                active.insert(a.clone());
                heals.push((t + plan[i].dur, a));
            }
        }
        let due: Vec<faults::Active> = heals
            .iter()
            .filter(|(at, _)| *at <= t || (t >= FAULTS_END))
            .map(|(_, a)| a.clone())
            .collect();
        if !due.is_empty() {
            heals.retain(|(at, _)| *at > t && t < FAULTS_END);
            for a in due {
                faults::heal(&mut sim, &sh, &a);
                active.remove(&a);
            }
        }
        if t >= FAULTS_END && !healed_all {
            healed_all = true;
            sh.log("faults", "all healed");
        }
        if t >= FINAL_CRASH && !final_crash_done {
            final_crash_done = true;
            sh.log("harness", "final crash + restart of every broker");
            sh.recovered.borrow_mut().clear();
            for id in 0..n {
                let h = broker::host(id);
                sim.crash(h.as_str());
                sim.bounce(h.as_str());
            }
        }
        if let Err(e) = sim.step() {
            violations.push(format!("simulation error: {e}"));
            break;
        }
    }
    let acks = sh.acks.borrow().clone();
    let view = sh.view.borrow().clone();
    let logs = sh.recovered.borrow().clone();
    if violations.is_empty() {
        violations = check::check(&acks, view.as_ref(), &logs);
    }
    let trace = sh.trace.borrow().clone();
    Outcome {
        seed,
        violations,
        acks: acks.len(),
        plan,
        trace,
    }
}
