//! The public [`Store`] handle.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::DamageCut;
use crate::cmd::{Cmd, RawMeta};
use crate::config::{Driver, FlushMode, StoreConfig};
use crate::cq::CqEntry;
use crate::epoch::EpochEntry;
use crate::log::{Scan, Shared, lock};
use crate::record::{self, Appended, MAX_RECORD_HARD, NewRecord, Record};
use crate::recovery;
use crate::writer::Writer;
use crate::{StoreError, flusher, scrub};

/// Writer counters, see [`Store::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// fdatasync calls on commit-log segments.
    pub fsyncs: u64,
    /// Committed batches.
    pub batches: u64,
    /// Records appended (including raw ones).
    pub records: u64,
    /// Bytes written to the commit log.
    pub bytes: u64,
    /// Batches refused because a write found the disk full ([`StoreError::NoSpace`]).
    pub no_space: u64,
    /// Background scrub passes completed over the whole durable log.
    pub scrub_passes: u64,
    /// Bytes the scrub read and verified.
    pub scrub_bytes: u64,
    /// Damaged records the scrub found (each fenced the log).
    pub scrub_damage: u64,
}

/// fdatasync latency histogram and batch volume, see [`Store::fsync_stats`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FsyncStats {
    /// Non-cumulative count per bucket of [`crate::FSYNC_BUCKETS_US`], plus one overflow bucket.
    pub buckets: Vec<u64>,
    /// Total time spent in fdatasync, nanoseconds.
    pub sum_nanos: u64,
    /// fdatasync calls counted.
    pub count: u64,
    /// Bytes made durable by them (average batch = `synced_bytes / count`).
    pub synced_bytes: u64,
}

/// What [`Store::append_raw_here`] did.
#[derive(Debug)]
pub enum RawAppend {
    /// Appended and completed on the caller's thread: the new durable offset.
    Done(u64),
    /// Queued to the writer (or its sync thread): the receiver answers as
    /// [`Store::append_raw_async`] would.
    Queued(oneshot::Receiver<Result<u64, StoreError>>),
}

impl RawAppend {
    /// Waits for the answer if the append was queued.
    pub async fn wait(self) -> Result<u64, StoreError> {
        match self {
            RawAppend::Done(d) => Ok(d),
            RawAppend::Queued(rx) => rx.await.map_err(|_| StoreError::Closed)?,
        }
    }
}

/// A fault to inject (tests only).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next segment write fails.
    NextWrite,
    /// The next segment fdatasync fails.
    NextSync,
    /// The next segment write writes half its bytes, then fails with ENOSPC.
    NextWriteNoSpace,
    /// The next segment fdatasync fails with ENOSPC (what a thin-provisioned or network
    /// volume answers when its write-back finds no room).
    NextSyncNoSpace,
    /// The next segment fdatasync takes this many milliseconds longer (a stalled disk).
    SlowNextSync(u64),
}

struct Inner {
    sh: Arc<Shared>,
    /// The writer, with [`Driver::Caller`] (run by [`Store::step`]).
    stepped: Option<Mutex<Writer>>,
    /// The writer, with the store's own threads in sync-flush mode: its thread runs it, and
    /// so may a caller that finds it idle ([`Store::append_raw_here`]).
    shared_writer: Option<Arc<Mutex<Writer>>>,
    /// Woken when a command is queued (with [`Driver::Caller`], for [`Store::drive`]).
    wake: tokio::sync::Notify,
    writer: Option<JoinHandle<()>>,
    flusher: Option<JoinHandle<()>>,
    scrub: Option<JoinHandle<()>>,
    /// Zero-fills ahead of the writer (see the `prefill` module).
    filler: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        {
            let mut g = lock(&self.sh.inbox);
            g.shutdown = true;
        }
        self.sh.inbox_cv.notify_all();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
        drop(self.sh.prefill.stop());
        if let Some(h) = self.filler.take() {
            let _ = h.join();
        }
        *lock(&self.sh.flusher_stop) = true;
        self.sh.flusher_cv.notify_all();
        if let Some(h) = self.flusher.take() {
            let _ = h.join();
        }
        if let Some(h) = self.scrub.take() {
            let _ = h.join();
        }
    }
}

/// A durable commit log with consume queues. Cheap to clone; the background threads stop (after
/// a final flush) when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.sh.cfg.dir)
            .field("log_end", &self.log_end_offset())
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `cfg.dir` and runs recovery (see the
    /// `recovery` module docs for the rule). A log corrupt in the middle opens fenced.
    pub fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        cfg.validate()?;
        for d in [
            cfg.dir.clone(),
            cfg.dir.join("commitlog"),
            cfg.dir.join("consumequeue"),
        ] {
            if !cfg.fs.exists(&d) {
                cfg.fs.create_dir_all(&d)?;
                if let Some(p) = d.parent() {
                    cfg.fs.sync_dir(p)?;
                }
            }
        }
        let rec = recovery::recover(&cfg)?;
        let last = rec
            .segments
            .last()
            .cloned()
            .ok_or_else(|| StoreError::InvalidConfig("no segment after recovery".into()))?;
        let sh = Arc::new(Shared::new(
            cfg,
            rec.segments,
            rec.log_end,
            rec.cqs,
            rec.epochs,
            rec.checkpoint,
            rec.fenced,
            rec.damage,
        ));
        if !sh.is_fenced() {
            flusher::flush_once(&sh)?;
        }
        let writer = Writer::new(sh.clone(), last.clone());
        if sh.cfg.driver == Driver::Caller {
            return Ok(Store {
                inner: Arc::new(Inner {
                    sh,
                    stepped: Some(Mutex::new(writer)),
                    shared_writer: None,
                    wake: tokio::sync::Notify::new(),
                    writer: None,
                    flusher: None,
                    scrub: None,
                    filler: None,
                }),
            });
        }
        if sh.prefill.enabled() {
            let len = last.len()?;
            let pos = sh
                .log_end
                .load(Ordering::Acquire)
                .saturating_sub(last.start);
            sh.prefill.set_active(last, len, pos);
        }
        let sync = matches!(sh.cfg.flush, crate::FlushMode::Sync);
        let shared_writer = Arc::new(Mutex::new(writer));
        let (wt, wsh) = (shared_writer.clone(), sh.clone());
        let w = std::thread::Builder::new()
            .name("sofamq-store-writer".into())
            .spawn(move || Writer::run(&wt, &wsh))?;
        let fsh = sh.clone();
        let f = std::thread::Builder::new()
            .name("sofamq-store-flusher".into())
            .spawn(move || flusher::run(&fsh))?;
        let ssh = sh.clone();
        let scrub = std::thread::Builder::new()
            .name("sofamq-store-scrub".into())
            .spawn(move || scrub::run(&ssh))?;
        let filler = if sh.prefill.enabled() {
            let psh = sh.clone();
            Some(
                std::thread::Builder::new()
                    .name("sofamq-store-fill".into())
                    .spawn(move || crate::prefill::run(&psh))?,
            )
        } else {
            None
        };
        Ok(Store {
            inner: Arc::new(Inner {
                sh,
                stepped: None,
                shared_writer: sync.then_some(shared_writer),
                wake: tokio::sync::Notify::new(),
                writer: Some(w),
                flusher: Some(f),
                scrub: Some(scrub),
                filler,
            }),
        })
    }

    /// With [`Driver::Caller`]: runs the writer over every command queued so far (appends,
    /// replicated appends, truncations, epochs), writes and fdatasyncs their batch on this
    /// thread and completes their waiters. Returns how many commands it ran. Without it (the
    /// store's own threads run the writer) it does nothing and returns 0.
    pub fn step(&self) -> usize {
        let Some(w) = &self.inner.stepped else {
            return 0;
        };
        let mut w = lock(w);
        let mut cmds = std::mem::take(&mut lock(&self.sh().inbox).cmds);
        let n = cmds.len();
        w.step(&mut cmds, false);
        n
    }

    /// With [`Driver::Caller`]: as [`Store::step`], but the batches it writes wait for their
    /// fdatasync (their bytes are written and the written offset published, so the replication
    /// stream may ship them) until [`Store::complete_deferred`]. Returns whether any waits.
    pub fn step_deferring(&self) -> bool {
        let Some(w) = &self.inner.stepped else {
            return false;
        };
        let mut w = lock(w);
        let mut cmds = std::mem::take(&mut lock(&self.sh().inbox).cmds);
        w.step_deferring(&mut cmds)
    }

    /// With [`Driver::Caller`]: fdatasyncs and completes what [`Store::step_deferring`] left.
    pub fn complete_deferred(&self) {
        if let Some(w) = &self.inner.stepped {
            lock(w).complete_deferred();
        }
    }

    /// With [`Driver::Caller`]: the store's background work as one task on the caller's
    /// runtime. Runs [`Store::step`] whenever a command is queued and flushes the consume
    /// queues every `cq_flush_interval` (on the runtime's clock, so a simulator's time drives
    /// it). A failed flush fences the store, as the flusher thread does (a full disk is retried
    /// next interval). Over a disk with a sync delay ([`crate::io::Fs::sync_delay`]) each
    /// step's fdatasync completes only after that delay on the runtime's clock. Returns when
    /// every other handle to the store is dropped, or at once with the store's own threads.
    pub async fn drive(&self) {
        if self.inner.stepped.is_none() {
            return;
        }
        let interval = self.sh().cfg.cq_flush_interval;
        let mut next_flush = tokio::time::Instant::now() + interval;
        while Arc::strong_count(&self.inner) > 1 {
            let wait = next_flush.saturating_duration_since(tokio::time::Instant::now());
            let _ = tokio::time::timeout(wait, self.inner.wake.notified()).await;
            // A slow disk: the fdatasync of what this step wrote takes `delay` of the
            // runtime's time, while the rest of the host (the replication stream) runs.
            match self.sh().cfg.fs.sync_delay().filter(|d| !d.is_zero()) {
                Some(delay) if self.step_deferring() => {
                    tokio::time::sleep(delay).await;
                    self.complete_deferred();
                }
                Some(_) => {}
                None => {
                    self.step();
                }
            }
            if tokio::time::Instant::now() >= next_flush {
                next_flush = tokio::time::Instant::now() + interval;
                if !self.sh().is_fenced()
                    && let Err(e) = flusher::flush_once(self.sh())
                    && !crate::error::is_no_space(&e)
                {
                    self.sh()
                        .fence(format!("consume queue / checkpoint flush failed: {e}"));
                }
            }
        }
    }

    /// Which [`Driver`] runs this store.
    pub fn driver(&self) -> Driver {
        self.sh().cfg.driver
    }

    /// Runs blocking work on this store (a truncation, an epoch, a scan) from async code: on
    /// tokio's blocking pool with the store's own threads; inline with [`Driver::Caller`],
    /// whose owner (a simulator) runs everything on one thread in an order it decides.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if self.driver() == Driver::Caller {
            return Ok(f());
        }
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(format!("blocking task: {e}"))))
    }

    /// Appends without waiting: the receiver answers once the writer ran (with
    /// [`Driver::Caller`], after a [`Store::step`]) as [`Store::append`] would.
    pub fn submit_append(
        &self,
        recs: Vec<NewRecord>,
    ) -> Result<oneshot::Receiver<Result<Vec<Appended>, StoreError>>, StoreError> {
        self.submit(recs, None)
    }

    fn sh(&self) -> &Shared {
        &self.inner.sh
    }

    fn send(&self, cmd: Cmd) {
        let notify = {
            let mut g = lock(&self.sh().inbox);
            g.cmds.push(cmd);
            std::mem::replace(&mut g.writer_waiting, false)
        };
        if notify {
            self.sh().inbox_cv.notify_one();
        }
        if self.inner.stepped.is_some() {
            self.inner.wake.notify_one();
        }
    }

    fn submit(
        &self,
        recs: Vec<NewRecord>,
        epoch: Option<u64>,
    ) -> Result<oneshot::Receiver<Result<Vec<Appended>, StoreError>>, StoreError> {
        if self.sh().is_fenced() {
            return Err(self.sh().fenced_error());
        }
        let max = self.sh().cfg.max_record_size;
        let mut bytes = 0u64;
        for r in &recs {
            let n = record::encoded_len(r).map_err(StoreError::InvalidRecord)?;
            if n > max {
                return Err(StoreError::InvalidRecord(format!(
                    "record of {n} bytes exceeds max_record_size {max}"
                )));
            }
            if !r.topic.starts_with("%SYS%") {
                bytes += n as u64;
            }
        }
        if let Some(budget) = self.sh().cfg.max_disk_bytes
            && bytes > 0
        {
            let log_end = self.sh().log_end.load(Ordering::Acquire);
            if log_end.saturating_add(bytes) > budget {
                return Err(StoreError::DiskFull {
                    log_end,
                    bytes,
                    budget,
                });
            }
        }
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Append { recs, epoch, tx });
        Ok(rx)
    }

    /// Appends records (all or none). Resolves once they are durable ([`crate::FlushMode::Sync`])
    /// or written ([`crate::FlushMode::Async`]). Queue offsets are assigned in log order.
    pub async fn append(&self, recs: Vec<NewRecord>) -> Result<Vec<Appended>, StoreError> {
        if recs.is_empty() {
            return Ok(Vec::new());
        }
        let rx = self.submit(recs, None)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// [`Store::append`], written only if the log is still in `epoch` when the writer takes
    /// it ([`StoreError::EpochChanged`] otherwise, nothing written). A master passes the
    /// epoch it admitted the write in: a write held up (a paused process, a busy core)
    /// while its master stepped down, and maybe was elected again in a later epoch, is
    /// refused instead of landing under an epoch, or in a log, that did not admit it.
    pub async fn append_in_epoch(
        &self,
        epoch: u64,
        recs: Vec<NewRecord>,
    ) -> Result<Vec<Appended>, StoreError> {
        if recs.is_empty() {
            return Ok(Vec::new());
        }
        let rx = self.submit(recs, Some(epoch))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Blocking [`Store::append`]. Must not be called from inside an async runtime.
    pub fn append_blocking(&self, recs: Vec<NewRecord>) -> Result<Vec<Appended>, StoreError> {
        if recs.is_empty() {
            return Ok(Vec::new());
        }
        let rx = self.submit(recs, None)?;
        self.step();
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    /// Reads the record starting at `log_offset` (must be below [`Store::log_end_offset`]).
    /// A CRC failure in the durable part of the log fences the store.
    pub fn read_at(&self, log_offset: u64) -> Result<Record, StoreError> {
        let end = self.sh().log_end.load(Ordering::Acquire);
        let r = self.sh().read_record(log_offset, end);
        if let Err(StoreError::Corrupt { offset, reason }) = &r
            && *offset < self.durable_offset()
        {
            self.sh().fence_damaged(
                *offset,
                format!("corrupt record at offset {offset} found on read: {reason}"),
            );
        }
        r
    }

    /// Up to `max_count` records of a queue from `queue_offset`, stopping before the total
    /// size would exceed `max_bytes` (at least one record is returned if any is readable).
    /// Only records below [`Store::readable_offset`] are returned.
    pub fn read_queue(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let below = self.readable_offset();
        self.read_queue_below(topic, queue_id, queue_offset, max_count, max_bytes, below)
    }

    /// [`Store::read_queue`] over every record durable here, replicated or not: for the
    /// broker's replay of its own state (its consumer-state records were answered once
    /// durable here), never for delivery to consumers.
    pub fn read_queue_durable(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let below = self.durable_offset();
        self.read_queue_below(topic, queue_id, queue_offset, max_count, max_bytes, below)
    }

    fn read_queue_below(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
        max_count: usize,
        max_bytes: usize,
        readable: u64,
    ) -> Result<Vec<Record>, StoreError> {
        let Some(cq) = self.sh().cqs.get(topic, queue_id) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for e in cq.entries(queue_offset, max_count)? {
            if e.end() > readable {
                break;
            }
            if !out.is_empty() && bytes + e.size as usize > max_bytes {
                break;
            }
            let r = self.read_at(e.log_offset)?;
            if r.topic != topic
                || r.queue_id != queue_id
                || r.queue_offset != queue_offset + out.len() as u64
            {
                let reason =
                    format!("consume queue {topic}/{queue_id} entry does not match record");
                self.sh().queues_damaged(format!(
                    "{reason}: entry {} points at offset {}, which holds {}/{} offset {}",
                    queue_offset + out.len() as u64,
                    e.log_offset,
                    r.topic,
                    r.queue_id,
                    r.queue_offset
                ));
                return Err(StoreError::Corrupt {
                    offset: e.log_offset,
                    reason,
                });
            }
            bytes += r.size as usize;
            out.push(r);
        }
        Ok(out)
    }

    /// Raw consume-queue entries (log offset, size, tag hash) from `queue_offset`, readable ones
    /// only; for tag filtering without reading records.
    pub fn read_queue_entries(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
        max_count: usize,
    ) -> Result<Vec<CqEntry>, StoreError> {
        self.read_queue_entries_below(
            topic,
            queue_id,
            queue_offset,
            max_count,
            self.readable_offset(),
        )
    }

    /// [`Store::read_queue_entries`] with the records ending at or below `readable` instead
    /// of [`Store::readable_offset`]: with [`Store::durable_offset`], whether an entry is
    /// still there (not cut), replicated or not; with anything else, only the simulator's
    /// broken variant of the broker (`sofamq_broker::mutant`), which reads above the
    /// replicated offset.
    pub fn read_queue_entries_below(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
        max_count: usize,
        readable: u64,
    ) -> Result<Vec<CqEntry>, StoreError> {
        let Some(cq) = self.sh().cqs.get(topic, queue_id) else {
            return Ok(Vec::new());
        };
        let mut v = cq.entries(queue_offset, max_count)?;
        let keep = v.partition_point(|e| e.end() <= readable);
        v.truncate(keep);
        Ok(v)
    }

    /// `(min, max)` queue offsets of a queue; `max` is exclusive and counts readable records
    /// only. `(0, 0)` for an unknown queue.
    pub fn queue_offsets(&self, topic: &str, queue_id: u32) -> (u64, u64) {
        match self.sh().cqs.get(topic, queue_id) {
            Some(cq) => (0, cq.count_below(self.readable_offset()).unwrap_or(0)),
            None => (0, 0),
        }
    }

    /// Every (topic, queue id) that has a consume queue.
    pub fn queues(&self) -> Vec<(String, u32)> {
        let mut v: Vec<_> = self
            .sh()
            .cqs
            .all()
            .iter()
            .map(|q| (q.topic.clone(), q.queue_id))
            .collect();
        v.sort();
        v
    }

    /// Bytes written to the log (the offset the next record gets).
    pub fn log_end_offset(&self) -> u64 {
        self.sh().log_end.load(Ordering::Acquire)
    }

    /// How this store's appends are acknowledged: after their fdatasync, or once written.
    pub fn flush_mode(&self) -> FlushMode {
        self.sh().cfg.flush
    }

    /// Bytes covered by a completed fdatasync.
    pub fn durable_offset(&self) -> u64 {
        self.sh().durable.load(Ordering::Acquire)
    }

    /// `min(durable, replication limit)`: consumers read only below this.
    pub fn readable_offset(&self) -> u64 {
        self.sh().readable()
    }

    /// Sets (or with `None` removes) the replication limit on [`Store::readable_offset`].
    pub fn set_replication_limit(&self, limit: Option<u64>) {
        self.sh()
            .repl_limit
            .store(limit.unwrap_or(u64::MAX), Ordering::Release);
    }

    /// Durably cuts the log at `offset`, a record boundary at or below the end: segment files
    /// are cut and fsynced and the directory fsynced so the tail never reappears; consume queues
    /// and the epoch history are trimmed too: epochs that began at or after `offset` go (so a
    /// follower takes its master's epochs from there, even one below an epoch it began
    /// itself at `offset` and never wrote in). Appends then continue from `offset`.
    pub fn truncate(&self, offset: u64) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Cmd::Truncate { offset, tx });
        self.step();
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Where the damage begins when damage is why the log is fenced (a CRC failure below the
    /// durable offset, found on open or on a read, or a gap in the segments); `None` when
    /// it is not fenced, or fenced for a reason a cut does not fix (an I/O error, an
    /// unreadable epoch file).
    pub fn damaged_from(&self) -> Option<u64> {
        self.sh().damage()
    }

    /// For a replica whose master holds the whole log: cuts a log fenced by damage where the
    /// damage begins (keeping the cut bytes in `damaged/<offset>/`) and lifts the fence, so
    /// replication fetches the range again. `None` when the log is not fenced by damage.
    pub fn cut_damage(&self) -> Result<Option<DamageCut>, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Cmd::CutDamage { tx });
        self.step();
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// The current epoch (0 before any [`Store::begin_epoch`]).
    pub fn current_epoch(&self) -> u64 {
        self.sh().current_epoch.load(Ordering::Acquire)
    }

    /// The epoch history, oldest first.
    pub fn epoch_history(&self) -> Vec<EpochEntry> {
        lock(&self.sh().epochs).entries().to_vec()
    }

    /// The log now follows a master: every [`Store::append`] submitted after this call is
    /// refused with [`StoreError::Following`] (nothing written) until [`Store::begin_epoch`]
    /// succeeds; replicated records ([`Store::append_raw`]) are taken as before. Appends
    /// submitted before it are written in order. Does not wait.
    ///
    /// A broker that steps down calls it before anything else: a send admitted while it was
    /// master but slow to reach the store (a paused process, a busy core) must not land in a
    /// log that now copies another master's, where it would sit past the truncation point
    /// and break the copy.
    pub fn follow(&self) {
        self.send(Cmd::Follow);
        self.step();
    }

    /// Durably appends `(epoch, log_end_offset)` to the epoch history; records appended after
    /// this carry `epoch`. Epochs must strictly grow. Ends [`Store::follow`].
    pub fn begin_epoch(&self, epoch: u64) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Cmd::BeginEpoch { epoch, tx });
        self.step();
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    fn submit_raw(
        &self,
        start_offset: u64,
        bytes: Bytes,
    ) -> Result<oneshot::Receiver<Result<u64, StoreError>>, StoreError> {
        let (cmd, rx) = self.raw_cmd(start_offset, bytes)?;
        self.send(cmd);
        Ok(rx)
    }

    /// The command that appends `bytes` (whole records copied from a master's log) at
    /// `start_offset`, each record's header and CRC verified.
    fn raw_cmd(
        &self,
        start_offset: u64,
        bytes: Bytes,
    ) -> Result<(Cmd, oneshot::Receiver<Result<u64, StoreError>>), StoreError> {
        if self.sh().is_fenced() {
            return Err(self.sh().fenced_error());
        }
        let mut metas = Vec::new();
        let mut p = 0usize;
        while p < bytes.len() {
            let off = start_offset + p as u64;
            let v = record::decode_replicated(&bytes[p..], MAX_RECORD_HARD).map_err(|e| {
                StoreError::Corrupt {
                    offset: off,
                    reason: e.to_string(),
                }
            })?;
            if v.log_offset != off {
                return Err(StoreError::Corrupt {
                    offset: off,
                    reason: format!("record claims offset {}", v.log_offset),
                });
            }
            metas.push(RawMeta {
                at: p,
                topic_len: v.topic.len(),
                queue_id: v.queue_id,
                queue_offset: v.queue_offset,
                size: v.size,
                tag_hash: record::tag_hash(v.tag),
                epoch: v.epoch,
            });
            p += v.size as usize;
        }
        let (tx, rx) = oneshot::channel();
        let cmd = Cmd::Raw {
            start: start_offset,
            bytes,
            metas,
            tx,
        };
        Ok((cmd, rx))
    }

    /// Runs `cmd` on this thread, behind whatever the inbox holds, if the writer is idle
    /// (its thread waiting, no other caller running it); gives `cmd` back otherwise. The
    /// step writes, and when the sync thread has no batch in hand also fdatasyncs and
    /// completes, right here: a lone appender waits on no other thread.
    fn run_here(&self, cmd: Cmd) -> Result<(), Cmd> {
        let Some(w) = &self.inner.shared_writer else {
            return Err(cmd);
        };
        let mut w = match w.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(cmd),
        };
        let mut cmds = {
            let mut g = lock(&self.sh().inbox);
            if g.shutdown {
                return Err(cmd);
            }
            let mut cmds = std::mem::take(&mut g.cmds);
            cmds.push(cmd);
            cmds
        };
        w.step(&mut cmds, false);
        Ok(())
    }

    /// Replication (slave side): appends whole encoded records copied from a master's log at
    /// `start_offset`, which must equal [`Store::log_end_offset`]. Every record's header, CRC,
    /// offset and queue offset is verified (see [`record::decode_replicated`]); records are written and fsynced by the group-commit writer
    /// and dispatched to the consume queues. A record with a higher epoch than the current one
    /// durably adds that epoch to the history. Returns the new durable offset. Blocking; see
    /// [`Store::append_raw_async`].
    pub fn append_raw(&self, start_offset: u64, bytes: &[u8]) -> Result<u64, StoreError> {
        if bytes.is_empty() {
            return Ok(self.durable_offset());
        }
        let rx = self.submit_raw(start_offset, Bytes::copy_from_slice(bytes))?;
        self.step();
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    /// Async [`Store::append_raw`].
    pub async fn append_raw_async(
        &self,
        start_offset: u64,
        bytes: Bytes,
    ) -> Result<u64, StoreError> {
        if bytes.is_empty() {
            return Ok(self.durable_offset());
        }
        let rx = self.submit_raw(start_offset, bytes)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Replication (slave side): [`Store::append_raw`] run on the caller's thread when the
    /// writer is idle: the records are written, fdatasynced and completed here, without the
    /// two thread hand-offs (to the writer and back) a lone append otherwise waits on. When
    /// the writer is busy (its thread in a step, or group commit under load) the append is
    /// queued as usual and the receiver is returned to be awaited. Blocks for a write and an
    /// fdatasync: call it only on a thread that may block that long (a slave's follower
    /// runs on a thread of its own for this), never on a shared runtime's worker. Needs the
    /// store's own threads and sync-flush mode; otherwise it always queues.
    pub fn append_raw_here(
        &self,
        start_offset: u64,
        bytes: Bytes,
    ) -> Result<RawAppend, StoreError> {
        if bytes.is_empty() {
            return Ok(RawAppend::Done(self.durable_offset()));
        }
        let (cmd, mut rx) = self.raw_cmd(start_offset, bytes)?;
        match self.run_here(cmd) {
            Ok(()) => match rx.try_recv() {
                Ok(r) => r.map(RawAppend::Done),
                // Handed to the sync thread (a batch of it was still in hand).
                Err(oneshot::error::TryRecvError::Empty) => Ok(RawAppend::Queued(rx)),
                Err(oneshot::error::TryRecvError::Closed) => Err(StoreError::Closed),
            },
            Err(cmd) => {
                self.send(cmd);
                Ok(RawAppend::Queued(rx))
            }
        }
    }

    /// Replication (master side): whole encoded records from `from` (a record boundary), at
    /// most `max_bytes` (but at least one record when one is available), only below the durable
    /// offset and within one segment. Empty when `from` is the durable end.
    pub fn read_raw(&self, from: u64, max_bytes: usize) -> Result<Vec<u8>, StoreError> {
        self.sh().read_raw(from, max_bytes, self.durable_offset())
    }

    /// Bytes handed to the OS by `pwrite` (the same as [`Store::log_end_offset`]). Bytes
    /// between [`Store::durable_offset`] and here may still be lost in a machine crash.
    pub fn written_offset(&self) -> u64 {
        self.sh().log_end.load(Ordering::Acquire)
    }

    /// Notified (`notify_waiters`) each time [`Store::written_offset`] grows. Arm a
    /// `Notified` (`enable`) before reading the offset so that a write in between is not
    /// missed.
    pub fn written_notify(&self) -> Arc<tokio::sync::Notify> {
        self.sh().written_notify.clone()
    }

    /// Sets (or clears) what sees each write right after its `pwrite` ([`crate::WriteTap`]).
    pub fn set_write_tap(&self, tap: Option<Arc<dyn crate::WriteTap>>) {
        *self.sh().tap.write().unwrap_or_else(|p| p.into_inner()) = tap;
    }

    /// Replication (master side), streaming form: reads whole encoded records from `from` (a
    /// record boundary) into `buf[at..]`, at most `max_bytes` (but at least one record when
    /// one is available), below the WRITTEN offset (not necessarily durable yet) and within
    /// one segment; returns how many bytes were read (0 at the written end). `buf` only grows,
    /// so reusing it costs no zeroing per call. Headers and offsets are checked, CRCs are not:
    /// the receiving slave verifies every record's CRC before it stores it.
    ///
    /// The caller must not count these bytes as durable on this node: only
    /// [`Store::durable_offset`] says that.
    pub fn read_written_into(
        &self,
        from: u64,
        max_bytes: usize,
        buf: &mut Vec<u8>,
        at: usize,
    ) -> Result<usize, StoreError> {
        self.sh()
            .read_raw_into(from, max_bytes, self.written_offset(), buf, at)
    }

    /// Iterates forward over records from `from` (a record boundary) up to the log end. Stops
    /// after the first error.
    pub fn scan(&self, from: u64) -> Scan {
        Scan {
            shared: self.inner.sh.clone(),
            next: from,
            buf: Bytes::new(),
            buf_start: from,
            done: false,
        }
    }

    /// Why a consume queue was found not to match the log since the store opened (on a read
    /// or by the scrub); every queue is then rebuilt from the log at the next open.
    pub fn queues_damaged(&self) -> Option<String> {
        self.sh().queue_damage()
    }

    /// `Some(reason)` once the log is fenced (appends refused).
    pub fn fenced(&self) -> Option<String> {
        self.sh().fence_reason()
    }

    /// Writer counters.
    pub fn stats(&self) -> StoreStats {
        let c = &self.sh().counters;
        StoreStats {
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            no_space: c.no_space.load(Ordering::Relaxed),
            scrub_passes: c.scrub_passes.load(Ordering::Relaxed),
            scrub_bytes: c.scrub_bytes.load(Ordering::Relaxed),
            scrub_damage: c.scrub_damage.load(Ordering::Relaxed),
        }
    }

    /// The file system the store runs on ([`StoreConfig::fs`]): the broker keeps its own
    /// files (timer index, transaction checkpoint) on the same one.
    pub fn fs(&self) -> Arc<dyn crate::io::Fs> {
        self.sh().cfg.fs.clone()
    }

    /// Start offset of the log segment holding `offset` (`None` below the first segment).
    pub fn segment_start_of(&self, offset: u64) -> Option<u64> {
        self.sh().segment_for(offset).map(|s| s.start)
    }

    /// fdatasync latency histogram and durable bytes per fsync (commit-log segments).
    pub fn fsync_stats(&self) -> FsyncStats {
        let c = &self.sh().counters;
        let buckets: Vec<u64> = c
            .fsync_buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        FsyncStats {
            count: buckets.iter().sum(),
            buckets,
            sum_nanos: c.fsync_nanos.load(Ordering::Relaxed),
            synced_bytes: c.synced_bytes.load(Ordering::Relaxed),
        }
    }

    /// Flushes consume queues and writes the checkpoint now (normally periodic).
    pub fn flush_queues(&self) -> Result<(), StoreError> {
        if self.sh().is_fenced() {
            return Err(self.sh().fenced_error());
        }
        flusher::flush_once(self.sh())?;
        Ok(())
    }

    /// Bytes covered by each fsync so far (only with `record_batch_sizes`); clears the log.
    #[doc(hidden)]
    pub fn take_batch_sizes(&self) -> Vec<u64> {
        std::mem::take(&mut *lock(&self.sh().batch_sizes))
    }

    /// Makes the next segment write or fsync fail (tests only).
    #[doc(hidden)]
    pub fn inject_fault(&self, fault: Fault) {
        let f = &self.sh().faults;
        match fault {
            Fault::NextWrite => f.fail_next_write.store(true, Ordering::Release),
            Fault::NextSync => f.fail_next_sync.store(true, Ordering::Release),
            Fault::NextWriteNoSpace => f.no_space_next_write.store(true, Ordering::Release),
            Fault::NextSyncNoSpace => f.no_space_next_sync.store(true, Ordering::Release),
            Fault::SlowNextSync(ms) => f.slow_next_sync_ms.store(ms, Ordering::Release),
        }
    }
}
