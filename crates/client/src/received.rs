//! A message as a consumer receives it (and as a transaction check shows it).

use std::collections::HashMap;

use bytes::Bytes;
use sofamq_proto::v2;

/// A received message.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// Topic.
    pub topic: String,
    /// Client message id.
    pub message_id: String,
    /// Body.
    pub body: Bytes,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Keys.
    pub keys: Vec<String>,
    /// FIFO message group, if any.
    pub message_group: Option<String>,
    /// User properties.
    pub properties: HashMap<String, String>,
    /// Delivery attempt (1 = first).
    pub delivery_attempt: u32,
    /// Queue id.
    pub queue_id: i32,
    /// Queue offset.
    pub queue_offset: i64,
    /// Born timestamp, epoch ms.
    pub born_timestamp_ms: i64,
    /// Store timestamp, epoch ms.
    pub store_timestamp_ms: i64,
    /// Receipt handle for ack / change invisible duration.
    pub receipt_handle: String,
    /// Broker endpoint it came from.
    pub endpoint: String,
}

fn ms(t: Option<&prost_types::Timestamp>) -> i64 {
    t.map(|t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
        .unwrap_or(0)
}

impl ReceivedMessage {
    pub(crate) fn from_wire(m: v2::Message, endpoint: &str) -> Self {
        let sys = m.system_properties.unwrap_or_default();
        Self {
            topic: m.topic.map(|t| t.name).unwrap_or_default(),
            message_id: sys.message_id,
            body: m.body,
            tag: sys.tag,
            keys: sys.keys,
            message_group: sys.message_group,
            properties: m.user_properties,
            delivery_attempt: sys.delivery_attempt.unwrap_or(1).max(1) as u32,
            queue_id: sys.queue_id,
            queue_offset: sys.queue_offset.unwrap_or(-1),
            born_timestamp_ms: ms(sys.born_timestamp.as_ref()),
            store_timestamp_ms: ms(sys.store_timestamp.as_ref()),
            receipt_handle: sys.receipt_handle.unwrap_or_default(),
            endpoint: endpoint.to_string(),
        }
    }
}
