//! The store's error type.

use std::io;

/// Every error the store returns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An operating-system I/O error.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The log is fenced: it refuses appends (a write or fsync failed, or the log is corrupt in
    /// the middle). The string says why.
    #[error("log fenced: {0}")]
    Fenced(String),
    /// Bytes on disk (or handed to `append_raw`) failed validation.
    #[error("corrupt record at offset {offset}: {reason}")]
    Corrupt {
        /// Log offset of the bad record.
        offset: u64,
        /// What was wrong with it.
        reason: String,
    },
    /// A record handed to `append` is invalid (too large, field too long, empty topic...).
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// The offset is outside the readable/written range.
    #[error("offset {offset} out of range (end {end})")]
    OffsetOutOfRange {
        /// Requested offset.
        offset: u64,
        /// Current end of the relevant range.
        end: u64,
    },
    /// The offset does not start a record.
    #[error("offset {0} is not a record boundary")]
    NotRecordBoundary(u64),
    /// `append_raw` was given bytes for a position other than the log end.
    #[error("raw append at {got} but log end is {expected}")]
    OffsetMismatch {
        /// The current log end.
        expected: u64,
        /// The offset the caller gave.
        got: u64,
    },
    /// `append_raw` got a record whose queue offset does not follow the local queue.
    #[error("queue offset mismatch for {topic}/{queue_id}: expected {expected}, got {got}")]
    QueueOffsetMismatch {
        /// Topic of the record.
        topic: String,
        /// Queue id of the record.
        queue_id: u32,
        /// The next queue offset the local log expects.
        expected: u64,
        /// The queue offset found in the record.
        got: u64,
    },
    /// Epochs must strictly grow.
    #[error("epoch {requested} is not above the current epoch {current}")]
    EpochNotIncreasing {
        /// Current epoch.
        current: u64,
        /// Epoch the caller asked for.
        requested: u64,
    },
    /// The append would take the log past its disk budget (`StoreConfig::max_disk_bytes`).
    /// Nothing was written; the log stays writable for smaller or reserved records.
    #[error(
        "disk full: log end {log_end} + {bytes} bytes exceeds the disk budget of {budget} bytes"
    )]
    DiskFull {
        /// Log end offset when the append was refused.
        log_end: u64,
        /// Encoded size of the refused records.
        bytes: u64,
        /// The configured budget.
        budget: u64,
    },
    /// A write found the disk full (ENOSPC or a quota, from a write or a file creation, never
    /// from an fsync). The batch was given back: its waiters get this error, the bytes it
    /// left past the last good write were cut, and the log stays writable, so appends succeed
    /// again once space returns. A record of a failed append may still be in the log (when
    /// an earlier part of its batch was written before a segment roll), so this is "may be
    /// stored", like any I/O failure.
    #[error(
        "no space left on the log's disk: {0}; nothing acked, appends resume once space returns"
    )]
    NoSpace(String),
    /// The configuration is unusable.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The log follows a master ([`crate::Store::follow`]): it takes replicated records
    /// only, until it begins an epoch of its own. Nothing was written.
    #[error("the log follows a master: it takes replicated records only; nothing was written")]
    Following,
    /// The log's epoch changed since the write was admitted
    /// ([`crate::Store::append_in_epoch`]): its master stepped down, and may have been
    /// elected again, meanwhile. Nothing was written.
    #[error(
        "the log is in epoch {current}, not in epoch {admitted} the write was admitted in; nothing was written"
    )]
    EpochChanged {
        /// The epoch the write was admitted in.
        admitted: u64,
        /// The log's epoch when the write reached it.
        current: u64,
    },
    /// The store is shutting down.
    #[error("store closed")]
    Closed,
}

impl StoreError {
    /// A copy of an I/O error, for handing the same failure to many waiters.
    pub(crate) fn io_copy(e: &io::Error) -> StoreError {
        if is_no_space(e) {
            return StoreError::NoSpace(e.to_string());
        }
        StoreError::Io(io::Error::new(e.kind(), e.to_string()))
    }
}

/// Marks an I/O error of a write or a file creation that found the disk full: unlike an
/// fsync failure, it leaves nothing uncertain behind once the short write is cut.
#[derive(Debug)]
struct NoSpaceWrite(io::Error);

impl std::fmt::Display for NoSpaceWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for NoSpaceWrite {}

/// Tags `e` as a full disk if it is one (ENOSPC, EDQUOT). Only for errors of writes and file
/// creations: an fsync error is never retried, whatever its code.
pub(crate) fn write_error(e: io::Error) -> io::Error {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            io::Error::new(e.kind(), NoSpaceWrite(e))
        }
        _ => e,
    }
}

/// Whether `e` was tagged by [`write_error`].
pub(crate) fn is_no_space(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<NoSpaceWrite>())
}
