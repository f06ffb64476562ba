//! Unique message ids.
//!
//! Layout (21 bytes, 42 upper-case hex characters), in the spirit of the
//! RocketMQ 5 id: version `01` | 8-byte random per-process salt | 4-byte pid |
//! 4-byte seconds since 2021-01-01 UTC | 4-byte per-process counter.
//! The salt makes ids unique across hosts and processes (even with recycled
//! pids), the counter within a process, the seconds across counter wraps.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds from the Unix epoch to 2021-01-01T00:00:00Z.
const EPOCH_2021: u64 = 1_609_459_200;
const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Generates unique message ids; cheap and safe to share between threads.
#[derive(Debug)]
pub struct MessageIdGenerator {
    /// Version byte, salt and pid (fixed for the generator's life) in hex:
    /// the first 26 characters of every id.
    prefix_hex: [u8; 26],
    counter: AtomicU32,
}

impl Default for MessageIdGenerator {
    fn default() -> Self {
        Self::new()
    }
}

impl MessageIdGenerator {
    /// A generator with a fresh random salt.
    pub fn new() -> Self {
        let salt = random_u64();
        let mut prefix = [0u8; 13];
        prefix[0] = 0x01;
        prefix[1..9].copy_from_slice(&salt.to_be_bytes());
        prefix[9..13].copy_from_slice(&std::process::id().to_be_bytes());
        let mut prefix_hex = [0u8; 26];
        for (i, b) in prefix.iter().enumerate() {
            prefix_hex[2 * i] = HEX[(b >> 4) as usize];
            prefix_hex[2 * i + 1] = HEX[(b & 0xf) as usize];
        }
        Self {
            prefix_hex,
            counter: AtomicU32::new(random_u64() as u32),
        }
    }

    /// The next id: 42 upper-case hex characters.
    pub fn next_id(&self) -> String {
        self.next_id_at(SystemTime::now())
    }

    /// The next id, with `now` as its time.
    pub(crate) fn next_id_at(&self, now: SystemTime) -> String {
        let seq = self.counter.fetch_add(1, Ordering::Relaxed);
        let secs = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs().saturating_sub(EPOCH_2021))
            .unwrap_or(0) as u32;
        let mut out = [0u8; 42];
        out[..26].copy_from_slice(&self.prefix_hex);
        hex_u32(secs, &mut out[26..34]);
        hex_u32(seq, &mut out[34..]);
        // Always ASCII.
        std::str::from_utf8(&out)
            .map(str::to_owned)
            .unwrap_or_default()
    }
}

/// Writes `v` as 8 upper-case hex digits, big-endian.
fn hex_u32(v: u32, out: &mut [u8]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = HEX[((v >> (28 - 4 * i)) & 0xf) as usize];
    }
}

/// 64 random bits, from the OS-seeded keys of std's `RandomState`, mixed
/// with the time, the pid and a stack address.
pub(crate) fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    let local = 0u8;
    h.write_usize(std::ptr::addr_of!(local) as usize);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_long_upper_hex() {
        let id = MessageIdGenerator::new().next_id();
        assert_eq!(id.len(), 42);
        assert!(id.starts_with("01"));
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        );
    }

    #[test]
    fn ids_are_unique_within_and_across_generators() {
        let a = MessageIdGenerator::new();
        let b = MessageIdGenerator::new();
        // Two generators (as two processes would have) never share a salt.
        assert_ne!(a.prefix_hex, b.prefix_hex);
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(a.next_id()));
            assert!(seen.insert(b.next_id()));
        }
    }

    #[test]
    fn ids_are_unique_across_threads() {
        let g = std::sync::Arc::new(MessageIdGenerator::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..5_000).map(|_| g.next_id()).collect::<Vec<_>>())
            })
            .collect();
        let mut seen = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(seen.insert(id));
            }
        }
        assert_eq!(seen.len(), 20_000);
    }
}
