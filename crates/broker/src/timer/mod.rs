//! Timer (DELAY) messages.
//!
//! A DELAY message is stored, like every send, durably on the master and its in-sync
//! slaves, but on the reserved topic [`TIMER_TOPIC`] queue 0 with its real topic in a
//! property, so no consumer sees it. Every broker (master or slave) tails that queue and
//! the op queue 1 into an on-disk index keyed by due time ([`index`]), so a promoted slave
//! has the index ready and a restarted broker resumes from the index checkpoint.
//!
//! Only the master fires: it keeps in memory just the timers due within the next bucket
//! (the "window"), and when one is due it appends, in one batch, a copy of the message to
//! its real topic and an op record (queue 1) that marks it done. A recall appends an op
//! record too. State lives only in the log: the index is derived and can be rebuilt.
//! Timers whose op did not reach the log (a crash between the two, or a failover before
//! the op replicated) fire again: delivery stays at least once, never early, never lost.

pub mod index;
pub mod service;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sofamq_server::metrics::LatencyHistogram;
use sofamq_store::{NewRecord, Record, Store};
use tokio::sync::Notify;

use crate::error::BrokerError;
use crate::topics::{FLAG_META, now_ms};
use crate::validate::keys;
pub use index::Done;
use index::Index;

/// Reserved topic: queue 0 holds timer records, queue 1 their op records.
pub const TIMER_TOPIC: &str = "%SYS%TIMER";
const Q_TIMERS: u32 = 0;
const Q_OPS: u32 = 1;
/// Records read per index step and queue.
const READ_BATCH: usize = 256;

/// Timer settings (`[timer]` in the broker's TOML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimerConfig {
    /// Latest delivery time accepted, relative to now; later is ILLEGAL_DELIVERY_TIME.
    pub max_delay_ms: u64,
    /// Width of one index bucket (file pair) on disk. The master keeps in memory the
    /// timers due within one bucket from now.
    pub bucket_ms: u64,
    /// Most timers delivered in one append.
    pub max_fire_batch: usize,
    /// Most timers held in memory at once (the window stops loading buckets past it).
    pub max_loaded: usize,
    /// How often the index fsyncs its files and checkpoints.
    pub checkpoint_interval_ms: u64,
    /// Longest sleep of the timer loop when nothing wakes it.
    pub poll_interval_ms: u64,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            max_delay_ms: 40 * 24 * 3600 * 1000,
            bucket_ms: 60_000,
            max_fire_batch: 1024,
            max_loaded: 500_000,
            checkpoint_interval_ms: 1_000,
            poll_interval_ms: 100,
        }
    }
}

/// An op record's body: timers that left the pending set, `(queue offset, due ms, topic)`.
#[derive(Debug, Serialize, Deserialize)]
struct Op {
    k: Done,
    e: Vec<(u64, u64, String)>,
}

#[derive(Debug, Default)]
struct Window {
    /// Buckets whose pending timers are in `heap`, with how many are still pending.
    loaded: BTreeMap<u64, usize>,
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    /// Pending timers of loaded buckets: queue offset → bucket.
    pending: HashMap<u64, u64>,
}

struct State {
    index: Option<Index>,
    /// Only on a master that fires.
    window: Option<Window>,
    /// Timers being delivered or recalled whose op is not indexed yet.
    claimed: HashMap<u64, Done>,
    dirty: bool,
    failed: Option<String>,
}

/// The broker's timer service; see the module docs.
pub struct Timers {
    cfg: TimerConfig,
    state: Mutex<State>,
    wake: Notify,
    lateness: LatencyHistogram,
    fired: AtomicU64,
    recalled: AtomicU64,
    dropped: AtomicU64,
}

/// What `Pending` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimerStats {
    /// Pending timers per real topic.
    pub per_topic: BTreeMap<String, u64>,
    /// Earliest due time known (epoch ms), 0 when none.
    pub next_due_ms: i64,
}

/// `(due ms, real topic)` of a timer record.
fn timer_of(r: &Record) -> Option<(u64, &str)> {
    let due = r.property(keys::DELIVER_AT)?.parse::<u64>().ok()?;
    Some((due, r.property(keys::REAL_TOPIC)?))
}

impl Timers {
    /// Opens the index under `dir` on the file system `fs` (the store's; blocking).
    pub fn open(
        cfg: TimerConfig,
        fs: std::sync::Arc<dyn sofamq_store::io::Fs>,
        dir: &std::path::Path,
    ) -> Result<Timers, BrokerError> {
        if cfg.bucket_ms == 0 || cfg.max_fire_batch == 0 || cfg.max_loaded == 0 {
            return Err(BrokerError::Internal(
                "timer: bucket_ms, max_fire_batch and max_loaded must be > 0".into(),
            ));
        }
        let index = Index::open(fs, dir, cfg.bucket_ms)
            .map_err(|e| BrokerError::Internal(format!("timer index {}: {e}", dir.display())))?;
        Ok(Timers {
            cfg,
            state: Mutex::new(State {
                index: Some(index),
                window: None,
                claimed: HashMap::new(),
                dirty: false,
                failed: None,
            }),
            wake: Notify::new(),
            lateness: LatencyHistogram::default(),
            fired: AtomicU64::new(0),
            recalled: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// The settings.
    pub fn config(&self) -> &TimerConfig {
        &self.cfg
    }

    /// Wakes the timer loop (new timer or op records may be readable).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Delivered minus due, per delivered timer.
    pub fn lateness(&self) -> &LatencyHistogram {
        &self.lateness
    }

    /// `(fired, recalled, dropped)` counters.
    pub fn counters(&self) -> (u64, u64, u64) {
        (
            self.fired.load(Ordering::Relaxed),
            self.recalled.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }

    /// Pending timers per topic and the earliest due time.
    pub fn stats(&self) -> TimerStats {
        let st = self.state.lock();
        let Some(idx) = st.index.as_ref() else {
            return TimerStats::default();
        };
        let mut next = st
            .window
            .as_ref()
            .and_then(|w| {
                w.heap
                    .iter()
                    .filter(|Reverse((_, q))| w.pending.contains_key(q))
                    .map(|Reverse((d, _))| *d)
                    .min()
            })
            .unwrap_or(u64::MAX);
        let loaded = st.window.as_ref().map(|w| &w.loaded);
        if let Some(b) = idx
            .buckets()
            .iter()
            .find(|b| loaded.is_none_or(|l| !l.contains_key(b)))
        {
            next = next.min(idx.bucket_start(*b));
        }
        TimerStats {
            per_topic: idx.cp.counts.clone(),
            next_due_ms: if next == u64::MAX { 0 } else { next as i64 },
        }
    }

    /// Total pending timers.
    pub fn pending_total(&self) -> u64 {
        self.state
            .lock()
            .index
            .as_ref()
            .map(|i| i.cp.counts.values().sum())
            .unwrap_or(0)
    }

    /// Indexes newly readable timer and op records (blocking file I/O). Returns whether
    /// anything changed.
    fn index_step(&self, store: &Store) -> Result<bool, BrokerError> {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        if let Some(f) = &st.failed {
            return Err(BrokerError::Internal(f.clone()));
        }
        let Some(idx) = st.index.as_mut() else {
            return Ok(false);
        };
        let io = |e: std::io::Error| BrokerError::Internal(format!("timer index: {e}"));
        let end_t = store.queue_offsets(TIMER_TOPIC, Q_TIMERS).1;
        let end_o = store.queue_offsets(TIMER_TOPIC, Q_OPS).1;
        let cut = |last: Option<(u64, u64)>, q: u32| -> Result<bool, BrokerError> {
            Ok(match last {
                // Still there (durable, replicated or not): not cut.
                Some((qo, lo)) => store
                    .read_queue_entries_below(TIMER_TOPIC, q, qo, 1, store.durable_offset())?
                    .first()
                    .is_none_or(|e| e.log_offset != lo),
                None => false,
            })
        };
        if end_t < idx.cp.next_timer
            || end_o < idx.cp.next_op
            || cut(idx.cp.last_timer, Q_TIMERS)?
            || cut(idx.cp.last_op, Q_OPS)?
        {
            tracing::warn!("the log was cut below the timer index: rebuilding it from the log");
            idx.wipe().map_err(io)?;
            st.claimed.clear();
            if st.window.is_some() {
                st.window = Some(Window::default());
            }
        }
        if end_t == idx.cp.next_timer && end_o == idx.cp.next_op {
            return Ok(false);
        }
        let mut changed = false;
        while idx.cp.next_timer < end_t {
            let recs = store.read_queue(
                TIMER_TOPIC,
                Q_TIMERS,
                idx.cp.next_timer,
                READ_BATCH,
                4 << 20,
            )?;
            if recs.is_empty() {
                break;
            }
            for r in &recs {
                match timer_of(r) {
                    Some((due, topic)) => {
                        let b = idx.add_timer(due, r.queue_offset).map_err(io)?;
                        *idx.cp.counts.entry(topic.to_string()).or_default() += 1;
                        if let Some(w) = st.window.as_mut()
                            && let Some(n) = w.loaded.get_mut(&b)
                        {
                            *n += 1;
                            w.pending.insert(r.queue_offset, b);
                            w.heap.push(Reverse((due, r.queue_offset)));
                        }
                    }
                    None => tracing::warn!(
                        log_offset = r.log_offset,
                        "timer record without a due time or topic: skipped"
                    ),
                }
                idx.cp.next_timer = r.queue_offset + 1;
                idx.cp.last_timer = Some((r.queue_offset, r.log_offset));
                changed = true;
            }
        }
        'ops: while idx.cp.next_op < end_o {
            let recs = store.read_queue(TIMER_TOPIC, Q_OPS, idx.cp.next_op, READ_BATCH, 4 << 20)?;
            if recs.is_empty() {
                break;
            }
            for r in &recs {
                let op: Op = match serde_json::from_slice(&r.body) {
                    Ok(op) => op,
                    Err(e) => {
                        tracing::warn!(log_offset = r.log_offset, error = %e, "unreadable timer op: skipped");
                        Op {
                            k: Done::Dropped,
                            e: Vec::new(),
                        }
                    }
                };
                // An op always follows its timer in the log; wait for the timer's index entry.
                if op.e.iter().any(|(q, _, _)| *q >= idx.cp.next_timer) {
                    break 'ops;
                }
                for (q, due, topic) in &op.e {
                    idx.add_done(*due, *q, op.k).map_err(io)?;
                    if let Some(n) = idx.cp.counts.get_mut(topic) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            idx.cp.counts.remove(topic);
                        }
                    }
                    st.claimed.remove(q);
                    if let Some(w) = st.window.as_mut()
                        && let Some(b) = w.pending.remove(q)
                        && let Some(n) = w.loaded.get_mut(&b)
                    {
                        *n = n.saturating_sub(1);
                    }
                }
                idx.cp.next_op = r.queue_offset + 1;
                idx.cp.last_op = Some((r.queue_offset, r.log_offset));
                changed = true;
            }
        }
        st.dirty |= changed;
        Ok(changed)
    }

    /// fsyncs the index files and writes the checkpoint (blocking).
    fn checkpoint(&self) -> Result<(), BrokerError> {
        let mut st = self.state.lock();
        if !st.dirty {
            return Ok(());
        }
        if let Some(idx) = st.index.as_mut() {
            idx.checkpoint()
                .map_err(|e| BrokerError::Internal(format!("timer index checkpoint: {e}")))?;
        }
        st.dirty = false;
        Ok(())
    }

    /// Master only: loads the buckets due within one bucket width into memory and drops
    /// the finished ones (blocking file I/O).
    fn load_window(&self, now: u64) -> Result<(), BrokerError> {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let (Some(idx), Some(w)) = (st.index.as_mut(), st.window.as_mut()) else {
            return Ok(());
        };
        let io = |e: std::io::Error| BrokerError::Internal(format!("timer index: {e}"));
        let horizon = now.saturating_add(idx.bucket_ms());
        let done: Vec<u64> = w
            .loaded
            .iter()
            .filter(|(b, n)| **n == 0 && idx.bucket_start(**b + 1) <= now)
            .map(|(b, _)| *b)
            .collect();
        for b in done {
            w.loaded.remove(&b);
            idx.remove_bucket(b).map_err(io)?;
        }
        let candidates: Vec<u64> = idx
            .buckets()
            .iter()
            .take_while(|b| idx.bucket_start(**b) <= horizon)
            .filter(|b| !w.loaded.contains_key(b))
            .copied()
            .collect();
        for b in candidates {
            if !w.pending.is_empty() && w.pending.len() >= self.cfg.max_loaded {
                break;
            }
            let pending = idx.pending_of(b).map_err(io)?;
            w.loaded.insert(b, pending.len());
            for (due, q) in pending {
                w.pending.insert(q, b);
                w.heap.push(Reverse((due, q)));
            }
        }
        Ok(())
    }

    /// Master only: takes the due timers (at most one batch) and claims them.
    fn take_due(&self, now: u64) -> Vec<(u64, u64)> {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let Some(w) = st.window.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while out.len() < self.cfg.max_fire_batch {
            match w.heap.peek() {
                Some(Reverse((due, _))) if *due <= now => {}
                _ => break,
            }
            let Some(Reverse((due, q))) = w.heap.pop() else {
                break;
            };
            if !w.pending.contains_key(&q) || st.claimed.contains_key(&q) {
                continue;
            }
            st.claimed.insert(q, Done::Fired);
            out.push((due, q));
        }
        out
    }

    /// Gives back claimed timers whose delivery failed.
    fn unclaim(&self, items: &[(u64, u64)]) {
        let mut st = self.state.lock();
        for (due, q) in items {
            st.claimed.remove(q);
            if let Some(w) = st.window.as_mut() {
                w.heap.push(Reverse((*due, *q)));
            }
        }
    }

    /// When the next timer in memory is due, if any.
    fn next_due(&self) -> Option<u64> {
        let st = self.state.lock();
        let w = st.window.as_ref()?;
        w.heap.peek().map(|Reverse((d, _))| *d)
    }

    fn set_firing(&self, on: bool) {
        let mut st = self.state.lock();
        match (on, st.window.is_some()) {
            (true, false) => st.window = Some(Window::default()),
            (false, true) => {
                st.window = None;
                st.claimed.clear();
            }
            _ => {}
        }
    }

    fn fail(&self, e: &BrokerError) {
        tracing::error!(error = %e, "timer index failed; timers stop until restart");
        self.state.lock().failed = Some(e.to_string());
    }
}

fn op_record(op: &Op) -> Result<NewRecord, BrokerError> {
    Ok(NewRecord {
        topic: TIMER_TOPIC.to_string(),
        queue_id: Q_OPS,
        flags: FLAG_META,
        tag: String::new(),
        born_ts_ms: now_ms(),
        properties: Vec::new(),
        body: Bytes::from(
            serde_json::to_vec(op).map_err(|e| BrokerError::Internal(e.to_string()))?,
        ),
    })
}

/// The message a timer record delivers: the same record on its real topic, without the
/// timer's own property.
pub(crate) fn released(rec: Record, topic: &str, queue_id: u32) -> NewRecord {
    NewRecord {
        topic: topic.to_string(),
        queue_id,
        flags: 0,
        tag: rec.tag,
        born_ts_ms: rec.born_ts_ms,
        properties: rec
            .properties
            .into_iter()
            .filter(|(k, _)| k != keys::REAL_TOPIC)
            .collect(),
        body: rec.body,
    }
}
