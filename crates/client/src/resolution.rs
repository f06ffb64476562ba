//! How a transaction ends, and the producer's hook that decides it when the
//! broker checks a transaction left open.

use std::sync::Arc;

use sofamq_proto::v2;

use crate::received::ReceivedMessage;

/// How a transaction ends, as answered by a [`TransactionChecker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionResolution {
    /// Make the half message visible to consumers.
    Commit,
    /// Discard the half message.
    Rollback,
    /// Not known yet: send nothing; the broker asks again later (up to its
    /// `transaction.max_checks`, then applies its default outcome).
    Unknown,
}

impl TransactionResolution {
    pub(crate) fn to_wire(self) -> Option<v2::TransactionResolution> {
        match self {
            TransactionResolution::Commit => Some(v2::TransactionResolution::Commit),
            TransactionResolution::Rollback => Some(v2::TransactionResolution::Rollback),
            TransactionResolution::Unknown => None,
        }
    }
}

/// Answers the broker's check of a transaction left open: called with the
/// half message (topic, message id, body, keys, tag, properties; no receipt
/// handle). It runs on a blocking thread, so it may query a database; at most
/// 16 checks run at once per producer, further checks are dropped until one
/// finishes (the broker asks again).
pub type TransactionChecker = Arc<dyn Fn(&ReceivedMessage) -> TransactionResolution + Send + Sync>;
