//! Offset-based consumption for clients that manage offsets themselves:
//! PullMessage, UpdateOffset, GetOffset, QueryOffset. A group's stored
//! offset is the same consumed-up-to offset the receive path keeps, and it
//! goes through the log (a `Reset` op).

use std::time::Duration;

use crate::clock::Instant;

use sofamq_proto::v2::{
    GetOffsetRequest, Message, MessageQueue, PullMessageRequest, QueryOffsetPolicy,
    QueryOffsetRequest, UpdateOffsetRequest,
};
use tokio_util::sync::CancellationToken;

use super::Consumers;
use super::filter::TagFilter;
use super::records::Op;
use super::request::{duration_ms, resource_name};
use super::wire::{self, Delivery};
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::topics::TopicConfig;

impl Broker {
    fn queue_of(&self, mq: Option<&MessageQueue>) -> Result<(TopicConfig, u32), BrokerError> {
        let topic = self.readable_topic(resource_name(mq.and_then(|m| m.topic.as_ref())))?;
        let id = mq.map(|m| m.id).unwrap_or(-1);
        if id < 0 || id as u32 >= topic.queue_count {
            return Err(BrokerError::BadRequest(format!(
                "queue {id} does not exist in topic '{}' ({} queues)",
                topic.name, topic.queue_count
            )));
        }
        Ok((topic, id as u32))
    }

    /// Handles PullMessage: messages from `offset` (tag-filtered) and the
    /// offset to pull next.
    pub async fn pull(
        &self,
        req: &PullMessageRequest,
        shutdown: &CancellationToken,
    ) -> Result<(Vec<Message>, i64), BrokerError> {
        let cfg = self.consumers().config().clone();
        self.check_group(resource_name(req.group.as_ref()))?;
        let (topic, q) = self.queue_of(req.message_queue.as_ref())?;
        let filter =
            TagFilter::parse(req.filter_expression.as_ref()).map_err(BrokerError::IllegalFilter)?;
        let from = u64::try_from(req.offset)
            .map_err(|_| BrokerError::BadRequest("offset is negative".into()))?;
        let batch = (req.batch_size.max(1) as u32).min(cfg.max_batch_size) as usize;
        let long_poll = Duration::from_millis(
            duration_ms(req.long_polling_timeout.as_ref())
                .unwrap_or(0)
                .min(cfg.max_long_polling_ms),
        );
        let deadline = Instant::now() + long_poll;
        let poll = Duration::from_millis(cfg.poll_interval_ms.max(1));
        let host = self.config().broker_name.clone();
        loop {
            let notified = self.consumers().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let max = self.store().queue_offsets(&topic.name, q).1;
            if from > max {
                return Err(BrokerError::BadRequest(format!(
                    "offset {from} is past the end of the queue ({max})"
                )));
            }
            let entries = self
                .store()
                .read_queue_entries(&topic.name, q, from, cfg.max_scan_per_queue.max(1))
                .map_err(|e| BrokerError::Internal(format!("consume queue read: {e}")))?;
            let mut out = Vec::new();
            let mut next = from;
            let mut bytes = 0usize;
            for e in &entries {
                if out.len() >= batch {
                    break;
                }
                if filter.may_match(e.tag_hash) {
                    let rec = self
                        .store()
                        .read_at(e.log_offset)
                        .map_err(|e| BrokerError::Internal(format!("log read: {e}")))?;
                    if filter.matches(&rec.tag) {
                        if !out.is_empty() && bytes + rec.body.len() > cfg.max_batch_bytes {
                            break;
                        }
                        bytes += rec.body.len();
                        out.push(wire::to_wire(
                            &rec,
                            topic.topic_type,
                            &host,
                            &Delivery {
                                attempt: 1,
                                ..Default::default()
                            },
                        ));
                    }
                }
                next += 1;
            }
            let now = Instant::now();
            if !out.is_empty() || now >= deadline || shutdown.is_cancelled() {
                return Ok((out, next as i64));
            }
            tokio::select! {
                biased;
                () = &mut notified => {}
                () = tokio::time::sleep((deadline - now).min(poll)) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    /// Handles UpdateOffset: the group's consumed-up-to offset of the queue
    /// (through the log).
    pub async fn update_offset(&self, req: &UpdateOffsetRequest) -> Result<(), BrokerError> {
        let group = resource_name(req.group.as_ref());
        self.check_group(group)?;
        self.writable()?;
        let (topic, q) = self.queue_of(req.message_queue.as_ref())?;
        let offset = u64::try_from(req.offset)
            .map_err(|_| BrokerError::BadRequest("offset is negative".into()))?;
        let max = self.store().queue_offsets(&topic.name, q).1;
        if offset > max {
            return Err(BrokerError::BadRequest(format!(
                "offset {offset} is past the end of the queue ({max})"
            )));
        }
        let consumers = self.consumers();
        let Some(gt) = consumers.group_topic(group, &topic.name, true)? else {
            return Ok(());
        };
        let pending = {
            let mut g = gt.lock();
            let op = Op::Reset { queue: q, offset };
            g.apply(&op);
            consumers.enqueue(vec![Consumers::ops_record(group, &topic.name, &[op])])
        };
        pending.wait(self.persist_timeout()).await?;
        consumers.wake();
        Ok(())
    }

    /// The admin ResetOffset: moves `group`'s offset on every queue of `topic` to its
    /// earliest (`to` = 1) or latest (2) offset, or to the first message stored at or
    /// after `timestamp_ms` (3). One record in the log carries every queue's `Reset`.
    pub async fn reset_group_offsets(
        &self,
        group: &str,
        topic: &str,
        to: u32,
        timestamp_ms: i64,
    ) -> Result<Vec<(u32, u64)>, BrokerError> {
        self.check_group(group)?;
        self.writable()?;
        let cfg = self.readable_topic(topic)?;
        let mut targets = Vec::with_capacity(cfg.queue_count as usize);
        for q in 0..cfg.queue_count {
            let (min, max) = self.store().queue_offsets(&cfg.name, q);
            let offset = match to {
                1 => min,
                2 => max,
                3 => self.first_at_or_after(&cfg.name, q, timestamp_ms)?,
                _ => {
                    return Err(BrokerError::BadRequest(
                        "to: 1 (earliest), 2 (latest) or 3 (time)".into(),
                    ));
                }
            };
            targets.push((q, offset));
        }
        let consumers = self.consumers();
        let Some(gt) = consumers.group_topic(group, &cfg.name, true)? else {
            return Ok(Vec::new());
        };
        let pending = {
            let mut g = gt.lock();
            let ops: Vec<Op> = targets
                .iter()
                .map(|&(queue, offset)| Op::Reset { queue, offset })
                .collect();
            for op in &ops {
                g.apply(op);
            }
            consumers.enqueue(vec![Consumers::ops_record(group, &cfg.name, &ops)])
        };
        pending.wait(self.persist_timeout()).await?;
        consumers.wake();
        tracing::info!(%group, topic = %cfg.name, to, "consumer group offsets reset");
        Ok(targets)
    }

    /// First offset of queue `q` whose store timestamp is at or after `ts` (binary search).
    fn first_at_or_after(&self, topic: &str, q: u32, ts: i64) -> Result<u64, BrokerError> {
        let (min, max) = self.store().queue_offsets(topic, q);
        let (mut lo, mut hi) = (min, max);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let e = self
                .store()
                .read_queue_entries(topic, q, mid, 1)
                .map_err(|e| BrokerError::Internal(format!("consume queue read: {e}")))?;
            let Some(e) = e.first() else { break };
            let rec = self
                .store()
                .read_at(e.log_offset)
                .map_err(|e| BrokerError::Internal(format!("log read: {e}")))?;
            if rec.store_ts_ms < ts {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Handles GetOffset: the group's consumed-up-to offset of the queue.
    pub fn get_offset(&self, req: &GetOffsetRequest) -> Result<i64, BrokerError> {
        let group = resource_name(req.group.as_ref());
        self.check_group(group)?;
        let (topic, q) = self.queue_of(req.message_queue.as_ref())?;
        let gt = self.consumers().group_topic(group, &topic.name, false)?;
        let off = gt.and_then(|gt| gt.lock().queues.get(&q).map(|s| s.committed()));
        off.map(|o| o as i64).ok_or_else(|| {
            BrokerError::OffsetNotFound(format!(
                "group '{group}' has no offset on {}/{q}",
                topic.name
            ))
        })
    }

    /// Handles QueryOffset: BEGINNING, END, or the first message stored at or
    /// after a timestamp.
    pub fn query_offset(&self, req: &QueryOffsetRequest) -> Result<i64, BrokerError> {
        let (topic, q) = self.queue_of(req.message_queue.as_ref())?;
        let (min, max) = self.store().queue_offsets(&topic.name, q);
        let policy = QueryOffsetPolicy::try_from(req.query_offset_policy)
            .map_err(|_| BrokerError::BadRequest("unknown query_offset_policy".into()))?;
        Ok(match policy {
            QueryOffsetPolicy::Beginning => min as i64,
            QueryOffsetPolicy::End => max as i64,
            QueryOffsetPolicy::Timestamp => {
                let ts = req
                    .timestamp
                    .as_ref()
                    .map(|t| t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000))
                    .ok_or_else(|| BrokerError::BadRequest("timestamp is missing".into()))?;
                self.first_at_or_after(&topic.name, q, ts)? as i64
            }
        })
    }
}
