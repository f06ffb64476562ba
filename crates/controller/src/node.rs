//! A controller node: Raft plus the broker-facing operations and the leader's election loop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};
use parking_lot::{Mutex, RwLock};
use sofamq_server::Shutdown;
use tokio_util::sync::CancellationToken;

use crate::command::{Command, CommandReply};
use crate::config::{ConfigError, ControllerConfig};
use crate::logic::{self, BrokerSeen, Clock};
use crate::network::{Connector, Network, TcpConnector};
use crate::raft::Raft;
use crate::rpc::{Request, Response};
use crate::sm::{SmData, StateMachine};
use crate::store::{LogStore, OpenError};
use crate::types::{
    AlterInSync, ControllerError, ControllerStatus, GroupState, Heartbeat, HeartbeatReply, NodeId,
};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The log or vote could not be opened.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// The state machine snapshot could not be read.
    #[error("controller state machine: {0}")]
    StateMachine(String),
    /// openraft refused to start.
    #[error("raft: {0}")]
    Raft(String),
}

/// The leader's in-memory liveness view, reset whenever its leadership term changes.
#[derive(Debug)]
struct Liveness {
    term: Option<u64>,
    leader_since: Instant,
    groups: BTreeMap<String, BTreeMap<u64, BrokerSeen>>,
    /// Per group: the master epoch last observed and when this leader first saw it.
    epochs: BTreeMap<String, (u64, Instant)>,
    /// Per group that has no master and cannot get one: why (logged when it changes).
    unavailable: BTreeMap<String, String>,
}

impl Liveness {
    fn for_term(&mut self, term: u64, now: Instant) {
        if self.term != Some(term) {
            tracing::info!(term, "controller leadership starts: liveness history reset");
            self.term = Some(term);
            self.leader_since = now;
            self.groups.clear();
            self.epochs.clear();
            self.unavailable.clear();
        }
    }

    fn epoch_since(&mut self, group: &GroupState, now: Instant) -> Instant {
        let e = self
            .epochs
            .entry(group.group.clone())
            .or_insert((group.master_epoch, now));
        if e.0 != group.master_epoch {
            *e = (group.master_epoch, now);
        }
        e.1.max(self.leader_since)
    }
}

struct Inner {
    config: ControllerConfig,
    raft: Raft,
    /// The log store (shared with Raft): says whether this node is catching up.
    log: LogStore,
    sm: Arc<RwLock<SmData>>,
    live: Mutex<Liveness>,
    stopped: CancellationToken,
}

/// A running controller node (cheap to clone). Serve it with [`crate::serve`].
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("node_id", &self.inner.config.node_id)
            .finish()
    }
}

impl Controller {
    /// Starts a node over TCP: opens the data dir, starts Raft, initializes the cluster
    /// when this is the lowest id (idempotent) and runs the election loop until `shutdown`.
    pub async fn start(
        config: ControllerConfig,
        shutdown: Shutdown,
    ) -> Result<Controller, StartError> {
        Self::start_with(config, Arc::new(TcpConnector), shutdown).await
    }

    /// [`Controller::start`] with a custom transport (e.g. a simulator's).
    pub async fn start_with(
        config: ControllerConfig,
        connector: Arc<dyn Connector>,
        shutdown: Shutdown,
    ) -> Result<Controller, StartError> {
        config.validate()?;
        let shutdown = shutdown.token().clone();
        let log = LogStore::open(&config.data_dir)?;
        let log_handle = log.clone();
        let sm = StateMachine::open(&config.data_dir)
            .map_err(|e| StartError::StateMachine(e.to_string()))?;
        let data = sm.data();
        let raft_config = openraft::Config {
            cluster_name: "sofamq-controller".into(),
            heartbeat_interval: config.raft_heartbeat_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            snapshot_max_chunk_size: 1 << 20,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let limits = config.frame_limits();
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            Network::new(connector, limits),
            log,
            sm,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let ctl = Controller {
            inner: Arc::new(Inner {
                config,
                raft,
                log: log_handle,
                sm: data,
                live: Mutex::new(Liveness {
                    term: None,
                    leader_since: Instant::now(),
                    groups: BTreeMap::new(),
                    epochs: BTreeMap::new(),
                    unavailable: BTreeMap::new(),
                }),
                stopped: CancellationToken::new(),
            }),
        };
        if let Some(why) = ctl.inner.log.catching_up() {
            // Entries this node acknowledged may be gone: voting or standing for election
            // now could let a leader without them win. The leader's log is fetched first.
            ctl.inner.raft.runtime_config().elect(false);
            tracing::warn!(reason = %why, "controller catching up: no vote and no election until it holds the leader's log");
        } else {
            ctl.initialize().await;
        }
        tokio::spawn(ctl.clone().check_loop(shutdown.clone()));
        let c = ctl.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            if let Err(e) = c.inner.raft.shutdown().await {
                tracing::warn!(error = %e, "raft shutdown");
            }
            tracing::info!(node = c.inner.config.node_id, "controller stopped");
            c.inner.stopped.cancel();
        });
        Ok(ctl)
    }

    async fn initialize(&self) {
        let cfg = &self.inner.config;
        if cfg.peers.keys().next() != Some(&cfg.node_id) {
            return;
        }
        match self.inner.raft.is_initialized().await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "raft is_initialized");
                return;
            }
        }
        let members: BTreeMap<u64, BasicNode> = cfg
            .peers
            .iter()
            .map(|(id, a)| (*id, BasicNode { addr: a.clone() }))
            .collect();
        match self.inner.raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(node = cfg.node_id, peers = ?cfg.peers, "controller cluster initialized")
            }
            Err(e) => tracing::info!(error = %e, "controller cluster already initialized"),
        }
    }

    /// Resolves once the node has fully stopped (after its shutdown token fired).
    pub async fn stopped(&self) {
        self.inner.stopped.cancelled().await;
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.config.node_id
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &ControllerConfig {
        &self.inner.config
    }

    /// The Raft term when this node is the leader.
    pub fn leader_term(&self) -> Option<u64> {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        (m.state == ServerState::Leader && m.current_leader == Some(self.inner.config.node_id))
            .then_some(m.current_term)
    }

    /// Whether this node is the Raft leader now.
    pub fn is_leader(&self) -> bool {
        self.leader_term().is_some()
    }

    /// The committed state of one group as this node has applied it.
    pub fn group(&self, name: &str) -> Option<GroupState> {
        self.inner.sm.read().groups.get(name).cloned()
    }

    fn leader_addr(&self, leader: Option<NodeId>) -> Option<String> {
        let id = leader?;
        let m = self.inner.raft.metrics();
        let from_membership = m
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone());
        from_membership.or_else(|| self.inner.config.peers.get(&id).cloned())
    }

    fn not_leader(&self) -> ControllerError {
        let leader = self.inner.raft.metrics().borrow().current_leader;
        let leader = leader.filter(|l| *l != self.inner.config.node_id);
        ControllerError::NotLeader {
            leader_addr: self.leader_addr(leader),
        }
    }

    /// Confirms leadership with a quorum and waits until the state machine caught up, so
    /// that what this node answers is the committed state (a deposed leader cannot keep
    /// extending a stale master's lease).
    async fn linearize(&self) -> Result<u64, ControllerError> {
        let term = self.leader_term().ok_or_else(|| self.not_leader())?;
        match tokio::time::timeout(
            self.inner.config.rpc_timeout(),
            self.inner.raft.ensure_linearizable(),
        )
        .await
        {
            Ok(Ok(_)) => Ok(term),
            Ok(Err(RaftError::APIError(_))) => Err(self.not_leader()),
            Ok(Err(RaftError::Fatal(e))) => Err(ControllerError::Unavailable(e.to_string())),
            Err(_) => Err(ControllerError::Unavailable(
                "leadership not confirmed in time".into(),
            )),
        }
    }

    /// Proposes `cmd` through Raft and waits for it to be applied.
    pub async fn propose(&self, cmd: Command) -> Result<GroupState, ControllerError> {
        let t = self.inner.config.rpc_timeout() * 3;
        match tokio::time::timeout(t, self.inner.raft.client_write(cmd)).await {
            Err(_) => Err(ControllerError::Unavailable("raft commit timed out".into())),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ControllerError::NotLeader {
                    leader_addr: f
                        .leader_node
                        .map(|n| n.addr)
                        .or_else(|| self.leader_addr(f.leader_id)),
                })
            }
            Ok(Err(e)) => Err(ControllerError::Unavailable(e.to_string())),
            Ok(Ok(resp)) => match resp.data {
                CommandReply::Applied(g) => Ok(g),
                CommandReply::Refused(why) => Err(ControllerError::Refused(why)),
                CommandReply::None => Err(ControllerError::Unavailable(
                    "no reply from state machine".into(),
                )),
            },
        }
    }

    /// Builds a snapshot of everything applied so far and purges the log up to it; returns
    /// the purged-up-to index. The log is tiny, so this is for admin and tests.
    pub async fn compact(&self) -> Result<Option<u64>, ControllerError> {
        let raft = &self.inner.raft;
        let unavailable = |e: &dyn std::fmt::Display| ControllerError::Unavailable(e.to_string());
        // After a restart the applied index reaches the metrics a moment after the state
        // itself: wait for it briefly rather than report "nothing to compact".
        let _ = raft
            .wait(Some(self.inner.config.rpc_timeout()))
            .metrics(|m| m.last_applied.is_some(), "applied")
            .await;
        let Some(applied) = raft.metrics().borrow().last_applied.map(|l| l.index) else {
            return Ok(None);
        };
        raft.trigger()
            .snapshot()
            .await
            .map_err(|e| unavailable(&e))?;
        let wait = raft.wait(Some(self.inner.config.rpc_timeout() * 5));
        wait.metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= applied),
            "snapshot",
        )
        .await
        .map_err(|e| unavailable(&e))?;
        raft.trigger()
            .purge_log(applied)
            .await
            .map_err(|e| unavailable(&e))?;
        wait.metrics(|m| m.purged.is_some_and(|p| p.index >= applied), "purge")
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(Some(applied))
    }

    /// A broker's heartbeat (leader only): records liveness, registers the broker when it is
    /// new or moved, and answers the committed group view and the lease.
    pub async fn heartbeat(&self, hb: Heartbeat) -> Result<HeartbeatReply, ControllerError> {
        let term = self.linearize().await?;
        {
            let now = Instant::now();
            let mut live = self.inner.live.lock();
            live.for_term(term, now);
            let g = live.groups.entry(hb.group.clone()).or_default();
            match g.get_mut(&hb.broker_id) {
                Some(s) => s.update(&hb, now),
                None => {
                    g.insert(hb.broker_id, BrokerSeen::new(&hb, now));
                }
            }
        }
        let registered = self
            .inner
            .sm
            .read()
            .groups
            .get(&hb.group)
            .is_some_and(|g| g.brokers.get(&hb.broker_id) == Some(&hb.addrs));
        if !registered {
            tracing::info!(group = %hb.group, broker = hb.broker_id, addrs = ?hb.addrs, "registering broker");
            self.propose(Command::Register {
                group: hb.group.clone(),
                broker_id: hb.broker_id,
                addrs: hb.addrs.clone(),
                store_epoch: hb.store_epoch,
            })
            .await?;
        }
        let view = self
            .group(&hb.group)
            .ok_or_else(|| ControllerError::Unavailable("group not yet applied".into()))?;
        Ok(HeartbeatReply {
            view,
            lease_ms: self.inner.config.lease_ms,
        })
    }

    /// A master's in-sync change (leader only); refused unless master and epoch match.
    pub async fn alter_insync(&self, req: AlterInSync) -> Result<GroupState, ControllerError> {
        self.linearize().await?;
        if let Some(why) = self.fenced_shrink(&req) {
            tracing::warn!(group = %req.group, master = req.master, reason = %why, "in-sync shrink refused");
            return Err(ControllerError::Refused(why));
        }
        self.propose(Command::AlterInSync(req)).await
    }

    /// Why `req` must be refused: it drops replicas from the in-sync set while its master
    /// reports a fenced log. A fenced master stores and acks nothing more, and the slaves
    /// it would drop (its replication stopped, so they stopped acking) hold everything it
    /// acked: dropping them would leave only the fenced master eligible, a group with no
    /// master at all instead of a failover.
    fn fenced_shrink(&self, req: &AlterInSync) -> Option<String> {
        let fenced = {
            let live = self.inner.live.lock();
            live.groups
                .get(&req.group)
                .and_then(|b| b.get(&req.master))
                .and_then(|s| s.fenced.clone())?
        };
        let sm = self.inner.sm.read();
        let current = &sm.groups.get(&req.group)?.insync;
        current.iter().any(|id| !req.insync.contains(id)).then(|| {
            format!(
                "master {} of {} is fenced ({fenced}): it may not shrink the in-sync set",
                req.master, req.group
            )
        })
    }

    /// A catching-up node holds the leader's log again once the leader reports an entry of
    /// its own term committed and this log reaches it: every entry committed before (those
    /// this node may have lost among them) precedes that entry in the leader's log, which
    /// this one now matches. Then it votes and stands for election again.
    fn maybe_caught_up(&self, leader_commit: Option<crate::raft::LogId>, leader_term: u64) {
        if self.inner.log.catching_up().is_none() {
            return;
        }
        let Some(c) = leader_commit.filter(|c| c.leader_id.term == leader_term) else {
            return;
        };
        let last = self.inner.raft.metrics().borrow().last_log_index;
        if last.is_none_or(|l| l < c.index) {
            return;
        }
        match self.inner.log.caught_up() {
            Ok(()) => {
                self.inner.raft.runtime_config().elect(true);
                tracing::warn!(
                    committed = c.index,
                    "controller log repaired from the leader: voting again"
                );
            }
            Err(e) => tracing::error!(error = %e, "could not end catching up"),
        }
    }

    /// This node's view (any node answers).
    pub fn status(&self) -> ControllerStatus {
        let (leader, term) = {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            (m.current_leader, m.current_term)
        };
        let groups = self.inner.sm.read().groups.values().cloned().collect();
        let mut last_seen_ms = BTreeMap::new();
        let mut unavailable = BTreeMap::new();
        if let Some(t) = self.leader_term() {
            let live = self.inner.live.lock();
            if live.term == Some(t) {
                unavailable.clone_from(&live.unavailable);
                let now = Instant::now();
                for (g, brokers) in &live.groups {
                    for (id, s) in brokers {
                        let ms = now.saturating_duration_since(s.last_seen).as_millis();
                        last_seen_ms
                            .insert(format!("{g}/{id}"), u64::try_from(ms).unwrap_or(u64::MAX));
                    }
                }
            }
        }
        ControllerStatus {
            node: self.inner.config.node_id,
            leader,
            leader_addr: self.leader_addr(leader),
            term,
            groups,
            last_seen_ms,
            unavailable,
            catching_up: self.inner.log.catching_up(),
        }
    }

    /// Answers one wire request.
    pub async fn handle(&self, req: Request) -> Response {
        let raft = &self.inner.raft;
        match req {
            Request::AppendEntries(r) => {
                let leader_commit = r.leader_commit;
                let leader_term = r.vote.leader_id.term;
                let resp = raft.append_entries(*r).await;
                if matches!(resp, Ok(openraft::raft::AppendEntriesResponse::Success)) {
                    self.maybe_caught_up(leader_commit, leader_term);
                }
                Response::AppendEntries(resp)
            }
            Request::Vote(r) if self.inner.log.catching_up().is_some() => {
                let m = raft.metrics().borrow().clone();
                tracing::info!(candidate = %r.vote, "vote refused: this controller is catching up");
                Response::Vote(Ok(openraft::raft::VoteResponse {
                    vote: m.vote,
                    vote_granted: false,
                    last_log_id: None,
                }))
            }
            Request::Vote(r) => Response::Vote(raft.vote(r).await),
            Request::InstallSnapshot(r) => {
                Response::InstallSnapshot(raft.install_snapshot(*r).await)
            }
            Request::Heartbeat(h) => Response::Heartbeat(self.heartbeat(h).await),
            Request::AlterInSync(a) => Response::AlterInSync(self.alter_insync(a).await),
            Request::Status => Response::Status(Box::new(self.status())),
            // Negotiation belongs to the connection (`server.rs`), never to the node.
            Request::Hello { .. } => Response::Error(ControllerError::Transport(
                "Hello must be a connection's first request".into(),
            )),
        }
    }

    /// The leader's periodic election check.
    async fn check_loop(self, shutdown: CancellationToken) {
        let mut tick =
            tokio::time::interval(Duration::from_millis(self.inner.config.check_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(term) = self.leader_term() else {
                continue;
            };
            for cmd in self.decisions(term) {
                tracing::info!(?cmd, "controller proposes election");
                match self.propose(cmd).await {
                    Ok(g) => {
                        tracing::info!(group = %g.group, master = ?g.master, epoch = g.master_epoch, insync = ?g.insync, "election committed");
                        self.inner
                            .live
                            .lock()
                            .epochs
                            .insert(g.group.clone(), (g.master_epoch, Instant::now()));
                    }
                    Err(e) => tracing::warn!(error = %e, "election proposal failed"),
                }
            }
        }
    }

    fn decisions(&self, term: u64) -> Vec<Command> {
        let groups: Vec<GroupState> = self.inner.sm.read().groups.values().cloned().collect();
        let now = Instant::now();
        let mut live = self.inner.live.lock();
        live.for_term(term, now);
        let empty = BTreeMap::new();
        let master_timeout = self.inner.config.master_timeout();
        let refused_timeout = self.inner.config.refused_timeout();
        let mut out = Vec::new();
        for g in &groups {
            let epoch_since = live.epoch_since(g, now);
            let clock = Clock {
                now,
                leader_since: live.leader_since,
                epoch_since,
                master_timeout,
                refused_timeout,
            };
            let seen = live.groups.get(&g.group).unwrap_or(&empty);
            if let Some(cmd) = logic::decide(g, seen, &clock) {
                out.push(cmd);
            }
            // Said once per change, not on every tick; `status` shows it meanwhile.
            match logic::unavailable(g, seen, &clock) {
                Some(why) => {
                    let known = live.unavailable.get(&g.group);
                    // A change of reasons is news; a silence growing by the millisecond is not.
                    let shape =
                        |w: &str| -> String { w.chars().filter(|c| !c.is_ascii_digit()).collect() };
                    if known.is_none_or(|k| shape(k) != shape(&why)) {
                        tracing::error!(group = %g.group, reason = %why, "broker group unavailable");
                    }
                    live.unavailable.insert(g.group.clone(), why);
                }
                None => {
                    if live.unavailable.remove(&g.group).is_some() {
                        tracing::info!(group = %g.group, "broker group can elect a master again");
                    }
                }
            }
        }
        out
    }
}
