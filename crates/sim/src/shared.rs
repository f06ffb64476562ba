//! What the simulated hosts share with the harness: the knobs and timings, the trace, the
//! producer's receipts, and what each broker recovered from disk at its last start. The
//! harness only observes through it (and sets pauses); hosts never use it to talk to each
//! other — they talk over simulated TCP.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use sofamq_controller::GroupState;
use sofamq_store::EpochEntry;

use crate::log::Rec;

/// Rule-breaking switches, to show the checker catches what they break.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Knobs {
    /// The master acks a send right after its own fsync, without waiting for any slave.
    pub ack_before_replication: bool,
    /// On failover the controller elects the live broker with the shortest log, in sync or
    /// not (the real logic decides *when*; this knob overrides *whom*).
    pub unclean_election: bool,
    /// The master acks once the slaves hold a record, without its own fsync (it streams
    /// written records, so slaves can be ahead of it).
    pub ack_before_fsync: bool,
}

/// Timings (milliseconds of simulated time).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Broker heartbeat period.
    pub heartbeat: u64,
    /// Lease granted by a heartbeat reply, counted from the heartbeat's send time.
    pub lease: u64,
    /// Controller: silence after which a master is replaced; also how long a restarted
    /// controller waits before electing.
    pub master_timeout: u64,
    /// Slave fetch period.
    pub fetch: u64,
    /// How long a master's fsync takes (between writing a record and its being durable).
    pub fsync: u64,
    /// A slave that has not caught up within this leaves the master's local in-sync set.
    pub max_lag: u64,
    /// How long a send waits for slave acks.
    pub ack_wait: u64,
    /// RPC deadline.
    pub rpc: u64,
}

impl Timing {
    /// Controller: silence after which a master is replaced when a live in-sync slave
    /// reports it unreachable; the lease plus a fifth of the gap to the master timeout, as
    /// the real controller's default.
    pub fn refused_timeout(&self) -> u64 {
        self.lease + self.master_timeout.saturating_sub(self.lease) / 5
    }
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat: 300,
            lease: 1000,
            master_timeout: 2000,
            fetch: 50,
            fsync: 5,
            max_lag: 1000,
            ack_wait: 1000,
            rpc: 500,
        }
    }
}

/// A receipt the producer actually received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Message id.
    pub id: u64,
    /// Epoch in the receipt.
    pub epoch: u64,
    /// Broker id in the receipt.
    pub broker: u64,
    /// Broker id of the host the send went to.
    pub host: u64,
    /// Simulated time (ms) of the receipt.
    pub at_ms: u64,
}

/// A broker's durable state as it recovered it from its files.
#[derive(Debug, Clone, Default)]
pub struct Durable {
    /// Records.
    pub recs: Vec<Rec>,
    /// Epoch history.
    pub hist: Vec<EpochEntry>,
    /// Simulated time (ms) of the recovery.
    pub at_ms: u64,
}

/// Shared observation state of one simulation run.
#[derive(Debug, Default)]
pub struct Shared {
    /// Rule-breaking switches.
    pub knobs: Knobs,
    /// Timings.
    pub timing: Timing,
    /// Number of brokers in the group (ids `0..brokers`, hosts `b0`, `b1`...).
    pub brokers: u64,
    /// Time-stamped events.
    pub trace: RefCell<Vec<String>>,
    /// Receipts the producer got.
    pub acks: RefCell<Vec<Ack>>,
    /// The controller's committed view, as last persisted.
    pub view: RefCell<Option<GroupState>>,
    /// Per broker: what it recovered at its last start.
    pub recovered: RefCell<BTreeMap<u64, Durable>>,
    /// Per broker: paused (no progress at all) until this simulated time.
    pub paused_until: RefCell<BTreeMap<u64, Duration>>,
    /// The producer sends nothing from this simulated time on.
    pub producer_stop: Cell<Duration>,
    /// Counter for process incarnations.
    pub incarnations: Cell<u64>,
    /// The harness's simulated time, for trace lines written outside any host.
    pub clock: Cell<Duration>,
}

/// Handle shared by all hosts of one run.
pub type World = Rc<Shared>;

/// Simulated time now (zero outside the simulation).
pub fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// Simulated time now as a `std::time::Instant` (a fixed process-wide base plus the
/// simulated time), for the controller's pure logic, which takes std instants. Only
/// differences between such instants are ever used, so runs stay deterministic.
pub fn instant() -> std::time::Instant {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(std::time::Instant::now) + now()
}

/// Milliseconds of simulated time now.
pub fn now_ms() -> u64 {
    u64::try_from(now().as_millis()).unwrap_or(u64::MAX)
}

impl Shared {
    /// Appends a trace line.
    pub fn log(&self, who: &str, msg: impl AsRef<str>) {
        let t = turmoil::sim_elapsed().unwrap_or(self.clock.get());
        self.trace.borrow_mut().push(format!(
            "{:>6}.{:03}s {who:<10} {}",
            t.as_secs(),
            t.subsec_millis(),
            msg.as_ref()
        ));
    }

    /// A fresh incarnation number.
    pub fn incarnation(&self) -> u64 {
        let n = self.incarnations.get() + 1;
        self.incarnations.set(n);
        n
    }

    /// Waits while broker `me` is paused.
    pub async fn gate(&self, me: u64) {
        loop {
            let until = self.paused_until.borrow().get(&me).copied();
            match until {
                Some(u) if now() < u => {
                    tokio::time::sleep((u - now()).min(Duration::from_millis(10))).await;
                }
                _ => return,
            }
        }
    }
}
