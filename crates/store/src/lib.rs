//! sofamq-store: the durable commit log of a SofaMQ broker.
//!
//! * A segmented, append-only **commit log** (`commitlog/<20-digit start offset>`) of
//!   CRC32C-protected records (format in [`record`]), written with `pwrite` and `fdatasync`
//!   (no mmap, so an I/O error comes back as an error).
//! * A **group-commit writer** thread: every pending append goes into one write per batch
//!   (see `writer.rs`); in sync-flush mode a second thread issues the fdatasync that covers
//!   every batch written so far and completes their waiters (`syncer.rs`), so encoding the
//!   next batch overlaps the flush of the previous one. A batch is committed in one place
//!   (`syncer::complete`: fdatasync, publish, dispatch, answer), by the sync thread or, when
//!   nothing else is pending, by the writer itself. With [`Driver::Caller`] there are no
//!   threads: the owner runs the writer ([`Store::step`], [`Store::drive`]).
//! * Every file operation goes through [`io::Fs`] ([`io::StdFs`] by default), so a simulator
//!   can put a disk that loses unsynced writes in its place.
//! * **Consume queues** per (topic, queue id): fixed-size entries pointing into the log,
//!   dispatched after the log is durable and rebuilt from it after a crash.
//! * **Recovery** from a checkpoint: a torn tail is cut, corruption in the middle fences the log
//!   (see the `recovery` module).
//! * An **epoch history** for replication and failover, and durable truncation.
//! * A **scrub** thread that re-reads the durable log at a bounded rate and verifies every
//!   CRC, so damage in a segment nothing reads is found while a healthy copy exists.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sofamq_store::StoreError> {
//! use sofamq_store::{NewRecord, Store, StoreConfig};
//! let store = Store::open(StoreConfig::new("/tmp/sofamq-data"))?;
//! let done = store
//!     .append(vec![NewRecord { topic: "t".into(), body: "hi".into(), ..Default::default() }])
//!     .await?;
//! let rec = store.read_at(done[0].log_offset)?;
//! assert_eq!(&rec.body[..], b"hi");
//! # Ok(()) }
//! ```

pub mod bench;
mod checkpoint;
pub mod clock;
mod cmd;
mod config;
mod cq;
mod epoch;
mod error;
mod flusher;
pub mod io;
mod log;
pub mod mutant;
mod prefill;
pub mod record;
mod recovery;
mod scrub;
mod segment;
mod store;
mod syncer;
#[doc(hidden)]
pub mod testutil;
mod truncate;
mod writer;

pub use cmd::DamageCut;
pub use config::{Driver, FlushMode, StoreConfig};
pub use cq::{CQ_ENTRY_LEN, CqEntry};
pub use epoch::EpochEntry;
pub use error::StoreError;
pub use log::Scan;
pub use record::{Appended, NewRecord, Record, tag_hash};
pub use recovery::queue_rebuild_pending;
pub use store::{Fault, FsyncStats, RawAppend, Store, StoreStats};

/// Sees the log's bytes as the writer hands them to the OS: called on the writer's thread
/// right after each `pwrite` (and after [`Store::written_offset`] covers the bytes), before
/// their fdatasync, with the log's epoch then, the bytes' log offset and the bytes (whole
/// records, within one segment). A replication master sends them to its slaves from there,
/// so a slave's fdatasync does not wait for a task to be woken. It must not block.
///
/// Returns whether every reader waiting on [`Store::written_notify`] already has these
/// bytes: the writer then does not notify it.
pub trait WriteTap: Send + Sync {
    /// See the trait.
    fn written(&self, epoch: u64, start: u64, bytes: &[u8]) -> bool;
}

/// Upper bounds (microseconds, inclusive) of the fdatasync latency buckets; one more bucket
/// counts everything above the last bound.
pub const FSYNC_BUCKETS_US: [u64; 13] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];
