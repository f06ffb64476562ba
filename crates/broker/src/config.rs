//! Broker configuration: one TOML file, every key with a default so that an
//! empty file (or `sofamq standalone`) works.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::limits::Limits;

/// How the commit log reaches the disk before a send is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// fdatasync (group commit) before every acknowledgement. The default.
    #[default]
    Sync,
    /// Acknowledge after the write; fdatasync on `async_flush_interval_ms`.
    Async,
}

/// Everything a broker process needs to know.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Cluster the broker group belongs to.
    pub cluster: String,
    /// Broker group name (`broker-a`).
    pub broker_name: String,
    /// 0 for the master; slaves use 1 and up.
    pub broker_id: u64,
    /// Address the client gRPC service binds to.
    pub listen: SocketAddr,
    /// Address published in routes; defaults to the bound address.
    pub advertise: Option<String>,
    /// NameServers to register with (all of them).
    pub namesrv: Vec<String>,
    /// Where the commit log, consume queues and checkpoints live.
    pub data_dir: PathBuf,
    /// Sync (default) or async flush.
    pub flush: FlushMode,
    /// fsync interval in async flush mode.
    pub async_flush_interval_ms: u64,
    /// Commit log segment size in bytes.
    pub segment_bytes: u64,
    /// Disk budget of the commit log in bytes (none: the disk is the limit). Sends that would
    /// pass it fail with INTERNAL_SERVER_ERROR "disk full"; the broker stays up, reads work.
    pub max_disk_bytes: Option<u64>,
    /// Bytes per second the background scrub reads to verify every durable record's CRC
    /// (damage found fences the log; a replica then fetches the range again from its
    /// master). 0 turns the scrub off.
    pub scrub_bytes_per_sec: u64,
    /// Seconds between the end of one scrub pass over the whole log and the next.
    pub scrub_pause_secs: u64,
    /// Drop-behind: commit-log pages this many bytes behind the durable end are dropped from
    /// the OS page cache after each commit (`posix_fadvise(DONTNEED)`). Keeps a steady write
    /// stream on a small set of cached pages; readers more than this far behind (a
    /// consumer catching up, a slave fetching history) read from the disk. None: off.
    pub drop_behind_bytes: Option<u64>,
    /// Zero-fill ahead, in sync flush mode: up to this many bytes of synced zeros are kept
    /// past the write position of the active commit-log segment, so each fdatasync
    /// overwrites existing bytes instead of growing the file (no journal commit of a new
    /// size). Cut at a clean close and by recovery after a crash. 0 turns it off.
    pub prefill_bytes: u64,
    /// The zero-fill pauses while the commit log is written faster than this many bytes per
    /// second: the zeros double the bytes the disk writes.
    pub prefill_max_rate_bytes: u64,
    /// How often the broker re-registers with every namesrv.
    pub heartbeat_interval_ms: u64,
    /// Queue count of topics created without an explicit count.
    pub default_queue_count: u32,
    /// Validation and resource limits.
    pub limits: Limits,
    /// Consumer groups: attempts, batch, invisibility and long-polling bounds.
    pub consume: crate::consume::ConsumeConfig,
    /// Timer (DELAY) messages.
    pub timer: crate::timer::TimerConfig,
    /// Transactional messages.
    pub transaction: crate::txn::TxnConfig,
    /// Master/slave replication, in-sync rule and the idempotency window.
    pub replication: crate::repl::config::ReplicationConfig,
    /// Address of the HTTP endpoint (`/metrics`, `/health`); none: not served.
    pub http_listen: Option<SocketAddr>,
    /// Access control (off by default).
    pub acl: crate::acl::AclConfig,
    /// TLS on the client gRPC port (`[tls] cert_path, key_path`); off when unset.
    pub tls: sofamq_server::tls::TlsConfig,
    /// TLS towards the NameServers (`[namesrv_tls] ca_path, server_name`), for
    /// NameServers that serve TLS; unset: plain connections.
    pub namesrv_tls: Option<sofamq_server::tls::ClientTls>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            cluster: "DefaultCluster".into(),
            broker_name: "broker-a".into(),
            broker_id: 0,
            listen: SocketAddr::from(([127, 0, 0, 1], 10911)),
            advertise: None,
            namesrv: vec!["127.0.0.1:9876".into()],
            data_dir: PathBuf::from("data/broker-a"),
            flush: FlushMode::Sync,
            async_flush_interval_ms: 100,
            segment_bytes: 256 * 1024 * 1024,
            max_disk_bytes: None,
            scrub_bytes_per_sec: 8 * 1024 * 1024,
            scrub_pause_secs: 600,
            drop_behind_bytes: None,
            prefill_bytes: 16 * 1024 * 1024,
            prefill_max_rate_bytes: 200 * 1024 * 1024,
            heartbeat_interval_ms: 1_000,
            default_queue_count: 8,
            limits: Limits::default(),
            consume: crate::consume::ConsumeConfig::default(),
            timer: crate::timer::TimerConfig::default(),
            transaction: crate::txn::TxnConfig::default(),
            replication: crate::repl::config::ReplicationConfig::default(),
            http_listen: None,
            acl: crate::acl::AclConfig::default(),
            tls: sofamq_server::tls::TlsConfig::default(),
            namesrv_tls: None,
        }
    }
}

impl BrokerConfig {
    /// Parses a TOML document; unknown keys are an error so typos don't pass silently.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Loads and checks every TLS file and the replication secret (`[tls]`,
    /// `[namesrv_tls]`, `[replication] tls_*` / `secret`); the error names the file.
    pub fn check_tls(&self) -> Result<(), crate::error::BrokerError> {
        use crate::error::BrokerError;
        self.tls
            .validate()
            .map_err(|e| BrokerError::Internal(format!("client port {e}")))?;
        crate::repl::secure::Security::from_config(&self.replication)
            .map_err(|e| BrokerError::Internal(format!("replication port {e}")))?;
        if let Some(t) = &self.namesrv_tls {
            sofamq_server::tls::endpoint("localhost:9876", Some(t))
                .map_err(|e| BrokerError::Internal(format!("namesrv_tls: {e}")))?;
        }
        Ok(())
    }

    /// The heartbeat period.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.max(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = BrokerConfig::from_toml("").unwrap();
        assert_eq!(c.broker_name, "broker-a");
        assert_eq!(c.limits.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(c.flush, FlushMode::Sync);
    }

    #[test]
    fn zero_fill_is_on_by_default_and_can_be_turned_off() {
        let c = BrokerConfig::from_toml("").unwrap();
        assert_eq!(c.prefill_bytes, 16 << 20);
        assert_eq!(c.prefill_max_rate_bytes, 200 << 20);
        let c = BrokerConfig::from_toml("prefill_bytes = 0\nprefill_max_rate_bytes = 1\n").unwrap();
        assert_eq!((c.prefill_bytes, c.prefill_max_rate_bytes), (0, 1));
    }

    #[test]
    fn keys_override_and_typos_fail() {
        let c = BrokerConfig::from_toml(
            "broker_name = \"b\"\nflush = \"async\"\n[limits]\nmax_body_bytes = 10\n",
        )
        .unwrap();
        assert_eq!(c.broker_name, "b");
        assert_eq!(c.flush, FlushMode::Async);
        assert_eq!(c.limits.max_body_bytes, 10);
        assert!(BrokerConfig::from_toml("brokr_name = \"x\"").is_err());
    }

    #[test]
    fn security_keys_parse_and_default_off() {
        let c = BrokerConfig::from_toml("").unwrap();
        assert!(!c.tls.enabled() && c.namesrv_tls.is_none() && c.replication.secret.is_none());
        assert_eq!(c.acl.max_clock_skew_ms, 15 * 60 * 1000);
        let c = BrokerConfig::from_toml(
            "[tls]\ncert_path = \"c.pem\"\nkey_path = \"k.pem\"\n\
             [namesrv_tls]\nca_path = \"ca.pem\"\n\
             [replication]\ntls_cert = \"r.pem\"\ntls_key = \"r.key\"\ntls_ca = \"ca.pem\"\n\
             tls_server_name = \"m\"\nsecret = \"s\"\n[acl]\nmax_clock_skew_ms = 0\n",
        )
        .unwrap();
        assert!(c.tls.enabled());
        assert_eq!(
            c.namesrv_tls.unwrap().ca_path,
            Some(PathBuf::from("ca.pem"))
        );
        assert_eq!(c.replication.secret.as_deref(), Some("s"));
        assert_eq!(c.acl.max_clock_skew_ms, 0);
        assert!(BrokerConfig::from_toml("[tls]\ncert = \"x\"").is_err());
    }
}
