//! The send path: validate every message, pick its queue, append the accepted
//! ones to the log in one group-commit batch, and answer one entry per message
//! in request order. Acked only once the in-sync slaves hold it too (see [`crate::repl`]);
//! a message id already stored gets its original receipt and stores nothing new.

use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sofamq_proto::v2::{
    Code, Message, MessageType, SendMessageRequest, SendMessageResponse, SendResultEntry, Status,
};
use sofamq_store::NewRecord;

use crate::broker::Broker;
use crate::error::{BrokerError, ok_status};
use crate::repl::dedup::{self, Dedup, HashKeyed, Key, Lookup, Receipt};
use crate::topics::{TopicConfig, now_ms};
use crate::validate::{self, Checked};

/// A message stored on a reserved queue instead of its topic.
enum Special {
    /// A DELAY message due later.
    Timer { topic: String, due_ms: u64 },
    /// A transactional half message.
    Half,
}

/// A message whose id this broker has seen: answered with the original receipt.
enum Dup {
    /// In the window already.
    Stored(Receipt),
    /// Another request is storing it now.
    InFlight(dedup::Pending),
    /// An earlier message of the same request has the same id.
    SameRequest(usize),
}

/// A store append that outlived the send's persist timeout.
type PendingAppend = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<Vec<sofamq_store::Appended>, sofamq_store::StoreError>,
            > + Send,
    >,
>;

/// Round-robin cursor for queue selection of non-FIFO messages.
#[derive(Default)]
pub struct QueueCursor(AtomicU64);

impl QueueCursor {
    pub(crate) fn next(&self, queue_count: u32) -> u32 {
        (self.0.fetch_add(1, Ordering::Relaxed) % u64::from(queue_count.max(1))) as u32
    }
}

/// Stable FNV-1a 64 hash so one message group always maps to the same queue.
fn group_queue(group: &str, queue_count: u32) -> u32 {
    // `write` the bytes: `str::hash` would append a 0xff byte and move every group.
    let mut h = fnv::FnvHasher::default();
    h.write(group.as_bytes());
    (h.finish() % u64::from(queue_count.max(1))) as u32
}

impl Broker {
    /// Handles one SendMessage request (one or many messages).
    pub async fn send(&self, req: SendMessageRequest) -> SendMessageResponse {
        let limits = &self.config().limits;
        if req.messages.is_empty() {
            return whole_failure(&BrokerError::BadRequest("no messages in request".into()));
        }
        // One topic per request, as RocketMQ requires: a batch is stored whole or not at
        // all, never its valid part.
        if let Some(w) = req.messages.windows(2).find(|w| w[0].topic != w[1].topic) {
            let name = |m: &Message| m.topic.as_ref().map(|t| t.name.clone()).unwrap_or_default();
            return whole_failure(&BrokerError::MessageCorrupted(format!(
                "the messages of one request name different topics ({:?} and {:?}); send one \
                 request per topic",
                name(&w[0]),
                name(&w[1])
            )));
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
        if req.messages.len() > 1
            && req.messages.iter().any(|m| {
                m.system_properties
                    .as_ref()
                    .is_some_and(|s| s.message_type == MessageType::Transaction as i32)
            })
        {
            return whole_failure(&BrokerError::MessageTypeMismatch(
                "a TRANSACTION message must be sent alone, one per request".into(),
            ));
        }
        // Bounded memory: the request's bytes stay counted until it is durable
        // (and replicated); beyond the budget the client is told to back off
        // instead of piling up behind a slow disk or slave.
        let size: usize = req
            .messages
            .iter()
            .map(|m| {
                m.body.len()
                    + m.user_properties
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
            })
            .sum();
        let permits = u32::try_from(size.max(1)).unwrap_or(u32::MAX);
        let _inflight = match self.send_bytes().clone().try_acquire_many_owned(permits) {
            Ok(p) => p,
            Err(_) => {
                return whole_failure(&BrokerError::TooManyRequests(format!(
                    "{size} bytes would exceed the broker's in-flight send budget of {} bytes",
                    limits.max_inflight_send_bytes
                )));
            }
        };
        // One check on replication: master, log not fenced, lease held, enough in sync.
        let admitted = match self.repl().admit() {
            Ok(a) => a,
            Err(e) => return whole_failure(&e),
        };

        let dedup = self.repl().dedup();
        let n = req.messages.len();
        let mut entries: Vec<SendResultEntry> = Vec::with_capacity(n);
        // Accepted messages, each the first of its id in this request: slot, record, window key.
        let mut accepted: Vec<(usize, NewRecord, Key)> = Vec::with_capacity(n);
        // Timer and half messages, by slot: they get a recall handle / transaction id.
        let mut special: Vec<Option<Special>> = Vec::new();
        let mut dups: Vec<(usize, Dup)> = Vec::new();
        // Only a request of several messages can repeat an id within itself: key hash →
        // index in `accepted` of the first message with that key (the full key is compared
        // on a hit).
        let mut in_request: HashKeyed<usize> = HashKeyed::default();
        if n > 1 {
            in_request.reserve(n);
        }
        // Consecutive messages of one topic (the usual batch) look the topic up once.
        let mut topic_cache: Option<TopicConfig> = None;
        for (i, msg) in req.messages.into_iter().enumerate() {
            match self.prepare(msg, &mut topic_cache) {
                Ok((message_id, record, sp)) => {
                    if let Some(sp) = sp {
                        special.resize_with(i + 1, || None);
                        special[i] = Some(sp);
                    }
                    let key = dedup.key(&record.topic, &message_id);
                    entries.push(SendResultEntry {
                        status: None,
                        message_id,
                        ..Default::default()
                    });
                    if n > 1 {
                        match in_request.entry(key.hash()) {
                            std::collections::hash_map::Entry::Occupied(o) => {
                                let (first, _, first_key) = &accepted[*o.get()];
                                if *first_key == key {
                                    dups.push((i, Dup::SameRequest(*first)));
                                    continue;
                                }
                                // A hash collision with another id: not a repeat.
                            }
                            std::collections::hash_map::Entry::Vacant(v) => {
                                v.insert(accepted.len());
                            }
                        }
                    }
                    accepted.push((i, record, key));
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
        drop(in_request);

        // The window is asked about the whole request under one lock.
        let looked = dedup.lookup_all(accepted.iter().map(|(_, _, key)| key));
        let mut records = Vec::with_capacity(accepted.len());
        // The claimed ids, by slot: completed or aborted below.
        let mut claimed: Vec<(usize, Key)> = Vec::with_capacity(accepted.len());
        for ((slot, record, key), lookup) in accepted.into_iter().zip(looked) {
            match lookup {
                Lookup::Stored(r) => dups.push((slot, Dup::Stored(r))),
                Lookup::InFlight(rx) => dups.push((slot, Dup::InFlight(rx))),
                Lookup::Claimed => {
                    records.push(record);
                    claimed.push((slot, key));
                }
            }
        }

        // Stored on this master's disk; acked only once the in-sync slaves cover `need`.
        let mut stored: Vec<usize> = Vec::with_capacity(entries.len());
        let mut need = 0u64;
        if !records.is_empty() {
            let queue_ids: Vec<u32> = records.iter().map(|r| r.queue_id).collect();
            let tally = self.metrics().tally_in(&records);
            match self.append(records).await {
                Ok(appended) => {
                    // No wake-up for the slave streams here: the store's writer wakes them
                    // as soon as the bytes are written (before this fsync completed).
                    self.metrics().commit_in(tally);
                    let mut done = Vec::with_capacity(claimed.len());
                    for (((slot, key), a), queue_id) in
                        claimed.into_iter().zip(appended).zip(queue_ids)
                    {
                        let end = a.log_offset + u64::from(a.size);
                        done.push((
                            key,
                            Receipt {
                                queue_id,
                                queue_offset: a.queue_offset,
                                end,
                            },
                        ));
                        entries[slot].offset = a.queue_offset as i64;
                        need = need.max(end);
                        stored.push(slot);
                    }
                    dedup.complete_all(done);
                }
                Err((err, still_running)) => {
                    tracing::warn!(error = %err, "send not persisted");
                    for (slot, _) in &claimed {
                        entries[*slot].status = Some(err.status());
                    }
                    match still_running {
                        // The append is still queued or being synced and may yet be stored:
                        // its ids stay claimed until it ends, so a retry waits for it and
                        // gets its receipt instead of storing a second copy.
                        Some(append) => {
                            let repl = self.repl().clone();
                            tokio::spawn(async move {
                                let dedup = repl.dedup();
                                match append.await {
                                    Ok(appended) => dedup.complete_all(
                                        claimed.into_iter().zip(appended).zip(queue_ids).map(
                                            |(((_, key), a), queue_id)| {
                                                let end = a.log_offset + u64::from(a.size);
                                                let queue_offset = a.queue_offset;
                                                let r = Receipt {
                                                    queue_id,
                                                    queue_offset,
                                                    end,
                                                };
                                                (key, r)
                                            },
                                        ),
                                    ),
                                    Err(_) => dedup.abort_all(claimed.iter().map(|(_, key)| key)),
                                }
                            });
                        }
                        None => dedup.abort_all(claimed.iter().map(|(_, key)| key)),
                    }
                }
            }
        }
        let mut same_request = Vec::new();
        for (slot, dup) in dups {
            let receipt = match dup {
                Dup::SameRequest(first) => {
                    same_request.push((slot, first));
                    continue;
                }
                Dup::Stored(r) => Some(r),
                Dup::InFlight(rx) => {
                    let wait = Duration::from_millis(self.config().limits.persist_timeout_ms)
                        + self.repl().config().ack_timeout();
                    Dedup::wait(rx, wait).await
                }
            };
            match receipt {
                Some(r) => {
                    tracing::debug!(message_id = %entries[slot].message_id, "duplicate send: original receipt");
                    entries[slot].offset = r.queue_offset as i64;
                    need = need.max(r.end);
                    stored.push(slot);
                }
                None => {
                    entries[slot].status = Some(
                        // The other copy may be stored: "may be stored", not HA_NOT_AVAILABLE.
                        BrokerError::SlavePersistence(
                            "a concurrent send of the same message id was not acked (it may be \
                             stored); retry"
                                .into(),
                        )
                        .status(),
                    );
                }
            }
        }
        if !stored.is_empty() {
            let status = match self.repl().wait_replicated(admitted, need).await {
                Ok(()) => {
                    // A slave's ack may have arrived before this master's fsync (it streams
                    // written bytes), when the readable limit could not cover `need` yet.
                    self.repl().refresh_limit();
                    ok_status()
                }
                Err(e) => {
                    tracing::warn!(error = %e, offset = need, "send stored on the master but not acked");
                    e.status()
                }
            };
            for slot in stored {
                entries[slot].status = Some(status.clone());
            }
        }
        for (slot, first) in same_request {
            entries[slot].status = entries[first].status.clone();
            entries[slot].offset = entries[first].offset;
        }
        if !special.is_empty() {
            self.finish_special(&mut entries, special);
        }
        let status = overall(&entries);
        SendMessageResponse {
            status: Some(status),
            entries,
        }
    }

    /// Validates one message and builds its record. Returns its message id with the record,
    /// or the id (empty when absent) with the reason it was refused.
    fn prepare(
        &self,
        mut msg: Message,
        topic_cache: &mut Option<TopicConfig>,
    ) -> Result<(String, NewRecord, Option<Special>), (String, BrokerError)> {
        let fail = |msg: &Message, e| {
            let id = msg
                .system_properties
                .as_ref()
                .map(|s| s.message_id.clone())
                .unwrap_or_default();
            (id, e)
        };
        let topic_name = msg
            .topic
            .as_ref()
            .map(|t| t.name.as_str())
            .unwrap_or_default();
        let limits = &self.config().limits;
        // The name check is a pure function of the name, so a cached topic (which passed
        // it under the same name) needs neither the check nor the table lookup again.
        let cached = topic_cache.as_ref().is_some_and(|t| t.name == topic_name);
        if !cached {
            if let Err(e) = validate::check_topic_name(topic_name, limits) {
                return Err(fail(&msg, e));
            }
            let Some(topic): Option<TopicConfig> = self.topics().get(topic_name) else {
                let e = BrokerError::TopicNotFound(format!(
                    "'{topic_name}' does not exist on {}",
                    self.config().broker_name
                ));
                return Err(fail(&msg, e));
            };
            *topic_cache = Some(topic);
        }
        let Some(topic) = topic_cache.as_ref() else {
            return Err(fail(
                &msg,
                BrokerError::Internal("topic cache empty".into()),
            ));
        };
        let checked = match validate::check_message(&mut msg, topic, limits) {
            Ok(c) => c,
            Err(e) => return Err(fail(&msg, e)),
        };
        let Checked {
            message_type,
            message_group,
            tag,
            mut properties,
            message_id,
            deliver_at_ms,
        } = checked;
        let now = now_ms();
        let special = match (message_type, deliver_at_ms) {
            (MessageType::Delay, Some(due)) if due > now => {
                let max = self.timers().config().max_delay_ms;
                if due.saturating_sub(now) as u64 > max {
                    return Err((
                        message_id,
                        BrokerError::IllegalDeliveryTime(format!(
                            "delivery time {due} is {} ms ahead; the limit is {max} ms",
                            due - now
                        )),
                    ));
                }
                Some(Special::Timer {
                    topic: topic.name.clone(),
                    due_ms: due as u64,
                })
            }
            (MessageType::Transaction, _) => {
                if let Err(e) = self.txns().check_capacity() {
                    return Err((message_id, e));
                }
                Some(Special::Half)
            }
            _ => None,
        };
        let queue_id = match (&special, &message_group) {
            (Some(_), _) => 0,
            (None, Some(g)) => group_queue(g, topic.queue_count),
            (None, None) => self.cursor().next(topic.queue_count),
        };
        let born_ts_ms = msg
            .system_properties
            .as_ref()
            .and_then(|s| s.born_timestamp.as_ref())
            .map(|t| t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000))
            .unwrap_or_else(now_ms);
        // The message's own topic string equals the table's name: move it, do not copy.
        let mut topic_name = msg.topic.take().map(|t| t.name).unwrap_or_default();
        if let Some(sp) = &special {
            // Stored on a reserved queue, invisible, with the real topic beside it.
            let reserved = match sp {
                Special::Timer { .. } => crate::timer::TIMER_TOPIC,
                Special::Half => crate::txn::HALF_TOPIC,
            };
            let real = std::mem::replace(&mut topic_name, reserved.to_string());
            properties.insert(1, (validate::keys::REAL_TOPIC.to_string(), real));
        }
        let record = NewRecord {
            topic: topic_name,
            queue_id,
            flags: 0,
            tag,
            born_ts_ms,
            properties,
            body: msg.body,
        };
        Ok((message_id, record, special))
    }

    /// Gives stored timer messages their recall handle and half messages their
    /// transaction id, and wakes the services that index them.
    fn finish_special(&self, entries: &mut [SendResultEntry], special: Vec<Option<Special>>) {
        let ok = Code::Ok as i32;
        let mut timers = false;
        let mut halves = false;
        for (e, sp) in entries.iter_mut().zip(special) {
            let (Some(sp), true) = (sp, e.status.as_ref().is_some_and(|s| s.code == ok)) else {
                continue;
            };
            let broker = self.config().broker_name.clone();
            match sp {
                Special::Timer { topic, due_ms } => {
                    timers = true;
                    e.recall_handle = crate::handles::RecallHandle {
                        broker,
                        topic,
                        queue_offset: e.offset as u64,
                        due_ms,
                        message_id: e.message_id.clone(),
                    }
                    .encode();
                }
                Special::Half => {
                    halves = true;
                    e.transaction_id = crate::handles::TransactionId {
                        broker,
                        queue_offset: e.offset as u64,
                        message_id: e.message_id.clone(),
                    }
                    .encode();
                }
            }
        }
        if timers {
            self.timers().wake();
        }
        if halves {
            self.txns().wake();
        }
    }

    /// Appends within `limits.persist_timeout_ms`. A failure comes with the append itself
    /// when it timed out (it is still in the store's queue or fsync and may yet be stored).
    async fn append(
        &self,
        records: Vec<NewRecord>,
    ) -> Result<Vec<sofamq_store::Appended>, (BrokerError, Option<PendingAppend>)> {
        let timeout = Duration::from_millis(self.config().limits.persist_timeout_ms);
        let store = self.store().clone();
        let mut append: PendingAppend = Box::pin(async move { store.append(records).await });
        match tokio::time::timeout(timeout, &mut append).await {
            Ok(r) => r.map_err(|e| (e.into(), None)),
            Err(_) => Err((
                BrokerError::MasterPersistence(format!(
                    "not durable within {} ms",
                    timeout.as_millis()
                )),
                Some(append),
            )),
        }
    }

    fn metrics_rejected(&self, e: &BrokerError) {
        tracing::debug!(
            code = e.code() as i32,
            retry = ?e.info().retry,
            error = %e,
            "message rejected"
        );
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
    let code = |e: &SendResultEntry| e.status.as_ref().map(|s| s.code).unwrap_or(ok);
    if entries.iter().all(|e| code(e) == ok) {
        return ok_status();
    }
    if entries.len() == 1 {
        return entries[0].status.clone().unwrap_or_else(ok_status);
    }
    let first = code(&entries[0]);
    if entries.iter().all(|e| code(e) == first) {
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
        // A message group keeps its queue across broker versions (FIFO order).
        assert_eq!(group_queue("order-42", 8), 4);
        assert_eq!(
            group_queue("order-42", 7),
            (0x7d1d_eb86_a056_62d4_u64 % 7) as u32
        );
        assert_eq!(group_queue("group-1", 16), 6);
        assert_eq!(group_queue("订单-7", 8), 0);
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
