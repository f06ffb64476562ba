//! Name server configuration.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use crate::error::NamesrvError;
use sofamq_server::session::SessionOptions;

/// Configuration of one name server process.
///
/// Every size, count and wait is bounded here; defaults make a local
/// single-process setup work with no configuration at all.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamesrvConfig {
    /// Address the gRPC server listens on (used by the CLI; [`crate::run`]
    /// takes an already bound listener).
    pub listen: SocketAddr,
    /// A broker silent for longer than this is dropped from routes.
    pub broker_expiry_ms: u64,
    /// Upper bound on the per-registration `heartbeat_timeout_ms` hint a
    /// broker may ask for.
    pub max_broker_expiry_ms: u64,
    /// How often the expiry scan runs.
    pub scan_interval_ms: u64,
    /// Maximum number of registered broker members (all clusters).
    pub max_brokers: usize,
    /// Maximum number of topics in one `RegisterBroker` request.
    pub max_topics_per_registration: usize,
    /// Maximum `queue_count` of one topic.
    pub max_queues_per_topic: u32,
    /// Maximum length in bytes of names (cluster, broker, topic) and endpoints.
    pub max_name_len: usize,
    /// Maximum size of one decoded gRPC message.
    pub max_grpc_decode_bytes: usize,
    /// Maximum number of concurrently open Telemetry streams.
    pub max_telemetry_streams: usize,
    /// Maximum concurrent HTTP/2 streams per client connection.
    pub max_concurrent_streams_per_connection: u32,
    /// Maximum simultaneous connections from one client IP address.
    pub max_connections_per_ip: usize,
    /// After the shutdown signal, how long to wait for connections to close
    /// before giving up on a graceful exit.
    pub shutdown_grace_ms: u64,
    /// Settings pushed to clients on their Telemetry stream.
    pub session: SessionOptions,
    /// Address of the HTTP endpoint (`/metrics`, `/health`); none: not served.
    pub http_listen: Option<SocketAddr>,
    /// TLS on the client gRPC port (`[tls] cert_path, key_path`); off when unset.
    pub tls: sofamq_server::tls::TlsConfig,
    /// Proxy mode (`[proxy]`): routes name this server, client RPCs are forwarded to the
    /// current masters. On by default.
    pub proxy: ProxyOptions,
    /// The web console at `/console/` on [`Self::http_listen`] (`[console]`).
    pub console: ConsoleConfig,
}

impl Default for NamesrvConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9876)),
            broker_expiry_ms: 10_000,
            max_broker_expiry_ms: 120_000,
            scan_interval_ms: 1_000,
            max_brokers: 4_096,
            max_topics_per_registration: 65_536,
            max_queues_per_topic: 1_024,
            max_name_len: 255,
            max_grpc_decode_bytes: 64 * 1024 * 1024,
            max_telemetry_streams: 10_000,
            max_concurrent_streams_per_connection: 1_024,
            max_connections_per_ip: 256,
            shutdown_grace_ms: 5_000,
            session: SessionOptions::default(),
            http_listen: None,
            tls: sofamq_server::tls::TlsConfig::default(),
            proxy: ProxyOptions::default(),
            console: ConsoleConfig::default(),
        }
    }
}

impl NamesrvConfig {
    /// Checks that the values are usable (non-zero waits and limits).
    pub fn validate(&self) -> Result<(), NamesrvError> {
        let checks: [(&'static str, bool); 12] = [
            ("broker_expiry_ms", self.broker_expiry_ms > 0),
            (
                "max_broker_expiry_ms",
                self.max_broker_expiry_ms >= self.broker_expiry_ms,
            ),
            ("scan_interval_ms", self.scan_interval_ms > 0),
            ("max_brokers", self.max_brokers > 0),
            (
                "max_topics_per_registration",
                self.max_topics_per_registration > 0,
            ),
            ("max_queues_per_topic", self.max_queues_per_topic > 0),
            ("max_name_len", self.max_name_len > 0),
            ("max_grpc_decode_bytes", self.max_grpc_decode_bytes >= 1024),
            ("max_telemetry_streams", self.max_telemetry_streams > 0),
            (
                "max_concurrent_streams_per_connection",
                self.max_concurrent_streams_per_connection > 0,
            ),
            ("max_connections_per_ip", self.max_connections_per_ip > 0),
            ("shutdown_grace_ms", self.shutdown_grace_ms > 0),
        ];
        if let Some((key, _)) = checks.iter().find(|(_, ok)| !ok) {
            return Err(NamesrvError::Config {
                key,
                reason: "value out of range",
            });
        }
        self.proxy
            .validate()
            .map_err(|(key, reason)| NamesrvError::Config { key, reason })?;
        self.session
            .validate()
            .map_err(|reason| NamesrvError::Config {
                key: "session",
                reason,
            })
    }

    /// [`Self::broker_expiry_ms`] as a [`Duration`].
    pub fn broker_expiry(&self) -> Duration {
        Duration::from_millis(self.broker_expiry_ms)
    }

    /// [`Self::scan_interval_ms`] as a [`Duration`].
    pub fn scan_interval(&self) -> Duration {
        Duration::from_millis(self.scan_interval_ms)
    }

    /// [`Self::shutdown_grace_ms`] as a [`Duration`].
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// Proxy settings (`[proxy]` in the name server's TOML).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyOptions {
    /// Serve client RPCs and answer routes with this endpoint.
    pub enabled: bool,
    /// Longest a request is held while its broker group has no reachable master.
    pub hold_ms: u64,
    /// Pause between two tries while holding.
    pub retry_ms: u64,
    /// Kept free of the client's deadline when holding, so the client hears our answer.
    pub deadline_margin_ms: u64,
    /// Deadline of a forwarded call when the client sent none.
    pub forward_timeout_ms: u64,
    /// Connect timeout towards a broker.
    pub connect_timeout_ms: u64,
    /// How often a relayed Telemetry stream checks that it follows every current master.
    pub telemetry_check_ms: u64,
    /// A topic seen in a route within this long is held for, not refused, while no live
    /// member reports it (a failover can leave it out of the registry for a moment).
    pub recent_topic_ms: u64,
    /// Connect to brokers with TLS (their client port serves TLS).
    pub broker_tls: bool,
    /// CA (PEM) to trust for the brokers' certificates; unset: the system's roots.
    pub broker_tls_ca_path: Option<std::path::PathBuf>,
    /// Name the brokers' certificates carry, when not the host dialled.
    pub broker_tls_server_name: Option<String>,
    /// Message ids whose broker group is remembered, so a client's retry of a send goes
    /// to the group of its first attempt (0: none, retries go round-robin).
    pub send_pins: usize,
    /// How long a send's group is remembered for its retries.
    pub send_pin_ms: u64,
    /// A broker group that had a master within this long keeps its share of sends while
    /// it fails over (they are held for its new master), so that every name server sends
    /// a message id to the same group; past it, its sends go to the other groups.
    pub failover_wait_ms: u64,
    /// For this long after the name server starts, sends wait before a group is chosen
    /// (never past the hold deadline): until every broker's heartbeat (every second by
    /// default) has reached it, its registry may lack a group, and a retry could be sent
    /// to another group than its first attempt's.
    pub start_wait_ms: u64,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            hold_ms: 5_000,
            retry_ms: 50,
            deadline_margin_ms: 300,
            forward_timeout_ms: 60_000,
            connect_timeout_ms: 1_000,
            telemetry_check_ms: 200,
            recent_topic_ms: 60_000,
            send_pins: 200_000,
            send_pin_ms: 120_000,
            failover_wait_ms: 10_000,
            start_wait_ms: 3_000,
            broker_tls: false,
            broker_tls_ca_path: None,
            broker_tls_server_name: None,
        }
    }
}

impl ProxyOptions {
    /// Checks that the waits are usable: (key, reason) of the first bad one.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        for (name, v) in [
            ("proxy.retry_ms", self.retry_ms),
            ("proxy.forward_timeout_ms", self.forward_timeout_ms),
            ("proxy.connect_timeout_ms", self.connect_timeout_ms),
            ("proxy.telemetry_check_ms", self.telemetry_check_ms),
        ] {
            if v == 0 {
                return Err((name, "must be > 0"));
            }
        }
        if self.start_wait_ms > 600_000 {
            return Err(("proxy.start_wait_ms", "must be <= 600000"));
        }
        if self.failover_wait_ms > 600_000 {
            return Err(("proxy.failover_wait_ms", "must be <= 600000"));
        }
        if self.hold_ms > 600_000 {
            return Err(("proxy.hold_ms", "must be <= 600000"));
        }
        Ok(())
    }
}

/// `[console]` in the name server's config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve `/console/` on `http_listen` (on by default).
    pub enabled: bool,
    /// Controller addresses: the cluster page shows their view beside each broker's.
    pub controllers: Vec<String>,
    /// Deadline of each broker call the console makes.
    pub rpc_timeout_ms: u64,
    /// Most logged-in sessions kept (the oldest is dropped past it).
    pub max_sessions: usize,
    /// A session ends this long after login.
    pub session_ttl_secs: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            controllers: Vec::new(),
            rpc_timeout_ms: 5_000,
            max_sessions: 1_024,
            session_ttl_secs: 8 * 3600,
        }
    }
}
