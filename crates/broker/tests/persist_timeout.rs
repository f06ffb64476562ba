//! A send whose append outlives `limits.persist_timeout_ms` is answered "may be stored"
//! (MASTER_PERSISTENCE_TIMEOUT) while the append goes on; a retry of the same message id must
//! get that append's receipt, not store a second copy.

use std::time::Duration;

use sofamq_broker::BrokerConfig;
use sofamq_broker::topics::TopicType;
use sofamq_proto::v2::{
    Code, Message, MessageType, Resource, SendMessageRequest, SystemProperties,
};

fn request(id: &str) -> SendMessageRequest {
    SendMessageRequest {
        messages: vec![Message {
            topic: Some(Resource {
                name: "t".into(),
                resource_namespace: String::new(),
            }),
            system_properties: Some(SystemProperties {
                message_id: id.into(),
                message_type: MessageType::Normal as i32,
                ..Default::default()
            }),
            body: b"once".to_vec().into(),
            ..Default::default()
        }],
    }
}

fn code(r: &sofamq_proto::v2::SendMessageResponse) -> i32 {
    r.entries[0].status.as_ref().map_or(-1, |s| s.code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_persist_timeout_gets_the_late_append_not_a_second_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = BrokerConfig {
        data_dir: dir.path().join("b"),
        listen: "127.0.0.1:0".parse().unwrap(),
        namesrv: vec![],
        ..Default::default()
    };
    cfg.limits.persist_timeout_ms = 100;
    let broker = sofamq_broker::server::open(cfg).await.unwrap();
    broker
        .create_topic("t", 1, TopicType::Normal)
        .await
        .unwrap();
    let id = "0A0B0C0D0E0F00000000000000000001";

    broker
        .store()
        .inject_fault(sofamq_store::Fault::SlowNextSync(700));
    let first = broker.send(request(id)).await;
    assert_eq!(
        code(&first),
        Code::MasterPersistenceTimeout as i32,
        "{first:?}"
    );
    // The client's retry, while the first append is still in its fdatasync.
    let retry = broker.send(request(id)).await;
    assert_eq!(code(&retry), Code::Ok as i32, "{retry:?}");
    assert_eq!(
        retry.entries[0].offset, 0,
        "the first append's queue offset"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    let copies = broker
        .store()
        .scan(0)
        .filter_map(Result::ok)
        .filter(|r| r.topic == "t")
        .count();
    assert_eq!(copies, 1, "the message id is stored once");
    // And later retries still find it.
    let again = broker.send(request(id)).await;
    assert_eq!(code(&again), Code::Ok as i32);
    assert_eq!(again.entries[0].offset, 0);
}
