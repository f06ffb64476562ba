//! Topic routes: which master brokers accept writes for a topic.
//!
//! Routes are fetched with QueryRoute from any access point (the last one
//! that answered is tried first), cached per topic, refreshed in the
//! background and again after a send failure that hints at a stale route.
//! Refreshes of one topic are single-flight: a burst of failures causes one
//! QueryRoute, not one per failed message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sofamq_proto::v2::{
    self, Code, QueryRouteRequest, QueryRouteResponse,
    messaging_service_client::MessagingServiceClient,
};

use crate::address::{endpoints_of, join_host_port};
use crate::connection::Channels;
use crate::headers::RequestHeaders;
use crate::retry::AttemptError;
use crate::sender::{BrokerHandle, Senders};
use crate::telemetry::Sessions;

/// Header asking a name server in proxy mode for direct (broker) endpoints.
pub(crate) const DIRECT_ROUTE_HEADER: &str = "x-sofamq-route";

/// The writable masters of a topic, sorted by broker name.
#[derive(Debug)]
pub(crate) struct TopicRoute {
    pub(crate) brokers: Vec<Arc<BrokerHandle>>,
    pub(crate) fetched_at: Instant,
    /// Round-robin cursor for broker selection.
    pub(crate) cursor: AtomicUsize,
}

impl TopicRoute {
    pub(crate) fn new(brokers: Vec<Arc<BrokerHandle>>) -> Self {
        Self {
            brokers,
            fetched_at: Instant::now(),
            cursor: AtomicUsize::new(0),
        }
    }
}

/// FNV-1a for the route map: every send looks its topic up, and SipHash
/// costs more than the rest of the lookup. Topic names come from the
/// application, not from the network, so hash flooding is not a concern.
type TopicMap<V> = fnv::FnvHashMap<String, V>;

/// Serializes the refreshes of one topic; holds the last failed fetch.
type RefreshLock = tokio::sync::Mutex<Option<(Instant, AttemptError)>>;

/// Cache of topic routes.
#[derive(Debug)]
pub(crate) struct RouteCache {
    access_points: Vec<String>,
    preferred: AtomicUsize,
    routes: RwLock<TopicMap<Arc<TopicRoute>>>,
    /// Per-topic refresh lock, holding the last failed fetch (time, error)
    /// so that callers queued behind a failing fetch share its error instead
    /// of each asking again in turn.
    refresh_locks: Mutex<HashMap<String, Arc<RefreshLock>>>,
    channels: Arc<Channels>,
    senders: Arc<Senders>,
    /// Telemetry sessions: one per master of a fetched route.
    sessions: Arc<Sessions>,
    headers: Arc<RequestHeaders>,
    timeout: Duration,
    /// Bumped whenever a fetched route names other masters than the cached one (a
    /// failover): senders waiting out a retry backoff wake on it.
    generation: tokio::sync::watch::Sender<u64>,
}

impl RouteCache {
    pub(crate) fn new(
        access_points: Vec<String>,
        channels: Arc<Channels>,
        senders: Arc<Senders>,
        sessions: Arc<Sessions>,
        headers: Arc<RequestHeaders>,
        timeout: Duration,
    ) -> Self {
        Self {
            access_points,
            preferred: AtomicUsize::new(0),
            routes: RwLock::new(TopicMap::default()),
            refresh_locks: Mutex::new(HashMap::new()),
            channels,
            senders,
            sessions,
            headers,
            timeout,
            generation: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Watches route changes (see [`RouteCache::generation`]'s field doc).
    pub(crate) fn generation(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The cached route of `topic`, fetched if not cached yet.
    pub(crate) async fn get(&self, topic: &str) -> Result<Arc<TopicRoute>, AttemptError> {
        if let Some(r) = self.cached(topic) {
            return Ok(r);
        }
        self.refresh(topic, None).await
    }

    /// Fetches the route again unless it was fetched after `since` (by a
    /// concurrent refresh). On failure the cached route stays.
    pub(crate) async fn refresh_after(
        &self,
        topic: &str,
        since: Instant,
    ) -> Result<Arc<TopicRoute>, AttemptError> {
        self.refresh(topic, Some(since)).await
    }

    /// Refreshes every cached topic (the periodic refresh).
    pub(crate) async fn refresh_all(&self) {
        let topics: Vec<String> = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for topic in topics {
            if let Err(e) = self.refresh_after(&topic, Instant::now()).await {
                tracing::warn!(%topic, error = ?e, "periodic route refresh failed");
            }
        }
    }

    fn cached(&self, topic: &str) -> Option<Arc<TopicRoute>> {
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .cloned()
    }

    async fn refresh(
        &self,
        topic: &str,
        since: Option<Instant>,
    ) -> Result<Arc<TopicRoute>, AttemptError> {
        let lock = self
            .refresh_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(topic.to_string())
            .or_default()
            .clone();
        let asked = Instant::now();
        let mut last_failure = lock.lock().await;
        if let Some(r) = self.cached(topic) {
            // Someone refreshed while we waited.
            if since.is_none_or(|s| r.fetched_at > s) {
                return Ok(r);
            }
        }
        if let Some((at, err)) = &*last_failure
            && *at > asked
        {
            // A fetch that started after we asked just failed.
            return Err(err.clone());
        }
        match self.fetch(topic).await {
            Ok(route) => {
                *last_failure = None;
                Ok(route)
            }
            Err(e) => {
                *last_failure = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    async fn fetch(&self, topic: &str) -> Result<Arc<TopicRoute>, AttemptError> {
        let resp = self.query(topic).await?;
        let masters = writable_masters(&resp);
        if masters.is_empty() {
            return Err(AttemptError::NoRoute(format!(
                "topic {topic} has no writable master"
            )));
        }
        let brokers = masters
            .iter()
            .map(|(name, addr)| self.senders.broker(topic, name, addr))
            .collect::<Result<Vec<_>, _>>()?;
        // The topic is published from now on; every master gets a session
        // (whose settings then list the topic).
        self.sessions.add_topic(topic);
        for (_, addr) in &masters {
            self.sessions.open(addr);
        }
        tracing::debug!(%topic, brokers = ?masters, "route updated");
        let route = Arc::new(TopicRoute::new(brokers));
        let old = self
            .routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_string(), route.clone());
        let same = old.is_some_and(|o| {
            o.brokers.len() == route.brokers.len()
                && o.brokers
                    .iter()
                    .zip(&route.brokers)
                    .all(|(a, b)| a.name == b.name && a.addr == b.addr)
        });
        if !same {
            self.generation.send_modify(|g| *g += 1);
        }
        Ok(route)
    }

    /// Asks the access points in turn, starting with the last good one.
    async fn query(&self, topic: &str) -> Result<QueryRouteResponse, AttemptError> {
        let n = self.access_points.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last = AttemptError::NoRoute("no access point".into());
        for i in 0..n {
            let idx = (start + i) % n;
            let ap = &self.access_points[idx];
            match self.query_one(ap, topic).await {
                Ok(resp) => {
                    let status = resp.status.clone().unwrap_or_default();
                    if status.code == Code::Ok as i32 {
                        self.preferred.store(idx, Ordering::Relaxed);
                        return Ok(resp);
                    }
                    tracing::debug!(%topic, access_point = %ap, code = status.code, "QueryRoute refused");
                    last = AttemptError::Status {
                        code: status.code,
                        message: status.message,
                    };
                }
                Err(e) => {
                    tracing::debug!(%topic, access_point = %ap, error = ?e, "QueryRoute failed");
                    if !matches!(last, AttemptError::Status { .. }) {
                        last = AttemptError::NoRoute(format!(
                            "no access point answered QueryRoute (last: {ap}: {})",
                            e.message()
                        ));
                    }
                }
            }
        }
        Err(last)
    }

    async fn query_one(&self, ap: &str, topic: &str) -> Result<QueryRouteResponse, AttemptError> {
        let channel = self.channels.get(ap)?;
        let mut client = MessagingServiceClient::new(channel);
        let mut req = tonic::Request::new(QueryRouteRequest {
            topic: Some(v2::Resource {
                resource_namespace: String::new(),
                name: topic.to_string(),
            }),
            endpoints: Some(endpoints_of(ap)),
        });
        req.set_timeout(self.timeout);
        self.headers.apply(&mut req);
        // This SDK follows failovers itself: ask a proxying name server for the brokers'
        // own endpoints (one hop less on every send).
        req.metadata_mut().insert(
            DIRECT_ROUTE_HEADER,
            tonic::metadata::MetadataValue::from_static("direct"),
        );
        match tokio::time::timeout(self.timeout, client.query_route(req)).await {
            Err(_) => Err(AttemptError::Timeout),
            Ok(Err(status)) => Err(AttemptError::Transport(format!(
                "{:?}: {}",
                status.code(),
                status.message()
            ))),
            Ok(Ok(resp)) => Ok(resp.into_inner()),
        }
    }
}

/// The writable masters (broker id 0) of a route, as (name, `host:port`),
/// sorted by name, one entry per broker.
pub(crate) fn writable_masters(resp: &QueryRouteResponse) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for mq in &resp.message_queues {
        let writable = matches!(
            v2::Permission::try_from(mq.permission),
            Ok(v2::Permission::Write | v2::Permission::ReadWrite)
        );
        let Some(broker) = mq.broker.as_ref() else {
            continue;
        };
        if !writable || broker.id != 0 {
            continue;
        }
        let Some(addr) = broker
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
        if !out.iter().any(|(n, a)| *n == broker.name && *a == addr) {
            out.push((broker.name.clone(), addr));
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str, id: i32, port: i32, perm: v2::Permission) -> v2::MessageQueue {
        v2::MessageQueue {
            topic: None,
            id: 0,
            permission: perm as i32,
            broker: Some(v2::Broker {
                name: name.into(),
                id,
                endpoints: Some(v2::Endpoints {
                    scheme: v2::AddressScheme::IPv4 as i32,
                    addresses: vec![v2::Address {
                        host: "127.0.0.1".into(),
                        port,
                    }],
                }),
            }),
            accept_message_types: vec![],
        }
    }

    #[test]
    fn only_writable_masters_are_kept() {
        use v2::Permission as P;
        let resp = QueryRouteResponse {
            status: None,
            message_queues: vec![
                queue("b", 0, 2, P::ReadWrite),
                queue("b", 0, 2, P::ReadWrite), // a second queue of broker b
                queue("a", 0, 1, P::Write),
                queue("a", 1, 11, P::ReadWrite), // slave
                queue("c", 0, 3, P::Read),       // read-only
                queue("d", 0, 4, P::None),
            ],
        };
        assert_eq!(
            writable_masters(&resp),
            vec![
                ("a".to_string(), "127.0.0.1:1".to_string()),
                ("b".to_string(), "127.0.0.1:2".to_string()),
            ]
        );
    }
}
