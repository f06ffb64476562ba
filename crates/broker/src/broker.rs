//! The broker's state: its configuration, its log, its topic table. Request
//! handlers (send, admin, later consume and replication) are `impl Broker`
//! blocks in their own files.

use std::sync::Arc;
use std::time::Duration;

use sofamq_store::{FlushMode as StoreFlush, Store, StoreConfig};
use tokio::sync::Notify;

use crate::config::{BrokerConfig, FlushMode};
use crate::consume::Consumers;
use crate::error::BrokerError;
use crate::send::queue::QueueCursor;
use crate::topics::{PERM_READ, PERM_WRITE, TopicConfig, TopicType, Topics};
use crate::validate;

/// A broker: cheap to clone, shared by every handler.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    config: BrokerConfig,
    store: Store,
    topics: Topics,
    consumers: Consumers,
    repl: Arc<crate::repl::Replication>,
    cursor: QueueCursor,
    topics_changed: Notify,
    /// True once a NameServer accepted this broker's registration.
    registered: tokio::sync::watch::Sender<bool>,
    metrics: crate::metrics::Metrics,
    acl: crate::acl::Acl,
    send_bytes: std::sync::Arc<tokio::sync::Semaphore>,
    timers: Arc<crate::timer::Timers>,
    txns: Arc<crate::txn::Txns>,
}

impl Broker {
    /// Whether opening marked the consume queues for a rebuild (on the file system `tune`
    /// gives the store).
    fn queue_rebuild_pending(config: &BrokerConfig, tune: &dyn Fn(&mut StoreConfig)) -> bool {
        let mut sc = StoreConfig::new(config.data_dir.join("store"));
        tune(&mut sc);
        sofamq_store::queue_rebuild_pending(sc.fs.as_ref(), &sc.dir)
    }

    /// Opens the store and replays the topic table, consumer state and ACL from it.
    #[allow(clippy::type_complexity)]
    fn open_state(
        config: &BrokerConfig,
        tune: &dyn Fn(&mut StoreConfig),
    ) -> Result<(Store, Topics, Consumers, crate::acl::Acl), BrokerError> {
        let mut sc = StoreConfig::new(config.data_dir.join("store"));
        sc.segment_size = config.segment_bytes;
        sc.max_disk_bytes = config.max_disk_bytes;
        sc.scrub_bytes_per_sec = config.scrub_bytes_per_sec;
        sc.drop_behind = config.drop_behind_bytes;
        sc.prefill = config.prefill_bytes;
        sc.prefill_max_rate = config.prefill_max_rate_bytes;
        sc.scrub_pause = Duration::from_secs(config.scrub_pause_secs);
        sc.flush = match config.flush {
            FlushMode::Sync => StoreFlush::Sync,
            FlushMode::Async => StoreFlush::Async {
                interval: Duration::from_millis(config.async_flush_interval_ms.max(1)),
            },
        };
        sc.max_record_size =
            config.limits.max_body_bytes + config.limits.max_properties_bytes + 64 * 1024;
        tune(&mut sc);
        let store = Store::open(sc)?;
        if let Some(reason) = store.fenced() {
            tracing::error!(%reason, "commit log is fenced: this broker will refuse writes");
        }
        let topics = Topics::load(store.clone())?;
        let consumers = Consumers::load(store.clone(), config.consume.clone())?;
        let acl = crate::acl::Acl::load(store.clone(), config.acl.clone())?;
        Ok((store, topics, consumers, acl))
    }

    /// Opens (and recovers) the log under `config.data_dir` and replays the
    /// topic table. Blocking: call it from `spawn_blocking` in async code.
    pub fn open(config: BrokerConfig) -> Result<Self, BrokerError> {
        Self::open_with(config, &|_| {})
    }

    /// [`Broker::open`] with the store's configuration adjusted by `tune` after it is derived
    /// from `config`: how the simulator puts the broker's log on a simulated disk
    /// (`StoreConfig::fs`) and drives its writer from its own runtime (`StoreConfig::driver`).
    pub fn open_with(
        config: BrokerConfig,
        tune: &dyn Fn(&mut StoreConfig),
    ) -> Result<Self, BrokerError> {
        let (store, topics, consumers, acl) = match Self::open_state(&config, tune) {
            // A consume queue that points at the wrong records (damaged on disk, or a write
            // lost under it) is derived data: the store marked it when the replay read it,
            // and opening again moves the queues aside and rebuilds them from the log.
            Err(e) if Self::queue_rebuild_pending(&config, tune) => {
                tracing::error!(
                    error = %e,
                    "a consume queue does not match the commit log: rebuilding every consume queue from the log"
                );
                Self::open_state(&config, tune)?
            }
            r => r?,
        };
        let send_bytes = std::sync::Arc::new(tokio::sync::Semaphore::new(
            config
                .limits
                .max_inflight_send_bytes
                .min(tokio::sync::Semaphore::MAX_PERMITS),
        ));
        let repl = Arc::new(crate::repl::Replication::open(
            config.replication.clone(),
            &config.broker_name,
            config.broker_id,
            store.clone(),
        )?);
        let timers = Arc::new(crate::timer::Timers::open(
            config.timer.clone(),
            store.fs(),
            &config.data_dir.join("timer"),
        )?);
        let txns = Arc::new(crate::txn::Txns::open(
            config.transaction.clone(),
            &config.data_dir.join("txn"),
            &store,
        )?);
        Ok(Self {
            inner: Arc::new(Inner {
                timers,
                txns,
                config,
                store,
                topics,
                consumers,
                repl,
                cursor: QueueCursor::default(),
                topics_changed: Notify::new(),
                registered: tokio::sync::watch::Sender::new(false),
                metrics: crate::metrics::Metrics::default(),
                acl,
                send_bytes,
            }),
        })
    }

    /// The configuration the broker runs with.
    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    /// The commit log.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The topic table.
    pub fn topics(&self) -> &Topics {
        &self.inner.topics
    }

    /// Consumer group state (replayed from the log).
    pub fn consumers(&self) -> &Consumers {
        &self.inner.consumers
    }

    /// Replication: role, in-sync tracking, the dedup window.
    pub fn repl(&self) -> &Arc<crate::repl::Replication> {
        &self.inner.repl
    }

    /// Access control (users and rules, replayed from the log).
    pub fn acl(&self) -> &crate::acl::Acl {
        &self.inner.acl
    }

    /// Bytes of send requests being stored now (see `limits.max_inflight_send_bytes`).
    pub(crate) fn send_bytes(&self) -> &std::sync::Arc<tokio::sync::Semaphore> {
        &self.inner.send_bytes
    }

    /// Request counters for `/metrics`.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// Timer (DELAY) messages.
    pub fn timers(&self) -> &crate::timer::Timers {
        &self.inner.timers
    }

    pub(crate) fn timers_arc(&self) -> Arc<crate::timer::Timers> {
        self.inner.timers.clone()
    }

    /// Transactional messages.
    pub fn txns(&self) -> &crate::txn::Txns {
        &self.inner.txns
    }

    pub(crate) fn txns_arc(&self) -> Arc<crate::txn::Txns> {
        self.inner.txns.clone()
    }

    pub(crate) fn cursor(&self) -> &QueueCursor {
        &self.inner.cursor
    }

    /// Turns true once a NameServer accepted this broker's registration (the serving
    /// broker registers with every configured NameServer; see [`crate::server::serve`]).
    pub fn registered(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.registered.subscribe()
    }

    pub(crate) fn set_registered(&self) {
        self.inner.registered.send_replace(true);
    }

    /// Wakes whoever waits for topic changes (the namesrv registration loop).
    pub(crate) fn topics_changed(&self) -> &Notify {
        &self.inner.topics_changed
    }

    /// Whether this broker may take writes now, and why not (see
    /// [`crate::repl::Replication::writable`]).
    pub fn writable(&self) -> Result<(), BrokerError> {
        self.inner.repl.writable().map(drop)
    }

    /// Creates or updates a topic (durably, through the log).
    pub async fn create_topic(
        &self,
        name: &str,
        queue_count: u32,
        topic_type: TopicType,
    ) -> Result<TopicConfig, BrokerError> {
        let limits = &self.inner.config.limits;
        validate::check_topic_name(name, limits)?;
        let queue_count = if queue_count == 0 {
            self.inner.config.default_queue_count
        } else {
            queue_count
        };
        if queue_count > limits.max_queue_count {
            return Err(BrokerError::BadRequest(format!(
                "{queue_count} queues, the limit is {}",
                limits.max_queue_count
            )));
        }
        self.writable()?;
        let cfg = TopicConfig {
            name: name.to_string(),
            queue_count,
            topic_type,
            perm: PERM_READ | PERM_WRITE,
        };
        if self.inner.topics.get(name).as_ref() != Some(&cfg) {
            self.inner.topics.put(cfg.clone()).await?;
            self.inner.repl.log_grew();
            self.inner.topics_changed.notify_waiters();
        }
        Ok(cfg)
    }

    /// Deletes a topic; false when it did not exist. Its stored messages stay
    /// in the log until retention removes them.
    pub async fn delete_topic(&self, name: &str) -> Result<bool, BrokerError> {
        self.writable()?;
        let existed = self.inner.topics.delete(name).await?;
        self.inner.repl.log_grew();
        if existed {
            self.inner.topics_changed.notify_waiters();
        }
        Ok(existed)
    }

    /// Promotes this (slave) broker to master: see [`crate::repl::Replication::promote`];
    /// then replays the topic table, which arrived through replication.
    pub async fn promote(&self, epoch: Option<u64>) -> Result<u64, BrokerError> {
        let e = self.inner.repl.promote(epoch).await?;
        let me = self.clone();
        // Topics, ACL and consumer state reached this broker through replication while
        // it was a slave; rebuild both from the log before serving as master. On the store's
        // blocking pool, or inline when the store's owner drives it (a simulator, whose
        // simulated disk only its own thread may touch).
        self.inner
            .store
            .blocking(move || {
                me.inner.topics.reload()?;
                me.inner.acl.reload()?;
                me.inner.consumers.reload()
            })
            .await
            .map_err(|e| BrokerError::Internal(format!("state reload: {e}")))??;
        self.inner.topics_changed.notify_waiters();
        Ok(e)
    }

    /// Checks a receipt handle's epoch against this broker's (see [`crate::consume::receipt`]).
    pub(crate) fn receipt_epoch_ok(
        &self,
        r: crate::consume::receipt::Receipt,
    ) -> Result<crate::consume::receipt::Receipt, String> {
        r.check_epoch(
            self.inner.store.current_epoch(),
            self.inner.config.replication.controlled(),
        )?;
        Ok(r)
    }

    /// The address clients reach this broker's gRPC service at.
    pub fn advertised(&self, bound: std::net::SocketAddr) -> String {
        self.inner
            .config
            .advertise
            .clone()
            .unwrap_or_else(|| bound.to_string())
    }
}
