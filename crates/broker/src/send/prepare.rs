//! Stage 2: validate each message against its topic ([`crate::validate`]), choose its
//! queue, and build its record. A refused message gets its own status; the others go on.

use sofamq_proto::v2::{Message, MessageType, SendResultEntry};
use sofamq_store::NewRecord;

use super::batch::{Batch, Dup, Special};
use super::dedup::Repeats;
use super::queue;
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::topics::{TopicConfig, now_ms};
use crate::validate::{self, Checked};

/// Validates every message of a request: the accepted ones (each the first of its id in
/// the request) with their record and window key, the refused ones with their status.
pub(super) fn prepare_all(broker: &Broker, messages: Vec<Message>) -> Batch {
    let n = messages.len();
    let mut batch = Batch::new(n);
    let dedup = broker.repl().dedup();
    let mut repeats = Repeats::new(n);
    // Consecutive messages of one topic (the usual batch) look the topic up once.
    let mut topic_cache: Option<TopicConfig> = None;
    for (i, msg) in messages.into_iter().enumerate() {
        match prepare(broker, msg, &mut topic_cache) {
            Ok((message_id, record, sp)) => {
                if let Some(sp) = sp {
                    batch.special.resize_with(i + 1, || None);
                    batch.special[i] = Some(sp);
                }
                let key = dedup.key(&record.topic, &message_id);
                batch.entries.push(SendResultEntry {
                    status: None,
                    message_id,
                    ..Default::default()
                });
                if let Some(first) = repeats.earlier(&batch.accepted, &key) {
                    batch.dups.push((i, Dup::SameRequest(first)));
                    continue;
                }
                batch.accepted.push((i, record, key));
            }
            Err((message_id, e)) => {
                rejected(&e);
                batch.entries.push(SendResultEntry {
                    status: Some(e.status()),
                    message_id,
                    ..Default::default()
                });
            }
        }
    }
    batch
}

/// Validates one message and builds its record. Returns its message id with the record,
/// or the id (empty when absent) with the reason it was refused.
fn prepare(
    broker: &Broker,
    mut msg: Message,
    topic_cache: &mut Option<TopicConfig>,
) -> Result<(String, NewRecord, Option<Special>), (String, BrokerError)> {
    let topic = match topic_of(broker, &msg, topic_cache) {
        Ok(t) => t,
        Err(e) => return Err((id_of(&msg), e)),
    };
    let checked = match validate::check_message(&mut msg, topic, &broker.config().limits) {
        Ok(c) => c,
        Err(e) => return Err((id_of(&msg), e)),
    };
    let Checked {
        message_type,
        message_group,
        tag,
        mut properties,
        message_id,
        deliver_at_ms,
    } = checked;
    let special = match special_of(broker, topic, message_type, deliver_at_ms) {
        Ok(s) => s,
        Err(e) => return Err((message_id, e)),
    };
    let queue_id = queue::choose(broker.cursor(), special.is_some(), &message_group, topic);
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

/// The message's id as sent (empty when absent), for the answer to a refused message.
fn id_of(msg: &Message) -> String {
    msg.system_properties
        .as_ref()
        .map(|s| s.message_id.clone())
        .unwrap_or_default()
}

/// The message's topic: from the cache when the previous message named it, else checked
/// and looked up (TOPIC_NOT_FOUND, ILLEGAL_TOPIC).
fn topic_of<'c>(
    broker: &Broker,
    msg: &Message,
    topic_cache: &'c mut Option<TopicConfig>,
) -> Result<&'c TopicConfig, BrokerError> {
    let topic_name = msg
        .topic
        .as_ref()
        .map(|t| t.name.as_str())
        .unwrap_or_default();
    // The name check is a pure function of the name, so a cached topic (which passed it
    // under the same name) needs neither the check nor the table lookup again.
    let cached = topic_cache.as_ref().is_some_and(|t| t.name == topic_name);
    if !cached {
        validate::check_topic_name(topic_name, &broker.config().limits)?;
        let Some(topic) = broker.topics().get(topic_name) else {
            return Err(BrokerError::TopicNotFound(format!(
                "'{topic_name}' does not exist on {}",
                broker.config().broker_name
            )));
        };
        *topic_cache = Some(topic);
    }
    topic_cache
        .as_ref()
        .ok_or_else(|| BrokerError::Internal("topic cache empty".into()))
}

/// Whether the message goes to a reserved queue: a DELAY message due later (within
/// `timer.max_delay_ms`) to the timers, a TRANSACTION message (while the broker has room
/// for one more open transaction) to the half messages.
fn special_of(
    broker: &Broker,
    topic: &TopicConfig,
    message_type: MessageType,
    deliver_at_ms: Option<i64>,
) -> Result<Option<Special>, BrokerError> {
    let now = now_ms();
    match (message_type, deliver_at_ms) {
        (MessageType::Delay, Some(due)) if due > now => {
            let max = broker.timers().config().max_delay_ms;
            if due.saturating_sub(now) as u64 > max {
                return Err(BrokerError::IllegalDeliveryTime(format!(
                    "delivery time {due} is {} ms ahead; the limit is {max} ms",
                    due - now
                )));
            }
            Ok(Some(Special::Timer {
                topic: topic.name.clone(),
                due_ms: due as u64,
            }))
        }
        (MessageType::Transaction, _) => {
            broker.txns().check_capacity()?;
            Ok(Some(Special::Half))
        }
        _ => Ok(None),
    }
}

fn rejected(e: &BrokerError) {
    tracing::debug!(
        code = e.code() as i32,
        retry = ?e.info().retry,
        error = %e,
        "message rejected"
    );
}
