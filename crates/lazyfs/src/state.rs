//! In-memory state of one mount: the inode table, the open handles and the
//! pending (not yet fsynced) writes of every file.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::FileType;

/// The FUSE inode number of the mount's root directory.
pub(crate) const ROOT_INO: u64 = 1;

/// One `write` that has not reached the backing file yet.
#[derive(Debug, Clone)]
pub(crate) struct Extent {
    pub(crate) offset: u64,
    pub(crate) data: Vec<u8>,
}

impl Extent {
    pub(crate) fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
}

/// The unsynced writes of one inode, in the order they were made.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The backing file (opened for writing by the handle that made the first write).
    pub(crate) file: Arc<File>,
    pub(crate) writes: Vec<Extent>,
    pub(crate) bytes: u64,
    /// The file was unlinked or replaced by a rename: its data can never be seen again
    /// after a cut, so a cut drops it whole.
    pub(crate) orphan: bool,
}

impl Pending {
    pub(crate) fn end(&self) -> u64 {
        self.writes.iter().map(Extent::end).max().unwrap_or(0)
    }

    /// Writes every pending extent, in write order, to the backing file (no sync).
    pub(crate) fn write_back(&mut self) -> io::Result<u64> {
        for w in &self.writes {
            self.file.write_all_at(&w.data, w.offset)?;
        }
        let n = self.bytes;
        self.writes.clear();
        self.bytes = 0;
        Ok(n)
    }

    /// Drops what lies at or past `size` (a truncation). Returns the bytes dropped.
    pub(crate) fn trim(&mut self, size: u64) -> u64 {
        let before = self.bytes;
        self.writes.retain_mut(|w| {
            if w.offset >= size {
                return false;
            }
            if w.end() > size {
                w.data.truncate((size - w.offset) as usize);
            }
            true
        });
        self.bytes = self.writes.iter().map(|w| w.data.len() as u64).sum();
        before - self.bytes
    }

    /// Lays the pending extents over `buf`, which holds the bytes at `offset`.
    pub(crate) fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        for w in &self.writes {
            let (s, e) = (w.offset.max(offset), w.end().min(end));
            if s < e {
                let dst = (s - offset) as usize..(e - offset) as usize;
                let src = (s - w.offset) as usize..(e - w.offset) as usize;
                buf[dst].copy_from_slice(&w.data[src]);
            }
        }
    }
}

/// Path <-> inode number table. Paths are relative to the backing directory; the
/// root is the empty path. Inodes are never forgotten while mounted (the table only
/// grows with the number of distinct paths seen); a remount starts a fresh table.
#[derive(Debug)]
pub(crate) struct Inodes {
    paths: HashMap<u64, PathBuf>,
    by_path: HashMap<PathBuf, u64>,
    next: u64,
}

impl Inodes {
    pub(crate) fn new() -> Self {
        let mut t = Inodes {
            paths: HashMap::new(),
            by_path: HashMap::new(),
            next: ROOT_INO + 1,
        };
        t.paths.insert(ROOT_INO, PathBuf::new());
        t.by_path.insert(PathBuf::new(), ROOT_INO);
        t
    }

    pub(crate) fn path(&self, ino: u64) -> Option<&PathBuf> {
        self.paths.get(&ino)
    }

    pub(crate) fn ino_for(&mut self, rel: &Path) -> u64 {
        if let Some(&ino) = self.by_path.get(rel) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.paths.insert(ino, rel.to_path_buf());
        self.by_path.insert(rel.to_path_buf(), ino);
        ino
    }

    /// Forgets `rel` (after unlink / rmdir). Returns the inode it had.
    pub(crate) fn remove(&mut self, rel: &Path) -> Option<u64> {
        let ino = self.by_path.remove(rel)?;
        self.paths.remove(&ino);
        Some(ino)
    }

    /// Moves `from` (and, for a directory, everything under it) to `to`. Returns the
    /// inode that `to` had before, which the rename replaced.
    pub(crate) fn rename(&mut self, from: &Path, to: &Path) -> Option<u64> {
        let replaced = self.remove(to);
        let moved: Vec<(PathBuf, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (old, ino) in moved {
            self.by_path.remove(&old);
            let new = match old.strip_prefix(from) {
                Ok(rest) if rest.as_os_str().is_empty() => to.to_path_buf(),
                Ok(rest) => to.join(rest),
                Err(_) => continue,
            };
            self.paths.insert(ino, new.clone());
            self.by_path.insert(new, ino);
        }
        replaced
    }
}

/// An open file.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) ino: u64,
    pub(crate) file: Arc<File>,
    /// Opened with `O_SYNC` / `O_DSYNC`: every write is durable when it returns.
    pub(crate) sync: bool,
}

/// One entry of a directory listing snapshot (taken at `opendir`).
#[derive(Debug)]
pub(crate) struct DirEntry {
    pub(crate) ino: u64,
    pub(crate) kind: FileType,
    pub(crate) name: OsString,
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) backing: PathBuf,
    pub(crate) inodes: Inodes,
    pub(crate) handles: HashMap<u64, Handle>,
    pub(crate) dirs: HashMap<u64, Vec<DirEntry>>,
    pub(crate) next_fh: u64,
    pub(crate) files: HashMap<u64, Pending>,
    pub(crate) pending_bytes: u64,
    pub(crate) pending_cap: u64,
    /// Set when the power is cut: from then on every request fails with `EIO`.
    pub(crate) dead: bool,
}

impl State {
    pub(crate) fn new(backing: PathBuf, pending_cap: u64) -> Self {
        State {
            backing,
            inodes: Inodes::new(),
            handles: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
            files: HashMap::new(),
            pending_bytes: 0,
            pending_cap,
            dead: false,
        }
    }

    pub(crate) fn fh(&mut self) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        fh
    }

    /// Applies the pending writes of `ino` to its backing file (no sync).
    pub(crate) fn write_back(&mut self, ino: u64) -> io::Result<()> {
        if let Some(mut p) = self.files.remove(&ino) {
            let n = p.write_back()?;
            self.pending_bytes -= n;
        }
        Ok(())
    }

    /// Applies every file's pending writes to the backing files (no sync): what the
    /// kernel does under memory pressure.
    pub(crate) fn write_back_all(&mut self) -> io::Result<()> {
        let inos: Vec<u64> = self.files.keys().copied().collect();
        for ino in inos {
            self.write_back(ino)?;
        }
        Ok(())
    }

    /// Drops pending writes at or past `size` of `ino`.
    pub(crate) fn trim(&mut self, ino: u64, size: u64) {
        if let Some(p) = self.files.get_mut(&ino) {
            self.pending_bytes -= p.trim(size);
            if p.writes.is_empty() {
                self.files.remove(&ino);
            }
        }
    }

    /// The inode `ino` lost its name: its pending data dies with the last handle.
    pub(crate) fn orphan(&mut self, ino: u64) {
        let open = self.handles.values().any(|h| h.ino == ino);
        if open {
            if let Some(p) = self.files.get_mut(&ino) {
                p.orphan = true;
            }
        } else if let Some(p) = self.files.remove(&ino) {
            self.pending_bytes -= p.bytes;
        }
    }
}
