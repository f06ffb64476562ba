//! A broker host: durable log, heartbeats with a lease, the real `decide()` on every view,
//! master send path (lease → write → fsync → wait for slaves → lease again → receipt),
//! replication by slave fetch with the real `divergence()` truncation, and in-sync reporting.
//!
//! As in the real broker, a master serves slaves what it has WRITTEN, before its fsync: the
//! fsync takes `Timing::fsync`, during which a slave may fetch and durably store the record,
//! and a crash loses (or tears) the master's unsynced writes. A slave fetches (acks) with its
//! durable end; marks and the heartbeat's log end use the master's durable end.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use sofamq_controller::{AlterInSync, GroupState, Heartbeat};
use sofamq_store::EpochEntry;
use tokio::time::Instant;

use crate::controller::{GROUP, addrs};
use crate::log::{Log, Rec};
use crate::net::{self, Req, Resp};
use crate::rules::Role;
use crate::rules::decide::{Action, Local, decide};
use crate::rules::epoch::divergence;
use crate::shared::{Durable, World, now_ms};

/// Host name of broker `id`.
pub fn host(id: u64) -> String {
    format!("b{id}")
}

/// The master's view of one slave.
struct Follower {
    /// Acked durable offset that agrees with this master's log.
    acked: u64,
    /// The master's durable end at the slave's previous fetch.
    mark: u64,
    /// When the slave last reached its mark.
    last_ok: Option<Instant>,
}

struct Node {
    me: u64,
    name: String,
    sh: World,
    log: Log,
    role: Role,
    following: Option<String>,
    lease_until: Option<Instant>,
    required: BTreeSet<u64>,
    followers: BTreeMap<u64, Follower>,
    seen_epoch: u64,
    view: Option<GroupState>,
    /// The master address whose latest fetch failed. The real broker reports only a refused
    /// connect (the process is gone); the sim reports every failure, a partition or a
    /// held link too, so the controller's earlier election on such reports is tried
    /// against masters that are alive.
    master_unreachable: Option<String>,
}

type N = Rc<RefCell<Node>>;

fn to_pairs(h: &[EpochEntry]) -> Vec<(u64, u64)> {
    h.iter().map(|e| (e.epoch, e.start_offset)).collect()
}

fn from_pairs(h: &[(u64, u64)]) -> Vec<EpochEntry> {
    h.iter()
        .map(|&(epoch, start_offset)| EpochEntry {
            epoch,
            start_offset,
        })
        .collect()
}

impl Node {
    fn trace(&self, msg: impl AsRef<str>) {
        self.sh.log(&self.name, msg);
    }

    fn lease_ok(&self) -> bool {
        self.lease_until.is_some_and(|t| Instant::now() < t)
    }

    fn max_lag(&self) -> Duration {
        Duration::from_millis(self.sh.timing.max_lag)
    }

    /// Slaves in sync by this master's own tracking.
    fn local_insync(&self) -> BTreeSet<u64> {
        let now = Instant::now();
        self.followers
            .iter()
            .filter(|(_, f)| f.last_ok.is_some_and(|t| now - t <= self.max_lag()))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Slaves a send must wait for: local in-sync ∪ committed in-sync, minus this broker.
    fn waiting_set(&self) -> BTreeSet<u64> {
        let mut s = self.local_insync();
        s.extend(self.required.iter().copied());
        s.remove(&self.me);
        s
    }

    fn drop_master(&mut self) {
        self.lease_until = None;
        self.followers.clear();
        self.required.clear();
    }

    /// Acts on a committed view with the real `decide()`.
    fn apply(&mut self, view: GroupState, lease: Option<Instant>) {
        self.seen_epoch = self.seen_epoch.max(view.master_epoch);
        let following = self.following.clone();
        let local = Local {
            me: self.me,
            role: self.role,
            epoch: self.log.epoch(),
            following: following.as_deref(),
        };
        match decide(local, &view) {
            Action::Hold { required } => {
                self.required = required;
                if let Some(t) = lease {
                    self.lease_until = Some(self.lease_until.map_or(t, |l| l.max(t)));
                }
            }
            Action::Promote { epoch, required } => {
                if self.role == Role::Master {
                    self.drop_master();
                    self.role = Role::Slave;
                }
                match self.log.begin_epoch(epoch) {
                    Ok(()) => {
                        self.role = Role::Master;
                        self.following = None;
                        self.required = required;
                        self.lease_until = lease;
                        self.trace(format!(
                            "PROMOTED epoch={epoch} end={} required={:?}",
                            self.log.end(),
                            self.required
                        ));
                    }
                    Err(e) => self.trace(format!("promotion to {epoch} failed: {e}")),
                }
            }
            Action::Follow(addr) => {
                if self.role == Role::Master {
                    self.trace(format!(
                        "demoted: follow {addr} (epoch {})",
                        view.master_epoch
                    ));
                }
                self.drop_master();
                self.role = Role::Slave;
                self.following = Some(addr);
            }
            Action::StepDown => {
                self.trace("step down");
                self.drop_master();
                self.role = Role::Slave;
                self.following = None;
            }
            Action::Idle => self.lease_until = None,
        }
        self.view = Some(view);
    }

    fn heartbeat(&self, incarnation: u64) -> Heartbeat {
        Heartbeat {
            group: GROUP.into(),
            broker_id: self.me,
            incarnation,
            addrs: addrs(&self.name),
            store_epoch: self.log.epoch(),
            log_end: self.log.durable(),
            prefer_master: self.me == 0,
            acting_master_epoch: (self.role == Role::Master).then(|| self.log.epoch()),
            master_refused: self
                .master_unreachable
                .clone()
                .filter(|a| self.role == Role::Slave && self.following.as_ref() == Some(a)),
            fenced: None,
        }
    }

    /// The in-sync change to report, if this broker is the committed master and its set
    /// differs from the committed one.
    fn alter_request(&self) -> Option<AlterInSync> {
        let v = self.view.as_ref()?;
        if self.role != Role::Master
            || v.master != Some(self.me)
            || v.master_epoch != self.log.epoch()
        {
            return None;
        }
        let mut want = self.local_insync();
        want.insert(self.me);
        (want != v.insync).then(|| AlterInSync {
            group: GROUP.into(),
            master: self.me,
            master_epoch: v.master_epoch,
            insync: want,
        })
    }

    /// Master side of a slave fetch: record its ack, send what it lacks.
    fn serve_fetch(&mut self, from: u64, seen: u64, hist: &[(u64, u64)], end: u64) -> Resp {
        if self.role != Role::Master {
            return Resp::Refused("not master".into());
        }
        let epoch = self.log.epoch();
        if seen > epoch {
            return Resp::Refused(format!("stale master: epoch {epoch} < {seen}"));
        }
        // Written, not only durable: the slave may hold records this master loses in a crash
        // before its fsync (never acked; the epoch rule cuts them if this master comes back).
        let my_end = self.log.end();
        let durable = self.log.durable();
        let d = divergence(&from_pairs(hist), end, self.log.hist(), my_end);
        let now = Instant::now();
        let f = self.followers.entry(from).or_insert(Follower {
            acked: 0,
            mark: durable,
            last_ok: None,
        });
        f.acked = d;
        if d >= f.mark {
            f.last_ok = Some(now);
            f.mark = durable;
        }
        let lo = usize::try_from(d).unwrap_or(usize::MAX);
        let hi = usize::try_from(my_end.min(d + 64)).unwrap_or(usize::MAX);
        Resp::Fetch {
            epoch,
            hist: to_pairs(self.log.hist()),
            end: my_end,
            from: d,
            recs: self.log.recs().get(lo..hi).unwrap_or_default().to_vec(),
        }
    }

    /// Slave side: apply a master's fetch reply (truncate by the epoch rule, append, sync).
    fn apply_fetch(&mut self, addr: &str, resp: Resp) {
        let Resp::Fetch {
            epoch,
            hist,
            end,
            from,
            recs,
        } = resp
        else {
            return;
        };
        if self.role != Role::Slave || self.following.as_deref() != Some(addr) {
            return;
        }
        if epoch < self.seen_epoch || epoch < self.log.epoch() {
            self.trace(format!(
                "refuse {addr}: its epoch {epoch} < seen {}",
                self.seen_epoch.max(self.log.epoch())
            ));
            return;
        }
        self.seen_epoch = epoch;
        let t = divergence(self.log.hist(), self.log.end(), &from_pairs(&hist), end);
        if t < self.log.end() {
            self.trace(format!(
                "truncate {} -> {t} (master {addr} e{epoch})",
                self.log.end()
            ));
            if let Err(e) = self.log.truncate(t) {
                self.trace(format!("truncate failed: {e}"));
                return;
            }
        }
        if from != self.log.end() || recs.is_empty() {
            return;
        }
        if recs.iter().any(|r| r.epoch > epoch) {
            self.trace("refuse records above the master's epoch");
            return;
        }
        if let Err(e) = self.log.append(&recs) {
            self.trace(format!("append failed: {e}"));
        }
    }
}

/// The producer's send on this broker.
async fn send(node: N, id: u64) -> Resp {
    let sh = node.borrow().sh.clone();
    let me = node.borrow().me;
    sh.gate(me).await;
    let (epoch, target) = {
        let mut n = node.borrow_mut();
        if n.role != Role::Master || !n.lease_ok() {
            return Resp::Refused("not master (or no lease)".into());
        }
        if !sh.knobs.ack_before_replication && n.waiting_set().is_empty() {
            return Resp::Refused("HA not available: no slave in sync".into());
        }
        let epoch = n.log.epoch();
        if let Err(e) = n.log.write(&[Rec { epoch, id }]) {
            return Resp::Refused(format!("write: {e}"));
        }
        (epoch, n.log.end())
    };
    // The fsync takes a while; slaves may fetch the written record meanwhile.
    tokio::time::sleep(Duration::from_millis(sh.timing.fsync)).await;
    if !sh.knobs.ack_before_fsync {
        let mut n = node.borrow_mut();
        if let Err(e) = n.log.sync() {
            return Resp::Refused(format!("sync: {e}"));
        }
        if n.log.durable() < target {
            return Resp::Refused("log cut below the record before its fsync".into());
        }
    }
    if !sh.knobs.ack_before_replication {
        let deadline = Instant::now() + Duration::from_millis(sh.timing.ack_wait);
        loop {
            {
                let n = node.borrow();
                if n.role != Role::Master || n.log.epoch() != epoch {
                    n.trace(format!("id {id}: deposed while waiting for slaves"));
                    return Resp::Refused("deposed while waiting".into());
                }
                let set = n.waiting_set();
                if set.is_empty() {
                    return Resp::Refused("HA not available".into());
                }
                if set
                    .iter()
                    .all(|s| n.followers.get(s).is_some_and(|f| f.acked >= target))
                {
                    break;
                }
            }
            if Instant::now() >= deadline {
                return Resp::Refused("slave persistence timeout".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // A paused process stalls here too, between replication and the receipt.
    sh.gate(me).await;
    let n = node.borrow();
    if n.role != Role::Master || n.log.epoch() != epoch || !n.lease_ok() {
        n.trace(format!(
            "id {id}: stored and replicated, but lease lost: no receipt"
        ));
        return Resp::Refused("lease lost before the receipt".into());
    }
    Resp::SendOk { epoch, broker: me }
}

async fn heartbeat_loop(node: N, incarnation: u64) {
    let (sh, me) = {
        let n = node.borrow();
        (n.sh.clone(), n.me)
    };
    let period = Duration::from_millis(sh.timing.heartbeat);
    let rpc = Duration::from_millis(sh.timing.rpc);
    loop {
        sh.gate(me).await;
        let alter = node.borrow().alter_request();
        if let Some(a) = alter
            && let Some(Resp::View(g)) = net::call("controller", &Req::AlterInSync(a), rpc).await
        {
            node.borrow_mut().apply(g, None);
        }
        let hb = node.borrow().heartbeat(incarnation);
        let sent = Instant::now();
        if let Some(Resp::Heartbeat(r)) = net::call("controller", &Req::Heartbeat(hb), rpc).await {
            sh.gate(me).await;
            let lease = sent + Duration::from_millis(r.lease_ms);
            node.borrow_mut().apply(r.view, Some(lease));
        }
        tokio::time::sleep(period).await;
    }
}

async fn fetch_loop(node: N) {
    let (sh, me) = {
        let n = node.borrow();
        (n.sh.clone(), n.me)
    };
    let period = Duration::from_millis(sh.timing.fetch);
    let rpc = Duration::from_millis(sh.timing.rpc);
    loop {
        tokio::time::sleep(period).await;
        sh.gate(me).await;
        let req = {
            let n = node.borrow();
            match (&n.role, &n.following) {
                (Role::Slave, Some(addr)) => Some((
                    addr.clone(),
                    Req::Fetch {
                        from: n.me,
                        seen_epoch: n.seen_epoch.max(n.log.epoch()),
                        hist: to_pairs(n.log.hist()),
                        // Its ack: only what this slave holds durably.
                        end: n.log.durable(),
                    },
                )),
                _ => None,
            }
        };
        let Some((addr, req)) = req else { continue };
        match net::call(&addr, &req, rpc).await {
            Some(resp) => {
                sh.gate(me).await;
                let mut n = node.borrow_mut();
                n.master_unreachable = None;
                n.apply_fetch(&addr, resp);
            }
            None => node.borrow_mut().master_unreachable = Some(addr),
        }
    }
}

/// Runs broker `me`.
pub async fn run(sh: World, me: u64) -> turmoil::Result {
    let name = host(me);
    let log = loop {
        match Log::open() {
            Ok(l) => break l,
            Err(e) => {
                sh.log(&name, format!("recovery failed: {e}; retrying"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    sh.log(
        &name,
        format!("start: end={} hist={:?}", log.end(), to_pairs(log.hist())),
    );
    sh.recovered.borrow_mut().insert(
        me,
        Durable {
            recs: log.recs().to_vec(),
            hist: log.hist().to_vec(),
            at_ms: now_ms(),
        },
    );
    let incarnation = sh.incarnation();
    let node: N = Rc::new(RefCell::new(Node {
        me,
        name,
        sh: sh.clone(),
        log,
        role: Role::Slave,
        following: None,
        lease_until: None,
        required: BTreeSet::new(),
        followers: BTreeMap::new(),
        seen_epoch: 0,
        view: None,
        master_unreachable: None,
    }));
    tokio::task::spawn_local(heartbeat_loop(node.clone(), incarnation));
    tokio::task::spawn_local(fetch_loop(node.clone()));
    net::serve(move |req| {
        let node = node.clone();
        async move {
            match req {
                Req::Send { id } => send(node, id).await,
                Req::Fetch {
                    from,
                    seen_epoch,
                    hist,
                    end,
                } => node.borrow_mut().serve_fetch(from, seen_epoch, &hist, end),
                _ => Resp::Refused("not a broker request".into()),
            }
        }
    })
    .await?;
    Ok(())
}
