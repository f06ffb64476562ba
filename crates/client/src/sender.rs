//! Per-broker senders that coalesce concurrent sends into one request.
//!
//! Every master broker gets a [`BrokerHandle`]: a bounded queue of messages
//! plus a sender task. The task takes the first waiting message, acquires one
//! of `max_in_flight_per_broker` request slots, then takes whatever else is
//! already queued (up to the message and byte limits, optionally lingering)
//! and sends it all as ONE `SendMessageRequest`. The response's entries (one
//! per message, in request order) are handed back to the waiting callers.
//!
//! So a lone send goes out at once (nothing else is queued), while under load
//! messages pile up while the slots are busy and leave in large requests: the
//! batch size adapts to the load without any added latency.
//!
//! A message marked `alone` (a TRANSACTION half message) is never coalesced:
//! it ends the request being filled and leaves in a request of its own.
//!
//! A request carries one topic only (the broker refuses a mixed one whole, as
//! RocketMQ does), so the queues are per (broker, topic). The topics' queues of
//! one broker share its request slots and its isolation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sofamq_proto::codes::NOT_HELD_HEADER;
use sofamq_proto::v2::Code;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

use crate::config::ProducerConfig;
use crate::connection::Channels;
use crate::headers::RequestHeaders;
use crate::retry::AttemptError;
use crate::wire::{
    EncodedMessage, SEND_MESSAGE_PATH, SendCodec, SendRequest, SendResponse, WireStatus,
};

/// What the broker answered for one stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    /// The message id as answered (UTF-8; may be empty).
    pub(crate) message_id: Bytes,
    /// The message's offset in its queue.
    pub(crate) offset: i64,
    /// Transaction id (half messages; may be empty).
    pub(crate) transaction_id: Bytes,
    /// Recall handle (DELAY messages; may be empty).
    pub(crate) recall_handle: Bytes,
}

/// Outcome of one message in one attempt.
pub(crate) type EntryResult = Result<Stored, AttemptError>;

/// Framing overhead of one message inside a `SendMessageRequest`
/// (field tag plus length varint), counted against the byte limit.
const PER_MESSAGE_OVERHEAD: usize = 6;

/// One message waiting to be sent.
struct Job {
    message: EncodedMessage,
    size: usize,
    reply: oneshot::Sender<EntryResult>,
}

/// Coalescing limits of a sender.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_messages: usize,
    max_bytes: usize,
    max_in_flight: usize,
    linger: Duration,
    timeout: Duration,
}

/// What the queues of all topics of one broker share.
#[derive(Debug)]
struct Shared {
    /// Milliseconds since [`clock_origin`] until which the broker is avoided.
    isolated_until: AtomicU64,
    /// Request slots (`max_in_flight_per_broker`).
    slots: Arc<Semaphore>,
}

/// A master broker as seen by the producer for one topic: where it is, whether
/// it is isolated after a failure, and the queue of its sender task.
#[derive(Debug)]
pub(crate) struct BrokerHandle {
    /// Broker name (from the route).
    pub(crate) name: String,
    /// gRPC endpoint, `host:port`.
    pub(crate) addr: String,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Job>,
}

impl BrokerHandle {
    /// Queues `message` for this broker; the receiver yields its outcome.
    pub(crate) async fn submit(
        &self,
        message: EncodedMessage,
    ) -> Result<oneshot::Receiver<EntryResult>, AttemptError> {
        let (reply, rx) = oneshot::channel();
        let size = message.encoded_len() + PER_MESSAGE_OVERHEAD;
        self.tx
            .send(Job {
                message,
                size,
                reply,
            })
            .await
            .map_err(|_| AttemptError::Closed)?;
        Ok(rx)
    }

    /// Whether the broker is isolated at `now`.
    pub(crate) fn is_isolated(&self, now: Instant) -> bool {
        self.shared.isolated_until.load(Ordering::Relaxed) > millis_since_origin(now)
    }

    /// Avoids the broker for `period` from `now`.
    pub(crate) fn isolate(&self, now: Instant, period: Duration) {
        let until = millis_since_origin(now + period);
        self.shared
            .isolated_until
            .fetch_max(until, Ordering::Relaxed);
    }

    /// A handle with no sender task (for selection tests).
    #[cfg(test)]
    pub(crate) fn detached(name: &str, addr: &str) -> Arc<Self> {
        let (tx, _rx) = mpsc::channel(1);
        Arc::new(Self {
            name: name.into(),
            addr: addr.into(),
            shared: Arc::new(Shared {
                isolated_until: AtomicU64::new(0),
                slots: Arc::new(Semaphore::new(1)),
            }),
            tx,
        })
    }
}

fn clock_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn millis_since_origin(t: Instant) -> u64 {
    // +1 so that 0 always means "never isolated".
    t.saturating_duration_since(clock_origin()).as_millis() as u64 + 1
}

/// (broker name, endpoint).
type BrokerKey = (String, String);

/// All broker senders of a producer, keyed by (broker name, endpoint, topic).
#[derive(Debug)]
pub(crate) struct Senders {
    brokers: Mutex<HashMap<BrokerKey, Arc<Shared>>>,
    queues: Mutex<HashMap<(BrokerKey, String), Arc<BrokerHandle>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    channels: Arc<Channels>,
    headers: Arc<RequestHeaders>,
    limits: Limits,
    queue_capacity: usize,
    shutdown: watch::Receiver<bool>,
}

impl Senders {
    pub(crate) fn new(
        config: &ProducerConfig,
        channels: Arc<Channels>,
        headers: Arc<RequestHeaders>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            brokers: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            channels,
            headers,
            limits: Limits {
                max_messages: config.max_batch_messages,
                max_bytes: config.max_batch_bytes,
                max_in_flight: config.max_in_flight_per_broker,
                linger: config.linger,
                timeout: config.request_timeout,
            },
            queue_capacity: config.sender_queue_capacity,
            shutdown,
        }
    }

    /// The handle of broker `name` at `addr` for `topic`, starting its sender on
    /// first use.
    pub(crate) fn broker(
        &self,
        topic: &str,
        name: &str,
        addr: &str,
    ) -> Result<Arc<BrokerHandle>, AttemptError> {
        let broker: BrokerKey = (name.to_string(), addr.to_string());
        let key = (broker, topic.to_string());
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = queues.get(&key) {
            return Ok(b.clone());
        }
        if *self.shutdown.borrow() {
            return Err(AttemptError::Closed);
        }
        let channel = self.channels.get(addr)?;
        let shared = self
            .brokers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.0.clone())
            .or_insert_with(|| {
                Arc::new(Shared {
                    isolated_until: AtomicU64::new(0),
                    slots: Arc::new(Semaphore::new(self.limits.max_in_flight)),
                })
            })
            .clone();
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        let handle = Arc::new(BrokerHandle {
            name: key.0.0.clone(),
            addr: key.0.1.clone(),
            shared: shared.clone(),
            tx,
        });
        let task = SenderTask {
            addr: key.0.1.clone(),
            client: Grpc::new(channel),
            headers: self.headers.clone(),
            limits: self.limits,
            slots: shared.slots.clone(),
            rx,
            shutdown: self.shutdown.clone(),
        };
        let join = tokio::spawn(task.run());
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(join);
        queues.insert(key, handle.clone());
        Ok(handle)
    }

    /// Waits (at most `grace`) for every sender to flush its queue and finish
    /// its outstanding requests. The shutdown signal must be sent first.
    pub(crate) async fn join(&self, grace: Duration) {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let deadline = tokio::time::Instant::now() + grace;
        for t in tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// The task that drains one (broker, topic) queue into coalesced requests.
struct SenderTask {
    addr: String,
    client: Grpc<Channel>,
    headers: Arc<RequestHeaders>,
    limits: Limits,
    /// The broker's request slots, shared with its other topics' tasks.
    slots: Arc<Semaphore>,
    rx: mpsc::Receiver<Job>,
    shutdown: watch::Receiver<bool>,
}

impl SenderTask {
    async fn run(mut self) {
        let slots = self.slots.clone();
        let mut carry: Option<Job> = None;
        let mut closing = false;
        loop {
            let first = match carry.take() {
                Some(job) => job,
                None => match self.next(&mut closing).await {
                    Some(job) => job,
                    None => break,
                },
            };
            // Wait for a free request slot; meanwhile more messages queue up
            // and join this request.
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            // With other requests still out, let the tasks that are already runnable (say,
            // callers just woken by a response) queue their messages before this request is
            // cut: one scheduler pass, no timer, so requests get fuller instead of leaving
            // with one message each. A lone request (nothing else out) leaves at once.
            if slots.available_permits() + 1 < self.limits.max_in_flight {
                tokio::task::yield_now().await;
            }
            // Room for what is queued now (at most a full request): no regrowth.
            let room = (self.rx.len() + 1).min(self.limits.max_messages);
            let mut batch = Batch::new(first, room);
            carry = batch.fill(&mut self.rx, &self.limits);
            if carry.is_none() && !self.limits.linger.is_zero() && !batch.full(&self.limits) {
                carry = batch.linger(&mut self.rx, &self.limits).await;
            }
            metrics::histogram!("sofamq_client_batch_messages").record(batch.jobs.len() as f64);
            tokio::spawn(send_batch(
                self.client.clone(),
                self.headers.clone(),
                self.limits.timeout,
                batch.jobs,
                permit,
            ));
        }
        // Let the outstanding requests finish before reporting done.
        let _ = slots.acquire_many(self.limits.max_in_flight as u32).await;
        tracing::debug!(broker = %self.addr, "sender stopped");
    }

    /// The next queued job; `None` once the queue is closed and drained.
    async fn next(&mut self, closing: &mut bool) -> Option<Job> {
        if *closing {
            return self.rx.recv().await;
        }
        tokio::select! {
            biased;
            job = self.rx.recv() => job,
            () = shutdown_signal(&mut self.shutdown) => {
                // Refuse new messages, but still send the queued ones.
                *closing = true;
                self.rx.close();
                self.rx.recv().await
            }
        }
    }
}

/// Resolves once shutdown is signalled (or the signal is gone).
pub(crate) async fn shutdown_signal(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Messages collected for one request.
struct Batch {
    jobs: Vec<Job>,
    bytes: usize,
    /// The first (and so only) job must go alone.
    alone: bool,
}

impl Batch {
    fn new(first: Job, capacity: usize) -> Self {
        let bytes = first.size;
        let alone = first.message.alone;
        let mut jobs = Vec::with_capacity(capacity);
        jobs.push(first);
        Self { jobs, bytes, alone }
    }

    /// Whether nothing more may join: a limit is reached, or the batch holds
    /// a message that must go alone.
    fn full(&self, limits: &Limits) -> bool {
        self.jobs.len() >= limits.max_messages || self.bytes >= limits.max_bytes || self.alone
    }

    /// Adds `job` if it fits; otherwise hands it back. A job that must go
    /// alone never joins a batch (which always holds a first job).
    fn push(&mut self, job: Job, limits: &Limits) -> Option<Job> {
        if job.message.alone || self.full(limits) || self.bytes + job.size > limits.max_bytes {
            return Some(job);
        }
        self.bytes += job.size;
        self.jobs.push(job);
        None
    }

    /// Takes what is already queued, up to the limits. Returns the first job
    /// that did not fit.
    fn fill(&mut self, rx: &mut mpsc::Receiver<Job>, limits: &Limits) -> Option<Job> {
        while !self.full(limits) {
            match rx.try_recv() {
                Ok(job) => {
                    if let Some(rest) = self.push(job, limits) {
                        return Some(rest);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Waits up to the linger for more messages. Returns the first job that
    /// did not fit.
    async fn linger(&mut self, rx: &mut mpsc::Receiver<Job>, limits: &Limits) -> Option<Job> {
        let deadline = tokio::time::Instant::now() + limits.linger;
        while !self.full(limits) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(job)) => {
                    if let Some(rest) = self.push(job, limits) {
                        return Some(rest);
                    }
                    if let Some(rest) = self.fill(rx, limits) {
                        return Some(rest);
                    }
                }
                Ok(None) | Err(_) => return None,
            }
        }
        None
    }
}

/// Sends one coalesced request and hands each caller its entry.
async fn send_batch(
    client: Grpc<Channel>,
    headers: Arc<RequestHeaders>,
    timeout: Duration,
    jobs: Vec<Job>,
    _permit: OwnedSemaphorePermit,
) {
    let mut replies = Vec::with_capacity(jobs.len());
    let mut messages = Vec::with_capacity(jobs.len());
    for job in jobs {
        messages.push(job.message);
        replies.push(job.reply);
    }
    let request = SendRequest { messages };
    let codec = SendCodec {
        size_hint: request.encoded_len(),
    };
    let mut req = tonic::Request::new(request);
    req.set_timeout(timeout);
    headers.apply(&mut req);
    let outcome = match tokio::time::timeout(timeout, call(client, req, codec)).await {
        Err(_) => Err(AttemptError::Timeout),
        Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
            Err(AttemptError::Timeout)
        }
        Ok(Err(status)) => Err(AttemptError::Transport(format!(
            "{:?}: {}",
            status.code(),
            status.message()
        ))),
        Ok(Ok(resp)) => {
            let not_held = resp.metadata().get(NOT_HELD_HEADER).is_some();
            Ok((resp.into_inner(), not_held))
        }
    };
    match outcome {
        Ok((resp, not_held)) => dispatch(replies, resp, not_held),
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// `MessagingService.SendMessage` through [`SendCodec`] (what the generated
/// client does with prost types).
async fn call(
    mut client: Grpc<Channel>,
    req: tonic::Request<SendRequest>,
    codec: SendCodec,
) -> Result<tonic::Response<SendResponse>, tonic::Status> {
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
    let mut req = req;
    req.extensions_mut().insert(tonic::GrpcMethod::new(
        "apache.rocketmq.v2.MessagingService",
        "SendMessage",
    ));
    client
        .unary(req, PathAndQuery::from_static(SEND_MESSAGE_PATH), codec)
        .await
}

/// Splits a response back to the callers, one entry per message in request
/// order. A response without one entry per message carries its verdict in
/// the top-level status, which then applies to every message; `not_held` (the
/// [`NOT_HELD_HEADER`] was set) marks such a refusal as one by a master that holds
/// none of the messages.
fn dispatch(replies: Vec<oneshot::Sender<EntryResult>>, resp: SendResponse, not_held: bool) {
    let top = resp.status.unwrap_or_default();
    if resp.entries.len() == replies.len() {
        for (reply, entry) in replies.into_iter().zip(resp.entries) {
            let status: &WireStatus = entry.status.as_ref().unwrap_or(&top);
            let result = if status.code == Code::Ok as i32 {
                Ok(Stored {
                    message_id: entry.message_id,
                    offset: entry.offset,
                    transaction_id: entry.transaction_id,
                    recall_handle: entry.recall_handle,
                })
            } else {
                Err(AttemptError::Status {
                    code: status.code,
                    message: status.message(),
                })
            };
            let _ = reply.send(result);
        }
        return;
    }
    let err = if top.code == Code::HaNotAvailable as i32 && not_held {
        AttemptError::NotHeld {
            code: top.code,
            message: top.message(),
        }
    } else if top.code != Code::Ok as i32 {
        AttemptError::Status {
            code: top.code,
            message: top.message(),
        }
    } else {
        AttemptError::Transport(format!(
            "protocol error: {} entries answered for {} messages",
            resp.entries.len(),
            replies.len()
        ))
    };
    for reply in replies {
        let _ = reply.send(Err(err.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sofamq_proto::prost::Message as _;
    use sofamq_proto::v2::{SendMessageResponse, SendResultEntry, Status};

    /// The response as the sender sees it: encoded by prost, parsed by ours.
    fn parsed(resp: &SendMessageResponse) -> SendResponse {
        crate::wire::parse_response(&Bytes::from(resp.encode_to_vec())).unwrap()
    }

    fn replies(
        n: usize,
    ) -> (
        Vec<oneshot::Sender<EntryResult>>,
        Vec<oneshot::Receiver<EntryResult>>,
    ) {
        (0..n).map(|_| oneshot::channel()).unzip()
    }

    fn entry(code: Code, offset: i64) -> SendResultEntry {
        SendResultEntry {
            status: Some(Status {
                code: code as i32,
                message: format!("{code:?}"),
            }),
            message_id: format!("m{offset}"),
            offset,
            ..Default::default()
        }
    }

    #[test]
    fn entries_go_back_to_their_callers_in_order() {
        let (tx, mut rx) = replies(3);
        dispatch(
            tx,
            parsed(&SendMessageResponse {
                status: Some(Status {
                    code: Code::MultipleResults as i32,
                    message: String::new(),
                }),
                entries: vec![
                    entry(Code::Ok, 7),
                    entry(Code::IllegalMessageTag, 0),
                    entry(Code::Ok, 9),
                ],
            }),
            false,
        );
        let first = rx[0].try_recv().unwrap().unwrap();
        assert_eq!((first.offset, &first.message_id[..]), (7, &b"m7"[..]));
        let err = rx[1].try_recv().unwrap().unwrap_err();
        assert_eq!(err.code(), Some(Code::IllegalMessageTag as i32));
        assert_eq!(err.message(), "IllegalMessageTag");
        assert_eq!(rx[2].try_recv().unwrap().unwrap().offset, 9);
    }

    #[test]
    fn top_level_status_applies_when_entries_are_missing() {
        let (tx, mut rx) = replies(2);
        dispatch(
            tx,
            parsed(&SendMessageResponse {
                status: Some(Status {
                    code: Code::TooManyRequests as i32,
                    message: "slow down".into(),
                }),
                entries: vec![],
            }),
            false,
        );
        for r in &mut rx {
            assert_eq!(
                r.try_recv().unwrap().unwrap_err().code(),
                Some(Code::TooManyRequests as i32)
            );
        }
        let (tx, mut rx) = replies(2);
        dispatch(
            tx,
            parsed(&SendMessageResponse {
                status: Some(Status {
                    code: Code::Ok as i32,
                    message: String::new(),
                }),
                entries: vec![entry(Code::Ok, 1)],
            }),
            false,
        );
        assert!(matches!(
            rx[0].try_recv().unwrap(),
            Err(AttemptError::Transport(_))
        ));
    }

    /// HA_NOT_AVAILABLE with the not-held header is told apart from a plain one; the
    /// header means nothing beside another code.
    #[test]
    fn a_refusal_by_a_master_holding_none_of_the_messages_is_told_apart() {
        let refusal = |code: Code| SendMessageResponse {
            status: Some(Status {
                code: code as i32,
                message: "1 of 2 required replicas in sync".into(),
            }),
            entries: vec![],
        };
        let (tx, mut rx) = replies(2);
        dispatch(tx, parsed(&refusal(Code::HaNotAvailable)), true);
        for r in &mut rx {
            let err = r.try_recv().unwrap().unwrap_err();
            assert!(matches!(err, AttemptError::NotHeld { .. }), "{err:?}");
            assert_eq!(err.code(), Some(Code::HaNotAvailable as i32));
        }
        let (tx, mut rx) = replies(1);
        dispatch(tx, parsed(&refusal(Code::HaNotAvailable)), false);
        let err = rx[0].try_recv().unwrap().unwrap_err();
        assert!(matches!(err, AttemptError::Status { .. }), "{err:?}");
        let (tx, mut rx) = replies(1);
        dispatch(tx, parsed(&refusal(Code::TooManyRequests)), true);
        let err = rx[0].try_recv().unwrap().unwrap_err();
        assert!(matches!(err, AttemptError::Status { .. }), "{err:?}");
    }

    #[test]
    fn isolation_expires() {
        let b = BrokerHandle::detached("a", "127.0.0.1:1");
        let now = Instant::now();
        assert!(!b.is_isolated(now));
        b.isolate(now, Duration::from_secs(5));
        assert!(b.is_isolated(now));
        assert!(b.is_isolated(now + Duration::from_secs(4)));
        assert!(!b.is_isolated(now + Duration::from_secs(6)));
    }

    fn job(size: usize) -> (Job, oneshot::Receiver<EntryResult>) {
        let (reply, rx) = oneshot::channel();
        (
            Job {
                message: EncodedMessage::default(),
                size,
                reply,
            },
            rx,
        )
    }

    fn alone_job(size: usize) -> (Job, oneshot::Receiver<EntryResult>) {
        let (mut j, rx) = job(size);
        j.message.alone = true;
        (j, rx)
    }

    #[test]
    fn messages_marked_alone_are_never_coalesced() {
        let limits = Limits {
            max_messages: 100,
            max_bytes: 1 << 20,
            max_in_flight: 1,
            linger: Duration::ZERO,
            timeout: Duration::from_secs(1),
        };
        // Queue: normal, alone, alone, normal, normal.
        let (tx, mut rx) = mpsc::channel(16);
        let mut keep = Vec::new();
        for alone in [false, true, true, false, false] {
            let (j, r) = if alone { alone_job(10) } else { job(10) };
            keep.push(r);
            tx.try_send(j).ok().unwrap();
        }
        let mut sizes = Vec::new();
        let mut carry: Option<Job> = None;
        loop {
            let first = match carry.take() {
                Some(j) => j,
                None => match rx.try_recv() {
                    Ok(j) => j,
                    Err(_) => break,
                },
            };
            let mut batch = Batch::new(first, 4);
            carry = batch.fill(&mut rx, &limits);
            let alone = batch.jobs.iter().filter(|j| j.message.alone).count();
            assert!(
                alone == 0 || batch.jobs.len() == 1,
                "an alone job was coalesced"
            );
            sizes.push((batch.jobs.len(), alone));
        }
        assert_eq!(sizes, [(1, 0), (1, 1), (1, 1), (2, 0)]);
    }

    #[test]
    fn fill_respects_message_and_byte_limits() {
        let limits = Limits {
            max_messages: 3,
            max_bytes: 250,
            max_in_flight: 1,
            linger: Duration::ZERO,
            timeout: Duration::from_secs(1),
        };
        let (tx, mut rx) = mpsc::channel(16);
        let mut keep = Vec::new();
        for _ in 0..5 {
            let (j, r) = job(10);
            keep.push(r);
            tx.try_send(j).ok().unwrap();
        }
        let (first, _r) = job(10);
        let mut batch = Batch::new(first, 1);
        assert!(batch.fill(&mut rx, &limits).is_none());
        assert_eq!(batch.jobs.len(), 3, "message limit");

        let (tx, mut rx) = mpsc::channel(16);
        for size in [10, 200, 10] {
            let (j, r) = job(size);
            keep.push(r);
            tx.try_send(j).ok().unwrap();
        }
        let (first, _r) = job(100);
        let mut batch = Batch::new(first, 1);
        // The 10-byte job fits; the 200-byte one would pass the byte limit.
        let rest = batch.fill(&mut rx, &limits).expect("carried over");
        assert_eq!(rest.size, 200);
        assert_eq!(batch.jobs.len(), 2);
        assert_eq!(batch.bytes, 110);
    }
}
