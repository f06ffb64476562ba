//! The send path: validate every message, pick its queue, append the accepted
//! ones to the log in one group-commit batch, and answer one entry per message
//! in request order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sofamq_proto::v2::{
    Code, Message, SendMessageRequest, SendMessageResponse, SendResultEntry, Status,
};
use sofamq_store::NewRecord;

use crate::broker::Broker;
use crate::error::{BrokerError, ok_status};
use crate::topics::{TopicConfig, now_ms};
use crate::validate::{self, Checked};

/// Round-robin cursor for queue selection of non-FIFO messages.
#[derive(Default)]
pub struct QueueCursor(AtomicU64);

impl QueueCursor {
    fn next(&self, queue_count: u32) -> u32 {
        (self.0.fetch_add(1, Ordering::Relaxed) % u64::from(queue_count.max(1))) as u32
    }
}

/// Stable FNV-1a hash so one message group always maps to the same queue.
fn group_queue(group: &str, queue_count: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(queue_count.max(1))) as u32
}

impl Broker {
    /// Handles one SendMessage request (one or many messages).
    pub async fn send(&self, req: SendMessageRequest) -> SendMessageResponse {
        let limits = &self.config().limits;
        if req.messages.is_empty() {
            return whole_failure(&BrokerError::BadRequest("no messages in request".into()));
        }
        if req.messages.len() > limits.max_batch_count {
            return whole_failure(&BrokerError::PayloadTooLarge(format!(
                "{} messages in one request, the limit is {}",
                req.messages.len(),
                limits.max_batch_count
            )));
        }
        let total: usize = req.messages.iter().map(|m| m.body.len()).sum();
        if total > limits.max_batch_bytes {
            return whole_failure(&BrokerError::PayloadTooLarge(format!(
                "request bodies total {total} bytes, the limit is {}",
                limits.max_batch_bytes
            )));
        }
        if let Err(e) = self.writable() {
            return whole_failure(&e);
        }

        let mut entries: Vec<SendResultEntry> = Vec::with_capacity(req.messages.len());
        let mut records = Vec::with_capacity(req.messages.len());
        let mut slots = Vec::with_capacity(req.messages.len());
        for (i, msg) in req.messages.into_iter().enumerate() {
            match self.prepare(msg) {
                Ok((checked, record)) => {
                    entries.push(SendResultEntry {
                        status: None,
                        message_id: checked.message_id,
                        ..Default::default()
                    });
                    records.push(record);
                    slots.push(i);
                }
                Err((message_id, e)) => {
                    self.metrics_rejected(&e);
                    entries.push(SendResultEntry {
                        status: Some(e.status()),
                        message_id,
                        ..Default::default()
                    });
                }
            }
        }

        if !records.is_empty() {
            match self.append(records).await {
                Ok(appended) => {
                    for (slot, a) in slots.iter().zip(appended) {
                        let e = &mut entries[*slot];
                        e.status = Some(ok_status());
                        e.offset = a.queue_offset as i64;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "send not persisted");
                    for slot in &slots {
                        entries[*slot].status = Some(err.status());
                    }
                }
            }
        }
        let status = overall(&entries);
        SendMessageResponse {
            status: Some(status),
            entries,
        }
    }

    fn prepare(&self, msg: Message) -> Result<(Checked, NewRecord), (String, BrokerError)> {
        let message_id = msg
            .system_properties
            .as_ref()
            .map(|s| s.message_id.clone())
            .unwrap_or_default();
        let fail = |e| (message_id.clone(), e);
        let topic_name = msg
            .topic
            .as_ref()
            .map(|t| t.name.as_str())
            .unwrap_or_default();
        validate::check_topic_name(topic_name, &self.config().limits).map_err(fail)?;
        let topic: TopicConfig = self.topics().get(topic_name).ok_or_else(|| {
            fail(BrokerError::TopicNotFound(format!(
                "'{topic_name}' does not exist on {}",
                self.config().broker_name
            )))
        })?;
        let checked = validate::check_message(&msg, &topic, &self.config().limits).map_err(fail)?;
        let queue_id = match &checked.message_group {
            Some(g) => group_queue(g, topic.queue_count),
            None => self.cursor().next(topic.queue_count),
        };
        let born_ts_ms = msg
            .system_properties
            .as_ref()
            .and_then(|s| s.born_timestamp.as_ref())
            .map(|t| t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000))
            .unwrap_or_else(now_ms);
        let record = NewRecord {
            topic: topic.name,
            queue_id,
            flags: 0,
            tag: checked.tag.clone(),
            born_ts_ms,
            properties: checked.properties.clone(),
            body: Bytes::from(msg.body),
        };
        Ok((checked, record))
    }

    async fn append(
        &self,
        records: Vec<NewRecord>,
    ) -> Result<Vec<sofamq_store::Appended>, BrokerError> {
        let timeout = Duration::from_millis(self.config().limits.persist_timeout_ms);
        match tokio::time::timeout(timeout, self.store().append(records)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(BrokerError::MasterPersistence(format!(
                "not durable within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    fn metrics_rejected(&self, e: &BrokerError) {
        tracing::debug!(code = e.code() as i32, error = %e, "message rejected");
    }
}

fn whole_failure(e: &BrokerError) -> SendMessageResponse {
    SendMessageResponse {
        status: Some(e.status()),
        entries: Vec::new(),
    }
}

/// The request's status: OK when every entry is OK, the entry's own status for a
/// single message, MULTIPLE_RESULTS when a batch is mixed.
fn overall(entries: &[SendResultEntry]) -> Status {
    let ok = Code::Ok as i32;
    let codes: Vec<i32> = entries
        .iter()
        .map(|e| e.status.as_ref().map(|s| s.code).unwrap_or(ok))
        .collect();
    if codes.iter().all(|c| *c == ok) {
        return ok_status();
    }
    if entries.len() == 1 {
        return entries[0].status.clone().unwrap_or_else(ok_status);
    }
    if codes.iter().all(|c| *c == codes[0]) {
        return entries[0].status.clone().unwrap_or_else(ok_status);
    }
    Status {
        code: Code::MultipleResults as i32,
        message: "some messages of the batch failed; see each entry".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_hash_is_stable_and_in_range() {
        for n in 1..20 {
            let q = group_queue("order-42", n);
            assert!(q < n);
            assert_eq!(q, group_queue("order-42", n));
        }
    }

    #[test]
    fn overall_status_rules() {
        let ok = SendResultEntry {
            status: Some(ok_status()),
            ..Default::default()
        };
        let bad = SendResultEntry {
            status: Some(BrokerError::BodyEmpty.status()),
            ..Default::default()
        };
        assert_eq!(overall(&[ok.clone(), ok.clone()]).code, 20000);
        assert_eq!(overall(std::slice::from_ref(&bad)).code, 41302);
        assert_eq!(overall(&[ok, bad]).code, Code::MultipleResults as i32);
    }
}
