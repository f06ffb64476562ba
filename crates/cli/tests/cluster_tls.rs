//! TLS on the client ports (NameServer and broker) with the SDK, TLS plus the shared
//! secret on the replication port, and the ACL's clock-skew (replay) bound. Certificates
//! are generated with rcgen in a temporary directory; everything runs in-process on
//! 127.0.0.1 port 0.
//!
//! A broker with an in-process name server: it lives in `sofamq-cli`, the crate that
//! depends on both, so that `sofamq-broker` does not depend on `sofamq-namesrv`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sofamq_broker::acl::sign;
use sofamq_broker::topics::TopicType;
use sofamq_broker::{Broker, BrokerConfig};
use sofamq_client::{
    ConsumeResult, ConsumerConfig, Message, Producer, ProducerConfig, PushConfig, PushConsumer,
    ReceivedMessage, SimpleConsumer, TlsOptions,
};
use sofamq_proto::v2::messaging_service_client::MessagingServiceClient;
use sofamq_proto::v2::{self as v2, Code, SendMessageRequest};
use sofamq_server::Shutdown;
use sofamq_server::tls::{ClientTls, TlsConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A CA and a server certificate it signed, for `localhost` and 127.0.0.1.
struct Certs {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

fn certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "sofamq test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("server.pem"), cert.pem()).unwrap();
    std::fs::write(p("server.key"), key.serialize_pem()).unwrap();
    std::fs::write(p("ca.pem"), ca_cert.pem()).unwrap();
    Certs {
        cert: p("server.pem"),
        key: p("server.key"),
        ca: p("ca.pem"),
        _dir: dir,
    }
}

fn stopper() -> (watch::Sender<bool>, Shutdown) {
    let (tx, mut rx) = watch::channel(false);
    (
        tx,
        Shutdown::on(async move {
            let _ = rx.wait_for(|s| *s).await;
        }),
    )
}

async fn start_ns(tls: TlsConfig) -> (String, watch::Sender<bool>) {
    start_ns_with(sofamq_namesrv::NamesrvConfig {
        tls,
        ..Default::default()
    })
    .await
}

async fn start_ns_with(cfg: sofamq_namesrv::NamesrvConfig) -> (String, watch::Sender<bool>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, stop) = stopper();
    tokio::spawn(async move {
        if let Err(e) = sofamq_namesrv::run(l, cfg, stop).await {
            panic!("namesrv: {e}");
        }
    });
    (addr, tx)
}

struct Node {
    broker: Broker,
    addr: String,
    repl: Option<String>,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

/// Opens and serves a broker; `repl` binds a replication port. Waits for registration
/// when `namesrv` is set.
async fn start_broker(repl: bool, tweak: impl FnOnce(&mut BrokerConfig)) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rl = if repl {
        Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
    } else {
        None
    };
    let mut cfg = BrokerConfig {
        data_dir: dir.path().join("b"),
        listen: l.local_addr().unwrap(),
        namesrv: vec![],
        heartbeat_interval_ms: 200,
        ..Default::default()
    };
    cfg.limits.shutdown_grace_ms = 200;
    cfg.replication.listen = rl.as_ref().map(|l| l.local_addr().unwrap());
    cfg.replication.heartbeat_ms = 50;
    cfg.replication.reconnect_backoff_ms = 100;
    cfg.replication.handshake_timeout_ms = 2_000;
    tweak(&mut cfg);
    let wait_registered = !cfg.namesrv.is_empty();
    let addr = l.local_addr().unwrap().to_string();
    let repl_addr = rl.as_ref().map(|l| l.local_addr().unwrap().to_string());
    let broker = sofamq_broker::server::open(cfg).await.unwrap();
    if broker.repl().role() == sofamq_broker::repl::Role::Master {
        broker
            .create_topic("t", 2, TopicType::Normal)
            .await
            .unwrap();
    }
    let (stop, stopped) = stopper();
    let mut reg_rx = broker.registered();
    let b = broker.clone();
    let listeners = sofamq_broker::Listeners {
        grpc: l,
        replication: rl,
        http: None,
    };
    tokio::spawn(async move {
        if let Err(e) = sofamq_broker::server::serve(listeners, b, stopped).await {
            panic!("broker: {e}");
        }
    });
    if wait_registered {
        tokio::time::timeout(Duration::from_secs(10), reg_rx.wait_for(|r| *r))
            .await
            .expect("broker registered with the NameServer over TLS")
            .unwrap();
    }
    Node {
        broker,
        addr,
        repl: repl_addr,
        _stop: stop,
        _dir: dir,
    }
}

fn raw_message(topic: &str) -> v2::Message {
    v2::Message {
        topic: Some(v2::Resource {
            name: topic.into(),
            ..Default::default()
        }),
        system_properties: Some(v2::SystemProperties {
            message_id: format!("ID{:032X}", rand::random::<u128>()),
            message_type: v2::MessageType::Normal as i32,
            born_host: "test".into(),
            ..Default::default()
        }),
        body: b"hello".to_vec().into(),
        ..Default::default()
    }
}

/// One plaintext send; the response's status code.
async fn send_code(addr: &str, req: tonic::Request<SendMessageRequest>) -> i32 {
    let mut c = MessagingServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let r = c.send_message(req).await.unwrap().into_inner();
    r.status.unwrap().code
}

fn send_req() -> tonic::Request<SendMessageRequest> {
    tonic::Request::new(SendMessageRequest {
        messages: vec![raw_message("t")],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_produces_and_consumes_over_tls() {
    let c = certs();
    let (ns, _ns_stop) = start_ns(TlsConfig::new(&c.cert, &c.key)).await;
    let ns2 = ns.clone();
    let ca = c.ca.clone();
    let node = start_broker(false, move |cfg| {
        cfg.namesrv = vec![ns2];
        cfg.tls = TlsConfig::new(&c.cert, &c.key);
        cfg.namesrv_tls = Some(ClientTls {
            ca_path: Some(ca),
            server_name: None,
        });
        cfg.consume.poll_interval_ms = 20;
    })
    .await;
    let tls = TlsOptions::new(&c.ca);

    let p = Producer::start(ProducerConfig::new([ns.clone()]).with_tls(tls.clone()))
        .await
        .unwrap();
    let mut ids = HashSet::new();
    for i in 0..20 {
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            p.send(Message::builder("t", format!("m-{i}")).build()),
        )
        .await
        .expect("send over TLS in time")
        .unwrap();
        assert_eq!(r.topic, "t");
        ids.insert(r.message_id);
    }
    assert_eq!(ids.len(), 20);

    // SimpleConsumer over TLS: every message, then ack.
    let cfg = ConsumerConfig::new([ns.clone()], "g")
        .with_tls(tls.clone())
        .with_long_polling_timeout(Duration::from_millis(300));
    let sc = SimpleConsumer::start(cfg, vec![("t".into(), "*".into())])
        .await
        .unwrap();
    let mut got = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < ids.len() && Instant::now() < deadline {
        for m in sc.receive(32, Duration::from_secs(30)).await.unwrap() {
            sc.ack(&m).await.unwrap();
            got.insert(m.message_id.clone());
        }
    }
    assert_eq!(got, ids);

    // PushConsumer over TLS (the domain given explicitly).
    for i in 0..5 {
        p.send(Message::builder("t", format!("push-{i}")).build())
            .await
            .unwrap();
    }
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let s2 = seen.clone();
    let cfg = ConsumerConfig::new([ns.clone()], "gp")
        .with_tls(TlsOptions::new(&c.ca).with_domain("localhost"))
        .with_long_polling_timeout(Duration::from_millis(300));
    let pc = PushConsumer::start(
        cfg,
        vec![("t".into(), "*".into())],
        PushConfig::default(),
        Arc::new(move |m: &ReceivedMessage| {
            s2.lock().unwrap().insert(m.message_id.clone());
            ConsumeResult::Success
        }),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().len() < 25 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pc.shutdown().await;
    assert_eq!(
        seen.lock().unwrap().len(),
        25,
        "push consumer saw every message"
    );
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_clients_fail_fast_against_tls_ports() {
    let c = certs();
    let (ns, _ns_stop) = start_ns(TlsConfig::new(&c.cert, &c.key)).await;
    let node = start_broker(false, |cfg| {
        cfg.tls = TlsConfig::new(&c.cert, &c.key);
    })
    .await;

    // The SDK without TLS against the TLS NameServer: an error, not a hang.
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(30), async {
        let p = Producer::start(
            ProducerConfig::new([ns.clone()])
                .with_request_timeout(Duration::from_secs(2))
                .with_max_attempts(2),
        )
        .await?;
        p.send(Message::builder("t", "x").build())
            .await
            .map_err(|e| sofamq_client::ClientError::Config(e.to_string()))
    })
    .await
    .expect("the plaintext producer gives up in bounded time");
    assert!(
        r.is_err(),
        "a plaintext producer must not reach a TLS NameServer"
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    // A raw plaintext gRPC call to the TLS broker port fails too.
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        let mut c = MessagingServiceClient::connect(format!("http://{}", node.addr)).await?;
        c.send_message(send_req())
            .await
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await
    .expect("bounded");
    assert!(r.is_err());

    // A TLS client that does not trust the server's CA is refused as well.
    let other = certs();
    let r = tokio::time::timeout(Duration::from_secs(30), async {
        let p = Producer::start(
            ProducerConfig::new([ns.clone()])
                .with_tls(TlsOptions::new(&other.ca))
                .with_request_timeout(Duration::from_secs(2))
                .with_max_attempts(2),
        )
        .await?;
        p.send(Message::builder("t", "x").build())
            .await
            .map_err(|e| sofamq_client::ClientError::Config(e.to_string()))
    })
    .await
    .expect("bounded");
    assert!(r.is_err());
}

fn repl_tls(cfg: &mut BrokerConfig, c: &Certs, secret: &str) {
    cfg.replication.tls_cert = Some(c.cert.clone());
    cfg.replication.tls_key = Some(c.key.clone());
    cfg.replication.tls_ca = Some(c.ca.clone());
    cfg.replication.tls_server_name = Some("localhost".into());
    cfg.replication.secret = Some(secret.into());
    cfg.replication.min_insync_replicas = 2;
}

async fn in_sync(master: &Broker, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if master.repl().tracker().snapshot().in_sync >= 1 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_over_tls_with_the_secret_acks() {
    let c = certs();
    let master = start_broker(true, |cfg| repl_tls(cfg, &c, "group-secret")).await;
    let maddr = master.repl.clone().unwrap();
    let slave = start_broker(false, |cfg| {
        repl_tls(cfg, &c, "group-secret");
        cfg.broker_id = 1;
        cfg.replication.master_addr = Some(maddr);
    })
    .await;
    assert!(
        in_sync(&master.broker, Duration::from_secs(15)).await,
        "the slave joins over TLS"
    );
    for _ in 0..10 {
        assert_eq!(send_code(&master.addr, send_req()).await, Code::Ok as i32);
    }
    let end = master.broker.store().durable_offset();
    let deadline = Instant::now() + Duration::from_secs(10);
    while slave.broker.store().durable_offset() < end && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        slave.broker.store().durable_offset(),
        end,
        "the slave has every byte"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_with_the_wrong_secret_is_refused() {
    let c = certs();
    let master = start_broker(true, |cfg| repl_tls(cfg, &c, "group-secret")).await;
    let maddr = master.repl.clone().unwrap();
    let slave = start_broker(false, |cfg| {
        repl_tls(cfg, &c, "a-guess");
        cfg.broker_id = 1;
        cfg.replication.master_addr = Some(maddr.clone());
    })
    .await;
    let slave_start = slave.broker.store().log_end_offset();
    assert!(
        !in_sync(&master.broker, Duration::from_secs(2)).await,
        "a slave with the wrong secret never joins"
    );
    assert_eq!(
        send_code(&master.addr, send_req()).await,
        Code::HaNotAvailable as i32
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        slave.broker.store().log_end_offset(),
        slave_start,
        "nothing reached the refused slave"
    );

    // A slave with TLS but no secret is refused too.
    let bare = start_broker(false, |cfg| {
        repl_tls(cfg, &c, "x");
        cfg.replication.secret = None;
        cfg.broker_id = 2;
        cfg.replication.master_addr = Some(maddr);
    })
    .await;
    let bare_start = bare.broker.store().log_end_offset();
    assert!(!in_sync(&master.broker, Duration::from_secs(1)).await);
    assert_eq!(bare.broker.store().log_end_offset(), bare_start);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_outside_the_clock_skew_are_unauthorized() {
    let node = start_broker(false, |cfg| {
        cfg.acl.enabled = true;
        cfg.acl.admin_access_key = "root".into();
        cfg.acl.admin_secret_key = "root-secret".into();
    })
    .await;
    let signed = |at: SystemTime| {
        let date = sofamq_client::format_date_time(at);
        let mut req = send_req();
        let sig = sign::sign("root-secret", date.as_bytes());
        let md = req.metadata_mut();
        md.insert("x-mq-date-time", date.parse().unwrap());
        md.insert(
            "authorization",
            format!(
                "MQv2-HMAC-SHA1 Credential=root, SignedHeaders=x-mq-date-time, Signature={sig}"
            )
            .parse()
            .unwrap(),
        );
        req
    };
    let now = SystemTime::now();
    assert_eq!(send_code(&node.addr, signed(now)).await, Code::Ok as i32);
    let hour = Duration::from_secs(3600);
    let before = node.broker.store().log_end_offset();
    assert_eq!(
        send_code(&node.addr, signed(now - hour)).await,
        Code::Unauthorized as i32
    );
    assert_eq!(
        send_code(&node.addr, signed(now + hour)).await,
        Code::Unauthorized as i32
    );
    assert_eq!(
        node.broker.store().log_end_offset(),
        before,
        "nothing stored"
    );
}

#[tokio::test]
async fn bad_tls_files_stop_the_servers_at_start_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = sofamq_namesrv::NamesrvConfig {
        tls: TlsConfig::new(&missing, &missing),
        ..Default::default()
    };
    let e = sofamq_namesrv::run(l, cfg, Shutdown::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nope.pem"), "{e}");

    let data = tempfile::tempdir().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = BrokerConfig {
        data_dir: data.path().join("b"),
        listen: l.local_addr().unwrap(),
        namesrv: vec![],
        tls: TlsConfig::new(&missing, &missing),
        ..Default::default()
    };
    // Refused before the log is opened ...
    let Err(e) = sofamq_broker::server::open(cfg.clone()).await else {
        panic!("a broker with a missing TLS file must not open");
    };
    assert!(e.to_string().contains("nope.pem"), "{e}");
    assert!(!data.path().join("b").exists(), "no log created");
    // ... and by serve for a broker opened another way.
    let broker = Broker::open(cfg).unwrap();
    let e = sofamq_broker::server::serve(l, broker, Shutdown::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nope.pem"), "{e}");
}

/// An official client's path over TLS: the name server in proxy mode serves TLS to the
/// client and forwards over TLS to the broker (`proxy.broker_tls`, trusting the CA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_forwards_over_tls_to_tls_brokers() {
    let c = certs();
    let mut cfg = sofamq_namesrv::NamesrvConfig {
        tls: TlsConfig::new(&c.cert, &c.key),
        ..Default::default()
    };
    cfg.proxy.broker_tls = true;
    cfg.proxy.broker_tls_ca_path = Some(c.ca.clone());
    let (ns, _ns_stop) = start_ns_with(cfg).await;
    let ns2 = ns.clone();
    let ca = c.ca.clone();
    let cert = c.cert.clone();
    let key = c.key.clone();
    let _node = start_broker(false, move |cfg| {
        cfg.namesrv = vec![ns2];
        cfg.tls = TlsConfig::new(&cert, &key);
        cfg.namesrv_tls = Some(ClientTls {
            ca_path: Some(ca),
            server_name: None,
        });
    })
    .await;
    let pem = std::fs::read(&c.ca).unwrap();
    let ch = tonic::transport::Endpoint::from_shared(format!("https://{ns}"))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = MessagingServiceClient::new(ch);
    let route = client
        .query_route(v2::QueryRouteRequest {
            topic: Some(v2::Resource {
                name: "t".into(),
                ..Default::default()
            }),
            endpoints: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(route.status.unwrap().code, Code::Ok as i32);
    let port = ns.rsplit_once(':').unwrap().1.parse::<i32>().unwrap();
    assert!(
        route.message_queues.iter().all(|q| q
            .broker
            .as_ref()
            .and_then(|b| b.endpoints.as_ref())
            .is_some_and(|e| e.addresses[0].port == port)),
        "the route names the proxy"
    );
    let r = client.send_message(send_req()).await.unwrap().into_inner();
    assert_eq!(
        r.status.unwrap().code,
        Code::Ok as i32,
        "sent through the proxy over TLS"
    );
}
