//! Zero-fill ahead of the writer (`StoreConfig::prefill`): the active segment holds synced
//! zeros past the log end while the store runs; rolled segments and closed stores hold only
//! records; a copy taken while it runs (what a crash leaves) recovers to the same records.

mod common;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{copy_dir, fill, last_segment, segments};
use sofamq_store::io::FileIo;
use sofamq_store::{Store, StoreConfig};

fn cfg(dir: &Path, segment_size: u64, prefill: u64) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.segment_size = segment_size;
    c.prefill = prefill;
    c.cq_flush_interval = Duration::from_millis(20);
    c
}

fn len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// Waits (at most 10 s) until the last segment's file is longer than `end` (its start is 0).
fn wait_for_zeros(dir: &Path, end: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = len(&last_segment(dir));
        if l > end {
            return l;
        }
        assert!(Instant::now() < deadline, "no zeros written past {end}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn zeros_ahead_of_the_writer_are_overwritten_and_cut_at_close() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(cfg(d.path(), 64 << 20, 1 << 20)).unwrap();
    fill(&s, "t", 0, 50, "a");
    let end = s.log_end_offset();
    let file_len = wait_for_zeros(d.path(), end);
    // The window grows with what the segment holds, up to `prefill`.
    assert!(file_len <= end + (1 << 20), "{file_len} bytes for {end}");
    let bytes = std::fs::read(last_segment(d.path())).unwrap();
    assert!(bytes[end as usize..].iter().all(|b| *b == 0));
    // Appends land on the zeros; reads and the queues see only records.
    let more = fill(&s, "t", 0, 50, "b");
    assert!(*more.last().unwrap() < file_len);
    assert_eq!(s.queue_offsets("t", 0), (0, 100));
    let all: Vec<_> = s.scan(0).map(Result::unwrap).collect();
    assert_eq!(all.len(), 100);
    let end = s.log_end_offset();
    drop(s);
    assert_eq!(
        len(&last_segment(d.path())),
        end,
        "a clean close cuts the zeros"
    );
    let s = Store::open(cfg(d.path(), 64 << 20, 1 << 20)).unwrap();
    assert!(s.fenced().is_none());
    assert_eq!(s.log_end_offset(), end);
    assert_eq!(s.scan(0).count(), 100);
}

#[test]
fn a_rolled_segment_holds_only_its_records() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(cfg(d.path(), 16 * 1024, 1 << 20)).unwrap();
    for round in 0..8 {
        fill(&s, "t", 1, 40, &format!("r{round}-{}", "x".repeat(200)));
    }
    let segs = segments(d.path());
    assert!(segs.len() >= 5, "{} segments", segs.len());
    // While the store runs: every segment but the last ends exactly where the next starts.
    for w in segs.windows(2) {
        let start: u64 = w[0].file_name().unwrap().to_str().unwrap().parse().unwrap();
        let next: u64 = w[1].file_name().unwrap().to_str().unwrap().parse().unwrap();
        assert_eq!(start + len(&w[0]), next, "{}", w[0].display());
    }
    assert_eq!(s.scan(0).count(), 320);
}

#[test]
fn a_copy_taken_while_running_recovers_the_same_records() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(cfg(d.path(), 64 << 20, 1 << 20)).unwrap();
    fill(&s, "t", 0, 30, "c");
    let end = s.log_end_offset();
    wait_for_zeros(d.path(), end);
    // A crash: the files as they are, zeros and all, without the close.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(d.path(), copy.path());
    drop(s);
    assert!(len(&last_segment(copy.path())) > end);
    let c = Store::open(cfg(copy.path(), 64 << 20, 0)).unwrap();
    assert!(c.fenced().is_none(), "{:?}", c.fenced());
    assert_eq!(c.log_end_offset(), end);
    assert_eq!(c.queue_offsets("t", 0), (0, 30));
    assert_eq!(
        len(&last_segment(copy.path())),
        end,
        "recovery cut the zeros"
    );
    let a = fill(&c, "t", 0, 1, "after");
    assert_eq!(a[0], end);
}

#[test]
fn prefill_zero_writes_nothing_ahead() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(cfg(d.path(), 64 << 20, 0)).unwrap();
    fill(&s, "t", 0, 50, "z");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(len(&last_segment(d.path())), s.log_end_offset());
}

#[test]
fn no_zeros_while_the_log_is_written_faster_than_the_cap() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path(), 64 << 20, 16 << 20);
    c.prefill_max_rate = 1;
    let s = Store::open(c).unwrap();
    let body = "w".repeat(1000);
    let until = Instant::now() + Duration::from_secs(1);
    let mut n = 0;
    while Instant::now() < until {
        fill(&s, "t", 0, 20, &body);
        n += 20;
    }
    // The cap holds the fill back after the first window; the writer has long passed
    // whatever was filled before.
    assert!(
        s.log_end_offset() > 1 << 20,
        "{n} appends, {} bytes",
        s.log_end_offset()
    );
    assert_eq!(len(&last_segment(d.path())), s.log_end_offset());
}

/// What fails on the second handle opened on a commit-log segment (the fill's own).
#[derive(Debug, Clone, Copy)]
enum Breaks {
    Write,
    Sync,
}

/// The real file system, except that the fill's handle on a segment fails as told.
#[derive(Debug)]
struct FillFails {
    breaks: Breaks,
    opens: Mutex<HashMap<PathBuf, usize>>,
}

#[derive(Debug)]
struct Handle {
    inner: Arc<dyn FileIo>,
    breaks: Option<Breaks>,
}

impl FileIo for Handle {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize> {
        match self.breaks {
            Some(Breaks::Write) => Err(io::Error::from(io::ErrorKind::StorageFull)),
            _ => self.inner.write_at(buf, pos),
        }
    }
    fn sync_data(&self) -> io::Result<()> {
        match self.breaks {
            Some(Breaks::Sync) => Err(io::Error::other("injected EIO")),
            _ => self.inner.sync_data(),
        }
    }
    fn sync_all(&self) -> io::Result<()> {
        self.inner.sync_all()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}

impl common::Wrap for FillFails {
    fn wrap(&self, path: &Path, file: Arc<dyn FileIo>) -> Arc<dyn FileIo> {
        let in_log = path.parent().is_some_and(|p| p.ends_with("commitlog"));
        let mut opens = self.opens.lock().unwrap();
        let n = opens.entry(path.to_owned()).or_default();
        *n += 1;
        Arc::new(Handle {
            inner: file,
            breaks: (in_log && *n >= 2).then_some(self.breaks),
        })
    }
}

fn open_failing(dir: &Path, breaks: Breaks) -> Store {
    let mut c = cfg(dir, 64 << 20, 1 << 20);
    c.fs = Arc::new(common::WrapFs(FillFails {
        breaks,
        opens: Mutex::new(HashMap::new()),
    }));
    Store::open(c).unwrap()
}

#[test]
fn a_failed_fdatasync_of_the_fill_fences_the_log() {
    let d = tempfile::tempdir().unwrap();
    let s = open_failing(d.path(), Breaks::Sync);
    // The first write wakes the fill (the append itself may or may not beat the fence).
    let _ = s.append_blocking(vec![common::rec("t", 0, "first")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.fenced().is_none() {
        assert!(Instant::now() < deadline, "not fenced");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        s.fenced().unwrap().contains("fdatasync"),
        "{:?}",
        s.fenced()
    );
    assert!(
        s.append_blocking(vec![common::rec("t", 0, "late")])
            .is_err()
    );
}

#[test]
fn a_failed_write_of_zeros_stops_the_fill_and_appends_go_on() {
    let d = tempfile::tempdir().unwrap();
    let s = open_failing(d.path(), Breaks::Write);
    fill(&s, "t", 0, 200, "w");
    std::thread::sleep(Duration::from_millis(50));
    fill(&s, "t", 0, 200, "v");
    assert!(s.fenced().is_none());
    assert_eq!(s.queue_offsets("t", 0), (0, 400));
    assert_eq!(len(&last_segment(d.path())), s.log_end_offset());
}
