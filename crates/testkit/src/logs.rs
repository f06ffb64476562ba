//! Reading a stopped broker's commit log offline (`Store::open` on its store directory),
//! for tests that compare what brokers hold.

use std::path::Path;

use sofamq_store::{Store, StoreConfig};

/// One message record: (topic, message id, body, log offset).
pub type LoggedMessage = (String, String, Vec<u8>, u64);

/// Every record of the log in `store_dir` that carries a message id.
pub fn messages(store_dir: &Path) -> anyhow::Result<Vec<LoggedMessage>> {
    let store = Store::open(StoreConfig::new(store_dir))?;
    let mut out = Vec::new();
    for r in store.scan(0) {
        let r = r?;
        if let Some((_, id)) = r.properties.iter().find(|(k, _)| k == "__MSGID") {
            out.push((r.topic.clone(), id.clone(), r.body.to_vec(), r.log_offset));
        }
    }
    Ok(out)
}

/// The whole durable log of the store in `store_dir`, as bytes.
pub fn log_bytes(store_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let store = Store::open(StoreConfig::new(store_dir))?;
    let mut out = Vec::new();
    let end = store.durable_offset();
    while (out.len() as u64) < end {
        let b = store.read_raw(out.len() as u64, 1 << 20)?;
        anyhow::ensure!(
            !b.is_empty(),
            "read_raw returned nothing below the durable end"
        );
        out.extend_from_slice(&b);
    }
    Ok(out)
}
