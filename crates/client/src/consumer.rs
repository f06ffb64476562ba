//! SimpleConsumer: receive messages, then ack them or change their
//! invisibility (RocketMQ 5 style, server-side consumption state).
//!
//! Routes come from QueryRoute against the access points (same channels and
//! headers as the producer); a receive goes to the topic's readable masters
//! in turn and long-polls there. Failed RPCs are retried on transport
//! errors and retryable codes with the same backoff rules as sends.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sofamq_proto::v2::{
    self, AckMessageEntry, AckMessageRequest, ChangeInvisibleDurationRequest, Code,
    FilterExpression, FilterType, MessageQueue, QueryRouteRequest, ReceiveMessageRequest, Resource,
    messaging_service_client::MessagingServiceClient, receive_message_response::Content,
};

use crate::address::{endpoints_of, join_host_port};
use crate::connection::Channels;
use crate::error::ClientError;
use crate::headers::{RequestHeaders, host_name};
use crate::id::random_u64;
use crate::received::ReceivedMessage;
use crate::retry::{AttemptError, classify};

/// Consumer settings; `new` gives defaults, `with_*` change them.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// NameServer (or broker) addresses, `host:port`.
    pub access_points: Vec<String>,
    /// Consumer group.
    pub group: String,
    /// Client id sent as `x-mq-client-id` (generated when empty).
    pub client_id: String,
    /// Timeout of one RPC (a receive may take `long_polling_timeout` more).
    pub request_timeout: Duration,
    /// How long a receive waits on the broker for messages.
    pub long_polling_timeout: Duration,
    /// Attempts of one RPC (ack, nack, route) before giving up.
    pub max_rpc_attempts: u32,
    /// Remember this many acked message ids and drop redeliveries of them
    /// (acking them again); 0 turns deduplication off.
    pub dedupe_window: usize,
    /// Sign every request with these credentials (servers with ACL on).
    pub credentials: Option<crate::auth::Credentials>,
    /// Connect with TLS.
    pub tls: Option<crate::auth::TlsOptions>,
}

impl ConsumerConfig {
    /// Defaults for `group` through `access_points`.
    pub fn new<I, S>(access_points: I, group: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            access_points: access_points.into_iter().map(Into::into).collect(),
            group: group.into(),
            client_id: String::new(),
            request_timeout: Duration::from_secs(3),
            long_polling_timeout: Duration::from_secs(5),
            max_rpc_attempts: 3,
            dedupe_window: 0,
            credentials: None,
            tls: None,
        }
    }

    /// Signs every request with `access_key` / `secret_key`.
    pub fn with_credentials(
        mut self,
        access_key: impl Into<String>,
        secret_key: impl Into<String>,
    ) -> Self {
        self.credentials = Some(crate::auth::Credentials::new(access_key, secret_key));
        self
    }

    /// Connects with TLS, trusting the PEM CA certificate at `ca_path`.
    pub fn with_tls(mut self, tls: crate::auth::TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the long polling timeout.
    pub fn with_long_polling_timeout(mut self, d: Duration) -> Self {
        self.long_polling_timeout = d;
        self
    }

    /// Sets the RPC timeout.
    pub fn with_request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// Enables deduplication by message id over the last `n` acked ids.
    pub fn with_dedupe_window(mut self, n: usize) -> Self {
        self.dedupe_window = n;
        self
    }

    fn validate(&self) -> Result<(), ClientError> {
        if self.access_points.is_empty() {
            return Err(ClientError::Config("no access point".into()));
        }
        if self.group.is_empty() {
            return Err(ClientError::Config("consumer group is empty".into()));
        }
        if self.max_rpc_attempts == 0 || self.request_timeout.is_zero() {
            return Err(ClientError::Config(
                "max_rpc_attempts and request_timeout must be > 0".into(),
            ));
        }
        Ok(())
    }
}

/// A consume RPC failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op} failed{}: {message}", code.map(|c| format!(" with code {c}")).unwrap_or_default())]
pub struct ConsumeError {
    /// Which operation.
    pub op: &'static str,
    /// Status code, when the server answered one (40013 = stale receipt handle).
    pub code: Option<i32>,
    /// What went wrong.
    pub message: String,
}

impl ConsumeError {
    fn from_attempt(op: &'static str, e: &AttemptError) -> Self {
        Self {
            op,
            code: e.code(),
            message: e.message(),
        }
    }
}

fn resource(name: &str) -> Option<Resource> {
    Some(Resource {
        resource_namespace: String::new(),
        name: name.to_string(),
    })
}

/// The readable masters of a route, as (broker name, `host:port`), sorted.
pub(crate) fn readable_masters(resp: &v2::QueryRouteResponse) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for mq in &resp.message_queues {
        let readable = matches!(
            v2::Permission::try_from(mq.permission),
            Ok(v2::Permission::Read | v2::Permission::ReadWrite)
        );
        let Some(b) = mq.broker.as_ref() else {
            continue;
        };
        if !readable || b.id != 0 {
            continue;
        }
        let Some(addr) = b
            .endpoints
            .as_ref()
            .and_then(|e| e.addresses.first())
            .and_then(|a| {
                u16::try_from(a.port)
                    .ok()
                    .map(|p| join_host_port(&a.host, p))
            })
        else {
            continue;
        };
        if !out.iter().any(|(n, a)| *n == b.name && *a == addr) {
            out.push((b.name.clone(), addr));
        }
    }
    out.sort();
    out
}

struct Dedupe {
    cap: usize,
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Dedupe {
    fn insert(&mut self, id: &str) {
        if self.cap == 0 || !self.set.insert(id.to_string()) {
            return;
        }
        self.order.push_back(id.to_string());
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

pub(crate) struct Core {
    pub(crate) cfg: ConsumerConfig,
    channels: Channels,
    headers: RequestHeaders,
    subscriptions: Vec<(String, String)>,
    routes: Mutex<HashMap<String, Vec<(String, String)>>>,
    cursor: AtomicUsize,
    dedupe: Mutex<Dedupe>,
}

/// Receive, then ack or change invisibility; see the module docs.
#[derive(Clone)]
pub struct SimpleConsumer {
    pub(crate) core: Arc<Core>,
}

impl SimpleConsumer {
    /// Starts a consumer of `group` for `subscriptions` (topic, tag filter
    /// expression such as `*` or `a || b`). Fetches every topic's route.
    pub async fn start(
        cfg: ConsumerConfig,
        subscriptions: Vec<(String, String)>,
    ) -> Result<Self, ClientError> {
        cfg.validate()?;
        if subscriptions.is_empty() {
            return Err(ClientError::Config("no subscription".into()));
        }
        let client_id = if cfg.client_id.is_empty() {
            format!(
                "{}@{}@{:016X}",
                host_name(),
                std::process::id(),
                random_u64()
            )
        } else {
            cfg.client_id.clone()
        };
        let core = Core {
            headers: RequestHeaders::new(&client_id, cfg.credentials.clone())?,
            channels: Channels::new(cfg.request_timeout, cfg.tls.as_ref())?,
            subscriptions,
            routes: Mutex::new(HashMap::new()),
            cursor: AtomicUsize::new(0),
            dedupe: Mutex::new(Dedupe {
                cap: cfg.dedupe_window,
                set: HashSet::new(),
                order: VecDeque::new(),
            }),
            cfg,
        };
        let c = Self {
            core: Arc::new(core),
        };
        for (t, _) in c.core.subscriptions.clone() {
            c.core
                .route(&t, true)
                .await
                .map_err(|e| ClientError::Config(format!("route of {t}: {}", e.message())))?;
        }
        Ok(c)
    }

    /// Receives up to `max` messages, invisible to the group's other
    /// consumers for `invisible`. Empty when none arrived within the long
    /// polling timeout.
    pub async fn receive(
        &self,
        max: u32,
        invisible: Duration,
    ) -> Result<Vec<ReceivedMessage>, ConsumeError> {
        self.core.receive(max, invisible).await
    }

    /// Acknowledges a message: it is finished for the group.
    pub async fn ack(&self, msg: &ReceivedMessage) -> Result<(), ConsumeError> {
        self.core.ack_many(std::slice::from_ref(msg)).await
    }

    /// Acknowledges messages of one receive in one request per broker and
    /// topic (the broker writes them as one log record).
    pub async fn ack_all(&self, msgs: &[ReceivedMessage]) -> Result<(), ConsumeError> {
        let mut by: HashMap<(&str, &str), Vec<ReceivedMessage>> = HashMap::new();
        for m in msgs {
            by.entry((m.endpoint.as_str(), m.topic.as_str()))
                .or_default()
                .push(m.clone());
        }
        for part in by.into_values() {
            self.core.ack_many(&part).await?;
        }
        Ok(())
    }

    /// Makes a received message invisible for `d` from now (extend, or nack
    /// with a backoff: it is redelivered with attempt + 1 after `d`).
    /// Updates the message's receipt handle.
    pub async fn change_invisible_duration(
        &self,
        msg: &mut ReceivedMessage,
        d: Duration,
    ) -> Result<(), ConsumeError> {
        self.core.change_invisible(msg, d).await
    }
}

impl Core {
    fn client(
        &self,
        addr: &str,
    ) -> Result<MessagingServiceClient<tonic::transport::Channel>, AttemptError> {
        Ok(MessagingServiceClient::new(self.channels.get(addr)?))
    }

    fn request<T>(&self, body: T, timeout: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(body);
        req.set_timeout(timeout);
        self.headers.apply(&mut req);
        req
    }

    async fn route(
        &self,
        topic: &str,
        refresh: bool,
    ) -> Result<Vec<(String, String)>, AttemptError> {
        if !refresh
            && let Some(r) = self
                .routes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(topic)
        {
            return Ok(r.clone());
        }
        let mut last = AttemptError::NoRoute("no access point".into());
        for ap in &self.cfg.access_points {
            let mut req = self.request(
                QueryRouteRequest {
                    topic: resource(topic),
                    endpoints: Some(endpoints_of(ap)),
                },
                self.cfg.request_timeout,
            );
            req.metadata_mut().insert(
                crate::routes::DIRECT_ROUTE_HEADER,
                tonic::metadata::MetadataValue::from_static("direct"),
            );
            let mut c = self.client(ap)?;
            match tokio::time::timeout(self.cfg.request_timeout, c.query_route(req)).await {
                Err(_) => last = AttemptError::Timeout,
                Ok(Err(s)) => last = AttemptError::Transport(s.message().to_string()),
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    let st = r.status.clone().unwrap_or_default();
                    if st.code != Code::Ok as i32 {
                        last = AttemptError::Status {
                            code: st.code,
                            message: st.message,
                        };
                        continue;
                    }
                    let m = readable_masters(&r);
                    if m.is_empty() {
                        return Err(AttemptError::NoRoute(format!(
                            "topic {topic} has no readable master"
                        )));
                    }
                    self.routes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(topic.to_string(), m.clone());
                    return Ok(m);
                }
            }
        }
        Err(last)
    }

    pub(crate) async fn receive(
        &self,
        max: u32,
        invisible: Duration,
    ) -> Result<Vec<ReceivedMessage>, ConsumeError> {
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        let (topic, expr) = &self.subscriptions[n % self.subscriptions.len()];
        let brokers = self
            .route(topic, false)
            .await
            .map_err(|e| ConsumeError::from_attempt("receive", &e))?;
        let (_, addr) = &brokers[(n / self.subscriptions.len()) % brokers.len()];
        let body = ReceiveMessageRequest {
            group: resource(&self.cfg.group),
            message_queue: Some(MessageQueue {
                topic: resource(topic),
                id: -1,
                permission: v2::Permission::ReadWrite as i32,
                broker: None,
                accept_message_types: Vec::new(),
            }),
            filter_expression: Some(FilterExpression {
                r#type: FilterType::Tag as i32,
                expression: expr.clone(),
            }),
            batch_size: max.clamp(1, i32::MAX as u32) as i32,
            invisible_duration: Some(duration(invisible)),
            auto_renew: false,
            long_polling_timeout: Some(duration(self.cfg.long_polling_timeout)),
            attempt_id: None,
        };
        let timeout = self.cfg.long_polling_timeout + self.cfg.request_timeout;
        let result = async {
            let mut c = self.client(addr)?;
            let mut stream = c
                .receive_message(self.request(body, timeout))
                .await
                .map_err(|s| AttemptError::Transport(s.message().to_string()))?
                .into_inner();
            let mut out = Vec::new();
            let mut status = None;
            while let Some(item) = stream
                .message()
                .await
                .map_err(|s| AttemptError::Transport(s.message().to_string()))?
            {
                match item.content {
                    Some(Content::Status(s)) => status = Some(s),
                    Some(Content::Message(m)) => out.push(ReceivedMessage::from_wire(m, addr)),
                    _ => {}
                }
            }
            let s = status.unwrap_or_default();
            if s.code == Code::Ok as i32 || s.code == Code::MessageNotFound as i32 {
                Ok(out)
            } else {
                Err(AttemptError::Status {
                    code: s.code,
                    message: s.message,
                })
            }
        };
        let out = match tokio::time::timeout(timeout + Duration::from_secs(1), result).await {
            Err(_) => Err(AttemptError::Timeout),
            Ok(r) => r,
        };
        let out = match out {
            Ok(v) => v,
            Err(e) => {
                if classify(&e, brokers.len() > 1).refresh_route {
                    let _ = self.route(topic, true).await;
                }
                return Err(ConsumeError::from_attempt("receive", &e));
            }
        };
        if self.cfg.dedupe_window == 0 {
            return Ok(out);
        }
        let mut keep = Vec::with_capacity(out.len());
        for m in out {
            let dup = self
                .dedupe
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set
                .contains(&m.message_id);
            if dup {
                tracing::debug!(message_id = %m.message_id, "duplicate delivery dropped");
                let _ = self.ack_many(std::slice::from_ref(&m)).await;
            } else {
                keep.push(m);
            }
        }
        Ok(keep)
    }

    async fn retrying<T, F, Fut>(&self, op: &'static str, mut f: F) -> Result<T, ConsumeError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, AttemptError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = match tokio::time::timeout(self.cfg.request_timeout, f()).await {
                Err(_) => Err(AttemptError::Timeout),
                Ok(r) => r,
            };
            match r {
                Ok(v) => return Ok(v),
                Err(e) => {
                    if attempt >= self.cfg.max_rpc_attempts || !classify(&e, false).retry {
                        return Err(ConsumeError::from_attempt(op, &e));
                    }
                    tokio::time::sleep(Duration::from_millis(10 << attempt.min(6))).await;
                }
            }
        }
    }

    /// Acks messages of one broker and topic in one request.
    pub(crate) async fn ack_many(&self, msgs: &[ReceivedMessage]) -> Result<(), ConsumeError> {
        let Some(msg) = msgs.first() else {
            return Ok(());
        };
        self.retrying("ack", || async {
            let mut c = self.client(&msg.endpoint)?;
            let req = self.request(
                AckMessageRequest {
                    group: resource(&self.cfg.group),
                    topic: resource(&msg.topic),
                    entries: msgs
                        .iter()
                        .map(|m| AckMessageEntry {
                            message_id: m.message_id.clone(),
                            receipt_handle: m.receipt_handle.clone(),
                            lite_topic: None,
                        })
                        .collect(),
                },
                self.cfg.request_timeout,
            );
            let r = c
                .ack_message(req)
                .await
                .map_err(|s| AttemptError::Transport(s.message().to_string()))?
                .into_inner();
            let s = r.status.unwrap_or_default();
            if s.code == Code::Ok as i32 {
                Ok(())
            } else {
                Err(AttemptError::Status {
                    code: s.code,
                    message: s.message,
                })
            }
        })
        .await?;
        let mut d = self.dedupe.lock().unwrap_or_else(|e| e.into_inner());
        for m in msgs {
            d.insert(&m.message_id);
        }
        Ok(())
    }

    pub(crate) async fn change_invisible(
        &self,
        msg: &mut ReceivedMessage,
        d: Duration,
    ) -> Result<(), ConsumeError> {
        let m = &*msg;
        let handle = self
            .retrying("change invisible duration", || async {
                let mut c = self.client(&m.endpoint)?;
                let req = self.request(
                    ChangeInvisibleDurationRequest {
                        group: resource(&self.cfg.group),
                        topic: resource(&m.topic),
                        receipt_handle: m.receipt_handle.clone(),
                        invisible_duration: Some(duration(d)),
                        message_id: m.message_id.clone(),
                        lite_topic: None,
                        suspend: None,
                    },
                    self.cfg.request_timeout,
                );
                let r = c
                    .change_invisible_duration(req)
                    .await
                    .map_err(|s| AttemptError::Transport(s.message().to_string()))?
                    .into_inner();
                let s = r.status.unwrap_or_default();
                if s.code == Code::Ok as i32 {
                    Ok(r.receipt_handle)
                } else {
                    Err(AttemptError::Status {
                        code: s.code,
                        message: s.message,
                    })
                }
            })
            .await?;
        msg.receipt_handle = handle;
        Ok(())
    }
}

pub(crate) fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}
