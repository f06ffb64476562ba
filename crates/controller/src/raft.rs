//! The openraft type configuration and aliases.

use std::io::Cursor;

use crate::command::{Command, CommandReply};

openraft::declare_raft_types!(
    /// The controller's Raft types: commands in, replies out, `u64` node ids, addresses
    /// as `BasicNode`.
    pub TypeConfig:
        D = Command,
        R = CommandReply,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<u64>;
/// A vote.
pub type Vote = openraft::Vote<u64>;
/// A storage error.
pub type StorageError = openraft::StorageError<u64>;
/// The committed membership.
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
