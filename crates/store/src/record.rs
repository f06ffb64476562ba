//! The commit-log record format and its codec.
//!
//! Layout (all integers little-endian), version 1:
//!
//! | off | size | field |
//! |----:|-----:|-------|
//! | 0   | 4 | total length of the record in bytes (this field included) |
//! | 4   | 4 | CRC32C of bytes `8..total_length` |
//! | 8   | 1 | magic `0xC5` |
//! | 9   | 1 | format version (`1`) |
//! | 10  | 2 | reserved, must be 0 |
//! | 12  | 4 | flags |
//! | 16  | 8 | epoch |
//! | 24  | 8 | the record's own log offset |
//! | 32  | 4 | queue id |
//! | 36  | 8 | queue offset |
//! | 44  | 8 | born timestamp (ms) |
//! | 52  | 8 | store timestamp (ms) |
//! | 60  | 2 | topic length |
//! | 62  | 2 | tag length |
//! | 64  | 4 | properties block length |
//! | 68  | 4 | body length |
//! | 72  | … | topic (UTF-8), tag (UTF-8), properties block, body |
//!
//! Properties block: count `u16`, then per entry key length `u16`, key, value length `u16`,
//! value (UTF-8). Decoding checks every length against the bytes actually present, so a corrupt
//! length can never cause an out-of-bounds read or a large allocation.

use std::hash::Hasher;

use bytes::Bytes;

/// Size of the fixed header.
pub const HEADER_LEN: usize = 72;
/// Magic byte.
pub const MAGIC: u8 = 0xC5;
/// Current format version.
pub const VERSION: u8 = 1;
/// Hard upper bound on a record's total length, whatever the config says (decode bound).
pub const MAX_RECORD_HARD: usize = 256 * 1024 * 1024;

/// A record to append.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRecord {
    /// Topic name (1..=65535 bytes).
    pub topic: String,
    /// Queue id within the topic.
    pub queue_id: u32,
    /// Application flags.
    pub flags: u32,
    /// Tag (0..=65535 bytes); its hash is kept in the consume queue for filtering.
    pub tag: String,
    /// Producer timestamp, ms since the epoch.
    pub born_ts_ms: i64,
    /// Properties (at most 65535 entries, each key and value at most 65535 bytes).
    pub properties: Vec<(String, String)>,
    /// Payload.
    pub body: Bytes,
}

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Global byte offset of the record in the log.
    pub log_offset: u64,
    /// Position of the record in its (topic, queue_id) queue.
    pub queue_offset: u64,
    /// Encoded size in bytes.
    pub size: u32,
    /// Store timestamp written into the record.
    pub store_ts_ms: i64,
}

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Global byte offset.
    pub log_offset: u64,
    /// Encoded size in bytes.
    pub size: u32,
    /// Epoch of the master that wrote it.
    pub epoch: u64,
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue_id: u32,
    /// Queue offset.
    pub queue_offset: u64,
    /// Flags.
    pub flags: u32,
    /// Tag.
    pub tag: String,
    /// Producer timestamp.
    pub born_ts_ms: i64,
    /// Store timestamp.
    pub store_ts_ms: i64,
    /// Properties.
    pub properties: Vec<(String, String)>,
    /// Payload.
    pub body: Bytes,
}

impl Record {
    /// The value of property `key`, if the record has it.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Offset just past this record.
    pub fn next_offset(&self) -> u64 {
        self.log_offset + u64::from(self.size)
    }
}

/// Stable 64-bit hash of a tag (FNV-1a), as stored in consume-queue entries. Empty tag hashes
/// to 0.
pub fn tag_hash(tag: &str) -> u64 {
    if tag.is_empty() {
        return 0;
    }
    // `write` the bytes: `str::hash` would append a 0xff byte and change persisted values.
    let mut h = fnv::FnvHasher::default();
    h.write(tag.as_bytes());
    h.finish()
}

/// Encoded size of `rec`, or why it cannot be encoded.
pub fn encoded_len(rec: &NewRecord) -> Result<usize, String> {
    if rec.topic.is_empty() {
        return Err("empty topic".into());
    }
    if rec.topic.len() > u16::MAX as usize {
        return Err("topic longer than 65535 bytes".into());
    }
    if rec.tag.len() > u16::MAX as usize {
        return Err("tag longer than 65535 bytes".into());
    }
    let props = props_len(&rec.properties)?;
    Ok(HEADER_LEN + rec.topic.len() + rec.tag.len() + props + rec.body.len())
}

fn props_len(props: &[(String, String)]) -> Result<usize, String> {
    if props.len() > u16::MAX as usize {
        return Err("more than 65535 properties".into());
    }
    let mut n = 2;
    for (k, v) in props {
        if k.len() > u16::MAX as usize || v.len() > u16::MAX as usize {
            return Err("property key or value longer than 65535 bytes".into());
        }
        n += 4 + k.len() + v.len();
    }
    Ok(n)
}

/// Fields the writer assigns at append time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp {
    pub epoch: u64,
    pub log_offset: u64,
    pub queue_offset: u64,
    pub store_ts_ms: i64,
}

/// Appends the encoding of `rec` to `buf` and returns its size. `rec` must have passed
/// [`encoded_len`] (lengths are then known to fit their fields).
pub(crate) fn encode_into(buf: &mut Vec<u8>, rec: &NewRecord, stamp: Stamp) -> u32 {
    let start = buf.len();
    let props: usize = 2 + rec
        .properties
        .iter()
        .map(|(k, v)| 4 + k.len() + v.len())
        .sum::<usize>();
    let total = HEADER_LEN + rec.topic.len() + rec.tag.len() + props + rec.body.len();
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&(total as u32).to_le_bytes());
    h[8] = MAGIC;
    h[9] = VERSION;
    h[12..16].copy_from_slice(&rec.flags.to_le_bytes());
    h[16..24].copy_from_slice(&stamp.epoch.to_le_bytes());
    h[24..32].copy_from_slice(&stamp.log_offset.to_le_bytes());
    h[32..36].copy_from_slice(&rec.queue_id.to_le_bytes());
    h[36..44].copy_from_slice(&stamp.queue_offset.to_le_bytes());
    h[44..52].copy_from_slice(&rec.born_ts_ms.to_le_bytes());
    h[52..60].copy_from_slice(&stamp.store_ts_ms.to_le_bytes());
    h[60..62].copy_from_slice(&(rec.topic.len() as u16).to_le_bytes());
    h[62..64].copy_from_slice(&(rec.tag.len() as u16).to_le_bytes());
    h[64..68].copy_from_slice(&(props as u32).to_le_bytes());
    h[68..72].copy_from_slice(&(rec.body.len() as u32).to_le_bytes());
    buf.reserve(total);
    buf.extend_from_slice(&h);
    buf.extend_from_slice(rec.topic.as_bytes());
    buf.extend_from_slice(rec.tag.as_bytes());
    buf.extend_from_slice(&(rec.properties.len() as u16).to_le_bytes());
    for (k, v) in &rec.properties {
        buf.extend_from_slice(&(k.len() as u16).to_le_bytes());
        buf.extend_from_slice(k.as_bytes());
        buf.extend_from_slice(&(v.len() as u16).to_le_bytes());
        buf.extend_from_slice(v.as_bytes());
    }
    buf.extend_from_slice(&rec.body);
    let crc = crc32c::crc32c(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    total as u32
}

/// Why bytes failed to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the record claims (or than a header).
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The bytes are not a valid record.
    Invalid(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated { need, have } => {
                write!(f, "truncated: need {need} bytes, have {have}")
            }
            DecodeError::Invalid(s) => f.write_str(s),
        }
    }
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// The log offset a record declares for itself (bytes 24..32 of its header); `b` must hold
/// at least [`HEADER_LEN`] bytes (checked by [`check_header`] first).
pub fn log_offset_of(b: &[u8]) -> u64 {
    u64_at(b, 24)
}

/// Validates the fixed header in `b` (at least [`HEADER_LEN`] bytes) and returns the record's
/// total length. Does not check the CRC.
pub fn check_header(b: &[u8], max_len: usize) -> Result<usize, DecodeError> {
    if b.len() < HEADER_LEN {
        return Err(DecodeError::Truncated {
            need: HEADER_LEN,
            have: b.len(),
        });
    }
    let total = u32_at(b, 0) as usize;
    if b[8] != MAGIC {
        return Err(DecodeError::Invalid(format!("bad magic {:#x}", b[8])));
    }
    if b[9] != VERSION {
        return Err(DecodeError::Invalid(format!("unknown version {}", b[9])));
    }
    if u16_at(b, 10) != 0 {
        return Err(DecodeError::Invalid("reserved bytes not zero".into()));
    }
    if total < HEADER_LEN || total > max_len.min(MAX_RECORD_HARD) {
        return Err(DecodeError::Invalid(format!("bad record length {total}")));
    }
    let parts = u16_at(b, 60) as usize
        + u16_at(b, 62) as usize
        + u32_at(b, 64) as usize
        + u32_at(b, 68) as usize;
    if HEADER_LEN + parts != total {
        return Err(DecodeError::Invalid(format!(
            "field lengths ({}) disagree with record length {total}",
            HEADER_LEN + parts
        )));
    }
    Ok(total)
}

/// A fully validated record borrowed from a byte slice.
#[derive(Debug, Clone)]
pub struct RecordView<'a> {
    /// Total encoded length.
    pub size: u32,
    /// Epoch.
    pub epoch: u64,
    /// Self-declared log offset.
    pub log_offset: u64,
    /// Topic.
    pub topic: &'a str,
    /// Queue id.
    pub queue_id: u32,
    /// Queue offset.
    pub queue_offset: u64,
    /// Flags.
    pub flags: u32,
    /// Tag.
    pub tag: &'a str,
    /// Born timestamp.
    pub born_ts_ms: i64,
    /// Store timestamp.
    pub store_ts_ms: i64,
    props: &'a [u8],
    body_start: usize,
}

/// Decodes and fully validates (length fields, CRC, UTF-8, properties) the record at the start
/// of `b`. Never panics and never allocates more than the input size.
pub fn decode_view(b: &[u8], max_len: usize) -> Result<RecordView<'_>, DecodeError> {
    let m = decode_replicated(b, max_len)?;
    let rec = &b[..m.size as usize];
    let p = HEADER_LEN + m.topic.len() + m.tag.len();
    let props_len = u32_at(rec, 64) as usize;
    let props = &rec[p..p + props_len];
    validate_props(props)?;
    Ok(RecordView {
        size: m.size,
        epoch: m.epoch,
        log_offset: m.log_offset,
        topic: m.topic,
        queue_id: m.queue_id,
        queue_offset: m.queue_offset,
        flags: u32_at(rec, 12),
        tag: m.tag,
        born_ts_ms: u64_at(rec, 44) as i64,
        store_ts_ms: u64_at(rec, 52) as i64,
        props,
        body_start: p + props_len,
    })
}

/// What a replica needs of a record copied from its master: its place and its queue.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaMeta<'a> {
    /// Total encoded length.
    pub size: u32,
    /// Epoch.
    pub epoch: u64,
    /// Self-declared log offset.
    pub log_offset: u64,
    /// Topic.
    pub topic: &'a str,
    /// Queue id.
    pub queue_id: u32,
    /// Queue offset.
    pub queue_offset: u64,
    /// Tag.
    pub tag: &'a str,
}

/// The replica's check of a record received from its master: header, lengths, CRC, topic and
/// tag; the properties block is not walked. The CRC proves the bytes are exactly what the
/// master's encoder wrote (from typed, validated fields), which is what a replica must know:
/// any corruption in transit or on the master's disk fails it. [`decode_view`] is this plus
/// the properties walk, and still checks everything when the record is read. Never panics.
pub fn decode_replicated(b: &[u8], max_len: usize) -> Result<ReplicaMeta<'_>, DecodeError> {
    let total = check_header(b, max_len)?;
    if b.len() < total {
        return Err(DecodeError::Truncated {
            need: total,
            have: b.len(),
        });
    }
    let rec = &b[..total];
    let stored = u32_at(rec, 4);
    let actual = crc32c::crc32c(&rec[8..]);
    if stored != actual && !crate::mutant::active("skip-crc") {
        return Err(DecodeError::Invalid(format!(
            "crc mismatch: stored {stored:#010x}, computed {actual:#010x}"
        )));
    }
    let topic_len = u16_at(rec, 60) as usize;
    let tag_len = u16_at(rec, 62) as usize;
    let topic = std::str::from_utf8(&rec[HEADER_LEN..HEADER_LEN + topic_len])
        .map_err(|_| DecodeError::Invalid("topic is not UTF-8".into()))?;
    if topic.is_empty() {
        return Err(DecodeError::Invalid("empty topic".into()));
    }
    let p = HEADER_LEN + topic_len;
    let tag = std::str::from_utf8(&rec[p..p + tag_len])
        .map_err(|_| DecodeError::Invalid("tag is not UTF-8".into()))?;
    Ok(ReplicaMeta {
        size: total as u32,
        epoch: u64_at(rec, 16),
        log_offset: u64_at(rec, 24),
        topic,
        queue_id: u32_at(rec, 32),
        queue_offset: u64_at(rec, 36),
        tag,
    })
}

/// Walks a properties block, calling `f` per entry; fails on any inconsistency.
fn walk_props<'a>(b: &'a [u8], mut f: impl FnMut(&'a str, &'a str)) -> Result<(), DecodeError> {
    let bad = |s: &str| DecodeError::Invalid(format!("properties: {s}"));
    if b.len() < 2 {
        return Err(bad("missing count"));
    }
    let count = u16_at(b, 0) as usize;
    let mut p = 2;
    for _ in 0..count {
        let mut field = || -> Result<&'a str, DecodeError> {
            if b.len() - p < 2 {
                return Err(bad("truncated length"));
            }
            let n = u16_at(b, p) as usize;
            p += 2;
            if b.len() - p < n {
                return Err(bad("truncated string"));
            }
            let s = std::str::from_utf8(&b[p..p + n]).map_err(|_| bad("not UTF-8"))?;
            p += n;
            Ok(s)
        };
        let k = field()?;
        let v = field()?;
        f(k, v);
    }
    if p != b.len() {
        return Err(bad("trailing bytes"));
    }
    Ok(())
}

fn validate_props(b: &[u8]) -> Result<(), DecodeError> {
    walk_props(b, |_, _| {})
}

impl RecordView<'_> {
    /// Properties as owned pairs.
    pub fn properties(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        // Validated at decode time; cannot fail here.
        let _ = walk_props(self.props, |k, v| out.push((k.to_owned(), v.to_owned())));
        out
    }

    /// Converts into an owned [`Record`]; `whole` must be the bytes this view was decoded from
    /// (starting at the record), so the body can be shared without a copy.
    pub fn to_record(&self, whole: &Bytes) -> Record {
        Record {
            log_offset: self.log_offset,
            size: self.size,
            epoch: self.epoch,
            topic: self.topic.to_owned(),
            queue_id: self.queue_id,
            queue_offset: self.queue_offset,
            flags: self.flags,
            tag: self.tag.to_owned(),
            born_ts_ms: self.born_ts_ms,
            store_ts_ms: self.store_ts_ms,
            properties: self.properties(),
            body: whole.slice(self.body_start..self.size as usize),
        }
    }
}

/// Decodes one owned record from `bytes` (which must start at the record).
pub fn decode_record(bytes: &Bytes, max_len: usize) -> Result<Record, DecodeError> {
    let view = decode_view(bytes, max_len)?;
    Ok(view.to_record(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NewRecord {
        NewRecord {
            topic: "orders".into(),
            queue_id: 3,
            flags: 7,
            tag: "tagA".into(),
            born_ts_ms: -5,
            properties: vec![("k".into(), "v".into()), ("".into(), "empty key".into())],
            body: Bytes::from_static(b"hello body"),
        }
    }

    fn stamp() -> Stamp {
        Stamp {
            epoch: 9,
            log_offset: 1234,
            queue_offset: 77,
            store_ts_ms: 42,
        }
    }

    #[test]
    fn round_trip_all_fields() {
        let rec = sample();
        let mut buf = vec![0xAA; 3];
        let n = encode_into(&mut buf, &rec, stamp());
        assert_eq!(n as usize, encoded_len(&rec).unwrap());
        assert_eq!(buf.len(), 3 + n as usize);
        let bytes = Bytes::from(buf).slice(3..);
        let r = decode_record(&bytes, usize::MAX).unwrap();
        assert_eq!(r.log_offset, 1234);
        assert_eq!(r.epoch, 9);
        assert_eq!(r.queue_offset, 77);
        assert_eq!(r.store_ts_ms, 42);
        assert_eq!(r.topic, rec.topic);
        assert_eq!(r.queue_id, 3);
        assert_eq!(r.flags, 7);
        assert_eq!(r.tag, rec.tag);
        assert_eq!(r.born_ts_ms, -5);
        assert_eq!(r.properties, rec.properties);
        assert_eq!(r.body, rec.body);
        assert_eq!(r.size, n);
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let mut buf = Vec::new();
        encode_into(&mut buf, &sample(), stamp());
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x10;
            assert!(
                decode_view(&b, usize::MAX).is_err(),
                "flip at {i} undetected"
            );
        }
    }

    #[test]
    fn huge_length_is_rejected_without_allocation() {
        let mut buf = Vec::new();
        encode_into(&mut buf, &sample(), stamp());
        buf[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            check_header(&buf, usize::MAX),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn validation_limits() {
        let mut r = sample();
        r.topic.clear();
        assert!(encoded_len(&r).is_err());
        let mut r = sample();
        r.tag = "x".repeat(70_000);
        assert!(encoded_len(&r).is_err());
    }

    #[test]
    fn tag_hash_is_stable() {
        assert_eq!(tag_hash(""), 0);
        assert_eq!(tag_hash("a"), 0xaf63_dc4c_8601_ec8c);
        // Consume-queue entries on disk hold these values: not one bit may change.
        assert_eq!(tag_hash("TagA"), 0x03aa_2efb_08df_e196);
        assert_eq!(tag_hash("TagB"), 0x03aa_2dfb_08df_dfe3);
        assert_eq!(tag_hash("tag-0"), 0x5bbe_9b29_a38e_effe);
        assert_eq!(tag_hash("订单"), 0xb5c5_7670_b5ef_7bc0);
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn arb_record() -> impl Strategy<Value = NewRecord> {
            (
                "[a-zA-Z0-9_%.\\-]{1,40}",
                any::<u32>(),
                any::<u32>(),
                ".{0,20}",
                any::<i64>(),
                proptest::collection::vec((".{0,10}", ".{0,30}"), 0..6),
                proptest::collection::vec(any::<u8>(), 0..2000),
            )
                .prop_map(|(topic, queue_id, flags, tag, born, props, body)| {
                    NewRecord {
                        topic,
                        queue_id,
                        flags,
                        tag,
                        born_ts_ms: born,
                        properties: props,
                        body: Bytes::from(body),
                    }
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            #[test]
            fn codec_round_trips(rec in arb_record(), epoch in any::<u64>(), off in any::<u64>(),
                                 qo in any::<u64>(), ts in any::<i64>()) {
                let mut buf = Vec::new();
                let n = encode_into(&mut buf, &rec, Stamp { epoch, log_offset: off, queue_offset: qo, store_ts_ms: ts });
                prop_assert_eq!(n as usize, encoded_len(&rec).unwrap());
                let r = decode_record(&Bytes::from(buf), usize::MAX).unwrap();
                prop_assert_eq!(r.epoch, epoch);
                prop_assert_eq!(r.log_offset, off);
                prop_assert_eq!(r.queue_offset, qo);
                prop_assert_eq!(r.store_ts_ms, ts);
                prop_assert_eq!(&r.topic, &rec.topic);
                prop_assert_eq!(r.queue_id, rec.queue_id);
                prop_assert_eq!(r.flags, rec.flags);
                prop_assert_eq!(&r.tag, &rec.tag);
                prop_assert_eq!(r.born_ts_ms, rec.born_ts_ms);
                prop_assert_eq!(&r.properties, &rec.properties);
                prop_assert_eq!(&r.body, &rec.body);
            }

            #[test]
            fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400)) {
                let _ = decode_view(&b, usize::MAX);
                let _ = decode_record(&Bytes::from(b), 1000);
            }

            #[test]
            fn mutated_records_never_panic_and_never_pass(
                rec in arb_record(),
                muts in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
                cut in any::<prop::sample::Index>(),
                do_cut in any::<bool>(),
            ) {
                let mut buf = Vec::new();
                encode_into(&mut buf, &rec, Stamp { epoch: 1, log_offset: 2, queue_offset: 3, store_ts_ms: 4 });
                let orig = buf.clone();
                for (i, x) in &muts {
                    let i = i.index(buf.len());
                    buf[i] ^= *x;
                }
                if do_cut {
                    buf.truncate(cut.index(buf.len()));
                }
                let res = decode_view(&buf, usize::MAX);
                if buf != orig {
                    // Bytes that differ from a valid record of the same length cannot pass the
                    // CRC unless the mutations cancel out (they cannot: XOR with non-zero).
                    if buf.len() == orig.len() {
                        prop_assert!(res.is_err());
                    }
                }
            }
        }
    }
}
