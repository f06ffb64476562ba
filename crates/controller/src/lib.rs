//! The controller: per broker group, who is master, with which epoch, and which replicas
//! are in sync. The state changes only through Raft (openraft 0.9); brokers heartbeat the
//! leader and act on the view it returns.
//!
//! * [`run`] starts a node and answers its RPCs on a listener until its
//!   [`sofamq_server::Shutdown`] trips; [`Controller::start`] and [`serve`] are its two steps.
//! * [`ControllerClient`] is what brokers and admin tools use.
//! * [`logic`] holds the election rules as pure functions.

pub mod client;
pub mod command;
pub mod config;
pub mod logic;
pub mod mutant;
pub mod network;
pub mod node;
pub mod raft;
pub mod rpc;
pub mod server;
pub mod sm;
pub mod store;
pub mod types;

pub use client::ControllerClient;
pub use command::{Command, CommandReply};
pub use config::{ConfigError, ControllerConfig, parse_peers};
pub use network::{Acceptor, AsyncStream, Connector, TcpConnector};
pub use node::{Controller, StartError};
pub use server::{RunError, run, serve, serve_with};
pub use types::*;
