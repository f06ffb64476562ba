//! Producer behaviour against a fake MessagingService (name server + broker).

mod fake;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fake::{Fake, dead_addr, recorder};
use sofamq_client::{
    Code, FailureKind, METRIC_SEND_FAILURES, METRIC_SEND_RETRIES, Message, Producer, ProducerConfig,
};
use sofamq_proto::v2;

/// Fast retries so the tests stay quick.
fn config(access_points: &[&str]) -> ProducerConfig {
    recorder::install();
    ProducerConfig::new(access_points.iter().copied())
        .with_retry_backoff(Duration::from_millis(5), Duration::from_millis(20), 2.0)
        .with_request_timeout(Duration::from_secs(2))
}

fn alert_counter(cfg: ProducerConfig) -> (ProducerConfig, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let cfg = cfg.with_alert(move |_| {
        n2.fetch_add(1, Ordering::SeqCst);
    });
    (cfg, n)
}

#[tokio::test]
async fn send_succeeds_and_receipt_carries_server_offset() {
    let broker = Fake::start("broker-a").await;
    let producer = Producer::start(config(&[&broker.addr]).with_client_id("test-client"))
        .await
        .unwrap();
    let msg = Message::builder("TopicA", "hello")
        .tag("TagA")
        .key("k1")
        .property("p", "v")
        .build();
    let receipt = producer.send(msg).await.unwrap();

    let state = &broker.state;
    let received = state.received.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    let m = &received[0];
    let sp = m.system_properties.as_ref().unwrap();
    assert_eq!(receipt.message_id, sp.message_id);
    assert!(sp.message_id.len() >= 32);
    assert_eq!(
        receipt.queue_offset,
        state.offsets.lock().unwrap()[&sp.message_id]
    );
    assert_eq!(receipt.queue_offset, 1000);
    assert_eq!(receipt.topic, "TopicA");
    assert_eq!(receipt.broker, "broker-a");
    assert_eq!(&m.body[..], b"hello");
    assert_eq!(m.topic.as_ref().unwrap().name, "TopicA");
    assert_eq!(sp.tag.as_deref(), Some("TagA"));
    assert_eq!(sp.keys, vec!["k1".to_string()]);
    assert_eq!(sp.message_type, v2::MessageType::Normal as i32);
    assert_eq!(sp.body_encoding, v2::Encoding::Identity as i32);
    assert!(sp.born_timestamp.is_some());
    assert!(!sp.born_host.is_empty());
    assert_eq!(m.user_properties["p"], "v");

    let headers = state.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(headers.get("x-mq-client-id").unwrap(), "test-client");
    assert_eq!(headers.get("x-mq-language").unwrap(), "RUST");
    assert_eq!(headers.get("x-mq-protocol").unwrap(), "v2");
    assert!(headers.get("x-mq-client-version").is_some());
    assert!(headers.get("x-mq-request-id").is_some());
    let date = headers.get("x-mq-date-time").unwrap().to_str().unwrap();
    assert_eq!(date.len(), 16);
    assert_eq!(&date[8..9], "T");
    assert!(date.ends_with('Z'));
    producer.shutdown().await;
}

#[tokio::test]
async fn concurrent_sends_are_coalesced_and_each_caller_gets_its_entry() {
    let broker = Fake::start("broker-a").await;
    *broker.state.delay.lock().unwrap() = Duration::from_millis(20);
    let producer = Producer::start(config(&[&broker.addr])).await.unwrap();
    // Warm the route so the burst below is only sends.
    producer.send(Message::new("TopicC", "warm")).await.unwrap();
    let before = broker.state.send_requests.load(Ordering::SeqCst);

    let handles: Vec<_> = (0..200)
        .map(|i| producer.spawn_send(Message::new("TopicC", format!("body-{i}"))))
        .collect();
    let mut receipts = Vec::new();
    for h in handles {
        receipts.push(h.await.unwrap().unwrap());
    }

    let requests = broker.state.send_requests.load(Ordering::SeqCst) - before;
    assert!(requests <= 40, "200 sends took {requests} requests");
    assert!(broker.state.max_batch() > 1);
    assert!(broker.state.max_in_flight.load(Ordering::SeqCst) <= 8);
    // Each caller got the entry of its own message.
    let received = broker.state.received.lock().unwrap().clone();
    let offsets = broker.state.offsets.lock().unwrap().clone();
    let mut seen = std::collections::HashSet::new();
    for (i, r) in receipts.iter().enumerate() {
        let m = received
            .iter()
            .find(|m| m.system_properties.as_ref().unwrap().message_id == r.message_id)
            .unwrap();
        assert_eq!(&m.body[..], format!("body-{i}").as_bytes());
        assert_eq!(offsets[&r.message_id], r.queue_offset);
        assert!(seen.insert(r.queue_offset));
    }
    producer.shutdown().await;
}

#[tokio::test]
async fn coalescing_respects_message_and_in_flight_limits() {
    let broker = Fake::start("broker-a").await;
    *broker.state.delay.lock().unwrap() = Duration::from_millis(10);
    let cfg = config(&[&broker.addr])
        .with_batch_limits(5, 4 * 1024 * 1024)
        .with_max_in_flight_per_broker(2);
    let producer = Producer::start(cfg).await.unwrap();
    let handles: Vec<_> = (0..100)
        .map(|i| producer.spawn_send(Message::new("TopicL", format!("{i}"))))
        .collect();
    for h in handles {
        h.await.unwrap().unwrap();
    }
    assert!(broker.state.max_batch() <= 5);
    assert!(broker.state.max_in_flight.load(Ordering::SeqCst) <= 2);
    assert!(broker.state.send_requests.load(Ordering::SeqCst) >= 20);
    producer.shutdown().await;
}

#[tokio::test]
async fn concurrent_sends_to_two_topics_leave_in_one_topic_requests_sharing_the_slots() {
    let broker = Fake::start("broker-a").await;
    *broker.state.delay.lock().unwrap() = Duration::from_millis(10);
    let cfg = config(&[&broker.addr]).with_max_in_flight_per_broker(2);
    let producer = Producer::start(cfg).await.unwrap();
    producer.send(Message::new("TopicP", "warm")).await.unwrap();
    producer.send(Message::new("TopicQ", "warm")).await.unwrap();
    let handles: Vec<_> = (0..200)
        .map(|i| {
            let topic = if i % 2 == 0 { "TopicP" } else { "TopicQ" };
            producer.spawn_send(Message::new(topic, format!("{i}")))
        })
        .collect();
    for h in handles {
        h.await.unwrap().unwrap();
    }
    assert_eq!(broker.state.mixed_topic_requests.load(Ordering::SeqCst), 0);
    // Still coalesced, and the two topics' queues share the broker's two slots.
    assert!(broker.state.max_batch() > 1);
    assert!(broker.state.max_in_flight.load(Ordering::SeqCst) <= 2);
    producer.shutdown().await;
}

#[tokio::test]
async fn byte_limit_splits_requests() {
    let broker = Fake::start("broker-a").await;
    *broker.state.delay.lock().unwrap() = Duration::from_millis(10);
    let cfg = config(&[&broker.addr])
        .with_batch_limits(64, 2500)
        .with_max_in_flight_per_broker(1);
    let producer = Producer::start(cfg).await.unwrap();
    let handles: Vec<_> = (0..20)
        .map(|_| producer.spawn_send(Message::new("TopicB", vec![7u8; 1000])))
        .collect();
    for h in handles {
        h.await.unwrap().unwrap();
    }
    assert!(
        broker.state.max_batch() <= 2,
        "{:?}",
        broker.state.batch_sizes
    );
    producer.shutdown().await;
}

#[tokio::test]
async fn lone_sends_go_out_immediately() {
    let broker = Fake::start("broker-a").await;
    let producer = Producer::start(config(&[&broker.addr])).await.unwrap();
    producer.send(Message::new("TopicI", "warm")).await.unwrap();
    let start = Instant::now();
    for i in 0..20 {
        producer
            .send(Message::new("TopicI", format!("{i}")))
            .await
            .unwrap();
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "20 lone sends took {took:?}"
    );
    assert_eq!(broker.state.max_batch(), 1);
    producer.shutdown().await;
}

#[tokio::test]
async fn linger_gathers_messages_into_one_request() {
    let broker = Fake::start("broker-a").await;
    let cfg = config(&[&broker.addr]).with_linger(Duration::from_millis(300));
    let producer = Producer::start(cfg).await.unwrap();
    producer.send(Message::new("TopicG", "warm")).await.unwrap();
    let before = broker.state.send_requests.load(Ordering::SeqCst);
    let mut handles = Vec::new();
    for i in 0..5 {
        handles.push(producer.spawn_send(Message::new("TopicG", format!("{i}"))));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for h in handles {
        h.await.unwrap().unwrap();
    }
    assert_eq!(
        broker.state.send_requests.load(Ordering::SeqCst) - before,
        1
    );
    producer.shutdown().await;
}

#[tokio::test]
async fn retryable_error_on_one_broker_retries_on_another_with_same_id() {
    let a = Fake::start("broker-a").await;
    let b = Fake::start("broker-b").await;
    // Refused before the append (no in-sync slave): nothing stored, any group may retry.
    a.state.set_code(|_| Code::HaNotAvailable as i32);
    a.state.set_route(vec![a.route_entry(), b.route_entry()]);
    let (cfg, alerts) = alert_counter(config(&[&a.addr]));
    let producer = Producer::start(cfg).await.unwrap();

    // Round-robin starts at broker-a (brokers are sorted by name).
    let receipt = producer.send(Message::new("TopicR", "x")).await.unwrap();
    assert_eq!(receipt.broker, "broker-b");
    let ids_a = a.state.received_ids();
    let ids_b = b.state.received_ids();
    assert_eq!(ids_a.len(), 1, "one attempt on broker-a");
    assert_eq!(ids_b, ids_a, "the retry carries the same message id");
    assert_eq!(receipt.message_id, ids_a[0]);
    assert_eq!(alerts.load(Ordering::SeqCst), 0);
    assert_eq!(recorder::counter(METRIC_SEND_RETRIES, "TopicR"), 1);
    assert_eq!(recorder::counter(METRIC_SEND_FAILURES, "TopicR"), 0);

    // broker-a is now isolated: the next sends avoid it.
    for _ in 0..4 {
        let r = producer.send(Message::new("TopicR", "y")).await.unwrap();
        assert_eq!(r.broker, "broker-b");
    }
    assert_eq!(a.state.received_ids().len(), 1);
    producer.shutdown().await;
}

/// A send whose outcome is unknown (here SLAVE_PERSISTENCE_TIMEOUT: stored on the master,
/// not yet on the slave) is retried on the same broker group only, where the idempotence
/// window answers with the stored copy; a copy in another group would be a duplicate.
#[tokio::test]
async fn an_ambiguous_outcome_is_retried_on_the_same_group_only() {
    let a = Fake::start("broker-a").await;
    let b = Fake::start("broker-b").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    a.state.set_code(move |_| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            Code::SlavePersistenceTimeout as i32
        } else {
            Code::Ok as i32
        }
    });
    a.state.set_route(vec![a.route_entry(), b.route_entry()]);
    let producer = Producer::start(config(&[&a.addr]).with_max_attempts(3))
        .await
        .unwrap();
    // Round-robin starts at broker-a (brokers are sorted by name).
    let receipt = producer.send(Message::new("TopicP", "x")).await.unwrap();
    assert_eq!(receipt.broker, "broker-a", "the retry stays on broker-a");
    let ids = a.state.received_ids();
    assert_eq!(
        ids.len(),
        2,
        "two attempts on broker-a, with one id: {ids:?}"
    );
    assert_eq!(ids[0], ids[1]);
    assert!(b.state.received_ids().is_empty(), "broker-b never got it");

    producer.shutdown().await;

    // Still unknown after every attempt: the error says it may be stored, and no other
    // group ever saw it. (A fresh producer: the first one avoids broker-a for a while.)
    a.state.set_code(|_| Code::SlavePersistenceTimeout as i32);
    let producer = Producer::start(config(&[&a.addr]).with_max_attempts(3))
        .await
        .unwrap();
    let before = b.state.received_ids().len();
    let err = producer
        .send(Message::new("TopicP", "y"))
        .await
        .expect_err("every attempt on broker-a is unknown");
    assert!(err.maybe_stored, "{err}");
    assert_eq!(err.attempts, 3);
    assert_eq!(err.broker.as_deref(), Some("broker-a"));
    let on_b = b.state.received_ids();
    assert!(
        !on_b[before..].contains(&err.message_id),
        "the unknown send reached broker-b"
    );
    producer.shutdown().await;
}

/// Pinned to a group (an earlier attempt may have stored the message there) that then
/// refuses before storing (HA_NOT_AVAILABLE: a new master with no in-sync slave yet, or its
/// dead master's address refusing the connection), the retry waits for the route to
/// change, up to a request timeout, instead of spending the last attempts within a few
/// milliseconds of backoff; the message still goes to that group only.
#[tokio::test]
async fn a_pinned_send_refused_before_storing_waits_before_its_next_attempt() {
    let a = Fake::start("broker-a").await;
    let b = Fake::start("broker-b").await;
    let times = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let t = times.clone();
    a.state.set_code(move |_| {
        let mut t = t.lock().unwrap();
        t.push(Instant::now());
        match t.len() {
            1 => Code::SlavePersistenceTimeout as i32,
            2 => Code::HaNotAvailable as i32,
            _ => Code::Ok as i32,
        }
    });
    a.state.set_route(vec![a.route_entry(), b.route_entry()]);
    let timeout = Duration::from_millis(400);
    let producer = Producer::start(
        config(&[&a.addr])
            .with_max_attempts(3)
            .with_request_timeout(timeout),
    )
    .await
    .unwrap();
    let receipt = producer.send(Message::new("TopicP", "x")).await.unwrap();
    assert_eq!(receipt.broker, "broker-a");
    assert!(b.state.received_ids().is_empty(), "broker-b got it");
    let t = times.lock().unwrap().clone();
    assert_eq!(t.len(), 3, "three attempts on broker-a");
    // The backoff alone is 5-20 ms here.
    assert!(
        t[2] - t[1] >= timeout - Duration::from_millis(50),
        "the attempt after HA_NOT_AVAILABLE came {:?} later",
        t[2] - t[1]
    );
    producer.shutdown().await;
}

/// A send pinned to a group (an attempt there may have stored it) is freed when that
/// group's master answers HA_NOT_AVAILABLE with the not-held header (short of in-sync
/// replicas, it holds none of the message): the next attempt goes to another group, one
/// more than the configured attempts if the group had the last. Without the header the
/// send stays in the group and fails there, "maybe stored".
#[tokio::test]
async fn a_pinned_send_goes_elsewhere_once_its_group_says_it_holds_none_of_it() {
    for header in [true, false] {
        let a = Fake::start("broker-a").await;
        let b = Fake::start("broker-b").await;
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        a.state
            .set_code(move |_| match n2.fetch_add(1, Ordering::SeqCst) {
                0 => Code::SlavePersistenceTimeout as i32,
                _ => Code::HaNotAvailable as i32,
            });
        a.state.whole_not_held.store(header, Ordering::SeqCst);
        a.state.set_route(vec![a.route_entry(), b.route_entry()]);
        let producer = Producer::start(
            config(&[&a.addr])
                .with_max_attempts(2)
                .with_request_timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap();
        let sent = producer.send(Message::new("TopicH", "x")).await;
        let on_b = b.state.offsets.lock().unwrap().len();
        if header {
            let receipt = sent.unwrap();
            assert_eq!(receipt.broker, "broker-b");
            assert_eq!(on_b, 1);
        } else {
            let err = sent.unwrap_err();
            assert_eq!(err.attempts, 2);
            assert!(err.maybe_stored, "{err:?}");
            assert_eq!(on_b, 0, "broker-b got it");
        }
        assert_eq!(a.state.send_requests.load(Ordering::SeqCst), 2);
        producer.shutdown().await;
    }
}

#[tokio::test]
async fn non_retryable_code_fails_at_once() {
    let broker = Fake::start("broker-a").await;
    let other = Fake::start("broker-b").await;
    other.state.set_code(|_| Code::IllegalMessageTag as i32);
    broker
        .state
        .set_route(vec![broker.route_entry(), other.route_entry()]);
    let (cfg, alerts) = alert_counter(config(&[&broker.addr]));
    let producer = Producer::start(cfg).await.unwrap();
    let err = producer
        .send(Message::builder("TopicN", "x").tag("bad").build())
        .await
        .unwrap_err();
    assert_eq!(err.code, Some(40004));
    assert_eq!(err.code_enum(), Some(Code::IllegalMessageTag));
    assert_eq!(err.kind, FailureKind::Status);
    assert_eq!(err.attempts, 1);
    assert_eq!(err.topic, "TopicN");
    assert!(!err.message_id.is_empty());
    let total = broker.state.send_requests.load(Ordering::SeqCst)
        + other.state.send_requests.load(Ordering::SeqCst);
    assert_eq!(total, 1, "no retry");
    assert_eq!(alerts.load(Ordering::SeqCst), 1);
    assert_eq!(recorder::counter(METRIC_SEND_FAILURES, "TopicN"), 1);
    assert_eq!(recorder::counter(METRIC_SEND_RETRIES, "TopicN"), 0);
    producer.shutdown().await;
}

#[tokio::test]
async fn all_brokers_down_alerts_once_after_max_attempts() {
    let namesrv = Fake::start("namesrv").await;
    namesrv.state.set_route(vec![
        ("broker-a".into(), dead_addr()),
        ("broker-b".into(), dead_addr()),
    ]);
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let f2 = failures.clone();
    let cfg = config(&[&namesrv.addr]).with_alert(move |f| f2.lock().unwrap().push(f.clone()));
    let producer = Producer::start(cfg).await.unwrap();
    let err = producer
        .send(Message::new("TopicD", "x"))
        .await
        .unwrap_err();
    assert_eq!(err.attempts, 3);
    assert_eq!(err.kind, FailureKind::Transport);
    assert_eq!(err.topic, "TopicD");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let alerted = failures.lock().unwrap().clone();
    assert_eq!(alerted.len(), 1, "alert fired exactly once");
    assert_eq!(alerted[0].message_id, err.message_id);
    assert_eq!(alerted[0].attempts, 3);
    assert_eq!(recorder::counter(METRIC_SEND_FAILURES, "TopicD"), 1);
    assert_eq!(recorder::counter(METRIC_SEND_RETRIES, "TopicD"), 2);
    assert_eq!(namesrv.state.send_requests.load(Ordering::SeqCst), 0);
    producer.shutdown().await;
}

#[tokio::test]
async fn route_refresh_after_failure_picks_up_new_broker() {
    let namesrv = Fake::start("namesrv").await;
    let new = Fake::start("broker-new").await;
    namesrv
        .state
        .set_route(vec![("broker-old".into(), dead_addr())]);
    *namesrv.state.next_route.lock().unwrap() = Some(vec![new.route_entry()]);
    let (cfg, alerts) = alert_counter(config(&[&namesrv.addr]));
    let producer = Producer::start(cfg).await.unwrap();
    let receipt = producer.send(Message::new("TopicF", "x")).await.unwrap();
    assert_eq!(receipt.broker, "broker-new");
    assert!(namesrv.state.route_queries.load(Ordering::SeqCst) >= 2);
    assert_eq!(new.state.received_ids(), vec![receipt.message_id]);
    assert_eq!(alerts.load(Ordering::SeqCst), 0);
    producer.shutdown().await;
}

/// A failover seen by the periodic route refresh ends a retry's backoff at once: the send
/// does not wait out a long backoff once the route names a new master.
#[tokio::test]
async fn a_route_change_ends_the_retry_backoff() {
    let namesrv = Fake::start("namesrv").await;
    let new = Fake::start("broker-new").await;
    namesrv
        .state
        .set_route(vec![("broker-a".into(), dead_addr())]);
    let cfg = config(&[&namesrv.addr])
        .with_retry_backoff(Duration::from_secs(5), Duration::from_secs(5), 2.0)
        .with_route_refresh_interval(Duration::from_millis(100));
    let producer = Producer::start(cfg).await.unwrap();
    let started = Instant::now();
    let send = tokio::spawn({
        let p = producer.clone();
        async move { p.send(Message::new("TopicW", "x")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    namesrv
        .state
        .set_route(vec![("broker-a".into(), new.addr.clone())]);
    let receipt = send.await.unwrap().unwrap();
    assert_eq!(new.state.received_ids(), vec![receipt.message_id]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "waited out the 5 s backoff: {:?}",
        started.elapsed()
    );
    producer.shutdown().await;
}

#[tokio::test]
async fn routes_are_refreshed_periodically() {
    let a = Fake::start("broker-a").await;
    let b = Fake::start("broker-b").await;
    let cfg = config(&[&a.addr]).with_route_refresh_interval(Duration::from_millis(100));
    let producer = Producer::start(cfg).await.unwrap();
    assert_eq!(
        producer
            .send(Message::new("TopicP", "1"))
            .await
            .unwrap()
            .broker,
        "broker-a"
    );
    a.state.set_route(vec![b.route_entry()]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        producer
            .send(Message::new("TopicP", "2"))
            .await
            .unwrap()
            .broker,
        "broker-b"
    );
    assert_eq!(a.state.received_ids().len(), 1);
    producer.shutdown().await;
}

#[tokio::test]
async fn topic_not_found_is_retried_only_when_another_broker_remains() {
    // Two brokers, the first answers TOPIC_NOT_FOUND: stale route, retried.
    let a = Fake::start("broker-a").await;
    let b = Fake::start("broker-b").await;
    a.state.set_code(|_| Code::TopicNotFound as i32);
    a.state.set_route(vec![a.route_entry(), b.route_entry()]);
    let producer = Producer::start(config(&[&a.addr])).await.unwrap();
    let r = producer.send(Message::new("TopicT", "x")).await.unwrap();
    assert_eq!(r.broker, "broker-b");
    producer.shutdown().await;

    // A single broker answering TOPIC_NOT_FOUND: fails at once.
    let c = Fake::start("broker-c").await;
    c.state.set_code(|_| Code::TopicNotFound as i32);
    let producer = Producer::start(config(&[&c.addr])).await.unwrap();
    let err = producer
        .send(Message::new("TopicT2", "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code, Some(Code::TopicNotFound as i32));
    assert_eq!(err.attempts, 1);
    producer.shutdown().await;
}

#[tokio::test]
async fn fifo_groups_stick_to_one_broker_normal_messages_spread() {
    let a = Fake::start("broker-a").await;
    let b = Fake::start("broker-b").await;
    a.state.set_route(vec![a.route_entry(), b.route_entry()]);
    let producer = Producer::start(config(&[&a.addr])).await.unwrap();
    let mut fifo_brokers = std::collections::HashSet::new();
    for i in 0..10 {
        let m = Message::builder("TopicO", format!("{i}"))
            .message_group("order-42")
            .build();
        fifo_brokers.insert(producer.send(m).await.unwrap().broker);
    }
    assert_eq!(fifo_brokers.len(), 1);
    let fifo = a
        .state
        .received
        .lock()
        .unwrap()
        .iter()
        .chain(b.state.received.lock().unwrap().iter())
        .map(|m| m.system_properties.clone().unwrap())
        .collect::<Vec<_>>();
    assert!(
        fifo.iter()
            .all(|s| s.message_type == v2::MessageType::Fifo as i32
                && s.message_group.as_deref() == Some("order-42"))
    );

    let mut normal_brokers = std::collections::HashSet::new();
    for i in 0..4 {
        let r = producer
            .send(Message::new("TopicO", format!("{i}")))
            .await
            .unwrap();
        normal_brokers.insert(r.broker);
    }
    assert_eq!(normal_brokers.len(), 2);
    producer.shutdown().await;
}

#[tokio::test]
async fn access_points_fall_back_to_one_that_answers() {
    let broker = Fake::start("broker-a").await;
    let dead = dead_addr();
    let producer = Producer::start(config(&[&dead, &broker.addr]))
        .await
        .unwrap();
    producer.send(Message::new("TopicX", "x")).await.unwrap();
    producer.send(Message::new("TopicX2", "y")).await.unwrap();
    assert_eq!(broker.state.route_queries.load(Ordering::SeqCst), 2);
    producer.shutdown().await;
}

#[tokio::test]
async fn send_batch_shares_requests_and_reports_each_outcome() {
    let broker = Fake::start("broker-a").await;
    let (cfg, alerts) = alert_counter(config(&[&broker.addr]));
    let producer = Producer::start(cfg).await.unwrap();
    producer.send(Message::new("TopicS", "warm")).await.unwrap();
    let before = broker.state.send_requests.load(Ordering::SeqCst);

    let ok = producer
        .send_batch(
            (0..10)
                .map(|i| Message::new("TopicS", format!("{i}")))
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(ok.len(), 10);
    assert_eq!(
        broker.state.send_requests.load(Ordering::SeqCst) - before,
        1
    );

    let mixed = (0..6)
        .map(|i| {
            let b = Message::builder("TopicS", format!("{i}"));
            if i % 3 == 1 { b.tag("bad") } else { b }.build()
        })
        .collect();
    let err = producer.send_batch(mixed).await.unwrap_err();
    assert_eq!(err.failed, 2);
    assert_eq!(err.first.code, Some(40004));
    let pattern: Vec<bool> = err.results.iter().map(|r| r.is_ok()).collect();
    assert_eq!(pattern, [true, false, true, true, false, true]);
    assert_eq!(alerts.load(Ordering::SeqCst), 2);
    producer.shutdown().await;
}

#[tokio::test]
async fn send_async_calls_back_and_shutdown_refuses_new_sends() {
    let broker = Fake::start("broker-a").await;
    let producer = Producer::start(config(&[&broker.addr])).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    producer
        .send_async(Message::new("TopicY", "x"), move |r| {
            let _ = tx.send(r);
        })
        .await
        .unwrap();
    let receipt = rx.await.unwrap().unwrap();
    assert_eq!(receipt.queue_offset, 1000);

    let clone = producer.clone();
    producer.shutdown().await;
    let err = clone.send(Message::new("TopicY", "y")).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Shutdown);
    assert_eq!(broker.state.received_ids().len(), 1);
}

#[tokio::test]
async fn client_side_validation_fails_without_network() {
    let namesrv = Fake::start("namesrv").await;
    let (cfg, alerts) = alert_counter(config(&[&namesrv.addr]));
    let producer = Producer::start(cfg).await.unwrap();
    let err = producer.send(Message::new("", "x")).await.unwrap_err();
    assert_eq!(err.code, Some(Code::IllegalTopic as i32));
    assert_eq!(err.kind, FailureKind::Invalid);
    assert_eq!(err.attempts, 0);
    assert_eq!(alerts.load(Ordering::SeqCst), 1);
    assert_eq!(namesrv.state.route_queries.load(Ordering::SeqCst), 0);
    assert!(Producer::start(ProducerConfig::default()).await.is_err());
    producer.shutdown().await;
}

#[tokio::test]
async fn concurrent_callers_share_one_failed_route_query() {
    let namesrv = Fake::start("namesrv").await;
    *namesrv.state.route_code.lock().unwrap() = Some(Code::TopicNotFound as i32);
    let producer = Producer::start(config(&[&namesrv.addr])).await.unwrap();
    let handles: Vec<_> = (0..50)
        .map(|_| producer.spawn_send(Message::new("TopicM", "x")))
        .collect();
    for h in handles {
        let err = h.await.unwrap().unwrap_err();
        assert_eq!(err.code, Some(Code::TopicNotFound as i32));
        assert_eq!(err.attempts, 1);
    }
    let queries = namesrv.state.route_queries.load(Ordering::SeqCst);
    assert!(queries <= 5, "50 callers made {queries} route queries");
    producer.shutdown().await;
}
