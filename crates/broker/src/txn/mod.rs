//! Transactional messages.
//!
//! A half message is stored like every send (durable on the master and its in-sync
//! slaves) on the reserved topic [`HALF_TOPIC`] queue 0 with its real topic in a property,
//! so no consumer sees it. EndTransaction appends an op record to queue 1 — for COMMIT in
//! the same batch as a copy of the message on its real topic — so commit and its op are
//! one write. Every broker tails both queues into the set of open half messages (held in
//! memory, bounded by `max_open`), so a promoted slave knows them; a checkpoint of the
//! lowest open half lets a restart resume without reading every transaction ever.
//!
//! The master asks a live producer of the topic (over its Telemetry stream) about a half
//! message still open after `check_delay_ms`, every `check_interval_ms`, at most
//! `max_checks` times; then applies `default_outcome`. Check counts are kept in memory:
//! after a restart or failover the checks start over (more checks, never fewer).

pub mod producers;
pub mod service;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sofamq_proto::v2::{
    EndTransactionRequest, RecoverOrphanedTransactionCommand, TelemetryCommand,
    TransactionResolution, TransactionSource, telemetry_command::Command,
};
use sofamq_store::{NewRecord, Store};
use tokio::sync::Notify;

use crate::error::BrokerError;
use crate::handles::TransactionId;
use crate::topics::{FLAG_META, now_ms};
use crate::validate::keys;

/// Reserved topic: queue 0 holds half messages, queue 1 their op records.
pub const HALF_TOPIC: &str = "%SYS%HALF";
const Q_HALF: u32 = 0;
const Q_OPS: u32 = 1;
const READ_BATCH: usize = 256;
/// Ended transactions whose outcome is remembered for repeated EndTransaction calls.
const RECENT_ENDS: usize = 65_536;

/// What happens to a half message nobody resolved after every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Deliver it.
    Commit,
    /// Discard it (RocketMQ's behaviour).
    #[default]
    Rollback,
}

/// Transaction settings (`[transaction]` in the broker's TOML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TxnConfig {
    /// Age of a half message before its first check-back (a message's own
    /// `orphaned_transaction_recovery_duration` overrides it).
    pub check_delay_ms: u64,
    /// Time between check-backs of one half message.
    pub check_interval_ms: u64,
    /// Check-backs before `default_outcome` applies.
    pub max_checks: u32,
    /// Outcome of a half message still open after every check.
    pub default_outcome: Outcome,
    /// Most open half messages; more are refused with TOO_MANY_REQUESTS.
    pub max_open: usize,
    /// How often the open set is looked at (checks due, checkpoint).
    pub tick_ms: u64,
}

impl Default for TxnConfig {
    fn default() -> Self {
        Self {
            check_delay_ms: 6_000,
            check_interval_ms: 60_000,
            max_checks: 15,
            default_outcome: Outcome::Rollback,
            max_open: 100_000,
            tick_ms: 200,
        }
    }
}

/// How a transaction ended, as op records store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum End {
    /// Committed by the producer.
    Commit,
    /// Rolled back by the producer.
    Rollback,
}

/// Who ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum By {
    /// The producer, on its own.
    Client,
    /// The producer, answering a check-back.
    Check,
    /// The broker, after the last check (`default_outcome`).
    Timeout,
}

#[derive(Debug, Serialize, Deserialize)]
struct Op {
    q: u64,
    r: End,
    by: By,
}

#[derive(Debug, Clone)]
struct Open {
    topic: String,
    stored_ms: i64,
    next_check_ms: i64,
    checks: u32,
    /// Op-queue cursor when this half was indexed (every op for it is at or past it).
    op_cursor: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    low: u64,
    op_from: u64,
}

#[derive(Default)]
struct State {
    open: BTreeMap<u64, Open>,
    next_half: u64,
    next_op: u64,
    last_half: Option<(u64, u64)>,
    last_op: Option<(u64, u64)>,
    /// Being ended now (op not indexed yet).
    claimed: HashMap<u64, End>,
    recent: BTreeMap<u64, End>,
}

/// Counters by outcome.
#[derive(Debug, Default)]
pub struct TxnCounters {
    /// Check-back commands sent.
    pub checks_sent: AtomicU64,
    /// Checks due with no live producer of the topic.
    pub checks_unanswerable: AtomicU64,
    /// Outcomes: [commit, rollback] × [client, check, timeout].
    pub outcomes: [[AtomicU64; 3]; 2],
}

/// The broker's transaction service; see the module docs.
pub struct Txns {
    cfg: TxnConfig,
    state: Mutex<State>,
    cp_path: PathBuf,
    /// The file system of the store (the checkpoint lives beside it).
    fs: Arc<dyn sofamq_store::io::Fs>,
    wake: Notify,
    /// Live producers' Telemetry streams.
    pub producers: producers::Producers,
    /// Counters for `/metrics`.
    pub counters: TxnCounters,
}

/// Per-topic open half messages: `(count, oldest store time ms)`.
pub type OpenStats = BTreeMap<String, (u64, i64)>;

fn end_of(res: i32) -> Result<End, BrokerError> {
    match TransactionResolution::try_from(res) {
        Ok(TransactionResolution::Commit) => Ok(End::Commit),
        Ok(TransactionResolution::Rollback) => Ok(End::Rollback),
        _ => Err(BrokerError::BadRequest(
            "transaction resolution must be COMMIT or ROLLBACK".into(),
        )),
    }
}

impl Txns {
    /// Loads the open set: from the checkpoint in `dir`, reading the half and op queues
    /// past it (blocking).
    pub fn open(cfg: TxnConfig, dir: &Path, store: &Store) -> Result<Txns, BrokerError> {
        let fs = store.fs();
        fs.create_dir_all(dir)
            .map_err(|e| BrokerError::Internal(format!("{}: {e}", dir.display())))?;
        let cp_path = dir.join("txn.checkpoint");
        let cp: Checkpoint = fs
            .read(&cp_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let (_, end_h) = store.queue_offsets(HALF_TOPIC, Q_HALF);
        let (_, end_o) = store.queue_offsets(HALF_TOPIC, Q_OPS);
        let state = if cp.low <= end_h && cp.op_from <= end_o {
            State {
                next_half: cp.low,
                next_op: cp.op_from,
                ..State::default()
            }
        } else {
            // The log was cut below the checkpoint: read everything.
            State::default()
        };
        let t = Txns {
            cfg,
            state: Mutex::new(state),
            cp_path,
            fs,
            wake: Notify::new(),
            producers: producers::Producers::default(),
            counters: TxnCounters::default(),
        };
        t.index_step(store)?;
        Ok(t)
    }

    /// The settings.
    pub fn config(&self) -> &TxnConfig {
        &self.cfg
    }

    /// Wakes the transaction loop.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether another half message may be stored now.
    pub fn check_capacity(&self) -> Result<(), BrokerError> {
        let n = self.state.lock().open.len();
        if n >= self.cfg.max_open {
            return Err(BrokerError::TooManyRequests(format!(
                "{n} open transactions, the limit is {}; end some first",
                self.cfg.max_open
            )));
        }
        Ok(())
    }

    /// Open half messages per topic.
    pub fn stats(&self) -> OpenStats {
        let st = self.state.lock();
        let mut m: OpenStats = BTreeMap::new();
        for o in st.open.values() {
            let e = m.entry(o.topic.clone()).or_insert((0, i64::MAX));
            e.0 += 1;
            e.1 = e.1.min(o.stored_ms);
        }
        m
    }

    /// Total open half messages.
    pub fn open_total(&self) -> usize {
        self.state.lock().open.len()
    }

    fn count(&self, end: End, by: By) {
        let i = match end {
            End::Commit => 0,
            End::Rollback => 1,
        };
        let j = match by {
            By::Client => 0,
            By::Check => 1,
            By::Timeout => 2,
        };
        self.counters.outcomes[i][j].fetch_add(1, Ordering::Relaxed);
    }

    /// Reads newly readable half and op records into the open set.
    fn index_step(&self, store: &Store) -> Result<bool, BrokerError> {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let (_, end_h) = store.queue_offsets(HALF_TOPIC, Q_HALF);
        let (_, end_o) = store.queue_offsets(HALF_TOPIC, Q_OPS);
        let cut = |last: Option<(u64, u64)>, q: u32| -> Result<bool, BrokerError> {
            Ok(match last {
                // Still there (durable, replicated or not): not cut.
                Some((qo, lo)) => store
                    .read_queue_entries_below(HALF_TOPIC, q, qo, 1, store.durable_offset())?
                    .first()
                    .is_none_or(|e| e.log_offset != lo),
                None => false,
            })
        };
        if end_h < st.next_half
            || end_o < st.next_op
            || cut(st.last_half, Q_HALF)?
            || cut(st.last_op, Q_OPS)?
        {
            tracing::warn!("the log was cut below the open transactions: reading them again");
            *st = State::default();
        }
        let mut changed = false;
        let check_delay = i64::try_from(self.cfg.check_delay_ms).unwrap_or(i64::MAX);
        while st.next_half < end_h {
            let recs = store.read_queue(HALF_TOPIC, Q_HALF, st.next_half, READ_BATCH, 4 << 20)?;
            if recs.is_empty() {
                break;
            }
            for r in &recs {
                let topic = r.property(keys::REAL_TOPIC).unwrap_or_default().to_string();
                let delay = r
                    .property(keys::TXN_CHECK_MS)
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(check_delay);
                st.open.insert(
                    r.queue_offset,
                    Open {
                        topic,
                        stored_ms: r.store_ts_ms,
                        next_check_ms: r.store_ts_ms.saturating_add(delay),
                        checks: 0,
                        op_cursor: st.next_op,
                    },
                );
                st.next_half = r.queue_offset + 1;
                st.last_half = Some((r.queue_offset, r.log_offset));
                changed = true;
            }
        }
        'ops: while st.next_op < end_o {
            let recs = store.read_queue(HALF_TOPIC, Q_OPS, st.next_op, READ_BATCH, 4 << 20)?;
            if recs.is_empty() {
                break;
            }
            for r in &recs {
                match serde_json::from_slice::<Op>(&r.body) {
                    Ok(op) => {
                        if op.q >= st.next_half {
                            break 'ops;
                        }
                        st.open.remove(&op.q);
                        st.claimed.remove(&op.q);
                        st.recent.insert(op.q, op.r);
                        while st.recent.len() > RECENT_ENDS {
                            st.recent.pop_first();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(log_offset = r.log_offset, error = %e, "unreadable transaction op: skipped");
                    }
                }
                st.next_op = r.queue_offset + 1;
                st.last_op = Some((r.queue_offset, r.log_offset));
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Writes the resume point (lowest open half) durably (blocking).
    fn checkpoint(&self) -> Result<(), BrokerError> {
        let cp = {
            let st = self.state.lock();
            match st.open.first_key_value() {
                Some((q, o)) => Checkpoint {
                    low: *q,
                    op_from: o.op_cursor,
                },
                None => Checkpoint {
                    low: st.next_half,
                    op_from: st.next_op,
                },
            }
        };
        let io = |e: std::io::Error| BrokerError::Internal(format!("transaction checkpoint: {e}"));
        let tmp = self.cp_path.with_extension("tmp");
        let body = serde_json::to_vec(&cp).map_err(|e| BrokerError::Internal(e.to_string()))?;
        self.fs.write_synced(&tmp, &body).map_err(io)?;
        self.fs.rename(&tmp, &self.cp_path).map_err(io)?;
        Ok(())
    }

    /// Half messages due for a check-back (or for the default outcome) now.
    fn due_checks(&self, now: i64) -> (Vec<(u64, String)>, Vec<u64>) {
        let mut st = self.state.lock();
        let claimed: BTreeSet<u64> = st.claimed.keys().copied().collect();
        let mut ask = Vec::new();
        let mut expire = Vec::new();
        let interval = i64::try_from(self.cfg.check_interval_ms).unwrap_or(i64::MAX);
        for (q, o) in st.open.iter_mut() {
            if o.next_check_ms > now || claimed.contains(q) {
                continue;
            }
            if o.checks >= self.cfg.max_checks {
                expire.push(*q);
            } else {
                o.checks += 1;
                o.next_check_ms = now.saturating_add(interval);
                ask.push((*q, o.topic.clone()));
            }
            if ask.len() + expire.len() >= 1024 {
                break;
            }
        }
        (ask, expire)
    }
}
