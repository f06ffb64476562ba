//! A fake `MessagingService` (name server + broker in one) for the producer
//! tests: QueryRoute answers a configurable route, SendMessage answers one
//! entry per message with a configurable code; everything else is
//! Unimplemented. It records what it received.

#![allow(dead_code)]

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sofamq_proto::v2::{self, messaging_service_server::*, *};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status as GrpcStatus};

type CodeFn = Arc<dyn Fn(&v2::Message) -> i32 + Send + Sync>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, GrpcStatus>> + Send>>;

/// What the fake has seen and how it answers.
pub struct State {
    pub name: String,
    /// Route answered by QueryRoute: (broker name, "host:port").
    pub route: Mutex<Vec<(String, String)>>,
    /// If set, replaces `route` after the first QueryRoute.
    pub next_route: Mutex<Option<Vec<(String, String)>>>,
    pub route_queries: AtomicUsize,
    /// If set, QueryRoute answers this status code and no queues.
    pub route_code: Mutex<Option<i32>>,
    pub send_requests: AtomicUsize,
    /// Every received message, in arrival order.
    pub received: Mutex<Vec<v2::Message>>,
    /// Offsets answered, by message id.
    pub offsets: Mutex<HashMap<String, i64>>,
    /// Size of every SendMessage request.
    pub batch_sizes: Mutex<Vec<usize>>,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub next_offset: AtomicI64,
    pub delay: Mutex<Duration>,
    pub code_for: Mutex<CodeFn>,
    pub last_headers: Mutex<Option<MetadataMap>>,
}

impl State {
    pub fn received_ids(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|m| m.system_properties.as_ref().unwrap().message_id.clone())
            .collect()
    }

    pub fn set_code(&self, f: impl Fn(&v2::Message) -> i32 + Send + Sync + 'static) {
        *self.code_for.lock().unwrap() = Arc::new(f);
    }

    pub fn set_route(&self, route: Vec<(String, String)>) {
        *self.route.lock().unwrap() = route;
    }

    pub fn max_batch(&self) -> usize {
        self.batch_sizes
            .lock()
            .unwrap()
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
    }
}

/// A running fake server.
pub struct Fake {
    pub addr: String,
    pub state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Fake {
    /// Starts a fake broker named `name` on 127.0.0.1:0. Its route lists
    /// only itself until changed. Messages tagged "bad" get 40004.
    pub async fn start(name: &str) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(State {
            name: name.to_string(),
            route: Mutex::new(vec![(name.to_string(), addr.clone())]),
            next_route: Mutex::new(None),
            route_queries: AtomicUsize::new(0),
            route_code: Mutex::new(None),
            send_requests: AtomicUsize::new(0),
            received: Mutex::new(Vec::new()),
            offsets: Mutex::new(HashMap::new()),
            batch_sizes: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            next_offset: AtomicI64::new(1000),
            delay: Mutex::new(Duration::ZERO),
            code_for: Mutex::new(Arc::new(|m: &v2::Message| {
                if m.system_properties.as_ref().and_then(|s| s.tag.as_deref()) == Some("bad") {
                    Code::IllegalMessageTag as i32
                } else {
                    Code::Ok as i32
                }
            })),
            last_headers: Mutex::new(None),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let svc = MessagingServiceServer::new(Svc(state.clone()));
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Fake {
            addr,
            state,
            stop: Some(stop),
        }
    }

    pub fn route_entry(&self) -> (String, String) {
        (self.state.name.clone(), self.addr.clone())
    }
}

/// An address where nothing listens.
pub fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

struct Svc(Arc<State>);

fn ok() -> Option<v2::Status> {
    Some(v2::Status {
        code: Code::Ok as i32,
        message: "OK".into(),
    })
}

fn unimplemented<T>() -> Result<T, GrpcStatus> {
    Err(GrpcStatus::unimplemented("fake"))
}

#[tonic::async_trait]
impl MessagingService for Svc {
    async fn query_route(
        &self,
        request: Request<QueryRouteRequest>,
    ) -> Result<Response<QueryRouteResponse>, GrpcStatus> {
        let s = &self.0;
        s.route_queries.fetch_add(1, Ordering::SeqCst);
        let topic = request.into_inner().topic.unwrap_or_default();
        let route_code = *s.route_code.lock().unwrap();
        if let Some(code) = route_code {
            tokio::time::sleep(Duration::from_millis(20)).await;
            return Ok(Response::new(QueryRouteResponse {
                status: Some(v2::Status {
                    code,
                    message: "refused".into(),
                }),
                message_queues: vec![],
            }));
        }
        let route = s.route.lock().unwrap().clone();
        if let Some(next) = s.next_route.lock().unwrap().take() {
            *s.route.lock().unwrap() = next;
        }
        let message_queues = route
            .into_iter()
            .map(|(name, addr)| {
                let (host, port) = addr.rsplit_once(':').unwrap();
                MessageQueue {
                    topic: Some(topic.clone()),
                    id: 0,
                    permission: Permission::ReadWrite as i32,
                    broker: Some(Broker {
                        name,
                        id: 0,
                        endpoints: Some(Endpoints {
                            scheme: AddressScheme::IPv4 as i32,
                            addresses: vec![Address {
                                host: host.into(),
                                port: port.parse().unwrap(),
                            }],
                        }),
                    }),
                    accept_message_types: vec![],
                }
            })
            .collect();
        Ok(Response::new(QueryRouteResponse {
            status: ok(),
            message_queues,
        }))
    }

    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, GrpcStatus> {
        let s = &self.0;
        s.send_requests.fetch_add(1, Ordering::SeqCst);
        let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_in_flight.fetch_max(now, Ordering::SeqCst);
        *s.last_headers.lock().unwrap() = Some(request.metadata().clone());
        let delay = *s.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let messages = request.into_inner().messages;
        s.batch_sizes.lock().unwrap().push(messages.len());
        let code_for = s.code_for.lock().unwrap().clone();
        let mut all_ok = true;
        let entries = messages
            .iter()
            .map(|m| {
                let id = m.system_properties.as_ref().unwrap().message_id.clone();
                let code = code_for(m);
                let offset = if code == Code::Ok as i32 {
                    let o = s.next_offset.fetch_add(1, Ordering::SeqCst);
                    s.offsets.lock().unwrap().insert(id.clone(), o);
                    o
                } else {
                    all_ok = false;
                    0
                };
                SendResultEntry {
                    status: Some(v2::Status {
                        code,
                        message: format!("code {code}"),
                    }),
                    message_id: id,
                    transaction_id: String::new(),
                    offset,
                    recall_handle: String::new(),
                }
            })
            .collect();
        s.received.lock().unwrap().extend(messages);
        s.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(Response::new(SendMessageResponse {
            status: if all_ok {
                ok()
            } else {
                Some(v2::Status {
                    code: Code::MultipleResults as i32,
                    message: "see entries".into(),
                })
            },
            entries,
        }))
    }

    async fn heartbeat(
        &self,
        _: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, GrpcStatus> {
        unimplemented()
    }
    async fn query_assignment(
        &self,
        _: Request<QueryAssignmentRequest>,
    ) -> Result<Response<QueryAssignmentResponse>, GrpcStatus> {
        unimplemented()
    }
    type ReceiveMessageStream = BoxStream<ReceiveMessageResponse>;
    async fn receive_message(
        &self,
        _: Request<ReceiveMessageRequest>,
    ) -> Result<Response<Self::ReceiveMessageStream>, GrpcStatus> {
        unimplemented()
    }
    async fn ack_message(
        &self,
        _: Request<AckMessageRequest>,
    ) -> Result<Response<AckMessageResponse>, GrpcStatus> {
        unimplemented()
    }
    async fn forward_message_to_dead_letter_queue(
        &self,
        _: Request<ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<ForwardMessageToDeadLetterQueueResponse>, GrpcStatus> {
        unimplemented()
    }
    type PullMessageStream = BoxStream<PullMessageResponse>;
    async fn pull_message(
        &self,
        _: Request<PullMessageRequest>,
    ) -> Result<Response<Self::PullMessageStream>, GrpcStatus> {
        unimplemented()
    }
    async fn update_offset(
        &self,
        _: Request<UpdateOffsetRequest>,
    ) -> Result<Response<UpdateOffsetResponse>, GrpcStatus> {
        unimplemented()
    }
    async fn get_offset(
        &self,
        _: Request<GetOffsetRequest>,
    ) -> Result<Response<GetOffsetResponse>, GrpcStatus> {
        unimplemented()
    }
    async fn query_offset(
        &self,
        _: Request<QueryOffsetRequest>,
    ) -> Result<Response<QueryOffsetResponse>, GrpcStatus> {
        unimplemented()
    }
    async fn end_transaction(
        &self,
        _: Request<EndTransactionRequest>,
    ) -> Result<Response<EndTransactionResponse>, GrpcStatus> {
        unimplemented()
    }
    async fn recall_message(
        &self,
        _: Request<RecallMessageRequest>,
    ) -> Result<Response<RecallMessageResponse>, GrpcStatus> {
        unimplemented()
    }
    type TelemetryStream = BoxStream<TelemetryCommand>;
    async fn telemetry(
        &self,
        _: Request<tonic::Streaming<TelemetryCommand>>,
    ) -> Result<Response<Self::TelemetryStream>, GrpcStatus> {
        unimplemented()
    }
    async fn notify_client_termination(
        &self,
        _: Request<NotifyClientTerminationRequest>,
    ) -> Result<Response<NotifyClientTerminationResponse>, GrpcStatus> {
        unimplemented()
    }
    async fn change_invisible_duration(
        &self,
        _: Request<ChangeInvisibleDurationRequest>,
    ) -> Result<Response<ChangeInvisibleDurationResponse>, GrpcStatus> {
        unimplemented()
    }
}
pub mod recorder;
