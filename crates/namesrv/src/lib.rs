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
//! The plumbing it shares with the other servers (TLS, accept limits, the HTTP
//! endpoint, metrics writers, client sessions) is in `sofamq-server`.

pub mod admin;
pub mod config;
pub mod console;
pub mod endpoints;
pub mod error;
pub mod messaging;
pub mod proxy;
pub mod registry;
pub mod route;
pub mod server;

pub use config::NamesrvConfig;
pub use error::NamesrvError;
pub use server::{Listeners, run};
