//! Durable Raft log and vote.
//!
//! * `vote.json`: the vote, replaced with write-temp + fsync + rename + directory fsync.
//! * `log`: one record per line, `CRC32C(hex) SPACE JSON NEWLINE`, where the JSON is a
//!   [`Record`]. An append writes its lines and `fdatasync`s before openraft's callback
//!   runs. Truncate and purge rewrite the file (temp + fsync + rename). On open, an
//!   incomplete last line (a torn append, never acknowledged) is cut. A complete line that
//!   fails its CRC, at the end or before good ones, is damage: the file is copied to
//!   `damaged/log-<ms>`, the log is cut before that line, and the store is *catching up*
//!   (the `catching-up` file says why, so a restart keeps it so). Entries this node had
//!   acknowledged may be gone, so until it holds the leader's log again it must neither vote
//!   nor stand for election (the node enforces that; see [`LogStore::catching_up`]).
//! * `log-end`: the index of the last entry made durable, rewritten after each append and
//!   before each truncation. A log found to end below it was cut short or removed (a torn
//!   append never reaches it): catching up too.
//!
//! The log only holds state changes (never heartbeats), so it is kept in memory too.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::raft::{Entry, LogId, StorageError, TypeConfig, Vote};

/// One line of the log file.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Record {
    /// Everything up to this id was purged (first line after a purge).
    Purged(LogId),
    /// A log entry.
    Entry(Entry),
}

/// Errors opening the store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// I/O failure.
    #[error("controller store I/O: {0}")]
    Io(#[from] io::Error),
    /// Another live store (this process or another) holds the directory.
    #[error("controller data dir {0} is in use by another controller")]
    Locked(String),
    /// A damaged vote file (a lost vote could be cast twice in one term: an operator decides).
    #[error("controller log corrupt at byte {offset}: {reason}")]
    Corrupt {
        /// Byte offset of the bad record.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
}

/// Writes `bytes` to `path` atomically and durably: temp file, fsync, rename, dir fsync.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

fn encode(rec: &Record, out: &mut Vec<u8>) -> io::Result<()> {
    let json = serde_json::to_vec(rec).map_err(io::Error::other)?;
    out.extend_from_slice(format!("{:08x} ", crc32c::crc32c(&json)).as_bytes());
    out.extend_from_slice(&json);
    out.push(b'\n');
    Ok(())
}

/// Decodes one line (without its newline).
fn decode(line: &[u8]) -> Result<Record, String> {
    if line.len() < 10 || line[8] != b' ' {
        return Err("short record".into());
    }
    let crc = std::str::from_utf8(&line[..8])
        .ok()
        .and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or("bad crc field")?;
    let json = &line[9..];
    if crc32c::crc32c(json) != crc {
        return Err("crc mismatch".into());
    }
    serde_json::from_slice(json).map_err(|e| format!("bad json: {e}"))
}

struct Inner {
    /// Held (locked) for the store's lifetime: one controller per data dir.
    _lock: File,
    dir: PathBuf,
    log: Arc<File>,
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
}

/// The log + vote store given to openraft (cheap to clone; clones share state).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    dir: PathBuf,
    catching_up: Arc<parking_lot::Mutex<Option<String>>>,
}

const CATCHING_UP: &str = "catching-up";
/// The index of the last entry the log held durably (`none` for an empty log): written
/// after each append's fdatasync and before a truncation, so a log found shorter than it
/// was cut short or removed, not torn.
const LOG_END: &str = "log-end";

fn write_log_end(dir: &Path, last: Option<u64>) -> io::Result<()> {
    let text = last.map_or_else(|| "none".to_string(), |i| i.to_string());
    write_atomic(&dir.join(LOG_END), text.as_bytes())
}

/// The recorded log end: `Ok(None)` when there is no mark (a data dir from before it),
/// `Ok(Some(None))` for an empty log, `Err(why)` when the mark is unreadable.
fn read_log_end(dir: &Path) -> io::Result<Result<Option<Option<u64>>, String>> {
    match std::fs::read_to_string(dir.join(LOG_END)) {
        Ok(t) if t.trim() == "none" => Ok(Ok(Some(None))),
        Ok(t) => Ok(t
            .trim()
            .parse::<u64>()
            .map(|i| Some(Some(i)))
            .map_err(|_| format!("unreadable log-end mark {t:?}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Ok(None)),
        Err(e) => Err(e),
    }
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("log")
}

fn vote_path(dir: &Path) -> PathBuf {
    dir.join("vote.json")
}

impl LogStore {
    /// Opens (creating if needed) the store in `dir`, recovering the log.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir)?;
        let lock = File::create(dir.join("lock"))?;
        // A node of this process that is shutting down may hold it for a moment more (its
        // last tasks drop the store after `stopped` fires): wait a bounded while for it.
        let mut tries = 0;
        while lock.try_lock().is_err() {
            tries += 1;
            if tries > 40 {
                return Err(OpenError::Locked(dir.display().to_string()));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let vote = match std::fs::read(vote_path(dir)) {
            Ok(b) => Some(
                serde_json::from_slice::<Vote>(&b).map_err(|e| OpenError::Corrupt {
                    offset: 0,
                    reason: format!("vote.json: {e}"),
                })?,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let path = log_path(dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let (records, good_len, damage) = recover(&bytes);
        let marker = dir.join(CATCHING_UP);
        let mut catching_up = match std::fs::read_to_string(&marker) {
            Ok(why) => Some(why),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        if let Some((offset, reason)) = damage {
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let aside = dir.join("damaged");
            std::fs::create_dir_all(&aside)?;
            let kept = aside.join(format!("log-{ms}"));
            write_atomic(&kept, &bytes)?;
            let why = format!(
                "controller log damaged at byte {offset} ({reason}); {} bytes after it cut, \
                 a copy kept in {}",
                bytes.len() - good_len,
                kept.display()
            );
            tracing::error!(reason = %why, "controller log damaged: catching up from the leader, not voting until then");
            write_atomic(&marker, why.as_bytes())?;
            catching_up = Some(why);
        }
        let mut entries = BTreeMap::new();
        let mut last_purged = None;
        for r in records {
            match r {
                Record::Purged(id) => {
                    entries.retain(|i, _| *i > id.index);
                    last_purged = Some(id);
                }
                Record::Entry(e) => {
                    // A later record at the same index replaces the rest of the tail.
                    let _ = entries.split_off(&e.log_id.index);
                    entries.insert(e.log_id.index, e);
                }
            }
        }
        // A log shorter than the mark lost entries this node had made durable (and may
        // have acknowledged): cut short or removed, which no torn append explains.
        let last = entries
            .keys()
            .next_back()
            .copied()
            .or(last_purged.map(|p: LogId| p.index));
        let lost = match read_log_end(dir)? {
            Ok(Some(Some(mark))) if last.is_none_or(|l| l < mark) => Some(format!(
                "controller log ends at index {} but held index {mark} durably: cut short or removed",
                last.map_or_else(|| "none".into(), |l| l.to_string())
            )),
            Err(why) => Some(format!("{why}: the log's durable end is unknown")),
            _ => None,
        };
        if let Some(why) = lost
            && catching_up.is_none()
        {
            tracing::error!(reason = %why, "controller log damaged: catching up from the leader, not voting until then");
            write_atomic(&marker, why.as_bytes())?;
            catching_up = Some(why);
        }
        // A leader that restarts with its vote committed for itself takes up leadership at
        // once, without an election (openraft's startup). With a damaged log that would be
        // a leader missing entries it had committed, overwriting them on the followers. A
        // catching-up node keeps its term but only as a candidate's vote: it starts as a
        // follower, refuses votes, and the others elect a leader that holds the log.
        let vote = match vote {
            Some(mut v) if catching_up.is_some() && v.committed => {
                tracing::warn!(vote = %v, "controller catching up: its committed vote is not restored as leadership");
                v.committed = false;
                Some(v)
            }
            v => v,
        };
        write_log_end(dir, last)?;
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if (good_len as u64) < file.metadata()?.len() {
            tracing::warn!(path = %path.display(), kept = good_len, "controller log: cut after its last good record");
            file.set_len(good_len as u64)?;
            file.sync_all()?;
        }
        sync_dir(&path)?;
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                _lock: lock,
                dir: dir.to_path_buf(),
                log: Arc::new(file),
                entries,
                last_purged,
                vote,
            })),
            dir: dir.to_path_buf(),
            catching_up: Arc::new(parking_lot::Mutex::new(catching_up)),
        })
    }

    /// Why this store is catching up (its log was damaged and cut), while it is: the node
    /// must then grant no vote and start no election, since entries it had acknowledged may
    /// be gone.
    pub fn catching_up(&self) -> Option<String> {
        self.catching_up.lock().clone()
    }

    /// Ends catching up (the log holds the leader's again): durably removes the marker.
    pub fn caught_up(&self) -> io::Result<()> {
        let marker = self.dir.join(CATCHING_UP);
        match std::fs::remove_file(&marker) {
            Ok(()) => sync_dir(&marker)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        *self.catching_up.lock() = None;
        Ok(())
    }
}

/// Parses the log bytes: the good records, the length of the good prefix, and where and
/// why the damage begins when what follows the prefix is not just a torn last append.
fn recover(bytes: &[u8]) -> (Vec<Record>, usize, Option<(usize, String)>) {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let Some(n) = rest.iter().position(|b| *b == b'\n') else {
            // An append writes whole lines: a last line without its newline never completed
            // its fdatasync, so nobody was told it is stored.
            tracing::warn!(offset = pos, "controller log: torn last record ignored");
            return (out, pos, None);
        };
        match decode(&rest[..n]) {
            Ok(r) => {
                out.push(r);
                pos += n + 1;
            }
            Err(e) => return (out, pos, Some((pos, e))),
        }
    }
    (out, pos, None)
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl Inner {
    /// Rewrites the whole log file from memory (after truncate or purge).
    async fn rewrite(&mut self) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        if let Some(p) = self.last_purged {
            encode(&Record::Purged(p), &mut buf).map_err(write_err)?;
        }
        for e in self.entries.values() {
            encode(&Record::Entry(e.clone()), &mut buf).map_err(write_err)?;
        }
        let path = log_path(&self.dir);
        let file = tokio::task::spawn_blocking(move || -> io::Result<File> {
            write_atomic(&path, &buf)?;
            OpenOptions::new().append(true).open(&path)
        })
        .await
        .map_err(write_err)?
        .map_err(write_err)?;
        self.log = Arc::new(file);
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let inner = self.inner.lock().await;
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.inner.lock().await;
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().await;
        let bytes = serde_json::to_vec(vote)
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?;
        let path = vote_path(&inner.dir);
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.inner.lock().await.vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.inner.lock().await;
        let mut buf = Vec::new();
        let mut new = Vec::new();
        for e in entries {
            encode(&Record::Entry(e.clone()), &mut buf).map_err(write_err)?;
            new.push(e);
        }
        let file = inner.log.clone();
        let dir = inner.dir.clone();
        let last = new.last().map(|e| e.log_id.index);
        let res = tokio::task::spawn_blocking(move || -> io::Result<()> {
            (&*file).write_all(&buf)?;
            file.sync_data()?;
            match last {
                Some(_) => write_log_end(&dir, last),
                None => Ok(()),
            }
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r);
        if let Err(e) = res {
            tracing::error!(error = %e, "controller log append failed");
            let err = write_err(io::Error::new(e.kind(), e.to_string()));
            callback.log_io_completed(Err(e));
            return Err(err);
        }
        for e in new {
            inner.entries.insert(e.log_id.index, e);
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().await;
        let _ = inner.entries.split_off(&log_id.index);
        // The mark comes down first: a crash between the two leaves it at or below the log.
        let last = inner
            .entries
            .keys()
            .next_back()
            .copied()
            .or(inner.last_purged.map(|p| p.index));
        let dir = inner.dir.clone();
        tokio::task::spawn_blocking(move || write_log_end(&dir, last))
            .await
            .map_err(write_err)?
            .map_err(write_err)?;
        inner.rewrite().await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().await;
        inner.entries.retain(|i, _| *i > log_id.index);
        inner.last_purged = Some(log_id);
        inner.rewrite().await
    }
}
