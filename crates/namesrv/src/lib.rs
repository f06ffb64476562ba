//! SofaMQ name server.
//!
//! Brokers register (and heartbeat by re-registering) through the internal
//! `sofamq.namesrv.v1.NameServerAdmin` service; members silent past their
//! expiry drop out of routes. Clients use the name server as their access
//! point through the RocketMQ 5 `MessagingService`: `QueryRoute`,
//! `Heartbeat`, `Telemetry` and `NotifyClientTermination` are served, every
//! message-plane RPC answers that this endpoint is a name server.
//!
//! Several name servers run side by side without sharing state; brokers
//! register with all of them.
//!
//! [`session`] and [`endpoints`] are public so the broker and the client can
//! reuse the Telemetry settings logic and the address conversions.

pub mod admin;
pub mod config;
pub mod console;
pub mod endpoints;
pub mod error;
pub mod http;
pub mod messaging;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod registry;
pub mod route;
pub mod server;
pub mod session;
pub mod status;
pub mod tls;

pub use config::NamesrvConfig;
pub use error::NamesrvError;
pub use server::{run, run_with_http};
