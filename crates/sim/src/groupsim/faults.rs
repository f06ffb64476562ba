//! The faults a seed draws, what undoes each, and the overrides (stalls, disk latency)
//! that overlapping faults share.

use super::*;

/// Faults a seed draws.
#[derive(Debug, Clone, Copy)]
pub(super) enum Fault {
    /// Crash a broker (master or not) and restart it after the duration.
    CrashBroker(bool),
    /// Crash the controller and restart it after the duration.
    CrashController,
    /// Every broker loses power at once; all restart after the duration.
    PowerLoss,
    /// Cut the master from a slave.
    PartitionBrokers,
    /// Cut a broker (master or not) from the controller.
    PartitionController(bool),
    /// Cut a broker (master or not) from the producer.
    PartitionProducer(bool),
    /// A broker's heartbeats no longer reach the controller (the replies would still come).
    OneWayToController(bool),
    /// Hold every link of a broker (a pause), then deliver.
    Hold(bool),
    /// Cut the master from every other broker and the controller, not from the producer:
    /// it appends what it can no longer replicate until its lease runs out, and a new
    /// master is elected; once healed it must cut that tail.
    IsolateMaster,
    /// Cut the master from its last slave (which drops out of the in-sync set), then crash
    /// the master while the cut lasts: only an in-sync replica may replace it.
    LagThenCrash,
    /// A broker's fdatasyncs take 50 to 600 ms: its writes are replicated long before they
    /// are durable on it.
    SlowDisk(bool),
    /// A broker stalls (as a process paused by the OS): every link of it held, its disk
    /// taking the whole stall for one fdatasync, and its sends held where they are; then
    /// all of it goes on at once. It starts once the broker holds a send it admitted and
    /// has not appended yet (the window a stopped process leaves open), or at the given
    /// time (ms) at the latest.
    Stall(bool, u64),
}

/// Holds every link of host `h` (to the other brokers, the controller and the producer);
/// `undo` gets the releases.
pub(super) fn hold_every_link(
    sim: &turmoil::Sim<'_>,
    links: &mut Links,
    h: &str,
    n: u64,
    undo: &mut Vec<Heal>,
) {
    let others = (0..n)
        .map(host)
        .filter(|o| o != h)
        .chain([CTL.to_string(), PRODUCER.to_string()]);
    for o in others {
        links.hold(sim, h, o.as_str());
        undo.push(Heal::Release(h.to_string(), o));
    }
}

#[derive(Debug, Clone)]
pub(super) enum Heal {
    Restart(String),
    Repair(String, String),
    RepairOneway(String, String),
    Release(String, String),
    /// Ends the disk latency override with this key.
    DiskLatency(u64, u64),
    /// Ends the stall that lasts until then (a later one of the same broker stays).
    Unstall(u64, u64),
}

/// The stalls running: a crash ends its broker's (the process it stopped is gone, and the
/// one restarted runs).
#[derive(Default)]
pub(super) struct Stalls {
    /// Broker -> (until, disk override key).
    on: BTreeMap<u64, Vec<(u64, u64)>>,
}

impl Stalls {
    pub(super) fn began(&mut self, id: u64, until: u64, disk: &Heal) {
        if let Heal::DiskLatency(_, key) = disk {
            self.on.entry(id).or_default().push((until, *key));
        }
    }

    /// Broker `id` crashed: its stalls end now.
    pub(super) fn end(&mut self, l: &Ledger, disk_over: &mut DiskOverrides, id: u64) {
        for (until, key) in self.on.remove(&id).unwrap_or_default() {
            let mut stalled = l.stalled_until.borrow_mut();
            if stalled.get(&id) == Some(&until) {
                stalled.remove(&id);
            }
            drop(stalled);
            disk_over.pop(&l.disks, id, key);
        }
    }
}

/// The fdatasync latency overrides of each broker's disk (slow disks, stalls), which may
/// overlap: the latest one still running applies, else the seed's own latency.
pub(super) struct DiskOverrides {
    base: Duration,
    /// Per broker: (key, latency), oldest first.
    on: Vec<Vec<(u64, Duration)>>,
    next: u64,
}

impl DiskOverrides {
    pub(super) fn new(n: u64, base: Duration) -> Self {
        DiskOverrides {
            base,
            on: (0..n).map(|_| Vec::new()).collect(),
            next: 0,
        }
    }

    /// Sets broker `id`'s disk to `d`; the returned heal ends this override.
    pub(super) fn push(&mut self, disks: &[SimDisk], id: u64, d: Duration) -> Heal {
        self.next += 1;
        self.on[id as usize].push((self.next, d));
        disks[id as usize].set_sync_latency(d);
        Heal::DiskLatency(id, self.next)
    }

    /// Ends override `key` of broker `id`; returns the latency now in force.
    pub(super) fn pop(&mut self, disks: &[SimDisk], id: u64, key: u64) -> Duration {
        let on = &mut self.on[id as usize];
        on.retain(|(k, _)| *k != key);
        let d = on.last().map_or(self.base, |(_, d)| *d);
        disks[id as usize].set_sync_latency(d);
        d
    }
}
