//! Stage 4: the claimed records go to the log in one group-commit batch, only in the epoch
//! the request was admitted in, durable (fsync) within `limits.persist_timeout_ms` or
//! answered MASTER_PERSISTENCE_TIMEOUT; their ids are completed in the window, or released
//! when nothing was stored.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use sofamq_store::{Appended, NewRecord, StoreError};

use super::batch::Batch;
use super::dedup::Claimed;
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::mutant::{self, Mutant};
use crate::repl::dedup::{Key, Receipt};
use crate::repl::{Admission, Replication};

/// A store append that outlived the send's persist timeout.
type PendingAppend = Pin<Box<dyn Future<Output = Result<Vec<Appended>, StoreError>> + Send>>;

/// Appends the claimed records; each stored one is noted in `batch` with its offsets,
/// each failed one gets the failure's status.
pub(super) async fn append(
    broker: &Broker,
    admitted: Admission,
    claimed: Claimed,
    batch: &mut Batch,
) {
    let Claimed { records, keys } = claimed;
    let queue_ids: Vec<u32> = records.iter().map(|r| r.queue_id).collect();
    let tally = broker.metrics().tally_in(&records);
    match durable(broker, admitted, records).await {
        Ok(appended) => {
            // No wake-up for the slave streams here: the store's writer wakes them as
            // soon as the bytes are written (before this fsync completed).
            broker.metrics().commit_in(tally);
            let mut done = Vec::with_capacity(keys.len());
            for (((slot, key), a), queue_id) in keys.into_iter().zip(appended).zip(queue_ids) {
                let r = receipt(&a, queue_id);
                batch.stored(slot, r.queue_offset, r.end);
                done.push((key, r));
            }
            broker.repl().dedup().complete_all(done);
        }
        Err((err, still_running)) => {
            tracing::warn!(error = %err, "send not persisted");
            for (slot, _) in &keys {
                batch.entries[*slot].status = Some(err.status());
            }
            match still_running {
                // The append is still queued or being synced and may yet be stored: its
                // ids stay claimed until it ends, so a retry waits for it and gets its
                // receipt instead of storing a second copy.
                Some(append) => {
                    tokio::spawn(complete_late(
                        broker.repl().clone(),
                        append,
                        keys,
                        queue_ids,
                    ));
                }
                None => broker
                    .repl()
                    .dedup()
                    .abort_all(keys.iter().map(|(_, key)| key)),
            }
        }
    }
}

/// Appends within `limits.persist_timeout_ms`, only in the epoch the request was admitted
/// in (refused, nothing stored, if this broker stepped down since). A failure comes with
/// the append itself when it timed out (it is still in the store's queue or fsync and may
/// yet be stored).
async fn durable(
    broker: &Broker,
    admitted: Admission,
    records: Vec<NewRecord>,
) -> Result<Vec<Appended>, (BrokerError, Option<PendingAppend>)> {
    let timeout = Duration::from_millis(broker.config().limits.persist_timeout_ms);
    let store = broker.store().clone();
    let mut append: PendingAppend = if mutant::active(Mutant::AppendAfterStepDown) {
        Box::pin(async move { store.append(records).await })
    } else {
        let epoch = admitted.epoch();
        Box::pin(async move { store.append_in_epoch(epoch, records).await })
    };
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

/// Ends the claims of an append that outlived the persist timeout: completed with their
/// receipts once it is stored, released if it fails.
async fn complete_late(
    repl: std::sync::Arc<Replication>,
    append: PendingAppend,
    keys: Vec<(usize, Key)>,
    queue_ids: Vec<u32>,
) {
    let dedup = repl.dedup();
    match append.await {
        Ok(appended) => dedup.complete_all(
            keys.into_iter()
                .zip(appended)
                .zip(queue_ids)
                .map(|(((_, key), a), queue_id)| (key, receipt(&a, queue_id))),
        ),
        Err(_) => dedup.abort_all(keys.iter().map(|(_, key)| key)),
    }
}

/// The receipt of a stored record.
fn receipt(a: &Appended, queue_id: u32) -> Receipt {
    Receipt {
        queue_id,
        queue_offset: a.queue_offset,
        end: a.log_offset + u64::from(a.size),
    }
}
