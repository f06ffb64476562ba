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
    pub proxy: crate::proxy::ProxyOptions,
    /// The web console at `/console/` on [`Self::http_listen`] (`[console]`).
    pub console: crate::console::ConsoleConfig,
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
            proxy: crate::proxy::ProxyOptions::default(),
            console: crate::console::ConsoleConfig::default(),
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
