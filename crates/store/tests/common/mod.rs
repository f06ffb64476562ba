#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sofamq_store::io::{Entry, FileIo, Fs, OpenMode, StdFs};
use sofamq_store::{NewRecord, Store, StoreConfig};

/// Small segments and a fast flusher, for tests.
pub fn cfg(dir: &Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.segment_size = 8 * 1024;
    c.cq_flush_interval = Duration::from_millis(20);
    c
}

pub fn open(dir: &Path) -> Store {
    Store::open(cfg(dir)).expect("open")
}

/// A master (begun in epoch 1) and a slave, each in its own temporary directory, which
/// lives as long as the pair (the stores close first).
pub struct Pair {
    pub master: Store,
    pub slave: Store,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

pub fn master_and_slave() -> Pair {
    let dm = tempfile::tempdir().expect("master dir");
    let ds = tempfile::tempdir().expect("slave dir");
    let master = open(dm.path());
    master.begin_epoch(1).expect("epoch 1");
    Pair {
        master,
        slave: open(ds.path()),
        _dirs: (dm, ds),
    }
}

pub fn rec(topic: &str, queue_id: u32, body: &str) -> NewRecord {
    NewRecord {
        topic: topic.into(),
        queue_id,
        flags: 1,
        tag: format!("tag-{queue_id}"),
        born_ts_ms: 1_700_000_000_000,
        properties: vec![("KEYS".into(), body.into())],
        body: Bytes::copy_from_slice(body.as_bytes()),
    }
}

/// Appends `n` records to `topic`/`queue_id` one by one, returns their log offsets.
pub fn fill(store: &Store, topic: &str, queue_id: u32, n: usize, prefix: &str) -> Vec<u64> {
    (0..n)
        .map(|i| {
            store
                .append_blocking(vec![rec(topic, queue_id, &format!("{prefix}-{i}"))])
                .unwrap()[0]
                .log_offset
        })
        .collect()
}

/// Tiny deterministic PRNG (xorshift64*).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Path of the last commit-log segment.
pub fn last_segment(dir: &Path) -> std::path::PathBuf {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("commitlog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v.pop().unwrap()
}

pub fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("commitlog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Every queue reads back exactly the log's records of that queue, with dense offsets.
pub fn check_queues_match_log(s: &Store) {
    let mut by_q: BTreeMap<(String, u32), Vec<u64>> = BTreeMap::new();
    for r in s.scan(0) {
        let r = r.unwrap();
        let v = by_q.entry((r.topic.clone(), r.queue_id)).or_default();
        assert_eq!(
            r.queue_offset,
            v.len() as u64,
            "dense queue offsets in the log"
        );
        v.push(r.log_offset);
    }
    for ((t, q), offs) in &by_q {
        let got: Vec<u64> = s
            .read_queue(t, *q, 0, usize::MAX, usize::MAX)
            .unwrap()
            .iter()
            .map(|r| r.log_offset)
            .collect();
        assert_eq!(&got, offs, "queue {t}/{q}");
        assert_eq!(s.queue_offsets(t, *q), (0, offs.len() as u64));
    }
}

/// Copies the directory tree `from` to `to` (files as they are: a copy taken while a store
/// runs is what a crash would leave).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// What a test puts around every file the store opens on [`WrapFs`].
pub trait Wrap: Send + Sync + std::fmt::Debug {
    /// The handle the store gets for `path`, opened on the real file system as `file`.
    fn wrap(&self, path: &Path, file: Arc<dyn FileIo>) -> Arc<dyn FileIo>;
}

/// The real file system, with every opened file passed through the test's [`Wrap`].
#[derive(Debug)]
pub struct WrapFs<W>(pub W);

impl<W: Wrap> Fs for WrapFs<W> {
    fn open(&self, path: &Path, mode: OpenMode) -> std::io::Result<Arc<dyn FileIo>> {
        Ok(self.0.wrap(path, StdFs.open(path, mode)?))
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        StdFs.read(path)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<Entry>> {
        StdFs.list(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        StdFs.exists(path)
    }
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        StdFs.create_dir_all(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        StdFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        StdFs.remove_file(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        StdFs.remove_dir_all(dir)
    }
    fn hard_link(&self, original: &Path, link: &Path) -> std::io::Result<()> {
        StdFs.hard_link(original, link)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        StdFs.sync_dir(dir)
    }
}
