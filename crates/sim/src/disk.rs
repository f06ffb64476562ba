//! The store's I/O seam ([`sofamq_store::io::Fs`]) over turmoil's simulated file system: each
//! host has its own disk; a crash keeps only what was synced (an unsynced write may survive
//! torn, in blocks); a fault plan turns the Nth `fdatasync` into `EIO`; a broken variant
//! acknowledges `fdatasync` without syncing (a store that acks before its fsync). A disk can
//! be slow: its sync latency ([`SimDisk::set_sync_latency`]) is what a caller-driven store
//! lets pass on the host's clock between writing a batch and completing it, so the batch is
//! written (and may be replicated) but not durable for that long.
//!
//! An open file follows its renames, as a POSIX descriptor follows its inode: turmoil's
//! handles name a path, so a file opened as `x.tmp` and renamed to `x` would otherwise fail
//! every later write with `ENOENT`. A file whose name is removed, or replaced by a rename,
//! is orphaned as an unlinked inode is: writes and syncs to it succeed and are lost.

use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use sofamq_store::io::{Entry, FileIo, Fs, OpenMode};
use turmoil::fs::shim::std::fs::{self as sfs, OpenOptions};

/// What the simulated disk does wrong.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskFaults {
    /// Every `n`th file `fdatasync`/`fsync` fails with `EIO` (0: never).
    pub eio_every_nth_sync: u64,
    /// Broken variant: `fdatasync` answers OK without syncing anything.
    pub lie_on_sync: bool,
}

/// A simulated disk for one host.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    faults: DiskFaults,
    syncs: Arc<AtomicU64>,
    /// fdatasync latency in microseconds (0: instant), shared by every clone.
    latency_us: Arc<AtomicU64>,
    /// Every file opened on this disk (so a rename or removal reaches open handles).
    open: Arc<Mutex<Vec<Weak<SimFile>>>>,
}

impl SimDisk {
    /// A disk with `faults`.
    pub fn new(faults: DiskFaults) -> SimDisk {
        SimDisk {
            faults,
            syncs: Arc::default(),
            latency_us: Arc::default(),
            open: Arc::default(),
        }
    }

    /// Every later fdatasync of the store's log takes `d` of simulated time (zero: none).
    pub fn set_sync_latency(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.store(us, Ordering::Relaxed);
    }

    /// The current fdatasync latency.
    pub fn sync_latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::Relaxed))
    }

    /// The shared handle a `StoreConfig` takes.
    pub fn shared(faults: DiskFaults) -> Arc<dyn Fs> {
        Arc::new(SimDisk::new(faults))
    }
}

/// turmoil answers a full disk with `ErrorKind::Other` and the text of ENOSPC; a real disk
/// gives `StorageFull`, which is what the store acts on.
fn enospc(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::Other && e.to_string().contains("No space left on device") {
        io::Error::new(io::ErrorKind::StorageFull, e.to_string())
    } else {
        e
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An open file: turmoil's handle at the file's current name, or none once orphaned.
#[derive(Debug)]
struct Handle {
    file: Option<sfs::File>,
    path: PathBuf,
    writable: bool,
}

#[derive(Debug)]
struct SimFile {
    h: Mutex<Handle>,
    disk: SimDisk,
}

/// The error of a read from an orphaned file (turmoil keeps no unlinked inodes).
fn orphan_read() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "read of a file whose name was removed",
    )
}

impl SimFile {
    fn sync(&self, f: impl FnOnce(&sfs::File) -> io::Result<()>) -> io::Result<()> {
        let n = self.disk.syncs.fetch_add(1, Ordering::Relaxed) + 1;
        let every = self.disk.faults.eio_every_nth_sync;
        if every > 0 && n.is_multiple_of(every) {
            return Err(io::Error::other("simulated EIO on fdatasync"));
        }
        if self.disk.faults.lie_on_sync {
            return Ok(());
        }
        lock(&self.h).file.as_ref().map_or(Ok(()), f)
    }
}

impl FileIo for SimFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let h = lock(&self.h);
        let f = h.file.as_ref().ok_or_else(orphan_read)?;
        std::os::unix::fs::FileExt::read_at(f, buf, pos)
    }
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize> {
        match lock(&self.h).file.as_ref() {
            Some(f) => std::os::unix::fs::FileExt::write_at(f, buf, pos).map_err(enospc),
            None => Ok(buf.len()),
        }
    }
    fn sync_data(&self) -> io::Result<()> {
        self.sync(sfs::File::sync_data)
    }
    fn sync_all(&self) -> io::Result<()> {
        self.sync(sfs::File::sync_all)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        match lock(&self.h).file.as_ref() {
            Some(f) => f.set_len(len).map_err(enospc),
            None => Ok(()),
        }
    }
    fn len(&self) -> io::Result<u64> {
        let h = lock(&self.h);
        Ok(h.file.as_ref().ok_or_else(orphan_read)?.metadata()?.len())
    }
}

impl SimDisk {
    /// The open files, forgetting closed ones.
    fn open_files(&self) -> Vec<Arc<SimFile>> {
        let mut open = lock(&self.open);
        open.retain(|w| w.strong_count() > 0);
        open.iter().filter_map(Weak::upgrade).collect()
    }

    /// Orphans every open file named `path` (its name was removed or replaced).
    fn orphan(&self, path: &Path) {
        for f in self.open_files() {
            let mut h = lock(&f.h);
            if h.path == path {
                h.file = None;
            }
        }
    }
}

impl Fs for SimDisk {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileIo>> {
        let mut o = OpenOptions::new();
        o.read(true);
        match mode {
            OpenMode::Read => {}
            OpenMode::Write => {
                o.write(true);
            }
            OpenMode::Create => {
                o.write(true).create(true);
            }
            OpenMode::Truncate => {
                o.write(true).create(true).truncate(true);
            }
        }
        let f = Arc::new(SimFile {
            h: Mutex::new(Handle {
                file: Some(o.open(path).map_err(enospc)?),
                path: path.to_path_buf(),
                writable: mode != OpenMode::Read,
            }),
            disk: self.clone(),
        });
        lock(&self.open).push(Arc::downgrade(&f));
        Ok(f)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        sfs::read(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for e in sfs::read_dir(dir)? {
            let e = e?;
            out.push(Entry {
                name: e.file_name(),
                is_dir: e.file_type()?.is_dir(),
            });
        }
        Ok(out)
    }
    fn exists(&self, path: &Path) -> bool {
        sfs::exists(path)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        sfs::create_dir_all(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        sfs::rename(from, to)?;
        if from == to {
            return Ok(());
        }
        self.orphan(to);
        for f in self.open_files() {
            let mut h = lock(&f.h);
            if h.path == from && h.file.is_some() {
                let mut o = OpenOptions::new();
                o.read(true).write(h.writable);
                h.file = Some(o.open(to)?);
                h.path = to.to_path_buf();
            }
        }
        Ok(())
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        sfs::remove_file(path)?;
        self.orphan(path);
        Ok(())
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        sfs::remove_dir_all(dir)
    }
    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        sfs::hard_link(original, link)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.faults.lie_on_sync {
            return Ok(());
        }
        sfs::sync_dir(dir)
    }
    fn sync_delay(&self) -> Option<Duration> {
        Some(self.sync_latency()).filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file opened as `x.tmp` and renamed to `x` is still written through its handle (as
    /// the store's epoch history is after a trim); one whose name was replaced or removed
    /// takes writes that go nowhere. The steps are the store's (data synced before the
    /// rename, the directory right after): turmoil shows unsynced writes across a rename
    /// under neither name.
    #[test]
    fn an_open_file_follows_its_rename_and_an_unlinked_one_is_orphaned() {
        let mut sim = turmoil::Builder::new().build();
        sim.client("h", async {
            let disk = SimDisk::new(DiskFaults::default());
            let dir = Path::new("/d");
            disk.create_dir_all(dir)?;
            let (tmp, x) = (dir.join("x.tmp"), dir.join("x"));
            let old = disk.open(&x, OpenMode::Create)?;
            old.write_at(b"old", 0)?;
            old.sync_data()?;
            let f = disk.open(&tmp, OpenMode::Truncate)?;
            f.write_at(b"one", 0)?;
            f.sync_data()?;
            disk.rename(&tmp, &x)?;
            disk.sync_dir(dir)?;
            f.write_at(b"two", 3)?;
            f.sync_data()?;
            assert_eq!(disk.read(&x)?, b"onetwo");
            assert!(!disk.exists(&tmp));
            // `old` named the file the rename replaced: its writes are lost.
            old.write_at(b"lost", 0)?;
            old.sync_data()?;
            assert_eq!(disk.read(&x)?, b"onetwo");
            disk.remove_file(&x)?;
            assert_eq!(f.write_at(b"gone", 0)?, 4);
            assert!(f.read_at(&mut [0; 4], 0).is_err());
            assert!(!disk.exists(&x));
            Ok(())
        });
        sim.run().unwrap();
    }
}
