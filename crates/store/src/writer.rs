//! The group-commit writer thread.
//!
//! One std thread owns the write side of the log. Callers push commands into an inbox; the
//! writer takes everything pending at once, assigns log and queue offsets, encodes the records
//! back to back into one reused buffer, writes the buffer with one `write_all_at` per segment
//! and covers it with one `fdatasync`, then dispatches consume-queue entries and completes every
//! waiter of the batch. While it is in `fdatasync`, new appends pile up in the inbox and form
//! the next batch: that is the group commit. The fdatasync, dispatch and answers are
//! `syncer::complete`, run by the sync thread for batches handed to it and by the writer for
//! a batch it commits itself (nothing else pending): one commit path.
//!
//! Any write or fsync error fences the log: the waiters of the failed batch get the error and
//! every later append gets [`StoreError::Fenced`]. An fsync is never retried (after a failed
//! fsync the kernel may have dropped the dirty pages, so a retry could "succeed" without the data).
//! One exception: a write or a file creation that finds the disk full (ENOSPC) leaves nothing
//! uncertain, so the batch is given back instead ([`Writer::give_back`]): the short write is
//! cut, its queue offsets are returned, its waiters get [`StoreError::NoSpace`], and the next
//! batch tries again.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::StoreError;
use crate::clock::now_ms;
use crate::cmd::{Cmd, RawMeta, Waiter};
use crate::config::{Driver, FlushMode};
use crate::cq::{ConsumeQueue, CqEntry};
use crate::epoch::EpochEntry;
use crate::error::{is_no_space, write_error};
use crate::log::{Shared, lock};
use crate::record::{self, Appended, NewRecord, Stamp};
use crate::segment::Segment;
use crate::syncer::{self, Batch, SyncMsg};

/// The sync stage of sync-flush mode (see [`crate::syncer`]).
struct SyncStage {
    tx: mpsc::Sender<SyncMsg>,
    thread: JoinHandle<()>,
}

/// A map hashed with FNV-1a, for the writer's queue index: looked up for every record (twice
/// per record on a slave), keyed by topic names from the topic table and small queue ids, so a
/// cheap hash beats SipHash's DoS resistance here.
pub(crate) type FnvMap<K, V> = fnv::FnvHashMap<K, V>;

pub(crate) struct WriterQueue {
    pub next: u64,
    pub cq: Arc<ConsumeQueue>,
}

/// State owned by the writer thread.
pub(crate) struct Writer {
    pub sh: Arc<Shared>,
    /// Active (last) segment.
    pub seg: Arc<Segment>,
    /// Log end including bytes still in `buf`.
    pub end: u64,
    /// Bytes written to files.
    pub written: u64,
    /// Bytes covered by fdatasync.
    pub synced: u64,
    buf: Vec<u8>,
    pub epoch: u64,
    /// Topic → its slot in `topic_names` / `topic_queues`.
    index: FnvMap<String, usize>,
    topic_names: Vec<String>,
    /// Per topic slot: queue id → index in `queues`.
    topic_queues: Vec<FnvMap<u32, usize>>,
    /// The topic slot of the last lookup (a batch is mostly one topic): compared by name,
    /// which is cheaper than hashing it again.
    last_topic: Option<usize>,
    pub queues: Vec<WriterQueue>,
    dispatch: Vec<(usize, CqEntry)>,
    /// Scratch of `encode_raw`: each record's queue index, and next queue offsets.
    raw_qi: Vec<usize>,
    raw_next: FnvMap<usize, u64>,
    waiters: Vec<Waiter>,
    batch_records: u64,
    last_sync: Instant,
    /// Present in sync-flush mode: the thread that fdatasyncs and completes batches.
    syncer: Option<SyncStage>,
    /// Reused for the one-batch group the writer commits itself.
    inline_group: Vec<Batch>,
    /// With [`Driver::Caller`] over a slow disk: written batches wait here for their
    /// fdatasync until the driver, having let the disk's latency pass on its runtime's clock,
    /// completes them ([`Writer::complete_deferred`]). Their bytes are written, so readers of
    /// the written offset (the replication stream) may already ship them.
    defer: bool,
    deferred: Vec<Batch>,
    /// Set by [`Cmd::Follow`], cleared by a successful [`Cmd::BeginEpoch`]: local appends
    /// are refused ([`StoreError::Following`]). A command, so it takes effect in the order of
    /// the inbox: an append submitted before it is written (and cut by the follower's
    /// truncation if the new master lacks it), one submitted after is refused.
    follows: bool,
}

/// The topic of a raw record (validated UTF-8 by `record::decode_replicated`).
fn raw_topic<'a>(bytes: &'a [u8], m: &RawMeta) -> Result<&'a str, StoreError> {
    let at = m.at + record::HEADER_LEN;
    bytes
        .get(at..at + m.topic_len)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or(StoreError::Corrupt {
            offset: m.at as u64,
            reason: "raw record topic out of place".into(),
        })
}

impl Writer {
    /// `seg` is the last segment of the log (recovery always leaves one).
    pub fn new(sh: Arc<Shared>, seg: Arc<Segment>) -> Writer {
        let end = sh.log_end.load(Ordering::Acquire);
        let epoch = sh.current_epoch.load(Ordering::Acquire);
        let mut w = Writer {
            seg,
            end,
            written: end,
            synced: end,
            buf: Vec::with_capacity(sh.cfg.max_batch_bytes + 64 * 1024),
            epoch,
            index: FnvMap::default(),
            topic_names: Vec::new(),
            topic_queues: Vec::new(),
            last_topic: None,
            queues: Vec::new(),
            dispatch: Vec::new(),
            raw_qi: Vec::new(),
            raw_next: FnvMap::default(),
            waiters: Vec::new(),
            batch_records: 0,
            last_sync: Instant::now(),
            syncer: None,
            inline_group: Vec::with_capacity(1),
            defer: false,
            deferred: Vec::new(),
            follows: false,
            sh,
        };
        if matches!(w.sh.cfg.flush, FlushMode::Sync) && w.sh.cfg.driver == Driver::Threads {
            let (tx, rx) = mpsc::channel();
            let sh = w.sh.clone();
            match std::thread::Builder::new()
                .name("sofamq-store-sync".into())
                .spawn(move || syncer::run(&sh, &rx))
            {
                Ok(thread) => w.syncer = Some(SyncStage { tx, thread }),
                // Without the sync thread the writer fsyncs inline (same guarantees, no overlap).
                Err(e) => {
                    tracing::warn!(error = %e, "could not start the sync thread; syncing inline")
                }
            }
        }
        for cq in w.sh.cqs.all() {
            let i = w.queues.len();
            let t = w.topic_slot(&cq.topic);
            w.topic_queues[t].insert(cq.queue_id, i);
            w.queues.push(WriterQueue { next: cq.len(), cq });
        }
        w
    }

    /// The slot of `topic` in the queue index, created when new.
    fn topic_slot(&mut self, topic: &str) -> usize {
        if let Some(t) = self.last_topic
            && self.topic_names[t] == topic
        {
            return t;
        }
        let t = match self.index.get(topic) {
            Some(t) => *t,
            None => {
                let t = self.topic_names.len();
                self.topic_names.push(topic.to_owned());
                self.topic_queues.push(FnvMap::default());
                self.index.insert(topic.to_owned(), t);
                t
            }
        };
        self.last_topic = Some(t);
        t
    }

    fn queue_index(&mut self, topic: &str, queue_id: u32) -> io::Result<usize> {
        let t = self.topic_slot(topic);
        if let Some(i) = self.topic_queues[t].get(&queue_id) {
            return Ok(*i);
        }
        // Creates the queue's file (no fsync): a full disk here is a write error.
        let cq = self
            .sh
            .cqs
            .get_or_create(topic, queue_id)
            .map_err(write_error)?;
        let i = self.queues.len();
        self.topic_queues[t].insert(queue_id, i);
        self.queues.push(WriterQueue { next: cq.len(), cq });
        Ok(i)
    }

    /// The thread body. The writer sits behind a mutex: a caller that finds it idle may run
    /// a step on its own thread ([`crate::Store::append_raw_here`]). Commands are taken from
    /// the inbox only while holding the writer, by this thread or by such a caller, so they
    /// run in inbox order whoever runs them.
    pub fn run(this: &Mutex<Writer>, sh: &Shared) {
        let mut local: Vec<Cmd> = Vec::new();
        loop {
            // Async flush: when the interval's fdatasync is due (only this thread steps a
            // store in async-flush mode, so what it reads here stays true while it waits).
            let due = match sh.cfg.flush {
                FlushMode::Async { interval } => {
                    let w = lock(this);
                    (w.synced < w.written).then(|| w.last_sync + interval)
                }
                FlushMode::Sync => None,
            };
            {
                let mut g = lock(&sh.inbox);
                loop {
                    if !g.cmds.is_empty() || g.shutdown {
                        break;
                    }
                    match due {
                        Some(due) => {
                            let now = Instant::now();
                            if now >= due {
                                break;
                            }
                            g.writer_waiting = true;
                            g = sh
                                .inbox_cv
                                .wait_timeout(g, due - now)
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                        }
                        None => {
                            g.writer_waiting = true;
                            g = sh.inbox_cv.wait(g).unwrap_or_else(|p| p.into_inner());
                        }
                    }
                    g.writer_waiting = false;
                }
            }
            let mut w = lock(this);
            let shutdown = {
                let mut g = lock(&sh.inbox);
                std::mem::swap(&mut g.cmds, &mut local);
                g.shutdown
            };
            w.step(&mut local, shutdown);
            if shutdown && lock(&sh.inbox).cmds.is_empty() {
                w.barrier();
                if let Some(stage) = w.syncer.take() {
                    drop(stage.tx);
                    let _ = stage.thread.join();
                }
                // A clean close leaves no zeros past the log end. A fenced log keeps its
                // files as they are for the operator.
                let fill = sh.prefill.stop();
                if sh.prefill.enabled()
                    && !sh.is_fenced()
                    && let Err(e) = w.cut_zeros()
                {
                    tracing::warn!(error = %e, "could not cut the zero-filled tail at close; the next open cuts it");
                }
                drop(fill);
                return;
            }
        }
    }

    /// One round of the writer: handles `cmds` (draining it), commits the batch they made and,
    /// in async-flush mode, fsyncs when the interval is up (or at `shutdown`). The thread runs
    /// it in a loop; with [`Driver::Caller`] the store's owner runs it ([`crate::Store::step`]).
    pub(crate) fn step(&mut self, cmds: &mut Vec<Cmd>, shutdown: bool) {
        for cmd in cmds.drain(..) {
            self.handle(cmd);
        }
        self.commit();
        if let FlushMode::Async { interval } = self.sh.cfg.flush
            && (shutdown || self.last_sync.elapsed() >= interval)
        {
            self.background_sync();
        }
    }

    fn background_sync(&mut self) {
        self.last_sync = Instant::now();
        if self.synced < self.written
            && !self.sh.is_fenced()
            && let Err(e) = self.sync()
        {
            self.sh.fence(format!("fdatasync failed: {e}"));
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Append { recs, epoch, tx } => {
                if self.sh.is_fenced() {
                    let _ = tx.send(Err(self.sh.fenced_error()));
                    return;
                }
                if self.follows {
                    let _ = tx.send(Err(StoreError::Following));
                    return;
                }
                let current = self.sh.current_epoch.load(Ordering::Acquire);
                if let Some(admitted) = epoch
                    && admitted != current
                {
                    let _ = tx.send(Err(StoreError::EpochChanged { admitted, current }));
                    return;
                }
                let start = self.end;
                match self.encode_append(&recs) {
                    Ok(out) => self.waiters.push(Waiter::Append(tx, out)),
                    Err(e) => {
                        self.fail_batch_during(&e, Some(start));
                        let _ = tx.send(Err(self.failure(&e)));
                    }
                }
            }
            Cmd::Raw {
                start,
                bytes,
                metas,
                tx,
            } => {
                if self.sh.is_fenced() {
                    let _ = tx.send(Err(self.sh.fenced_error()));
                    return;
                }
                match self.encode_raw(start, &bytes, &metas) {
                    Ok(Ok(())) => self.waiters.push(Waiter::Raw(tx)),
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(e));
                    }
                    Err(e) => {
                        self.fail_batch(&e);
                        let _ = tx.send(Err(self.failure(&e)));
                    }
                }
            }
            Cmd::Truncate { offset, tx } => {
                self.commit();
                self.barrier();
                let _ = tx.send(self.truncate(offset));
            }
            Cmd::CutDamage { tx } => {
                self.commit();
                self.barrier();
                let _ = tx.send(self.cut_damage());
            }
            Cmd::BeginEpoch { epoch, tx } => {
                self.commit();
                self.barrier();
                let res = self.begin_epoch(epoch);
                if res.is_ok() {
                    self.follows = false;
                }
                let _ = tx.send(res);
            }
            Cmd::Follow => self.follows = true,
        }
        if self.buf.len() >= self.sh.cfg.max_batch_bytes {
            self.commit();
        }
    }

    /// Rolls to a new segment if a record of `size` bytes does not fit the active one.
    fn make_room(&mut self, size: usize) -> io::Result<()> {
        let used = self.end.saturating_sub(self.seg.start);
        if used > 0 && used + size as u64 > self.sh.cfg.segment_size {
            self.roll()?;
        }
        Ok(())
    }

    /// Writes and fsyncs what the active segment has pending, then starts a new segment at the
    /// current end. The old segment is made durable before the new file exists, so that a torn
    /// record can only ever be in the last segment.
    fn roll(&mut self) -> io::Result<()> {
        self.write_buf()?;
        self.sync()?;
        // No zeros are written while the old segment is cut and the new one takes its place.
        let mut fill = self.sh.prefill.quiet();
        if self.sh.prefill.enabled() {
            self.cut_zeros()?;
        }
        let seg = Arc::new(
            Segment::open(&*self.sh.cfg.fs, &self.sh.log_dir, self.end, true)
                .map_err(write_error)?,
        );
        self.sh.cfg.fs.sync_dir(&self.sh.log_dir)?;
        fill.reset(seg.clone(), 0);
        drop(fill);
        tracing::debug!(start = self.end, "rolled to a new segment");
        self.sh
            .segments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(seg.clone());
        self.seg = seg;
        Ok(())
    }

    /// Cuts the zeros past the written bytes of the active segment (durably), so that its
    /// length is its records again. The caller holds the fill state quiet.
    pub(crate) fn cut_zeros(&self) -> io::Result<()> {
        let data = self.written - self.seg.start;
        if self.seg.len()? > data {
            self.seg.file.set_len(data)?;
            self.seg.file.sync_all()?;
        }
        Ok(())
    }

    fn encode_append(&mut self, recs: &[NewRecord]) -> io::Result<Vec<Appended>> {
        let now = now_ms();
        let mut out = Vec::with_capacity(recs.len());
        for rec in recs {
            // Checked by `Store::submit`; 0 only for a record it would have refused.
            let size = record::encoded_len(rec).unwrap_or(0);
            self.make_room(size)?;
            let qi = self.queue_index(&rec.topic, rec.queue_id)?;
            let queue_offset = self.queues[qi].next;
            self.queues[qi].next += 1;
            let stamp = Stamp {
                epoch: self.epoch,
                log_offset: self.end,
                queue_offset,
                store_ts_ms: now,
            };
            let n = record::encode_into(&mut self.buf, rec, stamp);
            self.dispatch.push((
                qi,
                CqEntry {
                    log_offset: self.end,
                    size: n,
                    tag_hash: record::tag_hash(&rec.tag),
                },
            ));
            out.push(Appended {
                log_offset: self.end,
                queue_offset,
                size: n,
                store_ts_ms: now,
            });
            self.end += u64::from(n);
            self.batch_records += 1;
        }
        Ok(out)
    }

    /// Outer error: I/O (fences). Inner error: the request is invalid (only it fails).
    fn encode_raw(
        &mut self,
        start: u64,
        bytes: &[u8],
        metas: &[RawMeta],
    ) -> io::Result<Result<(), StoreError>> {
        if start != self.end {
            return Ok(Err(StoreError::OffsetMismatch {
                expected: self.end,
                got: start,
            }));
        }
        // Check queue offsets and epochs before touching anything.
        self.raw_qi.clear();
        self.raw_next.clear();
        let mut epoch = self.epoch;
        for m in metas {
            let topic = match raw_topic(bytes, m) {
                Ok(t) => t,
                Err(e) => return Ok(Err(e)),
            };
            let qi = self.queue_index(topic, m.queue_id)?;
            let expected = *self.raw_next.get(&qi).unwrap_or(&self.queues[qi].next);
            if m.queue_offset != expected {
                return Ok(Err(StoreError::QueueOffsetMismatch {
                    topic: topic.to_owned(),
                    queue_id: m.queue_id,
                    expected,
                    got: m.queue_offset,
                }));
            }
            self.raw_next.insert(qi, expected + 1);
            self.raw_qi.push(qi);
            if m.epoch < epoch {
                return Ok(Err(StoreError::Corrupt {
                    offset: start,
                    reason: format!("record epoch {} below current epoch {epoch}", m.epoch),
                }));
            }
            epoch = m.epoch;
        }
        for (i, m) in metas.iter().enumerate() {
            self.make_room(m.size as usize)?;
            if m.epoch > self.epoch {
                lock(&self.sh.epochs).append(EpochEntry {
                    epoch: m.epoch,
                    start_offset: self.end,
                })?;
                self.epoch = m.epoch;
                self.sh.current_epoch.store(m.epoch, Ordering::Release);
            }
            let qi = self.raw_qi[i];
            self.queues[qi].next = m.queue_offset + 1;
            self.buf
                .extend_from_slice(&bytes[m.at..m.at + m.size as usize]);
            self.dispatch.push((
                qi,
                CqEntry {
                    log_offset: self.end,
                    size: m.size,
                    tag_hash: m.tag_hash,
                },
            ));
            self.end += u64::from(m.size);
            self.batch_records += 1;
        }
        Ok(Ok(()))
    }

    fn write_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.sh.faults.fail_next_write.swap(false, Ordering::AcqRel) {
            return Err(io::Error::other("injected write failure"));
        }
        let at = self.written - self.seg.start;
        if self.sh.prefill.enabled() {
            self.sh.prefill.before_write(at, self.buf.len() as u64);
        }
        if self
            .sh
            .faults
            .no_space_next_write
            .swap(false, Ordering::AcqRel)
        {
            // A short write, as a filling disk gives: half the bytes land.
            self.seg
                .file
                .write_all_at(&self.buf[..self.buf.len() / 2], at)?;
            return Err(write_error(io::Error::from(io::ErrorKind::StorageFull)));
        }
        self.seg
            .file
            .write_all_at(&self.buf, at)
            .map_err(write_error)?;
        let start = self.written;
        self.written += self.buf.len() as u64;
        self.sh
            .counters
            .bytes
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        self.sh.log_end.store(self.written, Ordering::Release);
        // The replication streamer may send these bytes now, while they are being fsynced:
        // the tap sends them from this thread when it can, else the streamer is woken.
        let tap = self
            .sh
            .tap
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let sent = tap.is_some_and(|t| {
            let epoch = self.sh.current_epoch.load(Ordering::Acquire);
            t.written(epoch, start, &self.buf)
        });
        self.buf.clear();
        if !sent {
            self.sh.written_notify.notify_waiters();
        }
        Ok(())
    }

    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if let Some(e) = self.sh.faults.take_sync_failure() {
            return Err(e);
        }
        let t0 = std::time::Instant::now();
        if !crate::mutant::active("skip-fdatasync")
            && let Err(e) = self.seg.file.sync_data()
        {
            if !crate::mutant::active("fsync-error-ok") {
                return Err(e);
            }
            tracing::error!(error = %e, "fdatasync failed; taken as done (mutant)");
        }
        let took = t0.elapsed();
        let before = self.sh.durable.fetch_max(self.written, Ordering::AcqRel);
        self.sh
            .counters
            .fsync_done(took, self.written.saturating_sub(before));
        if self.sh.cfg.record_batch_sizes && self.written > before {
            lock(&self.sh.batch_sizes).push(self.written - before);
        }
        self.synced = self.written;
        Ok(())
    }

    /// Fences after an I/O failure and fails every waiter of the current batch; a full disk
    /// gives the batch back instead (see [`Writer::give_back`]).
    fn fail_batch(&mut self, e: &io::Error) {
        self.fail_batch_during(e, None);
    }

    /// [`Writer::fail_batch`] for a failure while encoding the append that began at log
    /// offset `current`.
    fn fail_batch_during(&mut self, e: &io::Error, current: Option<u64>) {
        if is_no_space(e) && !crate::mutant::active("fence-on-enospc") && self.give_back(e, current)
        {
            return;
        }
        self.sh.fence(format!("commit log write/fsync failed: {e}"));
        let e = &io::Error::new(e.kind(), e.to_string());
        self.buf.clear();
        self.dispatch.clear();
        self.batch_records = 0;
        self.end = self.written;
        for w in self.waiters.drain(..) {
            match w {
                Waiter::Append(tx, _) => {
                    let _ = tx.send(Err(StoreError::io_copy(e)));
                }
                Waiter::Raw(tx) => {
                    let _ = tx.send(Err(StoreError::io_copy(e)));
                }
            }
        }
    }

    /// What the append that hit `e` (and was handled by [`Writer::fail_batch`]) is told.
    fn failure(&self, e: &io::Error) -> StoreError {
        if self.sh.is_fenced() {
            StoreError::Io(io::Error::new(e.kind(), e.to_string()))
        } else {
            StoreError::io_copy(e)
        }
    }

    /// After a write that found the disk full: undoes the pending batch so that the log is as
    /// if it had never been submitted, and fails its waiters with [`StoreError::NoSpace`].
    /// Returns false (the caller then fences) when that cannot be done exactly.
    ///
    /// Records of the batch already written stay: only a segment roll writes part of a batch,
    /// and it fsyncs what it wrote, so they are durable; their consume-queue entries are
    /// dispatched and an append wholly among them succeeds. The other records' queue offsets
    /// are returned, and any bytes of them that reached the file are cut, so the next batch
    /// writes at the same offset and nothing past `written` is ever read, replicated or
    /// recovered as a record. An append split by the roll (part durable, part not) cannot be
    /// answered either way without a duplicate on retry or a false refusal: that one case
    /// fences, as any other write failure does. `current` is the log offset where the append
    /// being encoded when the failure came began (it has no waiter yet).
    fn give_back(&mut self, e: &io::Error, current: Option<u64>) -> bool {
        // Batches already with the sync thread complete (and dispatch) first.
        self.barrier();
        let written = self.written;
        let split = |first: u64, end: u64| first < written && end > written;
        let split_waiter = self.waiters.iter().any(|w| match w {
            Waiter::Append(_, out) => match (out.first(), out.last()) {
                (Some(f), Some(l)) => split(f.log_offset, l.log_offset + u64::from(l.size)),
                _ => false,
            },
            Waiter::Raw(_) => false,
        });
        if split_waiter || current.is_some_and(|c| c < written) {
            tracing::error!("a full disk split an append across a segment roll");
            return false;
        }
        {
            let mut fill = self.sh.prefill.quiet();
            let keep = self.written - self.seg.start;
            if let Err(cut) = self.seg.file.set_len(keep) {
                tracing::error!(error = %cut, "could not cut a short write after a full disk");
                return false;
            }
            fill.reset(self.seg.clone(), keep);
        }
        for (qi, entry) in std::mem::take(&mut self.dispatch) {
            let q = &mut self.queues[qi];
            if entry.log_offset < written {
                q.cq.push(&entry);
            } else {
                // Entries of a queue are consecutive and end at `next`: each one given back
                // returns one offset.
                q.next -= 1;
            }
        }
        self.sh.dispatched.fetch_max(written, Ordering::AcqRel);
        self.buf.clear();
        self.batch_records = 0;
        self.end = written;
        self.sh.counters.no_space.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, log_end = written, "commit log disk full: batch refused, log stays writable");
        for w in self.waiters.drain(..) {
            match w {
                Waiter::Append(tx, out) if out.last().is_some_and(|l| l.log_offset < written) => {
                    let _ = tx.send(Ok(out));
                }
                // A slave resumes from its log end whatever it is told.
                w => w.fail(StoreError::NoSpace(e.to_string())),
            }
        }
        true
    }

    /// Writes the pending batch and commits it: hands it to the sync thread when there is
    /// other work to overlap with its fdatasync (more commands waiting, batches already
    /// being synced, which must complete in order, or a batch above
    /// [`crate::StoreConfig::inline_sync_max_bytes`], whose sender is likely to send again
    /// soon); otherwise commits it on this thread and saves the thread hop a lone appender
    /// would wait on. Either way the commit is
    /// [`syncer::complete`]: fdatasync (in sync mode), dispatch, answer the waiters.
    pub(crate) fn commit(&mut self) {
        if self.buf.is_empty() && self.waiters.is_empty() {
            return;
        }
        let busy = self.syncer.is_some()
            && (self.buf.len() > self.sh.cfg.inline_sync_max_bytes
                || self.sh.sync_pending.load(Ordering::Acquire) > 0
                || !lock(&self.sh.inbox).cmds.is_empty());
        if let Err(e) = self.write_buf() {
            self.fail_batch(&e);
            return;
        }
        let dispatch = self
            .dispatch
            .drain(..)
            .map(|(qi, e)| (self.queues[qi].cq.clone(), e))
            .collect();
        let batch = Batch {
            seg: self.seg.clone(),
            upto: self.written,
            waiters: std::mem::take(&mut self.waiters),
            dispatch,
            records: std::mem::take(&mut self.batch_records),
        };
        if busy {
            self.hand_to_syncer(batch);
            return;
        }
        let sync = matches!(self.sh.cfg.flush, FlushMode::Sync);
        // Behind batches already waiting for a deferred fdatasync, a batch waits too (a
        // step taken meanwhile, by a truncation or a follow, does not defer): batches
        // complete in log order, so consume-queue entries are dispatched in queue order.
        if sync && (self.defer || !self.deferred.is_empty()) {
            self.deferred.push(batch);
            return;
        }
        let mut group = std::mem::take(&mut self.inline_group);
        group.push(batch);
        syncer::complete(&self.sh, &mut group, sync);
        self.inline_group = group;
        if sync && !self.sh.is_fenced() {
            self.synced = self.written;
        }
    }

    /// Sync mode: hands a written batch to the sync thread, which fsyncs it, dispatches its
    /// consume-queue entries and completes its waiters.
    fn hand_to_syncer(&mut self, batch: Batch) {
        self.sh.sync_pending.fetch_add(1, Ordering::AcqRel);
        let sent = self
            .syncer
            .as_ref()
            .map(|s| s.tx.send(SyncMsg::Batch(batch)));
        if let Some(Err(mpsc::SendError(SyncMsg::Batch(b)))) = sent {
            self.sh.sync_pending.fetch_sub(1, Ordering::AcqRel);
            self.sh.fence("the sync thread is gone".into());
            for w in b.waiters {
                w.fail(self.sh.fenced_error());
            }
        }
    }

    /// Runs [`Writer::step`] with every written batch left waiting for its fdatasync (in
    /// sync-flush mode); returns whether any waits ([`Writer::complete_deferred`] finishes it).
    pub(crate) fn step_deferring(&mut self, cmds: &mut Vec<Cmd>) -> bool {
        self.defer = true;
        self.step(cmds, false);
        self.defer = false;
        !self.deferred.is_empty()
    }

    /// fdatasyncs the batches [`Writer::step_deferring`] left waiting and completes them.
    pub(crate) fn complete_deferred(&mut self) {
        let Some(upto) = self.deferred.last().map(|b| b.upto) else {
            return;
        };
        let mut group = std::mem::take(&mut self.deferred);
        syncer::complete(&self.sh, &mut group, true);
        if !self.sh.is_fenced() {
            self.synced = self.synced.max(upto);
        }
    }

    /// Waits until the sync thread has completed every batch handed to it (no-op without one);
    /// completes the batches waiting for a deferred fdatasync first.
    fn barrier(&mut self) {
        self.complete_deferred();
        if let Some(stage) = &self.syncer {
            let (tx, rx) = mpsc::sync_channel(1);
            if stage.tx.send(SyncMsg::Barrier(tx)).is_ok() {
                let _ = rx.recv();
            }
            self.synced = self.sh.durable.load(Ordering::Acquire).max(self.synced);
        }
    }

    fn begin_epoch(&mut self, epoch: u64) -> Result<(), StoreError> {
        if self.sh.is_fenced() {
            return Err(self.sh.fenced_error());
        }
        if epoch <= self.epoch {
            return Err(StoreError::EpochNotIncreasing {
                current: self.epoch,
                requested: epoch,
            });
        }
        let res = (|| {
            if self.synced < self.written {
                self.sync()?;
            }
            lock(&self.sh.epochs).append(EpochEntry {
                epoch,
                start_offset: self.end,
            })
        })();
        if let Err(e) = res {
            self.sh.fence(format!("epoch history write failed: {e}"));
            return Err(e.into());
        }
        tracing::info!(epoch, start_offset = self.end, "began epoch");
        self.epoch = epoch;
        self.sh.current_epoch.store(epoch, Ordering::Release);
        Ok(())
    }
}
