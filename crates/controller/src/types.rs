//! What brokers and the controller say to each other, and the replicated state.
//!
//! A broker is known by `(group, id)`, where `id` is its configured `broker_id`; its role
//! (master or slave) is the controller's decision, not its configuration.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A controller node's Raft id.
pub type NodeId = u64;

/// Where a broker can be reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerAddrs {
    /// Client gRPC address.
    pub grpc: String,
    /// Replication address (what slaves of this broker connect to).
    pub repl: String,
}

/// One broker group as the controller sees it (replicated through Raft).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// Broker group name (`broker_name`).
    pub group: String,
    /// The master's broker id; `None` before the first election or while no replica is
    /// eligible (the group is then unavailable rather than unclean).
    pub master: Option<u64>,
    /// The master epoch: only grows, one per election.
    pub master_epoch: u64,
    /// Replicas (master included) holding every acked message of this epoch; only these
    /// can be elected.
    pub insync: BTreeSet<u64>,
    /// Bumped on every change of `insync`.
    pub insync_epoch: u64,
    /// Every broker that ever registered, by id.
    pub brokers: BTreeMap<u64, BrokerAddrs>,
}

impl GroupState {
    /// The master's addresses, when there is a master.
    pub fn master_addrs(&self) -> Option<&BrokerAddrs> {
        self.master.and_then(|m| self.brokers.get(&m))
    }
}

/// A broker's periodic heartbeat to the controller leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Broker group.
    pub group: String,
    /// Configured broker id (stable identity within the group).
    pub broker_id: u64,
    /// Random per process start: a new value means the broker restarted.
    pub incarnation: u64,
    /// Addresses to publish.
    pub addrs: BrokerAddrs,
    /// Highest epoch in the broker's durable epoch history.
    pub store_epoch: u64,
    /// The broker's durable log end (used to prefer the most complete replica).
    pub log_end: u64,
    /// Whether this broker is configured to be master when the group first forms.
    pub prefer_master: bool,
    /// Whether the broker acts as master now (and in which epoch).
    pub acting_master_epoch: Option<u64>,
    /// A slave whose latest attempt to connect to the replication address it follows was
    /// refused names that address: nothing listens there, the process is gone (a live but
    /// slow or partitioned master does not refuse connections).
    #[serde(default)]
    pub master_refused: Option<String>,
    /// Why the broker's commit log is fenced (a write or fsync failed, or recovery found
    /// corruption), if it is: it refuses writes, so it is replaced at once as master and
    /// never elected.
    #[serde(default)]
    pub fenced: Option<String>,
}

/// The controller leader's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The group as committed through Raft.
    pub view: GroupState,
    /// How long (ms) the broker may act as master counting from when it *sent* this
    /// heartbeat, if it is the master in `view`.
    pub lease_ms: u64,
}

/// A master reports a change of its in-sync set. Applied only if `master`/`master_epoch`
/// still match the committed state (else refused: a stale master cannot shrink the set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterInSync {
    /// Broker group.
    pub group: String,
    /// The reporting master's id.
    pub master: u64,
    /// The reporting master's epoch.
    pub master_epoch: u64,
    /// The new in-sync set (the master included).
    pub insync: BTreeSet<u64>,
}

/// The controller's status, for admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerStatus {
    /// This node's id.
    pub node: NodeId,
    /// The Raft leader, if known.
    pub leader: Option<NodeId>,
    /// The leader's address, if known.
    pub leader_addr: Option<String>,
    /// The current Raft term.
    pub term: u64,
    /// Every group.
    pub groups: Vec<GroupState>,
    /// Per broker: milliseconds since the leader last heard from it (leader only).
    pub last_seen_ms: BTreeMap<String, u64>,
    /// Per group without a master that none of its in-sync replicas can become: why
    /// (leader only; see [`crate::logic::unavailable`]).
    #[serde(default)]
    pub unavailable: BTreeMap<String, String>,
    /// Why this node is catching up from the leader (its Raft log was damaged), while it is:
    /// it neither votes nor stands for election meanwhile.
    #[serde(default)]
    pub catching_up: Option<String>,
}

/// Errors a controller request can end with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ControllerError {
    /// Ask the leader instead.
    #[error("not the controller leader (leader: {leader_addr:?})")]
    NotLeader {
        /// The leader's address, when known.
        leader_addr: Option<String>,
    },
    /// The request does not apply to the committed state (stale master, unknown group...).
    #[error("refused: {0}")]
    Refused(String),
    /// Raft could not commit (no quorum, shutting down...).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Transport or encoding failure.
    #[error("transport: {0}")]
    Transport(String),
}
