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

/// Identity of a backing file: (st_dev, st_ino).
pub(crate) type BackingId = (u64, u64);

pub(crate) fn backing_id(meta: &std::fs::Metadata) -> BackingId {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Path <-> inode number table. Paths are relative to the backing directory; the
/// root is the empty path. FUSE inodes are keyed by the backing file's identity, so
/// hard links (made through the mount or found in the backing directory) share one
/// inode and its pending writes. Inodes are never forgotten while mounted (the table
/// grows with the number of distinct files seen); a remount starts a fresh table.
#[derive(Debug)]
pub(crate) struct Inodes {
    /// The names of each inode; the first one is used to reach the backing file.
    names: HashMap<u64, Vec<PathBuf>>,
    by_path: HashMap<PathBuf, u64>,
    by_backing: HashMap<BackingId, u64>,
    backing_of: HashMap<u64, BackingId>,
    next: u64,
}

impl Inodes {
    pub(crate) fn new(root: BackingId) -> Self {
        let mut t = Inodes {
            names: HashMap::new(),
            by_path: HashMap::new(),
            by_backing: HashMap::new(),
            backing_of: HashMap::new(),
            next: ROOT_INO + 1,
        };
        t.names.insert(ROOT_INO, vec![PathBuf::new()]);
        t.by_path.insert(PathBuf::new(), ROOT_INO);
        t.by_backing.insert(root, ROOT_INO);
        t.backing_of.insert(ROOT_INO, root);
        t
    }

    pub(crate) fn path(&self, ino: u64) -> Option<&PathBuf> {
        self.names.get(&ino).and_then(|n| n.first())
    }

    /// The inode of the backing file `id`, found at `rel`.
    pub(crate) fn ino_for(&mut self, rel: &Path, id: BackingId) -> u64 {
        if let Some(&ino) = self.by_path.get(rel) {
            if self.backing_of.get(&ino) == Some(&id) {
                return ino;
            }
            // Replaced behind our back: the name now means another file.
            self.remove(rel);
        }
        let ino = match self.by_backing.get(&id) {
            Some(&ino) => ino,
            None => {
                let ino = self.next;
                self.next += 1;
                self.by_backing.insert(id, ino);
                self.backing_of.insert(ino, id);
                ino
            }
        };
        self.names.entry(ino).or_default().push(rel.to_path_buf());
        self.by_path.insert(rel.to_path_buf(), ino);
        ino
    }

    /// Forgets the name `rel` (after unlink / rmdir). Returns the inode it had and
    /// whether that was its last name.
    pub(crate) fn remove(&mut self, rel: &Path) -> Option<(u64, bool)> {
        let ino = self.by_path.remove(rel)?;
        let names = self.names.entry(ino).or_default();
        names.retain(|n| n != rel);
        let last = names.is_empty();
        if last {
            self.names.remove(&ino);
            if let Some(id) = self.backing_of.remove(&ino) {
                self.by_backing.remove(&id);
            }
        }
        Some((ino, last))
    }

    /// Moves the name `from` (and, for a directory, every name under it) to `to`.
    /// Returns the inode that `to` named before, if the rename took its last name.
    pub(crate) fn rename(&mut self, from: &Path, to: &Path) -> Option<u64> {
        let src = self.by_path.get(from).copied();
        if src.is_some() && src == self.by_path.get(to).copied() {
            // Two names of one file: rename(2) does nothing.
            return None;
        }
        let replaced = match self.remove(to) {
            Some((ino, true)) => Some(ino),
            _ => None,
        };
        let moved: Vec<(PathBuf, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (old, ino) in moved {
            let new = match old.strip_prefix(from) {
                Ok(rest) if rest.as_os_str().is_empty() => to.to_path_buf(),
                Ok(rest) => to.join(rest),
                Err(_) => continue,
            };
            self.by_path.remove(&old);
            if let Some(n) = self
                .names
                .get_mut(&ino)
                .and_then(|n| n.iter_mut().find(|n| **n == old))
            {
                *n = new.clone();
            }
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
    /// A failing device: which file operation answers `EIO` (see [`crate::IoFault`]).
    pub(crate) fault: Option<crate::IoFault>,
}

impl State {
    pub(crate) fn new(backing: PathBuf, root: BackingId, pending_cap: u64) -> Self {
        State {
            backing,
            inodes: Inodes::new(root),
            handles: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
            files: HashMap::new(),
            pending_bytes: 0,
            pending_cap,
            dead: false,
            fault: None,
        }
    }

    pub(crate) fn fh(&mut self) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        fh
    }

    /// Applies the pending writes of `ino` to its backing file (no sync).
    /// On an error the extents stay pending (applying them again, in order, later
    /// gives the same bytes).
    pub(crate) fn write_back(&mut self, ino: u64) -> io::Result<()> {
        if let Some(p) = self.files.get_mut(&ino) {
            let n = p.write_back()?;
            self.pending_bytes -= n;
            self.files.remove(&ino);
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
