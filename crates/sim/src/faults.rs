//! Faults per seed: a bounded number of crashes, partitions, held links and process pauses
//! at random times in the fault window, each healed after a random duration; everything is
//! healed at the end of the window. Link faults and pauses name a role (master / slave),
//! resolved to a broker from the controller's committed view when the fault starts.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use turmoil::Sim;

use crate::broker::host;
use crate::shared::World;

/// A broker named by its role when the fault starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// The committed master (broker 0 when there is none).
    Master,
    /// The broker after the master (by id, wrapping).
    Slave,
}

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Crash a broker (unsynced writes lost), restart it at the end.
    CrashBroker(Who),
    /// Crash the controller, restart it at the end.
    CrashController,
    /// Drop everything between the master and a slave.
    PartitionBrokers,
    /// Drop everything between a broker and the controller.
    PartitionController(Who),
    /// Drop everything between the producer and a broker.
    PartitionProducer(Who),
    /// Hold (delay, then deliver) everything between a broker and all other hosts.
    HoldBroker(Who),
    /// Stall a broker process (no heartbeats, fetches or receipts) for the duration.
    Pause(Who),
}

/// A fault with its start and duration (ms of simulated time).
#[derive(Debug, Clone, Copy)]
pub struct Planned {
    /// Start.
    pub at: u64,
    /// Duration.
    pub dur: u64,
    /// What.
    pub fault: Fault,
}

/// Draws a schedule: `1..=max` faults starting within `[from, to)`.
pub fn plan(rng: &mut StdRng, max: usize, from: u64, to: u64) -> Vec<Planned> {
    let n = rng.random_range(1..=max);
    let mut v: Vec<Planned> = (0..n)
        .map(|_| {
            let who = if rng.random_bool(0.7) {
                Who::Master
            } else {
                Who::Slave
            };
            let fault = match rng.random_range(0..8) {
                0 | 1 => Fault::CrashBroker(who),
                2 => Fault::CrashController,
                3 => Fault::PartitionBrokers,
                4 => Fault::PartitionController(who),
                5 => Fault::PartitionProducer(who),
                6 => Fault::HoldBroker(who),
                _ => Fault::Pause(who),
            };
            Planned {
                at: rng.random_range(from..to),
                dur: rng.random_range(200..6000),
                fault,
            }
        })
        .collect();
    v.sort_by_key(|p| p.at);
    v
}

/// A fault in effect, to be healed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Active {
    /// Host down.
    Down(String),
    /// Link partitioned.
    Cut(String, String),
    /// Host's links held.
    Held(String),
    /// Broker paused.
    Paused(u64),
}

/// Every host of the run.
fn hosts(sh: &World) -> Vec<String> {
    let mut v: Vec<String> = (0..sh.brokers).map(host).collect();
    v.push("controller".into());
    v.push("producer".into());
    v
}

fn resolve(sh: &World, who: Who) -> u64 {
    let m = sh
        .view
        .borrow()
        .as_ref()
        .and_then(|v| v.master)
        .unwrap_or(0);
    match who {
        Who::Master => m,
        Who::Slave => (m + 1) % sh.brokers.max(1),
    }
}

fn overlaps(active: &BTreeSet<Active>, a: &Active) -> bool {
    let hosts = |x: &Active| -> Vec<String> {
        match x {
            Active::Down(h) | Active::Held(h) => vec![h.clone()],
            Active::Cut(a, b) => vec![a.clone(), b.clone()],
            Active::Paused(b) => vec![host(*b)],
        }
    };
    let mine = hosts(a);
    active.iter().any(|x| match (x, a) {
        (Active::Cut(p, q), Active::Cut(r, s)) => (p, q) == (r, s) || (p, q) == (s, r),
        (Active::Held(_), _) | (_, Active::Held(_)) => hosts(x).iter().any(|h| mine.contains(h)),
        _ => x == a,
    })
}

/// Starts a fault; returns what must be healed (None when skipped).
pub fn start(sim: &mut Sim<'_>, sh: &World, f: Fault, active: &BTreeSet<Active>) -> Option<Active> {
    let a = match f {
        Fault::CrashBroker(w) => Active::Down(host(resolve(sh, w))),
        Fault::CrashController => Active::Down("controller".into()),
        Fault::PartitionBrokers => Active::Cut(
            host(resolve(sh, Who::Master)),
            host(resolve(sh, Who::Slave)),
        ),
        Fault::PartitionController(w) => Active::Cut(host(resolve(sh, w)), "controller".into()),
        Fault::PartitionProducer(w) => Active::Cut("producer".into(), host(resolve(sh, w))),
        Fault::HoldBroker(w) => Active::Held(host(resolve(sh, w))),
        Fault::Pause(w) => Active::Paused(resolve(sh, w)),
    };
    if overlaps(active, &a) {
        sh.log("faults", format!("skip {f:?}: overlaps an active fault"));
        return None;
    }
    sh.log("faults", format!("START {a:?}"));
    match &a {
        Active::Down(h) => sim.crash(h.as_str()),
        Active::Cut(x, y) => sim.partition(x.as_str(), y.as_str()),
        Active::Held(h) => {
            for o in hosts(sh).iter().filter(|o| *o != h) {
                sim.hold(h.as_str(), o.as_str());
            }
        }
        Active::Paused(b) => {
            sh.paused_until
                .borrow_mut()
                .insert(*b, Duration::from_secs(3600));
        }
    }
    Some(a)
}

/// Heals a fault.
pub fn heal(sim: &mut Sim<'_>, sh: &World, a: &Active) {
    sh.log("faults", format!("HEAL  {a:?}"));
    match a {
        Active::Down(h) => sim.bounce(h.as_str()),
        Active::Cut(x, y) => sim.repair(x.as_str(), y.as_str()),
        Active::Held(h) => {
            for o in hosts(sh).iter().filter(|o| *o != h) {
                sim.release(h.as_str(), o.as_str());
            }
        }
        Active::Paused(b) => {
            sh.paused_until.borrow_mut().remove(b);
        }
    }
}
