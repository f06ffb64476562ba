//! What callers hand the writer thread, and how it answers them: the commands in its inbox
//! and the waiters it completes once their records are durable (or failed). Plain data, so
//! the log's shared state, the writer and the sync thread all name it from below.

use std::sync::mpsc;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::StoreError;
use crate::record::{Appended, NewRecord};

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Metadata of one record inside an `append_raw` payload (parsed and CRC-checked by the caller).
#[derive(Debug)]
pub(crate) struct RawMeta {
    /// Where the record starts in the payload.
    pub at: usize,
    /// Length of its topic (which follows its header, validated UTF-8).
    pub topic_len: usize,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub size: u32,
    pub tag_hash: u64,
    pub epoch: u64,
}

/// A command for the writer.
pub(crate) enum Cmd {
    Append {
        recs: Vec<NewRecord>,
        /// Written only if the log is still in this epoch (`Store::append_in_epoch`).
        epoch: Option<u64>,
        tx: Reply<Vec<Appended>>,
    },
    Raw {
        start: u64,
        bytes: Bytes,
        metas: Vec<RawMeta>,
        tx: Reply<u64>,
    },
    Truncate {
        offset: u64,
        tx: mpsc::SyncSender<Result<(), StoreError>>,
    },
    BeginEpoch {
        epoch: u64,
        tx: mpsc::SyncSender<Result<(), StoreError>>,
    },
    /// From here on, refuse local appends until the next `BeginEpoch` (see `Store::follow`).
    Follow,
    CutDamage {
        tx: mpsc::SyncSender<Result<Option<DamageCut>, StoreError>>,
    },
}

pub(crate) enum Waiter {
    Append(Reply<Vec<Appended>>, Vec<Appended>),
    Raw(Reply<u64>),
}

impl Waiter {
    /// Completes the waiter: its records are durable; `durable` is the durable log offset.
    pub(crate) fn succeed(self, durable: u64) {
        match self {
            Waiter::Append(tx, out) => {
                let _ = tx.send(Ok(out));
            }
            Waiter::Raw(tx) => {
                let _ = tx.send(Ok(durable));
            }
        }
    }

    /// Fails the waiter with `e`.
    pub(crate) fn fail(self, e: StoreError) {
        match self {
            Waiter::Append(tx, _) => {
                let _ = tx.send(Err(e));
            }
            Waiter::Raw(tx) => {
                let _ = tx.send(Err(e));
            }
        }
    }
}

/// What a cut of a damaged log tail did ([`crate::Store::cut_damage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamageCut {
    /// The log now ends here (where the damage began).
    pub at: u64,
    /// Where the log's files ended before the cut.
    pub old_end: u64,
    /// The cut bytes, kept for the operator (`DATA/store/damaged/<at>/`).
    pub kept_in: std::path::PathBuf,
}
