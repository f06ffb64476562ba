//! The RocketMQ 5 `MessagingService` as a broker serves it. Each RPC is a thin
//! adapter: decode, call the `Broker`, encode; the outcome always travels in
//! the response's `Status` (gRPC status stays OK except for framework errors).

use std::pin::Pin;

use sofamq_proto::v2::messaging_service_client::MessagingServiceClient;
use sofamq_proto::v2::messaging_service_server::MessagingService;
use sofamq_proto::v2::*;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Streaming};

use crate::acl::guard::Denied;
use crate::broker::Broker;
use crate::error::ok_status;

type RpcResult<T> = Result<Response<T>, tonic::Status>;

/// The ACL check every RPC makes first (a no-op when ACL is off): a refusal
/// travels as the response's status, like every other failure.
macro_rules! acl_check {
    ($self:ident, $request:ident) => {
        if let Err(e) = $self
            .broker
            .acl()
            .check($request.metadata(), $request.get_ref())
        {
            return Ok(Response::new(Denied::denied(e.status())));
        }
    };
}
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

/// The gRPC adapter over a [`Broker`].
pub struct BrokerService {
    broker: Broker,
    namesrvs: Vec<MessagingServiceClient<Channel>>,
    session: sofamq_server::session::SessionOptions,
    shutdown: CancellationToken,
}

impl BrokerService {
    /// Wraps `broker`; route queries are forwarded to its configured namesrvs.
    pub fn new(broker: Broker, shutdown: CancellationToken) -> Self {
        let namesrvs = broker
            .config()
            .namesrv
            .iter()
            .filter_map(|a| {
                sofamq_server::tls::endpoint(a, broker.config().namesrv_tls.as_ref())
                    .ok()
                    .map(|e| MessagingServiceClient::new(e.connect_lazy()))
            })
            .collect();
        let session = sofamq_server::session::SessionOptions {
            max_body_size: i32::try_from(broker.config().limits.max_body_bytes).unwrap_or(i32::MAX),
            consumer_max_attempts: i32::try_from(broker.config().consume.max_attempts)
                .unwrap_or(i32::MAX)
                .max(1),
            ..Default::default()
        };
        Self {
            broker,
            namesrvs,
            session,
            shutdown,
        }
    }
}

fn now_timestamp() -> prost_types::Timestamp {
    let ms = crate::topics::now_ms();
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

#[tonic::async_trait]
impl MessagingService for BrokerService {
    async fn query_route(
        &self,
        request: Request<QueryRouteRequest>,
    ) -> RpcResult<QueryRouteResponse> {
        acl_check!(self, request);
        let req = request.into_inner();
        let mut last = None;
        for ns in &self.namesrvs {
            match ns.clone().query_route(req.clone()).await {
                Ok(resp) => return Ok(resp),
                Err(e) => last = Some(e),
            }
        }
        Ok(Response::new(QueryRouteResponse {
            status: Some(Status {
                code: Code::InternalServerError as i32,
                message: format!(
                    "no name server answered the route query: {}",
                    last.map(|e| e.message().to_string())
                        .unwrap_or_else(|| "none configured".into())
                ),
            }),
            message_queues: Vec::new(),
        }))
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> RpcResult<HeartbeatResponse> {
        acl_check!(self, request);
        if let Some(g) = request.get_ref().group.as_ref() {
            self.broker
                .consumers()
                .online()
                .seen(&g.name, client_id(request.metadata()));
        }
        Ok(Response::new(HeartbeatResponse {
            status: Some(ok_status()),
        }))
    }

    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> RpcResult<SendMessageResponse> {
        acl_check!(self, request);
        let t0 = std::time::Instant::now();
        let answer = self.broker.send_answer(request.into_inner()).await;
        self.broker
            .metrics()
            .send_done(t0.elapsed(), &answer.response);
        // Long-polling receives re-check at once.
        self.broker.consumers().wake();
        let mut resp = Response::new(answer.response);
        if answer.not_held {
            resp.metadata_mut().insert(
                sofamq_proto::codes::NOT_HELD_HEADER,
                tonic::metadata::MetadataValue::from_static("1"),
            );
        }
        Ok(resp)
    }

    async fn query_assignment(
        &self,
        request: Request<QueryAssignmentRequest>,
    ) -> RpcResult<QueryAssignmentResponse> {
        acl_check!(self, request);
        let (md, _, req) = request.into_parts();
        // The same credentials answer the route query.
        let route = self
            .query_route(Request::from_parts(
                md,
                Default::default(),
                QueryRouteRequest {
                    topic: req.topic.clone(),
                    endpoints: req.endpoints.clone(),
                },
            ))
            .await?
            .into_inner();
        let fifo = self
            .broker
            .topics()
            .get(
                &req.topic
                    .as_ref()
                    .map(|t| t.name.clone())
                    .unwrap_or_default(),
            )
            .is_some_and(|t| t.topic_type == crate::topics::TopicType::Fifo);
        Ok(Response::new(crate::consume::receive::assignments(
            route, fifo,
        )))
    }

    type ReceiveMessageStream = BoxStream<ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        request: Request<ReceiveMessageRequest>,
    ) -> RpcResult<Self::ReceiveMessageStream> {
        acl_check!(self, request);
        use receive_message_response::Content;
        if let Some(g) = request.get_ref().group.as_ref() {
            self.broker
                .consumers()
                .online()
                .seen(&g.name, client_id(request.metadata()));
        }
        let req = request.into_inner();
        let items: Vec<ReceiveMessageResponse> =
            match self.broker.receive(&req, &self.shutdown).await {
                Ok(msgs) if msgs.is_empty() => vec![Content::Status(Status {
                    code: Code::MessageNotFound as i32,
                    message: "no new message".into(),
                })],
                // As the reference proxy: status, the transport delivery
                // timestamp (clients compute latency metrics from it), then
                // the messages.
                Ok(msgs) => [
                    {
                        self.broker.metrics().delivered(&msgs);
                        self.broker.repl().log_grew();
                        Content::Status(ok_status())
                    },
                    Content::DeliveryTimestamp(now_timestamp()),
                ]
                .into_iter()
                .chain(msgs.into_iter().map(Content::Message))
                .collect(),
                Err(e) => vec![Content::Status(e.status())],
            }
            .into_iter()
            .map(|c| ReceiveMessageResponse { content: Some(c) })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(
            items.into_iter().map(Ok),
        ))))
    }

    async fn ack_message(
        &self,
        request: Request<AckMessageRequest>,
    ) -> RpcResult<AckMessageResponse> {
        acl_check!(self, request);
        let resp = self.broker.ack(request.into_inner()).await;
        // Consumer-state records go to the slaves now, not at the next heartbeat.
        self.broker.repl().log_grew();
        Ok(Response::new(resp))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        request: Request<ForwardMessageToDeadLetterQueueRequest>,
    ) -> RpcResult<ForwardMessageToDeadLetterQueueResponse> {
        acl_check!(self, request);
        let r = self.broker.forward_to_dlq(&request.into_inner()).await;
        self.broker.repl().log_grew();
        Ok(Response::new(ForwardMessageToDeadLetterQueueResponse {
            status: Some(r.map_or_else(|e| e.status(), |()| ok_status())),
        }))
    }

    type PullMessageStream = BoxStream<PullMessageResponse>;

    async fn pull_message(
        &self,
        request: Request<PullMessageRequest>,
    ) -> RpcResult<Self::PullMessageStream> {
        acl_check!(self, request);
        use pull_message_response::Content;
        let req = request.into_inner();
        let items: Vec<Content> = match self.broker.pull(&req, &self.shutdown).await {
            Ok((msgs, next)) => {
                self.broker.metrics().delivered(&msgs);
                let status = if msgs.is_empty() {
                    Status {
                        code: Code::MessageNotFound as i32,
                        message: "no new message".into(),
                    }
                } else {
                    ok_status()
                };
                std::iter::once(Content::Status(status))
                    .chain(msgs.into_iter().map(Content::Message))
                    .chain(std::iter::once(Content::NextOffset(next)))
                    .collect()
            }
            Err(e) => vec![Content::Status(e.status())],
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(
            items
                .into_iter()
                .map(|c| Ok(PullMessageResponse { content: Some(c) })),
        ))))
    }

    async fn update_offset(
        &self,
        request: Request<UpdateOffsetRequest>,
    ) -> RpcResult<UpdateOffsetResponse> {
        acl_check!(self, request);
        let r = self.broker.update_offset(&request.into_inner()).await;
        self.broker.repl().log_grew();
        Ok(Response::new(UpdateOffsetResponse {
            status: Some(r.map_or_else(|e| e.status(), |()| ok_status())),
        }))
    }

    async fn get_offset(&self, request: Request<GetOffsetRequest>) -> RpcResult<GetOffsetResponse> {
        acl_check!(self, request);
        let (status, offset) = match self.broker.get_offset(&request.into_inner()) {
            Ok(o) => (ok_status(), o),
            Err(e) => (e.status(), 0),
        };
        Ok(Response::new(GetOffsetResponse {
            status: Some(status),
            offset,
        }))
    }

    async fn query_offset(
        &self,
        request: Request<QueryOffsetRequest>,
    ) -> RpcResult<QueryOffsetResponse> {
        acl_check!(self, request);
        let (status, offset) = match self.broker.query_offset(&request.into_inner()) {
            Ok(o) => (ok_status(), o),
            Err(e) => (e.status(), 0),
        };
        Ok(Response::new(QueryOffsetResponse {
            status: Some(status),
            offset,
        }))
    }

    async fn end_transaction(
        &self,
        request: Request<EndTransactionRequest>,
    ) -> RpcResult<EndTransactionResponse> {
        acl_check!(self, request);
        let r = self.broker.end_transaction(request.get_ref()).await;
        Ok(Response::new(EndTransactionResponse {
            status: Some(r.map_or_else(|e| e.status(), |()| ok_status())),
        }))
    }

    async fn recall_message(
        &self,
        request: Request<RecallMessageRequest>,
    ) -> RpcResult<RecallMessageResponse> {
        acl_check!(self, request);
        let req = request.into_inner();
        let topic = req.topic.as_ref().map(|t| t.name.as_str()).unwrap_or("");
        let (status, message_id) = match self.broker.recall(topic, &req.recall_handle).await {
            Ok(id) => (ok_status(), id),
            Err(e) => (e.status(), String::new()),
        };
        Ok(Response::new(RecallMessageResponse {
            status: Some(status),
            message_id,
        }))
    }

    type TelemetryStream = BoxStream<TelemetryCommand>;

    async fn telemetry(
        &self,
        request: Request<Streaming<TelemetryCommand>>,
    ) -> RpcResult<Self::TelemetryStream> {
        acl_check!(self, request);
        let mut stream =
            sofamq_server::session::telemetry_stream(request.into_inner(), self.session.clone())
                .with_shutdown(self.shutdown.clone());
        // Producers' streams are where transaction check-backs go.
        let txns = self.broker.txns_arc();
        if let Some((id, rx, registration)) = crate::txn::producers::Producers::register(&txns) {
            let opts = self.session.clone();
            let reg = txns.clone();
            stream = stream
                .with_responder(std::sync::Arc::new(move |client: &Settings| {
                    reg.producers.settings(id, client);
                    sofamq_server::session::server_settings(client, &opts)
                }))
                .with_server_commands(rx)
                .with_guard(Box::new(registration));
        }
        Ok(Response::new(Box::pin(stream)))
    }

    async fn notify_client_termination(
        &self,
        request: Request<NotifyClientTerminationRequest>,
    ) -> RpcResult<NotifyClientTerminationResponse> {
        acl_check!(self, request);
        Ok(Response::new(NotifyClientTerminationResponse {
            status: Some(ok_status()),
        }))
    }

    async fn change_invisible_duration(
        &self,
        request: Request<ChangeInvisibleDurationRequest>,
    ) -> RpcResult<ChangeInvisibleDurationResponse> {
        acl_check!(self, request);
        let (status, receipt_handle) =
            match self.broker.change_invisible(&request.into_inner()).await {
                Ok(h) => (ok_status(), h),
                Err(e) => (e.status(), String::new()),
            };
        self.broker.repl().log_grew();
        Ok(Response::new(ChangeInvisibleDurationResponse {
            status: Some(status),
            receipt_handle,
        }))
    }
}

/// The client id a RocketMQ 5 client sends with every call (empty when absent).
fn client_id(md: &tonic::metadata::MetadataMap) -> &str {
    md.get("x-mq-client-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}
