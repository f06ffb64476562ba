//! Drop-behind (`StoreConfig::drop_behind`): after commits, the commit log's cached pages
//! more than the configured lag behind the durable end are advised away, each byte once,
//! segment by segment, and never a byte within the lag.

mod common;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::{cfg, rec};
use sofamq_store::io::FileIo;
use sofamq_store::{FlushMode, Store};

/// (segment start from its file name, position, length) of every `drop_cached` call.
type Calls = Arc<Mutex<Vec<(u64, u64, u64)>>>;

/// The real file system, recording the drop-behind advice given on commit-log files.
#[derive(Debug, Default)]
struct Recording {
    calls: Calls,
}

#[derive(Debug)]
struct File {
    inner: Arc<dyn FileIo>,
    segment: Option<u64>,
    calls: Calls,
}

impl FileIo for File {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize> {
        self.inner.write_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
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
    fn drop_cached(&self, pos: u64, len: u64) {
        let segment = self
            .segment
            .expect("drop-behind advice on a commit-log segment only");
        self.calls.lock().unwrap().push((segment, pos, len));
        self.inner.drop_cached(pos, len);
    }
}

impl common::Wrap for Recording {
    fn wrap(&self, path: &Path, file: Arc<dyn FileIo>) -> Arc<dyn FileIo> {
        let in_log = path.parent().is_some_and(|p| p.ends_with("commitlog"));
        let segment = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .filter(|_| in_log);
        Arc::new(File {
            inner: file,
            segment,
            calls: self.calls.clone(),
        })
    }
}

/// Opens a store on the recording file system (8 KiB segments) with drop-behind `lag`.
fn open(dir: &Path, lag: Option<u64>, flush: FlushMode) -> (Store, Calls) {
    let fs = Recording::default();
    let calls = fs.calls.clone();
    let mut c = cfg(dir);
    c.drop_behind = lag;
    c.flush = flush;
    c.fs = Arc::new(common::WrapFs(fs));
    (Store::open(c).unwrap(), calls)
}

/// The advised ranges as log offsets, in call order.
fn ranges(calls: &Calls) -> Vec<(u64, u64)> {
    let calls = calls.lock().unwrap();
    calls
        .iter()
        .map(|&(seg, pos, len)| (seg + pos, seg + pos + len))
        .collect()
}

fn segment_starts(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = common::segments(dir)
        .iter()
        .map(|p: &PathBuf| p.file_name().unwrap().to_str().unwrap().parse().unwrap())
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn pages_behind_the_lag_are_dropped_once_each_and_none_within_it() {
    let d = tempfile::tempdir().unwrap();
    let lag = 3000;
    let (s, calls) = open(d.path(), Some(lag), FlushMode::Sync);
    let mut end = 0;
    for i in 0..120 {
        let a = s
            .append_blocking(vec![rec("t", 0, &format!("{i}-{}", "x".repeat(300)))])
            .unwrap();
        end = a[0].log_offset + u64::from(a[0].size);
        // Never a byte within `lag` of the durable end.
        let r = ranges(&calls);
        if let Some(&(_, to)) = r.last() {
            assert!(to <= end.saturating_sub(lag), "{to} within {lag} of {end}");
        }
    }
    let r = ranges(&calls);
    assert!(r.len() > 5, "advice given {} times", r.len());
    // Contiguous from where the store opened (0) to `end - lag`: each byte advised once.
    assert_eq!(r[0].0, 0);
    for w in r.windows(2) {
        assert_eq!(w[0].1, w[1].0, "a gap or an overlap: {w:?}");
    }
    assert_eq!(r.last().unwrap().1, end - lag);
    // Each call stays inside one segment (they are 8 KiB here, so the log spans several).
    let starts = segment_starts(d.path());
    assert!(starts.len() > 3, "{starts:?}");
    for &(from, to) in &r {
        let seg = starts.partition_point(|&s| s <= from) - 1;
        if let Some(&next) = starts.get(seg + 1) {
            assert!(to <= next, "[{from}, {to}) crosses the segment at {next}");
        }
    }
}

#[test]
fn off_by_default_and_in_async_mode_it_follows_the_durable_offset() {
    let d = tempfile::tempdir().unwrap();
    let (s, calls) = open(d.path(), None, FlushMode::Sync);
    for i in 0..60 {
        s.append_blocking(vec![rec("t", 0, &format!("{i}-{}", "x".repeat(300)))])
            .unwrap();
    }
    assert!(calls.lock().unwrap().is_empty(), "advice given while off");
    drop(s);

    let d = tempfile::tempdir().unwrap();
    let (s, calls) = open(
        d.path(),
        Some(1000),
        FlushMode::Async {
            interval: std::time::Duration::from_millis(5),
        },
    );
    for i in 0..60 {
        s.append_blocking(vec![rec("t", 0, &format!("{i}-{}", "x".repeat(300)))])
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let durable = s.durable_offset();
    let r = ranges(&calls);
    assert!(!r.is_empty(), "no advice in async mode");
    assert!(r.last().unwrap().1 <= durable.saturating_sub(1000));
}
