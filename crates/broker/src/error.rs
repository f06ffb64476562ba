//! Every way a broker request can fail, and the one match that maps each onto
//! the RocketMQ 5 wire status code the client sees. What each code means to the
//! client (retry class, "may be stored") is the shared table in
//! [`sofamq_proto::codes`]: a failure is given a code whose row says what is true of
//! it (a refusal before the append a code that is not "may be stored", a failure
//! after the append one that is), which the tests below check.

use sofamq_proto::codes::{self, CodeInfo};
use sofamq_proto::v2::{Code, Status};
use sofamq_store::StoreError;

/// A request failure. The `Display` text is what the client reads in
/// `Status.message`, so it must say precisely what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Malformed request not covered by a more precise code.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A request whose messages do not belong together (a batch spanning topics).
    #[error("message corrupted: {0}")]
    MessageCorrupted(String),
    /// Topic name breaks the naming rules or is reserved.
    #[error("illegal topic: {0}")]
    IllegalTopic(String),
    /// Consumer group name breaks the naming rules.
    #[error("illegal consumer group: {0}")]
    IllegalGroup(String),
    /// Tag breaks the tag rules.
    #[error("illegal tag: {0}")]
    IllegalTag(String),
    /// A key breaks the key rules.
    #[error("illegal message key: {0}")]
    IllegalKey(String),
    /// Message group breaks the rules.
    #[error("illegal message group: {0}")]
    IllegalMessageGroup(String),
    /// User property key is reserved or malformed.
    #[error("illegal property key: {0}")]
    IllegalPropertyKey(String),
    /// Message id missing or malformed.
    #[error("illegal message id: {0}")]
    IllegalMessageId(String),
    /// Delivery timestamp unusable.
    #[error("illegal delivery time: {0}")]
    IllegalDeliveryTime(String),
    /// User properties over the count or size limit.
    #[error("message properties too large: {0}")]
    PropertiesTooLarge(String),
    /// Body over the configured maximum.
    #[error("message body too large: {0}")]
    BodyTooLarge(String),
    /// Body missing.
    #[error("message body is empty")]
    BodyEmpty,
    /// Request as a whole over a size or count limit.
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    /// Message type does not match the topic's type.
    #[error("message type conflicts with topic: {0}")]
    MessageTypeMismatch(String),
    /// The topic does not exist on this broker.
    #[error("topic not found: {0}")]
    TopicNotFound(String),
    /// Credentials missing, malformed or wrong (ACL on).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The topic exists but does not accept writes (or reads), or the ACL refuses.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Receipt handle malformed, forged or stale.
    #[error("invalid receipt handle: {0}")]
    InvalidReceiptHandle(String),
    /// Filter expression unusable.
    #[error("illegal filter expression: {0}")]
    IllegalFilter(String),
    /// Invisible duration out of range.
    #[error("illegal invisible time: {0}")]
    IllegalInvisibleTime(String),
    /// The group has no stored offset for the queue.
    #[error("offset not found: {0}")]
    OffsetNotFound(String),
    /// The request conflicts with the state it addresses (e.g. recalling a delivered timer).
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// A transaction id that names no half message here.
    #[error("invalid transaction id: {0}")]
    InvalidTransactionId(String),
    /// Feature not served.
    #[error("not implemented: {0}")]
    NotImplemented(String),
    /// Backpressure: the client should back off.
    #[error("too many requests: {0}")]
    TooManyRequests(String),
    /// The local log did not become durable in time, or failed to.
    #[error("master persistence failed: {0}")]
    MasterPersistence(String),
    /// The in-sync slaves did not acknowledge in time.
    #[error("slave persistence timeout: {0}")]
    SlavePersistence(String),
    /// The broker is not the master of its group (or is fenced).
    #[error("not available: {0}")]
    NotAvailable(String),
    /// The commit log is at its disk budget (nothing was stored), or a write found the
    /// disk full (part of the batch may be stored: `StoreError::NoSpace`). Its code,
    /// INTERNAL_SERVER_ERROR, is one of "may be stored".
    #[error("storage full: {0}")]
    StorageFull(String),
    /// Anything else.
    #[error("internal error: {0}")]
    Internal(String),
}

impl BrokerError {
    /// The wire code for this failure.
    pub fn code(&self) -> Code {
        match self {
            Self::BadRequest(_) => Code::BadRequest,
            Self::MessageCorrupted(_) => Code::MessageCorrupted,
            Self::IllegalTopic(_) => Code::IllegalTopic,
            Self::IllegalGroup(_) => Code::IllegalConsumerGroup,
            Self::IllegalTag(_) => Code::IllegalMessageTag,
            Self::IllegalKey(_) => Code::IllegalMessageKey,
            Self::IllegalMessageGroup(_) => Code::IllegalMessageGroup,
            Self::IllegalPropertyKey(_) => Code::IllegalMessagePropertyKey,
            Self::IllegalMessageId(_) => Code::IllegalMessageId,
            Self::IllegalDeliveryTime(_) => Code::IllegalDeliveryTime,
            Self::PropertiesTooLarge(_) => Code::MessagePropertiesTooLarge,
            Self::BodyTooLarge(_) => Code::MessageBodyTooLarge,
            Self::BodyEmpty => Code::MessageBodyEmpty,
            Self::PayloadTooLarge(_) => Code::PayloadTooLarge,
            Self::MessageTypeMismatch(_) => Code::MessagePropertyConflictWithType,
            Self::TopicNotFound(_) => Code::TopicNotFound,
            Self::Unauthorized(_) => Code::Unauthorized,
            Self::Forbidden(_) => Code::Forbidden,
            Self::InvalidReceiptHandle(_) => Code::InvalidReceiptHandle,
            Self::IllegalFilter(_) => Code::IllegalFilterExpression,
            Self::IllegalInvisibleTime(_) => Code::IllegalInvisibleTime,
            Self::OffsetNotFound(_) => Code::OffsetNotFound,
            Self::NotImplemented(_) => Code::NotImplemented,
            Self::PreconditionFailed(_) => Code::PreconditionFailed,
            Self::InvalidTransactionId(_) => Code::InvalidTransactionId,
            Self::TooManyRequests(_) => Code::TooManyRequests,
            Self::MasterPersistence(_) => Code::MasterPersistenceTimeout,
            Self::SlavePersistence(_) => Code::SlavePersistenceTimeout,
            Self::NotAvailable(_) => Code::HaNotAvailable,
            Self::StorageFull(_) => Code::InternalServerError,
            Self::Internal(_) => Code::InternalError,
        }
    }

    /// What the code means to the client: its row in the shared code table.
    pub fn info(&self) -> CodeInfo {
        codes::info_of(self.code())
    }

    /// The wire status for this failure.
    pub fn status(&self) -> Status {
        Status {
            code: self.code() as i32,
            message: self.to_string(),
        }
    }
}

impl From<StoreError> for BrokerError {
    fn from(e: StoreError) -> Self {
        // Every store failure on the write path means "not durable": the client
        // must not count the message as sent and may retry elsewhere.
        match e {
            StoreError::DiskFull { .. } | StoreError::NoSpace(_) => {
                Self::StorageFull(e.to_string())
            }
            // Stepped down between admission and append: nothing stored, retry elsewhere.
            StoreError::Following | StoreError::EpochChanged { .. } => {
                Self::NotAvailable(e.to_string())
            }
            e => Self::MasterPersistence(e.to_string()),
        }
    }
}

/// The OK status.
pub fn ok_status() -> Status {
    Status {
        code: Code::Ok as i32,
        message: "OK".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The position of `e`'s variant: the match is exhaustive, so a new variant does not
    /// compile until it is listed here and in [`every_variant`].
    fn variant_index(e: &BrokerError) -> usize {
        match e {
            BrokerError::BadRequest(_) => 0,
            BrokerError::MessageCorrupted(_) => 1,
            BrokerError::IllegalTopic(_) => 2,
            BrokerError::IllegalGroup(_) => 3,
            BrokerError::IllegalTag(_) => 4,
            BrokerError::IllegalKey(_) => 5,
            BrokerError::IllegalMessageGroup(_) => 6,
            BrokerError::IllegalPropertyKey(_) => 7,
            BrokerError::IllegalMessageId(_) => 8,
            BrokerError::IllegalDeliveryTime(_) => 9,
            BrokerError::PropertiesTooLarge(_) => 10,
            BrokerError::BodyTooLarge(_) => 11,
            BrokerError::BodyEmpty => 12,
            BrokerError::PayloadTooLarge(_) => 13,
            BrokerError::MessageTypeMismatch(_) => 14,
            BrokerError::TopicNotFound(_) => 15,
            BrokerError::Unauthorized(_) => 16,
            BrokerError::Forbidden(_) => 17,
            BrokerError::InvalidReceiptHandle(_) => 18,
            BrokerError::IllegalFilter(_) => 19,
            BrokerError::IllegalInvisibleTime(_) => 20,
            BrokerError::OffsetNotFound(_) => 21,
            BrokerError::PreconditionFailed(_) => 22,
            BrokerError::InvalidTransactionId(_) => 23,
            BrokerError::NotImplemented(_) => 24,
            BrokerError::TooManyRequests(_) => 25,
            BrokerError::MasterPersistence(_) => 26,
            BrokerError::SlavePersistence(_) => 27,
            BrokerError::NotAvailable(_) => 28,
            BrokerError::StorageFull(_) => 29,
            BrokerError::Internal(_) => 30,
        }
    }

    /// One error of every variant.
    fn every_variant() -> Vec<BrokerError> {
        let m = String::new;
        let all = vec![
            BrokerError::BadRequest(m()),
            BrokerError::MessageCorrupted(m()),
            BrokerError::IllegalTopic(m()),
            BrokerError::IllegalGroup(m()),
            BrokerError::IllegalTag(m()),
            BrokerError::IllegalKey(m()),
            BrokerError::IllegalMessageGroup(m()),
            BrokerError::IllegalPropertyKey(m()),
            BrokerError::IllegalMessageId(m()),
            BrokerError::IllegalDeliveryTime(m()),
            BrokerError::PropertiesTooLarge(m()),
            BrokerError::BodyTooLarge(m()),
            BrokerError::BodyEmpty,
            BrokerError::PayloadTooLarge(m()),
            BrokerError::MessageTypeMismatch(m()),
            BrokerError::TopicNotFound(m()),
            BrokerError::Unauthorized(m()),
            BrokerError::Forbidden(m()),
            BrokerError::InvalidReceiptHandle(m()),
            BrokerError::IllegalFilter(m()),
            BrokerError::IllegalInvisibleTime(m()),
            BrokerError::OffsetNotFound(m()),
            BrokerError::PreconditionFailed(m()),
            BrokerError::InvalidTransactionId(m()),
            BrokerError::NotImplemented(m()),
            BrokerError::TooManyRequests(m()),
            BrokerError::MasterPersistence(m()),
            BrokerError::SlavePersistence(m()),
            BrokerError::NotAvailable(m()),
            BrokerError::StorageFull(m()),
            BrokerError::Internal(m()),
        ];
        let mut seen: Vec<usize> = all.iter().map(variant_index).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(
            seen,
            (0..all.len()).collect::<Vec<_>>(),
            "every variant once"
        );
        all
    }

    #[test]
    fn every_variant_has_a_row_in_the_code_table() {
        for e in every_variant() {
            let row = codes::CODES
                .iter()
                .find(|(c, _)| *c == e.code())
                .unwrap_or_else(|| panic!("{e:?}: code {:?} has no row", e.code()));
            assert_eq!(row.1, e.info(), "{e:?}");
        }
    }

    /// The code of every failure says what is true of it: only the failures the send path
    /// can give after the append (not durable here, not acked by the slaves, a full disk
    /// mid-batch, an internal failure) are "may be stored"; every other one is a refusal
    /// before anything is stored, retried only when another attempt can help.
    #[test]
    fn every_variant_has_the_retry_class_and_stored_answer_it_needs() {
        use sofamq_proto::codes::RetryClass;
        for e in every_variant() {
            let after_append = matches!(
                e,
                BrokerError::MasterPersistence(_)
                    | BrokerError::SlavePersistence(_)
                    | BrokerError::StorageFull(_)
                    | BrokerError::Internal(_)
            );
            let class = match e {
                _ if after_append => RetryClass::Retry,
                BrokerError::NotAvailable(_) => RetryClass::RefreshRoute,
                BrokerError::TooManyRequests(_) => RetryClass::Throttled,
                BrokerError::TopicNotFound(_) => RetryClass::NotHere,
                _ => RetryClass::Final,
            };
            assert_eq!(e.info().may_be_stored, after_append, "{e:?}");
            assert_eq!(e.info().retry, class, "{e:?}");
        }
    }

    /// A send whose master stepped down between admission and append (the store refused it,
    /// nothing written) is told so as HA_NOT_AVAILABLE: not stored, refresh the route and
    /// retry on the new master; any other store failure on the write path may have stored.
    #[test]
    fn a_step_down_before_the_append_is_a_refusal_that_stored_nothing() {
        use sofamq_proto::codes::RetryClass;
        for e in [
            StoreError::EpochChanged {
                admitted: 3,
                current: 4,
            },
            StoreError::Following,
        ] {
            let b = BrokerError::from(e);
            assert_eq!(b.code(), Code::HaNotAvailable, "{b:?}");
            assert!(!b.info().may_be_stored, "{b:?}");
            assert_eq!(b.info().retry, RetryClass::RefreshRoute, "{b:?}");
        }
        let io = BrokerError::from(StoreError::Io(std::io::Error::other("eio")));
        assert!(io.info().may_be_stored, "{io:?}");
    }

    #[test]
    fn codes_match_upstream_numbers() {
        assert_eq!(BrokerError::TopicNotFound("t".into()).code() as i32, 40402);
        assert_eq!(BrokerError::BodyTooLarge("x".into()).code() as i32, 41301);
        assert_eq!(BrokerError::IllegalTag("x".into()).code() as i32, 40004);
        assert_eq!(
            BrokerError::MasterPersistence("x".into()).code() as i32,
            50401
        );
        assert_eq!(
            BrokerError::TooManyRequests("x".into()).code() as i32,
            42900
        );
        assert_eq!(ok_status().code, 20000);
        assert_eq!(
            BrokerError::SlavePersistence("x".into()).code() as i32,
            50402
        );
        assert_eq!(BrokerError::NotAvailable("x".into()).code() as i32, 50002);
        assert_eq!(BrokerError::Unauthorized("x".into()).code() as i32, 40100);
        assert_eq!(BrokerError::Forbidden("x".into()).code() as i32, 40300);
    }
}
