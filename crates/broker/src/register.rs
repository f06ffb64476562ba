//! Keeps this broker registered with every NameServer: a RegisterBroker at
//! start, again every heartbeat interval (that is the heartbeat) and at once
//! after a topic change; an UnregisterBroker on clean shutdown.

use std::time::Duration;

use sofamq_proto::namesrv::name_server_admin_client::NameServerAdminClient;
use sofamq_proto::namesrv::{RegisterBrokerRequest, TopicRoute, UnregisterBrokerRequest};
use sofamq_proto::v2::MessageType;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::broker::Broker;

/// Registration state shared with whoever waits for "registered at least once".
pub struct Registrar {
    broker: Broker,
    endpoint: String,
    repl_endpoint: String,
    clients: Vec<(String, NameServerAdminClient<Channel>)>,
}

impl Registrar {
    /// Prepares clients for every configured namesrv (connected lazily).
    pub fn new(broker: Broker, endpoint: String, repl_endpoint: String) -> Self {
        let clients = broker
            .config()
            .namesrv
            .iter()
            .filter_map(|a| {
                let tls = broker.config().namesrv_tls.as_ref();
                let ch = sofamq_server::tls::endpoint(a, tls)
                    .inspect_err(|e| tracing::error!(namesrv = %a, error = %e, "cannot register"))
                    .ok()?
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(3))
                    .connect_lazy();
                Some((a.clone(), NameServerAdminClient::new(ch)))
            })
            .collect();
        Self {
            broker,
            endpoint,
            repl_endpoint,
            clients,
        }
    }

    fn request(&self) -> RegisterBrokerRequest {
        let c = self.broker.config();
        RegisterBrokerRequest {
            cluster: c.cluster.clone(),
            broker_name: c.broker_name.clone(),
            broker_id: self.broker.repl().broker_id() as i64,
            grpc_endpoint: self.endpoint.clone(),
            replication_endpoint: self.repl_endpoint.clone(),
            epoch: self.broker.store().current_epoch(),
            topics: self
                .broker
                .topics()
                .list()
                .into_iter()
                .map(|t| TopicRoute {
                    name: t.name,
                    queue_count: t.queue_count,
                    perm: t.perm,
                    message_type: MessageType::from(t.topic_type) as i32,
                })
                .collect(),
            heartbeat_timeout_ms: 0,
        }
    }

    /// Registers with every namesrv once; returns how many accepted.
    pub async fn register_all(&self) -> usize {
        let req = self.request();
        let mut ok = 0;
        for (addr, client) in &self.clients {
            match client.clone().register_broker(req.clone()).await {
                Ok(_) => ok += 1,
                Err(e) => tracing::debug!(namesrv = %addr, error = %e, "registration failed"),
            }
        }
        ok
    }

    /// Runs until `stop` turns true: registers every interval and on topic
    /// changes; [`Broker::registered`] turns true after the first accepted registration.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let interval = self.broker.config().heartbeat_interval();
        let mut role = self.broker.repl().role_watch();
        let mut last_id = self.broker.repl().broker_id();
        loop {
            // Arm the change notification before registering so that a topic
            // change during the registration is not missed.
            let changed = self.broker.topics_changed().notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.register_all().await > 0 {
                self.broker.set_registered();
            }
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                _ = role.changed() => {}
                _ = &mut changed => {}
                _ = tokio::time::sleep(interval) => {}
            }
            let id = self.broker.repl().broker_id();
            if id != last_id {
                // Promoted: drop the slave registration. (A demoted master does not
                // unregister id 0: that entry may already be its successor's.)
                if last_id != 0 {
                    self.unregister(last_id).await;
                }
                last_id = id;
            }
            if *stop.borrow() {
                break;
            }
        }
        self.unregister(self.broker.repl().broker_id()).await;
    }

    async fn unregister(&self, broker_id: u64) {
        let c = self.broker.config();
        let req = UnregisterBrokerRequest {
            cluster: c.cluster.clone(),
            broker_name: c.broker_name.clone(),
            broker_id: broker_id as i64,
        };
        for (_, client) in &self.clients {
            let _ = tokio::time::timeout(
                Duration::from_millis(500),
                client.clone().unregister_broker(req.clone()),
            )
            .await;
        }
    }
}
