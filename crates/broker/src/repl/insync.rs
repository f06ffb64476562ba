//! The master's view of its slaves: each one's acked offset and whether it is in sync, and
//! the replicated offset senders wait on (a `watch` for subscribers; senders wait on a
//! `Notify`, so waiting costs nothing while idle).
//!
//! In-sync rule: a slave joins once it reaches an offset the master had durable at some
//! earlier moment (its "mark"); it leaves when it falls more than `max_lag_bytes` behind or
//! fails to reach its mark within `max_lag`. Reaching the mark moves the mark to the master's
//! current durable offset.
//!
//! Slaves are streamed bytes as soon as the master WROTE them (before its fsync), so an ack
//! may run ahead of the master's durable offset. Every rule here measures against the
//! master's durable offset (marks, lag, the high watermark `min(replicated, durable)`), and
//! a sender waits only after its own fsync, so such an ack never lets anything count as
//! acked or readable before the master holds it durably.
//!
//! Deterministic under a simulator: slaves are kept in a `BTreeMap`, and senders wait on a
//! `Notify`, which wakes its waiters in the order they began waiting; a `watch` receiver
//! picks one of eight notify shards with tokio's runtime RNG (unseeded without
//! `--cfg tokio_unstable`), so the order its waiters wake in would change from run to run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::clock::Instant;

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use crate::error::BrokerError;

/// What senders wait on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Every in-sync slave has acked up to here (`u64::MAX` with no in-sync slave).
    pub replicated: u64,
    /// In-sync slaves.
    pub in_sync: usize,
    /// Bumped when this broker stops being master: waiters of an old term fail.
    pub term: u64,
}

struct Slave {
    name: String,
    /// The slave's configured broker id (its identity in the controller's in-sync set).
    identity: u64,
    acked: u64,
    in_sync: bool,
    mark: (u64, Instant),
    /// The slave holds everything the master had durable at this instant (replication lag
    /// in time is measured from here).
    reached: Instant,
    /// The replication protocol version of its session.
    version: u8,
}

/// Per-slave state for status output.
#[derive(Debug, Clone)]
pub struct SlaveInfo {
    /// Slave name (`broker-a/1 @ addr`).
    pub name: String,
    /// Acked durable offset.
    pub acked: u64,
    /// In the in-sync set.
    pub in_sync: bool,
    /// The slave holds everything the master had durable at this instant.
    pub reached: Instant,
    /// The replication protocol version of its session.
    pub version: u8,
}

/// In-sync tracking.
pub struct Tracker {
    min_insync: usize,
    max_lag_bytes: u64,
    max_lag: Duration,
    slaves: Mutex<(u64, BTreeMap<u64, Slave>)>,
    /// Slaves (by identity) the controller's committed in-sync set names: they must ack too,
    /// even when this master dropped them locally, until the controller commits the shrink
    /// ("while a change is pending, the larger set counts").
    required: Mutex<BTreeSet<u64>>,
    tx: watch::Sender<Snapshot>,
    /// Notified after every change of the snapshot (what [`Tracker::wait_replicated`] waits on).
    changed: Notify,
}

impl Tracker {
    /// A tracker with no slaves.
    pub fn new(min_insync: usize, max_lag_bytes: u64, max_lag: Duration) -> Self {
        Self {
            min_insync: min_insync.max(1),
            max_lag_bytes,
            max_lag,
            slaves: Mutex::new((0, BTreeMap::new())),
            required: Mutex::new(BTreeSet::new()),
            tx: watch::channel(Snapshot {
                replicated: u64::MAX,
                in_sync: 0,
                term: 0,
            })
            .0,
            changed: Notify::new(),
        }
    }

    /// Copies (master included) required per ack.
    pub fn min_insync(&self) -> usize {
        self.min_insync
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Snapshot {
        *self.tx.borrow()
    }

    /// Subscribes to snapshot changes.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.tx.subscribe()
    }

    fn publish(&self, slaves: &BTreeMap<u64, Slave>, term_bump: bool) {
        let required = self.required.lock();
        let mut replicated = u64::MAX;
        let mut counted = BTreeSet::new();
        for s in slaves.values().filter(|s| s.in_sync) {
            counted.insert(s.identity);
            replicated = replicated.min(s.acked);
        }
        for id in required.iter() {
            if counted.insert(*id) {
                // Required but not in sync here: its best acked offset, if connected at all.
                let acked = slaves
                    .values()
                    .filter(|s| s.identity == *id)
                    .map(|s| s.acked)
                    .max()
                    .unwrap_or(0);
                replicated = replicated.min(acked);
            }
        }
        let in_sync = counted.len();
        let changed = self.tx.send_if_modified(|s| {
            let term = s.term + u64::from(term_bump);
            let new = Snapshot {
                replicated,
                in_sync,
                term,
            };
            let changed = *s != new;
            *s = new;
            changed
        });
        if changed {
            self.changed.notify_waiters();
        }
    }

    /// Registers a slave (configured id `identity`) that will stream from `from`; it starts
    /// out of sync.
    pub fn register(
        &self,
        name: String,
        identity: u64,
        from: u64,
        durable: u64,
        version: u8,
    ) -> u64 {
        let mut g = self.slaves.lock();
        g.0 += 1;
        let id = g.0;
        g.1.insert(
            id,
            Slave {
                name,
                identity,
                acked: from,
                in_sync: false,
                mark: (durable, Instant::now()),
                reached: Instant::now(),
                version,
            },
        );
        id
    }

    /// Removes a slave (connection gone).
    pub fn remove(&self, id: u64) {
        let mut g = self.slaves.lock();
        if let Some(s) = g.1.remove(&id)
            && s.in_sync
        {
            tracing::warn!(slave = %s.name, acked = s.acked, "slave left the in-sync set (disconnected)");
        }
        self.publish(&g.1, false);
    }

    /// The highest offset that may have been acked to a client: what the master holds
    /// durably and every counted slave acked.
    fn high_watermark(&self, durable: u64) -> u64 {
        let snap = self.tx.borrow();
        if snap.in_sync == 0 {
            durable
        } else {
            snap.replicated.min(durable)
        }
    }

    fn evaluate(&self, s: &mut Slave, durable: u64, hw: u64, now: Instant) {
        if s.acked >= s.mark.0 {
            s.reached = s.mark.1;
            s.mark = (durable, now);
        }
        let behind_bytes = durable.saturating_sub(s.acked) > self.max_lag_bytes;
        let behind_time = s.acked < s.mark.0 && now.duration_since(s.mark.1) > self.max_lag;
        let was = s.in_sync;
        if s.in_sync {
            s.in_sync = !behind_bytes && !behind_time;
        } else {
            // Rejoin only right after reaching a mark (caught up to where the master was), and
            // only holding everything that may have been acked (the high watermark): a
            // controller may elect any member of the in-sync set.
            s.in_sync = s.mark.1 == now && !behind_bytes && s.acked >= hw;
        }
        if was != s.in_sync {
            if s.in_sync {
                tracing::info!(slave = %s.name, acked = s.acked, durable, "slave joined the in-sync set");
            } else {
                tracing::warn!(slave = %s.name, acked = s.acked, durable, behind_bytes, behind_time, "slave left the in-sync set (lagging)");
            }
        }
    }

    /// Records an ack. The caller checked epoch and range (at most the master's written end:
    /// `acked` may exceed the master's `durable`).
    pub fn ack(&self, id: u64, acked: u64, durable: u64) {
        let mut g = self.slaves.lock();
        let now = Instant::now();
        if let Some(mut s) = g.1.remove(&id) {
            s.acked = s.acked.max(acked);
            let hw = self.high_watermark(durable);
            self.evaluate(&mut s, durable, hw, now);
            g.1.insert(id, s);
        }
        self.publish(&g.1, false);
    }

    /// Re-evaluates time lag (called periodically, so a silent slave leaves the set).
    pub fn check(&self, durable: u64) {
        let mut g = self.slaves.lock();
        let now = Instant::now();
        for s in g.1.values_mut() {
            if s.in_sync {
                // Only in-sync slaves are evaluated here: the watermark cannot matter.
                self.evaluate(s, durable, 0, now);
            }
        }
        self.publish(&g.1, false);
    }

    /// Drops every slave and fails every waiter (this broker stopped being master).
    pub fn reset_term(&self) {
        let mut g = self.slaves.lock();
        g.1.clear();
        self.required.lock().clear();
        self.publish(&g.1, true);
    }

    /// Identities of the slaves in sync here now.
    pub fn insync_ids(&self) -> BTreeSet<u64> {
        let g = self.slaves.lock();
        g.1.values()
            .filter(|s| s.in_sync)
            .map(|s| s.identity)
            .collect()
    }

    /// Sets the slaves the controller's committed in-sync set names (this master excluded).
    pub fn set_required(&self, ids: BTreeSet<u64>) {
        let g = self.slaves.lock();
        {
            let mut r = self.required.lock();
            if *r == ids {
                return;
            }
            *r = ids;
        }
        self.publish(&g.1, false);
    }

    /// The slaves the controller requires.
    pub fn required(&self) -> BTreeSet<u64> {
        self.required.lock().clone()
    }

    /// Fails fast when fewer than `min_insync - 1` slaves are in sync.
    pub fn check_available(&self) -> Result<(), BrokerError> {
        self.check_available_at(&self.snapshot())
    }

    /// [`Tracker::check_available`] on a snapshot the caller already read.
    pub fn check_available_at(&self, s: &Snapshot) -> Result<(), BrokerError> {
        if s.in_sync + 1 < self.min_insync {
            return Err(BrokerError::NotAvailable(format!(
                "{} of {} required replicas in sync; not accepting writes",
                s.in_sync + 1,
                self.min_insync
            )));
        }
        Ok(())
    }

    /// Waits until every in-sync slave acked `offset` (the caller holds the master's own
    /// fsync). Fails with SLAVE_PERSISTENCE_TIMEOUT when the in-sync set shrinks below the
    /// minimum, `term` (the term the write was admitted in, [`Snapshot::term`]) is over, or
    /// `timeout` passes: the record is in this log already, so the answer means "may be
    /// stored" (HA_NOT_AVAILABLE is kept for refusals before the append, which mean "not
    /// stored").
    pub async fn wait_replicated(
        &self,
        term: u64,
        offset: u64,
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        let min = self.min_insync;
        let done = |s: &Snapshot| s.term != term || s.in_sync + 1 < min || s.replicated >= offset;
        let wait = async {
            loop {
                // Registered before the check, so a change between the two is not missed.
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let s = *self.tx.borrow();
                if done(&s) {
                    return s;
                }
                changed.await;
            }
        };
        let s = match tokio::time::timeout(timeout, wait).await {
            Ok(s) => s,
            Err(_) => {
                return Err(BrokerError::SlavePersistence(format!(
                    "no ack from the in-sync slaves for offset {offset} within {} ms",
                    timeout.as_millis()
                )));
            }
        };
        if s.term != term {
            return Err(BrokerError::SlavePersistence(
                "broker stopped being master before the message was replicated".into(),
            ));
        }
        if s.replicated >= offset && s.in_sync + 1 >= min {
            return Ok(());
        }
        Err(BrokerError::SlavePersistence(format!(
            "in-sync replicas fell to {} of {} required before offset {offset} was replicated",
            s.in_sync + 1,
            min
        )))
    }

    /// Per-slave state.
    pub fn slaves(&self) -> Vec<SlaveInfo> {
        self.slaves
            .lock()
            .1
            .values()
            .map(|s| SlaveInfo {
                name: s.name.clone(),
                acked: s.acked,
                in_sync: s.in_sync,
                reached: s.reached,
                version: s.version,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ack_rule_join_leave_and_timeout() {
        let t = Tracker::new(2, 1000, Duration::from_millis(50));
        assert!(t.check_available().is_err(), "no slave: HA not available");
        let id = t.register("s".into(), 1, 0, 500, 2);
        assert!(
            t.check_available().is_err(),
            "a connected slave starts out of sync"
        );
        t.ack(id, 200, 500);
        assert!(t.check_available().is_err(), "behind its mark");
        t.ack(id, 500, 600);
        assert!(
            t.check_available().is_err(),
            "reached its mark but not the high watermark (600 may be acked)"
        );
        t.ack(id, 600, 600);
        assert!(t.check_available().is_ok(), "holds everything: in sync");
        // A waiter for 650 is released by the ack covering it, not before.
        let w = t.wait_replicated(0, 650, Duration::from_millis(20)).await;
        assert!(matches!(w, Err(BrokerError::SlavePersistence(_))), "{w:?}");
        t.ack(id, 650, 650);
        t.wait_replicated(0, 650, Duration::from_millis(20))
            .await
            .unwrap();
        // Too far behind in bytes: leaves the set; waiters fail fast.
        t.ack(id, 600, 5000);
        assert!(t.check_available().is_err());
        let w = t.wait_replicated(0, 700, Duration::from_secs(5)).await;
        assert!(matches!(w, Err(BrokerError::SlavePersistence(_))), "{w:?}");
        // Catches up: rejoins.
        t.ack(id, 5000, 5000);
        assert!(t.check_available().is_ok());
        // Silent past max_lag while the master moved on: leaves.
        t.check(6000);
        std::thread::sleep(Duration::from_millis(80));
        t.check(6000);
        assert!(t.check_available().is_err());
        t.remove(id);
        assert_eq!(t.snapshot().in_sync, 0);
    }

    /// A slave joins only once it holds everything the in-sync set may have acked: the
    /// controller may elect any member of the set.
    #[test]
    fn join_needs_the_high_watermark() {
        let t = Tracker::new(2, 1 << 20, Duration::from_secs(5));
        let a = t.register("a".into(), 1, 0, 0, 2);
        t.ack(a, 0, 0);
        assert_eq!(t.insync_ids(), [1].into());
        // `a` acked up to 900: sends up to 900 may have been acked.
        t.ack(a, 900, 900);
        let b = t.register("b".into(), 2, 0, 100, 2);
        t.ack(b, 100, 900);
        assert_eq!(t.insync_ids(), [1].into(), "b reached its mark (100) only");
        t.ack(b, 900, 1000);
        assert_eq!(
            t.insync_ids(),
            [1, 2].into(),
            "b holds all that may be acked"
        );
    }

    /// Slaves get written bytes before the master's fsync, so they may ack beyond the
    /// master's durable offset: that counts for waiters (who hold their own fsync), but the
    /// high watermark a joining slave must reach stays at what the master holds durably.
    #[tokio::test]
    async fn acks_ahead_of_the_master_durable_offset() {
        let t = Tracker::new(2, 1 << 20, Duration::from_secs(5));
        let a = t.register("a".into(), 1, 0, 0, 2);
        t.ack(a, 0, 0);
        t.ack(a, 800, 500);
        assert_eq!(t.insync_ids(), [1].into());
        assert_eq!(t.snapshot().replicated, 800);
        t.wait_replicated(0, 800, Duration::from_millis(20))
            .await
            .unwrap();
        assert_eq!(t.high_watermark(500), 500);
        let b = t.register("b".into(), 2, 0, 500, 2);
        t.ack(b, 500, 500);
        assert_eq!(
            t.insync_ids(),
            [1, 2].into(),
            "b holds all the master has durable"
        );
    }

    #[tokio::test]
    async fn term_end_fails_waiters() {
        let t = std::sync::Arc::new(Tracker::new(2, 1000, Duration::from_secs(5)));
        let id = t.register("s".into(), 1, 0, 0, 2);
        t.ack(id, 0, 0);
        let t2 = t.clone();
        let w =
            tokio::spawn(async move { t2.wait_replicated(0, 100, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        t.reset_term();
        assert!(matches!(
            w.await.unwrap(),
            Err(BrokerError::SlavePersistence(_))
        ));
    }

    /// A write admitted in a term that ended before it waited is not acked, even though the
    /// tracker has a term again (the broker may be master once more) and needs no ack.
    #[tokio::test]
    async fn a_term_that_ended_before_the_wait_fails_it() {
        let t = Tracker::new(1, 1000, Duration::from_secs(5));
        let admitted_in = t.snapshot().term;
        t.reset_term();
        let w = t
            .wait_replicated(admitted_in, 100, Duration::from_secs(5))
            .await;
        assert!(matches!(w, Err(BrokerError::SlavePersistence(_))), "{w:?}");
        t.wait_replicated(t.snapshot().term, 100, Duration::from_millis(10))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn min_one_without_slaves_needs_no_ack() {
        let t = Tracker::new(1, 1000, Duration::from_secs(5));
        t.check_available().unwrap();
        t.wait_replicated(0, 1 << 40, Duration::from_millis(10))
            .await
            .unwrap();
    }
}
