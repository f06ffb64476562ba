//! Messages to send and the receipts of sent messages.

use std::collections::HashMap;
#[cfg(test)]
use std::time::UNIX_EPOCH;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sofamq_proto::v2;

/// A message to publish. Build one with [`Message::builder`] or [`Message::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub(crate) topic: String,
    pub(crate) body: Bytes,
    pub(crate) tag: Option<String>,
    pub(crate) keys: Vec<String>,
    pub(crate) message_group: Option<String>,
    pub(crate) delivery_timestamp: Option<SystemTime>,
    /// How long after storing a half message the broker first asks the
    /// producer's checker about it (transactional messages only).
    pub(crate) transaction_check_delay: Option<Duration>,
    pub(crate) properties: HashMap<String, String>,
    /// Set by [`Producer::send_half`](crate::Producer::send_half): the
    /// message is a TRANSACTION (half) message.
    pub(crate) transactional: bool,
}

impl Message {
    /// A plain (NORMAL) message with no tag, keys or properties.
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            body: body.into(),
            tag: None,
            keys: Vec::new(),
            message_group: None,
            delivery_timestamp: None,
            transaction_check_delay: None,
            properties: HashMap::new(),
            transactional: false,
        }
    }

    /// Starts building a message for `topic` with `body`.
    pub fn builder(topic: impl Into<String>, body: impl Into<Bytes>) -> MessageBuilder {
        MessageBuilder {
            message: Self::new(topic, body),
        }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The keys.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The message group (makes the message a FIFO message), if any.
    pub fn message_group(&self) -> Option<&str> {
        self.message_group.as_deref()
    }

    /// The delivery time (makes the message a DELAY message), if any.
    pub fn delivery_timestamp(&self) -> Option<SystemTime> {
        self.delivery_timestamp
    }

    /// The delay before the broker first checks an open transaction of this
    /// message with the producer, if set (the broker's default otherwise).
    pub fn transaction_check_delay(&self) -> Option<Duration> {
        self.transaction_check_delay
    }

    /// The user properties.
    pub fn properties(&self) -> &HashMap<String, String> {
        &self.properties
    }

    /// The protocol message type implied by the message's fields.
    pub(crate) fn message_type(&self) -> v2::MessageType {
        if self.transactional {
            v2::MessageType::Transaction
        } else if self.message_group.is_some() {
            v2::MessageType::Fifo
        } else if self.delivery_timestamp.is_some() {
            v2::MessageType::Delay
        } else {
            v2::MessageType::Normal
        }
    }

    /// Checks what the client can check before sending; on error returns the
    /// status code and reason.
    pub(crate) fn validate(&self) -> Result<(), (v2::Code, String)> {
        if self.topic.trim().is_empty() {
            return Err((v2::Code::IllegalTopic, "topic is blank".into()));
        }
        if self.message_group.is_some() && self.delivery_timestamp.is_some() {
            return Err((
                v2::Code::MessagePropertyConflictWithType,
                "a message cannot have both a message group and a delivery timestamp".into(),
            ));
        }
        if self.transactional && (self.message_group.is_some() || self.delivery_timestamp.is_some())
        {
            return Err((
                v2::Code::MessagePropertyConflictWithType,
                "a transactional message cannot have a message group or a delivery timestamp"
                    .into(),
            ));
        }
        if !self.transactional && self.transaction_check_delay.is_some() {
            return Err((
                v2::Code::MessagePropertyConflictWithType,
                "a transaction check delay is only for transactional messages (send_half)".into(),
            ));
        }
        Ok(())
    }

    /// The wire form, with the client-assigned `message_id`, as prost types:
    /// the reference `wire::encode_message` is tested against.
    #[cfg(test)]
    pub(crate) fn into_proto(self, message_id: String, born_host: &str) -> v2::Message {
        let message_type = self.message_type() as i32;
        v2::Message {
            topic: Some(v2::Resource {
                resource_namespace: String::new(),
                name: self.topic,
            }),
            user_properties: self.properties,
            system_properties: Some(v2::SystemProperties {
                tag: self.tag,
                keys: self.keys,
                message_id,
                body_encoding: v2::Encoding::Identity as i32,
                message_type,
                born_timestamp: Some(timestamp(SystemTime::now())),
                born_host: born_host.to_string(),
                delivery_timestamp: self.delivery_timestamp.map(timestamp),
                message_group: self.message_group,
                orphaned_transaction_recovery_duration: self.transaction_check_delay.map(|d| {
                    prost_types::Duration {
                        seconds: d.as_secs() as i64,
                        nanos: d.subsec_nanos() as i32,
                    }
                }),
                ..Default::default()
            }),
            body: self.body,
        }
    }
}

#[cfg(test)]
fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Builder of a [`Message`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MessageBuilder {
    message: Message,
}

impl MessageBuilder {
    /// Sets the tag (used by consumers to filter).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.message.tag = Some(tag.into());
        self
    }

    /// Adds one key (for lookups).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.message.keys.push(key.into());
        self
    }

    /// Adds keys (for lookups).
    pub fn keys<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.message.keys.extend(keys.into_iter().map(Into::into));
        self
    }

    /// Sets the message group, making it a FIFO message: messages of one
    /// group go to the same broker, in order.
    pub fn message_group(mut self, group: impl Into<String>) -> Self {
        self.message.message_group = Some(group.into());
        self
    }

    /// Sets the delivery time, making it a DELAY message (on a DELAY topic).
    /// See also [`Producer::send_at`](crate::Producer::send_at).
    pub fn delivery_timestamp(mut self, at: SystemTime) -> Self {
        self.message.delivery_timestamp = Some(at);
        self
    }

    /// Makes it a DELAY message due `delay` from now.
    /// See also [`Producer::send_delayed`](crate::Producer::send_delayed).
    pub fn delay(self, delay: Duration) -> Self {
        self.delivery_timestamp(SystemTime::now() + delay)
    }

    /// For a transactional message ([`Producer::send_half`](crate::Producer::send_half)):
    /// how long after storing it the broker first asks the producer's
    /// transaction checker about it, if it is still open (overrides the
    /// broker's `transaction.check_delay_ms`).
    pub fn transaction_check_delay(mut self, delay: Duration) -> Self {
        self.message.transaction_check_delay = Some(delay);
        self
    }

    /// Adds a user property.
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.message.properties.insert(key.into(), value.into());
        self
    }

    /// Finishes the message.
    pub fn build(self) -> Message {
        self.message
    }
}

/// Proof that a message is durably stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    /// The message id (as answered by the broker; the client-assigned one).
    pub message_id: String,
    /// The topic.
    pub topic: String,
    /// The message's offset in its queue, as answered by the broker.
    pub queue_offset: i64,
    /// Name of the broker that stored the message.
    pub broker: String,
    /// gRPC endpoint (`host:port`) of the broker that stored the message.
    pub endpoint: String,
    /// For a DELAY message: the handle to cancel it with
    /// [`Producer::recall`](crate::Producer::recall) before it is due.
    pub recall_handle: Option<String>,
    /// For a transactional (half) message: the broker's transaction id.
    pub transaction_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn proto_carries_every_field() {
        let at = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let m = Message::builder("T", &b"hello"[..])
            .tag("TagA")
            .key("k1")
            .keys(["k2"])
            .delivery_timestamp(at)
            .property("p", "v")
            .build();
        let p = m.into_proto("ID1".into(), "host1");
        assert_eq!(p.topic.as_ref().unwrap().name, "T");
        assert_eq!(p.body, b"hello".to_vec());
        assert_eq!(p.user_properties.get("p").map(String::as_str), Some("v"));
        let s = p.system_properties.unwrap();
        assert_eq!(s.message_id, "ID1");
        assert_eq!(s.tag.as_deref(), Some("TagA"));
        assert_eq!(s.keys, vec!["k1".to_string(), "k2".to_string()]);
        assert_eq!(s.message_type, v2::MessageType::Delay as i32);
        assert_eq!(s.body_encoding, v2::Encoding::Identity as i32);
        assert_eq!(s.born_host, "host1");
        assert!(s.born_timestamp.unwrap().seconds > 1_600_000_000);
        assert_eq!(s.delivery_timestamp.unwrap().seconds, 2_000_000_000);
        assert_eq!(s.queue_id, 0, "the broker picks the queue");
    }

    #[test]
    fn message_type_follows_fields() {
        assert_eq!(
            Message::new("T", "x").message_type(),
            v2::MessageType::Normal
        );
        let fifo = Message::builder("T", "x").message_group("g").build();
        assert_eq!(fifo.message_type(), v2::MessageType::Fifo);
        assert_eq!(
            fifo.clone()
                .into_proto("i".into(), "h")
                .system_properties
                .unwrap()
                .message_group
                .as_deref(),
            Some("g")
        );
    }

    #[test]
    fn validation_catches_blank_topic_and_type_conflict() {
        assert_eq!(
            Message::new(" ", "x").validate().unwrap_err().0,
            v2::Code::IllegalTopic
        );
        let both = Message::builder("T", "x")
            .message_group("g")
            .delivery_timestamp(SystemTime::now())
            .build();
        assert_eq!(
            both.validate().unwrap_err().0,
            v2::Code::MessagePropertyConflictWithType
        );
        assert!(Message::new("T", "x").validate().is_ok());
    }

    #[test]
    fn transactional_messages_have_their_type_and_refuse_delay_and_group() {
        let mut m = Message::builder("T", "x")
            .transaction_check_delay(Duration::from_millis(1500))
            .build();
        // A check delay alone is for transactional messages only.
        assert_eq!(
            m.validate().unwrap_err().0,
            v2::Code::MessagePropertyConflictWithType
        );
        m.transactional = true;
        assert!(m.validate().is_ok());
        assert_eq!(m.message_type(), v2::MessageType::Transaction);
        let s = m.into_proto("i".into(), "h").system_properties.unwrap();
        assert_eq!(s.message_type, v2::MessageType::Transaction as i32);
        let d = s.orphaned_transaction_recovery_duration.unwrap();
        assert_eq!((d.seconds, d.nanos), (1, 500_000_000));

        for b in [
            Message::builder("T", "x").delay(Duration::from_secs(5)),
            Message::builder("T", "x").message_group("g"),
        ] {
            let mut m = b.build();
            m.transactional = true;
            assert_eq!(
                m.validate().unwrap_err().0,
                v2::Code::MessagePropertyConflictWithType
            );
        }
    }

    #[test]
    fn delay_sets_a_delivery_time_that_far_ahead() {
        let before = SystemTime::now();
        let m = Message::builder("T", "x")
            .delay(Duration::from_secs(30))
            .build();
        let at = m.delivery_timestamp().unwrap();
        assert!(at >= before + Duration::from_secs(30));
        assert!(at <= SystemTime::now() + Duration::from_secs(30));
        assert_eq!(m.message_type(), v2::MessageType::Delay);
    }
}
