//! `QueryRoute`: turns the registry's live masters into RocketMQ message
//! queues.

use std::time::Instant;

use sofamq_proto::namesrv::{PERM_READ, PERM_WRITE, TopicRoute};
use sofamq_proto::v2::{
    Broker, Code, Endpoints, MessageQueue, MessageType, Permission, QueryRouteRequest,
    QueryRouteResponse, Resource,
};
use tracing::{debug, warn};

use crate::endpoints::to_endpoints;
use crate::registry::{MASTER_ID, Registry};
use sofamq_server::status;

/// Maps RocketMQ permission bits onto the wire `Permission`.
pub fn permission(perm: u32) -> Permission {
    match (perm & PERM_READ != 0, perm & PERM_WRITE != 0) {
        (true, true) => Permission::ReadWrite,
        (true, false) => Permission::Read,
        (false, true) => Permission::Write,
        (false, false) => Permission::None,
    }
}

/// The message type clients should accept for `topic` (unspecified means
/// NORMAL, so clients that validate message types can still send).
fn accepted_type(topic: &TopicRoute) -> MessageType {
    match MessageType::try_from(topic.message_type) {
        Ok(MessageType::Unspecified) | Err(_) => MessageType::Normal,
        Ok(t) => t,
    }
}

fn queues_of(
    resource: &Resource,
    broker_name: &str,
    endpoints: &Endpoints,
    topic: &TopicRoute,
) -> impl Iterator<Item = MessageQueue> {
    let permission = permission(topic.perm) as i32;
    let accept = accepted_type(topic) as i32;
    (0..topic.queue_count).filter_map(move |id| {
        Some(MessageQueue {
            topic: Some(resource.clone()),
            id: i32::try_from(id).ok()?,
            permission,
            broker: Some(Broker {
                name: broker_name.to_string(),
                id: MASTER_ID as i32,
                endpoints: Some(endpoints.clone()),
            }),
            accept_message_types: vec![accept],
        })
    })
}

/// Answers a `QueryRoute` request from the registry: one queue per queue id
/// of every live master serving the topic, sorted by broker name then queue
/// id; `TOPIC_NOT_FOUND` when no master serves it.
pub fn query_route(
    registry: &Registry,
    req: &QueryRouteRequest,
    now: Instant,
) -> QueryRouteResponse {
    let Some(resource) = req.topic.as_ref().filter(|t| !t.name.is_empty()) else {
        return QueryRouteResponse {
            status: Some(status::status(Code::IllegalTopic, "topic name is empty")),
            message_queues: Vec::new(),
        };
    };
    let routes = registry.master_routes(&resource.name, now);
    let mut message_queues = Vec::new();
    for route in &routes {
        let endpoints = match to_endpoints(&[route.grpc_endpoint.as_str()]) {
            Ok(ep) => ep,
            Err(e) => {
                // Validated at registration; skip rather than fail the query.
                warn!(broker = %route.broker_name, error = %e, "unusable broker endpoint");
                continue;
            }
        };
        message_queues.extend(queues_of(
            resource,
            &route.broker_name,
            &endpoints,
            &route.topic,
        ));
    }
    if message_queues.is_empty() {
        debug!(topic = %resource.name, "route query: topic not found");
        return QueryRouteResponse {
            status: Some(status::status(
                Code::TopicNotFound,
                format!("topic '{}' not found", resource.name),
            )),
            message_queues,
        };
    }
    QueryRouteResponse {
        status: Some(status::ok()),
        message_queues,
    }
}
