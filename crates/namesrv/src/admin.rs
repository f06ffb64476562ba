//! `sofamq.namesrv.v1.NameServerAdmin`: broker registration and listing.

use std::sync::Arc;
use std::time::Instant;

use sofamq_proto::namesrv::name_server_admin_server::NameServerAdmin;
use sofamq_proto::namesrv::{
    ListBrokersRequest, ListBrokersResponse, RegisterBrokerRequest, RegisterBrokerResponse,
    UnregisterBrokerRequest, UnregisterBrokerResponse,
};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::registry::{BrokerKey, Registry, RegistryError, log_registration};

/// Serves the internal admin service over a shared [`Registry`].
#[derive(Debug, Clone)]
pub struct AdminService {
    registry: Arc<Registry>,
}

impl AdminService {
    /// A service over `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }
}

/// Maps a refused registration onto a gRPC status (internal API: the gRPC
/// status carries the outcome).
fn to_status(e: &RegistryError) -> Status {
    match e {
        RegistryError::Invalid(_) => Status::invalid_argument(e.to_string()),
        RegistryError::Full(_) => Status::resource_exhausted(e.to_string()),
        RegistryError::StaleEpoch { .. } => Status::failed_precondition(e.to_string()),
    }
}

#[tonic::async_trait]
impl NameServerAdmin for AdminService {
    async fn register_broker(
        &self,
        request: Request<RegisterBrokerRequest>,
    ) -> Result<Response<RegisterBrokerResponse>, Status> {
        let req = request.into_inner();
        match self.registry.register(&req, Instant::now()) {
            Ok(is_new) => {
                log_registration(&req, is_new);
                Ok(Response::new(RegisterBrokerResponse {}))
            }
            Err(e) => {
                warn!(broker = %req.broker_name, id = req.broker_id, error = %e, "registration refused");
                Err(to_status(&e))
            }
        }
    }

    async fn unregister_broker(
        &self,
        request: Request<UnregisterBrokerRequest>,
    ) -> Result<Response<UnregisterBrokerResponse>, Status> {
        let req = request.into_inner();
        let key = BrokerKey {
            cluster: req.cluster,
            broker_name: req.broker_name,
            broker_id: req.broker_id,
        };
        if self.registry.unregister(&key) {
            info!(cluster = %key.cluster, broker = %key.broker_name, id = key.broker_id, "broker unregistered");
        }
        Ok(Response::new(UnregisterBrokerResponse {}))
    }

    async fn list_brokers(
        &self,
        request: Request<ListBrokersRequest>,
    ) -> Result<Response<ListBrokersResponse>, Status> {
        let req = request.into_inner();
        let cluster = Some(req.cluster.as_str()).filter(|c| !c.is_empty());
        let groups = self.registry.groups(cluster, Instant::now());
        Ok(Response::new(ListBrokersResponse { groups }))
    }
}
