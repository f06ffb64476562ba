//! Stage 6: every message answered as stored is acked only once the in-sync slaves cover
//! it, and only while the term it was admitted in lasts and the lease holds
//! ([`crate::repl::Replication::wait_replicated`]); otherwise SLAVE_PERSISTENCE_TIMEOUT
//! ("not acked, may be stored").

use super::batch::Batch;
use crate::broker::Broker;
use crate::error::ok_status;
use crate::repl::Admission;

/// Waits for replication of everything `batch` stored and sets those messages' status.
pub(super) async fn wait(broker: &Broker, admitted: Admission, batch: &mut Batch) {
    if batch.stored.is_empty() {
        return;
    }
    let status = match broker.repl().wait_replicated(admitted, batch.need).await {
        Ok(()) => {
            // A slave's ack may have arrived before this master's fsync (it streams
            // written bytes), when the readable limit could not cover `need` yet.
            broker.repl().refresh_limit();
            ok_status()
        }
        Err(e) => {
            tracing::warn!(error = %e, offset = batch.need, "send stored on the master but not acked");
            e.status()
        }
    };
    for slot in &batch.stored {
        batch.entries[*slot].status = Some(status.clone());
    }
}
