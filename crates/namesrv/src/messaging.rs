//! The client-facing subset of `apache.rocketmq.v2.MessagingService` served
//! by a name server, so that it can be a client's access point: routes,
//! heartbeats, Telemetry sessions. Every message-plane RPC answers with a
//! status telling the client it reached a name server.

use std::sync::Arc;
use std::time::Instant;

use sofamq_proto::v2::messaging_service_server::MessagingService;
use sofamq_proto::v2::{
    AckMessageRequest, AckMessageResponse, ChangeInvisibleDurationRequest,
    ChangeInvisibleDurationResponse, Code, EndTransactionRequest, EndTransactionResponse,
    Endpoints, ForwardMessageToDeadLetterQueueRequest, ForwardMessageToDeadLetterQueueResponse,
    GetOffsetRequest, GetOffsetResponse, HeartbeatRequest, HeartbeatResponse,
    NotifyClientTerminationRequest, NotifyClientTerminationResponse, PullMessageRequest,
    PullMessageResponse, QueryAssignmentRequest, QueryAssignmentResponse, QueryOffsetRequest,
    QueryOffsetResponse, QueryRouteRequest, QueryRouteResponse, RecallMessageRequest,
    RecallMessageResponse, ReceiveMessageRequest, ReceiveMessageResponse, SendMessageRequest,
    SendMessageResponse, TelemetryCommand, UpdateOffsetRequest, UpdateOffsetResponse,
    pull_message_response, receive_message_response,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use crate::endpoints::to_endpoints;
use crate::proxy::{DIRECT_ROUTE_HEADER, Proxy, forward};
use crate::registry::Registry;
use crate::route::query_route;
use sofamq_server::session::{SessionOptions, telemetry_stream};
use sofamq_server::status::{ok, status};

/// Message of the status returned by RPCs a name server does not serve.
pub const NOT_A_BROKER: &str =
    "this endpoint is a name server; send this request to a broker endpoint from QueryRoute";

pub use crate::proxy::forward::BoxStream;

/// `MessagingService` as served by a name server.
#[derive(Debug, Clone)]
pub struct NamesrvMessaging {
    registry: Arc<Registry>,
    session: SessionOptions,
    telemetry_slots: Arc<Semaphore>,
    shutdown: CancellationToken,
    /// Proxy mode (routes name this endpoint; client RPCs are forwarded to masters).
    proxy: Option<Arc<Proxy>>,
    /// This server's own address, the endpoint of proxy routes when a request names none.
    local: Option<std::net::SocketAddr>,
}

impl NamesrvMessaging {
    /// A service over `registry`; at most `max_telemetry_streams` Telemetry
    /// streams are open at once, and all end when `shutdown` is cancelled.
    pub fn new(
        registry: Arc<Registry>,
        session: SessionOptions,
        max_telemetry_streams: usize,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            registry,
            session,
            telemetry_slots: Arc::new(Semaphore::new(max_telemetry_streams)),
            shutdown,
            proxy: None,
            local: None,
        }
    }

    /// Serves client RPCs through `proxy` (proxy mode); `local` is this server's address.
    pub fn with_proxy(mut self, proxy: Arc<Proxy>, local: std::net::SocketAddr) -> Self {
        self.proxy = Some(proxy);
        self.local = Some(local);
        self
    }

    /// The endpoints of this server as a client reached it: the ones the request names
    /// (its access point), else the connection's local address, else the bound address.
    fn proxy_endpoints(
        &self,
        named: Option<&Endpoints>,
        conn_local: Option<std::net::SocketAddr>,
    ) -> Option<Endpoints> {
        if let Some(e) = named.filter(|e| !e.addresses.is_empty()) {
            return Some(e.clone());
        }
        let addr = conn_local.or(self.local)?;
        to_endpoints(&[addr.to_string()]).ok()
    }
}

fn wants_direct(md: &tonic::metadata::MetadataMap) -> bool {
    md.get(DIRECT_ROUTE_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("direct"))
}

fn not_a_broker(rpc: &str) -> sofamq_proto::v2::Status {
    debug!(rpc, "message-plane RPC on a name server");
    status(Code::IllegalAccessPoint, NOT_A_BROKER)
}

fn once<T: Send + 'static>(item: T) -> Response<BoxStream<T>> {
    Response::new(Box::pin(tokio_stream::once(Ok(item))))
}

#[tonic::async_trait]
impl MessagingService for NamesrvMessaging {
    async fn query_route(
        &self,
        request: Request<QueryRouteRequest>,
    ) -> Result<Response<QueryRouteResponse>, Status> {
        let mut resp = query_route(&self.registry, request.get_ref(), Instant::now());
        if self.proxy.is_some()
            && !wants_direct(request.metadata())
            && let Some(ep) =
                self.proxy_endpoints(request.get_ref().endpoints.as_ref(), request.local_addr())
        {
            for q in &mut resp.message_queues {
                if let Some(b) = q.broker.as_mut() {
                    b.endpoints = Some(ep.clone());
                }
            }
        }
        Ok(Response::new(resp))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        if let Some(p) = &self.proxy {
            let (md, _, req) = request.into_parts();
            return Ok(Response::new(forward::heartbeat(p, md, req).await));
        }
        Ok(Response::new(HeartbeatResponse { status: Some(ok()) }))
    }

    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        if let Some(p) = &self.proxy {
            let (md, _, req) = request.into_parts();
            return Ok(Response::new(forward::send_message(p, md, req).await));
        }
        drop(request);
        Ok(Response::new(SendMessageResponse {
            status: Some(not_a_broker("SendMessage")),
            entries: Vec::new(),
        }))
    }

    async fn query_assignment(
        &self,
        request: Request<QueryAssignmentRequest>,
    ) -> Result<Response<QueryAssignmentResponse>, Status> {
        if let Some(p) = &self.proxy {
            let local = request.local_addr();
            let (md, _, req) = request.into_parts();
            let Some(ep) = self.proxy_endpoints(req.endpoints.as_ref(), local) else {
                return Ok(Response::new(QueryAssignmentResponse {
                    status: Some(status(
                        Code::InternalError,
                        "proxy: no endpoint to hand out",
                    )),
                    assignments: Vec::new(),
                }));
            };
            return Ok(Response::new(
                forward::query_assignment(p, md, req, ep).await,
            ));
        }
        drop(request);
        Ok(Response::new(QueryAssignmentResponse {
            status: Some(status(Code::NotImplemented, NOT_A_BROKER)),
            assignments: Vec::new(),
        }))
    }

    type ReceiveMessageStream = BoxStream<ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        request: Request<ReceiveMessageRequest>,
    ) -> Result<Response<Self::ReceiveMessageStream>, Status> {
        if let Some(p) = &self.proxy {
            let (md, _, req) = request.into_parts();
            return Ok(Response::new(forward::receive_message(p, md, req).await));
        }
        drop(request);
        Ok(once(ReceiveMessageResponse {
            content: Some(receive_message_response::Content::Status(not_a_broker(
                "ReceiveMessage",
            ))),
        }))
    }

    async fn ack_message(
        &self,
        request: Request<AckMessageRequest>,
    ) -> Result<Response<AckMessageResponse>, Status> {
        if let Some(p) = &self.proxy {
            let (md, _, req) = request.into_parts();
            return Ok(Response::new(forward::ack_message(p, md, req).await));
        }
        drop(request);
        Ok(Response::new(AckMessageResponse {
            status: Some(not_a_broker("AckMessage")),
            entries: Vec::new(),
        }))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        request: Request<ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<ForwardMessageToDeadLetterQueueResponse>, Status> {
        if let Some(p) = &self.proxy {
            let (md, _, req) = request.into_parts();
            return Ok(Response::new(forward::forward_to_dlq(p, md, req).await));
        }
        drop(request);
        Ok(Response::new(ForwardMessageToDeadLetterQueueResponse {
            status: Some(not_a_broker("ForwardMessageToDeadLetterQueue")),
        }))
    }

    type PullMessageStream = BoxStream<PullMessageResponse>;

    async fn pull_message(
        &self,
        request: Request<PullMessageRequest>,
    ) -> Result<Response<Self::PullMessageStream>, Status> {
        if let Some(p) = &self.proxy {
            let (md, _, req) = request.into_parts();
            return Ok(Response::new(forward::pull_message(p, md, req).await));
        }
        drop(request);
        Ok(once(PullMessageResponse {
            content: Some(pull_message_response::Content::Status(not_a_broker(
                "PullMessage",
            ))),
        }))
    }

    async fn update_offset(
        &self,
        request: Request<UpdateOffsetRequest>,
    ) -> Result<Response<UpdateOffsetResponse>, Status> {
        if let Some(p) = &self.proxy {
            let (md, _, req) = request.into_parts();
            return Ok(Response::new(forward::update_offset(p, md, req).await));
        }
        drop(request);
        Ok(Response::new(UpdateOffsetResponse {
            status: Some(not_a_broker("UpdateOffset")),
        }))
    }

    async fn get_offset(
        &self,
        request: Request<GetOffsetRequest>,
    ) -> Result<Response<GetOffsetResponse>, Status> {
        if let Some(p) = &self.proxy {
            let (md, _, req) = request.into_parts();
            return Ok(Response::new(forward::get_offset(p, md, req).await));
        }
        drop(request);
        Ok(Response::new(GetOffsetResponse {
            status: Some(not_a_broker("GetOffset")),
            offset: 0,
        }))
    }

    async fn query_offset(
        &self,
        request: Request<QueryOffsetRequest>,
    ) -> Result<Response<QueryOffsetResponse>, Status> {
        if let Some(p) = &self.proxy {
            let (md, _, req) = request.into_parts();
            return Ok(Response::new(forward::query_offset(p, md, req).await));
        }
        drop(request);
        Ok(Response::new(QueryOffsetResponse {
            status: Some(not_a_broker("QueryOffset")),
            offset: 0,
        }))
    }

    async fn end_transaction(
        &self,
        request: Request<EndTransactionRequest>,
    ) -> Result<Response<EndTransactionResponse>, Status> {
        if let Some(p) = &self.proxy {
            let (md, _, req) = request.into_parts();
            return Ok(Response::new(forward::end_transaction(p, md, req).await));
        }
        drop(request);
        Ok(Response::new(EndTransactionResponse {
            status: Some(not_a_broker("EndTransaction")),
        }))
    }

    /// Official clients send RecallMessage to their access point (often a name server),
    /// not to a broker of the route: forward it to the master of the group the handle names
    /// (the first master of the topic when the handle names none), credentials unchanged.
    async fn recall_message(
        &self,
        request: Request<RecallMessageRequest>,
    ) -> Result<Response<RecallMessageResponse>, Status> {
        let fail = |code: Code, msg: String| {
            Ok(Response::new(RecallMessageResponse {
                status: Some(status(code, &msg)),
                message_id: String::new(),
            }))
        };
        let (md, _, req) = request.into_parts();
        if let Some(p) = &self.proxy {
            return Ok(Response::new(forward::recall_message(p, md, req).await));
        }
        let topic = req
            .topic
            .as_ref()
            .map(|t| t.name.clone())
            .unwrap_or_default();
        let group = crate::proxy::handles::group_of(&req.recall_handle, "r1");
        let routes = self.registry.master_routes(&topic, Instant::now());
        let Some(route) = routes
            .iter()
            .find(|r| group.as_deref() == Some(r.broker_name.as_str()))
            .or_else(|| routes.first())
        else {
            return fail(
                Code::TopicNotFound,
                format!("no master serves topic '{topic}'"),
            );
        };
        let mut fwd = Request::new(req);
        for (k, v) in md.iter().filter_map(|kv| match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) => Some((k, v)),
            tonic::metadata::KeyAndValueRef::Binary(..) => None,
        }) {
            if k.as_str() == "authorization" || k.as_str().starts_with("x-mq-") {
                fwd.metadata_mut().insert(k.clone(), v.clone());
            }
        }
        fwd.set_timeout(std::time::Duration::from_secs(10));
        let addr = format!("http://{}", route.grpc_endpoint);
        let channel = match tonic::transport::Endpoint::from_shared(addr) {
            Ok(e) => e
                .connect_timeout(std::time::Duration::from_secs(3))
                .connect_lazy(),
            Err(e) => return fail(Code::InternalServerError, format!("broker address: {e}")),
        };
        match sofamq_proto::v2::messaging_service_client::MessagingServiceClient::new(channel)
            .recall_message(fwd)
            .await
        {
            Ok(r) => Ok(r),
            Err(e) => fail(
                Code::ProxyTimeout,
                format!(
                    "forwarding RecallMessage to {} failed: {}",
                    route.grpc_endpoint,
                    e.message()
                ),
            ),
        }
    }

    type TelemetryStream = BoxStream<TelemetryCommand>;

    async fn telemetry(
        &self,
        request: Request<Streaming<TelemetryCommand>>,
    ) -> Result<Response<Self::TelemetryStream>, Status> {
        let Ok(permit) = Arc::clone(&self.telemetry_slots).try_acquire_owned() else {
            warn!("too many telemetry streams; refusing one");
            return Ok(once(TelemetryCommand {
                status: Some(status(
                    Code::TooManyRequests,
                    "too many telemetry streams on this name server",
                )),
                command: None,
            }));
        };
        if let Some(p) = &self.proxy {
            let (md, _, inbound) = request.into_parts();
            let (down_tx, down_rx) = tokio::sync::mpsc::channel(64);
            let relay = Arc::new(crate::proxy::telemetry::start(Arc::clone(p), md, down_tx));
            let observer = Arc::clone(&relay);
            let inbound = tokio_stream::StreamExt::map(inbound, move |item| {
                if let Ok(cmd) = &item {
                    observer.observe(cmd);
                }
                item
            });
            let stream = telemetry_stream(inbound, self.session.clone())
                .with_shutdown(self.shutdown.clone())
                .with_permit(permit)
                .with_server_commands(down_rx)
                .with_guard(Box::new(relay));
            return Ok(Response::new(Box::pin(stream)));
        }
        let stream = telemetry_stream(request.into_inner(), self.session.clone())
            .with_shutdown(self.shutdown.clone())
            .with_permit(permit);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn notify_client_termination(
        &self,
        request: Request<NotifyClientTerminationRequest>,
    ) -> Result<Response<NotifyClientTerminationResponse>, Status> {
        if let Some(p) = &self.proxy {
            let (md, _, req) = request.into_parts();
            return Ok(Response::new(
                forward::notify_client_termination(p, md, req).await,
            ));
        }
        drop(request);
        Ok(Response::new(NotifyClientTerminationResponse {
            status: Some(ok()),
        }))
    }

    async fn change_invisible_duration(
        &self,
        request: Request<ChangeInvisibleDurationRequest>,
    ) -> Result<Response<ChangeInvisibleDurationResponse>, Status> {
        if let Some(p) = &self.proxy {
            let (md, _, req) = request.into_parts();
            return Ok(Response::new(
                forward::change_invisible_duration(p, md, req).await,
            ));
        }
        drop(request);
        Ok(Response::new(ChangeInvisibleDurationResponse {
            status: Some(not_a_broker("ChangeInvisibleDuration")),
            receipt_handle: String::new(),
        }))
    }
}
