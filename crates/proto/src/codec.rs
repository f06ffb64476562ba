//! The gRPC codec of every generated service and client: prost's encoding and decoding,
//! except that a `SendMessageRequest`'s message list gets its whole capacity before it is
//! decoded.
//!
//! prost decodes a repeated message field by pushing one element at a time, so a batch of
//! 250 messages grew its `Vec<Message>` eight times, each growth copying every `Message`
//! decoded so far: 5.6 % of the master's instructions in batches of 32
//! (`scripts/bench/callgrind.sh BINARY batch`, docs/benchmarks.md). Counting the field's
//! entries first is one pass over the tags and lengths of the request's top level, without
//! touching the bodies. And it decodes from `Bytes` split off tonic's buffer, not through
//! `DecodeBuf`: prost advances its buffer once per field and varint, a pointer bump on
//! `Bytes` and 600 instructions a message through `DecodeBuf` over `BytesMut`.

use std::any::Any;
use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf};

use crate::v2::SendMessageRequest;

/// At most this many elements are reserved ahead (a request that holds more grows as
/// prost grows it): the brokers refuse more than 1,024 messages a request by default, and
/// each counted entry takes at least two bytes of a request whose size the server bounds.
const MAX_PRESIZED: usize = 4_096;

/// The codec the build script names for every service (see the module doc).
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(PhantomData)
    }
}

/// prost's decoding, with the presizing of the module doc.
#[derive(Debug, Clone)]
pub struct Decoder<U>(PhantomData<U>);

impl<U: Message + Default + 'static> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use prost::bytes::Buf;
        // The message as `Bytes` (a split of tonic's buffer, no copy): prost advances its
        // buffer once per field and varint, which costs a few instructions on `Bytes` and
        // several times that through `DecodeBuf` over a `BytesMut`.
        let encoded = buf.copy_to_bytes(buf.remaining());
        let mut item = U::default();
        presize(&mut item, &encoded);
        item.merge(encoded)
            // As prost's own codec answers a message that does not parse.
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Some(item))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Reserves a `SendMessageRequest`'s `messages` for the entries `encoded` holds; any other
/// type is left as it is.
fn presize<U: 'static>(item: &mut U, encoded: &[u8]) {
    if let Some(req) = (item as &mut dyn Any).downcast_mut::<SendMessageRequest>() {
        let n = count_entries(encoded, 1).min(MAX_PRESIZED);
        req.messages.reserve_exact(n);
    }
}

/// How many length-delimited entries of field `field` the top level of the encoded message
/// holds. Stops at the first thing it cannot read (decoding reports it).
fn count_entries(mut b: &[u8], field: u64) -> usize {
    let mut n = 0;
    while !b.is_empty() {
        let Some(key) = varint(&mut b) else { break };
        let skip = match key & 7 {
            0 => {
                if varint(&mut b).is_none() {
                    break;
                }
                0
            }
            1 => 8,
            2 => {
                let Some(len) = varint(&mut b) else { break };
                if key >> 3 == field {
                    n += 1;
                }
                match usize::try_from(len) {
                    Ok(len) => len,
                    Err(_) => break,
                }
            }
            5 => 4,
            _ => break,
        };
        if skip > b.len() {
            break;
        }
        b = &b[skip..];
    }
    n
}

/// Reads one base-128 varint from the front of `b`.
fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *b = &b[i + 1..];
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v2::{Message as V2Message, Resource};

    fn request(n: usize) -> SendMessageRequest {
        SendMessageRequest {
            messages: (0..n)
                .map(|i| V2Message {
                    topic: Some(Resource {
                        name: "t".into(),
                        ..Default::default()
                    }),
                    body: vec![7u8; 100 + i].into(),
                    user_properties: [("k".to_string(), "v".repeat(i))].into(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    /// The count matches the list prost decodes, and the request is reserved for exactly
    /// that many before decoding, so decoding never grows it.
    #[test]
    fn counts_the_entries_and_reserves_them() {
        for n in [0, 1, 2, 33, 250] {
            let bytes = request(n).encode_to_vec();
            assert_eq!(count_entries(&bytes, 1), n);
            let mut item = SendMessageRequest::default();
            presize(&mut item, &bytes);
            assert!(item.messages.capacity() >= n);
            let cap = item.messages.capacity();
            item.merge(bytes.as_slice()).unwrap();
            assert_eq!(item, request(n));
            assert_eq!(item.messages.capacity(), cap, "n {n}: grew while decoding");
        }
    }

    /// Other types are untouched; malformed input is counted up to where it breaks and
    /// never read past its end, and the reservation is capped.
    #[test]
    fn other_types_truncated_input_and_the_cap() {
        let mut other = crate::v2::QueryRouteRequest::default();
        presize(&mut other, &request(3).encode_to_vec());
        assert_eq!(other, crate::v2::QueryRouteRequest::default());
        let bytes = request(5).encode_to_vec();
        for cut in 0..bytes.len() {
            assert!(count_entries(&bytes[..cut], 1) <= 5);
        }
        assert_eq!(
            count_entries(&[0x0a, 0xff], 1),
            0,
            "a length that never ends"
        );
        assert_eq!(
            count_entries(&[0x0a, 0x05, 1, 2], 1),
            1,
            "a length past the end"
        );
        let many: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 10_000)
            .flatten()
            .collect();
        assert_eq!(count_entries(&many, 1), 10_000);
        let mut item = SendMessageRequest::default();
        presize(&mut item, &many);
        assert!(item.messages.capacity() < 10_000);
    }
}
