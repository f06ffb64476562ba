//! A broker's durable log in the simulated file system: fixed-size records `(epoch, id)`
//! with a CRC, plus an epoch-history file. Everything that is counted as durable was
//! `sync_all`ed; on restart the log is rebuilt from what survived (a torn or unsynced tail
//! is dropped by the shim or fails its CRC and is cut off).
//!
//! Offsets are record indices. Like the real store, a master WRITES records first
//! ([`Log::write`], no sync: a crash may lose them, or keep a torn part) and syncs them
//! later ([`Log::sync`]); [`Log::end`] is the written end (what a master streams to its
//! slaves), [`Log::durable`] the synced end (what it may ack and report).

use std::io::{self, Read, Seek, SeekFrom, Write};

use serde::{Deserialize, Serialize};
use sofamq_store::EpochEntry;
use turmoil::fs::shim::std::fs::{self as sfs, File, OpenOptions};

const REC: usize = 20;
const LOG: &str = "/log";
const HIST: &str = "/hist";
const HIST_TMP: &str = "/hist.tmp";

/// One message in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rec {
    /// Epoch of the master that appended it.
    pub epoch: u64,
    /// The producer's unique message id.
    pub id: u64,
}

fn encode(a: u64, b: u64) -> [u8; REC] {
    let mut buf = [0u8; REC];
    buf[..8].copy_from_slice(&a.to_le_bytes());
    buf[8..16].copy_from_slice(&b.to_le_bytes());
    let crc = crc32c::crc32c(&buf[..16]);
    buf[16..].copy_from_slice(&crc.to_le_bytes());
    buf
}

fn decode(b: &[u8]) -> Option<(u64, u64)> {
    let a: [u8; REC] = b.try_into().ok()?;
    let crc = u32::from_le_bytes([a[16], a[17], a[18], a[19]]);
    if crc != crc32c::crc32c(&a[..16]) {
        return None;
    }
    let x = u64::from_le_bytes(a[..8].try_into().ok()?);
    let y = u64::from_le_bytes(a[8..16].try_into().ok()?);
    Some((x, y))
}

/// Decodes the longest valid prefix of fixed-size entries.
fn decode_all(bytes: &[u8]) -> Vec<(u64, u64)> {
    bytes.chunks(REC).map_while(decode).collect()
}

/// The durable log of one broker.
pub struct Log {
    file: File,
    /// Every record written (the durable ones first).
    recs: Vec<Rec>,
    /// How many of `recs` a completed sync covers.
    durable: u64,
    hist: Vec<EpochEntry>,
}

impl Log {
    /// Opens (or creates) the log and recovers it from what is durable.
    pub fn open() -> io::Result<Log> {
        let fresh = !sfs::exists(LOG);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(LOG)?;
        if fresh {
            file.sync_all()?;
            sfs::sync_dir("/")?;
        }
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_end(&mut bytes)?;
        let recs: Vec<Rec> = decode_all(&bytes)
            .into_iter()
            .map(|(epoch, id)| Rec { epoch, id })
            .collect();
        let valid = (recs.len() * REC) as u64;
        if valid != bytes.len() as u64 {
            file.set_len(valid)?;
            file.sync_all()?;
        }
        let raw_hist = if sfs::exists(HIST) {
            decode_all(&sfs::read(HIST)?)
        } else {
            Vec::new()
        };
        let end = recs.len() as u64;
        let mut hist: Vec<EpochEntry> = Vec::new();
        for (epoch, start_offset) in raw_hist {
            // Entries past the log end can only come from a crash between a log truncation
            // and the history rewrite; a non-increasing epoch is never written.
            if start_offset > end || hist.last().is_some_and(|l| l.epoch >= epoch) {
                break;
            }
            hist.push(EpochEntry {
                epoch,
                start_offset,
            });
        }
        let durable = recs.len() as u64;
        let mut log = Log {
            file,
            recs,
            durable,
            hist,
        };
        log.write_hist()?;
        Ok(log)
    }

    /// The written end (number of records written, synced or not).
    pub fn end(&self) -> u64 {
        self.recs.len() as u64
    }

    /// The durable end (records covered by a completed sync).
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// The highest epoch in the history (0 when empty).
    pub fn epoch(&self) -> u64 {
        self.hist.last().map_or(0, |e| e.epoch)
    }

    /// The epoch history.
    pub fn hist(&self) -> &[EpochEntry] {
        &self.hist
    }

    /// The records.
    pub fn recs(&self) -> &[Rec] {
        &self.recs
    }

    fn write_hist(&mut self) -> io::Result<()> {
        let mut f = File::create(HIST_TMP)?;
        for e in &self.hist {
            f.write_all(&encode(e.epoch, e.start_offset))?;
        }
        f.sync_all()?;
        sfs::rename(HIST_TMP, HIST)?;
        sfs::sync_dir("/")
    }

    /// Durably begins `epoch` at the current end (a master, before it takes writes); syncs
    /// what is written first.
    pub fn begin_epoch(&mut self, epoch: u64) -> io::Result<()> {
        if epoch <= self.epoch() {
            return Err(io::Error::other(format!(
                "epoch {epoch} not above {}",
                self.epoch()
            )));
        }
        self.sync()?;
        self.hist.push(EpochEntry {
            epoch,
            start_offset: self.end(),
        });
        if let Err(e) = self.write_hist() {
            self.hist.pop();
            return Err(e);
        }
        Ok(())
    }

    /// Appends records durably (history first, then the records, each synced).
    pub fn append(&mut self, recs: &[Rec]) -> io::Result<()> {
        self.write(recs)?;
        self.sync()
    }

    /// Makes every written record durable.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.durable < self.end() {
            self.file.sync_all()?;
            self.durable = self.end();
        }
        Ok(())
    }

    /// Writes records (history first, durably; the records without a sync: they count as
    /// written, not durable, until [`Log::sync`]).
    pub fn write(&mut self, recs: &[Rec]) -> io::Result<()> {
        if recs.is_empty() {
            return Ok(());
        }
        let mut hist = self.hist.clone();
        for (off, r) in (self.end()..).zip(recs.iter()) {
            // Empty epochs at the end that a record of an older epoch supersedes (this log
            // began them as a master that never wrote) are dropped, like a truncation.
            while hist
                .last()
                .is_some_and(|l| l.start_offset >= off && l.epoch > r.epoch)
            {
                hist.pop();
            }
            match hist.last() {
                Some(l) if l.epoch > r.epoch => {
                    return Err(io::Error::other(format!(
                        "record of epoch {} after epoch {} at {off}",
                        r.epoch, l.epoch
                    )));
                }
                Some(l) if l.epoch == r.epoch => {}
                _ => hist.push(EpochEntry {
                    epoch: r.epoch,
                    start_offset: off,
                }),
            }
        }
        if hist != self.hist {
            let old = std::mem::replace(&mut self.hist, hist);
            if let Err(e) = self.write_hist() {
                self.hist = old;
                return Err(e);
            }
        }
        let mut buf = Vec::with_capacity(recs.len() * REC);
        for r in recs {
            buf.extend_from_slice(&encode(r.epoch, r.id));
        }
        self.file.seek(SeekFrom::Start(self.end() * REC as u64))?;
        self.file.write_all(&buf)?;
        self.recs.extend_from_slice(recs);
        Ok(())
    }

    /// Durably cuts the log to `to` records (and the history entries that start at or past
    /// it, Kafka's `truncateFromEnd`).
    pub fn truncate(&mut self, to: u64) -> io::Result<()> {
        if to >= self.end() {
            return Ok(());
        }
        self.file.set_len(to * REC as u64)?;
        self.file.sync_all()?;
        self.recs
            .truncate(usize::try_from(to).unwrap_or(usize::MAX));
        // `sync_all` above covered whatever was written below `to`.
        self.durable = self.end();
        let before = self.hist.len();
        self.hist.retain(|e| e.start_offset < to);
        if self.hist.len() != before {
            self.write_hist()?;
        }
        Ok(())
    }
}
