//! Rust producer SDK for SofaMQ, speaking the Apache RocketMQ 5 gRPC
//! protocol (`apache.rocketmq.v2`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use sofamq_client::{Message, Producer, ProducerConfig};
//!
//! let producer = Producer::start(ProducerConfig::new(["127.0.0.1:8081"])).await?;
//! let receipt = producer
//!     .send(Message::builder("orders", "hello").tag("created").key("o-1").build())
//!     .await?;
//! println!("stored {} at offset {}", receipt.message_id, receipt.queue_offset);
//! producer.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! How a send works:
//! 1. the topic's route (writable master brokers) comes from a cache filled
//!    by QueryRoute against the access points;
//! 2. a broker is picked: round-robin, skipping recently failed brokers, a
//!    different one on retry, a stable one per FIFO message group;
//! 3. the message joins that broker's queue; the broker's sender task
//!    coalesces everything queued into one SendMessage request (bounded by
//!    message count, bytes and requests in flight) and hands each caller its
//!    own result entry;
//! 4. retryable failures are retried with exponential backoff and the same
//!    message id; a final failure is logged, counted and alerted.
//!
//! Timer and transactional messages:
//! * [`Producer::send_delayed`] / [`Producer::send_at`] store a DELAY message
//!   that consumers see once due; its receipt's `recall_handle` cancels it
//!   with [`Producer::recall`] while it is pending.
//! * [`Producer::send_half`] stores a half message and returns a
//!   [`Transaction`] to [`commit`](Transaction::commit) or
//!   [`rollback`](Transaction::rollback); the broker asks the producer's
//!   [`TransactionChecker`] about transactions left open, over the Telemetry
//!   stream the producer keeps with every broker it uses.

mod address;
mod auth;
mod config;
mod connection;
mod consumer;
mod error;
mod headers;
mod id;
mod message;
mod producer;
mod push;
mod received;
mod resolution;
mod retry;
mod routes;
mod rpc;
mod selector;
mod sender;
mod telemetry;
mod transaction;
mod wire;

pub use auth::{Credentials, TlsOptions};
pub use config::{AlertCallback, ProducerConfig};
pub use consumer::{ConsumeError, ConsumerConfig, SimpleConsumer};
pub use error::{BatchSendError, ClientError, FailureKind, RequestError, SendError, SendFailure};
pub use headers::{CLIENT_VERSION, format_date_time, host_name};
pub use id::MessageIdGenerator;
pub use message::{Message, MessageBuilder, SendReceipt};
pub use producer::{METRIC_SEND_FAILURES, METRIC_SEND_RETRIES, Producer};
pub use push::{ConsumeResult, Listener, PushConfig, PushConsumer, nack_backoff};
pub use received::ReceivedMessage;
pub use resolution::{TransactionChecker, TransactionResolution};
/// Protocol status codes (`Code::Ok` = 20000, ...), re-exported.
pub use sofamq_proto::v2::Code;
pub use transaction::Transaction;
