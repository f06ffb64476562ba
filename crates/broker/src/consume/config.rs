//! Consumer-side limits and defaults (`[consume]` in the broker TOML).

use serde::{Deserialize, Serialize};

/// Bounds on everything a consumer can ask for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumeConfig {
    /// Deliveries of one message to a group before it moves to `%DLQ%<group>`.
    pub max_attempts: u32,
    /// Largest batch one ReceiveMessage / PullMessage returns.
    pub max_batch_size: u32,
    /// Largest total body bytes one receive returns (at least one message).
    pub max_batch_bytes: usize,
    /// Invisible duration when the client gives none.
    pub default_invisible_ms: u64,
    /// Longest invisible duration a client may ask for.
    pub max_invisible_ms: u64,
    /// Longest a receive may wait for messages (the client's long polling
    /// timeout is capped to this).
    pub max_long_polling_ms: u64,
    /// How often a waiting receive re-checks (new messages also wake it).
    pub poll_interval_ms: u64,
    /// Most in-flight (delivered, not yet acked) messages per group and queue;
    /// bounds the broker's memory per queue.
    pub max_inflight_per_queue: usize,
    /// Most consume-queue entries one receive scans per queue (filtered ones included).
    pub max_scan_per_queue: usize,
    /// Most acks in one AckMessage request.
    pub max_ack_entries: usize,
    /// Most (group, topic) pairs the broker tracks.
    pub max_groups: usize,
}

impl Default for ConsumeConfig {
    fn default() -> Self {
        Self {
            max_attempts: 16,
            max_batch_size: 1024,
            max_batch_bytes: 16 * 1024 * 1024,
            default_invisible_ms: 30_000,
            max_invisible_ms: 12 * 3600 * 1000,
            max_long_polling_ms: 30_000,
            poll_interval_ms: 100,
            max_inflight_per_queue: 20_000,
            max_scan_per_queue: 1_024,
            max_ack_entries: 1_024,
            max_groups: 10_000,
        }
    }
}
