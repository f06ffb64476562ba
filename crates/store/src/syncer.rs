//! The sync thread of sync-flush mode: the second stage of the group commit.
//!
//! The writer encodes and writes a batch, hands it here and goes straight back to encoding
//! the next one; this thread issues the `fdatasync` that covers everything handed over so far,
//! then publishes the durable offset, dispatches the consume-queue entries and completes the
//! waiters. CPU work on batch N+1 thus overlaps the disk flush of batch N, and one fdatasync
//! covers every batch that arrived while the previous one ran.
//!
//! Failure rule: a failed fdatasync fences the log and fails every waiter handed over; once
//! the log is fenced no further fdatasync is attempted (it could report success for pages the
//! kernel already dropped), so later batches fail too.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use crate::StoreError;
use crate::cmd::Waiter;
use crate::cq::{ConsumeQueue, CqEntry};
use crate::log::{Shared, lock};
use crate::segment::Segment;

/// Written bytes up to `upto`, waiting for an fdatasync.
pub(crate) struct Batch {
    /// The segment the batch's last bytes went to (earlier segments were synced on roll).
    pub seg: Arc<Segment>,
    /// Log offset the batch ends at.
    pub upto: u64,
    pub waiters: Vec<Waiter>,
    pub dispatch: Vec<(Arc<ConsumeQueue>, CqEntry)>,
    pub records: u64,
}

pub(crate) enum SyncMsg {
    Batch(Batch),
    /// Replied to once every batch sent before it is completed (durable or failed).
    Barrier(mpsc::SyncSender<()>),
}

/// The thread body; returns when the writer drops its sender.
pub(crate) fn run(sh: &Shared, rx: &mpsc::Receiver<SyncMsg>) {
    let mut group: Vec<Batch> = Vec::new();
    let finish = |group: &mut Vec<Batch>| {
        let n = complete(sh, group, true);
        sh.sync_pending.fetch_sub(n as u64, Ordering::AcqRel);
    };
    while let Ok(first) = rx.recv() {
        let mut msgs = vec![first];
        msgs.extend(rx.try_iter());
        for m in msgs {
            match m {
                SyncMsg::Batch(b) => group.push(b),
                SyncMsg::Barrier(tx) => {
                    finish(&mut group);
                    let _ = tx.send(());
                }
            }
        }
        finish(&mut group);
    }
    finish(&mut group);
}

fn sync_all(sh: &Shared, group: &[Batch]) -> std::io::Result<()> {
    if let Some(e) = sh.faults.take_sync_failure() {
        return Err(e);
    }
    let mut last_start = None;
    for b in group {
        if last_start != Some(b.seg.start) {
            if !crate::mutant::active("skip-fdatasync") {
                b.seg.file.sync_data()?;
            }
            last_start = Some(b.seg.start);
        }
    }
    Ok(())
}

/// Completes `group` (written batches, oldest first): with `sync`, one fdatasync per segment
/// they touched, then the durable offset is published; then their consume-queue entries are
/// dispatched and their waiters answered. The one commit path: the sync thread runs it on the
/// batches handed to it, the writer on its own batch when nothing else is pending. A failed
/// fdatasync fences the log and fails every waiter. Returns how many batches it finished.
pub(crate) fn complete(sh: &Shared, group: &mut Vec<Batch>, sync: bool) -> usize {
    let n = group.len();
    let Some(upto) = group.last().map(|b| b.upto) else {
        return 0;
    };
    if sh.is_fenced() {
        fail(group, || sh.fenced_error());
        return n;
    }
    let c = &sh.counters;
    let durable = if sync {
        let t0 = std::time::Instant::now();
        if let Err(e) = sync_all(sh, group).or_else(|e| {
            if crate::mutant::active("fsync-error-ok") {
                tracing::error!(error = %e, "fdatasync failed; taken as done (mutant)");
                Ok(())
            } else {
                Err(e)
            }
        }) {
            sh.fence(format!("fdatasync failed: {e}"));
            fail(group, || StoreError::io_copy(&e));
            return n;
        }
        let before = sh.durable.fetch_max(upto, Ordering::AcqRel);
        c.fsync_done(t0.elapsed(), upto.saturating_sub(before));
        if sh.cfg.record_batch_sizes {
            lock(&sh.batch_sizes).push(upto.saturating_sub(before));
        }
        upto
    } else {
        // Async flush: written, not yet durable; a replica is told what is durable.
        sh.durable.load(Ordering::Acquire)
    };
    let mut records = 0;
    for b in group.iter_mut() {
        for (cq, e) in b.dispatch.drain(..) {
            cq.push(&e);
        }
        records += b.records;
    }
    sh.dispatched.fetch_max(upto, Ordering::AcqRel);
    c.batches.fetch_add(n as u64, Ordering::Relaxed);
    c.records.fetch_add(records, Ordering::Relaxed);
    for b in group.drain(..) {
        for w in b.waiters {
            w.succeed(durable);
        }
    }
    drop_behind(sh, durable);
    n
}

/// Drop-behind ([`crate::StoreConfig::drop_behind`]): drops the cached pages of the log from
/// where the last call stopped up to `lag` bytes behind `durable`, segment by segment, after
/// the waiters were answered. Skipped when another committing thread is at it.
fn drop_behind(sh: &Shared, durable: u64) {
    let Some(lag) = sh.cfg.drop_behind else {
        return;
    };
    let target = durable.saturating_sub(lag);
    let mut done = match sh.dropped_behind.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    if target <= *done {
        return;
    }
    let segs = sh.segments.read().unwrap_or_else(|p| p.into_inner());
    let first = segs.partition_point(|s| s.start <= *done).saturating_sub(1);
    for (i, seg) in segs.iter().enumerate().skip(first) {
        if seg.start >= target {
            break;
        }
        let end = segs.get(i + 1).map_or(u64::MAX, |next| next.start);
        let (from, to) = ((*done).max(seg.start), target.min(end));
        if to > from {
            seg.file.drop_cached(from - seg.start, to - from);
        }
    }
    *done = target;
}

fn fail(group: &mut Vec<Batch>, err: impl Fn() -> StoreError) {
    for b in group.drain(..) {
        for w in b.waiters {
            w.fail(err());
        }
    }
}
