//! Controller node configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// Default largest RPC frame (8 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 8 << 20;

/// Settings of one controller node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ControllerConfig {
    /// This node's Raft id (must be a key of `peers`).
    pub node_id: NodeId,
    /// Address to listen on (used by the CLI; tests hand a bound listener to [`crate::serve`]).
    pub listen: String,
    /// Every voter, this node included, by id → advertised `host:port`. One entry = a
    /// single-voter controller.
    pub peers: BTreeMap<NodeId, String>,
    /// Where the Raft log, vote and snapshot live.
    pub data_dir: PathBuf,
    /// A master not heard from for this long is replaced (ms).
    pub master_timeout_ms: u64,
    /// How long a master may act after sending a heartbeat (ms); must be < `master_timeout_ms`.
    pub lease_ms: u64,
    /// A master not heard from for this long is replaced when an in-sync replica reports
    /// its replication port refusing connections (ms); must be > `lease_ms` and at most
    /// `master_timeout_ms`. `None`: `lease_ms` plus a fifth of the gap to
    /// `master_timeout_ms` (2200 with the defaults).
    pub refused_timeout_ms: Option<u64>,
    /// How often the leader runs the election check (ms).
    pub check_interval_ms: u64,
    /// Raft leader heartbeat interval (ms).
    pub raft_heartbeat_ms: u64,
    /// Raft election timeout, lower bound (ms).
    pub election_timeout_min_ms: u64,
    /// Raft election timeout, upper bound (ms).
    pub election_timeout_max_ms: u64,
    /// Timeout of one RPC (connect, each frame read and write), ms.
    pub rpc_timeout_ms: u64,
    /// Largest accepted frame, bytes.
    pub max_frame_bytes: usize,
    /// Highest RPC protocol version this node offers (unset: the build's default). Hold it
    /// at the old version while a rolling upgrade is under way if the new build's default
    /// is higher.
    pub protocol_max: Option<u8>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            listen: "127.0.0.1:0".into(),
            peers: BTreeMap::new(),
            data_dir: PathBuf::from("controller-data"),
            master_timeout_ms: 3000,
            lease_ms: 2000,
            refused_timeout_ms: None,
            check_interval_ms: 200,
            raft_heartbeat_ms: 150,
            election_timeout_min_ms: 600,
            election_timeout_max_ms: 1200,
            rpc_timeout_ms: 1000,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            protocol_max: None,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `node_id` is not a key of `peers`.
    #[error("node id {0} is not in the peers map")]
    SelfNotInPeers(NodeId),
    /// `lease_ms` must be below `master_timeout_ms`.
    #[error("lease_ms ({lease}) must be < master_timeout_ms ({timeout})")]
    LeaseTooLong {
        /// The lease.
        lease: u64,
        /// The master timeout.
        timeout: u64,
    },
    /// `refused_timeout_ms` must lie in (`lease_ms`, `master_timeout_ms`].
    #[error("refused_timeout_ms ({refused}) must be > lease_ms ({lease}) and <= master_timeout_ms")]
    RefusedTimeout {
        /// The refused timeout.
        refused: u64,
        /// The lease.
        lease: u64,
    },
    /// A timing value is zero or the election bounds are inverted.
    #[error("bad timing: {0}")]
    Timing(String),
    /// `protocol_max` is outside the versions this build speaks.
    #[error("protocol_max = {0}: this build speaks versions {min} to {max}", min = crate::rpc::MIN_VERSION, max = crate::rpc::MAX_VERSION)]
    ProtocolVersion(u8),
    /// The peers string could not be parsed.
    #[error("bad peers {0:?}: expected ID=HOST:PORT[,ID=HOST:PORT...]")]
    Peers(String),
}

impl ControllerConfig {
    /// A configuration with default timings.
    pub fn new(node_id: NodeId, peers: BTreeMap<NodeId, String>, data_dir: PathBuf) -> Self {
        let listen = peers
            .get(&node_id)
            .cloned()
            .unwrap_or_else(|| "127.0.0.1:0".into());
        Self {
            node_id,
            listen,
            peers,
            data_dir,
            ..Self::default()
        }
    }

    /// The RPC protocol versions this node offers (lowest, highest).
    pub fn protocol_versions(&self) -> Result<(u8, u8), ConfigError> {
        use crate::rpc::{DEFAULT_MAX_VERSION, MAX_VERSION, MIN_VERSION};
        match self.protocol_max {
            None => Ok((MIN_VERSION, DEFAULT_MAX_VERSION)),
            Some(v) if (MIN_VERSION..=MAX_VERSION).contains(&v) => Ok((MIN_VERSION, v)),
            Some(v) => Err(ConfigError::ProtocolVersion(v)),
        }
    }

    /// The frame limits and versions of this node's connections.
    pub fn frame_limits(&self) -> crate::rpc::FrameLimits {
        let mut l = crate::rpc::FrameLimits::new(self.max_frame_bytes, self.rpc_timeout());
        if let Ok(v) = self.protocol_versions() {
            l.versions = v;
        }
        l
    }

    /// Checks the settings fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.protocol_versions()?;
        if !self.peers.contains_key(&self.node_id) {
            return Err(ConfigError::SelfNotInPeers(self.node_id));
        }
        if self.lease_ms >= self.master_timeout_ms {
            return Err(ConfigError::LeaseTooLong {
                lease: self.lease_ms,
                timeout: self.master_timeout_ms,
            });
        }
        let refused = self.refused_timeout().as_millis() as u64;
        if refused <= self.lease_ms || refused > self.master_timeout_ms {
            return Err(ConfigError::RefusedTimeout {
                refused,
                lease: self.lease_ms,
            });
        }
        if self.check_interval_ms == 0
            || self.raft_heartbeat_ms == 0
            || self.rpc_timeout_ms == 0
            || self.max_frame_bytes < 1024
        {
            return Err(ConfigError::Timing(
                "zero interval, timeout or frame size".into(),
            ));
        }
        if self.election_timeout_min_ms <= self.raft_heartbeat_ms
            || self.election_timeout_max_ms <= self.election_timeout_min_ms
        {
            return Err(ConfigError::Timing(
                "need raft_heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms".into(),
            ));
        }
        Ok(())
    }

    /// The master timeout as a duration.
    pub fn master_timeout(&self) -> Duration {
        Duration::from_millis(self.master_timeout_ms)
    }

    /// The refused timeout as a duration.
    pub fn refused_timeout(&self) -> Duration {
        let derived = self.lease_ms + self.master_timeout_ms.saturating_sub(self.lease_ms) / 5;
        Duration::from_millis(self.refused_timeout_ms.unwrap_or(derived))
    }

    /// The RPC timeout as a duration.
    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.rpc_timeout_ms)
    }
}

/// Parses `1=127.0.0.1:9876,2=host:9877` into a peers map.
pub fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| ConfigError::Peers(s.into()))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| ConfigError::Peers(s.into()))?;
        let addr = addr.trim();
        if addr.is_empty() || out.insert(id, addr.to_string()).is_some() {
            return Err(ConfigError::Peers(s.into()));
        }
    }
    if out.is_empty() {
        return Err(ConfigError::Peers(s.into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_timeout_lies_between_the_lease_and_the_master_timeout() {
        let mut c = ControllerConfig::new(1, parse_peers("1=h:1").unwrap(), "d".into());
        assert_eq!(c.refused_timeout(), Duration::from_millis(2200));
        assert!(c.validate().is_ok());
        c.master_timeout_ms = 1500;
        c.lease_ms = 1000;
        assert_eq!(c.refused_timeout(), Duration::from_millis(1100));
        assert!(c.validate().is_ok());
        c.refused_timeout_ms = Some(1000);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::RefusedTimeout { .. })
        ));
        c.refused_timeout_ms = Some(1600);
        assert!(c.validate().is_err());
        c.refused_timeout_ms = Some(1500);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn peers_parse() {
        let p = parse_peers("1=127.0.0.1:1, 2=h:2").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[&2], "h:2");
        assert!(parse_peers("1=a,1=b").is_err());
        assert!(parse_peers("x=a").is_err());
        assert!(parse_peers("").is_err());
    }

    #[test]
    fn validate_lease() {
        let mut c = ControllerConfig::new(1, parse_peers("1=a:1").unwrap(), "d".into());
        assert!(c.validate().is_ok());
        c.lease_ms = c.master_timeout_ms;
        assert!(c.validate().is_err());
    }
}
