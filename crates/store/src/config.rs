//! Store configuration.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// When appends are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// Every append is acknowledged only after the fdatasync that covers it (group commit).
    /// The default.
    Sync,
    /// Appends are acknowledged once written to the page cache; the writer fsyncs every
    /// `interval`. A crash of the machine (not just the process) can lose acknowledged appends.
    Async {
        /// Time between background fsyncs.
        interval: Duration,
    },
}

/// Who runs the store's background work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// The store's own threads: the group-commit writer (and, in sync mode, its sync thread),
    /// the consume-queue flusher and the scrub. The default.
    Threads,
    /// No threads: the caller runs the writer with [`crate::Store::step`] and the flusher with
    /// [`crate::Store::flush_queues`]; no scrub. Every file operation then happens on the
    /// caller's thread, in the order it calls, which is what a deterministic simulator needs.
    Caller,
}

/// Configuration of a [`crate::Store`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Root directory; holds `commitlog/`, `consumequeue/`, `checkpoint` and `epochs`.
    pub dir: PathBuf,
    /// Maximum size of a commit-log segment file (a record larger than this gets a segment of
    /// its own). Default 256 MiB.
    pub segment_size: u64,
    /// Flush policy. Default [`FlushMode::Sync`].
    pub flush: FlushMode,
    /// The writer writes and fsyncs at most about this many bytes per batch. Default 4 MiB.
    pub max_batch_bytes: usize,
    /// Sync mode: a batch of at most this many bytes, written while nothing else waits,
    /// is fdatasynced and completed by the thread that wrote it (no hand-off for a lone
    /// append to wait on); a larger one goes to the sync thread, so the next batch is
    /// encoded and written during its fdatasync. Default 64 KiB.
    pub inline_sync_max_bytes: usize,
    /// Largest encoded record accepted by `append`. Default 8 MiB.
    pub max_record_size: usize,
    /// How often consume queues are flushed and the checkpoint written. Default 1 s.
    pub cq_flush_interval: Duration,
    /// Keep a log of the bytes covered by each fsync (for the bench). Default false.
    #[doc(hidden)]
    pub record_batch_sizes: bool,
    /// Disk budget for the commit log: an `append` that would take the log end past it fails
    /// with [`crate::StoreError::DiskFull`] (nothing is written, the log is not fenced, reads
    /// keep working). Records of reserved `%SYS%` topics are exempt so consumer state and
    /// metadata can still be written. `append_raw` (replication) is not limited. Default none.
    pub max_disk_bytes: Option<u64>,
    /// Bytes per second the background scrub reads to check the CRC of every durable record
    /// (see the `scrub` module); 0 turns it off. Default 8 MiB/s.
    pub scrub_bytes_per_sec: u64,
    /// Rest between two scrub passes over the whole log. Default 10 min.
    pub scrub_pause: Duration,
    /// Drop-behind: after each commit, commit-log pages more than this many bytes behind the
    /// durable end are dropped from the OS page cache (`posix_fadvise(DONTNEED)`), so a
    /// steady write stream reuses a small set of cached pages instead of filling memory
    /// with pages nobody reads again. Readers of older records (a consumer catching up, a
    /// slave fetching history, the scrub) then read from the disk. Default none (off).
    pub drop_behind: Option<u64>,
    /// Zero-fill ahead: in sync-flush mode with the store's own threads, a fill thread
    /// keeps up to this many bytes of synced zeros past the writer's position in the active
    /// segment, so the writer's `fdatasync`s overwrite existing bytes instead of growing the
    /// file, which spares each of them a journal commit of the new size (see the `prefill`
    /// module). The window starts at 64 KiB in a fresh segment and grows with what is
    /// written; a clean close cuts the zeros, recovery cuts them after a crash. 0 turns it
    /// off. Default 16 MiB.
    pub prefill: u64,
    /// No zero-fill while the log is written faster than this many bytes per second
    /// (measured over 250 ms): the zeros double the bytes the disk writes, and at high rates
    /// that bandwidth is worth more than the journal commits they save. Default 200 MiB/s;
    /// `u64::MAX`: no cap.
    pub prefill_max_rate: u64,
    /// The file system the store uses. Default the real one ([`crate::io::StdFs`]).
    pub fs: Arc<dyn crate::io::Fs>,
    /// Who runs the writer, flusher and scrub. Default [`Driver::Threads`].
    pub driver: Driver,
}

impl StoreConfig {
    /// Defaults for a store rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            dir: dir.into(),
            segment_size: 256 * 1024 * 1024,
            flush: FlushMode::Sync,
            max_batch_bytes: 4 * 1024 * 1024,
            inline_sync_max_bytes: 64 * 1024,
            max_record_size: 8 * 1024 * 1024,
            cq_flush_interval: Duration::from_secs(1),
            record_batch_sizes: false,
            max_disk_bytes: None,
            scrub_bytes_per_sec: 8 * 1024 * 1024,
            scrub_pause: Duration::from_secs(600),
            drop_behind: None,
            prefill: 16 * 1024 * 1024,
            prefill_max_rate: 200 * 1024 * 1024,
            fs: crate::io::StdFs::shared(),
            driver: Driver::Threads,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), crate::StoreError> {
        use crate::StoreError::InvalidConfig;
        if self.segment_size < 4096 {
            return Err(InvalidConfig("segment_size must be at least 4096".into()));
        }
        if self.max_record_size < crate::record::HEADER_LEN + 1
            || self.max_record_size > crate::record::MAX_RECORD_HARD
        {
            return Err(InvalidConfig(format!(
                "max_record_size must be within {}..={}",
                crate::record::HEADER_LEN + 1,
                crate::record::MAX_RECORD_HARD
            )));
        }
        if self.max_batch_bytes == 0 {
            return Err(InvalidConfig("max_batch_bytes must be > 0".into()));
        }
        if self.cq_flush_interval.is_zero() {
            return Err(InvalidConfig("cq_flush_interval must be > 0".into()));
        }
        if let FlushMode::Async { interval } = self.flush
            && interval.is_zero()
        {
            return Err(InvalidConfig("async flush interval must be > 0".into()));
        }
        Ok(())
    }
}
