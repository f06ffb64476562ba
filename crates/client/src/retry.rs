//! Which failures are retried and what each attempt's failure means; the wait before the next
//! attempt is `ProducerConfig::backoff` (config.rs).

use sofamq_proto::codes::{self, RetryClass};

use crate::error::{FailureKind, RequestError};

/// Why one attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AttemptError {
    /// Connection failure or gRPC framework error.
    Transport(String),
    /// No answer within the request timeout.
    Timeout,
    /// The server answered with a non-OK status.
    Status { code: i32, message: String },
    /// Refused whole (HA_NOT_AVAILABLE) by its group's writable master, short of in-sync
    /// replicas, which holds none of the request's ids: the group does not have the
    /// message ([`sofamq_proto::codes::NOT_HELD_HEADER`]).
    NotHeld { code: i32, message: String },
    /// No usable route (every access point failed, or no writable master).
    NoRoute(String),
    /// The producer is shutting down.
    Closed,
}

impl AttemptError {
    pub(crate) fn kind(&self) -> FailureKind {
        match self {
            AttemptError::Transport(_) => FailureKind::Transport,
            AttemptError::Timeout => FailureKind::Timeout,
            AttemptError::Status { .. } | AttemptError::NotHeld { .. } => FailureKind::Status,
            AttemptError::NoRoute(_) => FailureKind::Route,
            AttemptError::Closed => FailureKind::Shutdown,
        }
    }

    pub(crate) fn code(&self) -> Option<i32> {
        match self {
            AttemptError::Status { code, .. } | AttemptError::NotHeld { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn message(&self) -> String {
        match self {
            AttemptError::Transport(m) | AttemptError::NoRoute(m) => m.clone(),
            AttemptError::Timeout => "request timed out".into(),
            AttemptError::Status { message, .. } | AttemptError::NotHeld { message, .. } => {
                message.clone()
            }
            AttemptError::Closed => "producer is shut down".into(),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Another attempt may succeed.
    pub retry: bool,
    /// The route may be stale: refresh it before the next attempt.
    pub refresh_route: bool,
    /// The server asked us to slow down: back off longer.
    pub throttled: bool,
}

const FAIL: Verdict = Verdict {
    retry: false,
    refresh_route: false,
    throttled: false,
};

/// Classifies a failed attempt. A status code's class comes from the shared code table
/// ([`sofamq_proto::codes`]); `other_broker` tells whether the topic's route has a master
/// other than the one that failed (a [`RetryClass::NotHere`] code, TOPIC_NOT_FOUND, is then
/// taken as a stale route rather than a missing topic).
pub(crate) fn classify(err: &AttemptError, other_broker: bool) -> Verdict {
    let retry = |refresh_route, throttled| Verdict {
        retry: true,
        refresh_route,
        throttled,
    };
    match err {
        AttemptError::Transport(_) | AttemptError::Timeout | AttemptError::NoRoute(_) => {
            retry(true, false)
        }
        AttemptError::Closed => FAIL,
        AttemptError::Status { code, .. } | AttemptError::NotHeld { code, .. } => {
            match codes::info(*code).retry {
                RetryClass::Final => FAIL,
                RetryClass::Retry => retry(false, false),
                RetryClass::RefreshRoute => retry(true, false),
                RetryClass::Throttled => retry(false, true),
                RetryClass::NotHere if other_broker => retry(true, false),
                RetryClass::NotHere => FAIL,
            }
        }
    }
}

/// Whether a failed attempt may have stored the message: no answer (transport failure,
/// timeout), or a code the shared table marks "may be stored" (given after the append, or
/// not defined by the protocol). Refusals before the append (HA_NOT_AVAILABLE,
/// TOO_MANY_REQUESTS, validation and permission codes), no route and shutdown mean it was
/// not stored.
pub(crate) fn may_have_stored(err: &AttemptError) -> bool {
    match err {
        AttemptError::Transport(m) => !never_sent(m),
        AttemptError::Timeout => true,
        AttemptError::NoRoute(_) | AttemptError::Closed | AttemptError::NotHeld { .. } => false,
        AttemptError::Status { code, .. } => codes::info(*code).may_be_stored,
    }
}

/// A transport failure before the request left: the connection could not be made (the
/// broker's port refused it, the name did not resolve), or hyper gave the request back
/// unsent because the connection had closed ("operation was canceled": hyper's canceled
/// error, raised only for a request never handed to the connection; a broker killed just
/// before the send), so nothing was sent.
fn never_sent(message: &str) -> bool {
    [
        "tcp connect error",
        "error trying to connect",
        "dns error",
        "Connection refused",
        "operation was canceled",
    ]
    .iter()
    .any(|m| message.contains(m))
}

impl RequestError {
    /// The error an RPC ends with after its last failed attempt `err`.
    pub(crate) fn from_attempt(
        op: &'static str,
        err: &AttemptError,
        attempts: u32,
        endpoint: Option<&str>,
    ) -> Self {
        Self {
            op,
            kind: err.kind(),
            code: err.code(),
            message: err.message(),
            attempts,
            endpoint: endpoint.map(str::to_string),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sofamq_proto::v2::Code;

    fn status(code: Code) -> AttemptError {
        AttemptError::Status {
            code: code as i32,
            message: String::new(),
        }
    }

    #[test]
    fn only_refusals_before_the_append_mean_not_stored() {
        for code in [
            Code::HaNotAvailable,
            Code::TooManyRequests,
            Code::BadRequest,
            Code::TopicNotFound,
            Code::Forbidden,
        ] {
            assert!(!may_have_stored(&status(code)), "{code:?}");
        }
        for code in [
            Code::MasterPersistenceTimeout,
            Code::SlavePersistenceTimeout,
            Code::InternalError,
        ] {
            assert!(may_have_stored(&status(code)), "{code:?}");
        }
        assert!(may_have_stored(&AttemptError::Timeout));
        assert!(may_have_stored(&AttemptError::Transport("reset".into())));
        assert!(!may_have_stored(&AttemptError::Transport(
            "Unavailable: tcp connect error".into()
        )));
        // As tonic reports a request hyper never sent on a connection that had closed.
        assert!(!may_have_stored(&AttemptError::Transport(
            "Cancelled: operation was canceled".into()
        )));
        // A stream the broker reset after it took the request may have stored it.
        assert!(may_have_stored(&AttemptError::Transport(
            "Cancelled: h2 protocol error: stream no longer needed".into()
        )));
        assert!(!may_have_stored(&AttemptError::NoRoute("none".into())));
    }

    #[test]
    fn retryable_codes_and_transport_errors_are_retried() {
        for code in [
            Code::MasterPersistenceTimeout,
            Code::SlavePersistenceTimeout,
            Code::HaNotAvailable,
            Code::TooManyRequests,
            Code::InternalError,
            Code::InternalServerError,
            Code::ProxyTimeout,
            Code::RequestTimeout,
        ] {
            assert!(classify(&status(code), false).retry, "{code:?}");
        }
        assert!(classify(&AttemptError::Transport("x".into()), false).retry);
        assert!(classify(&AttemptError::Timeout, false).retry);
        assert!(classify(&AttemptError::Timeout, false).refresh_route);
        assert!(classify(&status(Code::TooManyRequests), false).throttled);
        assert!(!classify(&status(Code::MasterPersistenceTimeout), true).throttled);
    }

    #[test]
    fn validation_codes_fail_at_once() {
        for code in [
            Code::BadRequest,
            Code::IllegalMessageTag,
            Code::IllegalTopic,
            Code::MessageBodyTooLarge,
            Code::MessagePropertiesTooLarge,
            Code::Unauthorized,
            Code::Forbidden,
        ] {
            assert!(!classify(&status(code), true).retry, "{code:?}");
        }
        assert!(
            !classify(
                &AttemptError::Status {
                    code: 12345,
                    message: String::new()
                },
                true
            )
            .retry
        );
        assert!(!classify(&AttemptError::Closed, true).retry);
    }

    #[test]
    fn topic_not_found_is_retried_only_with_another_broker() {
        assert!(!classify(&status(Code::TopicNotFound), false).retry);
        let v = classify(&status(Code::TopicNotFound), true);
        assert!(v.retry && v.refresh_route);
    }

    /// The verdicts and the "may have stored" answer for every status number, as the
    /// client's hand-kept match gave them before the shared code table replaced it
    /// (written from that match, so the table must reproduce it exactly).
    #[test]
    fn every_code_keeps_its_verdict() {
        let fail = (false, false, false);
        let retry = (true, false, false);
        let refresh = (true, true, false);
        let throttle = (true, false, true);
        // (code, verdict without another master, verdict with one, may have stored)
        let special = [
            (Code::TooManyRequests, throttle, throttle, false),
            (Code::MasterPersistenceTimeout, retry, retry, true),
            (Code::SlavePersistenceTimeout, retry, retry, true),
            (Code::InternalError, retry, retry, true),
            (Code::InternalServerError, retry, retry, true),
            (Code::ProxyTimeout, retry, retry, true),
            (Code::RequestTimeout, retry, retry, true),
            (Code::HaNotAvailable, refresh, refresh, false),
            (Code::TopicNotFound, fail, refresh, false),
        ];
        let triple = |v: Verdict| (v.retry, v.refresh_route, v.throttled);
        let mut known = 0;
        for n in 0..100_000 {
            let err = AttemptError::Status {
                code: n,
                message: String::new(),
            };
            let (alone, other, stored) = match Code::try_from(n) {
                // A number the protocol does not define: final, and it may be stored.
                Err(_) => (fail, fail, true),
                Ok(code) => {
                    known += 1;
                    special
                        .iter()
                        .find(|s| s.0 == code)
                        .map_or((fail, fail, false), |s| (s.1, s.2, s.3))
                }
            };
            assert_eq!(triple(classify(&err, false)), alone, "{n}");
            assert_eq!(triple(classify(&err, true)), other, "{n}");
            assert_eq!(may_have_stored(&err), stored, "{n}");
        }
        assert!(known > 50, "{known} codes");
        for other_broker in [false, true] {
            for e in [
                AttemptError::Transport("x".into()),
                AttemptError::Timeout,
                AttemptError::NoRoute("x".into()),
            ] {
                assert_eq!(triple(classify(&e, other_broker)), refresh, "{e:?}");
            }
            assert_eq!(triple(classify(&AttemptError::Closed, other_broker)), fail);
        }
    }
}
