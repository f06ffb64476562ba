//! The store's I/O seam ([`sofamq_store::io::Fs`]) over turmoil's simulated file system: each
//! host has its own disk; a crash keeps only what was synced (an unsynced write may survive
//! torn, in blocks); a fault plan turns the Nth `fdatasync` into `EIO`; a broken variant
//! acknowledges `fdatasync` without syncing (a store that acks before its fsync). A disk can
//! be slow: its sync latency ([`SimDisk::set_sync_latency`]) is what a caller-driven store
//! lets pass on the host's clock between writing a batch and completing it, so the batch is
//! written (and may be replicated) but not durable for that long.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
}

impl SimDisk {
    /// A disk with `faults`.
    pub fn new(faults: DiskFaults) -> SimDisk {
        SimDisk {
            faults,
            syncs: Arc::default(),
            latency_us: Arc::default(),
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

#[derive(Debug)]
struct SimFile {
    file: sfs::File,
    disk: SimDisk,
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
        f(&self.file)
    }
}

impl FileIo for SimFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.file, buf, pos)
    }
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::write_at(&self.file, buf, pos).map_err(enospc)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.sync(sfs::File::sync_data)
    }
    fn sync_all(&self) -> io::Result<()> {
        self.sync(sfs::File::sync_all)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len).map_err(enospc)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
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
        Ok(Arc::new(SimFile {
            file: o.open(path).map_err(enospc)?,
            disk: self.clone(),
        }))
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
        sfs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        sfs::remove_file(path)
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
