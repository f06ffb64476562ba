//! A stored record as the `apache.rocketmq.v2.Message` a consumer receives,
//! with every system property the official clients read or check.

use md5::{Digest as _, Md5};
use sofamq_proto::v2::{
    Digest, DigestType, Encoding, Message, MessageType, Resource, SystemProperties,
};
use sofamq_store::Record;

use crate::topics::TopicType;
use crate::validate::keys;

/// Delivery facts added to a received message.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// Receipt handle (receive only).
    pub receipt_handle: Option<String>,
    /// Delivery attempt, >= 1.
    pub attempt: u32,
    /// Invisible duration granted (receive only).
    pub invisible_ms: Option<u64>,
}

fn ts(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Upper-case hex MD5 of `body` (what the clients verify).
pub fn md5_upper_hex(body: &[u8]) -> String {
    hex::encode_upper(Md5::digest(body))
}

/// Converts `rec` for delivery. `topic_type` fills the message type when the
/// record does not carry one; `store_host` names this broker.
pub fn to_wire(rec: &Record, topic_type: TopicType, store_host: &str, d: &Delivery) -> Message {
    let message_type = rec
        .property(keys::TYPE)
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(MessageType::from(topic_type) as i32);
    let body_encoding = rec
        .property(keys::ENCODING)
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(Encoding::Identity as i32);
    let keys_list = rec
        .property(keys::KEYS)
        .map(|k| k.split(keys::KEY_SEP).map(str::to_string).collect())
        .unwrap_or_default();
    let user_properties = rec
        .properties
        .iter()
        .filter(|(k, _)| !k.starts_with("__"))
        .cloned()
        .collect();
    let system_properties = SystemProperties {
        tag: (!rec.tag.is_empty()).then(|| rec.tag.clone()),
        keys: keys_list,
        message_id: rec.property(keys::MSG_ID).unwrap_or_default().to_string(),
        body_digest: Some(Digest {
            r#type: DigestType::Md5 as i32,
            checksum: md5_upper_hex(&rec.body),
        }),
        body_encoding,
        message_type,
        born_timestamp: Some(ts(rec.born_ts_ms)),
        born_host: rec
            .property(keys::BORN_HOST)
            .unwrap_or_default()
            .to_string(),
        store_timestamp: Some(ts(rec.store_ts_ms)),
        store_host: store_host.to_string(),
        delivery_timestamp: rec
            .property(keys::DELIVER_AT)
            .and_then(|v| v.parse::<i64>().ok())
            .map(ts),
        receipt_handle: d.receipt_handle.clone(),
        queue_id: rec.queue_id as i32,
        queue_offset: Some(rec.queue_offset as i64),
        invisible_duration: d.invisible_ms.map(|ms| prost_types::Duration {
            seconds: (ms / 1000) as i64,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        }),
        delivery_attempt: Some(d.attempt.max(1) as i32),
        message_group: rec.property(keys::GROUP).map(str::to_string),
        trace_context: rec.property(keys::TRACE).map(str::to_string),
        ..Default::default()
    };
    Message {
        topic: Some(Resource {
            resource_namespace: String::new(),
            name: rec.topic.clone(),
        }),
        user_properties,
        system_properties: Some(system_properties),
        body: rec.body.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_upper_hex_md5() {
        assert_eq!(md5_upper_hex(b"abc"), "900150983CD24FB0D6963F7D28E17F72");
    }
}
