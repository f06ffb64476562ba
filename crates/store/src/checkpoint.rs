//! The checkpoint file: durable log offset, consume-queue flushed offset, and the replication
//! limit on reads (what a master knew its in-sync slaves held), so that a master restarting
//! does not make readable the tail its slaves never acknowledged.
//!
//! Written atomically: the new content goes to `checkpoint.tmp`, which is fdatasync'd, renamed
//! over `checkpoint`, and the directory is fsynced. The content carries its own CRC32C, so a
//! damaged file is detected and ignored (recovery then scans the whole log).

use std::io;
use std::path::Path;

use crate::io::Fs;

const MAGIC: u32 = 0x5351_434B; // "SQCK"
const VERSION: u32 = 2;
const LEN: usize = 48;
/// Version 1 (no replication limit) is still read.
const LEN_V1: usize = 40;
const FILE: &str = "checkpoint";
const TMP: &str = "checkpoint.tmp";

/// Checkpoint content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// Every log byte below this was covered by a completed fdatasync when it was written.
    pub durable: u64,
    /// Every consume-queue entry for records below this is in the CQ files and fsynced.
    pub cq_flushed: u64,
    /// Number of consume queues that existed when it was written.
    pub queue_count: u64,
    /// The replication limit on reads when it was written (`u64::MAX`: none, as on a slave
    /// or a single-copy master, or when unknown).
    pub replicated: u64,
}

impl Default for Checkpoint {
    fn default() -> Checkpoint {
        Checkpoint {
            durable: 0,
            cq_flushed: 0,
            queue_count: 0,
            replicated: u64::MAX,
        }
    }
}

impl Checkpoint {
    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.durable.to_le_bytes());
        b[16..24].copy_from_slice(&self.cq_flushed.to_le_bytes());
        b[24..32].copy_from_slice(&self.queue_count.to_le_bytes());
        b[32..40].copy_from_slice(&self.replicated.to_le_bytes());
        let crc = crc32c::crc32c(&b[..44]);
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Checkpoint> {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let (version, crc_at) = match b.len() {
            LEN => (VERSION, 44),
            LEN_V1 => (1, 36),
            _ => return None,
        };
        if u32_at(0) != MAGIC
            || u32_at(4) != version
            || u32_at(crc_at) != crc32c::crc32c(&b[..crc_at])
        {
            return None;
        }
        Some(Checkpoint {
            durable: u64_at(8),
            cq_flushed: u64_at(16),
            queue_count: u64_at(24),
            replicated: if version == 1 { u64::MAX } else { u64_at(32) },
        })
    }
}

/// Loads the checkpoint. `Ok(None)` when missing or damaged (a warning is logged for damage).
pub(crate) fn load(fs: &dyn Fs, dir: &Path) -> io::Result<Option<Checkpoint>> {
    let _ = fs.remove_file(&dir.join(TMP));
    match fs.read(&dir.join(FILE)) {
        Ok(b) => {
            let c = Checkpoint::decode(&b);
            if c.is_none() {
                tracing::warn!("checkpoint file is damaged; recovering from the start of the log");
            }
            Ok(c)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Atomically replaces the checkpoint.
pub(crate) fn store(fs: &dyn Fs, dir: &Path, c: &Checkpoint) -> io::Result<()> {
    let tmp = dir.join(TMP);
    fs.write_synced(&tmp, &c.encode())?;
    fs.rename(&tmp, &dir.join(FILE))?;
    fs.sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::StdFs;
    use std::fs;

    #[test]
    fn round_trip_and_damage() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load(&StdFs, d.path()).unwrap(), None);
        let c = Checkpoint {
            durable: 10,
            cq_flushed: 5,
            queue_count: 2,
            replicated: 7,
        };
        store(&StdFs, d.path(), &c).unwrap();
        assert_eq!(load(&StdFs, d.path()).unwrap(), Some(c));
        let mut b = fs::read(d.path().join(FILE)).unwrap();
        b[9] ^= 1;
        fs::write(d.path().join(FILE), &b).unwrap();
        assert_eq!(load(&StdFs, d.path()).unwrap(), None);
    }

    #[test]
    fn a_version_1_checkpoint_is_read_with_no_replication_limit() {
        let d = tempfile::tempdir().unwrap();
        let mut b = [0u8; LEN_V1];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..16].copy_from_slice(&10u64.to_le_bytes());
        b[16..24].copy_from_slice(&5u64.to_le_bytes());
        b[24..32].copy_from_slice(&2u64.to_le_bytes());
        let crc = crc32c::crc32c(&b[..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        fs::write(d.path().join(FILE), b).unwrap();
        let c = load(&StdFs, d.path()).unwrap().unwrap();
        assert_eq!((c.durable, c.cq_flushed, c.queue_count), (10, 5, 2));
        assert_eq!(c.replicated, u64::MAX);
    }
}
