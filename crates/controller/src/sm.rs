//! The state machine: every group's committed state, in memory, plus the snapshot (the
//! JSON of the map), persisted so a purged log never loses state.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandReply};
use crate::raft::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::store::write_atomic;
use crate::types::GroupState;

/// The replicated data, shared with the node for reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SmData {
    /// Last applied log id.
    pub last_applied: Option<LogId>,
    /// Last applied membership.
    pub membership: StoredMembership,
    /// Every group by name.
    pub groups: BTreeMap<String, GroupState>,
}

impl SmData {
    /// Applies one command (deterministic; refusals leave the state unchanged).
    pub fn apply_command(&mut self, cmd: &Command) -> CommandReply {
        match cmd {
            Command::Register {
                group,
                broker_id,
                addrs,
                ..
            } => {
                let g = self
                    .groups
                    .entry(group.clone())
                    .or_insert_with(|| GroupState {
                        group: group.clone(),
                        ..GroupState::default()
                    });
                g.brokers.insert(*broker_id, addrs.clone());
                CommandReply::Applied(g.clone())
            }
            Command::Elect {
                group,
                expect_epoch,
                master,
                epoch,
                insync,
            } => {
                let Some(g) = self.groups.get_mut(group) else {
                    return CommandReply::Refused(format!("unknown group {group}"));
                };
                if g.master_epoch != *expect_epoch {
                    return CommandReply::Refused(format!(
                        "stale election: epoch is {} not {expect_epoch}",
                        g.master_epoch
                    ));
                }
                match master {
                    Some(m) => {
                        if *epoch <= g.master_epoch
                            || !insync.contains(m)
                            || !g.brokers.contains_key(m)
                        {
                            return CommandReply::Refused("invalid election".into());
                        }
                        g.master = Some(*m);
                        g.master_epoch = *epoch;
                        g.insync = insync.clone();
                        g.insync_epoch += 1;
                    }
                    None => {
                        g.master = None;
                        if g.insync != *insync {
                            g.insync = insync.clone();
                            g.insync_epoch += 1;
                        }
                    }
                }
                CommandReply::Applied(g.clone())
            }
            Command::AlterInSync(a) => {
                let Some(g) = self.groups.get_mut(&a.group) else {
                    return CommandReply::Refused(format!("unknown group {}", a.group));
                };
                if g.master != Some(a.master) || g.master_epoch != a.master_epoch {
                    return CommandReply::Refused(format!(
                        "stale master {}@{}: committed {:?}@{}",
                        a.master, a.master_epoch, g.master, g.master_epoch
                    ));
                }
                if !a.insync.contains(&a.master) {
                    return CommandReply::Refused("in-sync set must contain the master".into());
                }
                if let Some(unknown) = a.insync.iter().find(|id| !g.brokers.contains_key(id)) {
                    return CommandReply::Refused(format!("unknown broker {unknown}"));
                }
                if g.insync != a.insync {
                    g.insync = a.insync.clone();
                    g.insync_epoch += 1;
                }
                CommandReply::Applied(g.clone())
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The state machine store given to openraft.
#[derive(Debug, Clone)]
pub struct StateMachine {
    data: Arc<RwLock<SmData>>,
    snapshot: Arc<RwLock<Option<StoredSnapshot>>>,
    snapshot_path: PathBuf,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

impl StateMachine {
    /// Opens the state machine in `dir`, starting from the persisted snapshot if any.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let snapshot_path = dir.join("snapshot.json");
        let mut data = SmData::default();
        let mut snapshot = None;
        match std::fs::read(&snapshot_path) {
            Ok(bytes) => {
                let s: StoredSnapshot = serde_json::from_slice(&bytes)?;
                data = serde_json::from_slice(&s.data)?;
                snapshot = Some(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Self {
            data: Arc::new(RwLock::new(data)),
            snapshot: Arc::new(RwLock::new(snapshot)),
            snapshot_path,
        })
    }

    /// A shared read handle on the replicated data.
    pub fn data(&self) -> Arc<RwLock<SmData>> {
        self.data.clone()
    }

    fn persist(&self, s: &StoredSnapshot) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(s)?;
        write_atomic(&self.snapshot_path, &bytes)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (data, meta) = {
            let d = self.data.read();
            let bytes = serde_json::to_vec(&*d).map_err(snap_err)?;
            let id = match &d.last_applied {
                Some(l) => format!("{}-{}", l.leader_id, l.index),
                None => "empty".into(),
            };
            let meta = SnapshotMeta {
                last_log_id: d.last_applied,
                last_membership: d.membership.clone(),
                snapshot_id: id,
            };
            (bytes, meta)
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        self.persist(&stored).map_err(snap_err)?;
        *self.snapshot.write() = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let d = self.data.read();
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandReply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut d = self.data.write();
        let mut out = Vec::new();
        for e in entries {
            d.last_applied = Some(e.log_id);
            let reply = match e.payload {
                EntryPayload::Blank => CommandReply::None,
                EntryPayload::Normal(cmd) => {
                    let r = d.apply_command(&cmd);
                    tracing::debug!(index = e.log_id.index, ?cmd, ?r, "applied");
                    r
                }
                EntryPayload::Membership(m) => {
                    d.membership = StoredMembership::new(Some(e.log_id), m);
                    CommandReply::None
                }
            };
            out.push(reply);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let mut new: SmData = serde_json::from_slice(&bytes).map_err(read_err)?;
        new.last_applied = meta.last_log_id;
        new.membership = meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        };
        self.persist(&stored).map_err(snap_err)?;
        *self.data.write() = new;
        *self.snapshot.write() = Some(stored);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.snapshot.read().as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}
