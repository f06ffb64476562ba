//! The replication wire format: a plain TCP stream of length-prefixed, CRC-checked,
//! versioned frames. Every frame carries the sender's view of the master epoch.
//!
//! ```text
//! header (24 bytes, little endian):
//!   magic u32 = "SQRP" | version u8 | kind u8 | versions u16
//!   epoch u64 | payload length u32 | crc32c u32 (over header bytes 0..20 and the payload;
//!   for Data only over header bytes 0..20 and `start`, see below)
//! payload (kind):
//!   Hello      name_len u16, name, broker_id u64, log_end u64, history
//!   HelloReply written u64, history               history = count u32, (epoch u64, start u64)*
//!   Follow     from u64
//!   Data       start u64, raw commit-log bytes (whole records, as stored)
//!   Ack        durable u64                     (version 3: durable u64, received u64)
//!   Heartbeat  durable u64
//!   Reject     UTF-8 reason
//! ```
//!
//! Versions are negotiated, so brokers of two releases can replicate to each other during a
//! rolling upgrade. The handshake (Hello, HelloReply, a Reject) always travels at version 2,
//! which every release speaks; the header's `versions` field, which version 2 left zero and
//! every reader ignores, carries the negotiation: in a Hello the slave's lowest (low byte)
//! and highest (high byte) version, in a HelloReply the version the master chose (the
//! highest both speak, [`negotiate`]). Zero there means "2 only" (a build before
//! negotiation). Every frame after the handshake carries the chosen version and a frame of
//! another version ends the session. A broker offers versions up to
//! `replication.protocol_max` (default [`DEFAULT_MAX_VERSION`]), the knob that holds a
//! cluster on the old version until every broker runs the new build.
//!
//! Version 3 adds the slave's received (written, perhaps not yet durable) log end to its
//! Acks; the master checks it against what it streamed. It is built into every release but
//! offered by default only by a `next-proto` build: the stand-in for the next release in the
//! mixed-version upgrade test.
//!
//! Version 2 changed the Data CRC: it covers the header and `start` but not the
//! records. Every record carries its own CRC32C (and its own log offset), which the slave
//! verifies before it stores anything (`Store::append_raw*`), so a second checksum over the
//! same bytes only cost a pass over every replicated byte. The frame CRC still guards what
//! the record CRCs cannot: the framing (kind, epoch, length) and where the bytes belong.
//!
//! Nothing here panics on hostile input: lengths are checked against a configured maximum
//! before any allocation and every field read is bounds-checked.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sofamq_store::EpochEntry;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// "SQRP".
pub const MAGIC: u32 = 0x5053_5153;
/// The lowest version this code speaks, and the one of every handshake frame (2: the Data
/// CRC leaves out the records).
pub const MIN_VERSION: u8 = 2;
/// The highest version this code speaks (3: Acks carry the received offset too).
pub const MAX_VERSION: u8 = 3;
/// The highest version offered when `replication.protocol_max` is unset: 2, or 3 in a
/// `next-proto` build.
pub const DEFAULT_MAX_VERSION: u8 = if cfg!(feature = "next-proto") { 3 } else { 2 };
/// Header length.
pub const HEADER_LEN: usize = 24;
/// Header plus a Data frame's `start`: where a Data frame's records begin.
pub const DATA_PREFIX: usize = HEADER_LEN + 8;
/// Frame kind of [`Msg::Data`].
const KIND_DATA: u8 = 4;
/// Most epoch-history entries in one frame.
pub const MAX_HISTORY: usize = 65_536;

/// A codec failure. Any of them ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the stream.
    #[error("connection closed")]
    Closed,
    /// I/O failure.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Not our protocol.
    #[error("bad magic {0:#x}")]
    BadMagic(u32),
    /// A version we do not speak.
    #[error("unsupported version {0}")]
    BadVersion(u8),
    /// Unknown frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// Payload over the limit.
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// CRC mismatch.
    #[error("frame checksum mismatch")]
    BadCrc,
    /// Payload does not match its kind.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The protocol version it was encoded in.
    pub version: u8,
    /// The master epoch as the sender knows it.
    pub epoch: u64,
    /// What it says.
    pub msg: Msg,
}

/// Frame payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Slave → master: who I am, where my log ends, my epoch history.
    Hello {
        /// Broker group name.
        broker_name: String,
        /// Slave broker id.
        broker_id: u64,
        /// End of the slave's log.
        log_end: u64,
        /// The slave's epoch history.
        history: Vec<EpochEntry>,
        /// The lowest and highest protocol version the slave speaks.
        versions: (u8, u8),
    },
    /// Master → slave: my log end and my epoch history.
    HelloReply {
        /// The version the session speaks from now on.
        version: u8,
        /// Master's written log end (bytes may be streamed before they are durable on the
        /// master, so this may be ahead of its durable offset). The field was named
        /// `durable` before; its place in the frame, and so the wire format, is unchanged.
        written: u64,
        /// Master's epoch history.
        history: Vec<EpochEntry>,
    },
    /// Slave → master: after truncation, stream from here.
    Follow {
        /// Start offset.
        from: u64,
    },
    /// Master → slave: raw log bytes starting at `start`.
    Data {
        /// Log offset of the first byte.
        start: u64,
        /// Whole encoded records.
        bytes: Bytes,
    },
    /// Slave → master: my log is durable up to here.
    Ack {
        /// Slave's durable offset.
        durable: u64,
        /// Slave's received (written) log end; version 3 and later only.
        received: Option<u64>,
    },
    /// Master → slave when idle.
    Heartbeat {
        /// Master's durable offset.
        durable: u64,
    },
    /// Either side: I refuse this session, and why.
    Reject {
        /// Reason.
        reason: String,
    },
}

impl Msg {
    fn kind(&self) -> u8 {
        match self {
            Msg::Hello { .. } => 1,
            Msg::HelloReply { .. } => 2,
            Msg::Follow { .. } => 3,
            Msg::Data { .. } => KIND_DATA,
            Msg::Ack { .. } => 5,
            Msg::Heartbeat { .. } => 6,
            Msg::Reject { .. } => 7,
        }
    }
}

fn put_history(out: &mut BytesMut, h: &[EpochEntry]) {
    let h = &h[h.len().saturating_sub(MAX_HISTORY)..];
    out.put_u32_le(h.len() as u32);
    for e in h {
        out.put_u64_le(e.epoch);
        out.put_u64_le(e.start_offset);
    }
}

/// Appends the frame, encoded in protocol `version`, to `out`.
pub fn encode(version: u8, epoch: u64, msg: &Msg, out: &mut BytesMut) {
    let start = out.len();
    out.put_u32_le(MAGIC);
    out.put_u8(version);
    out.put_u8(msg.kind());
    out.put_u16_le(match msg {
        Msg::Hello { versions, .. } => u16::from_le_bytes([versions.0, versions.1]),
        Msg::HelloReply { version, .. } => u16::from(*version),
        _ => 0,
    });
    out.put_u64_le(epoch);
    out.put_u32_le(0); // length, patched below
    out.put_u32_le(0); // crc, patched below
    let body = out.len();
    match msg {
        Msg::Hello {
            broker_name,
            broker_id,
            log_end,
            history,
            ..
        } => {
            let name = &broker_name.as_bytes()[..broker_name.len().min(u16::MAX as usize)];
            out.put_u16_le(name.len() as u16);
            out.put_slice(name);
            out.put_u64_le(*broker_id);
            out.put_u64_le(*log_end);
            put_history(out, history);
        }
        Msg::HelloReply {
            written, history, ..
        } => {
            out.put_u64_le(*written);
            put_history(out, history);
        }
        Msg::Follow { from } => out.put_u64_le(*from),
        Msg::Data { start, bytes } => {
            out.put_u64_le(*start);
            out.put_slice(bytes);
        }
        Msg::Ack { durable, received } => {
            out.put_u64_le(*durable);
            if version >= 3 {
                out.put_u64_le(received.unwrap_or(*durable));
            }
        }
        Msg::Heartbeat { durable } => out.put_u64_le(*durable),
        Msg::Reject { reason } => out.put_slice(reason.as_bytes()),
    }
    let len = (out.len() - body) as u32;
    out[start + 16..start + 20].copy_from_slice(&len.to_le_bytes());
    let crc = checksum(&out[start..start + 20], &out[body..]);
    out[start + 20..start + 24].copy_from_slice(&crc.to_le_bytes());
}

/// The frame CRC: header bytes 0..20 (which hold the kind) and the payload, of which a Data
/// frame covers only `start` (its records carry their own CRCs).
fn checksum(head: &[u8], payload: &[u8]) -> u32 {
    let covered = if head[5] == KIND_DATA {
        &payload[..payload.len().min(8)]
    } else {
        payload
    };
    crc32c::crc32c_append(crc32c::crc32c(&head[..20]), covered)
}

/// Fills `out[..DATA_PREFIX]` with the header and `start` of a Data frame whose `len` bytes
/// of records already sit at `out[DATA_PREFIX..]`: the records are read straight into the
/// frame buffer and never copied or checksummed again on the way out.
pub fn data_prefix(version: u8, epoch: u64, start: u64, len: usize, out: &mut [u8]) {
    let len = u32::try_from(len + 8).unwrap_or(u32::MAX);
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4] = version;
    out[5] = KIND_DATA;
    out[6..8].copy_from_slice(&[0, 0]);
    out[8..16].copy_from_slice(&epoch.to_le_bytes());
    out[16..20].copy_from_slice(&len.to_le_bytes());
    out[24..32].copy_from_slice(&start.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[..20]), &out[24..32]);
    out[20..24].copy_from_slice(&crc.to_le_bytes());
}

struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.b.len() < n {
            return Err(FrameError::Malformed(self.what));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(a))
    }
    fn history(&mut self) -> Result<Vec<EpochEntry>, FrameError> {
        let n = self.u32()? as usize;
        if n > MAX_HISTORY || n * 16 > self.b.len() {
            return Err(FrameError::Malformed(self.what));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(EpochEntry {
                epoch: self.u64()?,
                start_offset: self.u64()?,
            });
        }
        Ok(v)
    }
    fn end(&self) -> Result<(), FrameError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Malformed(self.what))
        }
    }
}

/// The version range a Hello's header announces (zero: a build before negotiation, which
/// speaks only version 2).
fn announced(versions: u16) -> (u8, u8) {
    match versions.to_le_bytes() {
        [0, 0] => (MIN_VERSION, MIN_VERSION),
        [lo, hi] => (lo, hi),
    }
}

fn parse(kind: u8, version: u8, versions: u16, payload: &Bytes) -> Result<Msg, FrameError> {
    let name = match kind {
        1 => "Hello",
        2 => "HelloReply",
        3 => "Follow",
        4 => "Data",
        5 => "Ack",
        6 => "Heartbeat",
        7 => "Reject",
        k => return Err(FrameError::UnknownKind(k)),
    };
    let mut r = Reader {
        b: payload,
        what: name,
    };
    let msg = match kind {
        1 => {
            let n = r.u16()? as usize;
            let broker_name = std::str::from_utf8(r.take(n)?)
                .map_err(|_| FrameError::Malformed(name))?
                .to_string();
            Msg::Hello {
                broker_name,
                broker_id: r.u64()?,
                log_end: r.u64()?,
                history: r.history()?,
                versions: announced(versions),
            }
        }
        2 => Msg::HelloReply {
            version: u8::try_from(versions)
                .ok()
                .filter(|v| *v != 0)
                .unwrap_or(MIN_VERSION),
            written: r.u64()?,
            history: r.history()?,
        },
        3 => Msg::Follow { from: r.u64()? },
        4 => {
            let start = r.u64()?;
            return Ok(Msg::Data {
                start,
                bytes: payload.slice(8..),
            });
        }
        5 => Msg::Ack {
            durable: r.u64()?,
            received: if version >= 3 { Some(r.u64()?) } else { None },
        },
        6 => Msg::Heartbeat { durable: r.u64()? },
        _ => {
            return Ok(Msg::Reject {
                reason: String::from_utf8_lossy(payload).into_owned(),
            });
        }
    };
    r.end()?;
    Ok(msg)
}

/// A checked frame header.
struct Header {
    version: u8,
    kind: u8,
    versions: u16,
    epoch: u64,
    len: usize,
    crc: u32,
}

/// Checks a header.
fn header(h: &[u8], max: usize) -> Result<Header, FrameError> {
    let mut b = h;
    let magic = b.get_u32_le();
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let version = b.get_u8();
    if !(MIN_VERSION..=MAX_VERSION).contains(&version) {
        return Err(FrameError::BadVersion(version));
    }
    let h = Header {
        version,
        kind: b.get_u8(),
        versions: b.get_u16_le(),
        epoch: b.get_u64_le(),
        len: b.get_u32_le() as usize,
        crc: b.get_u32_le(),
    };
    if h.len > max {
        return Err(FrameError::TooLarge { len: h.len, max });
    }
    Ok(h)
}

/// The version a session speaks: the highest in both ranges, or why there is none.
pub fn negotiate(mine: (u8, u8), theirs: (u8, u8)) -> Result<u8, String> {
    sofamq_controller::rpc::negotiate_versions("replication", mine, theirs)
}

/// Decodes one frame from the front of `buf` (consuming it); `Ok(None)` when more bytes are
/// needed. `max` bounds the payload (a few bytes of slack are allowed for the Data header).
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let h = header(&buf[..HEADER_LEN], max + 64)?;
    if buf.len() < HEADER_LEN + h.len {
        return Ok(None);
    }
    let got = checksum(&buf[..20], &buf[HEADER_LEN..HEADER_LEN + h.len]);
    if got != h.crc {
        return Err(FrameError::BadCrc);
    }
    let mut f = buf.split_to(HEADER_LEN + h.len);
    f.advance(HEADER_LEN);
    let msg = parse(h.kind, h.version, h.versions, &f.freeze())?;
    Ok(Some(Frame {
        version: h.version,
        epoch: h.epoch,
        msg,
    }))
}

/// Reads one frame from a stream, buffering in `buf`.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Frame, FrameError> {
    loop {
        if let Some(f) = decode(buf, max)? {
            return Ok(f);
        }
        if buf.capacity() - buf.len() < 64 * 1024 {
            buf.reserve(256 * 1024);
        }
        if r.read_buf(buf).await? == 0 {
            return Err(FrameError::Closed);
        }
    }
}

/// Encodes (in protocol `version`) and writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    version: u8,
    epoch: u64,
    msg: &Msg,
) -> Result<(), FrameError> {
    let mut out = BytesMut::new();
    encode(version, epoch, msg, &mut out);
    w.write_all(&out).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hist() -> impl Strategy<Value = Vec<EpochEntry>> {
        proptest::collection::vec(
            (any::<u64>(), any::<u64>()).prop_map(|(epoch, start_offset)| EpochEntry {
                epoch,
                start_offset,
            }),
            0..8,
        )
    }

    fn msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            (
                ".{0,20}",
                any::<u64>(),
                any::<u64>(),
                hist(),
                1u8..,
                any::<u8>()
            )
                .prop_map(|(n, id, end, h, lo, hi)| Msg::Hello {
                    broker_name: n,
                    broker_id: id,
                    log_end: end,
                    history: h,
                    versions: (lo, hi),
                }),
            (1u8.., any::<u64>(), hist()).prop_map(|(v, w, h)| Msg::HelloReply {
                version: v,
                written: w,
                history: h
            }),
            any::<u64>().prop_map(|from| Msg::Follow { from }),
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(s, b)| {
                Msg::Data {
                    start: s,
                    bytes: Bytes::from(b),
                }
            }),
            (any::<u64>(), any::<u64>()).prop_map(|(durable, r)| Msg::Ack {
                durable,
                received: Some(r)
            }),
            any::<u64>().prop_map(|durable| Msg::Heartbeat { durable }),
            ".{0,40}".prop_map(|reason| Msg::Reject { reason }),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut b = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode(&mut b, 1024) {}
        }

        #[test]
        fn valid_header_with_garbage_payload_never_panics(
            kind in 0u8..10,
            payload in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            // A correct header and CRC over arbitrary payload bytes: parsing must fail
            // cleanly or succeed, never panic.
            let mut out = BytesMut::new();
            out.put_u32_le(MAGIC);
            out.put_u8(MIN_VERSION);
            out.put_u8(kind);
            out.put_u16_le(0);
            out.put_u64_le(7);
            out.put_u32_le(payload.len() as u32);
            let crc = checksum(&out[..20], &payload);
            out.put_u32_le(crc);
            out.put_slice(&payload);
            let _ = decode(&mut out, 1024);
        }

        #[test]
        fn roundtrip_and_split_reads(
            version in MIN_VERSION..=MAX_VERSION,
            epoch in any::<u64>(),
            m in msg(),
            cut in 0usize..400,
        ) {
            let mut out = BytesMut::new();
            encode(version, epoch, &m, &mut out);
            let total = out.len();
            let cut = cut.min(total);
            let mut b = BytesMut::from(&out[..cut]);
            if cut < total {
                prop_assert!(decode(&mut b, 1024).unwrap().is_none());
                b.extend_from_slice(&out[cut..]);
            }
            let f = decode(&mut b, 1024).unwrap().unwrap();
            // An Ack's received offset exists from version 3 on.
            let msg = match m {
                Msg::Ack { durable, .. } if version < 3 => Msg::Ack { durable, received: None },
                m => m,
            };
            prop_assert_eq!(f, Frame { version, epoch, msg });
            prop_assert!(b.is_empty());
        }

        #[test]
        fn any_flipped_bit_is_detected(m in msg(), bit in any::<usize>()) {
            let mut out = BytesMut::new();
            encode(MIN_VERSION, 3, &m, &mut out);
            let i = bit % (out.len() * 8);
            // A Data frame's records are left to their own CRCs, which the store checks
            // (see `data_records_are_left_to_their_own_crcs`).
            prop_assume!(!matches!(m, Msg::Data { .. }) || i / 8 < DATA_PREFIX);
            out[i / 8] ^= 1 << (i % 8);
            let mut b = out.clone();
            let accepted = decode(&mut b, 1 << 20);
            prop_assert!(!matches!(accepted, Ok(Some(_))), "corrupt frame accepted: {:?}", accepted);
        }
    }

    /// The streaming path (`data_prefix` over records already in the buffer) produces exactly
    /// what `encode` does; a flipped record bit passes the frame check (the slave's store
    /// rejects it by the record's own CRC: `sofamq-store` test
    /// `raw_append_refuses_every_flipped_bit`), a flipped `start` bit does not.
    /// The HelloReply's layout, byte for byte: the master's written log end is the first
    /// payload field (named `durable` by earlier builds, which read it from the same place),
    /// then the history. Brokers of two releases read each other's HelloReply only while
    /// this stays.
    #[test]
    fn hello_reply_layout_is_fixed() {
        let mut out = BytesMut::new();
        let msg = Msg::HelloReply {
            version: 3,
            written: 0x0102_0304_0506_0708,
            history: vec![EpochEntry {
                epoch: 5,
                start_offset: 100,
            }],
        };
        encode(MIN_VERSION, 7, &msg, &mut out);
        assert_eq!(out[5], 2, "kind");
        assert_eq!(u16::from_le_bytes([out[6], out[7]]), 3, "chosen version");
        let mut want = vec![8, 7, 6, 5, 4, 3, 2, 1];
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(&5u64.to_le_bytes());
        want.extend_from_slice(&100u64.to_le_bytes());
        assert_eq!(&out[HEADER_LEN..], &want[..]);
    }

    #[test]
    fn data_records_are_left_to_their_own_crcs() {
        let records = Bytes::from((0..200u8).collect::<Vec<u8>>());
        let mut a = BytesMut::new();
        encode(
            MIN_VERSION,
            9,
            &Msg::Data {
                start: 4096,
                bytes: records.clone(),
            },
            &mut a,
        );
        let mut b = vec![0u8; DATA_PREFIX];
        b.extend_from_slice(&records);
        data_prefix(MIN_VERSION, 9, 4096, records.len(), &mut b);
        assert_eq!(&a[..], &b[..]);
        let mut flipped = a.clone();
        flipped[DATA_PREFIX + 17] ^= 4;
        let f = decode(&mut flipped, 1024).unwrap().unwrap();
        assert!(matches!(f.msg, Msg::Data { start: 4096, .. }));
        let mut flipped = a.clone();
        flipped[HEADER_LEN + 1] ^= 1;
        assert!(matches!(
            decode(&mut flipped, 1024),
            Err(FrameError::BadCrc)
        ));
    }

    #[test]
    fn oversized_frames_are_refused_before_reading_them() {
        let mut out = BytesMut::new();
        encode(
            MIN_VERSION,
            1,
            &Msg::Data {
                start: 0,
                bytes: Bytes::from(vec![0u8; 5000]),
            },
            &mut out,
        );
        let mut b = BytesMut::from(&out[..HEADER_LEN]);
        assert!(matches!(
            decode(&mut b, 100),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn versions_are_negotiated_and_a_pre_negotiation_peer_means_version_2() {
        assert_eq!(negotiate((2, 2), (2, 3)), Ok(2));
        assert_eq!(negotiate((2, 3), (2, 3)), Ok(3));
        assert_eq!(negotiate((2, 3), (3, 4)), Ok(3));
        let e = negotiate((2, 2), (3, 3)).unwrap_err();
        assert!(e.contains("no common replication protocol version"), "{e}");
        // A Hello whose versions field is zero (a build before negotiation) speaks 2 only.
        let mut out = BytesMut::new();
        let hello = Msg::Hello {
            broker_name: "b".into(),
            broker_id: 1,
            log_end: 0,
            history: vec![],
            versions: (2, 3),
        };
        encode(MIN_VERSION, 1, &hello, &mut out);
        out[6..8].copy_from_slice(&[0, 0]);
        let crc = checksum(&out[..20], &out[HEADER_LEN..]);
        out[20..24].copy_from_slice(&crc.to_le_bytes());
        let f = decode(&mut out, 1024).unwrap().unwrap();
        assert!(
            matches!(
                f.msg,
                Msg::Hello {
                    versions: (2, 2),
                    ..
                }
            ),
            "{f:?}"
        );
        // A frame of a version this build does not speak is refused.
        let mut out = BytesMut::new();
        encode(MAX_VERSION + 1, 1, &Msg::Follow { from: 0 }, &mut out);
        assert!(matches!(
            decode(&mut out, 1024),
            Err(FrameError::BadVersion(v)) if v == MAX_VERSION + 1
        ));
    }
}
