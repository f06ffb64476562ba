//! The producer's own protobuf codec for `SendMessage`.
//!
//! The generated prost types cost the producer more than its own logic does:
//! every message became a `v2::Message` (owned copies of topic, host and id),
//! was measured three times (`encoded_len` per nesting level), encoded into a
//! buffer that grew by doubling, and every answer entry allocated its strings.
//! Here a message is encoded once, when it is prepared, into its fields other
//! than the body (`head`); a request writes each message's head and body once
//! into a buffer of the exact size. The answer is parsed in place: strings
//! stay slices of the received buffer and are checked for UTF-8 like prost
//! checks them.
//!
//! The bytes are the ones prost writes for the same `v2::Message` (fields in
//! tag order, defaults omitted), so the broker, and every other RocketMQ 5
//! server, decodes them as before; the tests check this against the
//! generated types.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes};
use sofamq_proto::prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::message::Message;

/// gRPC path of `MessagingService.SendMessage`.
pub(crate) const SEND_MESSAGE_PATH: &str = "/apache.rocketmq.v2.MessagingService/SendMessage";

/// One message in wire form: every `v2::Message` field but the body, and the body.
#[derive(Debug, Clone, Default)]
pub(crate) struct EncodedMessage {
    head: Bytes,
    body: Bytes,
    /// Must travel alone in its `SendMessageRequest` (a TRANSACTION message:
    /// the broker refuses a request with more than one).
    pub(crate) alone: bool,
}

impl EncodedMessage {
    /// Length of the encoded `v2::Message`.
    pub(crate) fn encoded_len(&self) -> usize {
        self.head.len() + bytes_field_len(4, self.body.len())
    }

    /// Length of this message as field 1 of a `SendMessageRequest`.
    fn field_len(&self) -> usize {
        let len = self.encoded_len();
        1 + encoded_len_varint(len as u64) + len
    }

    fn write(&self, buf: &mut impl BufMut) {
        encode_key(1, WireType::LengthDelimited, buf);
        encode_varint(self.encoded_len() as u64, buf);
        buf.put_slice(&self.head);
        if !self.body.is_empty() {
            encode_key(4, WireType::LengthDelimited, buf);
            encode_varint(self.body.len() as u64, buf);
            buf.put_slice(&self.body);
        }
    }
}

/// Length of a `string`/`bytes` field of `len` bytes (with tag < 16), or 0
/// when empty (proto3 omits it).
fn bytes_field_len(tag: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(len as u64) + len
    }
}

/// Length of a length-delimited field that is always written (an optional
/// string that is set, a present sub-message, a repeated element).
fn present_field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn key_len(tag: u32) -> usize {
    encoded_len_varint(u64::from(tag << 3))
}

fn varint_field_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

/// Appends protobuf fields to a buffer sized in advance (prost's generic
/// `BufMut` helpers cost several times more per field on a `Vec`).
struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, tag: u32, wire_type: u8) {
        self.varint(u64::from(tag << 3 | u32::from(wire_type)));
    }

    /// A length-delimited field's key and length; the caller writes the rest.
    fn open(&mut self, tag: u32, len: usize) {
        self.key(tag, LEN);
        self.varint(len as u64);
    }

    /// A length-delimited field that is always written.
    fn present(&mut self, tag: u32, s: &[u8]) {
        self.open(tag, s.len());
        self.0.extend_from_slice(s);
    }

    /// A `string`/`bytes` field, omitted when empty.
    fn bytes(&mut self, tag: u32, s: &[u8]) {
        if !s.is_empty() {
            self.present(tag, s);
        }
    }

    /// A varint field, omitted when 0.
    fn uint(&mut self, tag: u32, v: u64) {
        if v != 0 {
            self.key(tag, VARINT);
            self.varint(v);
        }
    }

    fn timestamp(&mut self, tag: u32, ts: (i64, i32)) {
        self.open(tag, timestamp_len(ts));
        self.uint(1, ts.0 as u64);
        self.uint(2, ts.1 as i64 as u64);
    }
}

/// `google.protobuf.Timestamp` as (seconds, nanos), like `prost_types`.
fn timestamp(t: SystemTime) -> (i64, i32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos() as i32)
}

fn timestamp_len((secs, nanos): (i64, i32)) -> usize {
    // int64/int32 varints sign-extend to 64 bits, as prost does.
    varint_field_len(1, secs as u64) + varint_field_len(2, nanos as i64 as u64)
}

/// Encodes `message` as `Message::into_proto(message_id, born_host)` would
/// be encoded, born at `born`. Returns the topic (moved out) and the wire form.
pub(crate) fn encode_message(
    message: Message,
    message_id: &str,
    born_host: &str,
    born: SystemTime,
) -> (String, EncodedMessage) {
    let message_type = message.message_type() as i32 as u64;
    let born = timestamp(born);
    let delivery = message.delivery_timestamp.map(timestamp);
    let check_delay = message
        .transaction_check_delay
        .map(|d| (d.as_secs() as i64, d.subsec_nanos() as i32));
    // SystemProperties, in tag order.
    let mut sys_len = 0;
    if let Some(tag) = &message.tag {
        sys_len += present_field_len(1, tag.len());
    }
    for k in &message.keys {
        sys_len += present_field_len(2, k.len());
    }
    sys_len += bytes_field_len(3, message_id.len());
    sys_len += varint_field_len(5, sofamq_proto::v2::Encoding::Identity as i32 as u64);
    sys_len += varint_field_len(6, message_type);
    sys_len += present_field_len(7, timestamp_len(born));
    sys_len += bytes_field_len(8, born_host.len());
    if let Some(d) = delivery {
        sys_len += present_field_len(11, timestamp_len(d));
    }
    if let Some(g) = &message.message_group {
        sys_len += present_field_len(17, g.len());
    }
    if let Some(d) = check_delay {
        // google.protobuf.Duration has Timestamp's layout.
        sys_len += present_field_len(19, timestamp_len(d));
    }
    let topic_len = bytes_field_len(2, message.topic.len());
    let props_len: usize = message
        .properties
        .iter()
        .map(|(k, v)| present_field_len(2, map_entry_len(k, v)))
        .sum();
    let head_len = present_field_len(1, topic_len) + props_len + present_field_len(3, sys_len);
    let mut w = Writer(Vec::with_capacity(head_len));
    // Message.topic = Resource { name }.
    w.open(1, topic_len);
    w.bytes(2, message.topic.as_bytes());
    // Message.user_properties.
    for (k, v) in &message.properties {
        w.open(2, map_entry_len(k, v));
        w.bytes(1, k.as_bytes());
        w.bytes(2, v.as_bytes());
    }
    // Message.system_properties.
    w.open(3, sys_len);
    if let Some(tag) = &message.tag {
        w.present(1, tag.as_bytes());
    }
    for k in &message.keys {
        w.present(2, k.as_bytes());
    }
    w.bytes(3, message_id.as_bytes());
    w.uint(5, sofamq_proto::v2::Encoding::Identity as i32 as u64);
    w.uint(6, message_type);
    w.timestamp(7, born);
    w.bytes(8, born_host.as_bytes());
    if let Some(d) = delivery {
        w.timestamp(11, d);
    }
    if let Some(g) = &message.message_group {
        w.present(17, g.as_bytes());
    }
    if let Some(d) = check_delay {
        w.timestamp(19, d);
    }
    let buf = w.0;
    debug_assert_eq!(buf.len(), head_len);
    let encoded = EncodedMessage {
        head: Bytes::from(buf),
        body: message.body,
        alone: message.transactional,
    };
    (message.topic, encoded)
}

/// Length of a `map<string, string>` entry (prost omits empty keys and values).
fn map_entry_len(k: &str, v: &str) -> usize {
    bytes_field_len(1, k.len()) + bytes_field_len(2, v.len())
}

// ------------------------------------------------------------------ codec

/// The `SendMessageRequest` of one coalesced batch.
#[derive(Debug, Default)]
pub(crate) struct SendRequest {
    pub(crate) messages: Vec<EncodedMessage>,
}

impl SendRequest {
    /// Length of the encoded `SendMessageRequest`.
    pub(crate) fn encoded_len(&self) -> usize {
        self.messages.iter().map(EncodedMessage::field_len).sum()
    }
}

/// A status as answered: the message stays raw (checked UTF-8) until needed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WireStatus {
    pub(crate) code: i32,
    pub(crate) message: Bytes,
}

impl WireStatus {
    pub(crate) fn message(&self) -> String {
        // Checked when parsed.
        String::from_utf8_lossy(&self.message).into_owned()
    }
}

/// One `SendResultEntry`: what the producer uses of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SendEntry {
    pub(crate) status: Option<WireStatus>,
    /// The message id as answered (checked UTF-8; may be empty).
    pub(crate) message_id: Bytes,
    pub(crate) offset: i64,
    /// Transaction id of a half message (checked UTF-8; may be empty).
    pub(crate) transaction_id: Bytes,
    /// Recall handle of a DELAY message (checked UTF-8; may be empty).
    pub(crate) recall_handle: Bytes,
}

/// A `SendMessageResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SendResponse {
    pub(crate) status: Option<WireStatus>,
    pub(crate) entries: Vec<SendEntry>,
}

/// The tonic codec of `SendMessage` with the types above. `size_hint` is the
/// encoded request's length, so the encode buffer is allocated once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendCodec {
    pub(crate) size_hint: usize,
}

#[derive(Debug)]
pub(crate) struct SendEncoder {
    settings: BufferSettings,
}

#[derive(Debug)]
pub(crate) struct SendDecoder;

impl Codec for SendCodec {
    type Encode = SendRequest;
    type Decode = SendResponse;
    type Encoder = SendEncoder;
    type Decoder = SendDecoder;

    fn encoder(&mut self) -> SendEncoder {
        // The gRPC frame header (5 bytes) plus the message: one allocation.
        let size = self.size_hint + 5;
        SendEncoder {
            settings: BufferSettings::new(size, size.max(32 * 1024)),
        }
    }

    fn decoder(&mut self) -> SendDecoder {
        SendDecoder
    }
}

impl Encoder for SendEncoder {
    type Item = SendRequest;
    type Error = Status;

    fn encode(&mut self, item: SendRequest, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        for m in &item.messages {
            m.write(buf);
        }
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.settings
    }
}

impl Decoder for SendDecoder {
    type Item = SendResponse;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<SendResponse>, Status> {
        let raw = buf.copy_to_bytes(buf.remaining());
        parse_response(&raw)
            .map(Some)
            .map_err(|e| Status::internal(format!("failed to decode Protobuf message: {e}")))
    }
}

// ------------------------------------------------------------------ parsing

/// Reads protobuf fields from `raw[pos..end]`.
struct Reader<'a> {
    raw: &'a Bytes,
    /// `raw[..end]`.
    data: &'a [u8],
    pos: usize,
}

type ParseResult<T> = Result<T, &'static str>;

impl<'a> Reader<'a> {
    fn new(raw: &'a Bytes, pos: usize, end: usize) -> Self {
        Self {
            raw,
            data: &raw[..end],
            pos,
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn varint(&mut self) -> ParseResult<u64> {
        match self.data.get(self.pos) {
            Some(&b) if b < 0x80 => {
                self.pos += 1;
                Ok(u64::from(b))
            }
            Some(_) => self.varint_slow(),
            None => Err("buffer underflow"),
        }
    }

    fn varint_slow(&mut self) -> ParseResult<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.data.get(self.pos) else {
                return Err("buffer underflow");
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err("invalid varint");
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err("invalid varint")
    }

    /// The next key: (tag, wire type).
    fn key(&mut self) -> ParseResult<(u32, u8)> {
        let key = self.varint()?;
        if key > u64::from(u32::MAX) {
            return Err("invalid key value");
        }
        let (tag, wire_type) = ((key >> 3) as u32, (key & 7) as u8);
        if tag == 0 {
            return Err("invalid tag value: 0");
        }
        Ok((tag, wire_type))
    }

    /// A length-delimited field's (start, end).
    fn delimited(&mut self) -> ParseResult<(usize, usize)> {
        let len = self.varint()?;
        let start = self.pos;
        if len > (self.data.len() - start) as u64 {
            return Err("buffer underflow");
        }
        self.pos = start + len as usize;
        Ok((start, self.pos))
    }

    /// A string field as a slice of `raw`, checked for UTF-8.
    fn string(&mut self, wire_type: u8) -> ParseResult<Bytes> {
        expect(wire_type, LEN)?;
        let (start, end) = self.delimited()?;
        let s = &self.data[start..end];
        // ASCII (ids, "OK") is checked much faster than general UTF-8.
        if !s.is_ascii() && std::str::from_utf8(s).is_err() {
            return Err("invalid string value: data is not UTF-8 encoded");
        }
        Ok(self.raw.slice(start..end))
    }

    fn int(&mut self, wire_type: u8) -> ParseResult<u64> {
        expect(wire_type, VARINT)?;
        self.varint()
    }

    fn message(&mut self, wire_type: u8) -> ParseResult<Reader<'a>> {
        expect(wire_type, LEN)?;
        let (start, end) = self.delimited()?;
        Ok(Reader::new(self.raw, start, end))
    }

    /// Skips a field we do not use (as prost skips unknown fields).
    fn skip(&mut self, tag: u32, wire_type: u8) -> ParseResult<()> {
        match wire_type {
            VARINT => {
                self.varint()?;
            }
            I64 | I32 => {
                let n = if wire_type == I64 { 8 } else { 4 };
                if self.data.len() - self.pos < n {
                    return Err("buffer underflow");
                }
                self.pos += n;
            }
            LEN => {
                self.delimited()?;
            }
            START_GROUP => loop {
                if self.done() {
                    return Err("buffer underflow");
                }
                let (t, w) = self.key()?;
                if w == END_GROUP {
                    if t != tag {
                        return Err("unexpected end group tag");
                    }
                    break;
                }
                self.skip(t, w)?;
            },
            _ => return Err("invalid wire type"),
        }
        Ok(())
    }
}

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const I32: u8 = 5;

fn expect(actual: u8, expected: u8) -> ParseResult<()> {
    if actual == expected {
        Ok(())
    } else {
        Err("invalid wire type")
    }
}

fn parse_status(mut r: Reader<'_>) -> ParseResult<WireStatus> {
    let mut s = WireStatus::default();
    while !r.done() {
        match r.key()? {
            (1, w) => s.code = r.int(w)? as i32,
            (2, w) => s.message = r.string(w)?,
            (t, w) => r.skip(t, w)?,
        }
    }
    Ok(s)
}

fn parse_entry(mut r: Reader<'_>) -> ParseResult<SendEntry> {
    let mut e = SendEntry::default();
    while !r.done() {
        match r.key()? {
            (1, w) => e.status = Some(parse_status(r.message(w)?)?),
            (2, w) => e.message_id = r.string(w)?,
            (3, w) => e.transaction_id = r.string(w)?,
            (4, w) => e.offset = r.int(w)? as i64,
            (5, w) => e.recall_handle = r.string(w)?,
            (t, w) => r.skip(t, w)?,
        }
    }
    Ok(e)
}

/// Parses a `SendMessageResponse`.
pub(crate) fn parse_response(raw: &Bytes) -> ParseResult<SendResponse> {
    let mut r = Reader::new(raw, 0, raw.len());
    let mut resp = SendResponse::default();
    while !r.done() {
        match r.key()? {
            (1, w) => resp.status = Some(parse_status(r.message(w)?)?),
            (2, w) => resp.entries.push(parse_entry(r.message(w)?)?),
            (t, w) => r.skip(t, w)?,
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sofamq_proto::prost::Message as _;
    use sofamq_proto::v2;
    use std::time::Duration;

    fn wire_of(m: &Message, id: &str, host: &str) -> (Vec<u8>, v2::Message) {
        let mut proto = m.clone().into_proto(id.into(), host);
        let born = proto
            .system_properties
            .as_ref()
            .and_then(|s| s.born_timestamp)
            .unwrap();
        let born = UNIX_EPOCH + Duration::new(born.seconds as u64, born.nanos as u32);
        let (topic, enc) = encode_message(m.clone(), id, host, born);
        assert_eq!(topic, m.topic);
        let mut out = Vec::new();
        enc.write(&mut out);
        assert_eq!(out.len(), enc.field_len());
        // Strip the request's field key and length.
        let mut s = &out[..];
        let _ = sofamq_proto::prost::encoding::decode_key(&mut s).unwrap();
        let len = sofamq_proto::prost::encoding::decode_varint(&mut s).unwrap();
        assert_eq!(len as usize, s.len());
        assert_eq!(enc.encoded_len(), s.len());
        // Same timestamp as the reference for the byte comparison.
        proto.system_properties.as_mut().unwrap().born_timestamp = Some(prost_types::Timestamp {
            seconds: born.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64,
            nanos: born.duration_since(UNIX_EPOCH).unwrap().subsec_nanos() as i32,
        });
        (s.to_vec(), proto)
    }

    #[test]
    fn messages_encode_exactly_like_prost() {
        let at = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let cases = vec![
            Message::new("T", &b"hello"[..]),
            Message::new("topic-with-a-longer-name", vec![7u8; 300]),
            Message::new("T", Bytes::new()),
            Message::builder("T", &b"x"[..])
                .tag("TagA")
                .key("k1")
                .keys(["k2", ""])
                .delivery_timestamp(at)
                .property("p", "v")
                .build(),
            Message::builder("T", &b"x"[..])
                .tag("")
                .message_group("g")
                .property("", "only value")
                .build(),
            Message::builder("T", vec![1u8; 70_000])
                .message_group("a-group")
                .build(),
            Message {
                transactional: true,
                ..Message::builder("T", &b"half"[..])
                    .transaction_check_delay(Duration::new(3, 250))
                    .key("k")
                    .build()
            },
            Message {
                transactional: true,
                ..Message::new("T", &b"half"[..])
            },
        ];
        for m in cases {
            let (ours, proto) = wire_of(&m, "01ABCDEF", "host1");
            assert_eq!(ours, proto.encode_to_vec(), "{m:?}");
            assert_eq!(v2::Message::decode(&ours[..]).unwrap(), proto);
        }
        // Several properties: map order may differ, the decoded message may not.
        let m = Message::builder("T", &b"x"[..])
            .property("a", "1")
            .property("b", "")
            .property("c", "3")
            .build();
        let (ours, proto) = wire_of(&m, "", "");
        assert_eq!(ours.len(), proto.encoded_len());
        assert_eq!(v2::Message::decode(&ours[..]).unwrap(), proto);
    }

    #[test]
    fn requests_decode_as_send_message_requests() {
        let now = SystemTime::now();
        let msgs: Vec<_> = (0..3)
            .map(|i| {
                encode_message(
                    Message::new("T", vec![i as u8; 100 * i]),
                    &format!("id{i}"),
                    "h",
                    now,
                )
                .1
            })
            .collect();
        let req = SendRequest { messages: msgs };
        let mut buf = bytes::BytesMut::new();
        for m in &req.messages {
            m.write(&mut buf);
        }
        assert_eq!(buf.len(), req.encoded_len());
        let decoded = v2::SendMessageRequest::decode(&buf[..]).unwrap();
        assert_eq!(decoded.messages.len(), 3);
        for (i, m) in decoded.messages.iter().enumerate() {
            assert_eq!(m.body.len(), 100 * i);
            assert_eq!(
                m.system_properties.as_ref().unwrap().message_id,
                format!("id{i}")
            );
        }
    }

    fn status(code: v2::Code, message: &str) -> v2::Status {
        v2::Status {
            code: code as i32,
            message: message.into(),
        }
    }

    #[test]
    fn responses_parse_like_prost() {
        let resp = v2::SendMessageResponse {
            status: Some(status(v2::Code::MultipleResults, "")),
            entries: vec![
                v2::SendResultEntry {
                    status: Some(status(v2::Code::Ok, "OK")),
                    message_id: "01AB".into(),
                    transaction_id: "tx".into(),
                    offset: 42,
                    recall_handle: "rh".into(),
                },
                v2::SendResultEntry {
                    status: Some(status(v2::Code::IllegalMessageTag, "bad tag")),
                    offset: -1,
                    ..Default::default()
                },
                v2::SendResultEntry::default(),
            ],
        };
        let raw = Bytes::from(resp.encode_to_vec());
        let got = parse_response(&raw).unwrap();
        let top = got.status.clone().unwrap();
        assert_eq!(top.code, v2::Code::MultipleResults as i32);
        assert_eq!(got.entries.len(), 3);
        let e = &got.entries[0];
        assert_eq!(e.status.as_ref().unwrap().code, v2::Code::Ok as i32);
        assert_eq!(e.status.as_ref().unwrap().message(), "OK");
        assert_eq!(&e.message_id[..], b"01AB");
        assert_eq!(e.offset, 42);
        assert_eq!(&e.transaction_id[..], b"tx");
        assert_eq!(&e.recall_handle[..], b"rh");
        let e = &got.entries[1];
        assert_eq!(e.status.as_ref().unwrap().message(), "bad tag");
        assert_eq!(e.offset, -1);
        assert_eq!(got.entries[2], SendEntry::default());
        assert_eq!(
            parse_response(&Bytes::new()).unwrap(),
            SendResponse::default()
        );

        // Unknown fields are skipped, as prost skips them.
        let mut with_unknown = raw.to_vec();
        encode_key(9, WireType::Varint, &mut with_unknown);
        encode_varint(5, &mut with_unknown);
        encode_key(10, WireType::LengthDelimited, &mut with_unknown);
        encode_varint(2, &mut with_unknown);
        with_unknown.extend_from_slice(b"zz");
        encode_key(11, WireType::SixtyFourBit, &mut with_unknown);
        with_unknown.extend_from_slice(&[0; 8]);
        assert_eq!(
            parse_response(&Bytes::from(with_unknown)).unwrap(),
            got.clone()
        );

        // What prost refuses, we refuse.
        for bad in [
            &raw[..raw.len() - 1],
            &[0x12, 0x05, 0x12, 0x03, 0xff, 0xfe, 0xfd][..], // entry.message_id not UTF-8
            &[0x08][..],                                     // status as a varint
            &[0x00][..],                                     // tag 0
        ] {
            let b = Bytes::copy_from_slice(bad);
            assert!(parse_response(&b).is_err(), "{bad:?}");
            assert!(v2::SendMessageResponse::decode(bad).is_err(), "{bad:?}");
        }
    }
}
