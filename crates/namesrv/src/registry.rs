//! The broker registry: who is registered, with which topics, and since when
//! it has been silent.
//!
//! Members are keyed by `(cluster, broker_name, broker_id)`. A repeated
//! `RegisterBroker` is the heartbeat; members silent past their expiry are
//! invisible to queries at once and removed by [`Registry::expire`], which the
//! server calls periodically. Several name servers run side by side without
//! sharing state: brokers register with each of them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sofamq_proto::namesrv::{
    BrokerGroup, BrokerMember, PERM_READ_WRITE, RegisterBrokerRequest, TopicRoute,
};
use tracing::{info, warn};

use crate::config::NamesrvConfig;
use crate::endpoints::parse_host_port;

/// Broker id of a group's master.
pub const MASTER_ID: i64 = 0;

/// Identity of one registered broker process.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BrokerKey {
    /// Cluster name.
    pub cluster: String,
    /// Broker group name.
    pub broker_name: String,
    /// 0 = master, >= 1 = slave.
    pub broker_id: i64,
}

/// What the registry knows about one member.
#[derive(Debug, Clone)]
struct Member {
    grpc_endpoint: String,
    replication_endpoint: String,
    epoch: u64,
    topics: HashMap<String, TopicRoute>,
    last_heartbeat: Instant,
    expiry: Duration,
}

impl Member {
    fn is_live(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_heartbeat) <= self.expiry
    }
}

/// A topic served by a live master, as found by [`Registry::master_routes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterRoute {
    /// Cluster of the broker group.
    pub cluster: String,
    /// Broker group name.
    pub broker_name: String,
    /// The master's client-facing gRPC endpoint, `"host:port"`.
    pub grpc_endpoint: String,
    /// The topic as the master reported it.
    pub topic: TopicRoute,
}

/// A broker group serving a topic, as found by [`Registry::topic_groups`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicGroup {
    /// Broker group name.
    pub broker_name: String,
    /// The topic's queue count there.
    pub queue_count: u32,
    /// Whether a live master is registered now.
    pub master: bool,
    /// Without a master: since when, as far as this registry knows. That is when its last
    /// master's registration ended (unregistered, or silent past its expiry), or, for a
    /// group that never had a master here (this name server started during its failover),
    /// when a member of it first registered. With a master: the time of the query.
    pub masterless_since: Instant,
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The request is malformed or exceeds a limit.
    #[error("invalid registration: {0}")]
    Invalid(String),
    /// The registry already holds the maximum number of members.
    #[error("too many registered brokers (limit {0})")]
    Full(usize),
    /// A live member with the same key holds a higher epoch (fencing a stale
    /// master).
    #[error("stale epoch {got} for {broker_name}/{broker_id}: live member has epoch {current}")]
    StaleEpoch {
        /// Broker group name.
        broker_name: String,
        /// Broker id.
        broker_id: i64,
        /// Epoch in the request.
        got: u64,
        /// Epoch of the live registration.
        current: u64,
    },
}

/// Bounds applied to registrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryLimits {
    /// Maximum number of members.
    pub max_brokers: usize,
    /// Maximum topics per registration.
    pub max_topics_per_registration: usize,
    /// Maximum queue count per topic.
    pub max_queues_per_topic: u32,
    /// Maximum length of names and endpoints.
    pub max_name_len: usize,
    /// Expiry used when the broker sends no hint.
    pub default_expiry: Duration,
    /// Upper bound on the broker's expiry hint.
    pub max_expiry: Duration,
}

impl From<&NamesrvConfig> for RegistryLimits {
    fn from(c: &NamesrvConfig) -> Self {
        Self {
            max_brokers: c.max_brokers,
            max_topics_per_registration: c.max_topics_per_registration,
            max_queues_per_topic: c.max_queues_per_topic,
            max_name_len: c.max_name_len,
            default_expiry: c.broker_expiry(),
            max_expiry: Duration::from_millis(c.max_broker_expiry_ms),
        }
    }
}

/// Thread-safe broker registry.
#[derive(Debug)]
pub struct Registry {
    limits: RegistryLimits,
    members: Mutex<BTreeMap<BrokerKey, Member>>,
    /// Per broker group name: since when it has had no master, as far as this registry
    /// knows (see [`TopicGroup::masterless_since`]).
    history: Mutex<HashMap<String, GroupHistory>>,
}

/// What the registry remembers of a group's masters beyond its live members.
#[derive(Debug, Clone, Copy)]
struct GroupHistory {
    /// When a member of the group first registered here.
    first_seen: Instant,
    /// Until when its last master was registered: its last heartbeat plus its expiry, or
    /// the moment it unregistered.
    master_until: Option<Instant>,
}

impl GroupHistory {
    /// Since when the group has had no master (or since it was first seen, if never).
    fn masterless_since(&self) -> Instant {
        self.master_until
            .map_or(self.first_seen, |m| m.max(self.first_seen))
    }
}

impl Registry {
    /// An empty registry with the given limits.
    pub fn new(limits: RegistryLimits) -> Self {
        Self {
            limits,
            members: Mutex::new(BTreeMap::new()),
            history: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<BrokerKey, Member>> {
        // The map stays consistent even if a holder panicked: every update is
        // a single insert or remove.
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_name(&self, what: &str, value: &str) -> Result<(), RegistryError> {
        if value.is_empty() {
            return Err(RegistryError::Invalid(format!("{what} is empty")));
        }
        if value.len() > self.limits.max_name_len {
            return Err(RegistryError::Invalid(format!(
                "{what} longer than {} bytes",
                self.limits.max_name_len
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(RegistryError::Invalid(format!(
                "{what} contains control characters"
            )));
        }
        Ok(())
    }

    fn validate(
        &self,
        req: &RegisterBrokerRequest,
    ) -> Result<HashMap<String, TopicRoute>, RegistryError> {
        self.check_name("cluster", &req.cluster)?;
        self.check_name("broker_name", &req.broker_name)?;
        if req.broker_id < 0 {
            return Err(RegistryError::Invalid(format!(
                "broker_id {} is negative",
                req.broker_id
            )));
        }
        self.check_name("grpc_endpoint", &req.grpc_endpoint)?;
        parse_host_port(&req.grpc_endpoint)
            .map_err(|e| RegistryError::Invalid(format!("grpc_endpoint: {e}")))?;
        if !req.replication_endpoint.is_empty() {
            self.check_name("replication_endpoint", &req.replication_endpoint)?;
            parse_host_port(&req.replication_endpoint)
                .map_err(|e| RegistryError::Invalid(format!("replication_endpoint: {e}")))?;
        }
        if req.topics.len() > self.limits.max_topics_per_registration {
            return Err(RegistryError::Invalid(format!(
                "{} topics exceed the limit of {}",
                req.topics.len(),
                self.limits.max_topics_per_registration
            )));
        }
        let mut topics = HashMap::with_capacity(req.topics.len());
        for t in &req.topics {
            self.check_name("topic name", &t.name)?;
            if t.queue_count > self.limits.max_queues_per_topic {
                return Err(RegistryError::Invalid(format!(
                    "topic '{}' has {} queues, limit is {}",
                    t.name, t.queue_count, self.limits.max_queues_per_topic
                )));
            }
            if t.perm & !PERM_READ_WRITE & !1 != 0 {
                return Err(RegistryError::Invalid(format!(
                    "topic '{}' has unknown perm bits {:#x}",
                    t.name, t.perm
                )));
            }
            topics.insert(t.name.clone(), t.clone());
        }
        Ok(topics)
    }

    /// Inserts or refreshes a member (a repeated registration is the
    /// heartbeat). Returns `true` when the member is new (or had expired).
    pub fn register(
        &self,
        req: &RegisterBrokerRequest,
        now: Instant,
    ) -> Result<bool, RegistryError> {
        let topics = self.validate(req)?;
        let expiry = if req.heartbeat_timeout_ms == 0 {
            self.limits.default_expiry
        } else {
            Duration::from_millis(req.heartbeat_timeout_ms).min(self.limits.max_expiry)
        };
        let key = BrokerKey {
            cluster: req.cluster.clone(),
            broker_name: req.broker_name.clone(),
            broker_id: req.broker_id,
        };
        let mut members = self.lock();
        let live_existing = members.get(&key).filter(|m| m.is_live(now));
        if let Some(existing) = live_existing
            && req.epoch < existing.epoch
        {
            return Err(RegistryError::StaleEpoch {
                broker_name: key.broker_name,
                broker_id: key.broker_id,
                got: req.epoch,
                current: existing.epoch,
            });
        }
        let is_new = live_existing.is_none();
        if !members.contains_key(&key) && members.len() >= self.limits.max_brokers {
            return Err(RegistryError::Full(self.limits.max_brokers));
        }
        self.note(&key, Some(now + expiry), now);
        members.insert(
            key,
            Member {
                grpc_endpoint: req.grpc_endpoint.clone(),
                replication_endpoint: req.replication_endpoint.clone(),
                epoch: req.epoch,
                topics,
                last_heartbeat: now,
                expiry,
            },
        );
        Ok(is_new)
    }

    /// Removes a member. Returns `true` when it was registered.
    pub fn unregister(&self, key: &BrokerKey) -> bool {
        let removed = self.lock().remove(key).is_some();
        if removed {
            let now = Instant::now();
            self.note(key, Some(now), now);
        }
        removed
    }

    /// Records that `key` is registered (a master: until `master_until`).
    fn note(&self, key: &BrokerKey, master_until: Option<Instant>, now: Instant) {
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if !h.contains_key(&key.broker_name) && h.len() >= self.limits.max_brokers.max(1) * 2 {
            // Bounded: past it the history starts over (groups then count as new).
            h.clear();
        }
        let e = h.entry(key.broker_name.clone()).or_insert(GroupHistory {
            first_seen: now,
            master_until: None,
        });
        if key.broker_id == MASTER_ID {
            e.master_until = master_until;
        }
    }

    /// Since when `broker_name` has had no master here (`now` for an unknown group).
    fn masterless_since(&self, broker_name: &str, now: Instant) -> Instant {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(broker_name)
            .map_or(now, GroupHistory::masterless_since)
    }

    /// Drops every member silent past its expiry; returns their keys.
    pub fn expire(&self, now: Instant) -> Vec<BrokerKey> {
        let mut members = self.lock();
        let dead: Vec<BrokerKey> = members
            .iter()
            .filter(|(_, m)| !m.is_live(now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &dead {
            if let Some(m) = members.remove(key) {
                warn!(
                    cluster = %key.cluster,
                    broker = %key.broker_name,
                    id = key.broker_id,
                    endpoint = %m.grpc_endpoint,
                    silent_ms = now.saturating_duration_since(m.last_heartbeat).as_millis() as u64,
                    "broker expired"
                );
            }
        }
        dead
    }

    /// Number of registered members (live or not yet scanned).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// `true` when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Every live master (broker id 0) serving `topic`, sorted by broker name
    /// then cluster.
    pub fn master_routes(&self, topic: &str, now: Instant) -> Vec<MasterRoute> {
        let members = self.lock();
        let mut routes: Vec<MasterRoute> = members
            .iter()
            .filter(|(k, m)| k.broker_id == MASTER_ID && m.is_live(now))
            .filter_map(|(k, m)| {
                let t = m.topics.get(topic)?;
                Some(MasterRoute {
                    cluster: k.cluster.clone(),
                    broker_name: k.broker_name.clone(),
                    grpc_endpoint: m.grpc_endpoint.clone(),
                    topic: t.clone(),
                })
            })
            .collect();
        routes.sort_by(|a, b| (&a.broker_name, &a.cluster).cmp(&(&b.broker_name, &b.cluster)));
        routes
    }

    /// The broker groups with a live member (master or slave) that reports `topic` with
    /// permission `perm` and at least one queue, sorted by name, one entry per group name:
    /// its queue count (the master's when it has one) and whether a live master is
    /// registered. A group whose master is failing over is here with `master: false`.
    pub fn topic_groups(&self, topic: &str, perm: u32, now: Instant) -> Vec<TopicGroup> {
        let members = self.lock();
        let mut out: Vec<TopicGroup> = Vec::new();
        for (k, m) in members.iter() {
            if !m.is_live(now) {
                continue;
            }
            let Some(t) = m.topics.get(topic) else {
                continue;
            };
            if t.perm & perm == 0 || t.queue_count == 0 {
                continue;
            }
            let master = k.broker_id == MASTER_ID;
            match out.iter_mut().find(|g| g.broker_name == k.broker_name) {
                Some(g) => {
                    if master {
                        g.queue_count = t.queue_count;
                    }
                    g.master |= master;
                }
                None => out.push(TopicGroup {
                    broker_name: k.broker_name.clone(),
                    queue_count: t.queue_count,
                    master,
                    masterless_since: now,
                }),
            }
        }
        drop(members);
        for g in out.iter_mut().filter(|g| !g.master) {
            g.masterless_since = self.masterless_since(&g.broker_name, now);
        }
        out.sort_by(|a, b| a.broker_name.cmp(&b.broker_name));
        out
    }

    /// The client endpoint of the live master (broker id 0) of broker group `broker_name`
    /// (of any cluster), if one is registered.
    pub fn master_of(&self, broker_name: &str, now: Instant) -> Option<String> {
        self.lock()
            .iter()
            .filter(|(k, m)| {
                k.broker_id == MASTER_ID && k.broker_name == broker_name && m.is_live(now)
            })
            .max_by_key(|(_, m)| m.epoch)
            .map(|(_, m)| m.grpc_endpoint.clone())
    }

    /// Every live master as (broker group, client endpoint), sorted by group.
    pub fn masters(&self, now: Instant) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .lock()
            .iter()
            .filter(|(k, m)| k.broker_id == MASTER_ID && m.is_live(now))
            .map(|(k, m)| (k.broker_name.clone(), m.grpc_endpoint.clone()))
            .collect();
        v.sort();
        v.dedup_by(|a, b| a.0 == b.0);
        v
    }

    /// Live broker groups (optionally of one cluster) with their members and
    /// the topics reported by the master, or by the freshest member when the
    /// group has no live master. Sorted by cluster, broker name, broker id.
    pub fn groups(&self, cluster: Option<&str>, now: Instant) -> Vec<BrokerGroup> {
        let members = self.lock();
        let mut groups: Vec<BrokerGroup> = Vec::new();
        let mut topic_source: Option<(bool, Instant, &Member)> = None;
        for (key, m) in members.iter() {
            if !m.is_live(now) || cluster.is_some_and(|c| c != key.cluster) {
                continue;
            }
            let same_group = groups
                .last()
                .is_some_and(|g| g.cluster == key.cluster && g.broker_name == key.broker_name);
            if !same_group {
                finish_group(groups.last_mut(), topic_source.take());
                groups.push(BrokerGroup {
                    cluster: key.cluster.clone(),
                    broker_name: key.broker_name.clone(),
                    members: Vec::new(),
                    topics: Vec::new(),
                });
            }
            if let Some(g) = groups.last_mut() {
                g.members.push(BrokerMember {
                    broker_id: key.broker_id,
                    grpc_endpoint: m.grpc_endpoint.clone(),
                    replication_endpoint: m.replication_endpoint.clone(),
                    epoch: m.epoch,
                    last_heartbeat_age_ms: u64::try_from(
                        now.saturating_duration_since(m.last_heartbeat).as_millis(),
                    )
                    .unwrap_or(u64::MAX),
                });
            }
            let is_master = key.broker_id == MASTER_ID;
            let better = match topic_source {
                None => true,
                Some((src_master, src_seen, _)) => {
                    !src_master && (is_master || m.last_heartbeat > src_seen)
                }
            };
            if better {
                topic_source = Some((is_master, m.last_heartbeat, m));
            }
        }
        finish_group(groups.last_mut(), topic_source);
        groups
    }
}

fn finish_group(group: Option<&mut BrokerGroup>, source: Option<(bool, Instant, &Member)>) {
    if let (Some(g), Some((_, _, m))) = (group, source) {
        let mut topics: Vec<TopicRoute> = m.topics.values().cloned().collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        g.topics = topics;
    }
}

/// Logs a registration outcome (helper for the admin service).
pub(crate) fn log_registration(req: &RegisterBrokerRequest, is_new: bool) {
    if is_new {
        info!(
            cluster = %req.cluster,
            broker = %req.broker_name,
            id = req.broker_id,
            endpoint = %req.grpc_endpoint,
            epoch = req.epoch,
            topics = req.topics.len(),
            "broker registered"
        );
    } else {
        tracing::trace!(broker = %req.broker_name, id = req.broker_id, "broker heartbeat");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn limits() -> RegistryLimits {
        RegistryLimits::from(&NamesrvConfig {
            max_brokers: 2,
            ..NamesrvConfig::default()
        })
    }

    /// A registration of `name`/`id` at `epoch` serving topic "t" (2 queues, read-write).
    pub(crate) fn req(name: &str, id: i64, epoch: u64) -> RegisterBrokerRequest {
        RegisterBrokerRequest {
            cluster: "c".into(),
            broker_name: name.into(),
            broker_id: id,
            grpc_endpoint: "127.0.0.1:1".into(),
            epoch,
            topics: vec![TopicRoute {
                name: "t".into(),
                queue_count: 2,
                perm: PERM_READ_WRITE,
                message_type: 1,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn register_heartbeat_expire() {
        let r = Registry::new(limits());
        let t0 = Instant::now();
        assert_eq!(r.register(&req("a", 0, 1), t0), Ok(true));
        assert_eq!(r.register(&req("a", 0, 1), t0), Ok(false));
        let later = t0 + Duration::from_millis(10_001);
        assert!(r.master_routes("t", later).is_empty());
        assert_eq!(r.master_routes("t", t0).len(), 1);
        assert_eq!(r.expire(later).len(), 1);
        assert!(r.is_empty());
    }

    #[test]
    fn topic_groups_list_groups_failing_over_too() {
        use sofamq_proto::namesrv::{PERM_READ, PERM_WRITE};
        let r = Registry::new(RegistryLimits::from(&NamesrvConfig::default()));
        let now = Instant::now();
        r.register(&req("b", 0, 1), now).unwrap();
        r.register(&req("b", 1, 1), now).unwrap();
        r.register(&req("a", 1, 1), now).unwrap();
        let mut ro = req("c", 0, 1);
        ro.topics[0].perm = PERM_READ;
        r.register(&ro, now).unwrap();
        let g = r.topic_groups("t", PERM_WRITE, now);
        let names: Vec<_> = g
            .iter()
            .map(|g| (g.broker_name.as_str(), g.master))
            .collect();
        // One entry per group, sorted; "a" has only its slave; "c" does not take writes.
        assert_eq!(names, [("a", false), ("b", true)]);
        // "a" never had a master here: masterless since its slave first registered.
        assert_eq!(g[0].masterless_since, now);
        assert_eq!(r.topic_groups("t", PERM_READ, now).len(), 3);
        assert!(r.topic_groups("other", PERM_WRITE, now).is_empty());
    }

    #[test]
    fn a_group_is_masterless_from_when_its_master_left() {
        use sofamq_proto::namesrv::PERM_WRITE;
        let r = Registry::new(RegistryLimits::from(&NamesrvConfig::default()));
        let t0 = Instant::now();
        let mut master = req("a", 0, 1);
        master.heartbeat_timeout_ms = 2_000;
        r.register(&master, t0).unwrap();
        r.register(&req("a", 1, 1), t0).unwrap();
        assert!(r.topic_groups("t", PERM_WRITE, t0)[0].master);
        // Silent: live until its expiry, then masterless from the end of that expiry.
        let t1 = t0 + Duration::from_secs(5);
        r.register(&req("a", 1, 1), t1).unwrap();
        let g = &r.topic_groups("t", PERM_WRITE, t1)[0];
        assert!(!g.master);
        assert_eq!(g.masterless_since, t0 + Duration::from_secs(2));
        // A clean stop: masterless from the unregistration.
        r.register(&master, t1).unwrap();
        let before = Instant::now();
        assert!(r.unregister(&BrokerKey {
            cluster: "c".into(),
            broker_name: "a".into(),
            broker_id: 0,
        }));
        let g = &r.topic_groups("t", PERM_WRITE, Instant::now())[0];
        assert!(!g.master && g.masterless_since >= before && g.masterless_since < t1);
    }

    #[test]
    fn capacity_and_fencing() {
        let r = Registry::new(limits());
        let now = Instant::now();
        r.register(&req("a", 0, 3), now).unwrap();
        r.register(&req("a", 1, 3), now).unwrap();
        assert_eq!(
            r.register(&req("b", 0, 1), now),
            Err(RegistryError::Full(2))
        );
        assert!(matches!(
            r.register(&req("a", 0, 2), now),
            Err(RegistryError::StaleEpoch {
                got: 2,
                current: 3,
                ..
            })
        ));
        // Once the old registration expired, a lower epoch is accepted.
        let later = now + Duration::from_secs(11);
        assert_eq!(r.register(&req("a", 0, 2), later), Ok(true));
    }

    #[test]
    fn heartbeat_hint_is_bounded() {
        let r = Registry::new(limits());
        let now = Instant::now();
        let mut short = req("a", 0, 0);
        short.heartbeat_timeout_ms = 100;
        r.register(&short, now).unwrap();
        assert!(
            r.master_routes("t", now + Duration::from_millis(200))
                .is_empty()
        );
        let mut long = req("b", 0, 0);
        long.heartbeat_timeout_ms = u64::MAX;
        r.register(&long, now).unwrap();
        assert!(
            r.master_routes("t", now + Duration::from_secs(121))
                .is_empty()
        );
    }

    #[test]
    fn rejects_bad_registrations() {
        let r = Registry::new(limits());
        let now = Instant::now();
        let mut bad = req("a", -1, 0);
        assert!(matches!(
            r.register(&bad, now),
            Err(RegistryError::Invalid(_))
        ));
        bad = req("", 0, 0);
        assert!(matches!(
            r.register(&bad, now),
            Err(RegistryError::Invalid(_))
        ));
        bad = req("a", 0, 0);
        bad.topics[0].queue_count = 1_000_000;
        assert!(matches!(
            r.register(&bad, now),
            Err(RegistryError::Invalid(_))
        ));
        bad = req("a", 0, 0);
        bad.topics[0].perm = 0x80;
        assert!(matches!(
            r.register(&bad, now),
            Err(RegistryError::Invalid(_))
        ));
        bad = req("a", 0, 0);
        bad.broker_name = "x".repeat(300);
        assert!(matches!(
            r.register(&bad, now),
            Err(RegistryError::Invalid(_))
        ));
        assert!(r.is_empty());
    }

    #[test]
    fn groups_take_topics_from_master() {
        let r = Registry::new(limits());
        let now = Instant::now();
        let mut slave = req("a", 1, 0);
        slave.topics[0].name = "from-slave".into();
        r.register(&slave, now).unwrap();
        let groups = r.groups(None, now);
        assert_eq!(groups[0].topics[0].name, "from-slave");
        r.register(&req("a", 0, 0), now).unwrap();
        let groups = r.groups(None, now);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].members.len(), 2);
        assert_eq!(groups[0].topics[0].name, "t");
        assert!(r.groups(Some("other"), now).is_empty());
    }
}
