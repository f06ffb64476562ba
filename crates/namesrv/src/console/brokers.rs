//! Reaching the brokers: cached lazy channels, admin clients signed with the
//! caller's credentials, and the members this name server knows.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sofamq_client::Credentials;
use sofamq_proto::admin::broker_admin_client::BrokerAdminClient;
use sofamq_proto::admin::{BrokerStatusRequest, BrokerStatusResponse};
use sofamq_proto::namesrv::BrokerGroup;
use sofamq_proto::v2::Code;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::{ApiError, Console};

/// Most cached broker channels (addresses come and go; the cache is cleared past it).
const MAX_CHANNELS: usize = 512;

/// Signs admin calls like `sofamq admin` does, with the session's credentials.
#[derive(Clone)]
pub(crate) struct Sign(Option<Credentials>);

impl Interceptor for Sign {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(c) = &self.0 {
            c.sign(&mut req)?;
        }
        Ok(req)
    }
}

pub(crate) type Admin = BrokerAdminClient<InterceptedService<Channel, Sign>>;

pub(crate) struct Channels {
    map: Mutex<HashMap<String, Channel>>,
    timeout: Duration,
}

impl Channels {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    fn get(&self, addr: &str) -> Result<Channel, ApiError> {
        let mut m = self.map.lock();
        if let Some(c) = m.get(addr) {
            return Ok(c.clone());
        }
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| ApiError::upstream(format!("bad broker address {addr}: {e}")))?
            .connect_timeout(self.timeout.min(Duration::from_secs(2)))
            .timeout(self.timeout);
        let ch = ep.connect_lazy();
        if m.len() >= MAX_CHANNELS {
            m.clear();
        }
        m.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }
}

/// A broker's outcome status, as an error when not OK.
pub(crate) fn ok(status: Option<sofamq_proto::v2::Status>) -> Result<(), String> {
    let s = status.unwrap_or_default();
    if s.code == Code::Ok as i32 {
        Ok(())
    } else {
        Err(format!("{} ({})", s.message, s.code))
    }
}

/// A gRPC failure in words.
pub(crate) fn why(e: &tonic::Status) -> String {
    match e.code() {
        tonic::Code::Unavailable => format!("unreachable: {}", e.message()),
        tonic::Code::DeadlineExceeded => "no answer in time".into(),
        _ => e.message().to_string(),
    }
}

impl Console {
    pub(crate) fn admin(&self, addr: &str, creds: Option<&Credentials>) -> Result<Admin, ApiError> {
        let ch = self.channels.get(addr)?;
        Ok(
            BrokerAdminClient::with_interceptor(ch, Sign(creds.cloned()))
                .max_decoding_message_size(64 * 1024 * 1024),
        )
    }

    /// Every broker group the name server knows (members with their heartbeats).
    pub(crate) fn groups(&self) -> Vec<BrokerGroup> {
        self.registry.groups(None, Instant::now())
    }

    pub(crate) fn member_addrs(&self) -> Vec<String> {
        let mut v: Vec<(i64, String)> = self
            .groups()
            .into_iter()
            .flat_map(|g| {
                g.members
                    .into_iter()
                    .map(|m| (m.broker_id, m.grpc_endpoint))
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, a)| a).collect()
    }

    /// `(group, master address)` of every group with a registered master (id 0).
    pub(crate) fn masters(&self) -> Vec<(String, String)> {
        self.groups()
            .into_iter()
            .filter_map(|g| {
                let m = g.members.iter().find(|m| m.broker_id == 0)?;
                Some((g.broker_name.clone(), m.grpc_endpoint.clone()))
            })
            .collect()
    }

    /// The master address of `group`, or a plain error.
    pub(crate) fn master_of(&self, group: &str) -> Result<String, ApiError> {
        self.masters()
            .into_iter()
            .find(|(g, _)| g == group)
            .map(|(_, a)| a)
            .ok_or_else(|| {
                ApiError::upstream(format!("broker group '{group}' has no master registered"))
            })
    }

    pub(crate) async fn status(
        &self,
        addr: &str,
        creds: Option<&Credentials>,
    ) -> Result<BrokerStatusResponse, tonic::Status> {
        let mut a = self
            .admin(addr, creds)
            .map_err(|e| tonic::Status::unavailable(e.1))?;
        Ok(a.broker_status(BrokerStatusRequest {}).await?.into_inner())
    }
}
