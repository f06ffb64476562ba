//! Access control over the wire: every refusal has its code and stores nothing.

use std::collections::HashMap;

use sofamq_broker::acl::sign;
use sofamq_broker::topics::TopicType;
use sofamq_broker::{Broker, BrokerConfig};
use sofamq_proto::admin::broker_admin_client::BrokerAdminClient;
use sofamq_proto::admin::{AclUser, ListTopicsRequest, PutAclUserRequest};
use sofamq_proto::v2::messaging_service_client::MessagingServiceClient;
use sofamq_proto::v2::*;
use tokio::net::TcpListener;
use tonic::transport::Channel;

const DATE: &str = "20250101T000000Z";

struct Harness {
    _dir: tempfile::TempDir,
    broker: Broker,
    client: MessagingServiceClient<Channel>,
    admin: BrokerAdminClient<Channel>,
    stop: tokio::sync::watch::Sender<bool>,
}

async fn start(acl: bool, tweak: impl FnOnce(&mut BrokerConfig)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = BrokerConfig {
        data_dir: dir.path().join("b"),
        listen: addr,
        namesrv: vec![],
        ..Default::default()
    };
    cfg.acl.enabled = acl;
    cfg.acl.admin_access_key = "root".into();
    cfg.acl.admin_secret_key = "root-secret".into();
    // These tests sign a fixed DATE; the clock-skew bound is tested in tls.rs.
    cfg.acl.max_clock_skew_ms = 0;
    tweak(&mut cfg);
    let broker = sofamq_broker::server::open(cfg).await.unwrap();
    broker
        .create_topic("t", 2, TopicType::Normal)
        .await
        .unwrap();
    broker
        .create_topic("other", 2, TopicType::Normal)
        .await
        .unwrap();
    for (ak, rules) in [
        ("alice", vec!["allow:topic:t:pub,sub", "allow:group:g*:sub"]),
        ("bob", vec!["allow:topic:t:sub", "allow:topic:other:pub"]),
    ] {
        broker
            .acl_put_user(AclUser {
                access_key: ak.into(),
                secret_key: format!("{ak}-secret"),
                admin: false,
                rules: rules.into_iter().map(String::from).collect(),
            })
            .await
            .unwrap();
    }
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    tokio::spawn(sofamq_broker::server::serve(
        listener,
        broker.clone(),
        sofamq_server::Shutdown::on(async move {
            let _ = rx.wait_for(|s| *s).await;
        }),
    ));
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    Harness {
        _dir: dir,
        broker,
        client: MessagingServiceClient::new(ch.clone()),
        admin: BrokerAdminClient::new(ch),
        stop,
    }
}

/// Signs `req` as `ak` with `sk`.
fn signed<T>(body: T, ak: &str, sk: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    let sig = sign::sign(sk, DATE.as_bytes());
    let md = req.metadata_mut();
    md.insert("x-mq-date-time", DATE.parse().unwrap());
    md.insert(
        "authorization",
        format!("MQv2-HMAC-SHA1 Credential={ak}, SignedHeaders=x-mq-date-time, Signature={sig}")
            .parse()
            .unwrap(),
    );
    req
}

fn res(name: &str) -> Option<Resource> {
    Some(Resource {
        name: name.into(),
        resource_namespace: String::new(),
    })
}

fn send_req(topic: &str) -> SendMessageRequest {
    SendMessageRequest {
        messages: vec![Message {
            topic: res(topic),
            user_properties: HashMap::new(),
            system_properties: Some(SystemProperties {
                message_id: format!("ID{:032X}", rand::random::<u128>()),
                message_type: MessageType::Normal as i32,
                ..Default::default()
            }),
            body: b"hello".to_vec().into(),
        }],
    }
}

impl Harness {
    /// Total messages stored in `topic` and the log end.
    fn stored(&self, topic: &str) -> (u64, u64) {
        let n = (0..2)
            .map(|q| self.broker.store().queue_offsets(topic, q).1)
            .sum();
        (n, self.broker.store().log_end_offset())
    }

    async fn send(&mut self, req: tonic::Request<SendMessageRequest>) -> i32 {
        let r = self.client.send_message(req).await.unwrap().into_inner();
        r.status.unwrap().code
    }
}

#[tokio::test]
async fn unsigned_wrong_secret_tampered_and_unpermitted_sends_store_nothing() {
    let mut h = start(true, |_| {}).await;
    let before = h.stored("t");

    // Unsigned.
    let code = h.send(tonic::Request::new(send_req("t"))).await;
    assert_eq!(code, Code::Unauthorized as i32);
    // Wrong secret.
    let code = h
        .send(signed(send_req("t"), "alice", "not-her-secret"))
        .await;
    assert_eq!(code, Code::Unauthorized as i32);
    // Unknown user.
    let code = h.send(signed(send_req("t"), "mallory", "x")).await;
    assert_eq!(code, Code::Unauthorized as i32);
    // Tampered signature: one hex digit flipped.
    let mut req = signed(send_req("t"), "alice", "alice-secret");
    let good = req
        .metadata()
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let last = good.chars().last().unwrap();
    let flipped = if last == '0' { '1' } else { '0' };
    let bad = format!("{}{flipped}", &good[..good.len() - 1]);
    req.metadata_mut()
        .insert("authorization", bad.parse().unwrap());
    assert_eq!(h.send(req).await, Code::Unauthorized as i32);
    // Signature of another date than the one sent.
    let mut req = signed(send_req("t"), "alice", "alice-secret");
    req.metadata_mut()
        .insert("x-mq-date-time", "20250101T000001Z".parse().unwrap());
    assert_eq!(h.send(req).await, Code::Unauthorized as i32);
    // Valid user without Pub on the topic.
    let code = h.send(signed(send_req("t"), "bob", "bob-secret")).await;
    assert_eq!(code, Code::Forbidden as i32);
    // A batch mixing a permitted and a forbidden topic is refused whole.
    let mut mixed = send_req("other");
    mixed.messages.extend(send_req("t").messages);
    let code = h.send(signed(mixed, "bob", "bob-secret")).await;
    assert_eq!(code, Code::Forbidden as i32);

    assert_eq!(h.stored("t"), before, "refused sends stored nothing");

    // The permitted user's send is stored; upper-case hex is accepted too.
    let mut req = signed(send_req("t"), "alice", "alice-secret");
    let upper = req
        .metadata()
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap()
        .replace(
            &sign::sign("alice-secret", DATE.as_bytes()),
            &sign::sign("alice-secret", DATE.as_bytes()).to_uppercase(),
        );
    req.metadata_mut()
        .insert("authorization", upper.parse().unwrap());
    assert_eq!(h.send(req).await, Code::Ok as i32);
    assert_eq!(h.stored("t").0, before.0 + 1);
    let _ = h.stop.send(true);
}

#[tokio::test]
async fn consuming_needs_sub_on_topic_and_group() {
    let mut h = start(true, |_| {}).await;
    assert_eq!(
        h.send(signed(send_req("t"), "alice", "alice-secret")).await,
        Code::Ok as i32
    );
    let receive = |group: &str| ReceiveMessageRequest {
        group: res(group),
        message_queue: Some(MessageQueue {
            topic: res("t"),
            id: 0,
            ..Default::default()
        }),
        filter_expression: Some(FilterExpression {
            r#type: FilterType::Tag as i32,
            expression: "*".into(),
        }),
        batch_size: 16,
        auto_renew: false,
        long_polling_timeout: Some(prost_types::Duration {
            seconds: 0,
            nanos: 10_000_000,
        }),
        ..Default::default()
    };
    let first_code = |mut s: tonic::Streaming<ReceiveMessageResponse>| async move {
        match s.message().await.unwrap().unwrap().content.unwrap() {
            receive_message_response::Content::Status(st) => st.code,
            other => panic!("status first, got {other:?}"),
        }
    };
    // bob has Sub on the topic but not on group g1.
    let s = h
        .client
        .receive_message(signed(receive("g1"), "bob", "bob-secret"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first_code(s).await, Code::Forbidden as i32);
    // Unsigned.
    let s = h
        .client
        .receive_message(tonic::Request::new(receive("g1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first_code(s).await, Code::Unauthorized as i32);
    // Nothing was delivered to g1: no group state, no in-flight message.
    assert!(
        h.broker
            .consumers()
            .snapshot()
            .iter()
            .all(|(g, _, _)| g != "g1")
    );
    // Ack, offsets: same rule.
    let ack = AckMessageRequest {
        group: res("g1"),
        topic: res("t"),
        entries: vec![],
    };
    let r = h
        .client
        .ack_message(signed(ack, "bob", "bob-secret"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, Code::Forbidden as i32);
    let q = GetOffsetRequest {
        group: res("g1"),
        message_queue: Some(MessageQueue {
            topic: res("t"),
            ..Default::default()
        }),
    };
    let r = h
        .client
        .get_offset(signed(q, "bob", "bob-secret"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, Code::Forbidden as i32);
    // alice may consume as g1.
    let s = h
        .client
        .receive_message(signed(receive("g1"), "alice", "alice-secret"))
        .await
        .unwrap()
        .into_inner();
    let code = first_code(s).await;
    assert!(
        code == Code::Ok as i32 || code == Code::MessageNotFound as i32,
        "alice: {code}"
    );
    // Heartbeat needs valid credentials only.
    let r = h
        .client
        .heartbeat(tonic::Request::new(HeartbeatRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, Code::Unauthorized as i32);
    let r = h
        .client
        .heartbeat(signed(HeartbeatRequest::default(), "bob", "bob-secret"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, Code::Ok as i32);
    let _ = h.stop.send(true);
}

#[tokio::test]
async fn admin_rpcs_need_an_admin() {
    let mut h = start(true, |_| {}).await;
    let e = h
        .admin
        .list_topics(signed(ListTopicsRequest {}, "alice", "alice-secret"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().starts_with("40300"), "{}", e.message());
    let e = h
        .admin
        .list_topics(tonic::Request::new(ListTopicsRequest {}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().starts_with("40100"), "{}", e.message());
    // A non-admin cannot make itself admin.
    let e = h
        .admin
        .put_acl_user(signed(
            PutAclUserRequest {
                user: Some(AclUser {
                    access_key: "alice".into(),
                    secret_key: "alice-secret".into(),
                    admin: true,
                    rules: vec![],
                }),
            },
            "alice",
            "alice-secret",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(!h.broker.acl().stored_user("alice").unwrap().admin);
    // The bootstrap admin may.
    let r = h
        .admin
        .list_topics(signed(ListTopicsRequest {}, "root", "root-secret"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, Code::Ok as i32);
    let _ = h.stop.send(true);
}

#[tokio::test]
async fn acl_survives_restart_and_is_off_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |acl: bool| {
        let mut c = BrokerConfig {
            data_dir: dir.path().join("b"),
            namesrv: vec![],
            ..Default::default()
        };
        c.acl.enabled = acl;
        c
    };
    {
        let b = sofamq_broker::server::open(cfg(true)).await.unwrap();
        b.acl_put_user(AclUser {
            access_key: "u".into(),
            secret_key: "s".into(),
            admin: false,
            rules: vec!["allow:topic:x*:pub".into()],
        })
        .await
        .unwrap();
        b.acl_update_rules("u", &["deny:topic:xy:pub".into()], &[])
            .await
            .unwrap();
        assert!(b.acl_delete_user("nobody").await.is_ok_and(|e| !e));
    }
    let b = sofamq_broker::server::open(cfg(true)).await.unwrap();
    let u = b.acl().stored_user("u").expect("replayed from the log");
    assert_eq!(u.rules.len(), 2);
    use sofamq_broker::acl::{Action, Kind};
    assert!(u.permits(Kind::Topic, "xa", Action::Pub));
    assert!(!u.permits(Kind::Topic, "xy", Action::Pub));
    drop(b);
    // Off: no credentials needed.
    let b = sofamq_broker::server::open(cfg(false)).await.unwrap();
    assert!(!b.acl().enabled());
    let md = tonic::metadata::MetadataMap::new();
    assert!(b.acl().check(&md, &send_req("t")).is_ok());
    // A bootstrap admin without a secret is refused at start.
    let mut bad = cfg(true);
    bad.acl.admin_access_key = "root".into();
    assert!(sofamq_broker::server::open(bad).await.is_err());
}

#[tokio::test]
async fn inflight_send_bytes_are_bounded() {
    let mut h = start(false, |c| c.limits.max_inflight_send_bytes = 1000).await;
    let before = h.stored("t");
    let mut req = send_req("t");
    req.messages[0].body = (vec![b'x'; 2000]).into();
    let code = h.send(tonic::Request::new(req)).await;
    assert_eq!(code, Code::TooManyRequests as i32);
    assert_eq!(h.stored("t"), before);
    // Small sends still pass, and permits come back.
    for _ in 0..3 {
        assert_eq!(
            h.send(tonic::Request::new(send_req("t"))).await,
            Code::Ok as i32
        );
    }
    let _ = h.stop.send(true);
}

#[tokio::test]
async fn oversized_metadata_is_refused_and_the_broker_keeps_serving() {
    let mut h = start(false, |c| c.limits.max_header_list_bytes = 8 * 1024).await;
    let mut req = tonic::Request::new(send_req("t"));
    req.metadata_mut()
        .insert("x-junk", "a".repeat(64 * 1024).parse().unwrap());
    let before = h.stored("t");
    assert!(h.client.send_message(req).await.is_err());
    assert_eq!(h.stored("t"), before);
    // A fresh connection works.
    let addr = h.broker.config().listen;
    let mut c = MessagingServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let r = c.send_message(send_req("t")).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, Code::Ok as i32);
    let _ = h.stop.send(true);
}
