//! Transactional messages: a half message is stored invisible to consumers
//! until the producer commits it (or discards it with a rollback).
//!
//! [`Producer::send_half`](crate::Producer::send_half) stores the half
//! message and returns a [`Transaction`]; run the local transaction, then
//! [`Transaction::commit`] or [`Transaction::rollback`]. If the producer never
//! says (it crashed, or the answer was lost), the broker asks a live producer
//! of the topic over its Telemetry stream; that producer's
//! [`TransactionChecker`] (see
//! [`ProducerConfig::with_transaction_checker`](crate::ProducerConfig::with_transaction_checker))
//! answers, and the producer sends the answer as `EndTransaction` with source
//! `SOURCE_SERVER_CHECK`.

use std::fmt;
use std::sync::Arc;

use sofamq_proto::v2::{self, TransactionSource};

use crate::error::ClientError;
use crate::message::SendReceipt;
use crate::rpc::{EndTarget, Rpc};

/// A stored half message waiting for its commit or rollback.
///
/// Both calls may be repeated (the broker answers OK to a repeated
/// resolution, PRECONDITION_FAILED 42800 to the opposite one). They still work
/// after [`Producer::shutdown`](crate::Producer::shutdown).
#[derive(Clone)]
pub struct Transaction {
    rpc: Arc<Rpc>,
    receipt: SendReceipt,
    transaction_id: String,
}

impl fmt::Debug for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("receipt", &self.receipt)
            .finish_non_exhaustive()
    }
}

impl Transaction {
    pub(crate) fn new(rpc: Arc<Rpc>, receipt: SendReceipt, transaction_id: String) -> Self {
        Self {
            rpc,
            receipt,
            transaction_id,
        }
    }

    /// The receipt of the half message.
    pub fn receipt(&self) -> &SendReceipt {
        &self.receipt
    }

    /// The half message's id.
    pub fn message_id(&self) -> &str {
        &self.receipt.message_id
    }

    /// The broker's transaction id.
    pub fn transaction_id(&self) -> &str {
        &self.transaction_id
    }

    /// Commits: the message becomes visible to consumers (exactly once).
    pub async fn commit(&self) -> Result<(), ClientError> {
        self.end(v2::TransactionResolution::Commit).await
    }

    /// Rolls back: the message is discarded.
    pub async fn rollback(&self) -> Result<(), ClientError> {
        self.end(v2::TransactionResolution::Rollback).await
    }

    async fn end(&self, resolution: v2::TransactionResolution) -> Result<(), ClientError> {
        let target = EndTarget {
            endpoint: &self.receipt.endpoint,
            topic: &self.receipt.topic,
            message_id: &self.receipt.message_id,
            transaction_id: &self.transaction_id,
        };
        let r = self
            .rpc
            .end_transaction(&target, resolution, TransactionSource::SourceClient)
            .await;
        match &r {
            Ok(()) => tracing::debug!(
                message_id = %target.message_id,
                transaction_id = %target.transaction_id,
                ?resolution,
                "transaction ended"
            ),
            Err(e) => tracing::error!(
                message_id = %target.message_id,
                transaction_id = %target.transaction_id,
                ?resolution,
                error = %e,
                "transaction could not be ended (the broker will check it back)"
            ),
        }
        Ok(r?)
    }
}
