//! The SofaMQ broker: the RocketMQ 5 client API over a durable commit log.
//!
//! * [`broker`]: the broker's state (config, log, topics) and its guards.
//! * [`send`]: the send path (validate, choose queue, group-commit append, receipt).
//! * [`validate`]: message rules, each failing with its own wire code.
//! * [`error`]: the one table from internal failures to wire status codes.
//! * [`topics`]: topic definitions, stored as records in the log.
//! * [`consume`]: consumer groups (receive, ack, redelivery, DLQ, offsets), state in the log.
//! * [`service`] / [`admin`]: gRPC adapters; [`register`]: NameServer heartbeats.
//! * [`repl`]: synchronous master/slave replication, promotion, idempotent sends.
//! * [`timer`]: DELAY messages (an on-disk index by due time, delivery, recall).
//! * [`txn`]: transactional messages (half messages, EndTransaction, check-back).
//! * [`server`]: `run(listener, config, shutdown)`.

pub mod acl;
pub mod admin;
pub mod broker;
pub mod clock;
pub mod config;
pub mod consume;
pub mod control;
pub mod error;
pub mod handles;
pub mod limits;
pub mod lookup;
pub mod meta;
pub mod metrics;
pub mod mutant;
pub mod pause;
pub mod register;
pub mod repl;
pub mod send;
pub mod server;
pub mod service;
pub mod timer;
pub mod topics;
pub mod txn;
pub mod validate;

pub use broker::Broker;
pub use config::{BrokerConfig, FlushMode, Limits};
pub use error::BrokerError;
pub use server::{Listeners, run, serve};
