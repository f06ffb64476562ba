//! Error types of the SDK.
//!
//! * [`ClientError`]: the producer could not be created or configured.
//! * [`SendError`]: a message could not be sent (after all attempts); it
//!   carries the message id, topic, attempts and the last failure.
//! * [`BatchSendError`]: at least one message of a batch failed; it carries
//!   the outcome of every message.
//! * [`RequestError`]: an RPC other than a send (recall, end of a transaction)
//!   failed; it travels inside [`ClientError::Request`].

use std::fmt;

use sofamq_proto::v2::Code;

use crate::message::SendReceipt;

/// Errors about the producer itself (not about one message).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configuration is unusable (no access point, bad address, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The producer has been shut down.
    #[error("producer is shut down")]
    Shutdown,
    /// A message could not be sent.
    #[error(transparent)]
    Send(#[from] SendError),
    /// A recall or an end of transaction failed.
    #[error(transparent)]
    Request(#[from] RequestError),
}

impl ClientError {
    /// The status code of the failure, when the server (or the client's
    /// validation) gave one, e.g. `42800` for PRECONDITION_FAILED.
    pub fn code(&self) -> Option<i32> {
        match self {
            ClientError::Send(e) => e.code,
            ClientError::Request(e) => e.code,
            ClientError::Config(_) | ClientError::Shutdown => None,
        }
    }

    /// The status code as the protocol enum, if it is a known code.
    pub fn code_enum(&self) -> Option<Code> {
        self.code().and_then(|c| Code::try_from(c).ok())
    }
}

/// An RPC other than a send failed for good: `RecallMessage` or
/// `EndTransaction`.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{op} failed after {attempts} attempt(s): {kind}{}: {message}",
    code.map(|c| format!(" code {c}")).unwrap_or_default()
)]
pub struct RequestError {
    /// The RPC: `"RecallMessage"` or `"EndTransaction"`.
    pub op: &'static str,
    /// Category of the last failure.
    pub kind: FailureKind,
    /// Status code of the last failure, when the server answered one.
    pub code: Option<i32>,
    /// Human-readable reason of the last failure.
    pub message: String,
    /// How many requests were made (0 when refused before any).
    pub attempts: u32,
    /// Endpoint (`host:port`) of the last request, if one was made.
    pub endpoint: Option<String>,
}

/// Why a send failed: the category of the last failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The server answered with a non-OK status code (see [`SendError::code`]).
    Status,
    /// The connection could not be made or broke (gRPC-level failure).
    Transport,
    /// No answer within the request timeout.
    Timeout,
    /// No route: every access point failed, or the topic has no writable master.
    Route,
    /// The message was rejected by the client before any network call.
    Invalid,
    /// The producer was shut down.
    Shutdown,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            FailureKind::Status => "status",
            FailureKind::Transport => "transport",
            FailureKind::Timeout => "timeout",
            FailureKind::Route => "route",
            FailureKind::Invalid => "invalid",
            FailureKind::Shutdown => "shutdown",
        };
        f.write_str(s)
    }
}

/// A message could not be sent.
///
/// Returned by [`Producer::send`](crate::Producer::send) once the send has
/// failed for good: either a non-retryable status code was answered, or every
/// attempt (`attempts` of them) failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "send of message {message_id} to topic {topic} failed after {attempts} attempt(s): \
     {kind}{}: {message}",
    code.map(|c| format!(" code {c}")).unwrap_or_default()
)]
pub struct SendError {
    /// Category of the last failure.
    pub kind: FailureKind,
    /// Status code of the last failure, when the server (or the client's
    /// validation) gave one, e.g. `40004` for ILLEGAL_MESSAGE_TAG.
    pub code: Option<i32>,
    /// Human-readable reason of the last failure.
    pub message: String,
    /// How many attempts were made (0 when rejected before any attempt).
    pub attempts: u32,
    /// The client-assigned message id (the same on every attempt).
    pub message_id: String,
    /// Topic of the message.
    pub topic: String,
    /// Name of the broker of the last attempt, if one was chosen.
    pub broker: Option<String>,
    /// Whether the message may be stored after all: some attempt timed out, lost its
    /// connection, or was answered with a code that comes after the append
    /// (MASTER_/SLAVE_PERSISTENCE_TIMEOUT, INTERNAL_ERROR...). `false` means every attempt
    /// was refused before anything was stored (e.g. HA_NOT_AVAILABLE, a 4xx code): the
    /// message is definitely not stored. See docs/failover.md, "What a failed send means".
    pub maybe_stored: bool,
}

impl SendError {
    /// The status code as the protocol enum, if it is a known code.
    pub fn code_enum(&self) -> Option<Code> {
        self.code.and_then(|c| Code::try_from(c).ok())
    }
}

/// What the alert callback receives: the final failure of a send.
pub type SendFailure = SendError;

/// At least one message of [`Producer::send_batch`](crate::Producer::send_batch)
/// failed. `results` holds the outcome of every message, in input order
/// (messages with an `Ok` outcome are durably stored).
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {} message(s) of the batch failed; first: {first}", results.len())]
pub struct BatchSendError {
    /// Number of failed messages.
    pub failed: usize,
    /// The first failure (in input order).
    pub first: SendError,
    /// Every message's outcome, in input order.
    pub results: Vec<Result<SendReceipt, SendError>>,
}
