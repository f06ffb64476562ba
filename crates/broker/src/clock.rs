//! The broker's clocks and its randomness, each with a seam a simulator drives.
//!
//! [`Instant`] is the monotonic clock every decision reads. It is tokio's: the OS monotonic
//! clock in a normal build, and the runtime's clock when it is paused (`tokio::time::pause`,
//! a turmoil host), so a lease, the in-sync lag, the dedup window's ages, back-offs,
//! heartbeat periods and long polls run on simulated time under a simulator. Outside a
//! runtime (store threads) it reads the OS clock. Without tokio's `test-util` feature (the
//! `sofamq` binary's build) `Instant::now()` is `std::time::Instant::now()`; with it (tests,
//! the simulator) it costs one atomic load more until some runtime pauses its clock.
//!
//! [`now_ms`] is the wall clock (the store's, which a simulator drives per thread): it
//! stamps records and drives timers and invisibility, never safety.
//!
//! [`random`] is the broker's randomness a simulator must replay (the controller-follow
//! incarnation, the dedup window's hash seeds, the receipt-handle key): the OS-seeded thread
//! RNG, or a per-thread seeded one that only a simulator installs ([`seed_thread_rng`]).
//! Replication's handshake nonces never use it.

use std::cell::RefCell;
use std::marker::PhantomData;

use rand::distr::{Distribution, StandardUniform};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use sofamq_store::clock::now_ms;
pub use tokio::time::Instant;

thread_local! {
    static SEEDED: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// A random value: from this thread's seeded RNG while a [`seed_thread_rng`] guard lives,
/// else from the OS-seeded thread RNG.
pub fn random<T>() -> T
where
    StandardUniform: Distribution<T>,
{
    SEEDED.with(|s| match s.borrow_mut().as_mut() {
        Some(rng) => rng.random(),
        None => rand::random(),
    })
}

/// Until the returned guard drops, [`random`] on this thread draws from an RNG seeded with
/// `seed` (a simulator's seed), so the same calls return the same values every run.
#[must_use = "the RNG is seeded only while the guard lives"]
pub fn seed_thread_rng(seed: u64) -> SeededRng {
    SeededRng {
        prev: SEEDED.with(|s| s.replace(Some(StdRng::seed_from_u64(seed)))),
        _thread: PhantomData,
    }
}

/// Restores the thread's previous RNG when dropped (see [`seed_thread_rng`]).
pub struct SeededRng {
    prev: Option<StdRng>,
    /// Bound to the thread it was made on.
    _thread: PhantomData<*const ()>,
}

impl Drop for SeededRng {
    fn drop(&mut self) {
        let prev = self.prev.take();
        SEEDED.with(|s| *s.borrow_mut() = prev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_thread_draws_the_same_values_every_time() {
        let draw = |seed| {
            let _g = seed_thread_rng(seed);
            (random::<u64>(), random::<[u8; 32]>())
        };
        assert_eq!(draw(9), draw(9));
        assert_ne!(draw(9), draw(10));
        let _g = seed_thread_rng(9);
        let first: u64 = random();
        let elsewhere = std::thread::spawn(random::<u64>).join().unwrap();
        assert_ne!(first, elsewhere, "another thread is not seeded");
    }

    #[test]
    fn the_wall_clock_is_the_stores() {
        let _g = sofamq_store::clock::drive_wall_clock(|| 5);
        assert_eq!(now_ms(), 5);
    }
}
