//! What a chaos run observed: every send attempt's outcome, every delivery, and digests of the
//! master's and slave's logs read offline after the run. Plain data; [`super::checker`] judges it.

use serde::{Deserialize, Serialize};

/// User property carrying the producer id.
pub const PROP_PRODUCER: &str = "chaos_producer";
/// User property carrying the per-producer sequence number.
pub const PROP_SEQ: &str = "chaos_seq";

/// How one send ended, as the producer saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SendOutcome {
    /// Acked: the broker said the message is durable (and replicated).
    Ok {
        /// Queue offset in the receipt.
        queue_offset: i64,
        /// Broker that acked.
        broker: String,
    },
    /// Definitely not stored: a non-retryable rejection.
    Failed {
        /// Status code.
        code: Option<i32>,
        /// Reason.
        message: String,
    },
    /// May or may not be stored: timeout, connection loss, retries exhausted.
    Unknown {
        /// Reason.
        message: String,
    },
}

/// One send: producer id, sequence number, message id and outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRecord {
    /// Producer id (unique in the run).
    pub producer: u32,
    /// Sequence number within the producer (1, 2, ...).
    pub seq: u64,
    /// Client message id.
    pub msg_id: String,
    /// Outcome.
    pub outcome: SendOutcome,
}

/// One delivery to a consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRecord {
    /// Producer id from the message's properties (None: not one of ours / unparseable).
    pub producer: Option<u32>,
    /// Sequence number from the message's properties.
    pub seq: Option<u64>,
    /// Message id.
    pub msg_id: String,
    /// Queue id (the chaos cluster has one broker group, so the queue id names the queue).
    pub queue: i32,
    /// Queue offset.
    pub offset: i64,
    /// Read by the final audit group (which reads every queue from the start after the run).
    pub audit: bool,
}

/// A log read offline: (log offset, digest of the record) for every record, and the end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogDigest {
    /// Which process's log.
    pub name: String,
    /// (log offset, record digest), in log order.
    pub records: Vec<(u64, u64)>,
    /// Log end offset after recovery.
    pub end: u64,
}

/// Everything a run recorded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    /// Every send, in completion order.
    pub sends: Vec<SendRecord>,
    /// Every delivery, in arrival order (redeliveries included).
    pub reads: Vec<ReadRecord>,
    /// The audit group drained every queue: "lost" then means acked but not in the final log
    /// (a message delivered before a failover and then lost with the log tail still counts).
    pub audited: bool,
    /// Pairs of logs of one broker group that must agree on their common prefix.
    pub log_pairs: Vec<(LogDigest, LogDigest)>,
}

/// A 64-bit FNV-1a digest (stable across runs and processes).
pub fn digest(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(&[0xffu8]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}
