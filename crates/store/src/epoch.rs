//! The epoch history file: `(epoch, start_offset)` entries, each with its own CRC.
//!
//! Appends are fsynced before they return. Since each entry is fsynced before the next is
//! written, only the last entry can be torn; a bad entry before the last one is corruption.
//! Trimming (on truncate) rewrites the file atomically (temp file + rename + directory fsync).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::io::{FileIo, Fs, OpenMode};

const ENTRY: usize = 20;
const FILE: &str = "epochs";
const TMP: &str = "epochs.tmp";

/// One epoch-history entry: records from `start_offset` on were written in `epoch`
/// (until the next entry's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    /// The epoch.
    pub epoch: u64,
    /// Log offset of the first record of this epoch.
    pub start_offset: u64,
}

fn encode(e: &EpochEntry) -> [u8; ENTRY] {
    let mut b = [0u8; ENTRY];
    b[0..8].copy_from_slice(&e.epoch.to_le_bytes());
    b[8..16].copy_from_slice(&e.start_offset.to_le_bytes());
    let crc = crc32c::crc32c(&b[..16]);
    b[16..20].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<EpochEntry> {
    let a: [u8; ENTRY] = b.try_into().ok()?;
    let crc = u32::from_le_bytes([a[16], a[17], a[18], a[19]]);
    if crc != crc32c::crc32c(&a[..16]) {
        return None;
    }
    let mut e = [0u8; 8];
    e.copy_from_slice(&a[0..8]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&a[8..16]);
    Some(EpochEntry {
        epoch: u64::from_le_bytes(e),
        start_offset: u64::from_le_bytes(s),
    })
}

/// The epoch history and its file.
#[derive(Debug)]
pub(crate) struct EpochHistory {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    file: Arc<dyn FileIo>,
    entries: Vec<EpochEntry>,
    /// The file holds bytes past `entries` that are not a torn tail (a corrupt entry and
    /// whatever follows it): the next trim rewrites the file whatever it keeps.
    damaged: bool,
}

impl EpochHistory {
    /// Opens the history. A torn last entry is cut (durably); a bad entry before the last one is
    /// reported as the second value (the caller fences) and the history is kept up to it; the
    /// next [`EpochHistory::trim_after`] rewrites the file without the bad bytes.
    pub fn open(fs: Arc<dyn Fs>, dir: &Path) -> io::Result<(EpochHistory, Option<String>)> {
        let _ = fs.remove_file(&dir.join(TMP));
        let path = dir.join(FILE);
        let file = fs.open(&path, OpenMode::Create)?;
        let bytes = fs.read(&path)?;
        let mut entries = Vec::new();
        let mut problem = None;
        let whole = bytes.len() / ENTRY;
        let mut good_len = 0usize;
        for i in 0..whole {
            match decode(&bytes[i * ENTRY..(i + 1) * ENTRY]) {
                Some(e)
                    if entries.last().is_none_or(|l: &EpochEntry| {
                        e.epoch > l.epoch && e.start_offset >= l.start_offset
                    }) =>
                {
                    entries.push(e);
                    good_len = (i + 1) * ENTRY;
                }
                _ => {
                    if i + 1 < whole {
                        problem = Some(format!("epoch history entry {i} is corrupt"));
                    }
                    break;
                }
            }
        }
        if problem.is_none() && good_len != bytes.len() {
            tracing::warn!(
                cut = bytes.len() - good_len,
                "cutting torn tail of epoch history"
            );
            file.set_len(good_len as u64)?;
            file.sync_all()?;
        }
        Ok((
            EpochHistory {
                fs,
                dir: dir.to_path_buf(),
                file,
                entries,
                damaged: problem.is_some(),
            },
            problem,
        ))
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// Current epoch (0 when the history is empty).
    pub fn current(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.epoch)
    }

    /// Durably appends an entry. The caller checked that the epoch grows.
    pub fn append(&mut self, e: EpochEntry) -> io::Result<()> {
        if self.damaged {
            self.trim_after(u64::MAX)?;
        }
        let pos = (self.entries.len() * ENTRY) as u64;
        self.file.write_all_at(&encode(&e), pos)?;
        self.file.sync_data()?;
        self.entries.push(e);
        Ok(())
    }

    /// Durably drops every entry starting after `offset`.
    pub fn trim_after(&mut self, offset: u64) -> io::Result<()> {
        let keep = self
            .entries
            .iter()
            .take_while(|e| e.start_offset <= offset)
            .count();
        self.keep(keep)
    }

    /// Durably drops every entry starting at or after `offset`: what a log cut to `offset`
    /// keeps of its history when it is to take another log's records from there on (a
    /// follower's truncation). An epoch that began at `offset` holds no record below it; if
    /// the records that come next belong to it, they begin it again.
    pub fn trim_from(&mut self, offset: u64) -> io::Result<()> {
        let keep = self
            .entries
            .iter()
            .take_while(|e| e.start_offset < offset)
            .count();
        self.keep(keep)
    }

    /// Durably keeps the first `keep` entries (rewriting the file if anything goes).
    fn keep(&mut self, keep: usize) -> io::Result<()> {
        if keep == self.entries.len() && !self.damaged {
            return Ok(());
        }
        let tmp = self.dir.join(TMP);
        let f = self.fs.open(&tmp, OpenMode::Truncate)?;
        let bytes: Vec<u8> = self.entries[..keep].iter().flat_map(encode).collect();
        f.write_all_at(&bytes, 0)?;
        f.sync_data()?;
        self.fs.rename(&tmp, &self.dir.join(FILE))?;
        self.fs.sync_dir(&self.dir)?;
        self.file = f;
        self.entries.truncate(keep);
        self.damaged = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn open(dir: &Path) -> io::Result<(EpochHistory, Option<String>)> {
        EpochHistory::open(crate::io::StdFs::shared(), dir)
    }

    #[test]
    fn append_trim_reopen_and_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        let (mut h, p) = open(d.path()).unwrap();
        assert!(p.is_none());
        assert_eq!(h.current(), 0);
        for (e, s) in [(1, 0), (2, 100), (5, 300)] {
            h.append(EpochEntry {
                epoch: e,
                start_offset: s,
            })
            .unwrap();
        }
        h.trim_after(250).unwrap();
        assert_eq!(h.current(), 2);
        h.append(EpochEntry {
            epoch: 3,
            start_offset: 250,
        })
        .unwrap();
        drop(h);
        // torn tail: half an entry
        let path = d.path().join(FILE);
        let mut b = fs::read(&path).unwrap();
        b.extend_from_slice(&[1, 2, 3, 4, 5]);
        fs::write(&path, &b).unwrap();
        let (h, p) = open(d.path()).unwrap();
        assert!(p.is_none());
        let epochs: Vec<u64> = h.entries().iter().map(|e| e.epoch).collect();
        assert_eq!(epochs, vec![1, 2, 3]);
        assert_eq!(fs::metadata(&path).unwrap().len(), 60);
        drop(h);
        // corrupt middle entry => problem reported
        let mut b = fs::read(&path).unwrap();
        b[3] ^= 0xff;
        fs::write(&path, &b).unwrap();
        let (h, p) = open(d.path()).unwrap();
        assert!(p.is_some());
        assert!(h.entries().is_empty());
    }
}
