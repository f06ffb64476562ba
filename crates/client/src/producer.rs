//! The producer: routes, broker selection, coalesced sending and retries.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::ProducerConfig;
use crate::connection::Channels;
use crate::error::{BatchSendError, ClientError, FailureKind, RequestError, SendError};
use crate::headers::{RequestHeaders, host_name};
use crate::id::{MessageIdGenerator, random_u64};
use crate::message::{Message, SendReceipt};
use crate::retry::{self, AttemptError};
use crate::routes::RouteCache;
use crate::rpc::Rpc;
use crate::selector;
use crate::sender::{BrokerHandle, EntryResult, Senders, Stored, shutdown_signal};
use crate::telemetry::Sessions;
use crate::transaction::Transaction;
use crate::wire::{self, EncodedMessage};

/// Metric: sends that finally failed (label `topic`).
pub const METRIC_SEND_FAILURES: &str = "sofamq_client_send_failures_total";
/// Metric: retried send attempts (label `topic`).
pub const METRIC_SEND_RETRIES: &str = "sofamq_client_send_retries_total";

/// Publishes messages to SofaMQ (or any RocketMQ 5 gRPC endpoint).
///
/// Cheap to clone (an `Arc` inside) and safe to use from many tasks at once;
/// concurrent sends to the same broker are coalesced into shared requests.
/// Must be used inside a Tokio runtime.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("client_id", &self.inner.client_id)
            .field("access_points", &self.inner.config.access_points)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: ProducerConfig,
    client_id: String,
    born_host: String,
    ids: MessageIdGenerator,
    routes: Arc<RouteCache>,
    senders: Arc<Senders>,
    rpc: Arc<Rpc>,
    sessions: Arc<Sessions>,
    shutdown: watch::Sender<bool>,
    refresher: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Stops the background tasks when the last Producer clone goes away.
        self.shutdown.send_replace(true);
    }
}

/// A message ready to go: validated, with its id and wire form (encoded
/// once; every attempt sends the same bytes).
struct Prepared {
    topic: String,
    message_id: String,
    wire: EncodedMessage,
    group_hash: Option<u64>,
}

/// The outcome of one attempt.
struct Attempt {
    broker: Option<Arc<BrokerHandle>>,
    result: EntryResult,
    /// Whether the route had a master other than `broker`.
    other_broker: bool,
}

impl Producer {
    /// Creates a producer. Connections and routes are set up lazily: the
    /// first send to a topic asks the access points for its route.
    pub async fn start(config: ProducerConfig) -> Result<Producer, ClientError> {
        config.validate()?;
        let born_host = host_name();
        let client_id = if config.client_id.is_empty() {
            format!("{born_host}@{}@{:016X}", std::process::id(), random_u64())
        } else {
            config.client_id.clone()
        };
        let headers = Arc::new(RequestHeaders::new(&client_id, config.credentials.clone())?);
        let channels = Arc::new(Channels::new(config.request_timeout, config.tls.as_ref())?);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let senders = Arc::new(Senders::new(
            &config,
            channels.clone(),
            headers.clone(),
            shutdown_rx.clone(),
        ));
        let rpc = Arc::new(Rpc::new(channels.clone(), headers.clone(), config.clone()));
        let sessions = Arc::new(Sessions::new(
            channels.clone(),
            headers.clone(),
            rpc.clone(),
            born_host.clone(),
            shutdown_rx.clone(),
        ));
        let routes = Arc::new(RouteCache::new(
            config.access_points.clone(),
            channels,
            senders.clone(),
            sessions.clone(),
            headers,
            config.request_timeout,
        ));
        let refresher = tokio::spawn(refresh_routes(
            routes.clone(),
            config.route_refresh_interval,
            shutdown_rx,
        ));
        tracing::info!(%client_id, access_points = ?config.access_points, "producer started");
        Ok(Producer {
            inner: Arc::new(Inner {
                config,
                client_id,
                born_host,
                ids: MessageIdGenerator::new(),
                routes,
                senders,
                rpc,
                sessions,
                shutdown,
                refresher: Mutex::new(Some(refresher)),
            }),
        })
    }

    /// The client id sent with every request.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The configuration in use.
    pub fn config(&self) -> &ProducerConfig {
        &self.inner.config
    }

    /// Sends one message and waits until it is durably stored.
    ///
    /// Retries retryable failures (with exponential backoff, preferring
    /// another broker, keeping the same message id) up to
    /// [`ProducerConfig::max_attempts`]. A final failure is logged at ERROR,
    /// counted in `sofamq_client_send_failures_total` and reported to the
    /// alert callback before it is returned.
    pub async fn send(&self, message: Message) -> Result<SendReceipt, SendError> {
        let prepared = self.prepare(message)?;
        self.deliver(prepared, None).await
    }

    /// Sends a DELAY message that consumers see from `at` on (the topic must
    /// be a DELAY topic; a time already past is delivered at once, one beyond
    /// the broker's `timer.max_delay_ms` is refused with
    /// ILLEGAL_DELIVERY_TIME 40012). The receipt's `recall_handle` cancels it
    /// with [`Producer::recall`] while it is pending.
    pub async fn send_at(
        &self,
        mut message: Message,
        at: SystemTime,
    ) -> Result<SendReceipt, SendError> {
        message.delivery_timestamp = Some(at);
        self.send(message).await
    }

    /// Sends a DELAY message due `delay` from now; see [`Producer::send_at`].
    pub async fn send_delayed(
        &self,
        message: Message,
        delay: Duration,
    ) -> Result<SendReceipt, SendError> {
        self.send_at(message, SystemTime::now() + delay).await
    }

    /// Cancels a pending DELAY message of `topic` by the `recall_handle` of
    /// its receipt; returns its message id. It is never delivered then.
    ///
    /// Goes to the masters of the topic's route in turn until one answers OK
    /// or refuses for good. Recalling again answers OK; recalling a message
    /// already delivered fails with PRECONDITION_FAILED 42800, an unknown or
    /// malformed handle (or the wrong topic) with BAD_REQUEST 40000. Transport
    /// failures and retryable codes are retried up to `max_attempts` rounds.
    pub async fn recall(&self, topic: &str, recall_handle: &str) -> Result<String, ClientError> {
        const OP: &str = "RecallMessage";
        if self.is_shut_down() {
            return Err(ClientError::Shutdown);
        }
        if topic.trim().is_empty() || recall_handle.is_empty() {
            return Err(RequestError {
                op: OP,
                kind: FailureKind::Invalid,
                code: Some(sofamq_proto::v2::Code::BadRequest as i32),
                message: "topic and recall handle must not be empty".into(),
                attempts: 0,
                endpoint: None,
            }
            .into());
        }
        let cfg = &self.inner.config;
        let mut attempts = 0u32;
        // A refusal that may only mean "not stored here" (another master may
        // hold the timer), and the last failure worth another round.
        let mut refused: Option<(AttemptError, String)> = None;
        let mut last: Option<(AttemptError, Option<String>)> = None;
        for round in 1..=cfg.max_attempts {
            let since = Instant::now();
            let mut retryable = false;
            match self.inner.routes.get(topic).await {
                Err(e) => {
                    retryable = retry::classify(&e, false).retry;
                    last = Some((e, None));
                }
                Ok(route) => {
                    for broker in &route.brokers {
                        attempts += 1;
                        match self
                            .inner
                            .rpc
                            .recall_once(&broker.addr, topic, recall_handle)
                            .await
                        {
                            Ok(id) => return Ok(id),
                            Err(e) if not_here(&e) => {
                                refused.get_or_insert((e, broker.addr.clone()));
                            }
                            Err(e) if retry::classify(&e, false).retry => {
                                retryable = true;
                                last = Some((e, Some(broker.addr.clone())));
                            }
                            Err(e) => {
                                return Err(RequestError::from_attempt(
                                    OP,
                                    &e,
                                    attempts,
                                    Some(&broker.addr),
                                )
                                .into());
                            }
                        }
                    }
                }
            }
            // Every master answered and none has it: that is the answer.
            if !retryable || round == cfg.max_attempts || self.is_shut_down() {
                break;
            }
            tracing::warn!(%topic, round, error = ?last, "recall failed, retrying");
            if let Err(e) = self.inner.routes.refresh_after(topic, since).await {
                tracing::debug!(%topic, error = ?e, "route refresh after failure failed");
            }
            tokio::time::sleep(cfg.backoff(round, false)).await;
        }
        let (err, endpoint) = match (refused, last) {
            (Some((e, a)), _) => (e, Some(a)),
            (None, Some((e, a))) => (e, a),
            (None, None) => (AttemptError::NoRoute("empty route".into()), None),
        };
        Err(RequestError::from_attempt(OP, &err, attempts, endpoint.as_deref()).into())
    }

    /// Stores `message` as a half (TRANSACTION) message, invisible to
    /// consumers until the returned [`Transaction`] is committed; the topic
    /// must be a TRANSACTION topic. The message may have neither a message
    /// group nor a delivery time. It goes alone in its request and is not
    /// retried (a retry could store a second half message elsewhere).
    pub async fn send_half(&self, mut message: Message) -> Result<Transaction, SendError> {
        message.transactional = true;
        let receipt = self.send(message).await?;
        match receipt.transaction_id.clone() {
            Some(id) => Ok(Transaction::new(self.inner.rpc.clone(), receipt, id)),
            None => {
                let err = SendError {
                    kind: FailureKind::Transport,
                    code: None,
                    message: "protocol error: the broker answered no transaction id \
                              (is the topic a TRANSACTION topic?)"
                        .into(),
                    attempts: 1,
                    message_id: receipt.message_id,
                    topic: receipt.topic,
                    broker: Some(receipt.broker),
                    maybe_stored: true,
                };
                self.report(&err);
                Err(err)
            }
        }
    }

    /// Sends several messages at once (they share requests where they go to
    /// the same broker) and waits for all of them.
    ///
    /// Returns the receipts in input order, or a [`BatchSendError`] with every
    /// message's outcome if any failed (the others are stored).
    pub async fn send_batch(
        &self,
        messages: Vec<Message>,
    ) -> Result<Vec<SendReceipt>, BatchSendError> {
        enum First {
            Rejected(SendError),
            Queued(
                Prepared,
                Arc<BrokerHandle>,
                bool,
                oneshot::Receiver<EntryResult>,
            ),
            NotQueued(Prepared, Attempt),
        }
        enum Outcome {
            Done(Result<SendReceipt, SendError>),
            Retrying(JoinHandle<Result<SendReceipt, SendError>>),
        }
        // 1. Queue every first attempt before waiting for any, so that the
        //    batch leaves in as few requests as the limits allow.
        let mut firsts = Vec::with_capacity(messages.len());
        for message in messages {
            firsts.push(match self.prepare(message) {
                Err(e) => First::Rejected(e),
                Ok(p) => match self.submit(&p, None, None).await {
                    Ok((broker, other, rx)) => First::Queued(p, broker, other, rx),
                    Err(attempt) => First::NotQueued(p, attempt),
                },
            });
        }
        // 2. Collect first outcomes; failed messages continue their retries
        //    in their own task so that the backoffs overlap.
        let mut outcomes = Vec::with_capacity(firsts.len());
        for first in firsts {
            let (p, attempt) = match first {
                First::Rejected(e) => {
                    outcomes.push(Outcome::Done(Err(e)));
                    continue;
                }
                First::Queued(p, broker, other_broker, rx) => {
                    let result = wait(rx).await;
                    let attempt = Attempt {
                        broker: Some(broker),
                        result,
                        other_broker,
                    };
                    (p, attempt)
                }
                First::NotQueued(p, attempt) => (p, attempt),
            };
            let Attempt {
                broker,
                result,
                other_broker,
            } = attempt;
            outcomes.push(match result {
                // Stored at the first attempt: what `deliver` would answer.
                Ok(entry) => Outcome::Done(Ok(receipt(p, &entry, broker.as_deref()))),
                Err(e) => {
                    let attempt = Attempt {
                        broker,
                        result: Err(e),
                        other_broker,
                    };
                    let this = self.clone();
                    Outcome::Retrying(tokio::spawn(
                        async move { this.deliver(p, Some(attempt)).await },
                    ))
                }
            });
        }
        // 3. Wait for the retries.
        let mut results = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            results.push(match outcome {
                Outcome::Done(r) => r,
                Outcome::Retrying(h) => h.await.unwrap_or_else(|e| Err(joined(&e))),
            });
        }
        let failed = results.iter().filter(|r| r.is_err()).count();
        if failed == 0 {
            return Ok(results.into_iter().map(|r| r.expect("checked")).collect());
        }
        let first = results
            .iter()
            .find_map(|r| r.as_ref().err().cloned())
            .expect("checked");
        Err(BatchSendError {
            failed,
            first,
            results,
        })
    }

    /// Sends in the background and calls `callback` with the outcome.
    /// The returned handle may be awaited or dropped.
    pub fn send_async<F>(&self, message: Message, callback: F) -> JoinHandle<()>
    where
        F: FnOnce(Result<SendReceipt, SendError>) + Send + 'static,
    {
        let this = self.clone();
        tokio::spawn(async move { callback(this.send(message).await) })
    }

    /// Sends in the background; the handle yields the outcome.
    pub fn spawn_send(&self, message: Message) -> JoinHandle<Result<SendReceipt, SendError>> {
        let this = self.clone();
        tokio::spawn(async move { this.send(message).await })
    }

    /// Stops the producer: refuses new sends, sends what is already queued,
    /// waits (bounded by the request timeout) for outstanding requests, and
    /// stops the background tasks. Affects every clone.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let refresher = self
            .inner
            .refresher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(r) = refresher {
            r.abort();
        }
        let grace = self.inner.config.request_timeout + Duration::from_secs(1);
        self.inner.senders.join(grace).await;
        self.inner.sessions.join(grace).await;
        tracing::info!(client_id = %self.inner.client_id, "producer shut down");
    }

    fn is_shut_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// Validates the message and assigns its id.
    fn prepare(&self, message: Message) -> Result<Prepared, SendError> {
        let now = SystemTime::now();
        let message_id = self.inner.ids.next_id_at(now);
        if self.is_shut_down() {
            return Err(SendError {
                kind: FailureKind::Shutdown,
                code: None,
                message: "producer is shut down".into(),
                attempts: 0,
                message_id,
                topic: message.topic,
                broker: None,
                maybe_stored: false,
            });
        }
        if let Err((code, reason)) = message.validate() {
            let err = SendError {
                kind: FailureKind::Invalid,
                code: Some(code as i32),
                message: reason,
                attempts: 0,
                message_id,
                topic: message.topic,
                broker: None,
                maybe_stored: false,
            };
            self.report(&err);
            return Err(err);
        }
        let group_hash = message.message_group.as_deref().map(selector::group_hash);
        let (topic, wire) = wire::encode_message(message, &message_id, &self.inner.born_host, now);
        Ok(Prepared {
            topic,
            message_id,
            wire,
            group_hash,
        })
    }

    /// Picks a broker and queues one attempt of `p` on it: the master of group `pinned`
    /// when set (an earlier attempt there may have stored it), else by [`selector::select`].
    async fn submit(
        &self,
        p: &Prepared,
        previous: Option<&BrokerHandle>,
        pinned: Option<&str>,
    ) -> Result<(Arc<BrokerHandle>, bool, oneshot::Receiver<EntryResult>), Attempt> {
        let failed = |broker, result, other_broker| Attempt {
            broker,
            result: Err(result),
            other_broker,
        };
        let route = match self.inner.routes.get(&p.topic).await {
            Ok(r) => r,
            Err(e) => return Err(failed(None, e, false)),
        };
        let broker = match pinned {
            Some(group) => route.brokers.iter().find(|b| b.name == group).cloned(),
            None => selector::select(&route, p.group_hash, previous, Instant::now()),
        };
        let Some(broker) = broker else {
            let why = match pinned {
                Some(g) => {
                    format!("broker group {g}, which may hold this message, is not in the route")
                }
                None => "empty route".into(),
            };
            return Err(failed(None, AttemptError::NoRoute(why), false));
        };
        let other_broker = route.brokers.len() > 1;
        match broker.submit(p.wire.clone()).await {
            Ok(rx) => Ok((broker, other_broker, rx)),
            Err(e) => Err(failed(Some(broker), e, other_broker)),
        }
    }

    async fn attempt(
        &self,
        p: &Prepared,
        previous: Option<&BrokerHandle>,
        pinned: Option<&str>,
    ) -> Attempt {
        match self.submit(p, previous, pinned).await {
            Ok((broker, other_broker, rx)) => Attempt {
                broker: Some(broker),
                result: wait(rx).await,
                other_broker,
            },
            Err(attempt) => attempt,
        }
    }

    /// The retry loop. `first` is the outcome of attempt 1 when it was made
    /// by the caller (batch sends).
    ///
    /// Once an attempt may have stored the message (no answer, or a code given after the
    /// append), every later attempt goes to that same broker group, whichever broker is
    /// its master by then: only that group's idempotence window can answer a retry with the
    /// stored copy, so a copy in another group would be a duplicate. Attempts refused
    /// before the append (a refused connection, HA_NOT_AVAILABLE, a throttle) move on to
    /// another group, as the selector prefers. The pin ends when the group's writable
    /// master answers that it holds none of the message ([`AttemptError::NotHeld`]).
    async fn deliver(
        &self,
        p: Prepared,
        mut first: Option<Attempt>,
    ) -> Result<SendReceipt, SendError> {
        let cfg = &self.inner.config;
        // A half message is not retried: it might be stored twice.
        let mut max_attempts = if p.wire.alone { 1 } else { cfg.max_attempts };
        let mut granted_extra = false;
        let mut previous: Option<Arc<BrokerHandle>> = None;
        let mut pinned: Option<String> = None;
        let mut attempt_no = 0u32;
        let mut maybe_stored = false;
        let mut routes_changed = self.inner.routes.generation();
        loop {
            attempt_no += 1;
            routes_changed.borrow_and_update();
            let attempt = match first.take() {
                Some(a) => a,
                None => {
                    self.attempt(&p, previous.as_deref(), pinned.as_deref())
                        .await
                }
            };
            let err = match attempt.result {
                Ok(entry) => return Ok(receipt(p, &entry, attempt.broker.as_deref())),
                Err(e) => e,
            };
            let verdict = retry::classify(&err, attempt.other_broker);
            if retry::may_have_stored(&err) {
                maybe_stored = true;
                if pinned.is_none()
                    && let Some(b) = &attempt.broker
                {
                    pinned = Some(b.name.clone());
                }
            }
            // The pinned group's writable master holds no copy (it said so): its log is
            // the group's, so the group does not have the message and never will. The send
            // may go to any group again, with one more attempt if this was its last (a
            // group that lost its slave would otherwise take every attempt, each waiting
            // for a route change that brings nothing).
            if matches!(err, AttemptError::NotHeld { .. }) && pinned.is_some() {
                tracing::info!(
                    message_id = %p.message_id,
                    group = pinned.as_deref().unwrap_or("-"),
                    "the group that may have held this message does not: free to go elsewhere"
                );
                pinned = None;
                maybe_stored = false;
                if attempt_no >= max_attempts && !granted_extra {
                    max_attempts += 1;
                    granted_extra = true;
                }
            }
            let now = Instant::now();
            if verdict.retry
                && let Some(b) = &attempt.broker
            {
                b.isolate(now, cfg.broker_isolation);
            }
            if !verdict.retry || attempt_no >= max_attempts || self.is_shut_down() {
                // The next send must not go to the same dead or demoted broker for a whole
                // refresh interval (a half message gets no retry to do it for it).
                if verdict.retry
                    && verdict.refresh_route
                    && !self.is_shut_down()
                    && let Err(e) = self.inner.routes.refresh_after(&p.topic, now).await
                {
                    tracing::debug!(topic = %p.topic, error = ?e, "route refresh after failure failed");
                }
                let err = SendError {
                    kind: err.kind(),
                    code: err.code(),
                    message: err.message(),
                    attempts: attempt_no,
                    message_id: p.message_id,
                    topic: p.topic,
                    broker: attempt.broker.map(|b| b.name.clone()),
                    maybe_stored,
                };
                self.report(&err);
                return Err(err);
            }
            metrics::counter!(METRIC_SEND_RETRIES, "topic" => p.topic.clone()).increment(1);
            tracing::warn!(
                message_id = %p.message_id,
                topic = %p.topic,
                attempt = attempt_no,
                broker = attempt.broker.as_ref().map(|b| b.name.as_str()).unwrap_or("-"),
                error = ?err,
                "send attempt failed, retrying"
            );
            if verdict.refresh_route
                && let Err(e) = self.inner.routes.refresh_after(&p.topic, now).await
            {
                tracing::debug!(topic = %p.topic, error = ?e, "route refresh after failure failed");
            }
            // A route that changed since this attempt (a new master) ends the wait early;
            // a throttled broker gets its whole backoff.
            let mut wait = cfg.backoff(attempt_no, verdict.throttled);
            // Pinned to a group (an earlier attempt may have stored the message there,
            // so only that group may take it) that refused this attempt before storing
            // it: its master's address is dead, or its new master has no in-sync slave
            // yet. Wait for the route to change (up to a request timeout) instead of
            // spending the attempts on that within milliseconds.
            if pinned.is_some() && !retry::may_have_stored(&err) {
                wait = wait.max(cfg.request_timeout);
            }
            if verdict.throttled {
                tokio::time::sleep(wait).await;
            } else if !routes_changed.has_changed().unwrap_or(false) {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = routes_changed.changed() => {}
                }
            }
            previous = attempt.broker;
        }
    }

    /// Logs, counts and alerts a final failure (not shutdown refusals).
    fn report(&self, err: &SendError) {
        metrics::counter!(METRIC_SEND_FAILURES, "topic" => err.topic.clone()).increment(1);
        if err.kind == FailureKind::Shutdown {
            tracing::warn!(message_id = %err.message_id, topic = %err.topic, "send refused: producer shut down");
            return;
        }
        tracing::error!(
            message_id = %err.message_id,
            topic = %err.topic,
            attempts = err.attempts,
            code = ?err.code,
            kind = %err.kind,
            broker = err.broker.as_deref().unwrap_or("-"),
            reason = %err.message,
            "send failed"
        );
        if let Some(alert) = &self.inner.config.alert {
            let call = std::panic::AssertUnwindSafe(|| alert(err));
            if std::panic::catch_unwind(call).is_err() {
                tracing::error!(message_id = %err.message_id, "send failure alert callback panicked");
            }
        }
    }
}

fn receipt(p: Prepared, entry: &Stored, broker: Option<&BrokerHandle>) -> SendReceipt {
    SendReceipt {
        // The broker's id when it answered one (normally ours, then no copy).
        message_id: if entry.message_id.is_empty() || entry.message_id == p.message_id.as_bytes() {
            p.message_id
        } else {
            String::from_utf8_lossy(&entry.message_id).into_owned()
        },
        topic: p.topic,
        queue_offset: entry.offset,
        broker: broker.map(|b| b.name.clone()).unwrap_or_default(),
        endpoint: broker.map(|b| b.addr.clone()).unwrap_or_default(),
        recall_handle: non_empty(&entry.recall_handle),
        transaction_id: non_empty(&entry.transaction_id),
    }
}

/// A string the parser checked as UTF-8, `None` when empty.
fn non_empty(b: &bytes::Bytes) -> Option<String> {
    (!b.is_empty()).then(|| String::from_utf8_lossy(b).into_owned())
}

/// Whether a recall refusal may only mean that another master holds the timer.
fn not_here(e: &AttemptError) -> bool {
    use sofamq_proto::v2::Code;
    matches!(
        e.code().and_then(|c| Code::try_from(c).ok()),
        Some(Code::BadRequest | Code::TopicNotFound | Code::NotFound | Code::MessageNotFound)
    )
}

async fn wait(rx: oneshot::Receiver<EntryResult>) -> EntryResult {
    rx.await
        .unwrap_or_else(|_| Err(AttemptError::Transport("request abandoned".into())))
}

fn joined(e: &tokio::task::JoinError) -> SendError {
    SendError {
        kind: FailureKind::Shutdown,
        code: None,
        message: format!("send task ended: {e}"),
        attempts: 0,
        message_id: String::new(),
        topic: String::new(),
        broker: None,
        // It may have been in flight.
        maybe_stored: true,
    }
}

/// Refreshes every cached route each `interval` until shutdown.
async fn refresh_routes(
    routes: Arc<RouteCache>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => routes.refresh_all().await,
            () = shutdown_signal(&mut shutdown) => break,
        }
    }
}
