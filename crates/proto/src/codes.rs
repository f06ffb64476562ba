//! The status-code table: for every `apache.rocketmq.v2.Code`, what a failed request
//! answered with it means to the client: its retry class, and for a send whether the
//! message may be stored.
//!
//! It is the one place these meanings are written. The broker picks the code of each of
//! its failures by them (`BrokerError::code` in `sofamq-broker`: a refusal before the
//! append gets a code that is not "may be stored", a failure after it one that is), and
//! the SDK (`sofamq-client`, `retry.rs`) reads its retry verdicts and its "may be stored"
//! answer from here, with no match on codes of its own.
//!
//! A number the protocol does not define (a newer server's code) gets [`UNKNOWN`].

use crate::v2::Code;

/// Response metadata key of a SendMessage refused whole with HA_NOT_AVAILABLE by its broker
/// group's writable master, short of in-sync replicas, when none of the request's message
/// ids is in that master's idempotence window (stored or in flight). That master's log is
/// the group's log, so the group does not hold those messages and never will: a retry
/// that had to stay in the group (an earlier attempt there may have stored the message)
/// may go to another group. Value `1`. Official clients ignore it.
pub const NOT_HELD_HEADER: &str = "x-sofamq-not-held";

/// What a client does after a request was answered with a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryClass {
    /// Retrying cannot help: the request is malformed, refused, names something absent or
    /// asks for what is not served. Also the non-failure codes (OK, MULTIPLE_RESULTS).
    Final,
    /// Another attempt, after the usual backoff, may succeed; the route stays.
    Retry,
    /// The broker cannot take the request now (not the master, too few in-sync
    /// replicas, a failover under way): refresh the route, then retry.
    RefreshRoute,
    /// The server asked the client to slow down: retry after a longer backoff.
    Throttled,
    /// The broker does not know the topic. Final when the route has no other master;
    /// when it has one, the route is taken as stale (the topic lives in another group
    /// now, or this broker has not loaded it yet): refresh it, then retry.
    NotHere,
}

/// One row of the table: the meaning of one code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodeInfo {
    /// What the client does after it.
    pub retry: RetryClass,
    /// Whether a send answered with it may have stored the message: the broker gives the
    /// code after the append (persistence or replication not confirmed), or it is a
    /// timeout or internal failure whose stage the client cannot know. `false` means the
    /// request was refused before anything was stored.
    pub may_be_stored: bool,
}

const fn row(code: Code, retry: RetryClass, may_be_stored: bool) -> (Code, CodeInfo) {
    (
        code,
        CodeInfo {
            retry,
            may_be_stored,
        },
    )
}

use RetryClass::{Final, NotHere, RefreshRoute, Retry, Throttled};

/// Every code of the protocol, in ascending numeric order, with its meaning.
pub const CODES: &[(Code, CodeInfo)] = &[
    row(Code::Unspecified, Final, false),
    row(Code::Ok, Final, false),
    row(Code::MultipleResults, Final, false),
    // 400xx: the request itself is wrong. Refused before the append.
    row(Code::BadRequest, Final, false),
    row(Code::IllegalAccessPoint, Final, false),
    row(Code::IllegalTopic, Final, false),
    row(Code::IllegalConsumerGroup, Final, false),
    row(Code::IllegalMessageTag, Final, false),
    row(Code::IllegalMessageKey, Final, false),
    row(Code::IllegalMessageGroup, Final, false),
    row(Code::IllegalMessagePropertyKey, Final, false),
    row(Code::InvalidTransactionId, Final, false),
    row(Code::IllegalMessageId, Final, false),
    row(Code::IllegalFilterExpression, Final, false),
    row(Code::IllegalInvisibleTime, Final, false),
    row(Code::IllegalDeliveryTime, Final, false),
    row(Code::InvalidReceiptHandle, Final, false),
    row(Code::MessagePropertyConflictWithType, Final, false),
    row(Code::UnrecognizedClientType, Final, false),
    row(Code::MessageCorrupted, Final, false),
    row(Code::ClientIdRequired, Final, false),
    row(Code::IllegalPollingTime, Final, false),
    row(Code::IllegalOffset, Final, false),
    row(Code::IllegalLiteTopic, Final, false),
    row(Code::InvalidClientProperties, Final, false),
    // 401xx-404xx: credentials, permissions, absent resources.
    row(Code::Unauthorized, Final, false),
    row(Code::PaymentRequired, Final, false),
    row(Code::Forbidden, Final, false),
    row(Code::NotFound, Final, false),
    row(Code::MessageNotFound, Final, false),
    row(Code::TopicNotFound, NotHere, false),
    row(Code::ConsumerGroupNotFound, Final, false),
    row(Code::OffsetNotFound, Final, false),
    // A server-side timeout: the stage it reached is unknown.
    row(Code::RequestTimeout, Retry, true),
    // 413xx: over a size limit. Refused before the append.
    row(Code::PayloadTooLarge, Final, false),
    row(Code::MessageBodyTooLarge, Final, false),
    row(Code::MessageBodyEmpty, Final, false),
    row(Code::PreconditionFailed, Final, false),
    // Backpressure: the broker refuses before the append.
    row(Code::TooManyRequests, Throttled, false),
    row(Code::LiteTopicQuotaExceeded, Final, false),
    row(Code::LiteSubscriptionQuotaExceeded, Final, false),
    row(Code::RequestHeaderFieldsTooLarge, Final, false),
    row(Code::MessagePropertiesTooLarge, Final, false),
    // Internal failures: the broker gives them after the append too (a lost replication
    // tracker; a write that found the disk full may have stored part of its batch).
    row(Code::InternalError, Retry, true),
    row(Code::InternalServerError, Retry, true),
    // Not the master, fenced, no lease, or too few in-sync replicas: refused before the
    // append (after it the broker answers SLAVE_PERSISTENCE_TIMEOUT instead).
    row(Code::HaNotAvailable, RefreshRoute, false),
    row(Code::NotImplemented, Final, false),
    // A proxy's timeout towards the broker: the broker may have stored the message.
    row(Code::ProxyTimeout, Retry, true),
    // Stored (or being stored) but not confirmed durable, here or on the in-sync slaves.
    row(Code::MasterPersistenceTimeout, Retry, true),
    row(Code::SlavePersistenceTimeout, Retry, true),
    row(Code::Unsupported, Final, false),
    row(Code::VersionUnsupported, Final, false),
    row(Code::VerifyFifoMessageUnsupported, Final, false),
    row(Code::FailedToConsumeMessage, Final, false),
];

/// The meaning of a number the protocol does not define: final (nothing says a retry
/// could help), and a send answered with it may have stored the message (nothing says
/// it did not).
pub const UNKNOWN: CodeInfo = CodeInfo {
    retry: Final,
    may_be_stored: true,
};

/// The meaning of status number `code`: its row, or [`UNKNOWN`].
pub fn info(code: i32) -> CodeInfo {
    CODES
        .binary_search_by_key(&code, |(c, _)| *c as i32)
        .map_or(UNKNOWN, |i| CODES[i].1)
}

/// The meaning of `code`.
pub fn info_of(code: Code) -> CodeInfo {
    info(code as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_has_every_code_once() {
        assert!(
            CODES.windows(2).all(|w| (w[0].0 as i32) < (w[1].0 as i32)),
            "rows must be in strictly ascending numeric order (the lookup bisects)"
        );
        let mut defined = 0;
        for n in 0..100_000 {
            match Code::try_from(n) {
                Ok(code) => {
                    defined += 1;
                    let i = CODES
                        .binary_search_by_key(&n, |(c, _)| *c as i32)
                        .unwrap_or_else(|_| panic!("{code:?} has no row"));
                    assert_eq!(CODES[i].0, code);
                }
                Err(_) => assert_eq!(info(n), UNKNOWN, "{n}"),
            }
        }
        assert_eq!(defined, CODES.len());
    }

    #[test]
    fn lookups_find_their_row() {
        assert_eq!(info_of(Code::TooManyRequests).retry, Throttled);
        assert!(!info_of(Code::TooManyRequests).may_be_stored);
        assert_eq!(info_of(Code::HaNotAvailable).retry, RefreshRoute);
        assert!(!info_of(Code::HaNotAvailable).may_be_stored);
        assert_eq!(info_of(Code::SlavePersistenceTimeout).retry, Retry);
        assert!(info_of(Code::SlavePersistenceTimeout).may_be_stored);
        assert_eq!(info_of(Code::TopicNotFound).retry, NotHere);
        assert_eq!(info_of(Code::IllegalMessageTag).retry, Final);
        assert_eq!(info(12_345), UNKNOWN);
        assert_eq!(info(-1), UNKNOWN);
        assert_eq!(info(i32::MAX), UNKNOWN);
    }
}
