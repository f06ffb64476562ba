//! Broker metrics: counters updated on the request path (relaxed atomics behind
//! pre-registered per-topic handles, no per-message allocation) and a renderer that
//! reads them, plus the store, replication and consumer state, when `/metrics` is
//! scraped. `/health` reports role, epoch, fencing and in-sync state.
//!
//! Every sample carries `broker` and `broker_id` labels, and each broker serves only its
//! own numbers on its own HTTP port, so several brokers in one process stay apart.

mod render;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use sofamq_proto::v2::{Code, Message, SendMessageResponse};
use sofamq_server::metrics::{Connections, LatencyHistogram};
use sofamq_store::NewRecord;

pub use render::Observed;

/// Most topics with their own series; the rest are summed under [`OTHER_TOPIC`].
pub const MAX_TOPIC_SERIES: usize = 10_000;
/// The `topic` label of topics beyond [`MAX_TOPIC_SERIES`].
pub const OTHER_TOPIC: &str = "%OTHER%";
/// Most distinct rejection codes kept (codes are a small fixed set; this only bounds abuse).
const MAX_CODES: usize = 256;

/// Traffic counters of one topic.
#[derive(Debug, Default)]
pub struct TopicCounters {
    msgs_in: AtomicU64,
    bytes_in: AtomicU64,
    msgs_out: AtomicU64,
    bytes_out: AtomicU64,
}

/// Stored-message tally of one send request, applied once the append succeeded.
pub struct InTally(Vec<(Arc<TopicCounters>, u64, u64)>);

/// The broker's own counters.
#[derive(Debug, Default)]
pub struct Metrics {
    topics: RwLock<HashMap<String, Arc<TopicCounters>>>,
    send_latency: LatencyHistogram,
    rejected: Mutex<BTreeMap<i32, u64>>,
    conns: Arc<Connections>,
    http_addr: OnceLock<SocketAddr>,
}

impl Metrics {
    /// The counters of `topic`, created on first use (bounded by [`MAX_TOPIC_SERIES`]).
    pub fn topic(&self, topic: &str) -> Arc<TopicCounters> {
        if let Some(c) = self.topics.read().get(topic) {
            return c.clone();
        }
        let mut g = self.topics.write();
        let key = if g.len() >= MAX_TOPIC_SERIES && !g.contains_key(topic) {
            OTHER_TOPIC
        } else {
            topic
        };
        g.entry(key.to_string()).or_default().clone()
    }

    /// Tallies the records of one send (consecutive records of one topic share a handle).
    pub fn tally_in(&self, records: &[NewRecord]) -> InTally {
        let mut v: Vec<(Arc<TopicCounters>, u64, u64)> = Vec::new();
        let mut last: Option<&str> = None;
        for r in records {
            let bytes = r.body.len() as u64;
            match (last, v.last_mut()) {
                (Some(t), Some(e)) if t == r.topic => {
                    e.1 += 1;
                    e.2 += bytes;
                }
                _ => {
                    v.push((self.topic(&r.topic), 1, bytes));
                    last = Some(&r.topic);
                }
            }
        }
        InTally(v)
    }

    /// Counts a tally as stored.
    pub fn commit_in(&self, tally: InTally) {
        for (c, n, b) in tally.0 {
            c.msgs_in.fetch_add(n, Ordering::Relaxed);
            c.bytes_in.fetch_add(b, Ordering::Relaxed);
        }
    }

    /// Counts messages delivered to consumers (receive or pull).
    pub fn delivered(&self, msgs: &[Message]) {
        let mut i = 0;
        while i < msgs.len() {
            let topic = msgs[i]
                .topic
                .as_ref()
                .map(|t| t.name.as_str())
                .unwrap_or("");
            let c = self.topic(topic);
            let (mut n, mut b) = (0u64, 0u64);
            while i < msgs.len()
                && msgs[i]
                    .topic
                    .as_ref()
                    .map(|t| t.name.as_str())
                    .unwrap_or("")
                    == topic
            {
                n += 1;
                b += msgs[i].body.len() as u64;
                i += 1;
            }
            c.msgs_out.fetch_add(n, Ordering::Relaxed);
            c.bytes_out.fetch_add(b, Ordering::Relaxed);
        }
    }

    /// Records one answered SendMessage: its latency and every non-OK code in it.
    pub fn send_done(&self, took: Duration, resp: &SendMessageResponse) {
        self.send_latency.observe(took);
        let ok = Code::Ok as i32;
        if resp.entries.is_empty() {
            if let Some(s) = &resp.status
                && s.code != ok
            {
                self.rejected(s.code);
            }
            return;
        }
        for e in &resp.entries {
            if let Some(s) = &e.status
                && s.code != ok
            {
                self.rejected(s.code);
            }
        }
    }

    /// Counts one request (or message) refused with `code`.
    pub fn rejected(&self, code: i32) {
        let mut g = self.rejected.lock();
        if g.len() < MAX_CODES || g.contains_key(&code) {
            *g.entry(code).or_default() += 1;
        }
    }

    /// The client connection counter (wraps the accept stream).
    pub fn connections(&self) -> Arc<Connections> {
        self.conns.clone()
    }

    /// Remembers the bound HTTP address (first call wins).
    pub fn set_http_addr(&self, a: SocketAddr) {
        let _ = self.http_addr.set(a);
    }

    /// The HTTP (`/metrics`, `/health`) address, once serving.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr.get().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(topic: &str, n: usize) -> NewRecord {
        NewRecord {
            topic: topic.into(),
            queue_id: 0,
            flags: 0,
            tag: String::new(),
            born_ts_ms: 0,
            properties: Vec::new(),
            body: Bytes::from(vec![0u8; n]),
        }
    }

    #[test]
    fn tally_groups_topics_and_counts_only_after_commit() {
        let m = Metrics::default();
        let t = m.tally_in(&[rec("a", 10), rec("a", 5), rec("b", 1), rec("a", 2)]);
        assert_eq!(m.topic("a").msgs_in.load(Ordering::Relaxed), 0);
        m.commit_in(t);
        let a = m.topic("a");
        assert_eq!(a.msgs_in.load(Ordering::Relaxed), 3);
        assert_eq!(a.bytes_in.load(Ordering::Relaxed), 17);
        assert_eq!(m.topic("b").bytes_in.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn topic_series_are_bounded() {
        let m = Metrics::default();
        for i in 0..MAX_TOPIC_SERIES + 5 {
            m.topic(&format!("t{i}"));
        }
        assert_eq!(m.topics.read().len(), MAX_TOPIC_SERIES + 1);
        assert!(m.topics.read().contains_key(OTHER_TOPIC));
    }
}
