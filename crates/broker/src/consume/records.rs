//! Consumer state records on the reserved topic [`CONSUMER_LOG`].
//!
//! Every change to a group's consumption state is one record in the commit
//! log, written before (or, for acks, together with) the answer to the
//! client, and replayed on start. One record carries every change of one
//! request for one (group, topic), so a receive of 32 messages or an ack of
//! 32 receipts is one small record, and concurrent requests share the
//! group-commit fsync.
//!
//! Body format (little endian):
//!
//! ```text
//! u8 version = 1
//! u8 kind: 1 = ops, 2 = receipt secret
//! kind 1: u16 len + group, u16 len + topic, u32 n, n x op
//!   op: u8 code, u32 queue, u64 offset, then by code
//!     1 Deliver: u32 attempt, u64 generation, i64 visible_at_ms, u64 fifo key
//!     2 Scan (offset = new scan cursor)
//!     3 Done (acked or dead-lettered)
//!     4 Change: u64 generation, i64 visible_at_ms
//!     5 Reset (offset = new consumed-up-to; in-flight cleared)
//! kind 2: 32 secret bytes
//! ```

/// Reserved topic holding consumer state records.
pub const CONSUMER_LOG: &str = "%SYS%CONSUMER";

const VERSION: u8 = 1;
const KIND_OPS: u8 = 1;
const KIND_SECRET: u8 = 2;

/// One change to a group's state for one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Message `offset` handed out (attempt `attempt`, receipt generation `generation`).
    Deliver {
        queue: u32,
        offset: u64,
        attempt: u32,
        generation: u64,
        visible_at_ms: i64,
        key: u64,
    },
    /// Every offset below `offset` was looked at (delivered or filtered out).
    Scan { queue: u32, offset: u64 },
    /// Message `offset` is finished for the group (acked or dead-lettered).
    Done { queue: u32, offset: u64 },
    /// New invisibility (and receipt generation) of an in-flight message.
    Change {
        queue: u32,
        offset: u64,
        generation: u64,
        visible_at_ms: i64,
    },
    /// Consumed-up-to set to `offset` (UpdateOffset); in-flight state dropped.
    Reset { queue: u32, offset: u64 },
}

/// A decoded consumer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerRecord {
    /// State changes of one (group, topic).
    Ops {
        group: String,
        topic: String,
        ops: Vec<Op>,
    },
    /// The broker group's receipt-handle key.
    Secret([u8; 32]),
}

/// Encodes `ops` of one (group, topic).
pub fn encode_ops(group: &str, topic: &str, ops: &[Op]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + group.len() + topic.len() + ops.len() * 37);
    b.push(VERSION);
    b.push(KIND_OPS);
    put_str(&mut b, group);
    put_str(&mut b, topic);
    b.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for op in ops {
        match *op {
            Op::Deliver {
                queue,
                offset,
                attempt,
                generation,
                visible_at_ms,
                key,
            } => {
                head(&mut b, 1, queue, offset);
                b.extend_from_slice(&attempt.to_le_bytes());
                b.extend_from_slice(&generation.to_le_bytes());
                b.extend_from_slice(&visible_at_ms.to_le_bytes());
                b.extend_from_slice(&key.to_le_bytes());
            }
            Op::Scan { queue, offset } => head(&mut b, 2, queue, offset),
            Op::Done { queue, offset } => head(&mut b, 3, queue, offset),
            Op::Change {
                queue,
                offset,
                generation,
                visible_at_ms,
            } => {
                head(&mut b, 4, queue, offset);
                b.extend_from_slice(&generation.to_le_bytes());
                b.extend_from_slice(&visible_at_ms.to_le_bytes());
            }
            Op::Reset { queue, offset } => head(&mut b, 5, queue, offset),
        }
    }
    b
}

/// Encodes the receipt secret record.
pub fn encode_secret(secret: &[u8; 32]) -> Vec<u8> {
    let mut b = vec![VERSION, KIND_SECRET];
    b.extend_from_slice(secret);
    b
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    let n = s.len().min(u16::MAX as usize);
    b.extend_from_slice(&(n as u16).to_le_bytes());
    b.extend_from_slice(&s.as_bytes()[..n]);
}

fn head(b: &mut Vec<u8>, code: u8, queue: u32, offset: u64) {
    b.push(code);
    b.extend_from_slice(&queue.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() < n {
            return Err(format!("truncated: need {n} bytes, {} left", self.b.len()));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.arr()?))
    }
    fn str(&mut self) -> Result<String, String> {
        let n = u16::from_le_bytes(self.arr()?) as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|e| e.to_string())
    }
}

/// Decodes a record body; never panics on bad input.
pub fn decode(body: &[u8]) -> Result<ConsumerRecord, String> {
    let mut r = Reader { b: body };
    let v = r.u8()?;
    if v != VERSION {
        return Err(format!("unknown consumer record version {v}"));
    }
    match r.u8()? {
        KIND_OPS => {
            let group = r.str()?;
            let topic = r.str()?;
            let n = r.u32()? as usize;
            // Each op is at least 13 bytes: bound the allocation by the body.
            let mut ops = Vec::with_capacity(n.min(body.len() / 13 + 1));
            for _ in 0..n {
                let code = r.u8()?;
                let queue = r.u32()?;
                let offset = r.u64()?;
                ops.push(match code {
                    1 => Op::Deliver {
                        queue,
                        offset,
                        attempt: r.u32()?,
                        generation: r.u64()?,
                        visible_at_ms: r.i64()?,
                        key: r.u64()?,
                    },
                    2 => Op::Scan { queue, offset },
                    3 => Op::Done { queue, offset },
                    4 => Op::Change {
                        queue,
                        offset,
                        generation: r.u64()?,
                        visible_at_ms: r.i64()?,
                    },
                    5 => Op::Reset { queue, offset },
                    c => return Err(format!("unknown consumer op {c}")),
                });
            }
            Ok(ConsumerRecord::Ops { group, topic, ops })
        }
        KIND_SECRET => Ok(ConsumerRecord::Secret(r.arr()?)),
        k => Err(format!("unknown consumer record kind {k}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let ops = vec![
            Op::Deliver {
                queue: 3,
                offset: 9,
                attempt: 2,
                generation: 77,
                visible_at_ms: -1,
                key: 5,
            },
            Op::Scan {
                queue: 3,
                offset: 10,
            },
            Op::Done {
                queue: 1,
                offset: 0,
            },
            Op::Change {
                queue: 2,
                offset: 4,
                generation: 8,
                visible_at_ms: 123,
            },
            Op::Reset {
                queue: 0,
                offset: 42,
            },
        ];
        let b = encode_ops("g", "t", &ops);
        assert_eq!(
            decode(&b).unwrap(),
            ConsumerRecord::Ops {
                group: "g".into(),
                topic: "t".into(),
                ops
            }
        );
        let s = [7u8; 32];
        assert_eq!(
            decode(&encode_secret(&s)).unwrap(),
            ConsumerRecord::Secret(s)
        );
        for cut in 0..b.len() {
            assert!(decode(&b[..cut]).is_err());
        }
        assert!(decode(&[1, 1, 0, 0, 0, 0, 255, 255, 255, 255]).is_err());
    }
}
