//! Consume queues: one file of fixed-size entries per (topic, queue id).
//!
//! Entry (20 bytes, little-endian): log offset `u64`, record size `u32`, tag hash `u64`. Entry
//! `i` of a queue is the record with queue offset `i`, so its file position is `i * 20`.
//!
//! Entries are dispatched by the writer after the log bytes are durable (sync mode) into a small
//! in-memory tail buffer; the flusher writes the buffers to the files, fdatasyncs them and then
//! records the covered log offset in the checkpoint. Nothing else is kept in memory, so memory
//! does not grow with the log. Files live at `consumequeue/<escaped topic>/<queue id>`.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::io::{FileIo, Fs, OpenMode};

/// Size of one consume-queue entry on disk.
pub const CQ_ENTRY_LEN: usize = 20;

/// One consume-queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqEntry {
    /// Log offset of the record.
    pub log_offset: u64,
    /// Size of the record.
    pub size: u32,
    /// [`crate::tag_hash`] of the record's tag.
    pub tag_hash: u64,
}

impl CqEntry {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.log_offset.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.tag_hash.to_le_bytes());
    }

    fn decode(b: &[u8]) -> CqEntry {
        let mut o = [0u8; 8];
        o.copy_from_slice(&b[0..8]);
        let mut s = [0u8; 4];
        s.copy_from_slice(&b[8..12]);
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[12..20]);
        CqEntry {
            log_offset: u64::from_le_bytes(o),
            size: u32::from_le_bytes(s),
            tag_hash: u64::from_le_bytes(t),
        }
    }

    /// Offset just past the record.
    pub fn end(&self) -> u64 {
        self.log_offset + u64::from(self.size)
    }
}

/// Escapes a topic into a file-name-safe directory name (`[A-Za-z0-9_-]` kept, the rest `%XX`).
pub(crate) fn escape_topic(topic: &str) -> String {
    let mut s = String::with_capacity(topic.len());
    for b in topic.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Inverse of [`escape_topic`]; `None` for names it could not have produced.
pub(crate) fn unescape_topic(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = name.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[derive(Debug)]
struct Tail {
    /// Entries in the file.
    flushed: u64,
    /// Encoded entries following the file content.
    buf: Vec<u8>,
    /// Whether the directory entries for this file are known durable.
    dirs_synced: bool,
}

/// One consume queue.
#[derive(Debug)]
pub(crate) struct ConsumeQueue {
    pub topic: String,
    pub queue_id: u32,
    fs: Arc<dyn Fs>,
    file: Arc<dyn FileIo>,
    tail: Mutex<Tail>,
}

impl ConsumeQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of entries (file + buffer).
    pub fn len(&self) -> u64 {
        let t = self.lock();
        t.flushed + (t.buf.len() / CQ_ENTRY_LEN) as u64
    }

    /// Appends entries (already in queue order, the first one at index `len()`).
    pub fn push(&self, e: &CqEntry) {
        let mut t = self.lock();
        e.encode(&mut t.buf);
    }

    /// Overwrites or appends the entry at `index` (recovery re-dispatch). `index` must be
    /// at most `len()`.
    pub fn put(&self, index: u64, e: &CqEntry) -> io::Result<()> {
        let mut t = self.lock();
        if index >= t.flushed {
            let pos = ((index - t.flushed) as usize) * CQ_ENTRY_LEN;
            if pos == t.buf.len() {
                e.encode(&mut t.buf);
            } else {
                let mut tmp = Vec::with_capacity(CQ_ENTRY_LEN);
                e.encode(&mut tmp);
                t.buf[pos..pos + CQ_ENTRY_LEN].copy_from_slice(&tmp);
            }
            Ok(())
        } else {
            let mut tmp = Vec::with_capacity(CQ_ENTRY_LEN);
            e.encode(&mut tmp);
            self.file.write_all_at(&tmp, index * CQ_ENTRY_LEN as u64)
        }
    }

    /// Reads up to `max` entries from `from`.
    pub fn entries(&self, from: u64, max: usize) -> io::Result<Vec<CqEntry>> {
        let (flushed, tail_part) = {
            let t = self.lock();
            let total = t.flushed + (t.buf.len() / CQ_ENTRY_LEN) as u64;
            if from >= total || max == 0 {
                return Ok(Vec::new());
            }
            let end = total.min(from.saturating_add(max as u64));
            let tail_from = from.max(t.flushed);
            let part = if end > tail_from {
                let a = ((tail_from - t.flushed) as usize) * CQ_ENTRY_LEN;
                let b = ((end - t.flushed) as usize) * CQ_ENTRY_LEN;
                t.buf[a..b].to_vec()
            } else {
                Vec::new()
            };
            (t.flushed.min(end), part)
        };
        let mut out = Vec::new();
        if from < flushed {
            let mut raw = vec![0u8; ((flushed - from) as usize) * CQ_ENTRY_LEN];
            self.file
                .read_exact_at(&mut raw, from * CQ_ENTRY_LEN as u64)?;
            out.extend(raw.chunks_exact(CQ_ENTRY_LEN).map(CqEntry::decode));
        }
        out.extend(tail_part.chunks_exact(CQ_ENTRY_LEN).map(CqEntry::decode));
        Ok(out)
    }

    /// The entry at `index`, if any.
    pub fn entry(&self, index: u64) -> io::Result<Option<CqEntry>> {
        Ok(self.entries(index, 1)?.into_iter().next())
    }

    /// Number of leading entries whose record ends at or below `limit` (binary search; entries
    /// are ordered by log offset).
    pub fn count_below(&self, limit: u64) -> io::Result<u64> {
        let n = self.len();
        if n == 0 {
            return Ok(0);
        }
        if let Some(last) = self.entry(n - 1)?
            && last.end() <= limit
        {
            return Ok(n);
        }
        let (mut lo, mut hi) = (0u64, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entry(mid)? {
                Some(e) if e.end() <= limit => lo = mid + 1,
                _ => hi = mid,
            }
        }
        Ok(lo)
    }

    /// Writes the buffered tail to the file and fdatasyncs it. Returns whether it wrote.
    pub fn flush(&self, root: &Path) -> io::Result<bool> {
        let sync_dirs = {
            let mut t = self.lock();
            if t.buf.is_empty() {
                return Ok(false);
            }
            // A failed write leaves the tail as it was: the next flush writes it again.
            self.file
                .write_all_at(&t.buf, t.flushed * CQ_ENTRY_LEN as u64)
                .map_err(crate::error::write_error)?;
            t.flushed += (t.buf.len() / CQ_ENTRY_LEN) as u64;
            t.buf.clear();
            t.buf.shrink_to(64 * 1024);
            !std::mem::replace(&mut t.dirs_synced, true)
        };
        self.file.sync_data()?;
        if sync_dirs {
            let topic_dir = root.join(escape_topic(&self.topic));
            self.fs.sync_dir(&topic_dir)?;
            self.fs.sync_dir(root)?;
        }
        Ok(true)
    }

    /// Durably keeps only the first `count` entries.
    pub fn truncate(&self, count: u64) -> io::Result<()> {
        let mut t = self.lock();
        if count >= t.flushed {
            let keep = ((count - t.flushed) as usize) * CQ_ENTRY_LEN;
            t.buf.truncate(keep);
        } else {
            t.buf.clear();
            self.file.set_len(count * CQ_ENTRY_LEN as u64)?;
            self.file.sync_all()?;
            t.flushed = count;
        }
        Ok(())
    }
}

/// All consume queues of a store.
#[derive(Debug)]
pub(crate) struct ConsumeQueues {
    fs: Arc<dyn Fs>,
    root: PathBuf,
    map: RwLock<HashMap<String, HashMap<u32, Arc<ConsumeQueue>>>>,
}

impl ConsumeQueues {
    pub fn new(fs: Arc<dyn Fs>, root: PathBuf) -> ConsumeQueues {
        ConsumeQueues {
            fs,
            root,
            map: RwLock::new(HashMap::new()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn get(&self, topic: &str, queue_id: u32) -> Option<Arc<ConsumeQueue>> {
        let m = self.map.read().unwrap_or_else(|p| p.into_inner());
        m.get(topic).and_then(|q| q.get(&queue_id)).cloned()
    }

    /// Opens the queue's file, creating it if needed. `file_len_out` receives the file's
    /// length in bytes.
    fn open_file(&self, topic: &str, queue_id: u32) -> io::Result<(Arc<dyn FileIo>, u64)> {
        let dir = self.root.join(escape_topic(topic));
        self.fs.create_dir_all(&dir)?;
        let f = self
            .fs
            .open(&dir.join(queue_id.to_string()), OpenMode::Create)?;
        let len = f.len()?;
        Ok((f, len))
    }

    /// The queue, created (empty file) if it does not exist yet.
    pub fn get_or_create(&self, topic: &str, queue_id: u32) -> io::Result<Arc<ConsumeQueue>> {
        if let Some(q) = self.get(topic, queue_id) {
            return Ok(q);
        }
        let (file, len) = self.open_file(topic, queue_id)?;
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        let q = m
            .entry(topic.to_owned())
            .or_default()
            .entry(queue_id)
            .or_insert_with(|| {
                Arc::new(ConsumeQueue {
                    topic: topic.to_owned(),
                    queue_id,
                    fs: self.fs.clone(),
                    file,
                    tail: Mutex::new(Tail {
                        flushed: len / CQ_ENTRY_LEN as u64,
                        buf: Vec::new(),
                        dirs_synced: false,
                    }),
                })
            });
        Ok(q.clone())
    }

    /// Every queue, ordered by (topic, queue id): flushes and recovery touch the files in the
    /// same order every time, which a seeded simulation needs to replay exactly.
    pub fn all(&self) -> Vec<Arc<ConsumeQueue>> {
        let m = self.map.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = m.values().flat_map(|q| q.values().cloned()).collect();
        v.sort_unstable_by(|a, b| (&a.topic, a.queue_id).cmp(&(&b.topic, b.queue_id)));
        v
    }

    /// Loads every queue file found on disk. A partial trailing entry is cut. Returns the
    /// number of files that did not look like queue files (names it could not parse).
    pub fn load_all(&self) -> io::Result<usize> {
        self.fs.create_dir_all(&self.root)?;
        let mut strange = 0;
        for t in self.fs.list(&self.root)? {
            let Some(topic) = t.name.to_str().and_then(unescape_topic) else {
                strange += 1;
                continue;
            };
            if !t.is_dir {
                strange += 1;
                continue;
            }
            for q in self.fs.list(&self.root.join(&t.name))? {
                let Some(id) = q.name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    strange += 1;
                    continue;
                };
                let cq = self.get_or_create(&topic, id)?;
                let (file, len) = (cq.file.clone(), cq.file.len()?);
                if len % CQ_ENTRY_LEN as u64 != 0 {
                    file.set_len(len - len % CQ_ENTRY_LEN as u64)?;
                }
            }
        }
        Ok(strange)
    }

    /// Deletes every queue file and forgets every queue.
    pub fn wipe(&self) -> io::Result<()> {
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        m.clear();
        if self.fs.exists(&self.root) {
            self.fs.remove_dir_all(&self.root)?;
        }
        self.fs.create_dir_all(&self.root)?;
        if let Some(parent) = self.root.parent() {
            self.fs.sync_dir(parent)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_round_trip() {
        for t in ["abc", "a.b/c", "%", "主题", "RMQ_SYS_TRACE"] {
            let e = escape_topic(t);
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-%".contains(&b))
            );
            assert_eq!(unescape_topic(&e).as_deref(), Some(t));
        }
        assert_eq!(unescape_topic("%G1"), None);
    }

    #[test]
    fn push_flush_read_truncate() {
        let d = tempfile::tempdir().unwrap();
        let qs = ConsumeQueues::new(crate::io::StdFs::shared(), d.path().join("cq"));
        let q = qs.get_or_create("t", 1).unwrap();
        for i in 0..10u64 {
            q.push(&CqEntry {
                log_offset: i * 100,
                size: 100,
                tag_hash: i,
            });
            if i == 4 {
                q.flush(qs.root()).unwrap();
            }
        }
        let e = q.entries(3, 4).unwrap();
        assert_eq!(
            e.iter().map(|e| e.tag_hash).collect::<Vec<_>>(),
            [3, 4, 5, 6]
        );
        assert_eq!(q.count_below(550).unwrap(), 5);
        assert_eq!(q.count_below(10_000).unwrap(), 10);
        q.truncate(7).unwrap();
        assert_eq!(q.len(), 7);
        q.truncate(2).unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q.entries(0, 100).unwrap().len(), 2);
    }
}
