//! Proxy mode: the name server as the one endpoint a client uses for every RPC.
//!
//! The official RocketMQ 5 clients poll routes rarely (Python every 30 s, Node and Rust
//! never for a producer), retry at once on the same endpoint, and some never retry: when a
//! master dies they keep talking to its address. In proxy mode `QueryRoute` answers with the
//! endpoint the client reached (as RocketMQ 5's own proxy does), so every client RPC lands
//! here, and the name server forwards it to the **current** master of the broker group,
//! which its registry learns from heartbeats. While a group has no reachable master (an
//! election is running) a request is held and retried for up to `hold_ms` (bounded by the
//! client's own deadline) instead of failing at once; after that it fails with
//! HA_NOT_AVAILABLE, which the clients retry.
//!
//! Broker-issued receipt handles do not name their group, so handles pass through here
//! wrapped with it ([`handles`]); Telemetry streams are relayed to every master
//! ([`telemetry`]) so that transaction check-backs reach producers behind the proxy.
//!
//! A client that asks for direct routes (header `x-sofamq-route: direct`: the SofaMQ SDK,
//! which follows failovers itself) gets the brokers' own endpoints, as without the proxy.

pub mod forward;
pub mod handles;
pub mod pins;
pub mod telemetry;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sofamq_proto::v2::Code;
use sofamq_proto::v2::messaging_service_client::MessagingServiceClient;
use tonic::metadata::{KeyAndValueRef, MetadataMap};
use tonic::transport::{Channel, Endpoint};

pub use crate::config::ProxyOptions;
use crate::registry::{MasterRoute, Registry, TopicGroup};

/// Header a client sets to get the brokers' own endpoints in routes even in proxy mode.
pub const DIRECT_ROUTE_HEADER: &str = "x-sofamq-route";

/// Topics remembered for `recent_topic_ms` at most (past this the memory starts over).
const MAX_SEEN_TOPICS: usize = 100_000;

/// Why a forwarded call got no answer from a broker.
#[derive(Debug, Clone)]
pub struct NoAnswer {
    /// The status to give the client.
    pub code: Code,
    /// What happened.
    pub message: String,
}

/// The forwarding core: channels to brokers, master lookup, holding.
#[derive(Debug)]
pub struct Proxy {
    registry: Arc<Registry>,
    opts: ProxyOptions,
    tls: Option<tonic::transport::ClientTlsConfig>,
    channels: parking_lot::Mutex<HashMap<String, Channel>>,
    /// When each topic was last found in a route (bounded; see `recent_topic_ms`).
    seen: parking_lot::Mutex<HashMap<String, Instant>>,
    /// The broker group of each recent send, by message id (retries go there too).
    pins: pins::SendPins,
    /// When this proxy was made (see `start_wait_ms`).
    started: Instant,
    next: AtomicUsize,
    /// Counters for `/metrics`.
    pub counters: Counters,
}

/// What the proxy did, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Calls forwarded to a broker (each try counts).
    pub forwarded: AtomicU64,
    /// Requests that had to wait for a master at least once.
    pub held: AtomicU64,
    /// Requests whose hold ran out.
    pub hold_expired: AtomicU64,
    /// Sends moved to another group: theirs takes no writes and holds none of them.
    pub moved: AtomicU64,
}

/// What to do with one try's outcome.
pub enum Verdict<T> {
    /// Give it to the client.
    Done(T),
    /// The group had no usable master for it: try again (the value is what the client
    /// gets if the hold runs out).
    Retry(T, String),
}

impl Proxy {
    /// A proxy over `registry`. Fails when the broker TLS CA file cannot be read.
    pub fn new(registry: Arc<Registry>, opts: ProxyOptions) -> Result<Self, String> {
        let tls = if opts.broker_tls {
            let mut t = tonic::transport::ClientTlsConfig::new();
            t = match &opts.broker_tls_ca_path {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        format!("reading proxy.broker_tls_ca_path {}: {e}", path.display())
                    })?;
                    t.ca_certificate(tonic::transport::Certificate::from_pem(pem))
                }
                None => t.with_native_roots(),
            };
            if let Some(n) = &opts.broker_tls_server_name {
                t = t.domain_name(n.clone());
            }
            Some(t)
        } else {
            None
        };
        let pins = pins::SendPins::new(opts.send_pins, Duration::from_millis(opts.send_pin_ms));
        Ok(Self {
            registry,
            opts,
            tls,
            channels: parking_lot::Mutex::new(HashMap::new()),
            seen: parking_lot::Mutex::new(HashMap::new()),
            pins,
            started: Instant::now(),
            next: AtomicUsize::new(0),
            counters: Counters::default(),
        })
    }

    /// The broker group of each recent send, by message id.
    pub fn pins(&self) -> &pins::SendPins {
        &self.pins
    }

    /// The settings.
    pub fn options(&self) -> &ProxyOptions {
        &self.opts
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A client for the broker at `addr` (`host:port`), channels cached per address.
    pub fn client(&self, addr: &str) -> Result<MessagingServiceClient<Channel>, NoAnswer> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(addr) {
            return Ok(MessagingServiceClient::new(c.clone()).max_decoding_message_size(usize::MAX));
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| NoAnswer {
            code: Code::InternalServerError,
            message: format!("broker address {addr}: {e}"),
        })?;
        if let Some(t) = &self.tls {
            ep = ep.tls_config(t.clone()).map_err(|e| NoAnswer {
                code: Code::InternalServerError,
                message: format!("TLS towards broker {addr}: {e}"),
            })?;
        }
        let ch = ep
            .connect_timeout(Duration::from_millis(self.opts.connect_timeout_ms))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        // Bounded: one entry per broker address ever seen (brokers are bounded by the
        // registry), dropped in bulk if it grows past that.
        if channels.len() >= 4 * 4096 {
            channels.clear();
        }
        channels.insert(addr.to_string(), ch.clone());
        Ok(MessagingServiceClient::new(ch).max_decoding_message_size(usize::MAX))
    }

    /// Live masters serving `topic`.
    pub fn topic_routes(&self, topic: &str) -> Vec<MasterRoute> {
        let routes = self.registry.master_routes(topic, Instant::now());
        if !routes.is_empty() {
            self.mark_seen(topic);
        }
        routes
    }

    /// Notes that `topic` was found in a route now (see [`Proxy::seen_recently`]).
    pub fn mark_seen(&self, topic: &str) {
        let now = Instant::now();
        let mut seen = self.seen.lock();
        // Every proxied request passes here: no allocation for a topic already known.
        if let Some(t) = seen.get_mut(topic) {
            *t = now;
        } else {
            if seen.len() >= MAX_SEEN_TOPICS {
                seen.clear();
            }
            seen.insert(topic.to_string(), now);
        }
    }

    /// Whether `topic` was in a route within `recent_topic_ms`.
    pub fn seen_recently(&self, topic: &str) -> bool {
        self.seen
            .lock()
            .get(topic)
            .is_some_and(|t| t.elapsed() <= Duration::from_millis(self.opts.recent_topic_ms))
    }

    /// The groups of `groups` that may take a send now: those with a master, and those
    /// without one for at most `failover_wait_ms` (failing over: the send is held for
    /// them). The registry dates that from the end of the last master's registration, or,
    /// on a name server that never saw one, from the group's first registration here.
    pub fn sendable(&self, mut groups: Vec<TopicGroup>, now: Instant) -> Vec<TopicGroup> {
        let wait = Duration::from_millis(self.opts.failover_wait_ms);
        groups.retain(|g| g.master || now.saturating_duration_since(g.masterless_since) <= wait);
        groups
    }

    /// Until when sends wait for the registry to fill after the start (`start_wait_ms`).
    pub fn warm_at(&self) -> Instant {
        self.started + Duration::from_millis(self.opts.start_wait_ms)
    }

    /// A round-robin pick among `n`.
    pub fn pick(&self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        }
    }

    /// When holding must stop for a request with metadata `md`: `hold_ms` from now, but
    /// never later than the client's own deadline less the margin.
    pub fn hold_deadline(&self, md: &MetadataMap) -> Instant {
        let now = Instant::now();
        let hold = Duration::from_millis(self.opts.hold_ms);
        match client_timeout(md) {
            Some(t) => {
                now + hold
                    .min(t.saturating_sub(Duration::from_millis(self.opts.deadline_margin_ms)))
            }
            None => now + hold,
        }
    }

    /// The deadline to put on a forwarded call.
    pub fn forward_timeout(&self, md: &MetadataMap) -> Duration {
        client_timeout(md)
            .unwrap_or(Duration::from_millis(self.opts.forward_timeout_ms))
            .min(Duration::from_millis(self.opts.forward_timeout_ms))
    }

    /// Runs `attempt` against the current master of `group` until it is done, or `deadline`
    /// passes (then the last retryable answer, or the reason there was none).
    pub async fn hold<T, F, Fut>(
        &self,
        group: &str,
        deadline: Instant,
        mut attempt: F,
    ) -> Result<T, NoAnswer>
    where
        F: FnMut(MessagingServiceClient<Channel>, String) -> Fut,
        Fut: Future<Output = Verdict<T>>,
    {
        let retry = Duration::from_millis(self.opts.retry_ms);
        let mut last: Option<T> = None;
        let mut tries = 0u32;
        loop {
            tries += 1;
            if tries == 2 {
                self.counters.held.fetch_add(1, Ordering::Relaxed);
            }
            let why = match self.registry.master_of(group, Instant::now()) {
                None => format!("broker group {group} has no master"),
                Some(addr) => {
                    let client = self.client(&addr)?;
                    self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                    match attempt(client, addr.clone()).await {
                        Verdict::Done(t) => return Ok(t),
                        Verdict::Retry(t, w) => {
                            last = Some(t);
                            format!("{group} master {addr}: {w}")
                        }
                    }
                }
            };
            if Instant::now() + retry > deadline {
                self.counters.hold_expired.fetch_add(1, Ordering::Relaxed);
                return match last {
                    Some(t) => Ok(t),
                    None => Err(NoAnswer {
                        code: Code::HaNotAvailable,
                        message: format!("proxy: {why}; gave up after holding the request"),
                    }),
                };
            }
            tokio::time::sleep(retry).await;
        }
    }
}

/// The client's `grpc-timeout`, if it sent one.
pub fn client_timeout(md: &MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A request to forward: `msg` with the client's credentials and identity headers.
pub fn forward_request<T>(md: &MetadataMap, msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    copy_identity(md, r.metadata_mut());
    r.set_timeout(timeout);
    r
}

/// Copies `authorization` and the `x-mq-*` headers (client id, language, signature date...).
pub fn copy_identity(from: &MetadataMap, to: &mut MetadataMap) {
    for kv in from.iter() {
        if let KeyAndValueRef::Ascii(k, v) = kv
            && (k.as_str() == "authorization" || k.as_str().starts_with("x-mq-"))
        {
            to.insert(k.clone(), v.clone());
        }
    }
}

/// Whether a transport-level failure means "that broker is not there" (try again, possibly
/// at another master). A send that failed this way may have been stored before the broker
/// died; the retry carries the same message id and the broker group's idempotence window
/// (rebuilt from the log on promotion) answers it with the stored copy.
pub fn unreachable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// Whether a broker's answer means "no usable master here right now".
pub fn not_master(status: Option<&sofamq_proto::v2::Status>) -> bool {
    status.is_some_and(|s| s.code == Code::HaNotAvailable as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_is_parsed() {
        let mut md = MetadataMap::new();
        assert_eq!(client_timeout(&md), None);
        md.insert("grpc-timeout", "2999m".parse().unwrap());
        assert_eq!(client_timeout(&md), Some(Duration::from_millis(2999)));
        md.insert("grpc-timeout", "3S".parse().unwrap());
        assert_eq!(client_timeout(&md), Some(Duration::from_secs(3)));
        md.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(client_timeout(&md), None);
    }

    fn group(name: &str, masterless_since: Option<Instant>) -> TopicGroup {
        TopicGroup {
            broker_name: name.into(),
            queue_count: 4,
            master: masterless_since.is_none(),
            masterless_since: masterless_since.unwrap_or_else(Instant::now),
        }
    }

    #[test]
    fn a_group_failing_over_keeps_its_sends_for_a_while() {
        let p = Proxy::new(
            Arc::new(Registry::new(crate::registry::RegistryLimits::from(
                &crate::NamesrvConfig::default(),
            ))),
            ProxyOptions {
                failover_wait_ms: 1_000,
                ..ProxyOptions::default()
            },
        )
        .unwrap();
        let names =
            |g: Vec<TopicGroup>| -> Vec<String> { g.into_iter().map(|g| g.broker_name).collect() };
        let t0 = Instant::now();
        let b_lost = Some(t0);
        // b lost its master at t0: it keeps its sends within the wait...
        let t1 = t0 + Duration::from_millis(900);
        assert_eq!(
            names(p.sendable(vec![group("a", None), group("b", b_lost)], t1)),
            ["a", "b"]
        );
        // ...and past it they go to the others.
        let t2 = t0 + Duration::from_millis(1_100);
        assert_eq!(
            names(p.sendable(vec![group("a", None), group("b", b_lost)], t2)),
            ["a"]
        );
    }

    #[test]
    fn hold_never_outlasts_the_client() {
        let p = Proxy::new(
            Arc::new(Registry::new(crate::registry::RegistryLimits::from(
                &crate::NamesrvConfig::default(),
            ))),
            ProxyOptions::default(),
        )
        .unwrap();
        let mut md = MetadataMap::new();
        md.insert("grpc-timeout", "1000m".parse().unwrap());
        let d = p
            .hold_deadline(&md)
            .saturating_duration_since(Instant::now());
        assert!(d <= Duration::from_millis(700), "{d:?}");
        let d = p
            .hold_deadline(&MetadataMap::new())
            .saturating_duration_since(Instant::now());
        assert!(d > Duration::from_millis(2000), "{d:?}");
    }
}
