//! A fake `MessagingService` (name server + broker in one) for the producer
//! tests: QueryRoute answers a configurable route, SendMessage answers one
//! entry per message with a configurable code (with a recall handle for DELAY
//! messages and a transaction id for TRANSACTION ones, refusing more than one
//! TRANSACTION message per request as the broker does), RecallMessage and
//! EndTransaction check the handles and ids it issued, Telemetry answers
//! settings and lets a test push commands (a transaction check) to every open
//! stream; everything else is Unimplemented. It records what it received.

#![allow(dead_code)]

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sofamq_proto::v2::{self, messaging_service_server::*, *};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
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
    /// When set, a request whose every message `code_for` answers HA_NOT_AVAILABLE is
    /// refused whole with the not-held header, as a master short of in-sync replicas that
    /// holds none of the messages answers.
    pub whole_not_held: AtomicBool,
    pub last_headers: Mutex<Option<MetadataMap>>,
    /// Requests with a TRANSACTION message among other messages.
    pub mixed_transaction_requests: AtomicUsize,
    /// SendMessage requests whose messages named more than one topic.
    pub mixed_topic_requests: AtomicUsize,
    /// Recall handles issued, to message ids.
    pub handles: Mutex<HashMap<String, String>>,
    /// Transaction ids issued, to message ids.
    pub transactions: Mutex<HashMap<String, String>>,
    pub recalls: Mutex<Vec<RecallMessageRequest>>,
    /// If set, RecallMessage answers this code.
    pub recall_code: Mutex<Option<i32>>,
    pub end_transactions: Mutex<Vec<EndTransactionRequest>>,
    /// If set, EndTransaction answers this code.
    pub end_code: Mutex<Option<i32>>,
    /// Every command received on any Telemetry stream.
    pub telemetry_received: Mutex<Vec<TelemetryCommand>>,
    pub telemetry_opened: AtomicUsize,
    /// Streams whose client side ended.
    pub telemetry_closed: AtomicUsize,
    telemetry_streams: Mutex<Vec<mpsc::Sender<Result<TelemetryCommand, GrpcStatus>>>>,
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

    /// The topics of every Settings received on Telemetry, in order.
    pub fn settings_topics(&self) -> Vec<Vec<String>> {
        self.telemetry_received
            .lock()
            .unwrap()
            .iter()
            .filter_map(|c| match &c.command {
                Some(telemetry_command::Command::Settings(s)) => Some(s),
                _ => None,
            })
            .map(|s| match &s.pub_sub {
                Some(settings::PubSub::Publishing(p)) => {
                    p.topics.iter().map(|t| t.name.clone()).collect()
                }
                _ => Vec::new(),
            })
            .collect()
    }

    /// Sends `cmd` on every open Telemetry stream; returns how many took it.
    pub fn push_command(&self, cmd: &TelemetryCommand) -> usize {
        let streams = self.telemetry_streams.lock().unwrap().clone();
        streams
            .iter()
            .filter(|tx| tx.try_send(Ok(cmd.clone())).is_ok())
            .count()
    }

    /// Ends every open Telemetry stream from the server's side.
    pub fn close_telemetry(&self) {
        self.telemetry_streams.lock().unwrap().clear();
    }

    /// The EndTransaction requests for `transaction_id`.
    pub fn ends_of(&self, transaction_id: &str) -> Vec<EndTransactionRequest> {
        self.end_transactions
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.transaction_id == transaction_id)
            .cloned()
            .collect()
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
            mixed_transaction_requests: AtomicUsize::new(0),
            mixed_topic_requests: AtomicUsize::new(0),
            handles: Mutex::new(HashMap::new()),
            transactions: Mutex::new(HashMap::new()),
            recalls: Mutex::new(Vec::new()),
            recall_code: Mutex::new(None),
            end_transactions: Mutex::new(Vec::new()),
            end_code: Mutex::new(None),
            whole_not_held: AtomicBool::new(false),
            telemetry_received: Mutex::new(Vec::new()),
            telemetry_opened: AtomicUsize::new(0),
            telemetry_closed: AtomicUsize::new(0),
            telemetry_streams: Mutex::new(Vec::new()),
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
        let is_txn = |m: &v2::Message| {
            m.system_properties.as_ref().unwrap().message_type == MessageType::Transaction as i32
        };
        let txns = messages.iter().filter(|m| is_txn(m)).count();
        if txns > 0 && messages.len() > 1 {
            s.mixed_transaction_requests.fetch_add(1, Ordering::SeqCst);
        }
        // Like the broker: a request that spans topics is refused whole.
        if messages.windows(2).any(|w| w[0].topic != w[1].topic) {
            s.mixed_topic_requests.fetch_add(1, Ordering::SeqCst);
            s.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Ok(Response::new(SendMessageResponse {
                status: Some(v2::Status {
                    code: Code::MessageCorrupted as i32,
                    message: "messages of one request name different topics".into(),
                }),
                entries: Vec::new(),
            }));
        }
        let code_for = s.code_for.lock().unwrap().clone();
        let mut all_ok = true;
        let entries: Vec<SendResultEntry> = messages
            .iter()
            .map(|m| {
                let sp = m.system_properties.as_ref().unwrap();
                let id = sp.message_id.clone();
                // Like the broker: more than one TRANSACTION message per request is refused.
                let code = if txns > 1 {
                    Code::MessagePropertyConflictWithType as i32
                } else {
                    code_for(m)
                };
                let (mut transaction_id, mut recall_handle) = (String::new(), String::new());
                let offset = if code == Code::Ok as i32 {
                    let o = s.next_offset.fetch_add(1, Ordering::SeqCst);
                    s.offsets.lock().unwrap().insert(id.clone(), o);
                    if is_txn(m) {
                        transaction_id = format!("tx-{}-{id}", s.name);
                        s.transactions
                            .lock()
                            .unwrap()
                            .insert(transaction_id.clone(), id.clone());
                    }
                    if sp.delivery_timestamp.is_some() {
                        recall_handle = format!("rh-{}-{id}", s.name);
                        s.handles
                            .lock()
                            .unwrap()
                            .insert(recall_handle.clone(), id.clone());
                    }
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
                    transaction_id,
                    offset,
                    recall_handle,
                }
            })
            .collect();
        s.received.lock().unwrap().extend(messages);
        s.in_flight.fetch_sub(1, Ordering::SeqCst);
        let refused =
            |e: &SendResultEntry| e.status.as_ref().unwrap().code == Code::HaNotAvailable as i32;
        if s.whole_not_held.load(Ordering::SeqCst) && entries.iter().all(refused) {
            let mut resp = Response::new(SendMessageResponse {
                status: Some(v2::Status {
                    code: Code::HaNotAvailable as i32,
                    message: "1 of 2 required replicas in sync; not accepting writes".into(),
                }),
                entries: Vec::new(),
            });
            resp.metadata_mut().insert(
                sofamq_proto::codes::NOT_HELD_HEADER,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            return Ok(resp);
        }
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
        request: Request<EndTransactionRequest>,
    ) -> Result<Response<EndTransactionResponse>, GrpcStatus> {
        let s = &self.0;
        let req = request.into_inner();
        s.end_transactions.lock().unwrap().push(req.clone());
        let forced = *s.end_code.lock().unwrap();
        let known = s
            .transactions
            .lock()
            .unwrap()
            .get(&req.transaction_id)
            .cloned();
        let code = forced.unwrap_or(match known {
            Some(id) if id == req.message_id => Code::Ok as i32,
            _ => Code::InvalidTransactionId as i32,
        });
        Ok(Response::new(EndTransactionResponse {
            status: Some(v2::Status {
                code,
                message: format!("code {code}"),
            }),
        }))
    }
    async fn recall_message(
        &self,
        request: Request<RecallMessageRequest>,
    ) -> Result<Response<RecallMessageResponse>, GrpcStatus> {
        let s = &self.0;
        let req = request.into_inner();
        s.recalls.lock().unwrap().push(req.clone());
        let forced = *s.recall_code.lock().unwrap();
        let known = s.handles.lock().unwrap().get(&req.recall_handle).cloned();
        let (code, message_id) = match (forced, known) {
            (Some(code), _) => (code, String::new()),
            (None, Some(id)) => (Code::Ok as i32, id),
            (None, None) => (Code::BadRequest as i32, String::new()),
        };
        Ok(Response::new(RecallMessageResponse {
            status: Some(v2::Status {
                code,
                message: format!("code {code}"),
            }),
            message_id,
        }))
    }
    type TelemetryStream = BoxStream<TelemetryCommand>;
    async fn telemetry(
        &self,
        request: Request<tonic::Streaming<TelemetryCommand>>,
    ) -> Result<Response<Self::TelemetryStream>, GrpcStatus> {
        let s = self.0.clone();
        s.telemetry_opened.fetch_add(1, Ordering::SeqCst);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        // The reader answers settings through a weak handle, so that
        // `close_telemetry` (dropping the strong one) ends the stream.
        let weak = tx.downgrade();
        s.telemetry_streams.lock().unwrap().push(tx);
        tokio::spawn(async move {
            while let Ok(Some(cmd)) = inbound.message().await {
                s.telemetry_received.lock().unwrap().push(cmd.clone());
                if let Some(telemetry_command::Command::Settings(settings)) = cmd.command
                    && let Some(tx) = weak.upgrade()
                {
                    let reply = TelemetryCommand {
                        status: ok(),
                        command: Some(telemetry_command::Command::Settings(settings)),
                    };
                    let _ = tx.send(Ok(reply)).await;
                }
            }
            s.telemetry_closed.fetch_add(1, Ordering::SeqCst);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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
