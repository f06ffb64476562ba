//! Recovery on open.
//!
//! # The rule
//!
//! Only bytes beyond the last completed fdatasync can be torn: everything below it was
//! acknowledged as durable and the disk promised to keep it. The checkpoint records an offset
//! that was covered by an fdatasync when it was written, and a segment is fsynced before the
//! next one is created. So, scanning forward and verifying every record's CRC:
//!
//! * a bad record at or beyond the checkpointed durable offset, in the **last** segment, is a
//!   torn tail: the log is cut right after the last valid record (`ftruncate` + `fsync`) and
//!   opens normally. Zeros written ahead of the writer (`prefill`) end the records the same
//!   way and are cut the same way: only the last segment can hold them, and only past its
//!   last fdatasync;
//! * a bad record **below** the checkpointed durable offset, or in a segment that is not the
//!   last one, is corruption in the middle: nothing is cut or skipped; the store opens *fenced*
//!   (reads of the good prefix work, appends fail with `StoreError::Fenced`) and the reason is
//!   logged at ERROR and returned by `Store::fenced()`.
//!
//! The scan starts at the segment holding the checkpoint's consume-queue offset (or at the
//! first segment without a checkpoint). Consume-queue entries at or past that offset are
//! dropped and re-dispatched from the scanned records; if the queue files disagree with the log
//! (missing file, gap, last entry not matching its record), all queues are rebuilt from the
//! whole log.

use std::collections::HashMap;
use std::sync::Arc;

use crate::StoreError;
use crate::checkpoint::{self, Checkpoint};
use crate::config::StoreConfig;
use crate::cq::{ConsumeQueues, CqEntry};
use crate::epoch::EpochHistory;
use crate::io::Fs;
use crate::record::{self, MAX_RECORD_HARD};
use crate::segment::{Segment, SegmentReader, Step, list_segments};

/// A file in the store's directory asking the next open to rebuild every consume queue
/// from the log (written when a queue was found not to match it).
pub(crate) const REBUILD_MARKER: &str = "rebuild-queues";

/// Whether the store in `dir` (on `fs`) is marked to rebuild its consume queues at the next open
/// (a queue was found not to match the log; see `Store::queues_damaged`).
pub fn queue_rebuild_pending(fs: &dyn Fs, dir: &std::path::Path) -> bool {
    fs.exists(&dir.join(REBUILD_MARKER))
}

/// Moves `consumequeue/` to `damaged/consumequeue-<ms>/` for the operator; recovery then
/// rebuilds every queue from the log.
fn set_queues_aside(fs: &dyn Fs, dir: &std::path::Path) -> Result<(), StoreError> {
    let from = dir.join("consumequeue");
    if !fs.exists(&from) {
        return Ok(());
    }
    let ms = crate::clock::now_ms();
    let damaged = dir.join("damaged");
    fs.create_dir_all(&damaged)?;
    let to = damaged.join(format!("consumequeue-{ms}"));
    fs.rename(&from, &to)?;
    fs.create_dir_all(&from)?;
    fs.sync_dir(&damaged)?;
    fs.sync_dir(dir)?;
    tracing::warn!(kept = %to.display(), "damaged consume queues moved aside");
    Ok(())
}

/// What recovery found.
pub(crate) struct Recovered {
    pub segments: Vec<Arc<Segment>>,
    pub log_end: u64,
    pub fenced: Option<String>,
    /// Where the damage begins, when damage (not an unreadable epoch file) fenced the log:
    /// the end of the last valid record before it.
    pub damage: Option<u64>,
    pub cqs: ConsumeQueues,
    pub epochs: EpochHistory,
    pub checkpoint: Checkpoint,
}

struct ScanOut {
    end: u64,
    bad: Option<(usize, u64, String)>,
    inconsistent: Option<String>,
    /// The highest epoch among the scanned records and the offset of its first record.
    top_epoch: Option<(u64, u64)>,
}

/// Scans segments `from_seg..` verifying every record. Records at or past `cq_from` are
/// dispatched to the consume queues; records before it must already have their entry.
fn scan(
    segs: &[Arc<Segment>],
    lens: &[u64],
    from_seg: usize,
    cq_from: u64,
    cqs: &ConsumeQueues,
) -> Result<ScanOut, StoreError> {
    let mut inconsistent = None;
    let mut since_flush = 0usize;
    let mut cache: HashMap<(String, u32), Arc<crate::cq::ConsumeQueue>> = HashMap::new();
    let mut end = segs.get(from_seg).map_or(0, |s| s.start);
    let mut top_epoch: Option<(u64, u64)> = None;
    for (i, seg) in segs.iter().enumerate().skip(from_seg) {
        let mut r = SegmentReader::new(&*seg.file, lens[i], 0);
        loop {
            let off = seg.start + r.pos();
            let bytes = match r.next(MAX_RECORD_HARD)? {
                Step::End => break,
                Step::Bad(reason) => {
                    return Ok(ScanOut {
                        end: off,
                        bad: Some((i, off, reason)),
                        inconsistent,
                        top_epoch,
                    });
                }
                Step::Record(b) => b,
            };
            let v = match record::decode_view(bytes, MAX_RECORD_HARD) {
                Ok(v) if v.log_offset == off => v,
                Ok(v) => {
                    let reason = format!("record claims offset {}", v.log_offset);
                    return Ok(ScanOut {
                        end: off,
                        bad: Some((i, off, reason)),
                        inconsistent,
                        top_epoch,
                    });
                }
                Err(e) => {
                    return Ok(ScanOut {
                        end: off,
                        bad: Some((i, off, e.to_string())),
                        inconsistent,
                        top_epoch,
                    });
                }
            };
            end = off + u64::from(v.size);
            if top_epoch.is_none_or(|(e, _)| v.epoch > e) {
                top_epoch = Some((v.epoch, off));
            }
            if inconsistent.is_some() {
                continue;
            }
            let key = (v.topic.to_owned(), v.queue_id);
            let cq = match cache.get(&key) {
                Some(q) => q.clone(),
                None => {
                    let q = cqs.get_or_create(v.topic, v.queue_id)?;
                    cache.insert(key, q.clone());
                    q
                }
            };
            let len = cq.len();
            if off >= cq_from {
                if v.queue_offset > len {
                    inconsistent = Some(format!(
                        "queue {}/{} has {len} entries but the log has queue offset {} at {off}",
                        v.topic, v.queue_id, v.queue_offset
                    ));
                    continue;
                }
                let e = CqEntry {
                    log_offset: off,
                    size: v.size,
                    tag_hash: record::tag_hash(v.tag),
                };
                cq.put(v.queue_offset, &e)?;
                since_flush += 1;
            } else if v.queue_offset >= len {
                inconsistent = Some(format!(
                    "queue {}/{} lacks entry {} (record at {off})",
                    v.topic, v.queue_id, v.queue_offset
                ));
            }
        }
        if since_flush > 200_000 {
            for q in cqs.all() {
                q.flush(cqs.root())?;
            }
            since_flush = 0;
        }
    }
    Ok(ScanOut {
        end,
        bad: None,
        inconsistent,
        top_epoch,
    })
}

/// Checks that each queue's last entry matches the record it points at.
fn verify_queue_tails(
    segs: &[Arc<Segment>],
    cqs: &ConsumeQueues,
    log_end: u64,
) -> Result<Option<String>, StoreError> {
    for q in cqs.all() {
        let n = q.len();
        if n == 0 {
            continue;
        }
        let Some(e) = q.entry(n - 1)? else { continue };
        let ok = (|| {
            if e.end() > log_end {
                return false;
            }
            let i = segs.partition_point(|s| s.start <= e.log_offset);
            let Some(seg) = i.checked_sub(1).map(|i| &segs[i]) else {
                return false;
            };
            let mut buf = vec![0u8; e.size as usize];
            if seg
                .file
                .read_exact_at(&mut buf, e.log_offset - seg.start)
                .is_err()
            {
                return false;
            }
            match record::decode_view(&buf, MAX_RECORD_HARD) {
                Ok(v) => {
                    v.log_offset == e.log_offset
                        && v.topic == q.topic
                        && v.queue_id == q.queue_id
                        && v.queue_offset == n - 1
                }
                Err(_) => false,
            }
        })();
        if !ok {
            return Ok(Some(format!(
                "queue {}/{}: last entry does not match the log",
                q.topic, q.queue_id
            )));
        }
    }
    Ok(None)
}

/// Drops every queue entry whose record does not end at or below `limit`.
fn trim_queues(cqs: &ConsumeQueues, limit: u64) -> Result<(), StoreError> {
    for q in cqs.all() {
        let keep = q.count_below(limit)?;
        if keep < q.len() {
            q.truncate(keep)?;
        }
    }
    Ok(())
}

/// Whether the bytes of `seg` from `from` to `len` (file relative) are all zero.
fn zeros_to_end(seg: &Segment, from: u64, len: u64) -> Result<bool, StoreError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = from;
    while pos < len {
        let n = usize::try_from(len - pos).map_or(buf.len(), |r| r.min(buf.len()));
        seg.file.read_exact_at(&mut buf[..n], pos)?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        pos += n as u64;
    }
    Ok(true)
}

/// Runs recovery for the store rooted at `cfg.dir` (directories already exist).
pub(crate) fn recover(cfg: &StoreConfig) -> Result<Recovered, StoreError> {
    let fs = &*cfg.fs;
    let log_dir = cfg.dir.join("commitlog");
    let ck = checkpoint::load(fs, &cfg.dir)?;
    let (mut epochs, epoch_problem) = EpochHistory::open(cfg.fs.clone(), &cfg.dir)?;
    let mut epoch_unreadable = epoch_problem.is_some();
    let mut fenced: Option<String> = epoch_problem;

    let mut segs = Vec::new();
    for start in list_segments(fs, &log_dir)? {
        segs.push(Arc::new(Segment::open(fs, &log_dir, start, false)?));
    }
    if segs.is_empty() {
        segs.push(Arc::new(Segment::open(fs, &log_dir, 0, true)?));
        fs.sync_dir(&log_dir)?;
    }
    let mut lens = Vec::with_capacity(segs.len());
    for s in &segs {
        lens.push(s.len()?);
    }
    let log_start = segs[0].start;
    // Nothing removes segments from the front (there is no retention), so a log that does
    // not start at 0 lost its first segments: the whole log is fetched again.
    let missing_front = log_start > 0 && !crate::mutant::active("ignore-segment-loss");
    if missing_front {
        fenced.get_or_insert(format!(
            "the first segment starts at {log_start}: the segments before it are missing"
        ));
    }
    // Contiguity: each segment must end exactly where the next starts.
    let mut usable = segs.len();
    for i in 0..segs.len() - 1 {
        if segs[i].start + lens[i] != segs[i + 1].start
            && !crate::mutant::active("ignore-segment-loss")
        {
            fenced.get_or_insert(format!(
                "segment {} holds {} bytes but the next segment starts at {}",
                segs[i].start,
                lens[i],
                segs[i + 1].start
            ));
            lens[i] = lens[i].min(segs[i + 1].start.saturating_sub(segs[i].start));
            usable = i + 1;
            break;
        }
    }
    let ck_durable = ck.map_or(0, |c| c.durable);
    let files_end = segs[usable - 1].start + lens[usable - 1];
    if ck_durable > files_end && !crate::mutant::active("ignore-segment-loss") {
        fenced.get_or_insert(format!(
            "log ends at {files_end}, below the checkpointed durable offset {ck_durable}"
        ));
    }

    let marker = cfg.dir.join(REBUILD_MARKER);
    let marked = fs.exists(&marker);
    if marked {
        set_queues_aside(fs, &cfg.dir)?;
    }
    let cqs = ConsumeQueues::new(cfg.fs.clone(), cfg.dir.join("consumequeue"));
    let strange = cqs.load_all()?;
    let cq_from = ck
        .map_or(log_start, |c| c.cq_flushed.min(c.durable))
        .max(log_start);
    let mut rebuild = match ck {
        None => Some("no checkpoint".to_owned()),
        Some(c) if (cqs.all().len() as u64) < c.queue_count => Some(format!(
            "{} queue files found, checkpoint knows {}",
            cqs.all().len(),
            c.queue_count
        )),
        _ if strange > 0 => Some(format!("{strange} unexpected files in consumequeue/")),
        _ => None,
    };
    if marked && rebuild.is_none() {
        let why = fs
            .read(&marker)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        rebuild = Some(format!("a consume queue was found damaged: {why}"));
    }
    let used = &segs[..usable];
    let out = if rebuild.is_none() {
        trim_queues(&cqs, cq_from)?;
        let from_seg = used.partition_point(|s| s.start <= cq_from).max(1) - 1;
        let out = scan(used, &lens, from_seg, cq_from, &cqs)?;
        rebuild = out.inconsistent.clone();
        if rebuild.is_none() {
            rebuild = verify_queue_tails(used, &cqs, out.end)?;
        }
        if rebuild.is_none() { Some(out) } else { None }
    } else {
        None
    };
    let out = match out {
        Some(o) => o,
        None => {
            if files_end > log_start {
                tracing::warn!(
                    reason = rebuild.as_deref().unwrap_or(""),
                    "rebuilding every consume queue from the commit log"
                );
            }
            cqs.wipe()?;
            let out = scan(used, &lens, 0, log_start, &cqs)?;
            if let Some(r) = &out.inconsistent {
                tracing::warn!(reason = %r, "queue offsets in the log are not contiguous");
            }
            out
        }
    };

    let mut log_end = out.end;
    // An epoch's entry is made durable before its first record is written, so a record of
    // an epoch the history does not hold means the history lost entries (a removed file, a
    // lost last entry): which epoch wrote what is unknown from the last known epoch on.
    if let Some((e, at)) = out.top_epoch
        && e > epochs.current()
        && !epoch_unreadable
    {
        epoch_unreadable = true;
        fenced.get_or_insert(format!(
            "epoch history lacks epoch {e} of the record at offset {at} (it knows up to epoch {})",
            epochs.current()
        ));
    }
    if let Some((seg_idx, off, reason)) = out.bad {
        let last = seg_idx + 1 == segs.len();
        if !last || off < ck_durable {
            fenced.get_or_insert(format!(
                "corrupt record at offset {off} in the middle of the log \
                 (durable checkpoint {ck_durable}, segment {}): {reason}",
                segs[seg_idx].start
            ));
        } else {
            let seg = &segs[seg_idx];
            let cut = lens[seg_idx] - (off - seg.start);
            if zeros_to_end(seg, off - seg.start, lens[seg_idx])? {
                // What the zero-fill (`prefill`) had written ahead of the writer.
                tracing::info!(
                    offset = off,
                    cut,
                    "cutting the zero-filled tail of the commit log"
                );
            } else {
                tracing::warn!(
                    offset = off,
                    cut,
                    reason = %reason,
                    "cutting torn tail of the commit log"
                );
            }
            seg.file.set_len(off - seg.start)?;
            seg.file.sync_all()?;
        }
    }
    let damage = if fenced.is_some() {
        log_end = if missing_front {
            0
        } else {
            log_end.min(files_end)
        };
        if epoch_unreadable {
            // Which epoch wrote the records from the last good entry on is unknown, and the
            // epoch decides where a replica's log must be cut: they are fetched again.
            let known = epochs.entries().last().map_or(0, |e| e.start_offset);
            log_end = log_end.min(known);
        }
        Some(log_end)
    } else {
        None
    };
    if fenced.is_none() {
        // Everything we keep is now made durable before anyone relies on it.
        segs[segs.len() - 1].file.sync_data()?;
        if epochs
            .entries()
            .last()
            .is_some_and(|e| e.start_offset > log_end)
        {
            tracing::warn!(log_end, "dropping epoch entries past the recovered log end");
            epochs.trim_after(log_end)?;
        }
    }
    trim_queues(&cqs, log_end)?;
    for q in cqs.all() {
        q.flush(cqs.root())?;
    }
    if marked {
        // The queues were rebuilt and flushed above.
        fs.remove_file(&marker)?;
        fs.sync_dir(&cfg.dir)?;
    }
    if let Some(r) = &fenced {
        tracing::error!(reason = %r, "commit log opened fenced");
    }
    tracing::info!(
        log_end,
        segments = segs.len(),
        queues = cqs.all().len(),
        "commit log recovered"
    );
    let checkpoint = ck.unwrap_or_default();
    Ok(Recovered {
        segments: segs,
        log_end,
        fenced,
        damage,
        cqs,
        epochs,
        checkpoint,
    })
}
