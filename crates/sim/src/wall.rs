//! The hosts' wall clocks (`sofamq_store::clock::now_ms`: record timestamps, timer and
//! invisibility deadlines) in a simulation: simulated time from a fixed epoch, and, for a
//! host given a [`WallSkew`], off by a constant, at its own rate and with one step (an NTP
//! step, a VM resumed after hours), as real hosts' clocks are.
//!
//! `now_ms` is driven per thread with a plain function, and turmoil's API does not name the
//! host running; what it does give is how long that host has run ([`turmoil::elapsed`])
//! beside the simulation's time ([`turmoil::sim_elapsed`]): their difference is when the
//! host was registered. A simulation that skews clocks registers its hosts one tick apart
//! and keys each skew by that time ([`skew_walls`]).

use std::cell::RefCell;
use std::marker::PhantomData;

/// 2026-01-01T00:00:00Z: simulated time zero on every unskewed wall clock.
pub const EPOCH_MS: i64 = 1_767_225_600_000;

/// How one host's wall clock differs from simulated time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WallSkew {
    /// Constant offset (ms).
    pub offset_ms: i64,
    /// How fast it runs against simulated time (the host's drift).
    pub rate: f64,
    /// From simulated time `.0` (ms) on, it is `.1` ms further off (either sign).
    pub step: Option<(u64, i64)>,
}

impl WallSkew {
    /// This clock at simulated time `sim_ms`, in ms since the Unix epoch.
    pub fn at(&self, sim_ms: u64) -> i64 {
        // Simulated runs last seconds: the f64 product is exact to well under a ms.
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        let run = (sim_ms as f64 * self.rate) as i64;
        let step = match self.step {
            Some((from, by)) if sim_ms >= from => by,
            _ => 0,
        };
        EPOCH_MS
            .saturating_add(run)
            .saturating_add(self.offset_ms)
            .saturating_add(step)
    }
}

thread_local! {
    /// The skewed hosts of this thread's simulation, by the simulated ms each was
    /// registered at.
    static SKEWS: RefCell<Vec<(u64, WallSkew)>> = const { RefCell::new(Vec::new()) };
}

/// The wall clock the hosts see (`sofamq_store::clock::drive_wall_clock` installs it):
/// [`EPOCH_MS`] plus simulated time, skewed for a host [`skew_walls`] names; outside a host,
/// [`EPOCH_MS`].
pub fn sim_wall_ms() -> i64 {
    let Some(sim) = turmoil::sim_elapsed() else {
        return EPOCH_MS;
    };
    let sim_ms = u64::try_from(sim.as_millis()).unwrap_or(u64::MAX);
    // A host is running (sim_elapsed answered): when it was registered.
    let born =
        u64::try_from(sim.saturating_sub(turmoil::elapsed()).as_millis()).unwrap_or(u64::MAX);
    let skew = SKEWS.with(|s| {
        s.borrow()
            .iter()
            .find(|(at, _)| *at == born)
            .map(|(_, k)| *k)
    });
    match skew {
        Some(k) => k.at(sim_ms),
        None => EPOCH_MS.saturating_add(i64::try_from(sim_ms).unwrap_or(i64::MAX)),
    }
}

/// Until the returned guard drops, the host registered at simulated ms `.0` reads its wall
/// clock skewed by `.1` (on this thread; hosts not named read simulated time).
#[must_use = "the clocks are skewed only while the guard lives"]
pub fn skew_walls(skews: Vec<(u64, WallSkew)>) -> SkewedWalls {
    SkewedWalls {
        prev: SKEWS.with(|s| s.replace(skews)),
        _thread: PhantomData,
    }
}

/// Restores the thread's previous skews when dropped (see [`skew_walls`]).
pub struct SkewedWalls {
    prev: Vec<(u64, WallSkew)>,
    /// Bound to the thread it was made on.
    _thread: PhantomData<*const ()>,
}

impl Drop for SkewedWalls {
    fn drop(&mut self) {
        SKEWS.with(|s| *s.borrow_mut() = std::mem::take(&mut self.prev));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::Duration;

    /// (host, simulated ms, its wall clock) as a host read it.
    type Reading = (&'static str, u64, i64);

    #[test]
    fn each_host_reads_its_own_skewed_clock_across_a_crash() {
        let _wall = sofamq_store::clock::drive_wall_clock(sim_wall_ms);
        let fast = WallSkew {
            offset_ms: -1_500,
            rate: 1.05,
            step: Some((300, 20 * 60_000)),
        };
        let _skews = skew_walls(vec![(1, fast)]);
        let seen: Rc<RefCell<Vec<Reading>>> = Rc::default();
        let mut sim = turmoil::Builder::new()
            .tick_duration(Duration::from_millis(1))
            .simulation_duration(Duration::from_secs(2))
            .build();
        for (i, name) in ["plain", "skewed"].into_iter().enumerate() {
            if i > 0 {
                sim.step().unwrap();
            }
            let seen = seen.clone();
            sim.host(name, move || {
                let seen = seen.clone();
                async move {
                    loop {
                        let t = turmoil::sim_elapsed().unwrap().as_millis();
                        let now = sofamq_store::clock::now_ms();
                        seen.borrow_mut().push((name, u64::try_from(t)?, now));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            });
        }
        for _ in 0..250 {
            sim.step().unwrap();
        }
        sim.crash("skewed");
        for _ in 0..100 {
            sim.step().unwrap();
        }
        sim.bounce("skewed");
        for _ in 0..200 {
            sim.step().unwrap();
        }
        let seen = seen.borrow();
        let mut skewed_after_restart = 0;
        for &(host, t, now) in seen.iter() {
            let want = if host == "skewed" {
                fast.at(t)
            } else {
                EPOCH_MS + i64::try_from(t).unwrap()
            };
            assert_eq!(now, want, "{host} at {t} ms");
            if host == "skewed" && t > 350 {
                skewed_after_restart += 1;
            }
        }
        assert!(skewed_after_restart >= 2, "{seen:?}");
        assert!(seen.iter().any(|s| s.0 == "plain"), "{seen:?}");
        assert_eq!(sim_wall_ms(), EPOCH_MS, "outside a host");
    }
}
