//! Consumption: consumer groups, receive with invisibility and receipt
//! handles, ack, redelivery, dead letters, offset-based pull.
//!
//! * [`config`]: `[consume]` limits and defaults.
//! * [`records`]: the consumer state records on `%SYS%CONSUMER` (format).
//! * [`state`]: one group's state on one topic (scan cursor + in-flight set).
//! * [`receipt`]: tamper-evident receipt handles.
//! * [`filter`]: tag filter expressions.
//! * [`request`]: request fields as the handlers read them (names, durations).
//! * [`receive`]: ReceiveMessage (long polling), Ack, ChangeInvisibleDuration.
//! * [`dlq`]: dead-letter topic `%DLQ%<group>`, forward and resend.
//! * [`offsets`]: PullMessage, UpdateOffset, GetOffset, QueryOffset.
//! * [`wire`]: stored record to `apache.rocketmq.v2.Message`.
//!
//! The commit log is the only store: every state change is a record on
//! [`records::CONSUMER_LOG`], enqueued under the (group, topic) lock so that
//! log order equals the order the changes were made in memory, and replayed
//! by [`Consumers::load`].

pub mod admin;
pub mod config;
pub mod dlq;
pub mod filter;
pub mod offsets;
pub mod online;
pub mod receipt;
pub mod receive;
pub mod records;
pub mod request;
pub mod state;
pub mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use sofamq_store::{Appended, NewRecord, Store, StoreError};
use tokio::sync::Notify;

pub use config::ConsumeConfig;
use records::{CONSUMER_LOG, ConsumerRecord, Op};
use state::GroupTopic;

use crate::clock::now_ms;
use crate::error::BrokerError;
use crate::meta::FLAG_META;

type AppendFuture = Pin<Box<dyn Future<Output = Result<Vec<Appended>, StoreError>> + Send>>;

/// An append already handed to the log writer (so its place in the log is
/// fixed), not yet known to be durable.
pub(crate) struct Pending {
    fut: AppendFuture,
    early: Option<Result<Vec<Appended>, StoreError>>,
}

impl Pending {
    /// Waits until the records are durable, at most `timeout`.
    pub(crate) async fn wait(self, timeout: Duration) -> Result<Vec<Appended>, BrokerError> {
        if let Some(r) = self.early {
            return Ok(r?);
        }
        match tokio::time::timeout(timeout, self.fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(BrokerError::MasterPersistence(format!(
                "consumer state not durable within {} ms",
                timeout.as_millis()
            ))),
        }
    }
}

/// Key of a group's state: (group, topic).
type Key = (String, String);

/// Every consumer group's state on this broker, rebuilt from the log.
pub struct Consumers {
    store: Store,
    cfg: ConsumeConfig,
    groups: Mutex<HashMap<Key, Arc<Mutex<GroupTopic>>>>,
    secret: RwLock<Option<[u8; 32]>>,
    secret_init: tokio::sync::Mutex<()>,
    wake: Notify,
    cursor: AtomicU32,
    online: online::Online,
}

impl Consumers {
    /// Replays every consumer record in `store`. Blocking.
    pub fn load(store: Store, cfg: ConsumeConfig) -> Result<Self, BrokerError> {
        let c = Self {
            store,
            cfg,
            groups: Mutex::new(HashMap::new()),
            secret: RwLock::new(None),
            secret_init: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            cursor: AtomicU32::new(0),
            online: online::Online::default(),
        };
        c.reload()?;
        Ok(c)
    }

    /// Consumer clients recently heard from, per group.
    pub fn online(&self) -> &online::Online {
        &self.online
    }

    /// Drops the in-memory state and replays it from the log (used at open,
    /// and by a slave that becomes master). Blocking.
    pub fn reload(&self) -> Result<(), BrokerError> {
        let mut groups: HashMap<Key, GroupTopic> = HashMap::new();
        let mut secret = None;
        let mut next = self.store.queue_offsets(CONSUMER_LOG, 0).0;
        let mut n = 0u64;
        loop {
            let batch = self
                .store
                .read_queue_durable(CONSUMER_LOG, 0, next, 1024, 8 << 20)
                .map_err(|e| BrokerError::Internal(format!("consumer log replay: {e}")))?;
            if batch.is_empty() {
                break;
            }
            for rec in &batch {
                next = rec.queue_offset + 1;
                n += 1;
                match records::decode(&rec.body) {
                    Ok(ConsumerRecord::Secret(s)) => {
                        // The first secret wins (a racing second one is ignored).
                        secret.get_or_insert(s);
                    }
                    Ok(ConsumerRecord::Ops { group, topic, ops }) => {
                        let gt = groups.entry((group, topic)).or_default();
                        for op in &ops {
                            gt.apply(op);
                        }
                    }
                    Err(e) => {
                        return Err(BrokerError::Internal(format!(
                            "consumer record at log offset {} is unreadable: {e}",
                            rec.log_offset
                        )));
                    }
                }
            }
        }
        tracing::info!(
            records = n,
            groups = groups.len(),
            "consumer state replayed"
        );
        *self.groups.lock() = groups
            .into_iter()
            .map(|(k, v)| (k, Arc::new(Mutex::new(v))))
            .collect();
        *self.secret.write() = secret;
        Ok(())
    }

    /// The consume configuration.
    pub fn config(&self) -> &ConsumeConfig {
        &self.cfg
    }

    /// Wakes waiting receives (new messages may be readable).
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    pub(crate) fn next_cursor(&self) -> u32 {
        self.cursor.fetch_add(1, Ordering::Relaxed)
    }

    /// The state of (group, topic), created when `create` (bounded by `max_groups`).
    pub(crate) fn group_topic(
        &self,
        group: &str,
        topic: &str,
        create: bool,
    ) -> Result<Option<Arc<Mutex<GroupTopic>>>, BrokerError> {
        let mut g = self.groups.lock();
        if let Some(s) = g.get(&(group.to_string(), topic.to_string())) {
            return Ok(Some(s.clone()));
        }
        if !create {
            return Ok(None);
        }
        if g.len() >= self.cfg.max_groups {
            return Err(BrokerError::TooManyRequests(format!(
                "the broker tracks {} (group, topic) pairs already, the limit",
                g.len()
            )));
        }
        let s = Arc::new(Mutex::new(GroupTopic::default()));
        g.insert((group.to_string(), topic.to_string()), s.clone());
        Ok(Some(s))
    }

    /// Every (group, topic) with its state, sorted.
    pub fn snapshot(&self) -> Vec<(String, String, GroupTopic)> {
        let all: Vec<_> = self
            .groups
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out: Vec<_> = all
            .into_iter()
            .map(|((g, t), s)| (g, t, s.lock().clone()))
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// The receipt secret, created (through the log) on first use.
    pub(crate) async fn secret(&self) -> Result<[u8; 32], BrokerError> {
        if let Some(s) = *self.secret.read() {
            return Ok(s);
        }
        let _g = self.secret_init.lock().await;
        if let Some(s) = *self.secret.read() {
            return Ok(s);
        }
        let s: [u8; 32] = crate::clock::random();
        let rec = meta_record(records::encode_secret(&s));
        self.store.append(vec![rec]).await?;
        *self.secret.write() = Some(s);
        Ok(s)
    }

    /// The secret if one exists (no write).
    pub(crate) fn existing_secret(&self) -> Option<[u8; 32]> {
        *self.secret.read()
    }

    /// Hands `records` to the log writer now (call it while holding the
    /// (group, topic) lock, so the log order is the in-memory order).
    pub(crate) fn enqueue(&self, records: Vec<NewRecord>) -> Pending {
        let store = self.store.clone();
        let mut fut: AppendFuture = Box::pin(async move { store.append(records).await });
        // The first poll submits the records to the writer (synchronously)
        // and then waits on a oneshot; the real waker is registered when the
        // caller awaits `Pending::wait`.
        let mut cx = Context::from_waker(Waker::noop());
        let early = match fut.as_mut().poll(&mut cx) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        };
        Pending { fut, early }
    }

    /// The persist timeout for consumer records.
    pub(crate) fn ops_record(group: &str, topic: &str, ops: &[Op]) -> NewRecord {
        meta_record(records::encode_ops(group, topic, ops))
    }
}

fn meta_record(body: Vec<u8>) -> NewRecord {
    NewRecord {
        topic: CONSUMER_LOG.to_string(),
        queue_id: 0,
        flags: FLAG_META,
        tag: String::new(),
        born_ts_ms: now_ms(),
        properties: Vec::new(),
        body: Bytes::from(body),
    }
}

/// FNV-1a of a FIFO message group, never 0 (0 means "no group").
pub(crate) fn group_key(group: &str) -> u64 {
    let h = sofamq_store::tag_hash(group);
    if h == 0 { 1 } else { h }
}
