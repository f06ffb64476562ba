//! `sofamq standalone` as a user runs it: ready line, sends, clean stop.

use std::time::Duration;

use sofamq_client::{Message, Producer, ProducerConfig};
use sofamq_testkit::Standalone;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_serves_sends_and_stops_cleanly_on_sigterm() {
    let mut sa = Standalone::start(&["--topic", "t1:4", "--topic", "f1:2:FIFO"]).unwrap();
    assert_eq!(
        sa.node.addr,
        format!("127.0.0.1:{}", sa.port_base),
        "--port-base moves the access point"
    );
    let p = Producer::start(ProducerConfig::new([sa.node.addr.clone()]))
        .await
        .unwrap();
    let r = p.send(Message::new("t1", b"hello".to_vec())).await.unwrap();
    assert_eq!(r.broker, "broker-a");
    let fifo = Message::builder("f1", b"ordered".to_vec())
        .message_group("g1")
        .build();
    p.send(fifo).await.unwrap();
    p.shutdown().await;
    let status = sa
        .node
        .terminate(Duration::from_secs(10))
        .expect("process was running");
    assert!(
        status.success(),
        "standalone exits 0 on SIGTERM, got {status}"
    );
}
