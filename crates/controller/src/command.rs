//! The commands replicated through Raft and what applying them answers.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::types::{AlterInSync, BrokerAddrs, GroupState};

/// A change of the replicated state: the `D` of the Raft type config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A broker joined the group or changed its addresses.
    Register {
        /// Broker group.
        group: String,
        /// The broker's configured id.
        broker_id: u64,
        /// Its addresses.
        addrs: BrokerAddrs,
        /// Its store epoch when it registered (informational).
        store_epoch: u64,
    },
    /// An election outcome. Applied only if the group's `master_epoch` still equals
    /// `expect_epoch` (compare-and-set: a decision taken on a stale view is refused).
    Elect {
        /// Broker group.
        group: String,
        /// The `master_epoch` the decision was based on.
        expect_epoch: u64,
        /// The new master, or `None` to leave the group without master (nobody eligible).
        master: Option<u64>,
        /// The new master epoch (greater than `expect_epoch` when `master` is set, equal
        /// otherwise).
        epoch: u64,
        /// The new in-sync set (contains `master` when set).
        insync: BTreeSet<u64>,
    },
    /// The master reports a new in-sync set.
    AlterInSync(AlterInSync),
}

impl Command {
    /// The group this command is about.
    pub fn group(&self) -> &str {
        match self {
            Command::Register { group, .. } | Command::Elect { group, .. } => group,
            Command::AlterInSync(a) => &a.group,
        }
    }
}

/// What applying one log entry answers: the `R` of the Raft type config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandReply {
    /// Not a command (blank or membership entry).
    #[default]
    None,
    /// Applied; the group as it is now.
    Applied(GroupState),
    /// Not applied, and why.
    Refused(String),
}
