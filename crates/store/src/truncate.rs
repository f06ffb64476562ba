//! Durable truncation of the log tail (runs on the writer thread).
//!
//! Order matters for crash safety:
//! 1. the checkpoint is lowered first (so a crash half way never leaves a checkpoint claiming
//!    bytes the log no longer has),
//! 2. segment files past the offset are removed and the segment holding it is cut
//!    (`ftruncate` + `fsync`), then the directory is fsynced, so the cut tail can never
//!    reappear,
//! 3. consume queues and the epoch history are trimmed (durably) to the new end.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::StoreError;
use crate::checkpoint::{self, Checkpoint};
use crate::cmd::DamageCut;
use crate::io::OpenMode;
use crate::log::lock;
use crate::segment::Segment;
use crate::writer::Writer;

impl Writer {
    /// Cuts the log at `offset` (a record boundary at or below the end). Pending appends were
    /// committed by the caller.
    pub(crate) fn truncate(&mut self, offset: u64) -> Result<(), StoreError> {
        if self.sh.is_fenced() {
            return Err(self.sh.fenced_error());
        }
        if offset > self.end {
            return Err(StoreError::OffsetOutOfRange {
                offset,
                end: self.end,
            });
        }
        if offset < self.end {
            let rec = self.sh.read_record(offset, self.end)?;
            if rec.log_offset != offset {
                return Err(StoreError::NotRecordBoundary(offset));
            }
        }
        let res = self.truncate_io(offset);
        if let Err(e) = &res {
            self.sh.fence(format!("truncate to {offset} failed: {e}"));
        }
        res
    }

    fn truncate_io(&mut self, offset: u64) -> Result<(), StoreError> {
        let sh = self.sh.clone();
        // Hold the checkpoint lock throughout so the flusher cannot write a stale checkpoint.
        let mut ck = lock(&sh.ckpt);
        sh.truncations.fetch_add(1, Ordering::AcqRel);
        sh.log_end.store(offset, Ordering::Release);
        sh.durable.fetch_min(offset, Ordering::AcqRel);
        sh.dispatched.fetch_min(offset, Ordering::AcqRel);
        let lowered = Checkpoint {
            durable: ck.durable.min(offset),
            cq_flushed: ck.cq_flushed.min(offset),
            queue_count: ck.queue_count,
            replicated: ck.replicated,
        };
        if lowered != *ck {
            checkpoint::store(&*sh.cfg.fs, &sh.cfg.dir, &lowered)?;
            *ck = lowered;
        }

        // Segment files.
        {
            let mut segs = sh.segments.write().unwrap_or_else(|p| p.into_inner());
            let mut removed = false;
            while segs.len() > 1 && segs.last().is_some_and(|s| s.start > offset) {
                if let Some(s) = segs.pop() {
                    sh.cfg.fs.remove_file(&s.path)?;
                    removed = true;
                }
            }
            // A cut below the first segment (a log that lost its front) starts afresh there.
            if segs.len() == 1 && segs[0].start > offset {
                let old = segs.pop();
                let fresh = Arc::new(Segment::open(&*sh.cfg.fs, &sh.log_dir, offset, true)?);
                if let Some(s) = old {
                    sh.cfg.fs.remove_file(&s.path)?;
                }
                segs.push(fresh);
                removed = true;
            }
            if let Some(last) = segs.last() {
                let mut fill = sh.prefill.quiet();
                let keep = offset.saturating_sub(last.start);
                last.file.set_len(keep)?;
                last.file.sync_all()?;
                fill.reset(last.clone(), keep);
                self.seg = last.clone();
            }
            if removed {
                sh.cfg.fs.sync_dir(&sh.log_dir)?;
            }
        }

        // Consume queues.
        for q in &mut self.queues {
            let keep = q.cq.count_below(offset)?;
            if keep < q.cq.len() {
                q.cq.truncate(keep)?;
            }
            q.next = q.cq.len();
        }

        // Epoch history.
        {
            let mut ep = lock(&sh.epochs);
            ep.trim_from(offset)?;
            self.epoch = ep.current();
            sh.current_epoch.store(self.epoch, Ordering::Release);
        }

        self.end = offset;
        self.written = offset;
        self.synced = offset;
        sh.durable.store(offset, Ordering::Release);
        sh.dispatched.store(offset, Ordering::Release);
        tracing::info!(offset, "log truncated");
        Ok(())
    }
}

impl Writer {
    /// A log fenced by damage: keeps a copy of everything from the damaged offset on (the
    /// tail of the segment holding it, hard links to the later segments), cuts the log there
    /// durably and lifts the fence, so the range can be fetched again from a healthy replica.
    /// `None` when the log is not fenced by damage.
    pub(crate) fn cut_damage(&mut self) -> Result<Option<DamageCut>, StoreError> {
        let Some(at) = self.sh.damage() else {
            return Ok(None);
        };
        let segs: Vec<_> = self
            .sh
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut old_end = at;
        let kept_in = self.sh.cfg.dir.join("damaged").join(at.to_string());
        let fs = &*self.sh.cfg.fs;
        fs.create_dir_all(&kept_in)?;
        for s in &segs {
            let len = s.len()?;
            let end = s.start + len;
            old_end = old_end.max(end);
            if end <= at {
                continue;
            }
            let name = s.path.file_name().unwrap_or_default();
            if s.start >= at {
                let to = kept_in.join(name);
                if !fs.exists(&to) {
                    fs.hard_link(&s.path, &to)?;
                }
            } else {
                let to = kept_in.join(format!("{}.from-{at}", name.to_string_lossy()));
                let f = fs.open(&to, OpenMode::Truncate)?;
                let mut buf = vec![0u8; 1 << 20];
                let mut pos = at - s.start;
                while pos < len {
                    let n = usize::try_from(len - pos).map_or(buf.len(), |r| r.min(buf.len()));
                    s.file.read_exact_at(&mut buf[..n], pos)?;
                    f.write_all_at(&buf[..n], pos - (at - s.start))?;
                    pos += n as u64;
                }
                f.sync_all()?;
            }
        }
        fs.sync_dir(&kept_in)?;
        if let Some(parent) = kept_in.parent() {
            fs.sync_dir(parent)?;
        }
        if let Err(e) = self.truncate_io(at) {
            self.sh
                .fence(format!("cutting the damaged log at {at} failed: {e}"));
            return Err(e);
        }
        self.sh.unfence_repaired();
        tracing::warn!(
            at,
            old_end,
            kept_in = %kept_in.display(),
            "damaged commit log cut; the range is fetched again from the master"
        );
        Ok(Some(DamageCut {
            at,
            old_end,
            kept_in,
        }))
    }
}
