//! Errors of the name server.

use std::net::SocketAddr;

/// Failure to start or run the name server.
#[derive(Debug, thiserror::Error)]
pub enum NamesrvError {
    /// A configuration value is unusable.
    #[error("invalid name server config `{key}`: {reason}")]
    Config {
        /// The offending key.
        key: &'static str,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Reading the listener's local address failed.
    #[error("cannot read listener address: {0}")]
    LocalAddr(#[source] std::io::Error),
    /// Binding the HTTP (metrics/health) listener failed.
    #[error("cannot bind HTTP listener {addr}: {source}")]
    HttpBind {
        /// Address asked for.
        addr: SocketAddr,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Proxy mode cannot start (e.g. its broker TLS CA is unreadable).
    #[error("proxy: {0}")]
    Proxy(String),
    /// The TLS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] sofamq_server::tls::TlsError),
    /// The gRPC server failed.
    #[error("gRPC server on {addr} failed: {source}")]
    Transport {
        /// Address being served.
        addr: SocketAddr,
        /// Underlying transport error.
        #[source]
        source: tonic::transport::Error,
    },
}
