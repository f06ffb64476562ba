//! Timer (DELAY) and transactional messages against the fake MessagingService:
//! delivery timestamps, recall, EndTransaction, and transaction checks over
//! the producer's Telemetry stream.

mod fake;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fake::Fake;
use sofamq_client::{
    Code, FailureKind, Message, Producer, ProducerConfig, ReceivedMessage, TransactionResolution,
};
use sofamq_proto::v2::{self, telemetry_command::Command};

fn config(access_points: &[&str]) -> ProducerConfig {
    ProducerConfig::new(access_points.iter().copied())
        .with_retry_backoff(Duration::from_millis(5), Duration::from_millis(20), 2.0)
        .with_request_timeout(Duration::from_secs(2))
}

/// Polls `cond` every 10 ms for at most `within`; panics with `what` otherwise.
async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn millis(ts: &prost_types::Timestamp) -> i128 {
    i128::from(ts.seconds) * 1000 + i128::from(ts.nanos / 1_000_000)
}

fn epoch_ms(t: SystemTime) -> i128 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i128
}

fn sys(m: &v2::Message) -> &v2::SystemProperties {
    m.system_properties.as_ref().unwrap()
}

#[tokio::test]
async fn send_delayed_and_send_at_set_the_delivery_timestamp_and_return_a_recall_handle() {
    let broker = Fake::start("broker-a").await;
    let producer = Producer::start(config(&[&broker.addr])).await.unwrap();

    let before = SystemTime::now();
    let r = producer
        .send_delayed(Message::new("Timers", "in 30s"), Duration::from_secs(30))
        .await
        .unwrap();
    let after = SystemTime::now();
    let at = UNIX_EPOCH + Duration::new(2_000_000_000, 123_000_000);
    let r2 = producer
        .send_at(Message::new("Timers", "at"), at)
        .await
        .unwrap();
    let plain = producer.send(Message::new("Timers", "now")).await.unwrap();

    let received = broker.state.received.lock().unwrap().clone();
    assert_eq!(received.len(), 3);
    let s = sys(&received[0]);
    assert_eq!(s.message_type, v2::MessageType::Delay as i32);
    let due = millis(s.delivery_timestamp.as_ref().unwrap());
    assert!(
        due >= epoch_ms(before) + 30_000 && due <= epoch_ms(after) + 30_000,
        "due {due} not 30 s after the send"
    );
    let s2 = sys(&received[1]);
    assert_eq!(s2.message_type, v2::MessageType::Delay as i32);
    let d2 = s2.delivery_timestamp.unwrap();
    assert_eq!((d2.seconds, d2.nanos), (2_000_000_000, 123_000_000));
    assert_eq!(
        sys(&received[2]).message_type,
        v2::MessageType::Normal as i32
    );
    assert!(sys(&received[2]).delivery_timestamp.is_none());

    // The receipts carry the handles the broker answered.
    assert_eq!(
        r.recall_handle.as_deref(),
        Some(format!("rh-broker-a-{}", r.message_id).as_str())
    );
    assert_eq!(
        r2.recall_handle.as_deref(),
        Some(format!("rh-broker-a-{}", r2.message_id).as_str())
    );
    assert_eq!(plain.recall_handle, None);
    assert_eq!(r.transaction_id, None);
    assert_eq!(r.endpoint, broker.addr);
    producer.shutdown().await;
}

#[tokio::test]
async fn recall_sends_the_handle_and_answers_the_message_id_or_the_refusal() {
    let broker = Fake::start("broker-a").await;
    let producer = Producer::start(config(&[&broker.addr])).await.unwrap();
    let r = producer
        .send_delayed(Message::new("Timers", "x"), Duration::from_secs(60))
        .await
        .unwrap();
    let handle = r.recall_handle.clone().unwrap();

    let id = producer.recall("Timers", &handle).await.unwrap();
    assert_eq!(id, r.message_id);
    let recalls = broker.state.recalls.lock().unwrap().clone();
    assert_eq!(recalls.len(), 1);
    assert_eq!(recalls[0].recall_handle, handle);
    assert_eq!(recalls[0].topic.as_ref().unwrap().name, "Timers");

    // An unknown handle: the broker's BAD_REQUEST, asked once.
    let err = producer
        .recall("Timers", "no-such-handle")
        .await
        .unwrap_err();
    assert_eq!(err.code_enum(), Some(Code::BadRequest));
    assert_eq!(broker.state.recalls.lock().unwrap().len(), 2);

    // Already delivered: PRECONDITION_FAILED is definitive, not retried.
    *broker.state.recall_code.lock().unwrap() = Some(Code::PreconditionFailed as i32);
    let err = producer.recall("Timers", &handle).await.unwrap_err();
    assert_eq!(err.code(), Some(42800));
    match &err {
        sofamq_client::ClientError::Request(e) => {
            assert_eq!(e.op, "RecallMessage");
            assert_eq!(e.attempts, 1);
            assert_eq!(e.kind, FailureKind::Status);
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(broker.state.recalls.lock().unwrap().len(), 3);

    // Refused before any request.
    assert!(producer.recall("Timers", "").await.is_err());
    assert_eq!(broker.state.recalls.lock().unwrap().len(), 3);
    producer.shutdown().await;
}

#[tokio::test]
async fn recall_tries_every_master_until_one_has_the_timer() {
    let a = Fake::start("broker-a").await;
    let b = Fake::start("broker-b").await;
    a.state.set_route(vec![a.route_entry(), b.route_entry()]);
    b.state
        .handles
        .lock()
        .unwrap()
        .insert("handle-on-b".into(), "MSG-B".into());
    let producer = Producer::start(config(&[&a.addr])).await.unwrap();

    assert_eq!(producer.recall("T", "handle-on-b").await.unwrap(), "MSG-B");
    assert_eq!(
        a.state.recalls.lock().unwrap().len(),
        1,
        "a was asked first"
    );
    assert_eq!(b.state.recalls.lock().unwrap().len(), 1);

    // Nobody has it: every master is asked once, the refusal is the answer.
    let err = producer.recall("T", "unknown").await.unwrap_err();
    assert_eq!(err.code_enum(), Some(Code::BadRequest));
    assert_eq!(a.state.recalls.lock().unwrap().len(), 2);
    assert_eq!(b.state.recalls.lock().unwrap().len(), 2);
    producer.shutdown().await;
}

#[tokio::test]
async fn commit_and_rollback_end_the_transaction_on_the_broker_that_stored_it() {
    let a = Fake::start("broker-a").await;
    let b = Fake::start("broker-b").await;
    a.state.set_route(vec![a.route_entry(), b.route_entry()]);
    let producer = Producer::start(config(&[&a.addr])).await.unwrap();

    // Round-robin: the first half goes to broker-a, the second to broker-b.
    let t1 = producer
        .send_half(Message::builder("Orders", "one").key("o-1").build())
        .await
        .unwrap();
    let t2 = producer
        .send_half(Message::new("Orders", "two"))
        .await
        .unwrap();
    assert_eq!(t1.receipt().broker, "broker-a");
    assert_eq!(t2.receipt().broker, "broker-b");
    for (fake, t) in [(&a, &t1), (&b, &t2)] {
        let got = fake.state.received.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert_eq!(
            sys(&got[0]).message_type,
            v2::MessageType::Transaction as i32
        );
        assert_eq!(sys(&got[0]).message_id, t.message_id());
        assert_eq!(
            t.transaction_id(),
            format!("tx-{}-{}", fake.state.name, t.message_id())
        );
        assert_eq!(
            t.receipt().transaction_id.as_deref(),
            Some(t.transaction_id())
        );
    }

    t1.commit().await.unwrap();
    t2.rollback().await.unwrap();
    let ends_a = a.state.end_transactions.lock().unwrap().clone();
    let ends_b = b.state.end_transactions.lock().unwrap().clone();
    assert_eq!(ends_a.len(), 1, "broker-a ends only its own half");
    assert_eq!(ends_b.len(), 1, "broker-b ends only its own half");
    let check = |e: &v2::EndTransactionRequest,
                 t: &sofamq_client::Transaction,
                 resolution: v2::TransactionResolution| {
        assert_eq!(e.topic.as_ref().unwrap().name, "Orders");
        assert_eq!(e.message_id, t.message_id());
        assert_eq!(e.transaction_id, t.transaction_id());
        assert_eq!(e.resolution, resolution as i32);
        assert_eq!(e.source, v2::TransactionSource::SourceClient as i32);
    };
    check(&ends_a[0], &t1, v2::TransactionResolution::Commit);
    check(&ends_b[0], &t2, v2::TransactionResolution::Rollback);

    // The broker's refusal comes back as the error (not retried: not retryable).
    *a.state.end_code.lock().unwrap() = Some(Code::PreconditionFailed as i32);
    let err = t1.rollback().await.unwrap_err();
    assert_eq!(err.code_enum(), Some(Code::PreconditionFailed));
    assert_eq!(a.state.end_transactions.lock().unwrap().len(), 2);

    // A retryable answer is retried at the same endpoint.
    *b.state.end_code.lock().unwrap() = Some(Code::InternalServerError as i32);
    let err = t2.rollback().await.unwrap_err();
    match err {
        sofamq_client::ClientError::Request(e) => {
            assert_eq!(e.op, "EndTransaction");
            assert_eq!(e.attempts, 3);
            assert_eq!(e.endpoint.as_deref(), Some(b.addr.as_str()));
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(b.state.end_transactions.lock().unwrap().len(), 4);
    assert_eq!(a.state.end_transactions.lock().unwrap().len(), 2);
    producer.shutdown().await;
}

#[tokio::test]
async fn half_messages_always_travel_alone_and_are_not_retried() {
    let broker = Fake::start("broker-a").await;
    *broker.state.delay.lock().unwrap() = Duration::from_millis(20);
    // One request at a time: everything sent meanwhile queues up and would
    // be coalesced into the next request.
    let cfg = config(&[&broker.addr]).with_max_in_flight_per_broker(1);
    let producer = Producer::start(cfg).await.unwrap();
    producer.send(Message::new("Mixed", "warm")).await.unwrap();

    let mut normal = Vec::new();
    let mut halves = Vec::new();
    for i in 0..30 {
        if i % 3 == 0 {
            let p = producer.clone();
            halves.push(tokio::spawn(async move {
                p.send_half(Message::new("Mixed", format!("half-{i}")))
                    .await
            }));
        } else {
            normal.push(producer.spawn_send(Message::new("Mixed", format!("n-{i}"))));
        }
    }
    for h in normal {
        h.await.unwrap().unwrap();
    }
    for h in halves {
        h.await.unwrap().unwrap();
    }
    assert_eq!(
        broker
            .state
            .mixed_transaction_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a half message shared a request: {:?}",
        broker.state.batch_sizes.lock().unwrap()
    );
    assert!(
        broker.state.max_batch() > 1,
        "normal messages still coalesce"
    );

    // A retryable failure of a half message is final after one attempt.
    broker.state.set_code(|m| {
        if m.system_properties.as_ref().unwrap().message_type == v2::MessageType::Transaction as i32
        {
            Code::MasterPersistenceTimeout as i32
        } else {
            Code::Ok as i32
        }
    });
    let before = broker.state.received_ids().len();
    let err = producer
        .send_half(Message::new("Mixed", "h"))
        .await
        .unwrap_err();
    assert_eq!(err.attempts, 1);
    assert_eq!(err.code_enum(), Some(Code::MasterPersistenceTimeout));
    assert_eq!(broker.state.received_ids().len(), before + 1);

    // Client-side: a half message with a delivery time is refused unsent.
    let err = producer
        .send_half(
            Message::builder("Mixed", "h")
                .delay(Duration::from_secs(1))
                .build(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code_enum(), Some(Code::MessagePropertyConflictWithType));
    assert_eq!(err.attempts, 0);
    producer.shutdown().await;
}

#[tokio::test]
async fn telemetry_carries_the_producer_settings_and_every_published_topic() {
    let broker = Fake::start("broker-a").await;
    let producer = Producer::start(config(&[&broker.addr]).with_client_id("tele-1"))
        .await
        .unwrap();
    producer.send(Message::new("T1", "x")).await.unwrap();
    wait_for("settings with T1", Duration::from_secs(5), || {
        broker
            .state
            .settings_topics()
            .iter()
            .any(|t| t == &["T1".to_string()])
    })
    .await;
    producer.send(Message::new("T2", "x")).await.unwrap();
    wait_for("settings with T1 and T2", Duration::from_secs(5), || {
        broker
            .state
            .settings_topics()
            .iter()
            .any(|t| t == &["T1".to_string(), "T2".to_string()])
    })
    .await;
    let opened = broker
        .state
        .telemetry_opened
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(opened, 1, "one stream per broker, settings updated on it");
    let first = broker.state.telemetry_received.lock().unwrap()[0].clone();
    let Some(Command::Settings(s)) = first.command else {
        panic!("first command is not settings: {first:?}");
    };
    assert_eq!(s.client_type, Some(v2::ClientType::Producer as i32));
    assert_eq!(s.user_agent.unwrap().language, v2::Language::Rust as i32);
    producer.shutdown().await;
}

fn recover(topic: &str, message_id: &str, key: &str, transaction_id: &str) -> v2::TelemetryCommand {
    v2::TelemetryCommand {
        status: None,
        command: Some(Command::RecoverOrphanedTransactionCommand(
            v2::RecoverOrphanedTransactionCommand {
                message: Some(v2::Message {
                    topic: Some(v2::Resource {
                        resource_namespace: String::new(),
                        name: topic.into(),
                    }),
                    user_properties: [("order".to_string(), message_id.to_string())].into(),
                    system_properties: Some(v2::SystemProperties {
                        message_id: message_id.into(),
                        keys: vec![key.into()],
                        message_type: v2::MessageType::Transaction as i32,
                        ..Default::default()
                    }),
                    body: bytes::Bytes::from(format!("body of {message_id}")),
                }),
                transaction_id: transaction_id.into(),
            },
        )),
    }
}

#[tokio::test]
async fn the_checker_answers_recover_commands_with_end_transaction_from_server_check() {
    let broker = Fake::start("broker-a").await;
    let seen: Arc<Mutex<Vec<ReceivedMessage>>> = Arc::default();
    let seen2 = seen.clone();
    let cfg = config(&[&broker.addr]).with_transaction_checker(move |m: &ReceivedMessage| {
        seen2.lock().unwrap().push(m.clone());
        match m.keys.first().map(String::as_str) {
            Some("commit") => TransactionResolution::Commit,
            Some("rollback") => TransactionResolution::Rollback,
            Some("panic") => panic!("checker bug"),
            _ => TransactionResolution::Unknown,
        }
    });
    let producer = Producer::start(cfg).await.unwrap();
    producer.send(Message::new("Orders", "x")).await.unwrap();
    wait_for("the producer's settings", Duration::from_secs(5), || {
        broker
            .state
            .settings_topics()
            .iter()
            .any(|t| t.contains(&"Orders".to_string()))
    })
    .await;

    assert_eq!(
        broker
            .state
            .push_command(&recover("Orders", "M1", "commit", "X1")),
        1
    );
    assert_eq!(
        broker
            .state
            .push_command(&recover("Orders", "M2", "rollback", "X2")),
        1
    );
    assert_eq!(
        broker
            .state
            .push_command(&recover("Orders", "M3", "unknown", "X3")),
        1
    );
    assert_eq!(
        broker
            .state
            .push_command(&recover("Orders", "M4", "panic", "X4")),
        1
    );
    wait_for("answers to X1 and X2", Duration::from_secs(5), || {
        !broker.state.ends_of("X1").is_empty() && !broker.state.ends_of("X2").is_empty()
    })
    .await;
    for (txn, id, resolution) in [
        ("X1", "M1", v2::TransactionResolution::Commit),
        ("X2", "M2", v2::TransactionResolution::Rollback),
    ] {
        let ends = broker.state.ends_of(txn);
        assert_eq!(ends.len(), 1, "{txn}");
        assert_eq!(ends[0].message_id, id);
        assert_eq!(ends[0].topic.as_ref().unwrap().name, "Orders");
        assert_eq!(ends[0].resolution, resolution as i32);
        assert_eq!(
            ends[0].source,
            v2::TransactionSource::SourceServerCheck as i32
        );
    }
    // The checker saw the message as the broker sent it.
    wait_for("four checks", Duration::from_secs(5), || {
        seen.lock().unwrap().len() == 4
    })
    .await;
    let m1 = seen
        .lock()
        .unwrap()
        .iter()
        .find(|m| m.message_id == "M1")
        .cloned()
        .unwrap();
    assert_eq!(m1.topic, "Orders");
    assert_eq!(&m1.body[..], b"body of M1");
    assert_eq!(m1.properties["order"], "M1");
    assert_eq!(m1.endpoint, broker.addr);

    // Unknown and a panicking checker send nothing; the session survives both.
    assert_eq!(
        broker
            .state
            .push_command(&recover("Orders", "M5", "commit", "X5")),
        1
    );
    wait_for("answer to X5", Duration::from_secs(5), || {
        !broker.state.ends_of("X5").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(broker.state.ends_of("X3").is_empty());
    assert!(broker.state.ends_of("X4").is_empty());
    assert_eq!(broker.state.end_transactions.lock().unwrap().len(), 3);
    producer.shutdown().await;
}

#[tokio::test]
async fn without_a_checker_recover_commands_are_ignored() {
    let broker = Fake::start("broker-a").await;
    let producer = Producer::start(config(&[&broker.addr])).await.unwrap();
    producer.send(Message::new("Orders", "x")).await.unwrap();
    wait_for("the producer's settings", Duration::from_secs(5), || {
        !broker.state.settings_topics().is_empty()
    })
    .await;
    assert_eq!(
        broker
            .state
            .push_command(&recover("Orders", "M1", "commit", "X1")),
        1
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(broker.state.end_transactions.lock().unwrap().is_empty());
    producer.shutdown().await;
}

#[tokio::test]
async fn telemetry_reopens_after_the_server_ends_it_and_closes_on_shutdown() {
    use std::sync::atomic::Ordering::SeqCst;
    let broker = Fake::start("broker-a").await;
    let producer = Producer::start(config(&[&broker.addr])).await.unwrap();
    producer.send(Message::new("T", "x")).await.unwrap();
    wait_for("the first stream", Duration::from_secs(5), || {
        broker.state.settings_topics().len() == 1
    })
    .await;

    broker.state.close_telemetry();
    wait_for(
        "a second stream with the settings again",
        Duration::from_secs(5),
        || {
            broker.state.telemetry_opened.load(SeqCst) == 2
                && broker.state.settings_topics().len() == 2
        },
    )
    .await;
    assert_eq!(broker.state.settings_topics()[1], vec!["T".to_string()]);
    assert_eq!(broker.state.telemetry_closed.load(SeqCst), 1);

    // Shutdown ends the client's side of the open stream.
    let started = Instant::now();
    producer.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3));
    wait_for(
        "the stream closed by the client",
        Duration::from_secs(5),
        || broker.state.telemetry_closed.load(SeqCst) == 2,
    )
    .await;
    // And no new stream is opened afterwards.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(broker.state.telemetry_opened.load(SeqCst), 2);
}
