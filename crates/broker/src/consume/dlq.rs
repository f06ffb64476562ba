//! Dead letters: after the group's max attempts a message is copied to the
//! group's dead-letter topic `%DLQ%<group>` (created on first use) in the
//! same log append that marks it finished, so it is never both lost and
//! never delivered twice. `resend` moves dead letters back to their topic.

use bytes::Bytes;
use sofamq_proto::v2::ForwardMessageToDeadLetterQueueRequest;
use sofamq_store::{NewRecord, Record};

use super::Consumers;
use super::receipt;
use super::receive::resource_name;
use super::records::Op;
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::topics::{TopicType, now_ms};

/// Prefix of dead-letter topics.
pub const DLQ_PREFIX: &str = "%DLQ%";
/// Original topic of a dead letter.
pub const ORIGIN_TOPIC: &str = "__DLQ_TOPIC";
/// Original queue id of a dead letter.
pub const ORIGIN_QUEUE: &str = "__DLQ_QID";
/// Original queue offset of a dead letter.
pub const ORIGIN_OFFSET: &str = "__DLQ_OFFSET";
/// Group that resends dead letters (its offset on each DLQ topic is the
/// resend progress).
pub const RESEND_GROUP: &str = "%SYS%RESEND";

/// The dead-letter topic of `group`.
pub fn dlq_topic(group: &str) -> String {
    format!("{DLQ_PREFIX}{group}")
}

/// The dead-letter copy of `rec`.
pub(crate) fn dead_letter(rec: &Record, _group: &str, dlq: &str) -> NewRecord {
    let mut properties: Vec<(String, String)> = rec
        .properties
        .iter()
        .filter(|(k, _)| k != ORIGIN_TOPIC && k != ORIGIN_QUEUE && k != ORIGIN_OFFSET)
        .cloned()
        .collect();
    properties.push((ORIGIN_TOPIC.into(), rec.topic.clone()));
    properties.push((ORIGIN_QUEUE.into(), rec.queue_id.to_string()));
    properties.push((ORIGIN_OFFSET.into(), rec.queue_offset.to_string()));
    NewRecord {
        topic: dlq.to_string(),
        queue_id: 0,
        flags: 0,
        tag: rec.tag.clone(),
        born_ts_ms: rec.born_ts_ms,
        properties,
        body: rec.body.clone(),
    }
}

impl Broker {
    pub(crate) async fn create_dlq_topic(&self, name: &str) -> Result<(), BrokerError> {
        if self.topics().get(name).is_none() {
            tracing::info!(topic = %name, "creating dead-letter topic");
            self.create_topic(name, 1, TopicType::Normal).await?;
        }
        Ok(())
    }

    /// Handles ForwardMessageToDeadLetterQueue: the delivery named by the
    /// receipt handle goes to `%DLQ%<group>` and is finished for the group.
    pub async fn forward_to_dlq(
        &self,
        req: &ForwardMessageToDeadLetterQueueRequest,
    ) -> Result<(), BrokerError> {
        let group = resource_name(req.group.as_ref());
        let topic = resource_name(req.topic.as_ref());
        self.check_group(group)?;
        self.writable()?;
        let consumers = self.consumers();
        let secret = consumers
            .existing_secret()
            .ok_or_else(|| BrokerError::InvalidReceiptHandle("unknown receipt handle".into()))?;
        let r = receipt::decode(&secret, group, topic, &req.receipt_handle)
            .and_then(|r| self.receipt_epoch_ok(r))
            .map_err(BrokerError::InvalidReceiptHandle)?;
        let gt = consumers
            .group_topic(group, topic, false)?
            .ok_or_else(|| BrokerError::InvalidReceiptHandle("unknown group or topic".into()))?;
        let dlq = dlq_topic(group);
        self.create_dlq_topic(&dlq).await?;
        let pending = {
            let mut g = gt.lock();
            if g.current(r.queue, r.offset, r.generation).is_none() {
                return Err(BrokerError::InvalidReceiptHandle(
                    "receipt handle is stale (acked, nacked or redelivered)".into(),
                ));
            }
            let rec = self
                .store()
                .read_queue(topic, r.queue, r.offset, 1, usize::MAX)
                .map_err(|e| BrokerError::Internal(format!("log read: {e}")))?
                .into_iter()
                .next();
            let op = Op::Done {
                queue: r.queue,
                offset: r.offset,
            };
            g.apply(&op);
            let mut recs: Vec<NewRecord> = rec
                .iter()
                .map(|rec| dead_letter(rec, group, &dlq))
                .collect();
            recs.push(Consumers::ops_record(group, topic, &[op]));
            consumers.enqueue(recs)
        };
        pending.wait(self.persist_timeout()).await?;
        tracing::warn!(%group, %topic, message_id = %req.message_id, "message forwarded to the dead-letter topic");
        Ok(())
    }

    /// Moves dead letters of `group` (only those of `topic` when given) back
    /// to their original topic. Returns how many were resent. Progress is
    /// the offset of [`RESEND_GROUP`] on the DLQ topic, through the log.
    pub async fn resend_dead_letters(
        &self,
        group: &str,
        topic: Option<&str>,
        max: usize,
    ) -> Result<u64, BrokerError> {
        self.check_group(group)?;
        self.writable()?;
        let dlq = dlq_topic(group);
        if self.topics().get(&dlq).is_none() {
            return Ok(0);
        }
        let consumers = self.consumers();
        let Some(gt) = consumers.group_topic(RESEND_GROUP, &dlq, true)? else {
            return Ok(0);
        };
        let mut resent = 0u64;
        loop {
            let pending = {
                let mut g = gt.lock();
                let from = g.queues.get(&0).map(|q| q.committed()).unwrap_or(0);
                let batch = self
                    .store()
                    .read_queue(&dlq, 0, from, 256.min(max.max(1)), 8 << 20)
                    .map_err(|e| BrokerError::Internal(format!("log read: {e}")))?;
                if batch.is_empty() || resent as usize >= max {
                    break;
                }
                let mut recs = Vec::new();
                let mut next = from;
                for rec in &batch {
                    let origin = rec
                        .properties
                        .iter()
                        .find(|(k, _)| k == ORIGIN_TOPIC)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    if topic.is_some_and(|t| t != origin) {
                        // Another topic's dead letter: it stays, and so does
                        // the cursor (a later resend without --topic takes it).
                        break;
                    }
                    next = rec.queue_offset + 1;
                    let Some(cfg) = self.topics().get(&origin) else {
                        tracing::warn!(topic = %origin, "dead letter's topic no longer exists; skipped");
                        continue;
                    };
                    let qid = rec
                        .properties
                        .iter()
                        .find(|(k, _)| k == ORIGIN_QUEUE)
                        .and_then(|(_, v)| v.parse::<u32>().ok())
                        .unwrap_or(0)
                        % cfg.queue_count.max(1);
                    recs.push(NewRecord {
                        topic: origin,
                        queue_id: qid,
                        flags: 0,
                        tag: rec.tag.clone(),
                        born_ts_ms: now_ms(),
                        properties: rec
                            .properties
                            .iter()
                            .filter(|(k, _)| !k.starts_with("__DLQ_"))
                            .cloned()
                            .collect(),
                        body: Bytes::clone(&rec.body),
                    });
                }
                if next == from {
                    break;
                }
                resent += recs.len() as u64;
                let op = Op::Reset {
                    queue: 0,
                    offset: next,
                };
                g.apply(&op);
                recs.push(Consumers::ops_record(RESEND_GROUP, &dlq, &[op]));
                consumers.enqueue(recs)
            };
            pending.wait(self.persist_timeout()).await?;
        }
        if resent > 0 {
            consumers.wake();
            tracing::info!(%group, resent, "dead letters resent to their topics");
        }
        Ok(resent)
    }
}
