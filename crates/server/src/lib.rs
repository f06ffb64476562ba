//! Plumbing every SofaMQ server shares (name server, broker, controller), so that
//! no server depends on another for it:
//!
//! * [`tls`]: the `[tls]` settings, rustls/tonic server and client configurations;
//! * [`net`]: accepting connections (`TCP_NODELAY`, a per-IP limit);
//! * [`http`]: the operator HTTP endpoint (`/metrics`, `/health`);
//! * [`metrics`]: the Prometheus text writer, latency histogram and connection counts;
//! * [`session`] and [`status`]: the client Telemetry session and the settings it
//!   answers, which both the name server and the broker serve;
//! * [`Shutdown`]: the stop signal every server's `run(listener(s), config, shutdown)`
//!   takes.

pub mod http;
pub mod metrics;
pub mod net;
pub mod session;
pub mod shutdown;
pub mod status;
pub mod tls;

pub use shutdown::Shutdown;
