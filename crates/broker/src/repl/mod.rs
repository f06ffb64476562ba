//! Synchronous master/slave replication and idempotent sends.
//!
//! * [`frame`]: the replication wire format (plain TCP, CRC-checked, versioned frames,
//!   each carrying the epoch).
//! * [`epoch`]: Kafka's leader-epoch rule (where a slave's log must be cut).
//! * [`master`]: accept slaves, stream raw log bytes, take acks.
//! * [`slave`]: follow a master, truncate, append raw bytes, ack.
//! * [`insync`]: acked offsets, the in-sync set, and what sends wait on.
//! * [`dedup`]: the message-id window for idempotent sends.
//!
//! The broker's role (master or slave) lives here and can change at run time (promote,
//! demote); a master begins a new, higher epoch durably before it takes writes.

pub mod config;
pub mod decide;
pub mod dedup;
pub mod epoch;
pub mod frame;
pub mod insync;
pub mod master;
pub mod secure;
pub mod slave;
mod tap;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use sofamq_controller::network::{Acceptor, Connector, TcpConnector};
use sofamq_store::{Store, StoreError};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{ReplicationConfig, Role};

use crate::error::BrokerError;
use crate::mutant::{self, Mutant};
use dedup::Dedup;
use insync::Tracker;

/// Why [`Replication::admit_or_why`] refused a write (HA_NOT_AVAILABLE either way; nothing
/// was stored).
#[derive(Debug)]
pub enum Refused {
    /// Not master, log fenced, or no valid lease under a controller.
    NotWritable(BrokerError),
    /// The group's writable master (leased under a controller), short of in-sync replicas.
    /// Its log is the group's log: a record it does not hold will never be in the group.
    TooFewInSync(BrokerError),
}

impl Refused {
    /// The error answered.
    pub fn into_error(self) -> BrokerError {
        match self {
            Self::NotWritable(e) | Self::TooFewInSync(e) => e,
        }
    }
}

/// A write that passed [`Replication::writable`] or [`Replication::admit`]: the master term
/// it was admitted in ([`Replication::wait_replicated`] fails once that term ended) and the
/// log's epoch then (the write is appended only in that epoch: [`Admission::epoch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    term: u64,
    epoch: u64,
}

impl Admission {
    /// The log's epoch the write was admitted in: read before the role was checked, so
    /// never newer than the term it was admitted in. An append in this epoch
    /// ([`sofamq_store::Store::append_in_epoch`]) is refused if the broker stepped down
    /// meanwhile and, as a slave or a master again, its log moved to another epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// Why a broker that is not master refuses a replication session.
pub(crate) const REJECT_NOT_MASTER: &str = "not master";

/// A replication session failure (the session ends; a slave reconnects).
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    /// Framing or I/O.
    #[error("{0}")]
    Frame(#[from] frame::FrameError),
    /// Socket I/O.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The local log refused.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The peer broke the protocol (wrong epoch, bad offset, ...).
    #[error("protocol: {0}")]
    Protocol(String),
    /// A step took too long.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

struct RoleState {
    role: Role,
    master_addr: Option<String>,
    follower: Option<(CancellationToken, JoinHandle<()>)>,
}

/// Replication state of one broker.
pub struct Replication {
    pub(crate) cfg: ReplicationConfig,
    pub(crate) broker_name: String,
    pub(crate) slave_id: u64,
    /// The configured broker id: this broker's identity for the controller and its slaves'
    /// in-sync accounting.
    pub(crate) identity: u64,
    /// With a controller: until when this broker may act as master (its lease). Sends are
    /// neither accepted nor acked after it; `None` while it holds no lease.
    lease_until: Mutex<Option<crate::clock::Instant>>,
    pub(crate) store: Store,
    role: Mutex<RoleState>,
    role_tx: watch::Sender<Role>,
    pub(crate) tracker: Tracker,
    pub(crate) dedup: Dedup,
    /// Wakes the streams to slaves: the store's written-offset notifier (the writer thread
    /// notifies it after every `pwrite`), also notified on role changes.
    pub(crate) appended: Arc<Notify>,
    /// The store writer's direct path to the slaves' sockets (see [`tap`]).
    pub(crate) taps: Arc<tap::Taps>,
    /// Highest master epoch this broker has seen (a promotion goes above it).
    pub(crate) seen_epoch: AtomicU64,
    /// Readable limit published to the store (`u64::MAX` = none); only grows per term.
    limit: AtomicU64,
    switching: tokio::sync::Mutex<()>,
    token: Mutex<Option<CancellationToken>>,
    /// The master replication address whose latest connect attempt was refused.
    master_refused: Mutex<Option<String>>,
    /// A damaged range being fetched again from the master (see [`Replication::repairing`]).
    repair: Mutex<Option<Repair>>,
    /// How a slave opens its stream to the master: TCP, or a simulator's network.
    connector: Mutex<Arc<dyn Connector>>,
}

/// A damaged log cut at `at` that held bytes up to `old_end`: until the log is durable
/// there again, this replica is not whole and must not be elected.
#[derive(Debug, Clone)]
pub(crate) struct Repair {
    pub at: u64,
    pub old_end: u64,
    pub began: crate::clock::Instant,
}

impl Replication {
    /// Sets up replication for a freshly opened store. A master begins a new epoch (durably)
    /// and rebuilds its dedup window from the log. Blocking.
    pub fn open(
        cfg: ReplicationConfig,
        broker_name: &str,
        broker_id: u64,
        store: Store,
    ) -> Result<Self, BrokerError> {
        cfg.protocol_versions().map_err(BrokerError::BadRequest)?;
        // With a controller every broker starts as an idle slave and waits to be told.
        let role = if cfg.controlled() {
            Role::Slave
        } else {
            cfg.start_role(broker_id)
        };
        let tracker = Tracker::new(cfg.effective_min_insync(), cfg.max_lag_bytes, cfg.max_lag());
        let dedup = Dedup::new(
            cfg.dedup_window,
            std::time::Duration::from_millis(cfg.dedup_window_ms),
        );
        let role_tx = watch::channel(role).0;
        let taps = Arc::new(tap::Taps::new(role_tx.subscribe()));
        store.set_write_tap(Some(taps.clone()));
        let repl = Self {
            broker_name: broker_name.to_string(),
            slave_id: broker_id.max(1),
            identity: broker_id,
            lease_until: Mutex::new(None),
            seen_epoch: AtomicU64::new(store.current_epoch()),
            role: Mutex::new(RoleState {
                role,
                master_addr: cfg.master_addr.clone(),
                follower: None,
            }),
            role_tx,
            taps,
            tracker,
            dedup,
            appended: store.written_notify(),
            limit: AtomicU64::new(u64::MAX),
            switching: tokio::sync::Mutex::new(()),
            token: Mutex::new(None),
            master_refused: Mutex::new(None),
            repair: Mutex::new(None),
            connector: Mutex::new(Arc::new(TcpConnector)),
            cfg,
            store,
        };
        if role == Role::Master {
            if repl.store.fenced().is_none() {
                let epoch = repl.store.current_epoch() + 1;
                repl.store.begin_epoch(epoch)?;
                repl.seen_epoch.fetch_max(epoch, Ordering::AcqRel);
                tracing::info!(epoch, "master began a new epoch");
            }
            repl.become_master_limits();
            repl.dedup.rebuild(&repl.store, repl.cfg.dedup_scan_bytes);
        } else {
            // A slave's log copies its master's: no local appends (`Store::follow`).
            repl.store.follow();
            if repl.cfg.controlled() {
                tracing::info!("waiting for the controller to assign a role");
            } else if repl.cfg.master_addr.is_none() {
                tracing::warn!("slave without replication.master_addr: idle until demoted/told");
            }
        }
        Ok(repl)
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role.lock().role
    }

    /// Role changes.
    pub fn role_watch(&self) -> watch::Receiver<Role> {
        self.role_tx.subscribe()
    }

    /// The broker id to register with: 0 as master, the configured id (>= 1) as slave.
    pub fn broker_id(&self) -> u64 {
        match self.role() {
            Role::Master => 0,
            // Under a controller any broker may be a slave, id 0 included: keep ids distinct.
            Role::Slave if self.cfg.controlled() => self.identity + 1,
            Role::Slave => self.slave_id,
        }
    }

    /// The master a slave follows.
    pub fn master_addr(&self) -> Option<String> {
        self.role.lock().master_addr.clone()
    }

    /// The master address this slave follows when its latest attempt to connect there was
    /// refused (nothing listens: the master's process is gone), for the controller.
    pub fn master_refused(&self) -> Option<String> {
        let refused = self.master_refused.lock().clone()?;
        let st = self.role.lock();
        (st.role == Role::Slave && st.master_addr.as_deref() == Some(refused.as_str()))
            .then_some(refused)
    }

    /// Notes that a damaged log was cut and is being fetched again.
    pub(crate) fn begin_repair(&self, at: u64, old_end: u64) {
        *self.repair.lock() = Some(Repair {
            at,
            old_end,
            began: crate::clock::Instant::now(),
        });
    }

    /// While a damaged range is being fetched again, what to report to the controller in
    /// place of a fence reason (a replica still missing it is never elected). Ends, and logs
    /// the time the repair took, once the log is durable up to where it ended before.
    pub fn repairing(&self) -> Option<String> {
        let mut g = self.repair.lock();
        let r = g.as_ref()?;
        let durable = self.store.durable_offset();
        if durable >= r.old_end {
            tracing::warn!(
                from = r.at,
                to = r.old_end,
                took_ms = r.began.elapsed().as_millis() as u64,
                "damaged log range repaired from the master"
            );
            *g = None;
            return None;
        }
        Some(format!(
            "repairing a damaged log: fetching {}..{} again from the master ({durable} so far)",
            r.at, r.old_end
        ))
    }

    /// Notes the outcome of a connect attempt to `master`.
    pub(crate) fn note_connect(&self, master: &str, refused: bool) {
        let mut r = self.master_refused.lock();
        if refused {
            if r.as_deref() != Some(master) {
                tracing::warn!(%master, "master replication port refuses connections");
            }
            *r = Some(master.to_string());
        } else {
            *r = None;
        }
    }

    /// The settings.
    pub fn config(&self) -> &ReplicationConfig {
        &self.cfg
    }

    /// The in-sync tracker.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// The dedup window.
    pub fn dedup(&self) -> &Dedup {
        &self.dedup
    }

    /// Wakes the streams to slaves. The store already does so after every write; this is
    /// kept for callers that changed state the streams check (cheap, and harmless).
    pub fn log_grew(&self) {
        self.appended.notify_waiters();
    }

    fn become_master_limits(&self) {
        if self.tracker.min_insync() > 1 {
            // Nothing is known to be replicated until a slave acks.
            let at = self
                .store
                .durable_offset()
                .min(self.store.readable_offset());
            self.limit.store(at, Ordering::Release);
            self.store.set_replication_limit(Some(at));
        } else {
            self.limit.store(u64::MAX, Ordering::Release);
            self.store.set_replication_limit(None);
        }
    }

    /// Publishes the replicated offset as the store's readable limit (monotonic). Slaves
    /// receive written bytes before this master's fsync, so `replicated` may run ahead of the
    /// master's durable offset: the limit is `min(replicated, durable)`, and the store reads
    /// below `min(limit, durable)` anyway. Called on every slave ack, periodically, and by a
    /// send once it is covered (its ack may have come before the local fsync).
    pub(crate) fn refresh_limit(&self) {
        if self.role() != Role::Master {
            return;
        }
        let s = self.tracker.snapshot();
        let durable = self.store.durable_offset();
        if s.in_sync == 0 {
            if self.tracker.min_insync() <= 1 {
                self.limit.store(u64::MAX, Ordering::Release);
                self.store.set_replication_limit(None);
            }
            return;
        }
        let mut t = s.replicated.min(durable);
        let prev = self.limit.load(Ordering::Acquire);
        if prev == u64::MAX {
            // Going from "no limit" to a limit must not hide what consumers already saw.
            t = t.max(durable);
        }
        let new = if prev == u64::MAX { t } else { prev.max(t) };
        self.limit.store(new, Ordering::Release);
        self.store.set_replication_limit(Some(new));
    }

    /// Starts the background parts: the replication listener (if any), the follower (as a
    /// slave) and the periodic in-sync check. Stops when `token` is cancelled.
    pub fn start(self: &Arc<Self>, listener: Option<TcpListener>, token: CancellationToken) {
        self.start_with(listener.map(|l| Box::new(l) as Box<dyn Acceptor>), token);
    }

    /// [`Replication::start`] with any [`Acceptor`] for the replication port (TCP, or a
    /// simulator's network; pair it with [`Replication::use_connector`]).
    pub fn start_with(
        self: &Arc<Self>,
        acceptor: Option<Box<dyn Acceptor>>,
        token: CancellationToken,
    ) {
        *self.token.lock() = Some(token.clone());
        if let Some(l) = acceptor {
            tokio::spawn(master::serve(self.clone(), l, token.clone()));
        }
        if self.role() == Role::Slave
            && !self.cfg.controlled()
            && let Some(addr) = self.master_addr()
        {
            self.spawn_follower(addr, &token);
        }
        let me = self.clone();
        tokio::spawn(async move {
            let period = me.cfg.heartbeat();
            loop {
                tokio::select! {
                    biased;
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(period) => {}
                }
                if me.role() == Role::Master {
                    me.tracker.check(me.store.durable_offset());
                    me.refresh_limit();
                }
            }
        });
    }

    /// Makes a slave reach its master through `connector` (default: TCP). Takes effect at the
    /// next connect.
    pub fn use_connector(&self, connector: Arc<dyn Connector>) {
        *self.connector.lock() = connector;
    }

    pub(crate) fn connector(&self) -> Arc<dyn Connector> {
        self.connector.lock().clone()
    }

    fn spawn_follower(self: &Arc<Self>, addr: String, parent: &CancellationToken) {
        let t = parent.child_token();
        let h = if self.store.driver() == sofamq_store::Driver::Threads {
            slave::follow_on_own_thread(self.clone(), addr.clone(), t.clone())
        } else {
            // A simulator runs every host's tasks on its own runtime, in an order it decides.
            tokio::spawn(slave::follow(self.clone(), addr.clone(), t.clone(), false))
        };
        let mut g = self.role.lock();
        g.master_addr = Some(addr);
        if let Some((old, _)) = g.follower.replace((t, h)) {
            old.cancel();
        }
    }

    /// Stops following: the follower task ends and no master address is left behind, so a
    /// controller that names the same master again is followed again (`decide` skips a
    /// master this broker already follows).
    async fn stop_follower(&self) {
        let f = {
            let mut g = self.role.lock();
            g.master_addr = None;
            g.follower.take()
        };
        if let Some((t, h)) = f {
            t.cancel();
            let _ = h.await;
        }
    }

    /// Slave → master: stops following, durably begins an epoch above every epoch seen
    /// (at least `epoch` when given), rebuilds the dedup window, then takes writes. Returns
    /// the new epoch. A master answers with its current epoch.
    pub async fn promote(self: &Arc<Self>, epoch: Option<u64>) -> Result<u64, BrokerError> {
        let _g = self.switching.lock().await;
        if self.role() == Role::Master {
            return Ok(self.store.current_epoch());
        }
        self.stop_follower().await;
        let seen = self.seen_epoch.load(Ordering::Acquire);
        let new = match epoch {
            // The controller's epoch, exactly: it is above every epoch of the group.
            Some(e) if self.cfg.controlled() => {
                if e <= self.store.current_epoch() {
                    return Err(BrokerError::NotAvailable(format!(
                        "controller epoch {e} is not above this log's epoch {}",
                        self.store.current_epoch()
                    )));
                }
                e
            }
            _ => (self.store.current_epoch().max(seen) + 1).max(epoch.unwrap_or(0)),
        };
        let me = self.clone();
        self.store
            .blocking(move || -> Result<(), BrokerError> {
                me.store.begin_epoch(new)?;
                me.dedup.rebuild(&me.store, me.cfg.dedup_scan_bytes);
                Ok(())
            })
            .await??;
        self.seen_epoch.fetch_max(new, Ordering::AcqRel);
        self.become_master_limits();
        self.role.lock().role = Role::Master;
        let _ = self.role_tx.send(Role::Master);
        tracing::warn!(
            epoch = new,
            log_end = self.store.log_end_offset(),
            "promoted to master"
        );
        Ok(new)
    }

    /// Master (or slave) → slave of `master_addr`: stops taking writes at once, fails every
    /// send waiting for replication, and follows the new master (truncating its own un-acked
    /// tail by the epoch rule).
    pub async fn demote(self: &Arc<Self>, master_addr: String) -> Result<(), BrokerError> {
        let _g = self.switching.lock().await;
        self.drop_lease();
        self.stop_follower().await;
        {
            let mut g = self.role.lock();
            g.role = Role::Slave;
        }
        // Before anything else that follows: a send admitted as master and not yet at the
        // store is refused from here on (`Store::follow`).
        if !mutant::active(Mutant::AppendAfterStepDown) {
            self.store.follow();
        }
        let _ = self.role_tx.send(Role::Slave);
        self.tracker.reset_term();
        self.appended.notify_waiters();
        self.limit.store(u64::MAX, Ordering::Release);
        self.store.set_replication_limit(None);
        let token = self.token.lock().clone().unwrap_or_default();
        self.spawn_follower(master_addr.clone(), &token);
        tracing::warn!(master = %master_addr, "now a slave");
        Ok(())
    }

    /// Whether this broker may take writes now, and why not: it is master, its log is not
    /// fenced and, under a controller, it holds a valid lease (HA_NOT_AVAILABLE otherwise).
    /// Returns the master term the write is admitted in (see [`Admission`]).
    pub fn writable(&self) -> Result<Admission, BrokerError> {
        self.writable_at(self.tracker.snapshot().term)
    }

    /// The one admission check of a write that is acked after replication (a send, a
    /// transaction's end, a recall): [`Replication::writable`], and enough replicas in
    /// sync (`min_insync_replicas`) to ack it. Fails fast with HA_NOT_AVAILABLE, before
    /// anything is stored.
    pub fn admit(&self) -> Result<Admission, BrokerError> {
        self.admit_or_why().map_err(Refused::into_error)
    }

    /// [`Replication::admit`], telling a refusal by the group's writable master for too few
    /// in-sync replicas (its log and id window are the group's) from the others.
    pub fn admit_or_why(&self) -> Result<Admission, Refused> {
        // One read of the tracker gives the term and the in-sync count.
        let snap = self.tracker.snapshot();
        let admitted = self.writable_at(snap.term).map_err(Refused::NotWritable)?;
        self.tracker
            .check_available_at(&snap)
            .map_err(Refused::TooFewInSync)?;
        Ok(admitted)
    }

    /// [`Replication::writable`] with the term read before the role: a demotion sets the
    /// role and then ends the term, so a term read first either sees the role still master
    /// and ends before the write is acked (its wait fails), or sees the new role here.
    fn writable_at(&self, term: u64) -> Result<Admission, BrokerError> {
        // Before the role: an epoch read after it could be that of a later term.
        let epoch = self.store.current_epoch();
        if self.role() != Role::Master {
            return Err(BrokerError::NotAvailable(format!(
                "not master: {} id {} is a slave; send to the master",
                self.broker_name,
                self.broker_id()
            )));
        }
        if let Some(reason) = self.store.fenced() {
            return Err(BrokerError::NotAvailable(format!(
                "commit log fenced: {reason}"
            )));
        }
        self.check_lease()?;
        Ok(Admission { term, epoch })
    }

    /// Waits until the in-sync slaves cover `offset` (within the configured ack timeout),
    /// failing once the term the write was admitted in ended (this broker stepped down or
    /// was demoted meanwhile, even if it is master again); then checks the lease once more
    /// ([`Replication::lease_outlived_the_wait`]).
    pub async fn wait_replicated(
        &self,
        admitted: Admission,
        offset: u64,
    ) -> Result<(), BrokerError> {
        self.tracker
            .wait_replicated(admitted.term, offset, self.cfg.ack_timeout())
            .await?;
        self.lease_outlived_the_wait(offset)
    }

    /// The one re-check after admission. The lease was valid when the write was admitted,
    /// but the append's fsync and the slaves' acks take time, and a lease that ran out
    /// meanwhile means the controller may already have elected another master, one that
    /// need not hold this record: acking it then could lose an acked message. The record
    /// is in this log by now, so the answer is "not acked, may be stored"
    /// (SLAVE_PERSISTENCE_TIMEOUT), never HA_NOT_AVAILABLE ("not stored").
    fn lease_outlived_the_wait(&self, offset: u64) -> Result<(), BrokerError> {
        self.check_lease().map_err(|e| {
            BrokerError::SlavePersistence(format!("stored up to offset {offset}, but {e}"))
        })
    }

    /// Under a controller: errors unless this broker holds a valid master lease.
    pub fn check_lease(&self) -> Result<(), BrokerError> {
        if !self.cfg.controlled() {
            return Ok(());
        }
        match *self.lease_until.lock() {
            Some(t) if crate::clock::Instant::now() < t => Ok(()),
            _ => Err(BrokerError::NotAvailable(
                "no valid master lease from the controller; not acking".into(),
            )),
        }
    }

    /// Extends (or sets) the master lease to `until`.
    pub(crate) fn renew_lease(&self, until: crate::clock::Instant) {
        let mut g = self.lease_until.lock();
        if g.is_none_or(|t| t < until) {
            *g = Some(until);
        }
    }

    /// Drops the master lease at once.
    pub(crate) fn drop_lease(&self) {
        *self.lease_until.lock() = None;
    }

    /// Milliseconds of master lease left (0 without one).
    pub fn lease_left_ms(&self) -> u64 {
        self.lease_until
            .lock()
            .map(|t| {
                t.saturating_duration_since(crate::clock::Instant::now())
                    .as_millis() as u64
            })
            .unwrap_or(0)
    }

    /// Stops acting as master without following anyone (the controller names no master
    /// this broker can reach): every waiting send fails, and nothing new is taken.
    pub(crate) async fn step_down(self: &Arc<Self>) {
        let _g = self.switching.lock().await;
        self.drop_lease();
        self.stop_follower().await;
        self.role.lock().role = Role::Slave;
        let _ = self.role_tx.send(Role::Slave);
        self.tracker.reset_term();
        self.appended.notify_waiters();
        self.limit.store(u64::MAX, Ordering::Release);
        self.store.set_replication_limit(None);
        tracing::warn!("stepped down: no master lease");
    }

    /// The configured broker id.
    pub fn identity(&self) -> u64 {
        self.identity
    }
}

#[cfg(test)]
mod stream_seam_tests {
    //! Replication needs only a byte stream: here the master accepts, and the slave connects,
    //! through in-memory pipes (what a simulator's network gives), and a send is acked only
    //! once the slave has it.

    use std::io;
    use std::sync::atomic::AtomicUsize;

    use sofamq_controller::network::{AsyncStream, BoxFuture};
    use sofamq_store::{Appended, NewRecord, StoreConfig};
    use tokio::io::DuplexStream;
    use tokio::sync::mpsc;

    use super::*;
    use crate::repl::config::ReplicationConfig;

    struct PipeAcceptor(mpsc::Receiver<DuplexStream>);

    impl Acceptor for PipeAcceptor {
        fn accept(&mut self) -> BoxFuture<'_, io::Result<(Box<dyn AsyncStream>, String)>> {
            Box::pin(async move {
                let s = self
                    .0
                    .recv()
                    .await
                    .ok_or_else(|| io::Error::other("closed"))?;
                Ok((Box::new(s) as Box<dyn AsyncStream>, "pipe".to_owned()))
            })
        }
    }

    struct PipeConnector {
        to_master: mpsc::Sender<DuplexStream>,
        connects: AtomicUsize,
    }

    impl Connector for PipeConnector {
        fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Box<dyn AsyncStream>>> {
            Box::pin(async move {
                assert_eq!(addr, "master.pipe:1");
                self.connects.fetch_add(1, Ordering::Relaxed);
                let (mine, theirs) = tokio::io::duplex(256 * 1024);
                self.to_master
                    .send(theirs)
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::ConnectionRefused))?;
                Ok(Box::new(mine) as Box<dyn AsyncStream>)
            })
        }
    }

    /// A master and a slave over in-memory pipes, started: (master, slave, the master's
    /// store, the slave's store, the connector, the token that stops both).
    fn pipe_pair(
        dir: &std::path::Path,
    ) -> (
        Arc<Replication>,
        Arc<Replication>,
        Store,
        Store,
        Arc<PipeConnector>,
        CancellationToken,
    ) {
        let open = |name: &str| Store::open(StoreConfig::new(dir.join(name))).unwrap();
        let (ms, ss) = (open("m"), open("s"));
        let master = Arc::new(
            Replication::open(
                ReplicationConfig {
                    role: Some(Role::Master),
                    // Any address: with a listen address a master counts its slaves.
                    listen: Some("127.0.0.1:1".parse().unwrap()),
                    min_insync_replicas: 2,
                    ..Default::default()
                },
                "g",
                0,
                ms.clone(),
            )
            .unwrap(),
        );
        let slave = Arc::new(
            Replication::open(
                ReplicationConfig {
                    role: Some(Role::Slave),
                    master_addr: Some("master.pipe:1".into()),
                    reconnect_backoff_ms: 20,
                    ..Default::default()
                },
                "g",
                1,
                ss.clone(),
            )
            .unwrap(),
        );
        let (tx, rx) = mpsc::channel(4);
        let connector = Arc::new(PipeConnector {
            to_master: tx,
            connects: AtomicUsize::new(0),
        });
        slave.use_connector(connector.clone());
        let token = CancellationToken::new();
        master.start_with(Some(Box::new(PipeAcceptor(rx))), token.clone());
        slave.start(None, token.clone());
        (master, slave, ms, ss, connector, token)
    }

    /// Appends one record on the master and waits (bounded) until the slave acked it;
    /// returns where it landed.
    async fn append_replicated(master: &Replication, ms: &Store, body: &str) -> Appended {
        let done = ms
            .append(vec![NewRecord {
                topic: "t".into(),
                body: body.to_owned().into(),
                ..Default::default()
            }])
            .await
            .unwrap();
        let end = done[0].log_offset + u64::from(done[0].size);
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            loop {
                let admitted = master.writable().unwrap();
                if master.wait_replicated(admitted, end).await.is_ok() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the slave acked through the pipe");
        done[0]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replication_runs_over_any_byte_stream_not_only_tcp() {
        let d = tempfile::tempdir().unwrap();
        let (master, _slave, ms, ss, connector, token) = pipe_pair(d.path());
        let done = append_replicated(&master, &ms, "over a pipe").await;
        assert!(ss.log_end_offset() >= done.log_offset + u64::from(done.size));
        assert_eq!(
            &ss.read_at(done.log_offset).unwrap().body[..],
            b"over a pipe"
        );
        assert!(connector.connects.load(Ordering::Relaxed) >= 1);
        token.cancel();
    }

    /// A slave writes the next frames while a large run it handed to its store's sync
    /// thread is still being fdatasynced: with that fdatasync held for 3 s, a record the
    /// master appends next is written on the slave long before the first one is durable
    /// there, and both are acked once it is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slave_writes_on_while_a_run_syncs() {
        let d = tempfile::tempdir().unwrap();
        let (master, _slave, ms, ss, _connector, token) = pipe_pair(d.path());
        append_replicated(&master, &ms, "in sync").await;
        ss.inject_fault(sofamq_store::Fault::SlowNextSync(3000));
        let big = "b".repeat(2 * ss_inline_limit());
        let first = ms
            .append(vec![NewRecord {
                topic: "t".into(),
                body: big.into(),
                ..Default::default()
            }])
            .await
            .unwrap()[0];
        let first_end = first.log_offset + u64::from(first.size);
        let t0 = std::time::Instant::now();
        while ss.written_offset() < first_end {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(2),
                "first run not written"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let second = ms
            .append(vec![NewRecord {
                topic: "t".into(),
                body: "next".into(),
                ..Default::default()
            }])
            .await
            .unwrap()[0];
        let second_end = second.log_offset + u64::from(second.size);
        while ss.written_offset() < second_end {
            assert!(
                ss.durable_offset() < first_end,
                "the slave wrote the next record only after the first run's fdatasync"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(
            ss.durable_offset() < first_end,
            "the slow fdatasync already ended"
        );
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            loop {
                let admitted = master.writable().unwrap();
                if master.wait_replicated(admitted, second_end).await.is_ok() {
                    break;
                }
            }
        })
        .await
        .expect("both acked once the slow fdatasync ended");
        assert!(ss.durable_offset() >= second_end);
        token.cancel();
    }

    /// The default `inline_sync_max_bytes` of a store.
    fn ss_inline_limit() -> usize {
        StoreConfig::new("unused").inline_sync_max_bytes
    }

    /// A slave's follower runs on a thread of its own (where its appends may block in an
    /// fdatasync without holding a worker of the broker's runtime). That thread must not
    /// outlive the runtime: dropped without a cancel, as a test or an embedding
    /// application may, it lets go of the slave at once instead of reconnecting forever.
    #[test]
    fn a_slaves_follower_thread_ends_with_the_brokers_runtime() {
        let d = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (weak, follower_threads) = rt.block_on(async {
            let (master, slave, ms, ss, _connector, _token) = pipe_pair(d.path());
            let done = append_replicated(&master, &ms, "on its own thread").await;
            assert_eq!(
                &ss.read_at(done.log_offset).unwrap().body[..],
                b"on its own thread"
            );
            (Arc::downgrade(&slave), follower_thread_count())
        });
        assert!(follower_threads >= 1, "no follower thread while following");
        drop(rt);
        let t0 = std::time::Instant::now();
        while weak.upgrade().is_some() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "the follower thread still holds the slave 10 s after its runtime was dropped"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Threads of this process named as the follower's (Linux: `/proc/self/task`).
    fn follower_thread_count() -> usize {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return usize::MAX;
        };
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == "sofamq-repl-fol")
            .count()
    }
}

#[cfg(test)]
mod admission_tests {
    use sofamq_store::StoreConfig;

    use super::*;

    /// A write admitted before a demotion is never acked by the same broker promoted again:
    /// its wait is tied to the term it was admitted in, not to whatever term is current.
    #[tokio::test]
    async fn a_write_admitted_before_a_demotion_is_not_acked_after_it() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(d.path().join("m"))).unwrap();
        let cfg = ReplicationConfig {
            role: Some(Role::Master),
            min_insync_replicas: 1,
            ..Default::default()
        };
        let repl = Arc::new(Replication::open(cfg, "g", 0, store).unwrap());
        let before = repl.admit().unwrap();
        repl.demote("127.0.0.1:1".into()).await.unwrap();
        assert!(matches!(repl.admit(), Err(BrokerError::NotAvailable(_))));
        repl.promote(None).await.unwrap();
        let w = repl.wait_replicated(before, 0).await;
        assert!(matches!(w, Err(BrokerError::SlavePersistence(_))), "{w:?}");
        let now = repl.admit().unwrap();
        repl.wait_replicated(now, 0).await.unwrap();
    }

    /// Group simulation seed 922: a slave of A promoted, then stepped down (its lease ran
    /// out, the controller named no master), must follow A when the controller names A
    /// again. Kept, the address it followed before its promotion told `decide` it already
    /// followed A, and it stayed out of the in-sync set for good.
    #[tokio::test]
    async fn a_slave_promoted_then_stepped_down_follows_its_old_master_again() {
        use super::decide::{Action, Local, decide};
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(d.path().join("s"))).unwrap();
        let cfg = ReplicationConfig {
            role: Some(Role::Slave),
            min_insync_replicas: 1,
            ..Default::default()
        };
        let repl = Arc::new(Replication::open(cfg, "g", 1, store).unwrap());
        repl.demote("a:10912".into()).await.unwrap();
        assert_eq!(repl.master_addr().as_deref(), Some("a:10912"));
        repl.promote(None).await.unwrap();
        assert_eq!(repl.master_addr(), None, "a master follows nobody");
        repl.step_down().await;
        let mut view = sofamq_controller::GroupState {
            group: "g".into(),
            master: Some(0),
            master_epoch: 9,
            ..Default::default()
        };
        view.brokers.insert(
            0,
            sofamq_controller::BrokerAddrs {
                grpc: "a:8081".into(),
                repl: "a:10912".into(),
            },
        );
        let following = repl.master_addr();
        let local = Local {
            me: 1,
            role: repl.role(),
            epoch: repl.store.current_epoch(),
            following: following.as_deref(),
        };
        assert_eq!(decide(local, &view), Action::Follow("a:10912".into()));
    }
}
