//! Dead letters: after the group's max attempts a message is copied to the
//! group's dead-letter topic `%DLQ%<group>` (created on first use) in the
//! same log append that marks it finished, so it is never both lost and
//! never delivered twice. `resend` moves dead letters back to their topic.

use std::collections::BTreeMap;

use bytes::Bytes;
use sofamq_proto::v2::ForwardMessageToDeadLetterQueueRequest;
use sofamq_store::{NewRecord, Record};

use super::Consumers;
use super::receipt;
use super::records::Op;
use super::request::resource_name;
use super::state::{GroupTopic, Inflight};
use crate::broker::Broker;
use crate::clock::now_ms;
use crate::error::BrokerError;
use crate::topics::TopicType;

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
/// Group whose in-flight set on a dead-letter topic holds the dead letters resent by
/// choice at or above [`RESEND_GROUP`]'s offset; each entry is finished when the in-order
/// resend passes it (which then skips it).
pub const RESEND_CHOSEN_GROUP: &str = "%SYS%RESEND-CHOSEN";
/// Most offsets one chosen resend takes.
pub const MAX_CHOSEN_PER_CALL: usize = 1024;
/// Most dead letters of one group resent by choice ahead of the in-order resend (bounds
/// the memory of [`RESEND_CHOSEN_GROUP`]'s state).
pub const MAX_CHOSEN_PENDING: usize = 65_536;

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
    /// to their original topic, oldest first, skipping those already resent by
    /// choice ([`Broker::resend_chosen_dead_letters`]). Returns how many were
    /// resent. Progress is the offset of [`RESEND_GROUP`] on the DLQ topic,
    /// through the log.
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
        let (Some(gt), Some(ct)) = (
            consumers.group_topic(RESEND_GROUP, &dlq, true)?,
            consumers.group_topic(RESEND_CHOSEN_GROUP, &dlq, true)?,
        ) else {
            return Ok(0);
        };
        let mut resent = 0u64;
        loop {
            let pending = {
                // Always this order: the cursor, then the chosen set.
                let mut g = gt.lock();
                let mut ch = ct.lock();
                let from = g.queues.get(&0).map(|q| q.committed()).unwrap_or(0);
                let batch = self
                    .store()
                    .read_queue(&dlq, 0, from, 256.min(max.max(1)), 8 << 20)
                    .map_err(|e| BrokerError::Internal(format!("log read: {e}")))?;
                if batch.is_empty() || resent as usize >= max {
                    break;
                }
                let mut recs = Vec::new();
                let mut passed = Vec::new();
                let mut next = from;
                for rec in &batch {
                    if resent as usize + recs.len() >= max {
                        break;
                    }
                    let origin = origin_topic(rec);
                    if topic.is_some_and(|t| t != origin) {
                        // Another topic's dead letter: it stays, and so does
                        // the cursor (a later resend without --topic takes it).
                        break;
                    }
                    next = rec.queue_offset + 1;
                    if chosen(&ch).contains_key(&rec.queue_offset) {
                        // Resent by choice already: the cursor passes it once.
                        passed.push(Op::Done {
                            queue: 0,
                            offset: rec.queue_offset,
                        });
                        continue;
                    }
                    match self.back_to_topic(rec) {
                        Some(r) => recs.push(r),
                        None => {
                            tracing::warn!(topic = %origin, "dead letter's topic no longer exists; skipped");
                        }
                    }
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
                if !passed.is_empty() {
                    for op in &passed {
                        ch.apply(op);
                    }
                    recs.push(Consumers::ops_record(RESEND_CHOSEN_GROUP, &dlq, &passed));
                }
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

    /// Resends the dead letters of `group` at `offsets` of its dead-letter queue, each
    /// once: one at or above the in-order cursor is marked (in [`RESEND_CHOSEN_GROUP`],
    /// in the same log append as its copy), so neither a second choice nor the in-order
    /// resend sends it again. How many were resent, and the offsets skipped with why.
    pub async fn resend_chosen_dead_letters(
        &self,
        group: &str,
        offsets: &[u64],
    ) -> Result<(u64, Vec<(u64, &'static str)>), BrokerError> {
        self.check_group(group)?;
        if offsets.len() > MAX_CHOSEN_PER_CALL {
            return Err(BrokerError::BadRequest(format!(
                "{} offsets chosen; at most {MAX_CHOSEN_PER_CALL} per call",
                offsets.len()
            )));
        }
        self.writable()?;
        let mut wanted = offsets.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let dlq = dlq_topic(group);
        if self.topics().get(&dlq).is_none() {
            return Ok((0, wanted.into_iter().map(|o| (o, NOT_STORED)).collect()));
        }
        let consumers = self.consumers();
        let (Some(gt), Some(ct)) = (
            consumers.group_topic(RESEND_GROUP, &dlq, true)?,
            consumers.group_topic(RESEND_CHOSEN_GROUP, &dlq, true)?,
        ) else {
            return Ok((0, wanted.into_iter().map(|o| (o, NOT_STORED)).collect()));
        };
        let mut skipped = Vec::new();
        let (pending, resent) = {
            let g = gt.lock();
            let mut ch = ct.lock();
            let cursor = g.queues.get(&0).map(|q| q.committed()).unwrap_or(0);
            let (start, end) = self.store().queue_offsets(&dlq, 0);
            let mut recs = Vec::new();
            let mut ops = Vec::new();
            for &offset in &wanted {
                if offset < cursor || chosen(&ch).contains_key(&offset) {
                    skipped.push((offset, ALREADY_RESENT));
                    continue;
                }
                if offset < start || offset >= end {
                    skipped.push((offset, NOT_STORED));
                    continue;
                }
                let rec = self
                    .store()
                    .read_queue(&dlq, 0, offset, 1, usize::MAX)
                    .map_err(|e| BrokerError::Internal(format!("log read: {e}")))?
                    .into_iter()
                    .next()
                    .filter(|r| r.queue_offset == offset);
                let Some(rec) = rec else {
                    skipped.push((offset, NOT_STORED));
                    continue;
                };
                let Some(copy) = self.back_to_topic(&rec) else {
                    skipped.push((offset, TOPIC_GONE));
                    continue;
                };
                recs.push(copy);
                ops.push(Op::Deliver {
                    queue: 0,
                    offset,
                    attempt: 1,
                    generation: 0,
                    visible_at_ms: i64::MAX,
                    key: 0,
                });
            }
            if ops.is_empty() {
                return Ok((0, skipped));
            }
            if chosen(&ch).len() + ops.len() > MAX_CHOSEN_PENDING {
                return Err(BrokerError::TooManyRequests(format!(
                    "{} dead letters of {group} are resent by choice ahead of the in-order \
                     resend (at most {MAX_CHOSEN_PENDING}): resend in order first",
                    chosen(&ch).len()
                )));
            }
            for op in &ops {
                ch.apply(op);
            }
            let n = recs.len() as u64;
            recs.push(Consumers::ops_record(RESEND_CHOSEN_GROUP, &dlq, &ops));
            (consumers.enqueue(recs), n)
        };
        pending.wait(self.persist_timeout()).await?;
        consumers.wake();
        tracing::info!(%group, resent, skipped = skipped.len(), "chosen dead letters resent to their topics");
        Ok((resent, skipped))
    }

    /// How far `group`'s dead letters were resent: every one below the first offset was,
    /// and so were the chosen ones listed; the queue's end.
    pub fn dead_letter_progress(&self, group: &str) -> Result<(u64, Vec<u64>, u64), BrokerError> {
        self.check_group(group)?;
        let dlq = dlq_topic(group);
        let end = self.store().queue_offsets(&dlq, 0).1;
        let consumers = self.consumers();
        let below = consumers
            .group_topic(RESEND_GROUP, &dlq, false)?
            .and_then(|g| g.lock().queues.get(&0).map(|q| q.committed()))
            .unwrap_or(0);
        let picked = consumers
            .group_topic(RESEND_CHOSEN_GROUP, &dlq, false)?
            .map(|c| {
                chosen(&c.lock())
                    .keys()
                    .copied()
                    .filter(|o| *o >= below)
                    .collect()
            })
            .unwrap_or_default();
        Ok((below, picked, end))
    }

    /// The copy of dead letter `rec` that goes back to its topic (`None`: the topic is gone).
    fn back_to_topic(&self, rec: &Record) -> Option<NewRecord> {
        let cfg = self.topics().get(&origin_topic(rec))?;
        let qid = rec
            .properties
            .iter()
            .find(|(k, _)| k == ORIGIN_QUEUE)
            .and_then(|(_, v)| v.parse::<u32>().ok())
            .unwrap_or(0)
            % cfg.queue_count.max(1);
        Some(NewRecord {
            topic: cfg.name.clone(),
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
        })
    }
}

/// Why a chosen dead letter was not resent.
const ALREADY_RESENT: &str = "already resent";
const NOT_STORED: &str = "not stored";
const TOPIC_GONE: &str = "topic gone";

/// The topic a dead letter came from.
fn origin_topic(rec: &Record) -> String {
    rec.properties
        .iter()
        .find(|(k, _)| k == ORIGIN_TOPIC)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// The dead letters resent by choice and not yet passed by the in-order cursor: the
/// in-flight set of [`RESEND_CHOSEN_GROUP`]'s queue 0.
fn chosen(ch: &GroupTopic) -> &BTreeMap<u64, Inflight> {
    static EMPTY: BTreeMap<u64, Inflight> = BTreeMap::new();
    ch.queues.get(&0).map_or(&EMPTY, |q| &q.inflight)
}
