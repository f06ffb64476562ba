//! Topic definitions. The commit log is their only store: every create, update
//! and delete is a record on the reserved topic [`TOPIC_LOG`], replayed on
//! start, so topic state replicates and survives failover like messages do.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sofamq_proto::v2::MessageType;
use sofamq_store::Store;

use crate::error::BrokerError;
use crate::meta;

/// Reserved topic holding topic-definition records.
pub const TOPIC_LOG: &str = "%SYS%TOPICS";
/// Prefix of every topic the broker keeps for itself.
pub const SYSTEM_PREFIX: &str = "%SYS%";
// Kept here for the modules that still name them through `topics`; their
// homes are `meta` (the flag of metadata records) and `clock`.
pub use crate::clock::now_ms;
pub use crate::meta::FLAG_META;

/// What kind of messages a topic takes; mirrors `apache.rocketmq.v2.MessageType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TopicType {
    /// Plain messages.
    Normal,
    /// Ordered per message group.
    Fifo,
    /// Delivered at a timestamp.
    Delay,
    /// Two-phase transactional messages.
    Transaction,
}

impl TopicType {
    /// Parses `NORMAL`, `FIFO`, `DELAY`, `TRANSACTION` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "NORMAL" => Some(Self::Normal),
            "FIFO" => Some(Self::Fifo),
            "DELAY" => Some(Self::Delay),
            "TRANSACTION" => Some(Self::Transaction),
            _ => None,
        }
    }

    /// Upper-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "NORMAL",
            Self::Fifo => "FIFO",
            Self::Delay => "DELAY",
            Self::Transaction => "TRANSACTION",
        }
    }
}

impl From<TopicType> for MessageType {
    /// The wire message type a topic of type `t` takes (the one mapping of the two enums;
    /// the reverse, with its policy for UNSPECIFIED, is the admin service's).
    fn from(t: TopicType) -> Self {
        match t {
            TopicType::Normal => MessageType::Normal,
            TopicType::Fifo => MessageType::Fifo,
            TopicType::Delay => MessageType::Delay,
            TopicType::Transaction => MessageType::Transaction,
        }
    }
}

/// Read permission bit.
pub const PERM_READ: u32 = 0b100;
/// Write permission bit.
pub const PERM_WRITE: u32 = 0b010;

/// One topic as this broker group serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Topic name.
    pub name: String,
    /// Number of queues, ids `0..queue_count`.
    pub queue_count: u32,
    /// Message type the topic takes.
    pub topic_type: TopicType,
    /// `PERM_READ | PERM_WRITE` bits.
    pub perm: u32,
}

impl TopicConfig {
    /// Whether producers may send to it.
    pub fn writable(&self) -> bool {
        self.perm & PERM_WRITE != 0
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum TopicOp {
    Put(TopicConfig),
    Delete { name: String },
}

/// The live topic table, rebuilt from the log.
#[derive(Clone)]
pub struct Topics {
    store: Store,
    table: Arc<RwLock<BTreeMap<String, TopicConfig>>>,
}

impl Topics {
    /// Replays every topic record in `store`.
    pub fn load(store: Store) -> Result<Self, BrokerError> {
        let table = Self::replay(&store)?;
        Ok(Self {
            store,
            table: Arc::new(RwLock::new(table)),
        })
    }

    /// Replays the table again from the log (a promoted slave got its topics through
    /// replication, not through `put`).
    pub fn reload(&self) -> Result<(), BrokerError> {
        let table = Self::replay(&self.store)?;
        *self.table.write() = table;
        Ok(())
    }

    fn replay(store: &Store) -> Result<BTreeMap<String, TopicConfig>, BrokerError> {
        let mut table = BTreeMap::new();
        meta::replay(store, TOPIC_LOG, "topic", |op| match op {
            TopicOp::Put(cfg) => {
                table.insert(cfg.name.clone(), cfg);
            }
            TopicOp::Delete { name } => {
                table.remove(&name);
            }
        })?;
        Ok(table)
    }

    /// A topic by name.
    pub fn get(&self, name: &str) -> Option<TopicConfig> {
        self.table.read().get(name).cloned()
    }

    /// Every topic, by name.
    pub fn list(&self) -> Vec<TopicConfig> {
        self.table.read().values().cloned().collect()
    }

    /// Creates or updates a topic; durable (through the log) before it returns.
    pub async fn put(&self, cfg: TopicConfig) -> Result<(), BrokerError> {
        self.write(&TopicOp::Put(cfg.clone())).await?;
        self.table.write().insert(cfg.name.clone(), cfg);
        Ok(())
    }

    /// Deletes a topic; returns false when it did not exist.
    pub async fn delete(&self, name: &str) -> Result<bool, BrokerError> {
        if self.get(name).is_none() {
            return Ok(false);
        }
        self.write(&TopicOp::Delete {
            name: name.to_string(),
        })
        .await?;
        self.table.write().remove(name);
        Ok(true)
    }

    async fn write(&self, op: &TopicOp) -> Result<(), BrokerError> {
        meta::append(&self.store, TOPIC_LOG, op).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_topic_type_takes_the_message_type_of_its_name() {
        for (t, m) in [
            (TopicType::Normal, MessageType::Normal),
            (TopicType::Fifo, MessageType::Fifo),
            (TopicType::Delay, MessageType::Delay),
            (TopicType::Transaction, MessageType::Transaction),
        ] {
            assert_eq!(MessageType::from(t), m);
            assert_eq!(MessageType::from(t).as_str_name(), t.as_str());
        }
    }
}
