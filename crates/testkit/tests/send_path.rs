//! The send path through real processes: a namesrv and two broker groups,
//! each its own `sofamq` process on 127.0.0.1.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sofamq_client::{Message, Producer, ProducerConfig};
use sofamq_proto::admin::ReadQueueRequest;
use sofamq_proto::admin::broker_admin_client::BrokerAdminClient;
use sofamq_testkit::Cluster;

/// Every stored message of `topic` on the broker at `addr`: body -> count.
async fn stored_bodies(addr: &str, topic: &str, queues: u32) -> HashMap<Vec<u8>, usize> {
    let mut admin = BrokerAdminClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut out = HashMap::new();
    for q in 0..queues {
        let mut offset = 0;
        loop {
            let r = admin
                .read_queue(ReadQueueRequest {
                    topic: topic.into(),
                    queue_id: q,
                    offset,
                    max_count: 256,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.status.unwrap().code, 20000);
            if r.messages.is_empty() {
                break;
            }
            for m in r.messages {
                offset = m.queue_offset + 1;
                *out.entry(m.body).or_insert(0) += 1;
            }
        }
    }
    out
}

fn two_groups() -> Cluster {
    let mut c = Cluster::start_namesrv().unwrap();
    c.add_broker("broker-a", &[]).unwrap();
    c.add_broker("broker-b", &[]).unwrap();
    // Each broker directly: through the name server, a broker whose first heartbeat is
    // still on its way would be left out.
    for b in &c.brokers {
        c.cli(&[
            "topic",
            "create",
            "orders",
            "--queues",
            "4",
            "--broker-addr",
            &b.addr,
        ])
        .unwrap();
    }
    c
}

async fn producer(c: &Cluster, attempts: u32) -> Producer {
    let cfg = ProducerConfig::new([c.namesrv.addr.clone()])
        .with_max_attempts(attempts)
        .with_request_timeout(Duration::from_secs(2))
        .with_retry_backoff(Duration::from_millis(20), Duration::from_millis(200), 2.0);
    Producer::start(cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_to_two_groups_are_stored_once_each() {
    let c = two_groups();
    // The namesrv learns the topic with the brokers' next heartbeat.
    c.wait_route("orders", &["broker-a", "broker-b"], Duration::from_secs(20))
        .await
        .unwrap();
    let p = producer(&c, 3).await;
    let mut per_broker: HashMap<String, usize> = HashMap::new();
    for i in 0..200 {
        let r = p
            .send(Message::new("orders", format!("m-{i}").into_bytes()))
            .await
            .unwrap();
        assert!(!r.message_id.is_empty());
        *per_broker.entry(r.broker.clone()).or_default() += 1;
    }
    assert_eq!(
        per_broker.len(),
        2,
        "round robin reaches both groups: {per_broker:?}"
    );
    let mut all = stored_bodies(&c.brokers[0].addr, "orders", 4).await;
    for (k, v) in stored_bodies(&c.brokers[1].addr, "orders", 4).await {
        *all.entry(k).or_insert(0) += v;
    }
    assert_eq!(all.len(), 200);
    for i in 0..200 {
        assert_eq!(
            all.get(format!("m-{i}").as_bytes()),
            Some(&1),
            "m-{i} stored exactly once"
        );
    }
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_broker_mid_stream_fails_over_without_errors() {
    let mut c = two_groups();
    c.wait_route("orders", &["broker-a", "broker-b"], Duration::from_secs(20))
        .await
        .unwrap();
    let p = producer(&c, 3).await;
    let mut after_kill: HashMap<String, usize> = HashMap::new();
    for i in 0..600 {
        if i == 200 {
            c.brokers[0].kill9();
            // Let the producer's connection see the close. A send that races the kill
            // itself may go out on the dying connection, and then it may have been stored
            // on broker-a: the SDK keeps retrying it there (no copy in another group) and,
            // broker-a being down for good, reports it with `maybe_stored`. A send after
            // the close is given back unsent by hyper ("operation was canceled") or finds
            // the port refused: not stored, so it goes to broker-b.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let r = p
            .send(Message::new("orders", format!("f-{i}").into_bytes()))
            .await
            .unwrap_or_else(|e| panic!("send {i} surfaced an error: {e}"));
        if i >= 200 {
            *after_kill.entry(r.broker.clone()).or_default() += 1;
        }
    }
    assert_eq!(after_kill.get("broker-b"), Some(&400), "{after_kill:?}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_brokers_down_fires_the_alert_after_exactly_max_attempts() {
    let mut c = Cluster::start_namesrv().unwrap();
    c.add_broker("broker-a", &["--topic".into(), "orders:2".into()])
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let alerts = Arc::new(AtomicUsize::new(0));
    let seen_attempts = Arc::new(AtomicUsize::new(0));
    let (a, s) = (alerts.clone(), seen_attempts.clone());
    let cfg = ProducerConfig::new([c.namesrv.addr.clone()])
        .with_max_attempts(4)
        .with_request_timeout(Duration::from_secs(1))
        .with_retry_backoff(Duration::from_millis(10), Duration::from_millis(50), 2.0)
        .with_alert(move |f| {
            a.fetch_add(1, Ordering::SeqCst);
            s.store(f.attempts as usize, Ordering::SeqCst);
        });
    let p = Producer::start(cfg).await.unwrap();
    p.send(Message::new("orders", b"before".to_vec()))
        .await
        .unwrap();
    c.brokers[0].kill9();
    let err = p
        .send(Message::new("orders", b"after".to_vec()))
        .await
        .expect_err("no broker is up");
    assert_eq!(err.attempts, 4, "{err}");
    assert_eq!(alerts.load(Ordering::SeqCst), 1, "alert fires once");
    assert_eq!(seen_attempts.load(Ordering::SeqCst), 4);
    p.shutdown().await;
}
