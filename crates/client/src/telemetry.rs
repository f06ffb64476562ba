//! The producer's Telemetry sessions: one bidirectional stream per broker
//! endpoint the producer uses.
//!
//! On each stream the producer writes its `Settings` (client type PRODUCER,
//! `publishing.topics` = every topic it has a route for), again whenever a
//! topic is added. The broker uses the stream to ask about transactions left
//! open (`RecoverOrphanedTransactionCommand`): the configured
//! [`TransactionChecker`](crate::TransactionChecker) answers and the answer
//! goes back as `EndTransaction` with source `SOURCE_SERVER_CHECK`.
//!
//! A stream that fails or is closed by the server is opened again after a
//! backoff (200 ms doubling to 30 s, reset once a stream got an answer); every
//! session ends on shutdown, which closes the client's side of the stream.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sofamq_proto::v2::{
    self, ClientType, ExponentialBackoff, Publishing, RecoverOrphanedTransactionCommand, Resource,
    RetryPolicy, Settings, TelemetryCommand, TransactionSource,
    messaging_service_client::MessagingServiceClient, retry_policy, settings::PubSub,
    telemetry_command::Command,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use crate::address::endpoints_of;
use crate::connection::Channels;
use crate::headers::{CLIENT_VERSION, RequestHeaders};
use crate::received::ReceivedMessage;
use crate::resolution::TransactionChecker;
use crate::rpc::{EndTarget, Rpc};
use crate::sender::shutdown_signal;

/// Transaction checks running at once per producer; more are dropped (the
/// broker asks again after `transaction.check_interval_ms`).
pub(crate) const MAX_CONCURRENT_CHECKS: usize = 16;
/// Commands the client may have queued on one stream.
const OUTBOUND_QUEUE: usize = 16;
const BACKOFF_INITIAL: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What every session needs.
struct Shared {
    channels: Arc<Channels>,
    headers: Arc<RequestHeaders>,
    rpc: Arc<Rpc>,
    checker: Option<TransactionChecker>,
    access_point: v2::Endpoints,
    host: String,
    topics: watch::Sender<BTreeSet<String>>,
    shutdown: watch::Receiver<bool>,
    checks: Arc<Semaphore>,
}

/// The producer's sessions, by endpoint.
pub(crate) struct Sessions {
    shared: Arc<Shared>,
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    pub(crate) fn new(
        channels: Arc<Channels>,
        headers: Arc<RequestHeaders>,
        rpc: Arc<Rpc>,
        host: String,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let config = rpc.config();
        let shared = Shared {
            checker: config.transaction_checker.clone(),
            access_point: endpoints_of(config.access_points.first().map_or("", String::as_str)),
            channels,
            headers,
            host,
            topics: watch::Sender::new(BTreeSet::new()),
            shutdown,
            checks: Arc::new(Semaphore::new(MAX_CONCURRENT_CHECKS)),
            rpc,
        };
        Self {
            shared: Arc::new(shared),
            tasks: Mutex::new(HashMap::new()),
        }
    }

    /// Adds a topic to the published ones (the sessions send new settings).
    pub(crate) fn add_topic(&self, topic: &str) {
        self.shared.topics.send_if_modified(|t| {
            if t.contains(topic) {
                false
            } else {
                t.insert(topic.to_string())
            }
        });
    }

    /// Starts the session with `addr` unless it runs already.
    pub(crate) fn open(&self, addr: &str) {
        if *self.shared.shutdown.borrow() {
            return;
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if tasks.get(addr).is_some_and(|t| !t.is_finished()) {
            return;
        }
        let task = tokio::spawn(run(self.shared.clone(), addr.to_string()));
        tasks.insert(addr.to_string(), task);
    }

    /// Waits (at most `grace`) for the sessions to close their streams. The
    /// shutdown signal must be sent first.
    pub(crate) async fn join(&self, grace: Duration) {
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, t)| t)
            .collect();
        let deadline = tokio::time::Instant::now() + grace;
        for t in tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// How one stream ended.
enum Ended {
    Shutdown,
    /// The stream broke; `answered` tells whether the server had answered on it.
    Broken {
        reason: String,
        answered: bool,
    },
}

/// One endpoint's session: streams, one after the other, until shutdown.
async fn run(shared: Arc<Shared>, addr: String) {
    let mut shutdown = shared.shutdown.clone();
    let mut backoff = BACKOFF_INITIAL;
    let mut failures = 0u32;
    loop {
        match stream(&shared, &addr).await {
            Ended::Shutdown => break,
            Ended::Broken { reason, answered } => {
                if answered {
                    backoff = BACKOFF_INITIAL;
                    failures = 0;
                }
                failures += 1;
                // Say it once per outage, not on every reconnect attempt.
                if failures == 1 {
                    tracing::warn!(endpoint = %addr, %reason, "telemetry stream ended; reopening");
                } else {
                    tracing::debug!(endpoint = %addr, %reason, failures, "telemetry stream failed again");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown_signal(&mut shutdown) => break,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    tracing::debug!(endpoint = %addr, "telemetry session stopped");
}

/// Opens one stream, writes the settings and serves it until it ends.
async fn stream(shared: &Arc<Shared>, addr: &str) -> Ended {
    let mut shutdown = shared.shutdown.clone();
    let mut topics = shared.topics.subscribe();
    let broken = |reason: String| Ended::Broken {
        reason,
        answered: false,
    };
    let channel = match shared.channels.get(addr) {
        Ok(c) => c,
        Err(e) => return broken(e.message()),
    };
    let mut client = MessagingServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let first = settings(shared, &topics.borrow_and_update());
    if tx.try_send(first).is_err() {
        return broken("outbound queue closed".into());
    }
    // No grpc-timeout: the stream lives as long as the producer.
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    shared.headers.apply(&mut req);
    let timeout = shared.rpc.config().request_timeout;
    let opened = tokio::select! {
        r = tokio::time::timeout(timeout, client.telemetry(req)) => r,
        () = shutdown_signal(&mut shutdown) => return Ended::Shutdown,
    };
    let mut inbound = match opened {
        Err(_) => return broken("no answer to Telemetry within the request timeout".into()),
        Ok(Err(status)) => return broken(format!("{:?}: {}", status.code(), status.message())),
        Ok(Ok(resp)) => resp.into_inner(),
    };
    tracing::debug!(endpoint = %addr, "telemetry stream open");
    let mut answered = false;
    loop {
        tokio::select! {
            biased;
            () = shutdown_signal(&mut shutdown) => {
                // Dropping `tx` ends the client's side of the stream.
                return Ended::Shutdown;
            }
            changed = topics.changed() => {
                if changed.is_err() {
                    return Ended::Shutdown;
                }
                let cmd = settings(shared, &topics.borrow_and_update());
                if tx.try_send(cmd).is_err() {
                    // Only when the server does not read: the stream is stuck.
                    return Ended::Broken { reason: "settings could not be queued".into(), answered };
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(cmd)) => {
                    answered = true;
                    handle(shared, addr, cmd);
                }
                Ok(None) => return Ended::Broken { reason: "closed by the server".into(), answered },
                Err(status) => {
                    return Ended::Broken {
                        reason: format!("{:?}: {}", status.code(), status.message()),
                        answered,
                    };
                }
            },
        }
    }
}

/// The producer's settings, publishing to `topics`.
fn settings(shared: &Shared, topics: &BTreeSet<String>) -> TelemetryCommand {
    let cfg = shared.rpc.config();
    let duration = |d: Duration| prost_types::Duration {
        seconds: d.as_secs().min(i64::MAX as u64) as i64,
        nanos: d.subsec_nanos() as i32,
    };
    TelemetryCommand {
        status: None,
        command: Some(Command::Settings(Settings {
            client_type: Some(ClientType::Producer as i32),
            access_point: Some(shared.access_point.clone()),
            backoff_policy: Some(RetryPolicy {
                max_attempts: i32::try_from(cfg.max_attempts).unwrap_or(i32::MAX),
                strategy: Some(retry_policy::Strategy::ExponentialBackoff(
                    ExponentialBackoff {
                        initial: Some(duration(cfg.retry_backoff_initial)),
                        max: Some(duration(cfg.retry_backoff_max)),
                        multiplier: cfg.retry_backoff_multiplier as f32,
                    },
                )),
            }),
            request_timeout: Some(duration(cfg.request_timeout)),
            pub_sub: Some(PubSub::Publishing(Publishing {
                topics: topics
                    .iter()
                    .map(|t| Resource {
                        resource_namespace: String::new(),
                        name: t.clone(),
                    })
                    .collect(),
                max_body_size: 0,
                validate_message_type: false,
            })),
            user_agent: Some(v2::Ua {
                language: v2::Language::Rust as i32,
                version: CLIENT_VERSION.to_string(),
                platform: std::env::consts::OS.to_string(),
                hostname: shared.host.clone(),
            }),
            metric: None,
            client_properties: Default::default(),
        })),
    }
}

/// Handles one command from the server.
fn handle(shared: &Arc<Shared>, addr: &str, cmd: TelemetryCommand) {
    match cmd.command {
        Some(Command::Settings(_)) => match cmd.status {
            Some(s) if s.code != v2::Code::Ok as i32 => tracing::warn!(
                endpoint = %addr,
                code = s.code,
                message = %s.message,
                "server refused the producer's settings"
            ),
            _ => tracing::trace!(endpoint = %addr, "settings acknowledged"),
        },
        Some(Command::RecoverOrphanedTransactionCommand(c)) => {
            match shared.checks.clone().try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(check(shared.clone(), addr.to_string(), c, permit));
                }
                Err(_) => tracing::warn!(
                    endpoint = %addr,
                    transaction_id = %c.transaction_id,
                    "{MAX_CONCURRENT_CHECKS} transaction checks running; dropping this one (the broker asks again)"
                ),
            }
        }
        _ => tracing::debug!(endpoint = %addr, "telemetry command ignored"),
    }
}

/// Asks the checker about an open transaction and sends its answer.
async fn check(
    shared: Arc<Shared>,
    addr: String,
    cmd: RecoverOrphanedTransactionCommand,
    _permit: OwnedSemaphorePermit,
) {
    let transaction_id = cmd.transaction_id;
    let Some(message) = cmd.message else {
        tracing::warn!(endpoint = %addr, %transaction_id, "transaction check without a message; ignored");
        return;
    };
    let view = ReceivedMessage::from_wire(message, &addr);
    if transaction_id.is_empty() || view.message_id.is_empty() || view.topic.is_empty() {
        tracing::warn!(
            endpoint = %addr,
            %transaction_id,
            message_id = %view.message_id,
            topic = %view.topic,
            "transaction check without topic, message id or transaction id; ignored"
        );
        return;
    }
    let Some(checker) = shared.checker.clone() else {
        tracing::warn!(
            endpoint = %addr,
            topic = %view.topic,
            message_id = %view.message_id,
            "the broker checks a transaction but this producer has no transaction checker; ignored"
        );
        return;
    };
    let (topic, message_id) = (view.topic.clone(), view.message_id.clone());
    let resolution = match tokio::task::spawn_blocking(move || checker(&view)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(%topic, %message_id, error = %e, "transaction checker panicked");
            return;
        }
    };
    let Some(wire) = resolution.to_wire() else {
        tracing::debug!(%topic, %message_id, "transaction checker answered unknown");
        return;
    };
    let target = EndTarget {
        endpoint: &addr,
        topic: &topic,
        message_id: &message_id,
        transaction_id: &transaction_id,
    };
    match shared
        .rpc
        .end_transaction(&target, wire, TransactionSource::SourceServerCheck)
        .await
    {
        Ok(()) => tracing::info!(%topic, %message_id, ?resolution, "orphaned transaction resolved"),
        Err(e) => {
            tracing::warn!(%topic, %message_id, error = %e, "answer to a transaction check failed")
        }
    }
}
