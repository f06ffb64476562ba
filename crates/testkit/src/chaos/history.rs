//! What a chaos run observed: every send attempt's outcome, every delivery, and digests of the
//! master's and slave's logs read offline after the run. Plain data; [`super::checker`] judges it.

use std::hash::Hasher;

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

/// What a transactional producer means to do with a half message (drawn from its seq).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TxnIntent {
    /// The producer commits; its checker answers commit too.
    Commit,
    /// The producer rolls back; its checker answers rollback too.
    Rollback,
    /// The producer never ends it; its checker answers commit at the first check-back.
    CheckCommit,
    /// Never ended; the checker answers "unknown" until the broker's default outcome
    /// (rollback) ends it.
    Abandon,
}

impl TxnIntent {
    /// The intent of sequence number `seq` (the four kinds in turn).
    pub fn of(seq: u64) -> TxnIntent {
        match seq % 4 {
            0 => TxnIntent::Commit,
            1 => TxnIntent::Rollback,
            2 => TxnIntent::CheckCommit,
            _ => TxnIntent::Abandon,
        }
    }

    /// May a consumer ever see it (a commit was or may be given)?
    pub fn may_commit(self) -> bool {
        matches!(self, TxnIntent::Commit | TxnIntent::CheckCommit)
    }
}

/// What kind of message a send was.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SendKind {
    /// A normal message, visible once acked.
    #[default]
    Normal,
    /// A timer (DELAY) message, invisible before `due_ms` (epoch ms).
    Timer {
        /// Delivery time asked for.
        due_ms: i64,
    },
    /// A transactional half message.
    Txn {
        /// What the producer meant to do with it.
        intent: TxnIntent,
        /// The producer's own EndTransaction succeeded (false: not sent, failed or unknown;
        /// the broker's check-back then decides).
        ended: bool,
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
    /// Normal, timer or transactional.
    #[serde(default)]
    pub kind: SendKind,
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
    /// Wall-clock time the consumer got it (epoch ms).
    #[serde(default)]
    pub recv_ms: i64,
    /// The broker's store timestamp of the delivered record (for a timer: when it fired).
    #[serde(default)]
    pub store_ms: i64,
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
    /// A timer fired later than this after its due time is late (0: no bound).
    #[serde(default)]
    pub timer_late_bound_ms: i64,
    /// Check-backs the transactional producers' checkers answered.
    #[serde(default)]
    pub txn_checks: u64,
}

/// A 64-bit FNV-1a digest (stable across runs and processes).
/// Each part is followed by a 0xff byte, so `["a", "bc"]` and `["ab", "c"]` differ.
pub fn digest(parts: &[&[u8]]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    for p in parts {
        h.write(p);
        h.write(&[0xff]);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::digest;

    #[test]
    fn digest_is_pinned() {
        // FNV-1a 64 of each part followed by a 0xff byte.
        assert_eq!(digest(&[]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(digest(&[b""]), 0xaf64_724c_8602_eb6e);
        assert_eq!(digest(&[b"a", b"bc"]), 0xa0a3_542c_19b9_00ab);
    }
}
