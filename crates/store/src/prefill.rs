//! Zero-filling the active segment ahead of the writer ([`StoreConfig::prefill`]).
//!
//! An append that grows a file makes every `fdatasync` commit a new file size through the
//! file system's journal. A write over bytes that already exist on the disk (allocated, zeroed
//! and synced) changes no metadata, so its `fdatasync` only flushes data: on the ext4 disks we
//! measured that is about a third cheaper, at every write size (docs/benchmarks.md). The
//! fill thread keeps a window of synced zeros past the writer's position in the active
//! segment; the writer's records overwrite them.
//!
//! # What stays true
//!
//! * The fill thread only ever writes past the segment file's current length, so it never
//!   touches a byte the writer wrote. `len` below is that length; it grows when the fill
//!   thread finishes a chunk or when the writer writes past it, and is reset wherever the
//!   file is cut (segment roll, truncation, a batch given back on a full disk). The writer
//!   writes past `len` only while no chunk is in flight (it waits for the one in flight:
//!   the `pwrite` of the zeros, not their `fdatasync`, which comes after).
//! * Correctness never depends on the fill: a record's durability comes from the writer's
//!   own `fdatasync`, whatever lies under it. The zeros past the log end are what recovery
//!   finds after a crash; it cuts them like a torn tail (see `recovery`), so only the last
//!   segment ever holds any.
//! * A rolled segment is cut to its records before the next one is created, and a clean
//!   close cuts the active one: closed stores have the same files as without the fill.
//! * A failed write of zeros stops the fill for the segment; a failed `fdatasync` fences the
//!   log, like any failed `fdatasync` of it (the kernel may have dropped the writer's dirty
//!   pages with it). The fill writes through its own handle on the segment, so such an
//!   error is reported to the writer's handle as well.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::StoreConfig;
use crate::io::{FileIo, OpenMode};
use crate::log::{Shared, lock};
use crate::segment::Segment;

/// Bytes written (then fsynced) per fill step. Small enough that the writer's fdatasync,
/// which writes back every dirty page of the file, rarely finds many zeros still dirty.
const CHUNK: u64 = 256 * 1024;
/// The log's write rate is measured over windows of this length.
const RATE_WINDOW: Duration = Duration::from_millis(250);
/// The window past the writer's position starts this small in a fresh segment and grows
/// with what was written into it, so a store that holds little never fills much.
const MIN_AHEAD: u64 = 64 * 1024;

/// What the writer and the fill thread share about the active segment.
pub(crate) struct FillState {
    /// The active segment (none before the writer starts).
    pub seg: Option<Arc<Segment>>,
    /// Length of the active segment's file.
    pub len: u64,
    /// End of the writer's bytes in the active segment (file relative).
    pub pos: u64,
    /// A chunk is being written past `len`.
    filling: bool,
    /// Filling gave up on this segment (a write failed).
    failed: bool,
    stop: bool,
}

impl FillState {
    /// After the caller cut or replaced the active segment: `seg` is now `len` bytes long,
    /// all of them the writer's.
    pub fn reset(&mut self, seg: Arc<Segment>, len: u64) {
        self.seg = Some(seg);
        self.len = len;
        self.pos = len;
        self.failed = false;
    }
}

/// The shared state and its condition variable (in [`Shared`]).
pub(crate) struct Prefill {
    state: Mutex<FillState>,
    cv: Condvar,
    /// The window in bytes (0: no fill).
    ahead: u64,
    /// No fill while the log is written faster than this, in bytes per second.
    max_rate: u64,
    segment_size: u64,
}

impl Prefill {
    pub fn new(cfg: &StoreConfig) -> Prefill {
        let on =
            matches!(cfg.flush, crate::FlushMode::Sync) && cfg.driver == crate::Driver::Threads;
        Prefill {
            state: Mutex::new(FillState {
                seg: None,
                len: 0,
                pos: 0,
                filling: false,
                failed: false,
                stop: false,
            }),
            cv: Condvar::new(),
            ahead: if on { cfg.prefill } else { 0 },
            max_rate: cfg.prefill_max_rate,
            segment_size: cfg.segment_size,
        }
    }

    /// Whether a fill thread is wanted.
    pub fn enabled(&self) -> bool {
        self.ahead > 0
    }

    /// The state with no chunk in flight: the caller may cut or replace the segment (and
    /// must then set `seg`, `len` and `pos`). The fill thread cannot start a chunk while the
    /// guard is held.
    pub fn quiet(&self) -> MutexGuard<'_, FillState> {
        let mut g = lock(&self.state);
        while g.filling {
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g
    }

    /// Makes `seg`, whose file is `len` bytes long with the writer's bytes ending at `pos`,
    /// the active segment.
    pub fn set_active(&self, seg: Arc<Segment>, len: u64, pos: u64) {
        let mut g = self.quiet();
        g.reset(seg, len);
        g.pos = pos;
    }

    /// Before the writer writes `n` bytes at `at` (file relative) of the active segment:
    /// waits for a chunk in flight if the write reaches past the file, and wakes the fill
    /// thread when the window runs short.
    pub fn before_write(&self, at: u64, n: u64) {
        let end = at + n;
        let mut g = lock(&self.state);
        if end > g.len {
            while g.filling {
                g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            g.len = end;
        }
        g.pos = end;
        let wake = self.enabled() && !g.filling && self.wants(&g);
        drop(g);
        if wake {
            self.cv.notify_all();
        }
    }

    /// Stops the fill thread (after its chunk in flight) and returns the state, quiet.
    pub fn stop(&self) -> MutexGuard<'_, FillState> {
        let mut g = self.quiet();
        g.stop = true;
        self.cv.notify_all();
        g
    }

    /// The window wanted past `pos`: it grows with the bytes written into the segment.
    fn window(&self, pos: u64) -> u64 {
        self.ahead.min(pos.max(MIN_AHEAD))
    }

    fn wants(&self, g: &FillState) -> bool {
        g.seg.is_some()
            && !g.failed
            && !g.stop
            && g.len < self.segment_size
            && g.len.saturating_sub(g.pos) < self.window(g.pos)
    }
}

/// Whether the log is being written faster than the cap, judged over the last window.
struct Rate {
    since: Instant,
    bytes: u64,
    hot: bool,
}

impl Rate {
    fn hot(&mut self, sh: &Shared) -> bool {
        let el = self.since.elapsed();
        if el >= RATE_WINDOW {
            let now = sh.counters.bytes.load(Ordering::Relaxed);
            let rate = now.saturating_sub(self.bytes) as f64 / el.as_secs_f64();
            self.hot = rate > sh.prefill.max_rate as f64;
            self.since = Instant::now();
            self.bytes = now;
        }
        self.hot
    }
}

/// The fill thread's body: fills while the window runs short, until stopped.
pub(crate) fn run(sh: &Shared) {
    let p = &sh.prefill;
    let zeros = vec![0u8; CHUNK as usize];
    let mut own: Option<(Arc<Segment>, Arc<dyn FileIo>)> = None;
    let mut rate = Rate {
        since: Instant::now(),
        bytes: sh.counters.bytes.load(Ordering::Relaxed),
        hot: false,
    };
    loop {
        let (seg, from, n) = {
            let mut g = lock(&p.state);
            loop {
                if g.stop {
                    return;
                }
                if p.wants(&g) && !sh.is_fenced() {
                    // Zeros double the bytes the disk writes: above the cap, the bandwidth
                    // they take is worth more than the journal commits they save.
                    if !rate.hot(sh) {
                        break;
                    }
                    g =
                        p.cv.wait_timeout(g, RATE_WINDOW)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    continue;
                }
                g = p.cv.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            let Some(seg) = g.seg.clone() else { continue };
            // Chunks end on 4 KiB boundaries, whatever length the writer left.
            let n = (CHUNK - g.len % 4096).min(p.segment_size - g.len);
            g.filling = true;
            (seg, g.len, n)
        };
        // Through a handle of its own: a write-back error that its fdatasync reports is then
        // still reported to the writer's handle too (the kernel reports such an error once
        // per open file), so no fdatasync of the writer's can succeed past it.
        let file = match &own {
            Some((s, f)) if Arc::ptr_eq(s, &seg) => Ok(f.clone()),
            _ => sh.cfg.fs.open(&seg.path, OpenMode::Write),
        };
        let wrote = file.and_then(|f| {
            own = Some((seg.clone(), f.clone()));
            match f.write_all_at(&zeros[..n as usize], from) {
                Ok(()) => Ok(f),
                Err(e) => {
                    // Give the space back; the writer appends as without the fill.
                    let _ = f.set_len(from);
                    Err(e)
                }
            }
        });
        let mut g = lock(&p.state);
        g.filling = false;
        let to_sync = match wrote {
            Ok(f) => {
                if g.seg.as_ref().is_some_and(|s| Arc::ptr_eq(s, &seg)) {
                    g.len = g.len.max(from + n);
                }
                Some(f)
            }
            Err(e) => {
                g.failed = true;
                tracing::warn!(error = %e, segment = seg.start, "zero-filling the commit log failed; appending without it");
                None
            }
        };
        drop(g);
        p.cv.notify_all();
        // The zeros are in place, so the writer may write over them from here on: the
        // fdatasync only makes their size and blocks durable ahead of the writer's own, and
        // the writer never waits for it.
        if let Some(f) = to_sync
            && let Err(e) = f.sync_data()
        {
            sh.fence(format!("fdatasync of the commit log failed: {e}"));
            lock(&p.state).failed = true;
        }
    }
}
