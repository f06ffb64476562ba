//! Idempotent sends: a bounded window of recent message ids → their original receipt, plus
//! the sends in flight so a concurrent duplicate waits for the first copy instead of storing a
//! second. Rebuilt from the tail of the log on start and on promotion, so it follows the log
//! (the only state path) across failover.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use sofamq_store::{Record, Store};
use tokio::sync::watch;

use crate::topics::now_ms;
use crate::validate::keys;

/// What a duplicate gets back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// Queue id of the stored copy.
    pub queue_id: u32,
    /// Queue offset of the stored copy.
    pub queue_offset: u64,
    /// Log offset just past the stored copy (what replication must cover).
    pub end: u64,
}

/// Outcome of a send in flight: `None` while pending, then the receipt or a failure.
pub type Pending = watch::Receiver<Option<Option<Receipt>>>;

/// How a message id stands.
pub enum Lookup {
    /// Stored already.
    Stored(Receipt),
    /// Another send of it is in flight; wait on this.
    InFlight(Pending),
    /// New: this caller now owns it and must call `complete` or `abort`.
    Claimed,
}

struct Entry {
    key: String,
    receipt: Receipt,
    ts_ms: i64,
}

#[derive(Default)]
struct State {
    map: HashMap<String, Receipt>,
    order: VecDeque<Entry>,
    pending: HashMap<String, watch::Sender<Option<Option<Receipt>>>>,
}

/// The window.
pub struct Dedup {
    cap: usize,
    ttl_ms: i64,
    st: Mutex<State>,
}

/// The window key of a message.
pub fn key(topic: &str, message_id: &str) -> String {
    let mut k = String::with_capacity(topic.len() + message_id.len() + 1);
    k.push_str(topic);
    k.push('\u{0}');
    k.push_str(message_id);
    k
}

impl Dedup {
    /// An empty window of at most `cap` ids, each kept at most `ttl`.
    pub fn new(cap: usize, ttl: Duration) -> Self {
        Self {
            cap: cap.max(1),
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            st: Mutex::new(State::default()),
        }
    }

    fn insert(&self, st: &mut State, key: String, receipt: Receipt, ts_ms: i64) {
        if st.map.insert(key.clone(), receipt).is_none() {
            st.order.push_back(Entry {
                key,
                receipt,
                ts_ms,
            });
        }
        let oldest_ok = now_ms().saturating_sub(self.ttl_ms);
        while st.order.len() > self.cap || st.order.front().is_some_and(|e| e.ts_ms < oldest_ok) {
            if let Some(e) = st.order.pop_front()
                && st.map.get(&e.key) == Some(&e.receipt)
            {
                st.map.remove(&e.key);
            }
        }
    }

    /// Looks a key up, claiming it when new.
    pub fn lookup(&self, key: &str) -> Lookup {
        let mut st = self.st.lock();
        if let Some(r) = st.map.get(key) {
            return Lookup::Stored(*r);
        }
        if let Some(tx) = st.pending.get(key) {
            return Lookup::InFlight(tx.subscribe());
        }
        st.pending.insert(key.to_string(), watch::channel(None).0);
        Lookup::Claimed
    }

    /// A claimed send was stored.
    pub fn complete(&self, key: String, receipt: Receipt) {
        let mut st = self.st.lock();
        if let Some(tx) = st.pending.remove(&key) {
            let _ = tx.send(Some(Some(receipt)));
        }
        self.insert(&mut st, key, receipt, now_ms());
    }

    /// A claimed send failed before it was stored.
    pub fn abort(&self, key: &str) {
        if let Some(tx) = self.st.lock().pending.remove(key) {
            let _ = tx.send(Some(None));
        }
    }

    /// Waits for an in-flight send; `None` when it failed (or did not finish in `timeout`).
    pub async fn wait(mut rx: Pending, timeout: Duration) -> Option<Receipt> {
        match tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await {
            Ok(Ok(v)) => (*v).flatten(),
            _ => None,
        }
    }

    /// Forgets everything (the role changed) and rebuilds from the log tail: every record
    /// from the start of the segment holding `log_end - scan_bytes`, within the time window.
    pub fn rebuild(&self, store: &Store, segment_dir: &std::path::Path, scan_bytes: u64) {
        let end = store.log_end_offset();
        let want = end.saturating_sub(scan_bytes);
        let from = segment_start_at(segment_dir, want).unwrap_or(0);
        let oldest_ok = now_ms().saturating_sub(self.ttl_ms);
        let mut st = self.st.lock();
        st.map.clear();
        st.order.clear();
        let mut n = 0usize;
        for r in store.scan(from) {
            let r: Record = match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "dedup window rebuild stopped early");
                    break;
                }
            };
            if r.store_ts_ms < oldest_ok {
                continue;
            }
            if let Some((_, id)) = r.properties.iter().find(|(k, _)| k == keys::MSG_ID) {
                let receipt = Receipt {
                    queue_id: r.queue_id,
                    queue_offset: r.queue_offset,
                    end: r.next_offset(),
                };
                self.insert(&mut st, key(&r.topic, id), receipt, r.store_ts_ms);
                n += 1;
            }
        }
        tracing::info!(
            from,
            end,
            ids = n,
            kept = st.map.len(),
            "dedup window rebuilt from the log"
        );
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.st.lock().map.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Start offset of the segment holding `offset` (segment files are named by their start).
fn segment_start_at(dir: &std::path::Path, offset: u64) -> Option<u64> {
    let mut best = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let name = e.file_name();
        let Some(start) = name.to_str().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        if start <= offset && best.is_none_or(|b| start > b) {
            best = Some(start);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(q: u64) -> Receipt {
        Receipt {
            queue_id: 0,
            queue_offset: q,
            end: q * 10,
        }
    }

    #[tokio::test]
    async fn claim_complete_duplicate_and_eviction() {
        let d = Dedup::new(2, Duration::from_secs(60));
        assert!(matches!(d.lookup("a"), Lookup::Claimed));
        let Lookup::InFlight(rx) = d.lookup("a") else {
            panic!("second lookup must wait for the first")
        };
        d.complete("a".into(), r(1));
        assert_eq!(Dedup::wait(rx, Duration::from_secs(1)).await, Some(r(1)));
        assert!(matches!(d.lookup("a"), Lookup::Stored(x) if x == r(1)));
        // abort lets waiters know and frees the id
        assert!(matches!(d.lookup("b"), Lookup::Claimed));
        let Lookup::InFlight(rx) = d.lookup("b") else {
            panic!()
        };
        d.abort("b");
        assert_eq!(Dedup::wait(rx, Duration::from_secs(1)).await, None);
        assert!(matches!(d.lookup("b"), Lookup::Claimed));
        d.complete("b".into(), r(2));
        assert!(matches!(d.lookup("c"), Lookup::Claimed));
        d.complete("c".into(), r(3));
        // capacity 2: "a" evicted
        assert_eq!(d.len(), 2);
        assert!(matches!(d.lookup("a"), Lookup::Claimed));
    }

    #[test]
    fn rebuild_finds_stored_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(sofamq_store::StoreConfig::new(dir.path())).unwrap();
        let rec = |id: &str| sofamq_store::NewRecord {
            topic: "t".into(),
            properties: vec![(keys::MSG_ID.into(), id.into())],
            body: "x".into(),
            ..Default::default()
        };
        let a = store.append_blocking(vec![rec("m1"), rec("m2")]).unwrap();
        let d = Dedup::new(100, Duration::from_secs(60));
        d.rebuild(&store, &dir.path().join("commitlog"), 1 << 30);
        let Lookup::Stored(got) = d.lookup(&key("t", "m2")) else {
            panic!("m2 not found")
        };
        assert_eq!(got.queue_offset, a[1].queue_offset);
        assert_eq!(got.end, a[1].log_offset + u64::from(a[1].size));
        assert!(matches!(d.lookup(&key("t", "m3")), Lookup::Claimed));
    }
}
