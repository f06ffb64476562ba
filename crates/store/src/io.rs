//! The store's I/O seam: every file and directory operation the store makes goes through
//! [`Fs`] and [`FileIo`], so the same code runs on the real disk ([`StdFs`], the default) or
//! on a simulated one that loses or tears unsynced writes on a crash and injects `ENOSPC`/`EIO`
//! (the simulator's, in `crates/sim`).
//!
//! The operations are the few the store needs: positioned reads and writes, `fdatasync`,
//! `set_len`, and on directories create, list, rename, remove, hard-link and fsync.

use std::ffi::OsString;
use std::fmt::Debug;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// An open file: positioned I/O, never a cursor, so one handle serves every thread.
pub trait FileIo: Send + Sync + Debug {
    /// Reads up to `buf.len()` bytes at `pos`; 0 at the end of the file.
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// Writes up to `buf.len()` bytes at `pos` (a short write is possible).
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize>;
    /// `fdatasync`: the file's data (and the length) is durable when this returns `Ok`.
    fn sync_data(&self) -> io::Result<()>;
    /// `fsync`: data and metadata durable.
    fn sync_all(&self) -> io::Result<()>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's current length.
    fn len(&self) -> io::Result<u64>;

    /// Advice: the `len` bytes at `pos` are durable and will not be read soon, so the OS
    /// may drop them from its page cache now (`posix_fadvise(DONTNEED)`). Nothing to
    /// report; a file system without a page cache ignores it.
    fn drop_cached(&self, _pos: u64, _len: u64) {}

    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Reads exactly `buf.len()` bytes at `pos` (`UnexpectedEof` if the file ends first).
    fn read_exact_at(&self, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, pos) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file ends before the requested bytes",
                    ));
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes all of `buf` at `pos`.
    fn write_all_at(&self, mut buf: &[u8], mut pos: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_at(buf, pos) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the file took no bytes",
                    ));
                }
                Ok(n) => {
                    buf = &buf[n..];
                    pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// How [`Fs::open`] opens a file (always readable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only; the file must exist.
    Read,
    /// Read and write; the file must exist.
    Write,
    /// Read and write, created empty if missing.
    Create,
    /// Read and write, created if missing, emptied if present.
    Truncate,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's file name.
    pub name: OsString,
    /// Whether it is a directory.
    pub is_dir: bool,
}

/// A file system.
pub trait Fs: Send + Sync + Debug {
    /// Opens the file at `path`.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileIo>>;
    /// The whole content of the file at `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// The entries of `dir`, in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<Entry>>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// Creates `dir` and its missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it.
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes `link` a second name of `original`.
    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()>;
    /// fsyncs a directory, so entries created, renamed or removed in it are durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// How long an fdatasync of the log takes on this disk, for a caller-driven store
    /// ([`crate::Driver::Caller`], a simulator) to let pass on its runtime's clock between
    /// writing a batch and completing it. `None` (a real disk): the sync call itself takes
    /// the time.
    fn sync_delay(&self) -> Option<std::time::Duration> {
        None
    }

    /// Creates (or empties) `path`, writes `bytes` and fsyncs the file (not its directory).
    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let f = self.open(path, OpenMode::Truncate)?;
        f.write_all_at(bytes, 0)?;
        f.sync_all()
    }
}

/// The real file system (`std::fs`, `pwrite`/`pread`, `fdatasync`).
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFs;

impl StdFs {
    /// A shared handle, the store's default.
    pub fn shared() -> Arc<dyn Fs> {
        Arc::new(StdFs)
    }
}

impl FileIo for std::fs::File {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, pos)
    }
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::write_at(self, buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        std::fs::File::sync_data(self)
    }
    fn sync_all(&self) -> io::Result<()> {
        std::fs::File::sync_all(self)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn drop_cached(&self, pos: u64, len: u64) {
        if let Some(len) = std::num::NonZeroU64::new(len)
            && let Err(e) = rustix::fs::fadvise(self, pos, Some(len), rustix::fs::Advice::DontNeed)
        {
            tracing::debug!(error = %e, pos, len, "posix_fadvise(DONTNEED) failed");
        }
    }
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, pos)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, pos)
    }
}

impl Fs for StdFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileIo>> {
        let mut o = std::fs::OpenOptions::new();
        o.read(true);
        match mode {
            OpenMode::Read => {}
            OpenMode::Write => {
                o.write(true);
            }
            OpenMode::Create => {
                o.write(true).create(true).truncate(false);
            }
            OpenMode::Truncate => {
                o.write(true).create(true).truncate(true);
            }
        }
        Ok(Arc::new(o.open(path)?))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            out.push(Entry {
                name: e.file_name(),
                is_dir: e.file_type()?.is_dir(),
            });
        }
        Ok(out)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(dir)
    }
    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        std::fs::hard_link(original, link)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn std_fs_round_trips_files_and_directories() {
        let d = tempfile::tempdir().unwrap();
        let fs = StdFs::shared();
        let sub = d.path().join("a/b");
        fs.create_dir_all(&sub).unwrap();
        let p = sub.join("f");
        assert!(
            fs.open(&p, OpenMode::Write).is_err(),
            "Write needs the file"
        );
        let f = fs.open(&p, OpenMode::Create).unwrap();
        f.write_all_at(b"hello", 3).unwrap();
        f.sync_data().unwrap();
        assert_eq!(f.len().unwrap(), 8);
        let mut b = [0u8; 5];
        f.read_exact_at(&mut b, 3).unwrap();
        assert_eq!(&b, b"hello");
        assert_eq!(
            f.read_exact_at(&mut b, 6).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        f.set_len(4).unwrap();
        assert_eq!(fs.read(&p).unwrap(), b"\0\0\0h");
        fs.write_synced(&sub.join("g"), b"xy").unwrap();
        fs.hard_link(&sub.join("g"), &sub.join("h")).unwrap();
        fs.rename(&sub.join("g"), &sub.join("i")).unwrap();
        fs.remove_file(&sub.join("h")).unwrap();
        fs.sync_dir(&sub).unwrap();
        let mut names: Vec<_> = fs.list(&sub).unwrap().into_iter().map(|e| e.name).collect();
        names.sort();
        assert_eq!(names, ["f", "i"]);
        assert!(fs.list(d.path()).unwrap()[0].is_dir);
        assert_eq!(fs.open(&p, OpenMode::Truncate).unwrap().len().unwrap(), 0);
        fs.remove_dir_all(&d.path().join("a")).unwrap();
        assert!(!fs.exists(&sub));
    }
}
