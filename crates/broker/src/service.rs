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

use crate::broker::Broker;
use crate::error::ok_status;

type RpcResult<T> = Result<Response<T>, tonic::Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

/// The gRPC adapter over a [`Broker`].
pub struct BrokerService {
    broker: Broker,
    namesrvs: Vec<MessagingServiceClient<Channel>>,
    session: sofamq_namesrv::session::SessionOptions,
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
                Channel::from_shared(format!("http://{a}"))
                    .ok()
                    .map(|e| MessagingServiceClient::new(e.connect_lazy()))
            })
            .collect();
        let session = sofamq_namesrv::session::SessionOptions {
            max_body_size: i32::try_from(broker.config().limits.max_body_bytes).unwrap_or(i32::MAX),
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

fn not_implemented(what: &str) -> Status {
    Status {
        code: Code::NotImplemented as i32,
        message: format!("{what} is not served by this broker yet"),
    }
}

fn one<T: Send + 'static>(item: T) -> BoxStream<T> {
    Box::pin(tokio_stream::once(Ok(item)))
}

#[tonic::async_trait]
impl MessagingService for BrokerService {
    async fn query_route(
        &self,
        request: Request<QueryRouteRequest>,
    ) -> RpcResult<QueryRouteResponse> {
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

    async fn heartbeat(&self, _request: Request<HeartbeatRequest>) -> RpcResult<HeartbeatResponse> {
        Ok(Response::new(HeartbeatResponse {
            status: Some(ok_status()),
        }))
    }

    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> RpcResult<SendMessageResponse> {
        Ok(Response::new(self.broker.send(request.into_inner()).await))
    }

    async fn query_assignment(
        &self,
        _request: Request<QueryAssignmentRequest>,
    ) -> RpcResult<QueryAssignmentResponse> {
        Ok(Response::new(QueryAssignmentResponse {
            status: Some(not_implemented("QueryAssignment")),
            assignments: Vec::new(),
        }))
    }

    type ReceiveMessageStream = BoxStream<ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        _request: Request<ReceiveMessageRequest>,
    ) -> RpcResult<Self::ReceiveMessageStream> {
        Ok(Response::new(one(ReceiveMessageResponse {
            content: Some(receive_message_response::Content::Status(not_implemented(
                "ReceiveMessage",
            ))),
        })))
    }

    async fn ack_message(
        &self,
        _request: Request<AckMessageRequest>,
    ) -> RpcResult<AckMessageResponse> {
        Ok(Response::new(AckMessageResponse {
            status: Some(not_implemented("AckMessage")),
            entries: Vec::new(),
        }))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        _request: Request<ForwardMessageToDeadLetterQueueRequest>,
    ) -> RpcResult<ForwardMessageToDeadLetterQueueResponse> {
        Ok(Response::new(ForwardMessageToDeadLetterQueueResponse {
            status: Some(not_implemented("ForwardMessageToDeadLetterQueue")),
        }))
    }

    type PullMessageStream = BoxStream<PullMessageResponse>;

    async fn pull_message(
        &self,
        _request: Request<PullMessageRequest>,
    ) -> RpcResult<Self::PullMessageStream> {
        Ok(Response::new(one(PullMessageResponse {
            content: Some(pull_message_response::Content::Status(not_implemented(
                "PullMessage",
            ))),
        })))
    }

    async fn update_offset(
        &self,
        _request: Request<UpdateOffsetRequest>,
    ) -> RpcResult<UpdateOffsetResponse> {
        Ok(Response::new(UpdateOffsetResponse {
            status: Some(not_implemented("UpdateOffset")),
        }))
    }

    async fn get_offset(
        &self,
        _request: Request<GetOffsetRequest>,
    ) -> RpcResult<GetOffsetResponse> {
        Ok(Response::new(GetOffsetResponse {
            status: Some(not_implemented("GetOffset")),
            offset: 0,
        }))
    }

    async fn query_offset(
        &self,
        _request: Request<QueryOffsetRequest>,
    ) -> RpcResult<QueryOffsetResponse> {
        Ok(Response::new(QueryOffsetResponse {
            status: Some(not_implemented("QueryOffset")),
            offset: 0,
        }))
    }

    async fn end_transaction(
        &self,
        _request: Request<EndTransactionRequest>,
    ) -> RpcResult<EndTransactionResponse> {
        Ok(Response::new(EndTransactionResponse {
            status: Some(not_implemented("EndTransaction")),
        }))
    }

    type TelemetryStream = BoxStream<TelemetryCommand>;

    async fn telemetry(
        &self,
        request: Request<Streaming<TelemetryCommand>>,
    ) -> RpcResult<Self::TelemetryStream> {
        let stream =
            sofamq_namesrv::session::telemetry_stream(request.into_inner(), self.session.clone())
                .with_shutdown(self.shutdown.clone());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn notify_client_termination(
        &self,
        _request: Request<NotifyClientTerminationRequest>,
    ) -> RpcResult<NotifyClientTerminationResponse> {
        Ok(Response::new(NotifyClientTerminationResponse {
            status: Some(ok_status()),
        }))
    }

    async fn change_invisible_duration(
        &self,
        _request: Request<ChangeInvisibleDurationRequest>,
    ) -> RpcResult<ChangeInvisibleDurationResponse> {
        Ok(Response::new(ChangeInvisibleDurationResponse {
            status: Some(not_implemented("ChangeInvisibleDuration")),
            receipt_handle: String::new(),
        }))
    }
}
