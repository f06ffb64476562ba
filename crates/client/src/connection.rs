//! One reusable gRPC channel per endpoint (`host:port`), created lazily.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::retry::AttemptError;

/// HTTP/2 windows large enough for a full coalesced request (4 MiB).
const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Cache of channels by endpoint. A `Channel` multiplexes all requests to
/// its endpoint over one HTTP/2 connection and reconnects by itself.
#[derive(Debug)]
pub(crate) struct Channels {
    map: Mutex<HashMap<String, Channel>>,
    connect_timeout: Duration,
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Channels {
    pub(crate) fn new(
        connect_timeout: Duration,
        tls: Option<&crate::auth::TlsOptions>,
    ) -> Result<Self, crate::error::ClientError> {
        Ok(Self {
            map: Mutex::new(HashMap::new()),
            connect_timeout,
            tls: tls.map(crate::auth::TlsOptions::load).transpose()?,
        })
    }

    /// The channel to `addr` (`host:port`), created on first use. Does not
    /// connect: the first request does.
    pub(crate) fn get(&self, addr: &str) -> Result<Channel, AttemptError> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| AttemptError::Transport(format!("bad endpoint {addr}: {e}")))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| AttemptError::Transport(format!("TLS for {addr}: {e}")))?;
        }
        let endpoint = endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let ch = endpoint.connect_lazy();
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }
}
