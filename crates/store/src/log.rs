//! State shared between the store handle, the writer and the flusher, and the log read paths.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use bytes::Bytes;

use crate::StoreError;
use crate::checkpoint::Checkpoint;
use crate::cmd::Cmd;
use crate::config::StoreConfig;
use crate::cq::ConsumeQueues;
use crate::epoch::EpochHistory;
use crate::record::{self, DecodeError, HEADER_LEN, MAX_RECORD_HARD, Record};
use crate::segment::Segment;

/// Writer counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub fsyncs: AtomicU64,
    pub batches: AtomicU64,
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    /// fdatasync latency: per-bucket counts (see [`crate::FSYNC_BUCKETS_US`]), sum in ns.
    pub fsync_buckets: [AtomicU64; crate::FSYNC_BUCKETS_US.len() + 1],
    pub fsync_nanos: AtomicU64,
    /// Bytes made durable by the fsyncs counted above (average batch = this / fsyncs).
    pub synced_bytes: AtomicU64,
    /// Batches given back because a write found the disk full.
    pub no_space: AtomicU64,
    /// Scrub passes completed over the whole durable log.
    pub scrub_passes: AtomicU64,
    /// Bytes the scrub verified.
    pub scrub_bytes: AtomicU64,
    /// Damaged records the scrub found.
    pub scrub_damage: AtomicU64,
}

impl Counters {
    /// Records one successful fdatasync that took `took` and covered `bytes` new bytes.
    pub fn fsync_done(&self, took: std::time::Duration, bytes: u64) {
        let us = took.as_micros() as u64;
        let i = crate::FSYNC_BUCKETS_US.partition_point(|b| *b < us);
        self.fsync_buckets[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.fsync_nanos.fetch_add(
            took.as_nanos().min(u128::from(u64::MAX)) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.synced_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        self.fsyncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Fault-injection switches (tests only).
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub fail_next_write: AtomicBool,
    /// The next segment write stops halfway with ENOSPC.
    pub no_space_next_write: AtomicBool,
    pub fail_next_sync: AtomicBool,
    /// The next segment fdatasync fails with ENOSPC.
    pub no_space_next_sync: AtomicBool,
    /// The next segment fdatasync first sleeps this many milliseconds (0: none).
    pub slow_next_sync_ms: AtomicU64,
}

impl Faults {
    /// The injected fsync failure, if one is armed; first sleeps an armed delay.
    pub fn take_sync_failure(&self) -> Option<std::io::Error> {
        let ms = self.slow_next_sync_ms.swap(0, Ordering::AcqRel);
        if ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        if self.fail_next_sync.swap(false, Ordering::AcqRel) {
            return Some(std::io::Error::other("injected fsync failure"));
        }
        self.no_space_next_sync
            .swap(false, Ordering::AcqRel)
            .then(|| std::io::Error::from_raw_os_error(28)) // ENOSPC
    }
}

/// The writer's inbox.
#[derive(Default)]
pub(crate) struct Inbox {
    pub cmds: Vec<Cmd>,
    pub shutdown: bool,
    /// The writer is (about to be) blocked on the condvar and needs a notify.
    pub writer_waiting: bool,
}

pub(crate) struct Shared {
    pub cfg: StoreConfig,
    pub log_dir: PathBuf,
    pub segments: RwLock<Vec<Arc<Segment>>>,
    /// Bytes written to segment files: handed to the OS by `pwrite`, durable only once
    /// [`Shared::durable`] covers them (a machine crash may lose the rest).
    pub log_end: AtomicU64,
    /// Notified (`notify_waiters`) whenever `log_end` grows: wakes the replication streamer,
    /// which sends written bytes before they are durable.
    pub written_notify: Arc<tokio::sync::Notify>,
    /// Sees each write right after its `pwrite` ([`crate::WriteTap`]).
    pub tap: RwLock<Option<Arc<dyn crate::WriteTap>>>,
    /// Bytes covered by a completed fdatasync.
    pub durable: AtomicU64,
    /// Records below this have their consume-queue entries dispatched.
    pub dispatched: AtomicU64,
    /// Batches handed to the sync thread and not yet completed.
    pub sync_pending: AtomicU64,
    /// Replication limit; `u64::MAX` = none.
    pub repl_limit: AtomicU64,
    fenced_flag: AtomicBool,
    fence_reason: Mutex<Option<String>>,
    /// Lowest log offset known damaged (a CRC failure or a gap below the durable offset),
    /// when that is why the log is fenced: [`crate::Store::cut_damage`] can then cut there
    /// so the range is fetched again from a healthy replica.
    damage: Mutex<Option<u64>>,
    pub cqs: ConsumeQueues,
    pub epochs: Mutex<EpochHistory>,
    pub current_epoch: AtomicU64,
    /// Serialises checkpoint writers; holds the last checkpoint written.
    pub ckpt: Mutex<Checkpoint>,
    pub counters: Counters,
    pub faults: Faults,
    pub inbox: Mutex<Inbox>,
    pub inbox_cv: Condvar,
    pub batch_sizes: Mutex<Vec<u64>>,
    /// Set (and `flusher_cv` notified) when the store closes: stops the flusher and the
    /// scrub.
    pub flusher_stop: Mutex<bool>,
    pub flusher_cv: Condvar,
    /// Drop-behind ([`StoreConfig::drop_behind`]): log offset below which cached pages were
    /// dropped.
    pub dropped_behind: Mutex<u64>,
    /// Counts truncations and damage cuts: record boundaries past the cut may have moved.
    pub truncations: AtomicU64,
    /// Why a consume queue was found not to match the log, once it was (see
    /// [`Shared::queues_damaged`]).
    queue_damage: Mutex<Option<String>>,
    /// Zero-fill ahead of the writer in the active segment.
    pub prefill: crate::prefill::Prefill,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: StoreConfig,
        segments: Vec<Arc<Segment>>,
        log_end: u64,
        cqs: ConsumeQueues,
        epochs: EpochHistory,
        ckpt: Checkpoint,
        fenced: Option<String>,
        damage: Option<u64>,
    ) -> Shared {
        let epoch = epochs.current();
        Shared {
            log_dir: cfg.dir.join("commitlog"),
            segments: RwLock::new(segments),
            log_end: AtomicU64::new(log_end),
            written_notify: Arc::new(tokio::sync::Notify::new()),
            tap: RwLock::new(None),
            durable: AtomicU64::new(log_end),
            dropped_behind: Mutex::new(log_end),
            dispatched: AtomicU64::new(log_end),
            sync_pending: AtomicU64::new(0),
            // A master's limit survives its restart: it reads no further than its slaves had
            // acknowledged, until they acknowledge more (or it becomes a slave).
            repl_limit: AtomicU64::new(ckpt.replicated),
            fenced_flag: AtomicBool::new(fenced.is_some()),
            fence_reason: Mutex::new(fenced),
            damage: Mutex::new(damage),
            cqs,
            epochs: Mutex::new(epochs),
            current_epoch: AtomicU64::new(epoch),
            ckpt: Mutex::new(ckpt),
            counters: Counters::default(),
            faults: Faults::default(),
            inbox: Mutex::new(Inbox::default()),
            inbox_cv: Condvar::new(),
            batch_sizes: Mutex::new(Vec::new()),
            flusher_stop: Mutex::new(false),
            flusher_cv: Condvar::new(),
            truncations: AtomicU64::new(0),
            queue_damage: Mutex::new(None),
            prefill: crate::prefill::Prefill::new(&cfg),
            cfg,
        }
    }

    /// Fences the log (first reason wins) and logs the reason at ERROR.
    pub fn fence(&self, reason: String) {
        let mut r = lock(&self.fence_reason);
        if r.is_none() {
            tracing::error!(reason = %reason, "commit log fenced: appends refused");
            *r = Some(reason);
            self.fenced_flag.store(true, Ordering::Release);
        }
    }

    /// Fences the log because the bytes at `offset` are damaged, and remembers the lowest
    /// damaged offset. A log already fenced for another reason (an I/O error) stays so
    /// without a damage offset: cutting it would not make it writable.
    pub fn fence_damaged(&self, offset: u64, reason: String) {
        let mut r = lock(&self.fence_reason);
        let mut d = lock(&self.damage);
        match (&*r, *d) {
            (None, _) => {
                tracing::error!(reason = %reason, offset, "commit log fenced: damaged range");
                *r = Some(reason);
                *d = Some(offset);
                self.fenced_flag.store(true, Ordering::Release);
            }
            (Some(_), Some(at)) if offset < at => *d = Some(offset),
            _ => {}
        }
    }

    /// A consume queue does not match the log (found on a read or by the scrub). Queues are
    /// derived data: the `rebuild-queues` marker is written durably, so the next open
    /// rebuilds every queue from the log. Said once.
    pub fn queues_damaged(&self, reason: String) {
        let mut g = lock(&self.queue_damage);
        if g.is_some() {
            return;
        }
        let marker = self.cfg.dir.join(crate::recovery::REBUILD_MARKER);
        let written = self
            .cfg
            .fs
            .write_synced(&marker, reason.as_bytes())
            .and_then(|()| self.cfg.fs.sync_dir(&self.cfg.dir));
        match written {
            Ok(()) => tracing::error!(
                reason = %reason,
                "consume queue damaged: every consume queue is rebuilt from the log at the next start"
            ),
            Err(e) => tracing::error!(
                reason = %reason,
                error = %e,
                "consume queue damaged, and the rebuild marker could not be written"
            ),
        }
        *g = Some(reason);
    }

    /// Why a consume queue was found damaged since the store opened, if it was.
    pub fn queue_damage(&self) -> Option<String> {
        lock(&self.queue_damage).clone()
    }

    /// The lowest damaged offset, when damage is why the log is fenced.
    pub fn damage(&self) -> Option<u64> {
        *lock(&self.damage)
    }

    /// Lifts the fence after the damaged range was cut.
    pub fn unfence_repaired(&self) {
        let mut r = lock(&self.fence_reason);
        let mut d = lock(&self.damage);
        *r = None;
        *d = None;
        self.fenced_flag.store(false, Ordering::Release);
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced_flag.load(Ordering::Acquire)
    }

    pub fn fence_reason(&self) -> Option<String> {
        lock(&self.fence_reason).clone()
    }

    pub fn fenced_error(&self) -> StoreError {
        StoreError::Fenced(self.fence_reason().unwrap_or_default())
    }

    pub fn readable(&self) -> u64 {
        self.durable
            .load(Ordering::Acquire)
            .min(self.repl_limit.load(Ordering::Acquire))
    }

    /// The segment holding `offset`.
    pub fn segment_for(&self, offset: u64) -> Option<Arc<Segment>> {
        let segs = self.segments.read().unwrap_or_else(|p| p.into_inner());
        let i = segs.partition_point(|s| s.start <= offset);
        if i == 0 {
            None
        } else {
            Some(segs[i - 1].clone())
        }
    }

    fn max_len(&self) -> usize {
        MAX_RECORD_HARD
    }

    /// Reads and validates the record starting at `offset`, which must lie below `end`.
    pub fn read_record(&self, offset: u64, end: u64) -> Result<Record, StoreError> {
        let bytes = self.read_record_bytes(offset, end)?;
        let rec =
            record::decode_record(&bytes, self.max_len()).map_err(|e| self.corrupt(offset, &e))?;
        if rec.log_offset != offset {
            return Err(StoreError::NotRecordBoundary(offset));
        }
        Ok(rec)
    }

    fn corrupt(&self, offset: u64, e: &DecodeError) -> StoreError {
        StoreError::Corrupt {
            offset,
            reason: e.to_string(),
        }
    }

    /// The raw bytes of the record at `offset` (header-checked, CRC not checked).
    pub fn read_record_bytes(&self, offset: u64, end: u64) -> Result<Bytes, StoreError> {
        if offset >= end {
            return Err(StoreError::OffsetOutOfRange { offset, end });
        }
        let seg = self
            .segment_for(offset)
            .ok_or(StoreError::OffsetOutOfRange { offset, end })?;
        let rel = offset - seg.start;
        let avail = end - offset;
        if avail < HEADER_LEN as u64 {
            return Err(StoreError::NotRecordBoundary(offset));
        }
        let mut head = [0u8; HEADER_LEN];
        seg.file.read_exact_at(&mut head, rel)?;
        let limit = usize::try_from(avail).unwrap_or(usize::MAX);
        let total = record::check_header(&head, limit)
            .map_err(|_| StoreError::NotRecordBoundary(offset))?;
        let mut buf = vec![0u8; total];
        buf[..HEADER_LEN].copy_from_slice(&head);
        seg.file
            .read_exact_at(&mut buf[HEADER_LEN..], rel + HEADER_LEN as u64)?;
        Ok(Bytes::from(buf))
    }

    /// Whole records from `from` up to `end`, at most `max_bytes` (but always at least one
    /// record if one is available), never crossing a segment boundary.
    pub fn read_raw(&self, from: u64, max_bytes: usize, end: u64) -> Result<Vec<u8>, StoreError> {
        let mut buf = Vec::new();
        let n = self.read_raw_into(from, max_bytes, end, &mut buf, 0)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// [`Shared::read_raw`] into `buf[at..]`: returns how many bytes of whole records were
    /// read there. `buf` only grows (to `at` + the bytes read), so a buffer reused across calls
    /// is zeroed once, not per read. Every record's header is checked (magic, version,
    /// lengths) and must name its own offset, so `from` must be a record boundary; CRCs are
    /// not checked here (the reader of the bytes does that).
    pub fn read_raw_into(
        &self,
        from: u64,
        max_bytes: usize,
        end: u64,
        buf: &mut Vec<u8>,
        at: usize,
    ) -> Result<usize, StoreError> {
        if from == end {
            return Ok(0);
        }
        if from > end {
            return Err(StoreError::OffsetOutOfRange { offset: from, end });
        }
        let seg = self
            .segment_for(from)
            .ok_or(StoreError::OffsetOutOfRange { offset: from, end })?;
        let seg_end = {
            let segs = self.segments.read().unwrap_or_else(|p| p.into_inner());
            let i = segs.partition_point(|s| s.start <= from);
            segs.get(i).map_or(end, |n| n.start.min(end))
        };
        let avail = seg_end - from;
        let len = avail.min(max_bytes.max(HEADER_LEN) as u64) as usize;
        if buf.len() < at + len {
            buf.resize(at + len, 0);
        }
        seg.file
            .read_exact_at(&mut buf[at..at + len], from - seg.start)?;
        // Cut after the last whole record; each header must name its own offset.
        let mut p = 0usize;
        while len - p >= HEADER_LEN {
            let rest = &buf[at + p..at + len];
            let t = match record::check_header(rest, MAX_RECORD_HARD) {
                Ok(t) if record::log_offset_of(rest) == from + p as u64 => t,
                _ if p == 0 => return Err(StoreError::NotRecordBoundary(from)),
                _ => break,
            };
            if t > rest.len() {
                if p == 0 {
                    // A first record larger than `max_bytes`: read it whole.
                    if t as u64 > avail {
                        return Err(StoreError::NotRecordBoundary(from));
                    }
                    if buf.len() < at + t {
                        buf.resize(at + t, 0);
                    }
                    seg.file
                        .read_exact_at(&mut buf[at + len..at + t], from - seg.start + len as u64)?;
                    p = t;
                }
                break;
            }
            p += t;
        }
        if p == 0 {
            return Err(StoreError::NotRecordBoundary(from));
        }
        Ok(p)
    }
}

/// Forward iterator over records; see [`crate::Store::scan`].
pub struct Scan {
    pub(crate) shared: Arc<Shared>,
    pub(crate) next: u64,
    pub(crate) buf: Bytes,
    pub(crate) buf_start: u64,
    pub(crate) done: bool,
}

impl Scan {
    fn fill(&mut self, end: u64) -> Result<(), StoreError> {
        let seg = self
            .shared
            .segment_for(self.next)
            .ok_or(StoreError::OffsetOutOfRange {
                offset: self.next,
                end,
            })?;
        let seg_end = {
            let segs = self
                .shared
                .segments
                .read()
                .unwrap_or_else(|p| p.into_inner());
            let i = segs.partition_point(|s| s.start <= self.next);
            segs.get(i).map_or(end, |n| n.start.min(end))
        };
        let len = (seg_end - self.next).min(256 * 1024) as usize;
        let mut v = vec![0u8; len];
        seg.file.read_exact_at(&mut v, self.next - seg.start)?;
        self.buf = Bytes::from(v);
        self.buf_start = self.next;
        Ok(())
    }
}

impl Iterator for Scan {
    type Item = Result<Record, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let end = self.shared.log_end.load(Ordering::Acquire);
        if self.next >= end {
            return None;
        }
        let rel = (self.next - self.buf_start) as usize;
        let in_buf = self.next >= self.buf_start && rel < self.buf.len();
        let header_ok = in_buf
            && self.buf.len() - rel >= HEADER_LEN
            && record::check_header(&self.buf[rel..], usize::MAX)
                .is_ok_and(|t| self.buf.len() - rel >= t);
        let rec = if header_ok {
            let b = self.buf.slice(rel..);
            record::decode_record(&b, MAX_RECORD_HARD).map_err(|e| StoreError::Corrupt {
                offset: self.next,
                reason: e.to_string(),
            })
        } else {
            // Refill (or read a large record directly).
            match self.fill(end) {
                Ok(()) => {
                    if self.buf.len() >= HEADER_LEN
                        && record::check_header(&self.buf, usize::MAX)
                            .is_ok_and(|t| self.buf.len() >= t)
                    {
                        let b = self.buf.clone();
                        record::decode_record(&b, MAX_RECORD_HARD).map_err(|e| {
                            StoreError::Corrupt {
                                offset: self.next,
                                reason: e.to_string(),
                            }
                        })
                    } else {
                        self.shared.read_record(self.next, end)
                    }
                }
                Err(e) => Err(e),
            }
        };
        match rec {
            Ok(r) if r.log_offset == self.next => {
                self.next = r.next_offset();
                Some(Ok(r))
            }
            Ok(_) => {
                self.done = true;
                Some(Err(StoreError::NotRecordBoundary(self.next)))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
