//! Replication settings: the `[replication]` table of the broker config.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The role a broker starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes writes, streams its log to slaves.
    Master,
    /// Copies its master's log; refuses writes.
    Slave,
}

impl Role {
    /// `master` or `slave`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Slave => "slave",
        }
    }
}

/// Master/slave replication settings. Every size, count and wait is bounded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Start role; unset means master for `broker_id = 0`, slave otherwise.
    pub role: Option<Role>,
    /// Replication port (a plain TCP stream, not gRPC). Unset: this broker can have no
    /// slaves, so a master acks after its own fsync (`min_insync_replicas` is then 1).
    pub listen: Option<SocketAddr>,
    /// Replication address published to the namesrv; defaults to the bound address.
    pub advertise: Option<String>,
    /// The master's replication address (slaves).
    pub master_addr: Option<String>,
    /// Copies (master included) that must hold a message before it is acked.
    pub min_insync_replicas: usize,
    /// Longest a send waits for the in-sync slaves' acks (SLAVE_PERSISTENCE_TIMEOUT after).
    pub ack_timeout_ms: u64,
    /// A slave further behind than this many bytes leaves the in-sync set.
    pub max_lag_bytes: u64,
    /// A slave that does not reach an offset the master had this long ago leaves the set.
    pub max_lag_ms: u64,
    /// Largest frame payload accepted or sent (Data frames carry at most this much log).
    pub max_frame_bytes: usize,
    /// Connect / handshake / truncation timeout.
    pub handshake_timeout_ms: u64,
    /// The master sends a heartbeat when idle this long; a slave that hears nothing for
    /// four of these drops the connection.
    pub heartbeat_ms: u64,
    /// Slave reconnect delay (doubles up to 16x after repeated failures).
    pub reconnect_backoff_ms: u64,
    /// Most slaves connected at once.
    pub max_slaves: usize,
    /// Frames a slave buffers between the socket and the log.
    pub slave_queue_frames: usize,
    /// Message ids remembered for idempotent sends.
    pub dedup_window: usize,
    /// How long a message id is remembered.
    pub dedup_window_ms: u64,
    /// PEM certificate chain served on the replication port (with `tls_key`): TLS on.
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// PEM CA certificate a slave trusts for its master: when set, slaves connect with TLS.
    pub tls_ca: Option<std::path::PathBuf>,
    /// Name the master's certificate must carry (slaves); defaults to `master_addr`'s host.
    pub tls_server_name: Option<String>,
    /// Shared secret of the broker group: when set, a slave must answer an HMAC-SHA256
    /// challenge before anything else (and checks the master's answer to its own).
    pub secret: Option<String>,
    /// Log bytes (plus up to one segment) scanned at start / promotion to rebuild the window.
    pub dedup_scan_bytes: u64,
    /// Controller addresses. When set, the controller decides who is master (automatic
    /// failover) and `role` only says which broker to prefer when the group first forms.
    pub controller: Vec<String>,
    /// Heartbeat period to the controller.
    pub controller_heartbeat_ms: u64,
    /// Longest one controller request may take.
    pub controller_timeout_ms: u64,
    /// Highest replication protocol version offered (unset: the build's default). Hold it
    /// at the old version while a rolling upgrade is under way if the new build's default
    /// is higher; sessions speak the highest version both brokers offer.
    pub protocol_max: Option<u8>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            role: None,
            listen: None,
            advertise: None,
            master_addr: None,
            min_insync_replicas: 2,
            ack_timeout_ms: 3_000,
            max_lag_bytes: 256 * 1024 * 1024,
            max_lag_ms: 5_000,
            max_frame_bytes: 4 * 1024 * 1024,
            handshake_timeout_ms: 10_000,
            heartbeat_ms: 100,
            reconnect_backoff_ms: 200,
            max_slaves: 4,
            slave_queue_frames: 64,
            dedup_window: 100_000,
            dedup_window_ms: 10 * 60 * 1000,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            tls_server_name: None,
            secret: None,
            dedup_scan_bytes: 64 * 1024 * 1024,
            controller: Vec::new(),
            controller_heartbeat_ms: 300,
            controller_timeout_ms: 1_000,
            protocol_max: None,
        }
    }
}

impl ReplicationConfig {
    /// The start role given the broker id.
    pub fn start_role(&self, broker_id: u64) -> Role {
        self.role.unwrap_or(if broker_id == 0 {
            Role::Master
        } else {
            Role::Slave
        })
    }

    /// `min_insync_replicas`, or 1 when this broker has no replication port.
    pub fn effective_min_insync(&self) -> usize {
        if self.listen.is_none() {
            1
        } else {
            self.min_insync_replicas.max(1)
        }
    }

    pub(crate) fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms.max(1))
    }
    pub(crate) fn max_lag(&self) -> Duration {
        Duration::from_millis(self.max_lag_ms.max(1))
    }
    pub(crate) fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms.max(1))
    }
    pub(crate) fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.max(1))
    }
    /// Whether a controller decides roles.
    pub fn controlled(&self) -> bool {
        !self.controller.is_empty()
    }
    pub(crate) fn controller_heartbeat(&self) -> Duration {
        Duration::from_millis(self.controller_heartbeat_ms.max(10))
    }
    pub(crate) fn controller_timeout(&self) -> Duration {
        Duration::from_millis(self.controller_timeout_ms.max(10))
    }
    /// The replication protocol versions this broker offers, or why the setting is wrong.
    pub fn protocol_versions(&self) -> Result<(u8, u8), String> {
        use super::frame::{DEFAULT_MAX_VERSION, MAX_VERSION, MIN_VERSION};
        match self.protocol_max {
            None => Ok((MIN_VERSION, DEFAULT_MAX_VERSION)),
            Some(v) if (MIN_VERSION..=MAX_VERSION).contains(&v) => Ok((MIN_VERSION, v)),
            Some(v) => Err(format!(
                "replication.protocol_max = {v}: this build speaks versions {MIN_VERSION} to {MAX_VERSION}"
            )),
        }
    }
    pub(crate) fn frame_limit(&self) -> usize {
        self.max_frame_bytes.clamp(64 * 1024, 64 * 1024 * 1024)
    }
}
