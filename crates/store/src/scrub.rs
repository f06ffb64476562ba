//! The scrub thread: reads the durable log in the background, at a bounded rate, and checks
//! every record's CRC.
//!
//! Recovery verifies only what lies past the checkpoint, and a record is read again only when
//! a consumer or a replica asks for it, so a byte that rots in an old sealed segment could
//! otherwise sit unnoticed until the healthy copy is gone too. A pass walks the log from its
//! first segment up to the durable offset it saw when the pass began, record by record, then
//! rests for [`crate::StoreConfig::scrub_pause`] and begins again (new records are covered by
//! the next pass).
//!
//! Damage found here is handled as damage found on any read: [`Shared::fence_damaged`]. A
//! replica then cuts its log there and fetches the range again from its master; a master
//! stops taking writes and reports itself fenced, so the controller elects its in-sync slave
//! and the old master repairs itself as a slave.
//!
//! Each record below the dispatched offset is also checked against its consume-queue
//! entry; a queue that does not match the log is derived data, not damage to fence for:
//! [`Shared::queues_damaged`] has the next open rebuild every queue from the log.
//!
//! A truncation (a replica cutting its tail) can move record boundaries under a pass; the
//! pass then starts over instead of taking a moved boundary for damage.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::StoreError;
use crate::log::{Shared, lock};
use crate::record::{self, HEADER_LEN, MAX_RECORD_HARD};

/// How often the thread wakes to read its share of the rate.
const TICK: Duration = Duration::from_millis(100);
/// Largest single read.
const CHUNK: usize = 1024 * 1024;

/// Where a pass stands.
struct Pass {
    /// Next record boundary to verify.
    pos: u64,
    /// The durable offset when the pass began: the pass ends there.
    target: u64,
    /// [`Shared::truncations`] when the pass began.
    generation: u64,
}

/// What one step of reading found.
enum Found {
    /// Verified up to here (a record boundary).
    Upto(u64),
    /// A record that fails its checks, or cannot be read, at this offset.
    Damage(u64, String),
    /// A sound record whose consume-queue entry is missing or points elsewhere.
    QueueMismatch(String),
}

/// Sleeps `d` unless the store is closing; true once it is.
fn stop_after(sh: &Shared, d: Duration) -> bool {
    let g = lock(&sh.flusher_stop);
    let (g, _) = sh
        .flusher_cv
        .wait_timeout_while(g, d, |stop| !*stop)
        .unwrap_or_else(|p| p.into_inner());
    *g
}

/// The thread body; returns at once when the scrub is off (`scrub_bytes_per_sec` 0).
pub(crate) fn run(sh: &Shared) {
    let rate = sh.cfg.scrub_bytes_per_sec;
    if rate == 0 {
        return;
    }
    let per_tick = (rate as f64 * TICK.as_secs_f64()).max(HEADER_LEN as f64) as usize;
    let mut buf = Vec::new();
    let mut pass: Option<Pass> = None;
    let mut rest_until: Option<Instant> = None;
    loop {
        if stop_after(sh, TICK) {
            return;
        }
        if rest_until.is_some_and(|t| Instant::now() < t) {
            continue;
        }
        rest_until = None;
        // A fenced log is not read for more damage: what fenced it is known and repaired
        // (or not) as a whole; the pass starts over once it is writable again.
        if sh.is_fenced() {
            pass = None;
            continue;
        }
        let generation = sh.truncations.load(Ordering::Acquire);
        let p = match pass.take() {
            Some(p) if p.generation == generation => p,
            _ => Pass {
                pos: first_offset(sh),
                target: sh.durable.load(Ordering::Acquire),
                generation,
            },
        };
        match step(sh, p.pos, p.target, per_tick, &mut buf) {
            Found::Upto(pos) if pos >= p.target => {
                sh.counters
                    .scrub_bytes
                    .fetch_add(pos.saturating_sub(p.pos), Ordering::Relaxed);
                sh.counters.scrub_passes.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(upto = pos, "scrub pass complete");
                rest_until = Some(Instant::now() + sh.cfg.scrub_pause);
            }
            Found::Upto(pos) => {
                sh.counters
                    .scrub_bytes
                    .fetch_add(pos.saturating_sub(p.pos), Ordering::Relaxed);
                pass = Some(Pass { pos, ..p });
            }
            Found::QueueMismatch(why) => {
                // Not the log's damage: its derived index's. Only in a log nobody cut meanwhile.
                if sh.truncations.load(Ordering::Acquire) == p.generation {
                    sh.queues_damaged(format!("found by the scrub: {why}"));
                }
                pass = None;
                rest_until = Some(Instant::now() + sh.cfg.scrub_pause);
            }
            Found::Damage(at, why) => {
                // Only damage below what is durable now, in a log nobody cut meanwhile, is
                // damage: otherwise the pass read across a moving tail.
                if sh.truncations.load(Ordering::Acquire) == p.generation
                    && at < sh.durable.load(Ordering::Acquire)
                {
                    sh.counters.scrub_damage.fetch_add(1, Ordering::Relaxed);
                    sh.fence_damaged(
                        at,
                        format!("corrupt record at offset {at} found by the scrub: {why}"),
                    );
                }
            }
        }
    }
}

/// Why the consume-queue entry of record `m` (dispatched) does not point at it, if it
/// does not.
fn queue_mismatch(sh: &Shared, m: &record::ReplicaMeta<'_>) -> Option<String> {
    let what = format!(
        "record at {} ({}/{} offset {})",
        m.log_offset, m.topic, m.queue_id, m.queue_offset
    );
    let Some(cq) = sh.cqs.get(m.topic, m.queue_id) else {
        return Some(format!("{what}: its consume queue is missing"));
    };
    match cq.entries(m.queue_offset, 1) {
        Ok(e) => match e.first() {
            Some(e)
                if e.log_offset == m.log_offset
                    && e.size == m.size
                    && e.tag_hash == record::tag_hash(m.tag) =>
            {
                None
            }
            Some(e) => Some(format!(
                "{what}: its entry says offset {} size {} tag hash {:#x}",
                e.log_offset, e.size, e.tag_hash
            )),
            None => Some(format!("{what}: its entry is missing")),
        },
        // An unreadable queue file is as damaged as a wrong entry.
        Err(e) => Some(format!("{what}: its consume queue is unreadable: {e}")),
    }
}

/// The offset of the log's first byte (its first segment's start).
fn first_offset(sh: &Shared) -> u64 {
    let segs = sh.segments.read().unwrap_or_else(|p| p.into_inner());
    segs.first().map_or(0, |s| s.start)
}

/// Verifies whole records from `pos` (a record boundary) towards `target`, reading about
/// `budget` bytes (at least one record).
fn step(sh: &Shared, mut pos: u64, target: u64, budget: usize, buf: &mut Vec<u8>) -> Found {
    let mut read = 0usize;
    while pos < target && read < budget {
        let want = (budget - read).clamp(HEADER_LEN, CHUNK);
        let n = match sh.read_raw_into(pos, want, target, buf, 0) {
            Ok(n) => n,
            Err(StoreError::NotRecordBoundary(at)) => {
                return Found::Damage(at, "no valid record header".into());
            }
            Err(e) => return Found::Damage(pos, format!("unreadable: {e}")),
        };
        let dispatched = sh.dispatched.load(Ordering::Acquire);
        let mut p = 0usize;
        while p < n {
            match record::decode_replicated(&buf[p..n], MAX_RECORD_HARD) {
                Ok(m) if m.log_offset == pos + p as u64 => {
                    if m.log_offset + u64::from(m.size) <= dispatched
                        && let Some(why) = queue_mismatch(sh, &m)
                    {
                        return Found::QueueMismatch(why);
                    }
                    p += m.size as usize;
                }
                Ok(m) => {
                    return Found::Damage(
                        pos + p as u64,
                        format!("record claims offset {}", m.log_offset),
                    );
                }
                Err(e) => return Found::Damage(pos + p as u64, e.to_string()),
            }
        }
        pos += n as u64;
        read += n;
    }
    Found::Upto(pos)
}
