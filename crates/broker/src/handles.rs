//! Recall handles and transaction ids: opaque to clients, hex of a small text that names
//! the broker group, the record's queue offset on its reserved queue and what the broker
//! checks it against (topic, message id, due time). The broker always re-reads the record
//! and compares, so a forged handle can at most name another message the caller may
//! already publish to (the RPCs need Pub on the topic).

/// What a recall handle names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecallHandle {
    /// Broker group that stored the timer.
    pub broker: String,
    /// Real topic.
    pub topic: String,
    /// Queue offset on the timer queue.
    pub queue_offset: u64,
    /// Due time, epoch ms.
    pub due_ms: u64,
    /// Message id.
    pub message_id: String,
}

fn encode(parts: &[&str]) -> String {
    let mut s = String::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(p);
    }
    hex::encode(s)
}

fn decode(text: &str, tag: &str, n: usize) -> Option<Vec<String>> {
    if text.len() > 2048 {
        return None;
    }
    let raw = String::from_utf8(hex::decode(text).ok()?).ok()?;
    let parts: Vec<String> = raw.split('\n').map(str::to_string).collect();
    (parts.len() == n && parts[0] == tag).then_some(parts)
}

impl RecallHandle {
    /// The handle text.
    pub fn encode(&self) -> String {
        encode(&[
            "r1",
            &self.broker,
            &self.topic,
            &self.queue_offset.to_string(),
            &self.due_ms.to_string(),
            &self.message_id,
        ])
    }

    /// Parses a handle; `None` when it is not one.
    pub fn decode(text: &str) -> Option<RecallHandle> {
        let p = decode(text, "r1", 6)?;
        Some(RecallHandle {
            broker: p[1].clone(),
            topic: p[2].clone(),
            queue_offset: p[3].parse().ok()?,
            due_ms: p[4].parse().ok()?,
            message_id: p[5].clone(),
        })
    }
}

/// What a transaction id names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionId {
    /// Broker group that stored the half message.
    pub broker: String,
    /// Queue offset on the half queue.
    pub queue_offset: u64,
    /// Message id.
    pub message_id: String,
}

impl TransactionId {
    /// The id text.
    pub fn encode(&self) -> String {
        encode(&[
            "x1",
            &self.broker,
            &self.queue_offset.to_string(),
            &self.message_id,
        ])
    }

    /// Parses an id; `None` when it is not one.
    pub fn decode(text: &str) -> Option<TransactionId> {
        let p = decode(text, "x1", 4)?;
        Some(TransactionId {
            broker: p[1].clone(),
            queue_offset: p[2].parse().ok()?,
            message_id: p[3].clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_others() {
        let h = RecallHandle {
            broker: "broker-a".into(),
            topic: "orders".into(),
            queue_offset: 42,
            due_ms: 1_700_000_000_000,
            message_id: "01ABC".into(),
        };
        assert_eq!(RecallHandle::decode(&h.encode()), Some(h.clone()));
        let x = TransactionId {
            broker: "b".into(),
            queue_offset: 7,
            message_id: "m".into(),
        };
        assert_eq!(TransactionId::decode(&x.encode()), Some(x.clone()));
        assert_eq!(RecallHandle::decode(&x.encode()), None);
        assert_eq!(TransactionId::decode(&h.encode()), None);
        assert_eq!(RecallHandle::decode("zz"), None);
        assert_eq!(RecallHandle::decode(""), None);
    }
}
