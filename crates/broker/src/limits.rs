//! Bounds on what a client can send (`[limits]` in the broker's TOML): plain data, read by
//! validation and the send path, below everything that uses it.

use serde::{Deserialize, Serialize};

/// Bounds on everything a client can send.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted message body.
    pub max_body_bytes: usize,
    /// Largest number of messages in one SendMessage request.
    pub max_batch_count: usize,
    /// Largest total body bytes in one SendMessage request.
    pub max_batch_bytes: usize,
    /// Most user properties on one message.
    pub max_property_count: usize,
    /// Largest total size of keys and values of the user properties.
    pub max_properties_bytes: usize,
    /// Longest tag.
    pub max_tag_bytes: usize,
    /// Most keys on one message.
    pub max_key_count: usize,
    /// Longest key.
    pub max_key_bytes: usize,
    /// Longest topic or group name.
    pub max_name_bytes: usize,
    /// Most queues a topic may have.
    pub max_queue_count: u32,
    /// Largest gRPC message the server decodes.
    pub max_grpc_message_bytes: usize,
    /// Longest a send waits for durability before MASTER_PERSISTENCE_TIMEOUT.
    pub persist_timeout_ms: u64,
    /// Most concurrent HTTP/2 streams (requests) per client connection.
    pub max_concurrent_streams: u32,
    /// How long shutdown waits for open connections.
    pub shutdown_grace_ms: u64,
    /// Largest HTTP/2 header list (gRPC metadata) a client may send.
    pub max_header_list_bytes: u32,
    /// Most simultaneous connections from one client IP address.
    pub max_connections_per_ip: usize,
    /// Body and property bytes of send requests being stored at once; beyond
    /// it sends are answered TOO_MANY_REQUESTS instead of queueing in memory.
    pub max_inflight_send_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            max_batch_count: 1024,
            max_batch_bytes: 16 * 1024 * 1024,
            max_property_count: 128,
            max_properties_bytes: 16 * 1024,
            max_tag_bytes: 255,
            max_key_count: 32,
            max_key_bytes: 255,
            max_name_bytes: 127,
            max_queue_count: 1024,
            max_grpc_message_bytes: 20 * 1024 * 1024,
            persist_timeout_ms: 5_000,
            max_concurrent_streams: 1_024,
            shutdown_grace_ms: 3_000,
            max_header_list_bytes: 16 * 1024,
            max_connections_per_ip: 256,
            max_inflight_send_bytes: 256 * 1024 * 1024,
        }
    }
}
