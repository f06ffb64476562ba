//! Store append benchmark against the machine's own raw write + fdatasync limit.
//!
//! For each concurrency level, `concurrency` tokio tasks append records of `record_size` body
//! bytes with sync flush for `duration`. The writer logs the bytes covered by every fsync; a raw
//! loop then writes exactly those batch sizes to a plain file on the same disk
//! (`write_all_at` + `sync_data` per batch). The ratio is raw time / store time for the same
//! bytes and batches, i.e. the share of the disk's group-commit capacity the store achieves.
//!
//! Two more raw loops serve the cluster benches, whose ratios need the disk's own figures
//! from the same run: [`raw_fsync_latencies`] (one small append + fdatasync at a time: the
//! floor under a 1-in-flight send) and [`raw_copies`] (given batches written as N copies
//! at once, one file and thread per copy: a master and its slave on one disk).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::{NewRecord, Store, StoreConfig, StoreError};

/// Bench parameters.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Scratch directory (created; subdirectories are removed afterwards).
    pub dir: PathBuf,
    /// Time per concurrency level.
    pub duration: Duration,
    /// Body size of each record.
    pub record_size: usize,
    /// Concurrency levels to run.
    pub concurrency: Vec<usize>,
    /// The store's zero-fill ahead in bytes ([`StoreConfig::prefill`]; 0: off).
    pub prefill: u64,
}

/// Result of one concurrency level.
#[derive(Debug, Clone)]
pub struct BenchRun {
    /// Concurrent appenders.
    pub concurrency: usize,
    /// Records appended.
    pub records: u64,
    /// Encoded bytes written.
    pub bytes: u64,
    /// Wall time of the store run.
    pub store_secs: f64,
    /// fdatasyncs the writer issued.
    pub fsyncs: u64,
    /// Wall time of the raw loop over the same batches.
    pub raw_secs: f64,
}

impl BenchRun {
    /// Store records per second.
    pub fn store_msgs_per_sec(&self) -> f64 {
        self.records as f64 / self.store_secs
    }
    /// Raw loop records per second (same records, same batches).
    pub fn raw_msgs_per_sec(&self) -> f64 {
        self.records as f64 / self.raw_secs
    }
    /// Store throughput as a fraction of the raw loop's.
    pub fn ratio(&self) -> f64 {
        self.raw_secs / self.store_secs
    }
    /// Mean bytes per fsync.
    pub fn avg_batch_bytes(&self) -> f64 {
        self.bytes as f64 / self.fsyncs.max(1) as f64
    }
}

/// All runs.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    /// One entry per concurrency level.
    pub runs: Vec<BenchRun>,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>5} {:>12} {:>9} {:>12} {:>9} {:>7} {:>9} {:>10}",
            "conc", "store msg/s", "MiB/s", "raw msg/s", "MiB/s", "ratio", "fsyncs", "avg batch"
        )?;
        for r in &self.runs {
            let mib = |secs: f64| r.bytes as f64 / secs / (1024.0 * 1024.0);
            writeln!(
                f,
                "{:>5} {:>12.0} {:>9.1} {:>12.0} {:>9.1} {:>6.1}% {:>9} {:>9.1}K",
                r.concurrency,
                r.store_msgs_per_sec(),
                mib(r.store_secs),
                r.raw_msgs_per_sec(),
                mib(r.raw_secs),
                r.ratio() * 100.0,
                r.fsyncs,
                r.avg_batch_bytes() / 1024.0
            )?;
        }
        Ok(())
    }
}

fn run_store(
    opts: &BenchOptions,
    conc: usize,
) -> Result<(u64, u64, f64, u64, Vec<u64>), StoreError> {
    let dir = opts.dir.join(format!("store-c{conc}"));
    let _ = fs::remove_dir_all(&dir);
    let mut cfg = StoreConfig::new(&dir);
    cfg.record_batch_sizes = true;
    cfg.prefill = opts.prefill;
    let store = Store::open(cfg)?;
    let body = Bytes::from(vec![0x5au8; opts.record_size]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let duration = opts.duration;
    let started = Instant::now();
    let res: Result<(), StoreError> = rt.block_on(async {
        let mut tasks = Vec::with_capacity(conc);
        for t in 0..conc {
            let store = store.clone();
            let body = body.clone();
            tasks.push(tokio::spawn(async move {
                let deadline = Instant::now() + duration;
                while Instant::now() < deadline {
                    let rec = NewRecord {
                        topic: "bench".into(),
                        queue_id: (t % 8) as u32,
                        body: body.clone(),
                        ..Default::default()
                    };
                    store.append(vec![rec]).await?;
                }
                Ok::<(), StoreError>(())
            }));
        }
        for t in tasks {
            t.await
                .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        }
        Ok(())
    });
    res?;
    let secs = started.elapsed().as_secs_f64();
    let st = store.stats();
    let batches = store.take_batch_sizes();
    drop(store);
    let _ = fs::remove_dir_all(&dir);
    Ok((st.records, st.bytes, secs, st.fsyncs, batches))
}

fn run_raw(opts: &BenchOptions, conc: usize, batches: &[u64]) -> Result<f64, StoreError> {
    let path = opts.dir.join(format!("raw-c{conc}"));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    let max = batches.iter().copied().max().unwrap_or(0) as usize;
    let buf = vec![0x5au8; max];
    let started = Instant::now();
    let mut pos = 0u64;
    for &n in batches {
        f.write_all_at(&buf[..n as usize], pos)?;
        f.sync_data()?;
        pos += n;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(f);
    let _ = fs::remove_file(&path);
    Ok(secs)
}

/// Runs the bench for every concurrency level.
pub fn run(opts: &BenchOptions) -> Result<BenchReport, StoreError> {
    fs::create_dir_all(&opts.dir)?;
    let mut report = BenchReport::default();
    for &conc in &opts.concurrency {
        let (records, bytes, store_secs, fsyncs, batches) = run_store(opts, conc.max(1))?;
        let raw_secs = run_raw(opts, conc, &batches)?;
        report.runs.push(BenchRun {
            concurrency: conc,
            records,
            bytes,
            store_secs,
            fsyncs,
            raw_secs,
        });
    }
    Ok(report)
}

/// What the raw fdatasync loop's file holds before its first write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawFile {
    /// Nothing: every write appends and grows the file (the baseline).
    Empty,
    /// Allocated blocks and the final size (`fallocate`), fsynced: the blocks are
    /// unwritten extents, which a write converts.
    Fallocated,
    /// Zeros written over the final size and fsynced: each write overwrites existing bytes,
    /// as in SofaMQ's active segment with its zero-fill ahead (`StoreConfig::prefill`).
    Zeroed,
}

/// Appends `size` bytes and fdatasyncs, `iterations` times, to a fresh file in `dir` (removed
/// afterwards); returns each append + fdatasync's time, sorted. `file` says what the file
/// holds first: with [`RawFile::Fallocated`] or [`RawFile::Zeroed`] each write lands inside
/// the file and its fdatasync has no file size to commit.
pub fn raw_fsync_latencies(
    dir: &Path,
    size: usize,
    iterations: usize,
    file: RawFile,
) -> Result<Vec<Duration>, StoreError> {
    fs::create_dir_all(dir)?;
    let path = dir.join(format!("raw-fsync-{}", std::process::id()));
    let res = (|| {
        let total = (size as u64).saturating_mul(iterations as u64);
        let f = fresh_file(&path, total, file)?;
        let buf = vec![0x5au8; size];
        let mut pos = 0u64;
        let mut lat = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let t = Instant::now();
            f.write_all_at(&buf, pos)?;
            f.sync_data()?;
            lat.push(t.elapsed());
            pos += size as u64;
        }
        lat.sort_unstable();
        Ok(lat)
    })();
    let _ = fs::remove_file(&path);
    res
}

/// Creates (or empties) `path` and, unless `file` is [`RawFile::Empty`], gives it `len`
/// bytes (allocated or zeroed, see [`RawFile`]), fsynced, so writes inside it change no
/// file size.
fn fresh_file(path: &Path, len: u64, file: RawFile) -> std::io::Result<fs::File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    if len == 0 {
        return Ok(f);
    }
    match file {
        RawFile::Empty => return Ok(f),
        RawFile::Fallocated => {
            rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, len)?;
        }
        RawFile::Zeroed => {
            let zeros = vec![0u8; 1 << 20];
            let mut pos = 0;
            while pos < len {
                let n = (len - pos).min(zeros.len() as u64);
                f.write_all_at(&zeros[..n as usize], pos)?;
                pos += n;
            }
        }
    }
    f.sync_all()?;
    Ok(f)
}

/// The `q` quantile (0..=1, nearest rank) of `sorted`; zero when it is empty.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Writes `batches` (byte counts) as `copies` copies at once: one thread and one fresh file
/// in `dir` per copy, each appending every batch and fdatasyncing it before the next, the
/// copies unsynchronised with each other (as a master and its slave each run their own
/// group commit). Returns the seconds until the last copy is durable; the files are removed.
pub fn raw_copies(dir: &Path, batches: &[u64], copies: usize) -> Result<f64, StoreError> {
    fs::create_dir_all(dir)?;
    let max = batches.iter().copied().max().unwrap_or(0) as usize;
    let buf = vec![0x5au8; max];
    let paths: Vec<PathBuf> = (0..copies.max(1))
        .map(|i| dir.join(format!("raw-copy{i}-{}", std::process::id())))
        .collect();
    let started = Instant::now();
    let res = std::thread::scope(|s| {
        let threads: Vec<_> = paths
            .iter()
            .map(|path| {
                let buf = &buf;
                s.spawn(move || -> std::io::Result<()> {
                    let f = OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(path)?;
                    let mut pos = 0u64;
                    for &n in batches {
                        f.write_all_at(&buf[..n as usize], pos)?;
                        f.sync_data()?;
                        pos += n;
                    }
                    Ok(())
                })
            })
            .collect();
        threads.into_iter().try_for_each(|t| {
            t.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("raw copy thread panicked")))
        })
    });
    let secs = started.elapsed().as_secs_f64();
    for p in &paths {
        let _ = fs::remove_file(p);
    }
    res?;
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_is_nearest_rank() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&x| Duration::from_millis(x))
                .collect::<Vec<_>>()
        };
        let v = ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(quantile(&v, 0.5), Duration::from_millis(5));
        assert_eq!(quantile(&v, 0.99), Duration::from_millis(10));
        assert_eq!(quantile(&v, 0.0), Duration::from_millis(1));
        assert_eq!(quantile(&v, 1.0), Duration::from_millis(10));
        assert_eq!(quantile(&ms(&[7]), 0.5), Duration::from_millis(7));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn a_prepared_file_has_its_size_and_blocks_before_any_write() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        for file in [RawFile::Fallocated, RawFile::Zeroed] {
            let f = fresh_file(&p, 3 << 20, file).unwrap();
            let m = f.metadata().unwrap();
            assert_eq!(m.len(), 3 << 20, "{file:?}");
            assert!(
                m.blocks() * 512 >= 3 << 20,
                "{file:?}: {} blocks",
                m.blocks()
            );
        }
        assert!(fs::read(&p).unwrap().iter().all(|b| *b == 0));
        let f = fresh_file(&p, 1 << 20, RawFile::Empty).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 0);
    }

    #[test]
    fn raw_loops_write_and_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        for file in [RawFile::Empty, RawFile::Fallocated, RawFile::Zeroed] {
            let lat = raw_fsync_latencies(dir.path(), 1024, 5, file).unwrap();
            assert_eq!(lat.len(), 5);
            assert!(lat.windows(2).all(|w| w[0] <= w[1]));
        }
        let secs = raw_copies(dir.path(), &[4096, 100, 0, 2048], 2).unwrap();
        assert!(secs > 0.0);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
