//! `sofamq.admin.v1.BrokerAdmin`: topic management, status and raw queue reads
//! for operators and tests.

use sofamq_proto::admin::broker_admin_server::BrokerAdmin;
use sofamq_proto::admin::*;
use sofamq_proto::v2::MessageType;
use tonic::{Request, Response};

use crate::broker::Broker;
use crate::error::{BrokerError, ok_status};
use crate::topics::{TopicConfig, TopicType};
use crate::validate::keys;

type RpcResult<T> = Result<Response<T>, tonic::Status>;

/// The gRPC adapter for administration.
pub struct AdminService {
    broker: Broker,
}

impl AdminService {
    /// Wraps `broker`.
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }
}

/// Wire message type of a topic type.
pub fn wire_type(t: TopicType) -> MessageType {
    match t {
        TopicType::Normal => MessageType::Normal,
        TopicType::Fifo => MessageType::Fifo,
        TopicType::Delay => MessageType::Delay,
        TopicType::Transaction => MessageType::Transaction,
    }
}

fn topic_type(t: i32) -> Result<TopicType, BrokerError> {
    match MessageType::try_from(t).unwrap_or(MessageType::Unspecified) {
        MessageType::Unspecified | MessageType::Normal => Ok(TopicType::Normal),
        MessageType::Fifo => Ok(TopicType::Fifo),
        MessageType::Delay => Ok(TopicType::Delay),
        MessageType::Transaction => Ok(TopicType::Transaction),
        other => Err(BrokerError::BadRequest(format!(
            "topic type {} is not supported",
            other.as_str_name()
        ))),
    }
}

fn spec(cfg: &TopicConfig) -> TopicSpec {
    TopicSpec {
        name: cfg.name.clone(),
        queue_count: cfg.queue_count,
        message_type: wire_type(cfg.topic_type) as i32,
        perm: cfg.perm,
    }
}

#[tonic::async_trait]
impl BrokerAdmin for AdminService {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> RpcResult<CreateTopicResponse> {
        let t = request.into_inner().topic.unwrap_or_default();
        let result = match topic_type(t.message_type) {
            Ok(ty) => self.broker.create_topic(&t.name, t.queue_count, ty).await,
            Err(e) => Err(e),
        };
        Ok(Response::new(match result {
            Ok(cfg) => CreateTopicResponse {
                status: Some(ok_status()),
                topic: Some(spec(&cfg)),
            },
            Err(e) => CreateTopicResponse {
                status: Some(e.status()),
                topic: None,
            },
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> RpcResult<DeleteTopicResponse> {
        let name = request.into_inner().name;
        Ok(Response::new(match self.broker.delete_topic(&name).await {
            Ok(existed) => DeleteTopicResponse {
                status: Some(ok_status()),
                existed,
            },
            Err(e) => DeleteTopicResponse {
                status: Some(e.status()),
                existed: false,
            },
        }))
    }

    async fn list_topics(
        &self,
        _request: Request<ListTopicsRequest>,
    ) -> RpcResult<ListTopicsResponse> {
        let store = self.broker.store();
        let topics = self
            .broker
            .topics()
            .list()
            .iter()
            .map(|cfg| TopicState {
                spec: Some(spec(cfg)),
                queues: (0..cfg.queue_count)
                    .map(|q| {
                        let (min, max) = store.queue_offsets(&cfg.name, q);
                        QueueState {
                            queue_id: q,
                            min_offset: min,
                            max_offset: max,
                        }
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(ListTopicsResponse {
            status: Some(ok_status()),
            topics,
        }))
    }

    async fn broker_status(
        &self,
        _request: Request<BrokerStatusRequest>,
    ) -> RpcResult<BrokerStatusResponse> {
        let c = self.broker.config();
        let s = self.broker.store();
        Ok(Response::new(BrokerStatusResponse {
            status: Some(ok_status()),
            cluster: c.cluster.clone(),
            broker_name: c.broker_name.clone(),
            broker_id: c.broker_id as i64,
            role: if c.broker_id == 0 { "master" } else { "slave" }.into(),
            epoch: s.current_epoch(),
            log_end_offset: s.log_end_offset(),
            durable_offset: s.durable_offset(),
            readable_offset: s.readable_offset(),
            fenced_reason: s.fenced().unwrap_or_default(),
        }))
    }

    async fn read_queue(&self, request: Request<ReadQueueRequest>) -> RpcResult<ReadQueueResponse> {
        let r = request.into_inner();
        let max = r.max_count.clamp(1, 1024) as usize;
        let result = self
            .broker
            .store()
            .read_queue(&r.topic, r.queue_id, r.offset, max, 16 << 20);
        Ok(Response::new(match result {
            Ok(recs) => ReadQueueResponse {
                status: Some(ok_status()),
                messages: recs
                    .into_iter()
                    .map(|rec| {
                        let message_id = rec
                            .properties
                            .iter()
                            .find(|(k, _)| k == keys::MSG_ID)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default();
                        StoredMessage {
                            topic: rec.topic,
                            queue_id: rec.queue_id,
                            queue_offset: rec.queue_offset,
                            log_offset: rec.log_offset,
                            message_id,
                            tag: rec.tag,
                            born_timestamp_ms: rec.born_ts_ms,
                            store_timestamp_ms: rec.store_ts_ms,
                            properties: rec.properties.into_iter().collect(),
                            body: rec.body.to_vec(),
                            epoch: rec.epoch,
                        }
                    })
                    .collect(),
            },
            Err(e) => ReadQueueResponse {
                status: Some(BrokerError::from(e).status()),
                messages: Vec::new(),
            },
        }))
    }
}
