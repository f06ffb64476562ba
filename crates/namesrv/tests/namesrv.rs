//! In-process tests of the name server: registration, routes, expiry,
//! Telemetry sessions and shutdown, through real tonic clients.

use std::net::SocketAddr;
use std::time::Duration;

use sofamq_namesrv::{NamesrvConfig, NamesrvError, run};
use sofamq_proto::namesrv::name_server_admin_client::NameServerAdminClient;
use sofamq_proto::namesrv::{
    ListBrokersRequest, PERM_READ_WRITE, RegisterBrokerRequest, TopicRoute, UnregisterBrokerRequest,
};
use sofamq_proto::v2::messaging_service_client::MessagingServiceClient;
use sofamq_proto::v2::{
    AddressScheme, ClientType, Code, HeartbeatRequest, MessageQueue, MessageType,
    NotifyClientTerminationRequest, Permission, Publishing, QueryRouteRequest, Resource,
    SendMessageRequest, Settings, Subscription, TelemetryCommand, retry_policy, settings::PubSub,
    telemetry_command::Command,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(5);

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), NamesrvError>>,
}

impl Server {
    async fn start(config: NamesrvConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(run(
            listener,
            config,
            sofamq_server::Shutdown::on(async move {
                let _ = stopped.await;
            }),
        ));
        Self {
            addr,
            stop: Some(stop),
            handle,
        }
    }

    async fn messaging(&self) -> MessagingServiceClient<Channel> {
        MessagingServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    async fn admin(&self) -> NameServerAdminClient<Channel> {
        NameServerAdminClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    async fn stop(mut self) -> Result<(), NamesrvError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("server did not stop in time")
            .unwrap()
    }
}

/// The name server without proxy mode (routes name the brokers; message-plane RPCs are
/// refused). `tests/proxy.rs` covers proxy mode.
fn no_proxy() -> NamesrvConfig {
    let mut c = NamesrvConfig::default();
    c.proxy.enabled = false;
    c
}

fn topic(name: &str, queues: u32) -> TopicRoute {
    TopicRoute {
        name: name.into(),
        queue_count: queues,
        perm: PERM_READ_WRITE,
        message_type: MessageType::Normal as i32,
    }
}

fn registration(name: &str, id: i64, port: u16, topics: Vec<TopicRoute>) -> RegisterBrokerRequest {
    RegisterBrokerRequest {
        cluster: "DefaultCluster".into(),
        broker_name: name.into(),
        broker_id: id,
        grpc_endpoint: format!("127.0.0.1:{port}"),
        replication_endpoint: format!("127.0.0.1:{}", port + 1),
        epoch: 1,
        topics,
        heartbeat_timeout_ms: 0,
    }
}

async fn route(
    client: &mut MessagingServiceClient<Channel>,
    topic: &str,
) -> (i32, String, Vec<MessageQueue>) {
    let resp = client
        .query_route(QueryRouteRequest {
            topic: Some(Resource {
                resource_namespace: "ns1".into(),
                name: topic.into(),
            }),
            endpoints: None,
        })
        .await
        .unwrap()
        .into_inner();
    let status = resp.status.unwrap_or_default();
    (status.code, status.message, resp.message_queues)
}

#[tokio::test]
async fn query_route_lists_master_queues_of_groups_with_the_topic() {
    let server = Server::start(no_proxy()).await;
    let mut admin = server.admin().await;
    admin
        .register_broker(registration("broker-b", 0, 20000, vec![topic("orders", 2)]))
        .await
        .unwrap();
    admin
        .register_broker(registration(
            "broker-a",
            0,
            10000,
            vec![topic("orders", 3), topic("other", 1)],
        ))
        .await
        .unwrap();
    admin
        .register_broker(registration("broker-c", 0, 30000, vec![topic("other", 8)]))
        .await
        .unwrap();

    let mut client = server.messaging().await;
    let (code, _, queues) = route(&mut client, "orders").await;
    assert_eq!(code, Code::Ok as i32);
    let seen: Vec<(String, i32)> = queues
        .iter()
        .map(|q| (q.broker.as_ref().unwrap().name.clone(), q.id))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("broker-a".to_string(), 0),
            ("broker-a".to_string(), 1),
            ("broker-a".to_string(), 2),
            ("broker-b".to_string(), 0),
            ("broker-b".to_string(), 1),
        ]
    );
    for q in &queues {
        let t = q.topic.as_ref().unwrap();
        assert_eq!(t.name, "orders");
        assert_eq!(t.resource_namespace, "ns1");
        assert_eq!(q.permission, Permission::ReadWrite as i32);
        assert_eq!(q.accept_message_types, vec![MessageType::Normal as i32]);
        let broker = q.broker.as_ref().unwrap();
        assert_eq!(broker.id, 0);
        let ep = broker.endpoints.as_ref().unwrap();
        assert_eq!(ep.scheme, AddressScheme::IPv4 as i32);
        assert_eq!(ep.addresses.len(), 1);
        assert_eq!(ep.addresses[0].host, "127.0.0.1");
        let want = if broker.name == "broker-a" {
            10000
        } else {
            20000
        };
        assert_eq!(ep.addresses[0].port, want);
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_topic_is_topic_not_found() {
    let server = Server::start(no_proxy()).await;
    let mut admin = server.admin().await;
    admin
        .register_broker(registration("broker-a", 0, 10000, vec![topic("orders", 1)]))
        .await
        .unwrap();
    let mut client = server.messaging().await;
    let (code, message, queues) = route(&mut client, "nope").await;
    assert_eq!(code, Code::TopicNotFound as i32);
    assert_eq!(code, 40402);
    assert_eq!(message, "topic 'nope' not found");
    assert!(queues.is_empty());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn slaves_are_not_returned_as_masters() {
    let server = Server::start(no_proxy()).await;
    let mut admin = server.admin().await;
    admin
        .register_broker(registration("broker-a", 1, 10010, vec![topic("orders", 4)]))
        .await
        .unwrap();
    let mut client = server.messaging().await;
    // A group with only a slave serves no writable queue.
    let (code, _, queues) = route(&mut client, "orders").await;
    assert_eq!(code, Code::TopicNotFound as i32);
    assert!(queues.is_empty());

    admin
        .register_broker(registration("broker-a", 0, 10000, vec![topic("orders", 4)]))
        .await
        .unwrap();
    let (code, _, queues) = route(&mut client, "orders").await;
    assert_eq!(code, Code::Ok as i32);
    assert_eq!(queues.len(), 4);
    for q in &queues {
        let broker = q.broker.as_ref().unwrap();
        assert_eq!(broker.id, 0);
        assert_eq!(broker.endpoints.as_ref().unwrap().addresses[0].port, 10000);
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn silent_broker_expires_from_routes() {
    let config = NamesrvConfig {
        broker_expiry_ms: 300,
        scan_interval_ms: 50,
        ..NamesrvConfig::default()
    };
    let server = Server::start(config).await;
    let mut admin = server.admin().await;
    let mut client = server.messaging().await;
    admin
        .register_broker(registration("broker-a", 0, 10000, vec![topic("orders", 2)]))
        .await
        .unwrap();
    admin
        .register_broker(registration("broker-b", 0, 20000, vec![topic("orders", 2)]))
        .await
        .unwrap();
    assert_eq!(route(&mut client, "orders").await.2.len(), 4);

    // broker-a keeps heartbeating, broker-b goes silent.
    for _ in 0..16 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        admin
            .register_broker(registration("broker-a", 0, 10000, vec![topic("orders", 2)]))
            .await
            .unwrap();
    }
    let (code, _, queues) = route(&mut client, "orders").await;
    assert_eq!(code, Code::Ok as i32);
    assert_eq!(queues.len(), 2);
    assert!(
        queues
            .iter()
            .all(|q| q.broker.as_ref().unwrap().name == "broker-a")
    );
    let groups = admin
        .list_brokers(ListBrokersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .groups;
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].broker_name, "broker-a");

    // Unregistering removes at once.
    admin
        .unregister_broker(UnregisterBrokerRequest {
            cluster: "DefaultCluster".into(),
            broker_name: "broker-a".into(),
            broker_id: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        route(&mut client, "orders").await.0,
        Code::TopicNotFound as i32
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn list_brokers_shows_members_and_master_topics() {
    let server = Server::start(no_proxy()).await;
    let mut admin = server.admin().await;
    admin
        .register_broker(registration("broker-a", 1, 10010, vec![topic("stale", 1)]))
        .await
        .unwrap();
    admin
        .register_broker(registration(
            "broker-a",
            0,
            10000,
            vec![topic("orders", 4), topic("audit", 1)],
        ))
        .await
        .unwrap();
    admin
        .register_broker(RegisterBrokerRequest {
            cluster: "OtherCluster".into(),
            ..registration("broker-z", 0, 40000, vec![])
        })
        .await
        .unwrap();

    let groups = admin
        .list_brokers(ListBrokersRequest {
            cluster: "DefaultCluster".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .groups;
    assert_eq!(groups.len(), 1);
    let g = &groups[0];
    assert_eq!(g.cluster, "DefaultCluster");
    assert_eq!(g.broker_name, "broker-a");
    let ids: Vec<i64> = g.members.iter().map(|m| m.broker_id).collect();
    assert_eq!(ids, vec![0, 1]);
    assert_eq!(g.members[0].grpc_endpoint, "127.0.0.1:10000");
    assert_eq!(g.members[0].replication_endpoint, "127.0.0.1:10001");
    assert_eq!(g.members[0].epoch, 1);
    let topics: Vec<&str> = g.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(topics, vec!["audit", "orders"]);

    let all = admin
        .list_brokers(ListBrokersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .groups;
    assert_eq!(all.len(), 2);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn registration_is_validated_and_fenced_by_epoch() {
    let server = Server::start(NamesrvConfig {
        max_topics_per_registration: 2,
        ..no_proxy()
    })
    .await;
    let mut admin = server.admin().await;
    let bad_endpoint = RegisterBrokerRequest {
        grpc_endpoint: "no-port".into(),
        ..registration("broker-a", 0, 10000, vec![])
    };
    let err = admin.register_broker(bad_endpoint).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let too_many = registration(
        "broker-a",
        0,
        10000,
        vec![topic("a", 1), topic("b", 1), topic("c", 1)],
    );
    let err = admin.register_broker(too_many).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let mut current = registration("broker-a", 0, 10000, vec![topic("t", 1)]);
    current.epoch = 5;
    admin.register_broker(current).await.unwrap();
    let mut stale = registration("broker-a", 0, 11000, vec![topic("t", 1)]);
    stale.epoch = 4;
    let err = admin.register_broker(stale).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    let mut client = server.messaging().await;
    let (_, _, queues) = route(&mut client, "t").await;
    let port = queues[0]
        .broker
        .as_ref()
        .unwrap()
        .endpoints
        .as_ref()
        .unwrap()
        .addresses[0]
        .port;
    assert_eq!(port, 10000);
    server.stop().await.unwrap();
}

fn producer_settings() -> Settings {
    Settings {
        client_type: Some(ClientType::Producer as i32),
        request_timeout: Some(prost_types::Duration {
            seconds: 3,
            nanos: 0,
        }),
        pub_sub: Some(PubSub::Publishing(Publishing {
            topics: vec![Resource {
                resource_namespace: String::new(),
                name: "orders".into(),
            }],
            max_body_size: 0,
            validate_message_type: false,
        })),
        ..Settings::default()
    }
}

fn consumer_settings() -> Settings {
    Settings {
        client_type: Some(ClientType::SimpleConsumer as i32),
        pub_sub: Some(PubSub::Subscription(Subscription {
            group: Some(Resource {
                resource_namespace: String::new(),
                name: "g1".into(),
            }),
            ..Subscription::default()
        })),
        ..Settings::default()
    }
}

fn settings_cmd(settings: Settings) -> TelemetryCommand {
    TelemetryCommand {
        status: None,
        command: Some(Command::Settings(settings)),
    }
}

#[tokio::test]
async fn telemetry_replies_with_settings_and_stays_open() {
    let server = Server::start(no_proxy()).await;
    let mut client = server.messaging().await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(settings_cmd(producer_settings())).await.unwrap();
    let mut replies = client
        .telemetry(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    let first = tokio::time::timeout(WAIT, replies.message())
        .await
        .unwrap()
        .unwrap()
        .expect("a settings reply");
    assert_eq!(first.status.unwrap().code, Code::Ok as i32);
    let Some(Command::Settings(s)) = first.command else {
        panic!("reply carries no settings");
    };
    assert_eq!(s.client_type, Some(ClientType::Producer as i32));
    assert_eq!(s.request_timeout.unwrap().seconds, 3);
    let policy = s.backoff_policy.unwrap();
    assert_eq!(policy.max_attempts, 3);
    let Some(retry_policy::Strategy::ExponentialBackoff(exp)) = policy.strategy else {
        panic!("producer backoff is not exponential");
    };
    assert_eq!(exp.initial.unwrap().nanos, 10_000_000);
    assert_eq!(exp.max.unwrap().seconds, 1);
    assert_eq!(exp.multiplier, 2.0);
    let Some(PubSub::Publishing(p)) = s.pub_sub else {
        panic!("producer reply has no publishing");
    };
    assert!(p.max_body_size > 0);
    assert_eq!(p.max_body_size, 4 * 1024 * 1024);
    assert!(p.validate_message_type);
    assert_eq!(p.topics[0].name, "orders");

    // A non-settings command is ignored; the stream stays open and answers
    // the next settings command.
    tx.send(TelemetryCommand::default()).await.unwrap();
    tx.send(settings_cmd(consumer_settings())).await.unwrap();
    let second = tokio::time::timeout(WAIT, replies.message())
        .await
        .unwrap()
        .unwrap()
        .expect("a second reply");
    let Some(Command::Settings(s)) = second.command else {
        panic!("second reply carries no settings");
    };
    let Some(PubSub::Subscription(sub)) = s.pub_sub else {
        panic!("consumer reply has no subscription");
    };
    assert_eq!(sub.group.unwrap().name, "g1");
    assert_eq!(sub.fifo, Some(false));
    assert_eq!(sub.receive_batch_size, Some(32));
    assert_eq!(sub.long_polling_timeout.unwrap().seconds, 30);
    assert!(s.backoff_policy.is_some());

    // The client closing its side ends the stream.
    drop(tx);
    let end = tokio::time::timeout(WAIT, replies.message())
        .await
        .unwrap()
        .unwrap();
    assert!(end.is_none());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn heartbeat_termination_and_message_plane_rpcs() {
    let server = Server::start(no_proxy()).await;
    let mut client = server.messaging().await;
    let hb = client
        .heartbeat(HeartbeatRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hb.status.unwrap().code, Code::Ok as i32);
    let bye = client
        .notify_client_termination(NotifyClientTerminationRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bye.status.unwrap().code, Code::Ok as i32);
    let send = client
        .send_message(SendMessageRequest::default())
        .await
        .unwrap()
        .into_inner();
    let st = send.status.unwrap();
    assert_eq!(st.code, Code::IllegalAccessPoint as i32);
    assert!(st.message.starts_with("this endpoint is a name server"));

    let mut recv = client
        .receive_message(sofamq_proto::v2::ReceiveMessageRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = recv.message().await.unwrap().unwrap();
    assert!(matches!(
        first.content,
        Some(sofamq_proto::v2::receive_message_response::Content::Status(ref s))
            if s.code == Code::IllegalAccessPoint as i32
    ));
    assert!(recv.message().await.unwrap().is_none());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_stops_server_even_with_open_telemetry() {
    let server = Server::start(no_proxy()).await;
    let addr = server.addr;
    let mut client = server.messaging().await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(settings_cmd(producer_settings())).await.unwrap();
    let mut replies = client
        .telemetry(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(replies.message().await.unwrap().is_some());

    server.stop().await.unwrap();
    // The open stream was ended by the server, and nothing listens any more.
    let end = tokio::time::timeout(WAIT, replies.message()).await.unwrap();
    assert!(matches!(end, Ok(None) | Err(_)));
    assert!(
        MessagingServiceClient::connect(format!("http://{addr}"))
            .await
            .is_err()
    );
    drop(tx);
}

#[tokio::test]
async fn config_parses_from_toml_with_defaults() {
    let config: NamesrvConfig = toml::from_str(
        r#"
        listen = "0.0.0.0:9877"
        broker_expiry_ms = 3000
        [session]
        max_body_size = 1024
        "#,
    )
    .unwrap();
    assert_eq!(config.listen.port(), 9877);
    assert_eq!(config.broker_expiry_ms, 3000);
    assert_eq!(config.scan_interval_ms, 1000);
    assert_eq!(config.session.max_body_size, 1024);
    assert_eq!(config.session.producer_max_attempts, 3);
    assert!(config.validate().is_ok());
    assert!(toml::from_str::<NamesrvConfig>("bogus = 1").is_err());

    let bad = NamesrvConfig {
        scan_interval_ms: 0,
        ..NamesrvConfig::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    assert!(matches!(
        run(listener, bad, sofamq_server::Shutdown::on(async {})).await,
        Err(NamesrvError::Config {
            key: "scan_interval_ms",
            ..
        })
    ));
}

#[tokio::test]
async fn telemetry_streams_are_bounded() {
    let server = Server::start(NamesrvConfig {
        max_telemetry_streams: 1,
        ..NamesrvConfig::default()
    })
    .await;
    let mut client = server.messaging().await;
    let (tx1, rx1) = mpsc::channel(1);
    tx1.send(settings_cmd(producer_settings())).await.unwrap();
    let mut first = client
        .telemetry(ReceiverStream::new(rx1))
        .await
        .unwrap()
        .into_inner();
    assert!(first.message().await.unwrap().is_some());

    let (tx2, rx2) = mpsc::channel(1);
    tx2.send(settings_cmd(producer_settings())).await.unwrap();
    let mut second = client
        .telemetry(ReceiverStream::new(rx2))
        .await
        .unwrap()
        .into_inner();
    let refused = second.message().await.unwrap().unwrap();
    assert_eq!(refused.status.unwrap().code, Code::TooManyRequests as i32);
    assert!(second.message().await.unwrap().is_none());
    drop((tx1, tx2));
    server.stop().await.unwrap();
}
