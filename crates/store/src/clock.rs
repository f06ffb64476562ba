//! The wall clock (milliseconds since the Unix epoch) of the store and the broker: record
//! timestamps, timer and invisibility deadlines. A simulator drives it per thread
//! ([`drive_wall_clock`]) so a seed stamps the same times every run; everywhere else it is
//! the OS clock. Decisions that need monotonic time do not read it.

use std::cell::Cell;
use std::marker::PhantomData;

thread_local! {
    static DRIVEN: Cell<Option<fn() -> i64>> = const { Cell::new(None) };
}

/// Milliseconds since the Unix epoch: the OS clock, or this thread's driver if one is set.
pub fn now_ms() -> i64 {
    if let Some(f) = DRIVEN.with(Cell::get) {
        return f();
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Until the returned guard drops, [`now_ms`] on this thread returns `f()` (a simulator's
/// time). Guards nest: dropping one restores the driver before it.
#[must_use = "the wall clock is driven only while the guard lives"]
pub fn drive_wall_clock(f: fn() -> i64) -> DrivenWallClock {
    DrivenWallClock {
        prev: DRIVEN.with(|d| d.replace(Some(f))),
        _thread: PhantomData,
    }
}

/// Restores the thread's previous wall clock when dropped (see [`drive_wall_clock`]).
pub struct DrivenWallClock {
    prev: Option<fn() -> i64>,
    /// Bound to the thread it was made on.
    _thread: PhantomData<*const ()>,
}

impl Drop for DrivenWallClock {
    fn drop(&mut self) {
        DRIVEN.with(|d| d.set(self.prev));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driven_clock_is_read_on_its_thread_only_and_restored() {
        let os = now_ms();
        assert!(os > 1_600_000_000_000, "{os}");
        {
            let _g = drive_wall_clock(|| 42);
            assert_eq!(now_ms(), 42);
            {
                let _inner = drive_wall_clock(|| 7);
                assert_eq!(now_ms(), 7);
            }
            assert_eq!(now_ms(), 42);
            let other = std::thread::spawn(now_ms).join().unwrap();
            assert!(other >= os, "another thread reads the OS clock: {other}");
        }
        assert!(now_ms() >= os);
    }
}
