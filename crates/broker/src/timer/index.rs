//! The on-disk, time-ordered timer index: derived state, rebuilt from the log.
//!
//! Timers are grouped into buckets of `bucket_ms` by due time. Bucket `b` has two
//! append-only files under `<data_dir>/timer/`:
//!
//! * `b<b>`: 16-byte entries `(due_ms u64, queue offset u64)` of the timer records of
//!   `%SYS%TIMER` queue 0 whose due time falls in the bucket;
//! * `d<b>`: 16-byte entries `(queue offset u64, kind u64)` of the timers that were
//!   delivered or recalled (from the op records of queue 1).
//!
//! Only the bucket keys are in memory, never the entries, so memory does not grow with
//! the number of pending timers. A `checkpoint` file (written after the files it covers
//! were fsynced) records how far both queues are indexed; on start the index resumes from
//! there, and everything past it is indexed again (entries may repeat; readers dedupe by
//! queue offset). A log that was cut below the checkpoint (a slave truncated by the epoch
//! rule) makes the index start over from an empty directory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sofamq_store::io::{FileIo, Fs, OpenMode};

use serde::{Deserialize, Serialize};

/// Bytes per index entry (both file kinds).
pub const ENTRY_LEN: usize = 16;

/// Why a timer left the pending set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum Done {
    /// Delivered into its topic.
    Fired = 1,
    /// Cancelled by RecallMessage.
    Recalled = 2,
    /// Dropped (its topic no longer exists, or its record is unreadable).
    Dropped = 3,
}

impl Done {
    fn from_u64(v: u64) -> Done {
        match v {
            1 => Done::Fired,
            2 => Done::Recalled,
            _ => Done::Dropped,
        }
    }
}

/// How far the index covers the two queues, and the per-topic pending counts there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Bucket width the files were written with.
    pub bucket_ms: u64,
    /// Next queue offset of queue 0 (timer records) to index.
    pub next_timer: u64,
    /// Next queue offset of queue 1 (op records) to index.
    pub next_op: u64,
    /// `(queue offset, log offset)` of the last indexed record of each queue, to notice a
    /// log that was cut and written again below the checkpoint.
    pub last_timer: Option<(u64, u64)>,
    /// See `last_timer`.
    pub last_op: Option<(u64, u64)>,
    /// Pending timers per real topic.
    pub counts: BTreeMap<String, u64>,
}

/// Most files kept open between checkpoints; past it the index checkpoints early.
const MAX_OPEN_FILES: usize = 128;

/// The index directory.
#[derive(Debug)]
pub struct Index {
    dir: PathBuf,
    bucket_ms: u64,
    /// Bucket keys that have a `b` file.
    buckets: BTreeSet<u64>,
    /// Files appended to since the last checkpoint.
    /// Files appended to since the last checkpoint, with their length.
    open: HashMap<PathBuf, (Arc<dyn FileIo>, u64)>,
    /// The file system of the store.
    fs: Arc<dyn Fs>,
    /// The state as of the last call (what the next checkpoint writes).
    pub cp: Checkpoint,
}

fn le(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

impl Index {
    /// Opens (creating) the index in `dir`. A checkpoint written with another bucket width,
    /// or unreadable, starts the index over.
    pub fn open(fs: Arc<dyn Fs>, dir: &Path, bucket_ms: u64) -> io::Result<Index> {
        fs.create_dir_all(dir)?;
        let cp_path = dir.join("checkpoint");
        let cp = match fs.read(&cp_path) {
            Ok(b) => match serde_json::from_slice::<Checkpoint>(&b) {
                Ok(cp) if cp.bucket_ms == bucket_ms => Some(cp),
                Ok(_) => {
                    tracing::warn!("timer index written with another bucket width: rebuilding");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "timer index checkpoint unreadable: rebuilding");
                    None
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut idx = Index {
            dir: dir.to_path_buf(),
            bucket_ms,
            buckets: BTreeSet::new(),
            open: HashMap::new(),
            fs,
            cp: Checkpoint {
                bucket_ms,
                ..Checkpoint::default()
            },
        };
        match cp {
            Some(cp) => {
                idx.cp = cp;
                for e in idx.fs.list(dir)? {
                    let name = e.name.to_string_lossy();
                    if let Some(n) = name.strip_prefix('b')
                        && let Ok(b) = n.parse::<u64>()
                    {
                        idx.buckets.insert(b);
                    }
                }
            }
            None => idx.wipe()?,
        }
        Ok(idx)
    }

    /// Removes every file and starts over from queue offset 0.
    pub fn wipe(&mut self) -> io::Result<()> {
        self.open.clear();
        for e in self.fs.list(&self.dir)? {
            if !e.is_dir {
                self.fs.remove_file(&self.dir.join(&e.name))?;
            }
        }
        self.buckets.clear();
        self.cp = Checkpoint {
            bucket_ms: self.bucket_ms,
            ..Checkpoint::default()
        };
        self.checkpoint()
    }

    /// The bucket of a due time.
    pub fn bucket_of(&self, due_ms: u64) -> u64 {
        due_ms / self.bucket_ms
    }

    /// Start of bucket `b`, epoch ms.
    pub fn bucket_start(&self, b: u64) -> u64 {
        b.saturating_mul(self.bucket_ms)
    }

    /// Bucket width, ms.
    pub fn bucket_ms(&self) -> u64 {
        self.bucket_ms
    }

    /// Every bucket with a `b` file, oldest first.
    pub fn buckets(&self) -> &BTreeSet<u64> {
        &self.buckets
    }

    /// Appends one entry to the file `name`.
    fn append(&mut self, name: String, entry: &[u8; ENTRY_LEN]) -> io::Result<()> {
        let path = self.dir.join(name);
        if !self.open.contains_key(&path) {
            if self.open.len() >= MAX_OPEN_FILES {
                self.checkpoint()?;
            }
            let f = self.fs.open(&path, OpenMode::Create)?;
            // A torn entry from a crash would misalign every later one: cut it.
            let mut len = f.len()?;
            if len % ENTRY_LEN as u64 != 0 {
                len -= len % ENTRY_LEN as u64;
                f.set_len(len)?;
            }
            self.open.insert(path.clone(), (f, len));
        }
        let (f, len) = self
            .open
            .get_mut(&path)
            .ok_or_else(|| io::Error::other("index file vanished"))?;
        f.write_all_at(entry, *len)?;
        *len += ENTRY_LEN as u64;
        Ok(())
    }

    /// Appends a pending timer.
    pub fn add_timer(&mut self, due_ms: u64, queue_offset: u64) -> io::Result<u64> {
        let b = self.bucket_of(due_ms);
        let mut e = [0u8; ENTRY_LEN];
        e[..8].copy_from_slice(&due_ms.to_le_bytes());
        e[8..].copy_from_slice(&queue_offset.to_le_bytes());
        self.append(format!("b{b}"), &e)?;
        self.buckets.insert(b);
        Ok(b)
    }

    /// Appends a done mark for the timer at `queue_offset` due at `due_ms`.
    pub fn add_done(&mut self, due_ms: u64, queue_offset: u64, kind: Done) -> io::Result<()> {
        let b = self.bucket_of(due_ms);
        let mut e = [0u8; ENTRY_LEN];
        e[..8].copy_from_slice(&queue_offset.to_le_bytes());
        e[8..].copy_from_slice(&(kind as u64).to_le_bytes());
        self.append(format!("d{b}"), &e)
    }

    fn read_entries(&self, name: &str) -> io::Result<Vec<(u64, u64)>> {
        let path = self.dir.join(name);
        let f = match self.fs.open(&path, OpenMode::Read) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let len = usize::try_from(f.len()?).map_err(io::Error::other)?;
        let len = len - len % ENTRY_LEN;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, 0)?;
        Ok(buf
            .chunks_exact(ENTRY_LEN)
            .map(|c| (le(&c[..8]), le(&c[8..])))
            .collect())
    }

    /// The done marks of bucket `b`: queue offset → kind.
    pub fn done_of(&self, b: u64) -> io::Result<HashMap<u64, Done>> {
        Ok(self
            .read_entries(&format!("d{b}"))?
            .into_iter()
            .map(|(q, k)| (q, Done::from_u64(k)))
            .collect())
    }

    /// The timers of bucket `b` that are not done: `(due_ms, queue offset)`, each once.
    pub fn pending_of(&self, b: u64) -> io::Result<Vec<(u64, u64)>> {
        let done = self.done_of(b)?;
        let mut seen = BTreeSet::new();
        Ok(self
            .read_entries(&format!("b{b}"))?
            .into_iter()
            .filter(|(_, q)| !done.contains_key(q) && seen.insert(*q))
            .collect())
    }

    /// Deletes bucket `b`'s files (every timer in it is done).
    pub fn remove_bucket(&mut self, b: u64) -> io::Result<()> {
        for name in [format!("b{b}"), format!("d{b}")] {
            let p = self.dir.join(&name);
            self.open.remove(&p);
            match self.fs.remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.buckets.remove(&b);
        Ok(())
    }

    /// fsyncs every file appended to since the last checkpoint, then durably replaces the
    /// checkpoint with [`Index::cp`].
    pub fn checkpoint(&mut self) -> io::Result<()> {
        for (_, (f, _)) in self.open.drain() {
            f.sync_data()?;
        }
        let tmp = self.dir.join("checkpoint.tmp");
        let body = serde_json::to_vec(&self.cp).map_err(io::Error::other)?;
        self.fs.write_synced(&tmp, &body)?;
        self.fs.rename(&tmp, &self.dir.join("checkpoint"))?;
        self.fs.sync_dir(&self.dir)
    }

    /// Files kept open (tests).
    #[cfg(test)]
    fn open_files(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn pending_excludes_done_and_repeats_and_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        let mut i = Index::open(sofamq_store::io::StdFs::shared(), d.path(), 1000).unwrap();
        assert_eq!(i.add_timer(5_500, 1).unwrap(), 5);
        i.add_timer(5_700, 2).unwrap();
        i.add_timer(5_500, 1).unwrap(); // indexed again after a restart
        i.add_timer(9_100, 3).unwrap();
        i.add_done(5_700, 2, Done::Recalled).unwrap();
        assert_eq!(i.pending_of(5).unwrap(), vec![(5_500, 1)]);
        assert_eq!(i.done_of(5).unwrap().get(&2), Some(&Done::Recalled));
        i.cp.next_timer = 4;
        i.cp.counts.insert("t".into(), 2);
        i.checkpoint().unwrap();
        assert_eq!(i.open_files(), 0);
        let j = Index::open(sofamq_store::io::StdFs::shared(), d.path(), 1000).unwrap();
        assert_eq!(j.cp.next_timer, 4);
        assert_eq!(j.buckets().iter().copied().collect::<Vec<_>>(), vec![5, 9]);
        assert_eq!(j.pending_of(9).unwrap(), vec![(9_100, 3)]);
    }

    #[test]
    fn other_bucket_width_or_torn_entry() {
        let d = tempfile::tempdir().unwrap();
        let mut i = Index::open(sofamq_store::io::StdFs::shared(), d.path(), 1000).unwrap();
        i.add_timer(1_500, 7).unwrap();
        i.checkpoint().unwrap();
        // A torn half entry at the end is cut before the next append.
        std::fs::OpenOptions::new()
            .append(true)
            .open(d.path().join("b1"))
            .unwrap()
            .write_all(&[1, 2, 3])
            .unwrap();
        let mut i = Index::open(sofamq_store::io::StdFs::shared(), d.path(), 1000).unwrap();
        i.add_timer(1_600, 8).unwrap();
        assert_eq!(i.pending_of(1).unwrap(), vec![(1_500, 7), (1_600, 8)]);
        i.remove_bucket(1).unwrap();
        assert!(i.pending_of(1).unwrap().is_empty());
        i.add_timer(1_600, 9).unwrap();
        i.cp.next_timer = 10;
        i.checkpoint().unwrap();
        // Another width: everything is indexed again from the log.
        let j = Index::open(sofamq_store::io::StdFs::shared(), d.path(), 60_000).unwrap();
        assert_eq!(j.cp.next_timer, 0);
        assert!(j.buckets().is_empty());
    }
}
