//! Every validation rule answers with its own wire code and stores nothing.
//! In-process namesrv + broker on 127.0.0.1:0, raw gRPC requests.

use std::collections::HashMap;
use std::time::Duration;

use sofamq_broker::topics::TopicType;
use sofamq_broker::{Broker, BrokerConfig};
use sofamq_proto::v2::messaging_service_client::MessagingServiceClient;
use sofamq_proto::v2::{
    Code, Message, MessageType, Resource, SendMessageRequest, SendMessageResponse, SystemProperties,
};
use tokio::net::TcpListener;
use tonic::transport::Channel;

struct Harness {
    _dir: tempfile::TempDir,
    broker: Broker,
    client: MessagingServiceClient<Channel>,
    stop: tokio::sync::watch::Sender<bool>,
}

async fn start(limits: impl FnOnce(&mut BrokerConfig)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = BrokerConfig {
        data_dir: dir.path().join("b"),
        listen: addr,
        // No namesrv: the broker serves sends without one.
        namesrv: vec![],
        ..Default::default()
    };
    limits(&mut cfg);
    let broker = sofamq_broker::server::open(cfg).await.unwrap();
    broker
        .create_topic("normal", 4, TopicType::Normal)
        .await
        .unwrap();
    broker
        .create_topic("fifo", 4, TopicType::Fifo)
        .await
        .unwrap();
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
        client: MessagingServiceClient::new(ch),
        stop,
    }
}

fn msg(topic: &str, body: &[u8]) -> Message {
    Message {
        topic: Some(Resource {
            name: topic.into(),
            resource_namespace: String::new(),
        }),
        user_properties: HashMap::new(),
        system_properties: Some(SystemProperties {
            message_id: format!("ID{:016X}", rand_id()),
            message_type: MessageType::Normal as i32,
            ..Default::default()
        }),
        body: body.to_vec().into(),
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn send(h: &Harness, m: Message) -> SendMessageResponse {
    h.client
        .clone()
        .send_message(SendMessageRequest { messages: vec![m] })
        .await
        .unwrap()
        .into_inner()
}

fn stored(h: &Harness, topic: &str) -> u64 {
    (0..4)
        .map(|q| h.broker.store().queue_offsets(topic, q).1)
        .sum()
}

#[tokio::test]
#[allow(clippy::vec_init_then_push)] // cases are built one by one, each with its own tweak
async fn each_validation_failure_has_its_code_and_stores_nothing() {
    let h = start(|c| {
        c.limits.max_body_bytes = 1024;
        c.limits.max_property_count = 2;
    })
    .await;
    let log_end_before = h.broker.store().log_end_offset();

    let mut cases: Vec<(&str, Message, Code)> = Vec::new();
    cases.push(("unknown topic", msg("nope", b"x"), Code::TopicNotFound));
    cases.push((
        "bad topic name",
        msg("bad topic!", b"x"),
        Code::IllegalTopic,
    ));
    cases.push((
        "reserved topic",
        msg("%SYS%TOPICS", b"x"),
        Code::IllegalTopic,
    ));
    cases.push(("empty body", msg("normal", b""), Code::MessageBodyEmpty));
    cases.push((
        "body too large",
        msg("normal", &[7u8; 1025]),
        Code::MessageBodyTooLarge,
    ));
    let mut m = msg("normal", b"x");
    m.system_properties.as_mut().unwrap().tag = Some("a||b".into());
    cases.push(("tag with |", m, Code::IllegalMessageTag));
    let mut m = msg("normal", b"x");
    m.system_properties.as_mut().unwrap().tag = Some("  ".into());
    cases.push(("blank tag", m, Code::IllegalMessageTag));
    let mut m = msg("normal", b"x");
    m.system_properties.as_mut().unwrap().keys = vec!["ok".into(), "bad\u{7}".into()];
    cases.push(("control char in key", m, Code::IllegalMessageKey));
    let mut m = msg("normal", b"x");
    m.user_properties.insert("UNIQ_KEY".into(), "v".into());
    cases.push(("reserved property", m, Code::IllegalMessagePropertyKey));
    let mut m = msg("normal", b"x");
    for i in 0..3 {
        m.user_properties.insert(format!("k{i}"), "v".into());
    }
    cases.push(("too many properties", m, Code::MessagePropertiesTooLarge));
    let mut m = msg("normal", b"x");
    m.system_properties.as_mut().unwrap().message_id = String::new();
    cases.push(("missing message id", m, Code::IllegalMessageId));
    let mut m = msg("normal", b"x");
    m.system_properties.as_mut().unwrap().message_type = MessageType::Fifo as i32;
    m.system_properties.as_mut().unwrap().message_group = Some("g".into());
    cases.push((
        "fifo message to normal topic",
        m,
        Code::MessagePropertyConflictWithType,
    ));
    cases.push((
        "normal message to fifo topic",
        msg("fifo", b"x"),
        Code::MessagePropertyConflictWithType,
    ));

    for (what, m, code) in cases {
        let r = send(&h, m).await;
        let st = r.status.unwrap();
        assert_eq!(st.code, code as i32, "{what}: {}", st.message);
        assert!(
            !st.message.is_empty(),
            "{what}: the message must say what is wrong"
        );
        assert_eq!(r.entries.len(), 1, "{what}");
        assert_eq!(
            r.entries[0].status.as_ref().unwrap().code,
            code as i32,
            "{what}"
        );
    }
    assert_eq!(
        stored(&h, "normal"),
        0,
        "nothing stored on the normal topic"
    );
    assert_eq!(stored(&h, "fifo"), 0, "nothing stored on the fifo topic");
    assert_eq!(
        h.broker.store().log_end_offset(),
        log_end_before,
        "the log did not grow"
    );

    // A valid message goes through, so the checks above were not vacuous.
    let r = send(&h, msg("normal", b"hello")).await;
    assert_eq!(r.status.unwrap().code, Code::Ok as i32);
    assert_eq!(stored(&h, "normal"), 1);
    let _ = h.stop.send(true);
}

#[tokio::test]
async fn mixed_batch_stores_only_the_valid_messages() {
    let h = start(|_| {}).await;
    let good = msg("normal", b"good");
    let good_id = good.system_properties.as_ref().unwrap().message_id.clone();
    let mut fifo = msg("normal", b"x");
    fifo.system_properties.as_mut().unwrap().message_type = MessageType::Fifo as i32;
    fifo.system_properties.as_mut().unwrap().message_group = Some("g".into());
    let r = h
        .client
        .clone()
        .send_message(SendMessageRequest {
            messages: vec![good, msg("normal", b""), fifo],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, Code::MultipleResults as i32);
    let codes: Vec<i32> = r
        .entries
        .iter()
        .map(|e| e.status.as_ref().unwrap().code)
        .collect();
    assert_eq!(
        codes,
        vec![
            Code::Ok as i32,
            Code::MessageBodyEmpty as i32,
            Code::MessagePropertyConflictWithType as i32
        ]
    );
    assert_eq!(r.entries[0].message_id, good_id);
    assert_eq!(stored(&h, "normal"), 1);
    let _ = h.stop.send(true);
}

#[tokio::test]
async fn a_batch_spanning_topics_is_refused_whole_and_stores_nothing() {
    let h = start(|_| {}).await;
    for messages in [
        // Both topics exist and every message is valid on its own.
        vec![msg("normal", b"a"), msg("normal", b"b"), msg("fifo", b"c")],
        // A missing topic among them.
        vec![msg("normal", b"a"), msg("nope", b"b")],
    ] {
        let r = h
            .client
            .clone()
            .send_message(SendMessageRequest { messages })
            .await
            .unwrap()
            .into_inner();
        let st = r.status.unwrap();
        assert_eq!(st.code, Code::MessageCorrupted as i32, "{}", st.message);
        assert!(st.message.contains("different topics"), "{}", st.message);
        assert!(r.entries.is_empty());
    }
    assert_eq!(stored(&h, "normal"), 0);
    assert_eq!(stored(&h, "fifo"), 0);
    let _ = h.stop.send(true);
}

#[tokio::test]
async fn oversized_batches_are_refused_whole() {
    let h = start(|c| c.limits.max_batch_count = 2).await;
    let r = h
        .client
        .clone()
        .send_message(SendMessageRequest {
            messages: vec![
                msg("normal", b"a"),
                msg("normal", b"b"),
                msg("normal", b"c"),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, Code::PayloadTooLarge as i32);
    assert_eq!(stored(&h, "normal"), 0);
    let _ = h.stop.send(true);
}

#[tokio::test]
async fn topics_survive_restart_through_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        namesrv: vec![],
        ..Default::default()
    };
    {
        let b = sofamq_broker::server::open(cfg.clone()).await.unwrap();
        b.create_topic("keep", 3, TopicType::Fifo).await.unwrap();
        b.create_topic("gone", 2, TopicType::Normal).await.unwrap();
        assert!(b.delete_topic("gone").await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b = sofamq_broker::server::open(cfg).await.unwrap();
    let keep = b.topics().get("keep").expect("topic replayed from the log");
    assert_eq!((keep.queue_count, keep.topic_type), (3, TopicType::Fifo));
    assert!(b.topics().get("gone").is_none(), "a delete replays too");
}
