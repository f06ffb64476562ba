//! The seeded random numbers of the chaos runs: fault timing, file damage and workload pacing
//! all draw from it, so a seed replays the same run.

use std::time::Duration;

/// A small deterministic RNG (xorshift64*), so a seed replays the same fault timing.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded (any seed, 0 included).
    pub fn new(seed: u64) -> Self {
        Rng((seed ^ 0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// A duration uniform in `lo_ms..=hi_ms`.
    pub fn ms(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        Duration::from_millis(lo_ms + self.below(hi_ms.saturating_sub(lo_ms) + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_draws_within_their_bounds() {
        let (mut a, mut b) = (Rng::new(0), Rng::new(0));
        let draws: Vec<u64> = (0..64).map(|_| a.next_u64()).collect();
        assert_eq!(draws, (0..64).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert!(draws.iter().any(|&d| d != draws[0]));
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
        assert_eq!(a.below(0), 0);
        for _ in 0..1000 {
            assert!(a.below(7) < 7);
            let d = a.ms(5, 9);
            assert!((Duration::from_millis(5)..=Duration::from_millis(9)).contains(&d));
        }
    }
}
