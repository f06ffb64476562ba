//! Message lookup by id or key for operators (`sofamq admin message get`).
//!
//! A bounded backward scan over the consume queues of the topic (or of every user topic
//! for an id lookup without a topic), newest first, round-robin across queues, reading at
//! most `max_scan` records. No index: the send path pays nothing, memory does not grow with
//! the log, and the messages operators look up are almost always recent; the budget keeps
//! a miss on a large log from turning into a full scan.

use sofamq_proto::admin::StoredMessage;
use sofamq_store::Record;

use crate::broker::Broker;
use crate::error::BrokerError;
use crate::validate::keys;

/// Records read when the request does not say.
pub const DEFAULT_MAX_SCAN: u64 = 100_000;
/// Upper bound on the records one lookup may read.
pub const MAX_SCAN_LIMIT: u64 = 10_000_000;
/// Matches returned when the request does not say; the bound is [`MAX_RESULTS_LIMIT`].
pub const DEFAULT_MAX_RESULTS: usize = 16;
/// Most matches one lookup returns.
pub const MAX_RESULTS_LIMIT: usize = 256;
/// Records read from one queue per step.
const CHUNK: u64 = 64;

/// What to look for.
#[derive(Debug, Clone)]
pub enum Wanted {
    /// The message id (`__MSGID`).
    Id(String),
    /// One of the message's keys.
    Key(String),
}

impl Wanted {
    fn matches(&self, r: &Record) -> bool {
        match self {
            Wanted::Id(id) => r
                .properties
                .iter()
                .any(|(k, v)| k == keys::MSG_ID && v == id),
            Wanted::Key(key) => r
                .properties
                .iter()
                .any(|(k, v)| k == keys::KEYS && v.split(keys::KEY_SEP).any(|x| x == key)),
        }
    }
}

/// The outcome of a lookup.
#[derive(Debug, Default)]
pub struct Found {
    /// Matches, newest first.
    pub records: Vec<Record>,
    /// Records read.
    pub scanned: u64,
    /// The budget ran out before every queue was scanned.
    pub truncated: bool,
}

impl Broker {
    /// Looks `wanted` up in `topic` (every user topic when `None`, ids only). Blocking reads
    /// happen on the blocking pool.
    pub async fn lookup(
        &self,
        topic: Option<String>,
        wanted: Wanted,
        max_scan: u64,
        max_results: usize,
    ) -> Result<Found, BrokerError> {
        if let Wanted::Key(_) = &wanted
            && topic.is_none()
        {
            return Err(BrokerError::BadRequest("a key lookup needs --topic".into()));
        }
        let budget = if max_scan == 0 {
            DEFAULT_MAX_SCAN
        } else {
            max_scan.min(MAX_SCAN_LIMIT)
        };
        let max_results = if max_results == 0 {
            DEFAULT_MAX_RESULTS
        } else {
            max_results.min(MAX_RESULTS_LIMIT)
        };
        let store = self.store().clone();
        tokio::task::spawn_blocking(move || -> Result<Found, BrokerError> {
            let queues: Vec<(String, u32)> = store
                .queues()
                .into_iter()
                .filter(|(t, _)| match &topic {
                    Some(want) => t == want,
                    None => !t.starts_with("%SYS%"),
                })
                .collect();
            // (topic, queue, next offset to read backwards from (exclusive), low end)
            let mut cursors: Vec<(String, u32, u64, u64)> = queues
                .into_iter()
                .map(|(t, q)| {
                    let (min, max) = store.queue_offsets(&t, q);
                    (t, q, max, min)
                })
                .collect();
            let mut found = Found::default();
            loop {
                let mut progressed = false;
                for (t, q, cursor, min) in cursors.iter_mut() {
                    if *cursor <= *min {
                        continue;
                    }
                    if found.scanned >= budget {
                        found.truncated = true;
                        break;
                    }
                    let n = CHUNK.min(*cursor - *min).min(budget - found.scanned);
                    let start = *cursor - n;
                    let recs = store.read_queue(t, *q, start, n as usize, usize::MAX)?;
                    *cursor = start;
                    found.scanned += recs.len() as u64;
                    progressed = true;
                    found
                        .records
                        .extend(recs.into_iter().rev().filter(|r| wanted.matches(r)));
                }
                if found.records.len() >= max_results || found.truncated || !progressed {
                    break;
                }
            }
            found
                .records
                .sort_by_key(|r| std::cmp::Reverse(r.log_offset));
            found.records.truncate(max_results);
            Ok(found)
        })
        .await
        .map_err(|e| BrokerError::Internal(format!("lookup task: {e}")))?
    }
}

/// The admin wire form of a stored record.
pub fn stored_message(rec: Record) -> StoredMessage {
    let message_id = rec
        .properties
        .iter()
        .find(|(k, _)| k == keys::MSG_ID)
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    StoredMessage {
        topic: rec.topic,
        queue_id: rec.queue_id,
        queue_offset: rec.queue_offset,
        log_offset: rec.log_offset,
        message_id,
        tag: rec.tag,
        born_timestamp_ms: rec.born_ts_ms,
        store_timestamp_ms: rec.store_ts_ms,
        properties: rec.properties.into_iter().collect(),
        body: rec.body.to_vec(),
        epoch: rec.epoch,
    }
}

/// Bytes under `dir` (files, recursively; at most `max_entries` entries visited).
pub fn disk_usage(dir: &std::path::Path, max_entries: usize) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            seen += 1;
            if seen > max_entries {
                return total;
            }
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
