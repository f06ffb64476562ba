//! The broker's clocks: the monotonic one every decision reads, and the wall clock its
//! records and deadlines use.
//!
//! [`Instant`] is tokio's: the OS monotonic clock in a normal build, and the runtime's
//! clock when it is paused (`tokio::time::pause`, a turmoil host), so a lease, the in-sync
//! lag, the dedup window's ages, back-offs, heartbeat periods and long polls run on
//! simulated time under a simulator. Outside a runtime (store threads) it reads the OS
//! clock. Without tokio's `test-util` feature `Instant::now()` is
//! `std::time::Instant::now()`; with it (tests, the simulator) it costs one atomic load
//! more until some runtime pauses its clock.

pub use tokio::time::Instant;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
