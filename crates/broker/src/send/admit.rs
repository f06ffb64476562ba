//! Stage 1: what refuses a request whole, before any message is looked at. Request-wide
//! rules first (a request fixed only by the client), then the in-flight byte budget
//! (TOO_MANY_REQUESTS), then the one check on replication
//! ([`crate::repl::Replication::admit`]: master, log not fenced, lease, enough replicas in
//! sync; HA_NOT_AVAILABLE).

use sofamq_proto::v2::{Message, MessageType, SendMessageRequest};
use tokio::sync::OwnedSemaphorePermit;

use crate::broker::Broker;
use crate::error::BrokerError;
use crate::limits::Limits;
use crate::repl::{Admission, Refused};

/// A request admitted: its bytes reserved in the budget (until this is dropped, after the
/// answer) and the master term it was admitted in.
pub(super) struct Admitted {
    _bytes: OwnedSemaphorePermit,
    pub admission: Admission,
}

/// A request refused whole: the error answered, and whether this broker is the group's
/// writable master refusing only for too few in-sync replicas
/// ([`crate::repl::Refused::TooFewInSync`]).
pub(super) struct Refusal {
    pub error: BrokerError,
    pub by_writable_master: bool,
}

impl From<BrokerError> for Refusal {
    fn from(error: BrokerError) -> Self {
        Self {
            error,
            by_writable_master: false,
        }
    }
}

/// Admits a request, or says why it is refused whole.
pub(super) fn admit(broker: &Broker, req: &SendMessageRequest) -> Result<Admitted, Refusal> {
    let limits = &broker.config().limits;
    check_request(&req.messages, limits)?;
    let bytes = reserve_bytes(broker, &req.messages, limits)?;
    let admission = broker.repl().admit_or_why().map_err(|r| Refusal {
        by_writable_master: matches!(r, Refused::TooFewInSync(_)),
        error: r.into_error(),
    })?;
    Ok(Admitted {
        _bytes: bytes,
        admission,
    })
}

/// The rules on the request as a whole: at least one message, one topic, at most
/// `max_batch_count` messages and `max_batch_bytes` of bodies, a TRANSACTION message alone.
fn check_request(messages: &[Message], limits: &Limits) -> Result<(), BrokerError> {
    if messages.is_empty() {
        return Err(BrokerError::BadRequest("no messages in request".into()));
    }
    // One topic per request, as RocketMQ requires: a batch is stored whole or not at
    // all, never its valid part.
    if let Some(w) = messages.windows(2).find(|w| w[0].topic != w[1].topic) {
        let name = |m: &Message| m.topic.as_ref().map(|t| t.name.clone()).unwrap_or_default();
        return Err(BrokerError::MessageCorrupted(format!(
            "the messages of one request name different topics ({:?} and {:?}); send one \
             request per topic",
            name(&w[0]),
            name(&w[1])
        )));
    }
    if messages.len() > limits.max_batch_count {
        return Err(BrokerError::PayloadTooLarge(format!(
            "{} messages in one request, the limit is {}",
            messages.len(),
            limits.max_batch_count
        )));
    }
    let total: usize = messages.iter().map(|m| m.body.len()).sum();
    if total > limits.max_batch_bytes {
        return Err(BrokerError::PayloadTooLarge(format!(
            "request bodies total {total} bytes, the limit is {}",
            limits.max_batch_bytes
        )));
    }
    let transaction = |m: &Message| {
        m.system_properties
            .as_ref()
            .is_some_and(|s| s.message_type == MessageType::Transaction as i32)
    };
    if messages.len() > 1 && messages.iter().any(transaction) {
        return Err(BrokerError::MessageTypeMismatch(
            "a TRANSACTION message must be sent alone, one per request".into(),
        ));
    }
    Ok(())
}

/// Bounded memory: the request's bytes stay counted until it is durable (and replicated);
/// beyond the budget the client is told to back off instead of piling up behind a slow
/// disk or slave.
fn reserve_bytes(
    broker: &Broker,
    messages: &[Message],
    limits: &Limits,
) -> Result<OwnedSemaphorePermit, BrokerError> {
    let size: usize = messages
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
    broker
        .send_bytes()
        .clone()
        .try_acquire_many_owned(permits)
        .map_err(|_| {
            BrokerError::TooManyRequests(format!(
                "{size} bytes would exceed the broker's in-flight send budget of {} bytes",
                limits.max_inflight_send_bytes
            ))
        })
}

#[cfg(test)]
mod tests {
    use sofamq_proto::v2::{Code, Resource, SystemProperties};

    use super::*;

    fn msg(topic: &str, body: &[u8], message_type: MessageType) -> Message {
        Message {
            topic: Some(Resource {
                name: topic.into(),
                ..Default::default()
            }),
            body: body.to_vec().into(),
            system_properties: Some(SystemProperties {
                message_type: message_type as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn code(r: Result<(), BrokerError>) -> Code {
        r.err().map_or(Code::Ok, |e| e.code())
    }

    /// Each request-wide rule refuses the request whole with its own code, in a fixed order.
    #[test]
    fn request_wide_rules_and_their_order() {
        let limits = Limits {
            max_batch_count: 3,
            max_batch_bytes: 8,
            ..Default::default()
        };
        let n = |t| msg("t", b"ab", t);
        let normal = MessageType::Normal;
        assert_eq!(code(check_request(&[], &limits)), Code::BadRequest);
        let two_topics = [n(normal), msg("u", b"ab", normal)];
        assert_eq!(
            code(check_request(&two_topics, &limits)),
            Code::MessageCorrupted
        );
        let four = [n(normal), n(normal), n(normal), n(normal)];
        assert_eq!(code(check_request(&four, &limits)), Code::PayloadTooLarge);
        let big = [msg("t", b"123456789", normal)];
        assert_eq!(code(check_request(&big, &limits)), Code::PayloadTooLarge);
        let txn = MessageType::Transaction;
        assert_eq!(code(check_request(&[n(txn)], &limits)), Code::Ok);
        let txn_batch = [n(txn), n(normal)];
        assert_eq!(
            code(check_request(&txn_batch, &limits)),
            Code::MessagePropertyConflictWithType
        );
        assert_eq!(
            code(check_request(&[n(normal), n(normal)], &limits)),
            Code::Ok
        );
    }
}
