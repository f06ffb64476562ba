//! Commit-log segment files and a sequential record reader over one segment.
//!
//! Segments are named by their start offset, zero padded to 20 digits. The log's offset space is
//! contiguous: a segment starts exactly where the previous one ends, and its file length is the
//! number of bytes it holds. A record never spans two segments. One exception to the length:
//! while a store runs, the last segment also holds the zeros written ahead of the writer
//! (`prefill`); they are cut at a roll and at a clean close, and by recovery after a crash.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::io::{FileIo, Fs, OpenMode};

use crate::record::{self, DecodeError, HEADER_LEN};

/// One segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Global offset of the first byte.
    pub start: u64,
    pub file: Arc<dyn FileIo>,
    pub path: PathBuf,
}

/// File name of the segment starting at `start`.
pub(crate) fn segment_name(start: u64) -> String {
    format!("{start:020}")
}

impl Segment {
    /// Opens (and with `create`, creates) the segment starting at `start` in `dir`.
    pub fn open(fs: &dyn Fs, dir: &Path, start: u64, create: bool) -> io::Result<Segment> {
        let path = dir.join(segment_name(start));
        let mode = if create {
            OpenMode::Create
        } else {
            OpenMode::Write
        };
        let file = fs.open(&path, mode)?;
        Ok(Segment { start, file, path })
    }

    /// Current file length.
    pub fn len(&self) -> io::Result<u64> {
        self.file.len()
    }
}

/// Lists the segment start offsets in `dir`, sorted. Ignores other files.
pub(crate) fn list_segments(fs: &dyn Fs, dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for e in fs.list(dir)? {
        let Some(name) = e.name.to_str() else {
            continue;
        };
        if name.len() == 20
            && name.bytes().all(|b| b.is_ascii_digit())
            && let Ok(v) = name.parse::<u64>()
        {
            out.push(v);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Outcome of reading the next record.
pub(crate) enum Step<'a> {
    /// A record's bytes (header checked, CRC not yet).
    Record(&'a [u8]),
    /// Clean end of the segment.
    End,
    /// Bytes at the current position are not a whole valid record header/length.
    Bad(String),
}

/// Reads whole records from one segment file sequentially, in large chunks.
pub(crate) struct SegmentReader<'f> {
    file: &'f dyn FileIo,
    file_len: u64,
    /// File position of `buf[0]`.
    buf_pos: u64,
    buf: Vec<u8>,
    /// Position (file relative) of the next record.
    pos: u64,
    chunk: usize,
}

impl<'f> SegmentReader<'f> {
    pub fn new(file: &'f dyn FileIo, file_len: u64, pos: u64) -> SegmentReader<'f> {
        SegmentReader {
            file,
            file_len,
            buf_pos: pos,
            buf: Vec::new(),
            pos,
            chunk: 1 << 20,
        }
    }

    /// File-relative position of the next record.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Makes sure `n` bytes from `self.pos` are buffered (caller checked they exist in the
    /// file).
    fn ensure(&mut self, n: usize) -> io::Result<()> {
        let off = (self.pos - self.buf_pos) as usize;
        if self.buf.len() - off >= n {
            return Ok(());
        }
        self.buf.drain(..off);
        self.buf_pos = self.pos;
        let have = self.buf.len();
        let want = n.max(self.chunk) as u64;
        let avail = self.file_len - self.pos;
        let target = want.min(avail) as usize;
        self.buf.resize(target, 0);
        self.file
            .read_exact_at(&mut self.buf[have..target], self.pos + have as u64)?;
        Ok(())
    }

    /// Reads the next record. `max_len` bounds the record length.
    pub fn next(&mut self, max_len: usize) -> io::Result<Step<'_>> {
        let avail = self.file_len - self.pos;
        if avail == 0 {
            return Ok(Step::End);
        }
        if avail < HEADER_LEN as u64 {
            return Ok(Step::Bad(format!("partial header ({avail} bytes)")));
        }
        self.ensure(HEADER_LEN)?;
        let off = (self.pos - self.buf_pos) as usize;
        let limit = max_len.min(usize::try_from(avail).unwrap_or(usize::MAX));
        let total = match record::check_header(&self.buf[off..off + HEADER_LEN], limit) {
            Ok(t) => t,
            Err(DecodeError::Invalid(s)) => {
                // Distinguish "claims more than the file holds" (torn) for the message only.
                return Ok(Step::Bad(s));
            }
            Err(e) => return Ok(Step::Bad(e.to_string())),
        };
        self.ensure(total)?;
        let off = (self.pos - self.buf_pos) as usize;
        self.pos += total as u64;
        Ok(Step::Record(&self.buf[off..off + total]))
    }
}
