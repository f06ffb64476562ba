//! ReceiveMessage (with long polling), AckMessage and ChangeInvisibleDuration.
//!
//! A receive takes the (group, topic) lock, picks messages (expired in-flight
//! ones first, then new ones from the scan cursor), marks them in flight,
//! hands one state record (plus any dead letters) to the log writer while
//! still holding the lock, and answers once that record is durable. So no
//! message is in flight to two consumers at once, and the log replays to the
//! same state.

use std::collections::HashSet;
use std::time::Duration;

use crate::clock::Instant;

use sofamq_proto::v2::{
    AckMessageRequest, AckMessageResponse, AckMessageResultEntry, ChangeInvisibleDurationRequest,
    Code, Message, ReceiveMessageRequest, Status,
};
use sofamq_store::{CqEntry, NewRecord, Record, Store, StoreError};
use tokio_util::sync::CancellationToken;

use super::filter::TagFilter;
use super::receipt::{self, Receipt};
use super::records::Op;
use super::request::{duration_ms, resource_name};
use super::state::{GroupTopic, Inflight};
use super::wire::{self, Delivery};
use super::{Consumers, dlq, group_key};
use crate::broker::Broker;
use crate::clock::now_ms;
use crate::error::{BrokerError, ok_status};
use crate::mutant::{self, Mutant};
use crate::topics::{PERM_READ, TopicConfig, TopicType};
use crate::validate::{self, keys};

/// What one pass over a (group, topic) produced.
#[derive(Default)]
pub(crate) struct Picked {
    pub ops: Vec<Op>,
    pub out: Vec<(Record, Inflight)>,
    pub dead: Vec<Record>,
    pub need_dlq_topic: bool,
}

/// Parameters of one pick.
pub(crate) struct PickSpec<'a> {
    pub topic: &'a TopicConfig,
    pub filter: &'a TagFilter,
    pub batch: usize,
    pub max_bytes: usize,
    pub invisible_ms: u64,
    pub dlq_ready: bool,
    pub only_queue: Option<u32>,
}

impl Broker {
    pub(crate) fn check_group(&self, group: &str) -> Result<(), BrokerError> {
        validate::check_name(group, self.config().limits.max_name_bytes)
            .map_err(BrokerError::IllegalGroup)
    }

    /// The readable topic `name`, for consumers.
    pub(crate) fn readable_topic(&self, name: &str) -> Result<TopicConfig, BrokerError> {
        validate::check_name(name, self.config().limits.max_name_bytes)
            .map_err(BrokerError::IllegalTopic)?;
        let t = self.topics().get(name).ok_or_else(|| {
            BrokerError::TopicNotFound(format!(
                "'{name}' does not exist on {}",
                self.config().broker_name
            ))
        })?;
        if t.perm & PERM_READ == 0 {
            return Err(BrokerError::Forbidden(format!(
                "topic '{name}' is not readable"
            )));
        }
        Ok(t)
    }

    /// Handles ReceiveMessage: the messages to stream (empty = none arrived
    /// within the long polling timeout).
    pub async fn receive(
        &self,
        req: &ReceiveMessageRequest,
        shutdown: &CancellationToken,
    ) -> Result<Vec<Message>, BrokerError> {
        let cfg = self.consumers().config().clone();
        let group = resource_name(req.group.as_ref()).to_string();
        self.check_group(&group)?;
        // Deliveries are recorded in the log: only a master (with its lease) may.
        self.writable()?;
        let mq = req.message_queue.as_ref();
        let topic = self.readable_topic(resource_name(mq.and_then(|m| m.topic.as_ref())))?;
        let filter =
            TagFilter::parse(req.filter_expression.as_ref()).map_err(BrokerError::IllegalFilter)?;
        if req.batch_size < 0 {
            return Err(BrokerError::BadRequest("batch_size is negative".into()));
        }
        let batch = (req.batch_size.max(1) as u32)
            .min(cfg.max_batch_size)
            .max(1) as usize;
        let invisible_ms =
            duration_ms(req.invisible_duration.as_ref()).unwrap_or(cfg.default_invisible_ms);
        if invisible_ms > cfg.max_invisible_ms {
            return Err(BrokerError::IllegalInvisibleTime(format!(
                "{invisible_ms} ms, the limit is {} ms",
                cfg.max_invisible_ms
            )));
        }
        let long_poll = Duration::from_millis(
            duration_ms(req.long_polling_timeout.as_ref())
                .unwrap_or(0)
                .min(cfg.max_long_polling_ms),
        );
        // FIFO topics keep per-queue order: a client that names a queue reads it.
        let only_queue = match mq {
            Some(m) if m.id >= 0 && topic.topic_type == TopicType::Fifo => Some(m.id as u32),
            _ => None,
        };
        let deadline = Instant::now() + long_poll;
        let poll = Duration::from_millis(cfg.poll_interval_ms.max(1));
        loop {
            let notified = self.consumers().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let spec = PickSpec {
                topic: &topic,
                filter: &filter,
                batch,
                max_bytes: cfg.max_batch_bytes,
                invisible_ms,
                dlq_ready: false,
                only_queue,
            };
            let got = self.receive_once(&group, spec).await?;
            let now = Instant::now();
            if !got.is_empty() || now >= deadline || shutdown.is_cancelled() {
                return Ok(got);
            }
            let wait = (deadline - now).min(poll);
            tokio::select! {
                biased;
                () = &mut notified => {}
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    async fn receive_once(
        &self,
        group: &str,
        mut spec: PickSpec<'_>,
    ) -> Result<Vec<Message>, BrokerError> {
        let consumers = self.consumers();
        let secret = consumers.secret().await?;
        let dlq_name = dlq::dlq_topic(group);
        spec.dlq_ready = self.topics().get(&dlq_name).is_some();
        let Some(gt) = consumers.group_topic(group, &spec.topic.name, true)? else {
            return Ok(Vec::new());
        };
        let (picked, pending) = {
            let mut g = gt.lock();
            let picked = pick(self, &mut g, &spec)?;
            let pending = if picked.ops.is_empty() {
                None
            } else {
                let mut recs: Vec<NewRecord> = picked
                    .dead
                    .iter()
                    .map(|r| dlq::dead_letter(r, group, &dlq_name))
                    .collect();
                recs.push(Consumers::ops_record(group, &spec.topic.name, &picked.ops));
                Some(consumers.enqueue(recs))
            };
            (picked, pending)
        };
        if let Some(p) = pending {
            p.wait(self.persist_timeout()).await?;
            if !picked.dead.is_empty() {
                tracing::warn!(
                    %group,
                    topic = %spec.topic.name,
                    count = picked.dead.len(),
                    "messages moved to the dead-letter topic after max attempts"
                );
            }
        }
        if picked.need_dlq_topic {
            self.create_dlq_topic(&dlq_name).await?;
        }
        let host = self.config().broker_name.clone();
        Ok(picked
            .out
            .iter()
            .map(|(rec, e)| {
                let handle = receipt::encode(
                    &secret,
                    group,
                    &spec.topic.name,
                    Receipt {
                        epoch: self.store().current_epoch(),
                        queue: rec.queue_id,
                        offset: rec.queue_offset,
                        generation: e.generation,
                    },
                );
                wire::to_wire(
                    rec,
                    spec.topic.topic_type,
                    &host,
                    &Delivery {
                        receipt_handle: Some(handle),
                        attempt: e.attempt,
                        invisible_ms: Some(spec.invisible_ms),
                    },
                )
            })
            .collect())
    }

    pub(crate) fn persist_timeout(&self) -> Duration {
        Duration::from_millis(self.config().limits.persist_timeout_ms)
    }

    /// Handles AckMessage: one status per entry; all acks of the request go
    /// to the log as one record.
    pub async fn ack(&self, req: AckMessageRequest) -> AckMessageResponse {
        let fail = |e: BrokerError| AckMessageResponse {
            status: Some(e.status()),
            entries: Vec::new(),
        };
        let group = resource_name(req.group.as_ref()).to_string();
        let topic = resource_name(req.topic.as_ref()).to_string();
        if let Err(e) = self.check_group(&group).and_then(|()| self.writable()) {
            return fail(e);
        }
        if let Err(e) = validate::check_name(&topic, self.config().limits.max_name_bytes) {
            return fail(BrokerError::IllegalTopic(e));
        }
        let max = self.consumers().config().max_ack_entries;
        if req.entries.is_empty() || req.entries.len() > max {
            return fail(BrokerError::BadRequest(format!(
                "{} ack entries, 1..={max} allowed",
                req.entries.len()
            )));
        }
        let mut statuses: Vec<Result<(), BrokerError>> = req
            .entries
            .iter()
            .map(|_| {
                Err(BrokerError::InvalidReceiptHandle(
                    "unknown receipt handle".into(),
                ))
            })
            .collect();
        let consumers = self.consumers();
        let secret = consumers.existing_secret();
        let gt = consumers.group_topic(&group, &topic, false).ok().flatten();
        let mut pending = None;
        if let (Some(secret), Some(gt)) = (secret, gt) {
            let mut g = gt.lock();
            let mut ops = Vec::new();
            for (i, e) in req.entries.iter().enumerate() {
                statuses[i] = match receipt::decode(&secret, &group, &topic, &e.receipt_handle)
                    .and_then(|r| self.receipt_epoch_ok(r))
                {
                    Err(m) => Err(BrokerError::InvalidReceiptHandle(m)),
                    Ok(r) => match g.current(r.queue, r.offset, r.generation) {
                        None => Err(BrokerError::InvalidReceiptHandle(
                            "receipt handle is stale (acked, nacked or redelivered)".into(),
                        )),
                        Some(_) => {
                            let op = Op::Done {
                                queue: r.queue,
                                offset: r.offset,
                            };
                            g.apply(&op);
                            ops.push(op);
                            Ok(())
                        }
                    },
                };
            }
            if !ops.is_empty() {
                pending =
                    Some(consumers.enqueue(vec![Consumers::ops_record(&group, &topic, &ops)]));
            }
        }
        if let Some(p) = pending
            && let Err(e) = p.wait(self.persist_timeout()).await
        {
            tracing::warn!(%group, %topic, error = %e, "ack not persisted");
            for s in statuses.iter_mut().filter(|s| s.is_ok()) {
                *s = Err(BrokerError::MasterPersistence(e.to_string()));
            }
        }
        let entries: Vec<AckMessageResultEntry> = req
            .entries
            .iter()
            .zip(statuses)
            .map(|(e, s)| AckMessageResultEntry {
                message_id: e.message_id.clone(),
                receipt_handle: e.receipt_handle.clone(),
                status: Some(match s {
                    Ok(()) => ok_status(),
                    Err(e) => e.status(),
                }),
            })
            .collect();
        AckMessageResponse {
            status: Some(overall(entries.iter().map(|e| e.status.as_ref()))),
            entries,
        }
    }

    /// Handles ChangeInvisibleDuration (extend, or nack with a backoff):
    /// returns the new receipt handle; the old one becomes stale.
    pub async fn change_invisible(
        &self,
        req: &ChangeInvisibleDurationRequest,
    ) -> Result<String, BrokerError> {
        let group = resource_name(req.group.as_ref());
        let topic = resource_name(req.topic.as_ref());
        self.check_group(group)?;
        self.writable()?;
        let cfg = self.consumers().config();
        let ms = duration_ms(req.invisible_duration.as_ref()).ok_or_else(|| {
            BrokerError::IllegalInvisibleTime("invisible_duration is missing".into())
        })?;
        if ms > cfg.max_invisible_ms {
            return Err(BrokerError::IllegalInvisibleTime(format!(
                "{ms} ms, the limit is {} ms",
                cfg.max_invisible_ms
            )));
        }
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
        let (generation, pending) = {
            let mut g = gt.lock();
            if g.current(r.queue, r.offset, r.generation).is_none() {
                return Err(BrokerError::InvalidReceiptHandle(
                    "receipt handle is stale (acked, nacked or redelivered)".into(),
                ));
            }
            let generation = g.take_generation();
            let op = Op::Change {
                queue: r.queue,
                offset: r.offset,
                generation,
                visible_at_ms: now_ms().saturating_add(ms as i64),
            };
            g.apply(&op);
            let p = consumers.enqueue(vec![Consumers::ops_record(group, topic, &[op])]);
            (generation, p)
        };
        pending.wait(self.persist_timeout()).await?;
        Ok(receipt::encode(
            &secret,
            group,
            topic,
            Receipt {
                epoch: self.store().current_epoch(),
                queue: r.queue,
                offset: r.offset,
                generation,
            },
        ))
    }
}

/// OK when all are OK, the one status for one entry, MULTIPLE_RESULTS when mixed.
pub(crate) fn overall<'a>(statuses: impl Iterator<Item = Option<&'a Status>>) -> Status {
    let v: Vec<Status> = statuses
        .map(|s| s.cloned().unwrap_or_else(ok_status))
        .collect();
    let ok = Code::Ok as i32;
    if v.iter().all(|s| s.code == ok) {
        return ok_status();
    }
    if v.iter().all(|s| s.code == v[0].code) {
        return v[0].clone();
    }
    Status {
        code: Code::MultipleResults as i32,
        message: "some entries failed; see each entry".into(),
    }
}

/// An in-flight message read again (for redelivery or the dead-letter queue).
enum Reread {
    Record(Record),
    /// Still in the log but above the readable offset: a master restarted with the
    /// replication limit it had persisted, and its slaves have not acked this far again.
    NotYet,
    /// No longer in the log (cut by a truncation).
    Gone,
}

fn read_one(b: &Broker, topic: &str, queue: u32, offset: u64) -> Result<Reread, BrokerError> {
    let store = b.store();
    let cq = |e: StoreError| BrokerError::Internal(format!("consume queue read: {e}"));
    let Some(e) = queue_entries(store, topic, queue, offset, 1)
        .map_err(cq)?
        .into_iter()
        .next()
    else {
        let there = !store
            .read_queue_entries_below(topic, queue, offset, 1, store.durable_offset())
            .map_err(cq)?
            .is_empty();
        return Ok(if there { Reread::NotYet } else { Reread::Gone });
    };
    let r = store
        .read_at(e.log_offset)
        .map_err(|e| BrokerError::Internal(format!("log read: {e}")))?;
    Ok(Reread::Record(r))
}

/// The consume-queue entries a receive may deliver: only records below the store's readable
/// offset (durable here and, on a replicated master, acked by the in-sync slaves), so a
/// consumer never sees a record a failover could lose. The simulator's broken variant
/// [`Mutant::DeliverAboveReplicated`] reads up to the local durable offset instead.
fn queue_entries(
    store: &Store,
    topic: &str,
    queue: u32,
    from: u64,
    max: usize,
) -> Result<Vec<CqEntry>, StoreError> {
    if mutant::active(Mutant::DeliverAboveReplicated) {
        return store.read_queue_entries_below(topic, queue, from, max, store.durable_offset());
    }
    store.read_queue_entries(topic, queue, from, max)
}

fn record_key(rec: &Record) -> u64 {
    rec.properties
        .iter()
        .find(|(k, _)| k == keys::GROUP)
        .map(|(_, v)| group_key(v))
        .unwrap_or(0)
}

/// Picks messages for one receive and applies the resulting ops to `g`.
pub(crate) fn pick(
    b: &Broker,
    g: &mut GroupTopic,
    spec: &PickSpec<'_>,
) -> Result<Picked, BrokerError> {
    let cfg = b.consumers().config();
    let topic = spec.topic;
    let fifo = topic.topic_type == TopicType::Fifo;
    let now = now_ms();
    let visible_at = now.saturating_add(spec.invisible_ms as i64);
    let n = topic.queue_count.max(1);
    let queues: Vec<u32> = match spec.only_queue {
        Some(q) if q < n => vec![q],
        Some(_) => Vec::new(),
        None => {
            let start = b.consumers().next_cursor() % n;
            (0..n).map(|i| (start + i) % n).collect()
        }
    };
    let mut p = Picked::default();
    let mut bytes = 0usize;
    for q in queues {
        if p.out.len() >= spec.batch {
            break;
        }
        let mut ops = Vec::new();
        let mut seen: HashSet<u64> = HashSet::new();
        let qs = g.queues.entry(q).or_default();
        // 1. In-flight messages whose invisibility ended, lowest offset first.
        let mut again = Vec::new();
        let mut dead = Vec::new();
        for (&off, e) in &qs.inflight {
            if p.out.len() + again.len() >= spec.batch {
                break;
            }
            if e.visible_at_ms > now {
                if fifo && e.key != 0 {
                    seen.insert(e.key);
                }
                continue;
            }
            if fifo && e.key != 0 && seen.contains(&e.key) {
                continue;
            }
            if e.attempt >= cfg.max_attempts {
                if spec.dlq_ready {
                    dead.push(off);
                    continue;
                }
                p.need_dlq_topic = true;
                if fifo && e.key != 0 {
                    seen.insert(e.key);
                }
                continue;
            }
            if fifo && e.key != 0 {
                seen.insert(e.key);
            }
            again.push((off, *e));
        }
        for off in dead {
            match read_one(b, &topic.name, q, off)? {
                Reread::Record(rec) => p.dead.push(rec),
                // Left in flight: dead-lettered once readable again.
                Reread::NotYet => continue,
                Reread::Gone => {}
            }
            ops.push(Op::Done {
                queue: q,
                offset: off,
            });
        }
        let mut gen_needed = Vec::new();
        for (off, e) in again {
            match read_one(b, &topic.name, q, off)? {
                Reread::Record(rec) => {
                    bytes += rec.body.len();
                    gen_needed.push((rec, e.attempt + 1, e.key));
                }
                // Left in flight: redelivered once readable again.
                Reread::NotYet => {}
                Reread::Gone => ops.push(Op::Done {
                    queue: q,
                    offset: off,
                }),
            }
        }
        // 2. New messages from the scan cursor.
        let mut scan = qs.scan;
        let inflight = qs.inflight.len() + gen_needed.len();
        let room = cfg.max_inflight_per_queue.saturating_sub(inflight);
        let want = (spec.batch - p.out.len())
            .saturating_sub(gen_needed.len())
            .min(room);
        if want > 0 {
            let entries = queue_entries(
                b.store(),
                &topic.name,
                q,
                qs.scan,
                cfg.max_scan_per_queue.max(1),
            )
            .map_err(|e| BrokerError::Internal(format!("consume queue read: {e}")))?;
            let mut taken = 0usize;
            for (i, e) in entries.iter().enumerate() {
                let off = qs.scan + i as u64;
                if !spec.filter.may_match(e.tag_hash) {
                    scan = off + 1;
                    continue;
                }
                let rec = b
                    .store()
                    .read_at(e.log_offset)
                    .map_err(|e| BrokerError::Internal(format!("log read: {e}")))?;
                if !spec.filter.matches(&rec.tag) {
                    scan = off + 1;
                    continue;
                }
                let key = if fifo { record_key(&rec) } else { 0 };
                if key != 0 && !seen.insert(key) {
                    // An earlier message of this group is in flight: wait for it.
                    break;
                }
                if !(p.out.is_empty() && gen_needed.is_empty())
                    && bytes + rec.body.len() > spec.max_bytes
                {
                    break;
                }
                bytes += rec.body.len();
                scan = off + 1;
                gen_needed.push((rec, 1, key));
                taken += 1;
                if taken >= want {
                    break;
                }
            }
        }
        if scan > qs.scan {
            ops.push(Op::Scan {
                queue: q,
                offset: scan,
            });
        }
        for (rec, attempt, key) in gen_needed {
            let generation = g.take_generation();
            let e = Inflight {
                attempt,
                generation,
                visible_at_ms: visible_at,
                key,
            };
            ops.push(Op::Deliver {
                queue: q,
                offset: rec.queue_offset,
                attempt,
                generation,
                visible_at_ms: visible_at,
                key,
            });
            p.out.push((rec, e));
        }
        for op in &ops {
            g.apply(op);
        }
        p.ops.extend(ops);
    }
    Ok(p)
}

/// QueryAssignment's answer from the topic's route: like the RocketMQ 5
/// proxy, one assignment per readable master broker (queue id -1: the broker
/// serves all its queues), or per queue for FIFO topics (queue order matters).
pub fn assignments(
    route: sofamq_proto::v2::QueryRouteResponse,
    fifo: bool,
) -> sofamq_proto::v2::QueryAssignmentResponse {
    use sofamq_proto::v2::{Assignment, Permission, QueryAssignmentResponse};
    let ok = route
        .status
        .as_ref()
        .is_none_or(|s| s.code == Code::Ok as i32);
    if !ok {
        return QueryAssignmentResponse {
            status: route.status,
            assignments: Vec::new(),
        };
    }
    let mut out: Vec<Assignment> = Vec::new();
    for mq in route.message_queues {
        let readable = matches!(
            Permission::try_from(mq.permission),
            Ok(Permission::Read | Permission::ReadWrite)
        );
        let Some(b) = mq.broker.as_ref() else {
            continue;
        };
        if !readable || b.id != 0 {
            continue;
        }
        let mut mq = mq.clone();
        if !fifo {
            mq.id = -1;
        }
        let dup = out.iter().any(|a| {
            a.message_queue.as_ref().is_some_and(|m| {
                m.id == mq.id
                    && m.broker.as_ref().map(|b| &b.name) == mq.broker.as_ref().map(|b| &b.name)
            })
        });
        if !dup {
            out.push(Assignment {
                message_queue: Some(mq),
            });
        }
    }
    QueryAssignmentResponse {
        status: Some(ok_status()),
        assignments: out,
    }
}
