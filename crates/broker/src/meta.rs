//! Broker metadata as JSON records on reserved topics (topic definitions, ACL
//! users): the one way such state is written to the log and replayed from it,
//! so it replicates and survives failover like messages do.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sofamq_store::{NewRecord, Store};

use crate::clock::now_ms;
use crate::error::BrokerError;

/// Record flag marking broker metadata (not a client message).
pub const FLAG_META: u32 = 1 << 31;

/// Replays every record of the reserved `topic` (queue 0) in log order,
/// handing each decoded op to `apply`. `what` names the records in errors.
pub fn replay<T: DeserializeOwned>(
    store: &Store,
    topic: &str,
    what: &str,
    mut apply: impl FnMut(T),
) -> Result<(), BrokerError> {
    let mut next = store.queue_offsets(topic, 0).0;
    loop {
        let batch = store.read_queue(topic, 0, next, 256, 4 << 20)?;
        if batch.is_empty() {
            return Ok(());
        }
        for rec in &batch {
            next = rec.queue_offset + 1;
            let op = serde_json::from_slice::<T>(&rec.body).map_err(|e| {
                BrokerError::Internal(format!(
                    "{what} record at log offset {} is unreadable: {e}",
                    rec.log_offset
                ))
            })?;
            apply(op);
        }
    }
}

/// Appends `op` to the reserved `topic`; durable (and, on a master with
/// slaves, on its way to them) when it returns.
pub async fn append<T: Serialize>(store: &Store, topic: &str, op: &T) -> Result<(), BrokerError> {
    let body = serde_json::to_vec(op).map_err(|e| BrokerError::Internal(e.to_string()))?;
    let rec = NewRecord {
        topic: topic.to_string(),
        queue_id: 0,
        flags: FLAG_META,
        tag: String::new(),
        born_ts_ms: now_ms(),
        properties: Vec::new(),
        body: Bytes::from(body),
    };
    store.append(vec![rec]).await?;
    Ok(())
}
