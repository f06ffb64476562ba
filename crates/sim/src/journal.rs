//! The time-stamped trace and the violations of one seed, shared by the store and
//! replication simulations (the harness and the hosts write to it).

use std::cell::{Cell, RefCell};

/// One seed's trace and violations.
#[derive(Default)]
pub struct Journal {
    trace: RefCell<Vec<String>>,
    violations: RefCell<Vec<String>>,
    /// Simulated time (ms) as the harness last saw it, for lines written outside a host.
    now: Cell<u64>,
    /// The shape (digits dropped) of the last error traced: a run of one error is traced once.
    last_error: RefCell<String>,
}

impl Journal {
    /// Sets the time the harness is at (used when no host is running).
    pub fn set_now(&self, ms: u64) {
        self.now.set(ms);
    }

    /// Adds a line stamped with the simulated time.
    pub fn log(&self, line: &str) {
        let t = turmoil::sim_elapsed().map_or(self.now.get(), |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
        });
        self.trace.borrow_mut().push(format!("{t:>5} {line}"));
    }

    /// Traces `e` unless it repeats the previous error (numbers aside).
    pub fn error(&self, e: &str) {
        let shape: String = e.chars().filter(|c| !c.is_ascii_digit()).collect();
        if *self.last_error.borrow() != shape {
            self.log(e);
            *self.last_error.borrow_mut() = shape;
        }
    }

    /// Records a failed check (and traces it).
    pub fn violate(&self, v: String) {
        self.log(&format!("VIOLATION {v}"));
        self.violations.borrow_mut().push(v);
    }

    /// How many lines end with `suffix`.
    pub fn count_lines_ending(&self, suffix: &str) -> usize {
        self.trace
            .borrow()
            .iter()
            .filter(|t| t.ends_with(suffix))
            .count()
    }

    /// How many lines contain `pat`.
    pub fn count_containing(&self, pat: &str) -> usize {
        self.trace
            .borrow()
            .iter()
            .filter(|t| t.contains(pat))
            .count()
    }

    /// The violations and the trace, at the end of the seed.
    pub fn take(&self) -> (Vec<String>, Vec<String>) {
        (self.violations.take(), self.trace.take())
    }
}

/// A `u64` from the environment variable `name`, else `default` (seed counts of the tests).
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// What a seed of a simulation of the real code holds while it runs: the hosts' wall clock
/// is simulated time ([`crate::wall::sim_wall_ms`], skewed per host where a simulation says) and the broker's random draws follow the seed. Both
/// are undone when it drops.
pub struct SeedGuards {
    _wall: sofamq_store::clock::DrivenWallClock,
    _rng: sofamq_broker::clock::SeededRng,
}

/// Installs the [`SeedGuards`] of `seed` on this thread.
#[must_use = "the seed's clock and randomness hold only while the guards live"]
pub fn seed_guards(seed: u64) -> SeedGuards {
    SeedGuards {
        _wall: sofamq_store::clock::drive_wall_clock(crate::wall::sim_wall_ms),
        _rng: sofamq_broker::clock::seed_thread_rng(seed),
    }
}

/// The two-host world of the replication and consumer simulations: 1 ms ticks, message
/// latency from 1 ms up to 2–20 ms, and a disk whose unsynced writes tear in 4- or 512-byte
/// blocks and, on half the seeds, are sometimes flushed early (drawn from `rng` in this
/// order, so a seed's later draws do not move). Also returns the disk's settings as the
/// trace prints them (`block N os-flush P`).
pub fn two_host_world<'a>(
    seed: u64,
    rng: &mut rand::rngs::StdRng,
    duration: std::time::Duration,
) -> (turmoil::Sim<'a>, String) {
    use rand::Rng;
    use std::time::Duration;
    let mut b = turmoil::Builder::new();
    b.rng_seed(seed)
        .simulation_duration(duration)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(rng.random_range(2..20)));
    let block = if rng.random_bool(0.5) { 4 } else { 512 };
    let flush = if rng.random_bool(0.5) { 0.0 } else { 0.2 };
    b.fs().block_size(block).sync_probability(flush);
    (b.build(), format!("block {block} os-flush {flush}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_errors_are_traced_once_and_violations_kept() {
        let j = Journal::default();
        j.set_now(7);
        j.error("append failed at 10");
        j.error("append failed at 11");
        j.error("open failed");
        j.violate("lost 3".into());
        let (v, t) = j.take();
        assert_eq!(v, ["lost 3"]);
        assert_eq!(
            t,
            [
                "    7 append failed at 10",
                "    7 open failed",
                "    7 VIOLATION lost 3"
            ]
        );
        assert_eq!(j.count_lines_ending("x"), 0);
    }
}
