//! Timer (DELAY) and transactional messages end to end: in-process namesrv + broker on
//! 127.0.0.1:0, raw RocketMQ v2 requests for the sends (so every system property is under
//! the test's control) and the SDK's SimpleConsumer to receive.
//!
//! A broker with an in-process name server: it lives in `sofamq-cli`, the crate that
//! depends on both, so that `sofamq-broker` does not depend on `sofamq-namesrv`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sofamq_broker::topics::TopicType;
use sofamq_broker::{Broker, BrokerConfig};
use sofamq_client::{ConsumerConfig, SimpleConsumer};
use sofamq_proto::v2::messaging_service_client::MessagingServiceClient;
use sofamq_proto::v2::telemetry_command::Command;
use sofamq_proto::v2::{
    ClientType, Code, EndTransactionRequest, Message, MessageType, Publishing,
    RecallMessageRequest, Resource, SendMessageRequest, SendResultEntry, Settings,
    SystemProperties, TelemetryCommand, TransactionResolution, TransactionSource, settings::PubSub,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Channel;

struct Node {
    broker: Broker,
    addr: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

struct H {
    dir: tempfile::TempDir,
    ns: String,
    _ns_stop: watch::Sender<bool>,
    node: Option<Node>,
    tweak: fn(&mut BrokerConfig),
}

async fn start_ns() -> (String, watch::Sender<bool>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, mut rx) = watch::channel(false);
    tokio::spawn(sofamq_namesrv::run(
        l,
        sofamq_namesrv::NamesrvConfig::default(),
        sofamq_server::Shutdown::on(async move {
            let _ = rx.wait_for(|s| *s).await;
        }),
    ));
    (addr, tx)
}

async fn start_broker(data: &Path, ns: &str, tweak: fn(&mut BrokerConfig)) -> Node {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut cfg = BrokerConfig {
        data_dir: PathBuf::from(data),
        listen: l.local_addr().unwrap(),
        namesrv: vec![ns.to_string()],
        heartbeat_interval_ms: 200,
        ..Default::default()
    };
    cfg.consume.poll_interval_ms = 20;
    cfg.limits.shutdown_grace_ms = 200;
    cfg.timer.bucket_ms = 1_000;
    tweak(&mut cfg);
    let broker = sofamq_broker::server::open(cfg).await.unwrap();
    for (t, ty) in [
        ("delay", TopicType::Delay),
        ("tx", TopicType::Transaction),
        ("plain", TopicType::Normal),
    ] {
        broker.create_topic(t, 2, ty).await.unwrap();
    }
    let (stop, mut rx) = watch::channel(false);
    let mut reg_rx = broker.registered();
    let b = broker.clone();
    let task = tokio::spawn(async move {
        let _ = sofamq_broker::server::serve(
            l,
            b,
            sofamq_server::Shutdown::on(async move {
                let _ = rx.wait_for(|s| *s).await;
            }),
        )
        .await;
    });
    let _ = tokio::time::timeout(Duration::from_secs(10), reg_rx.wait_for(|r| *r)).await;
    Node {
        broker,
        addr,
        stop,
        task,
    }
}

impl H {
    async fn start(tweak: fn(&mut BrokerConfig)) -> H {
        let dir = tempfile::tempdir().unwrap();
        let (ns, ns_stop) = start_ns().await;
        let node = start_broker(&dir.path().join("b"), &ns, tweak).await;
        H {
            dir,
            ns,
            _ns_stop: ns_stop,
            node: Some(node),
            tweak,
        }
    }

    fn broker(&self) -> &Broker {
        &self.node.as_ref().unwrap().broker
    }

    async fn stop(&mut self) {
        let n = self.node.take().unwrap();
        let _ = n.stop.send(true);
        n.task.await.unwrap();
        drop(n.broker);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    async fn start_again(&mut self) {
        self.node = Some(start_broker(&self.dir.path().join("b"), &self.ns, self.tweak).await);
    }

    async fn client(&self) -> MessagingServiceClient<Channel> {
        let addr = format!("http://{}", self.node.as_ref().unwrap().addr);
        MessagingServiceClient::connect(addr).await.unwrap()
    }

    async fn consumer(&self, group: &str, topic: &str) -> SimpleConsumer {
        let cfg = ConsumerConfig::new([self.ns.clone()], group)
            .with_long_polling_timeout(Duration::from_millis(200));
        SimpleConsumer::start(cfg, vec![(topic.to_string(), "*".to_string())])
            .await
            .unwrap()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn ts(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn msg(topic: &str, id: &str, ty: MessageType, due_ms: Option<i64>) -> Message {
    Message {
        topic: Some(Resource {
            name: topic.into(),
            ..Default::default()
        }),
        user_properties: Default::default(),
        system_properties: Some(SystemProperties {
            message_id: id.into(),
            message_type: ty as i32,
            delivery_timestamp: due_ms.map(ts),
            born_timestamp: Some(ts(now_ms())),
            ..Default::default()
        }),
        body: bytes::Bytes::from(format!("body of {id}")),
    }
}

async fn send(c: &mut MessagingServiceClient<Channel>, m: Message) -> SendResultEntry {
    let r = c
        .send_message(SendMessageRequest { messages: vec![m] })
        .await
        .unwrap()
        .into_inner();
    match r.entries.into_iter().next() {
        Some(e) => e,
        None => SendResultEntry {
            status: r.status,
            ..Default::default()
        },
    }
}

fn code(e: &SendResultEntry) -> i32 {
    e.status.as_ref().map(|s| s.code).unwrap_or(0)
}

/// Receives (and acks) for `window`; returns `(message id, received at)`.
async fn drain(c: &SimpleConsumer, window: Duration) -> Vec<(String, Instant)> {
    let end = Instant::now() + window;
    let mut got = Vec::new();
    while Instant::now() < end {
        let msgs = c.receive(16, Duration::from_secs(30)).await.unwrap();
        for m in &msgs {
            c.ack(m).await.unwrap();
            got.push((m.message_id.clone(), Instant::now()));
        }
    }
    got
}

async fn end_tx(
    c: &mut MessagingServiceClient<Channel>,
    e: &SendResultEntry,
    res: TransactionResolution,
    source: TransactionSource,
) -> i32 {
    c.end_transaction(EndTransactionRequest {
        topic: Some(Resource {
            name: "tx".into(),
            ..Default::default()
        }),
        message_id: e.message_id.clone(),
        transaction_id: e.transaction_id.clone(),
        resolution: res as i32,
        source: source as i32,
        trace_context: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
    .code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_message_is_invisible_until_due_then_delivered_once() {
    let h = H::start(|_| {}).await;
    let mut c = h.client().await;
    let cons = h.consumer("g", "delay").await;
    let t0 = Instant::now();
    let due = now_ms() + 1_500;
    let e = send(&mut c, msg("delay", "d1", MessageType::Delay, Some(due))).await;
    assert_eq!(code(&e), Code::Ok as i32, "{e:?}");
    assert!(
        !e.recall_handle.is_empty(),
        "a DELAY receipt has a recall handle"
    );
    // A normal-typed message with RocketMQ's relative delay property is a timer too.
    let mut m = msg("delay", "d2", MessageType::Unspecified, None);
    m.user_properties
        .insert("TIMER_DELAY_MS".into(), "1500".into());
    let e2 = send(&mut c, m).await;
    assert_eq!(code(&e2), Code::Ok as i32, "{e2:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.broker().timers().pending_total(),
        2,
        "both indexed as pending"
    );
    let got = drain(&cons, Duration::from_millis(3_500)).await;
    let ids: Vec<&str> = got.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(ids.len(), 2, "both delivered exactly once: {ids:?}");
    assert!(ids.contains(&"d1") && ids.contains(&"d2"));
    // Delivered at or after the due time (the broker's clock is the test's clock).
    let first_at = got.iter().map(|(_, t)| *t).min().unwrap();
    assert!(
        first_at >= t0 + Duration::from_millis(1_450),
        "delivered {:?} after the send, before its due time",
        first_at - t0
    );
    assert_eq!(h.broker().timers().pending_total(), 0);
    assert_eq!(h.broker().timers().counters().0, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_cancels_a_pending_timer_and_refuses_a_delivered_one() {
    let h = H::start(|_| {}).await;
    let mut c = h.client().await;
    let cons = h.consumer("g", "delay").await;
    let recalled = send(
        &mut c,
        msg("delay", "r1", MessageType::Delay, Some(now_ms() + 1_000)),
    )
    .await;
    let kept = send(
        &mut c,
        msg("delay", "k1", MessageType::Delay, Some(now_ms() + 1_000)),
    )
    .await;
    assert_eq!(code(&recalled), Code::Ok as i32);
    let recall = |handle: String, topic: &str| RecallMessageRequest {
        topic: Some(Resource {
            name: topic.into(),
            ..Default::default()
        }),
        recall_handle: handle,
    };
    let r = c
        .recall_message(recall(recalled.recall_handle.clone(), "delay"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, Code::Ok as i32);
    assert_eq!(r.message_id, "r1");
    // Idempotent.
    let again = c
        .recall_message(recall(recalled.recall_handle.clone(), "delay"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.status.unwrap().code, Code::Ok as i32);
    // Wrong topic and garbage are refused precisely.
    let wrong = c
        .recall_message(recall(recalled.recall_handle.clone(), "plain"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(wrong.status.unwrap().code, Code::BadRequest as i32);
    let junk = c
        .recall_message(recall("nope".into(), "delay"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(junk.status.unwrap().code, Code::BadRequest as i32);

    let got = drain(&cons, Duration::from_millis(2_500)).await;
    let ids: Vec<&str> = got.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(
        ids,
        vec!["k1"],
        "the recalled timer never fires, the other does"
    );
    let late = c
        .recall_message(recall(kept.recall_handle.clone(), "delay"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(late.status.unwrap().code, Code::PreconditionFailed as i32);
    assert_eq!(h.broker().timers().counters().1, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_survive_restart_and_fire_when_overdue() {
    let mut h = H::start(|_| {}).await;
    let mut c = h.client().await;
    let due_a = now_ms() + 1_200;
    let due_b = now_ms() + 60_000;
    let recalled = send(
        &mut c,
        msg("delay", "gone", MessageType::Delay, Some(now_ms() + 1_200)),
    )
    .await;
    assert_eq!(
        code(&send(&mut c, msg("delay", "a", MessageType::Delay, Some(due_a))).await),
        20000
    );
    assert_eq!(
        code(&send(&mut c, msg("delay", "b", MessageType::Delay, Some(due_b))).await),
        20000
    );
    let r = c
        .recall_message(RecallMessageRequest {
            topic: Some(Resource {
                name: "delay".into(),
                ..Default::default()
            }),
            recall_handle: recalled.recall_handle,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, 20000);
    drop(c);
    // Down past the due time of `a`.
    h.stop().await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    h.start_again().await;
    assert!(now_ms() > due_a);
    let cons = h.consumer("g", "delay").await;
    let got = drain(&cons, Duration::from_millis(2_000)).await;
    let ids: Vec<&str> = got.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(
        ids,
        vec!["a"],
        "the overdue timer fires on return, the recalled one never, b not early"
    );
    let stats = h.broker().timers().stats();
    assert_eq!(stats.per_topic.get("delay"), Some(&1), "b still pending");
    assert!(stats.next_due_ms > 0 && stats.next_due_ms <= due_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_time_limits_and_unimplemented_features_are_refused() {
    let h = H::start(|c| c.timer.max_delay_ms = 10_000).await;
    let mut c = h.client().await;
    let far = send(
        &mut c,
        msg("delay", "far", MessageType::Delay, Some(now_ms() + 20_000)),
    )
    .await;
    assert_eq!(code(&far), Code::IllegalDeliveryTime as i32);
    let mut m = msg("delay", "lvl", MessageType::Unspecified, None);
    m.user_properties.insert("DELAY".into(), "99".into());
    assert_eq!(
        code(&send(&mut c, m).await),
        Code::IllegalDeliveryTime as i32
    );
    let mut p = msg("plain", "prio", MessageType::Normal, None);
    p.system_properties.as_mut().unwrap().priority = Some(3);
    assert_eq!(code(&send(&mut c, p).await), Code::NotImplemented as i32);
    let mut l = msg("plain", "lite", MessageType::Normal, None);
    l.system_properties.as_mut().unwrap().lite_topic = Some("x".into());
    assert_eq!(code(&send(&mut c, l).await), Code::NotImplemented as i32);
    let pt = msg("plain", "pt", MessageType::Priority, None);
    assert_eq!(code(&send(&mut c, pt).await), Code::NotImplemented as i32);
    // A delay on a NORMAL topic is a type conflict, not a silently immediate message.
    let d = msg(
        "plain",
        "dn",
        MessageType::Unspecified,
        Some(now_ms() + 5_000),
    );
    assert_eq!(
        code(&send(&mut c, d).await),
        Code::MessagePropertyConflictWithType as i32
    );
    // Transactions: no delay, no batch.
    let td = msg("tx", "td", MessageType::Transaction, Some(now_ms() + 5_000));
    assert_eq!(
        code(&send(&mut c, td).await),
        Code::MessagePropertyConflictWithType as i32
    );
    let batch = c
        .send_message(SendMessageRequest {
            messages: vec![
                msg("tx", "b1", MessageType::Transaction, None),
                msg("tx", "b2", MessageType::Transaction, None),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        batch.status.unwrap().code,
        Code::MessagePropertyConflictWithType as i32
    );
    assert_eq!(h.broker().txns().open_total(), 0, "nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_delivers_once_rollback_never_and_ends_are_idempotent() {
    let h = H::start(|_| {}).await;
    let mut c = h.client().await;
    let cons = h.consumer("g", "tx").await;
    let a = send(
        &mut c,
        msg("tx", "commit-me", MessageType::Transaction, None),
    )
    .await;
    let b = send(&mut c, msg("tx", "roll-me", MessageType::Transaction, None)).await;
    assert_eq!(code(&a), 20000, "{a:?}");
    assert!(!a.transaction_id.is_empty());
    assert!(
        drain(&cons, Duration::from_millis(600)).await.is_empty(),
        "half messages are invisible"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.broker().txns().open_total(), 2);
    use TransactionResolution::{Commit, Rollback};
    use TransactionSource::SourceClient as Cl;
    assert_eq!(end_tx(&mut c, &a, Commit, Cl).await, 20000);
    assert_eq!(end_tx(&mut c, &a, Commit, Cl).await, 20000, "repeat is OK");
    assert_eq!(end_tx(&mut c, &b, Rollback, Cl).await, 20000);
    assert_eq!(
        end_tx(&mut c, &a, Rollback, Cl).await,
        Code::PreconditionFailed as i32
    );
    assert_eq!(
        end_tx(&mut c, &b, Commit, Cl).await,
        Code::PreconditionFailed as i32
    );
    let mut forged = a.clone();
    forged.message_id = "other".into();
    assert_eq!(
        end_tx(&mut c, &forged, Commit, Cl).await,
        Code::InvalidTransactionId as i32
    );
    let got = drain(&cons, Duration::from_millis(1_200)).await;
    let ids: Vec<&str> = got.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(ids, vec!["commit-me"]);
    assert_eq!(h.broker().txns().open_total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_transaction_survives_restart() {
    let mut h = H::start(|_| {}).await;
    let mut c = h.client().await;
    let a = send(&mut c, msg("tx", "t-a", MessageType::Transaction, None)).await;
    let b = send(&mut c, msg("tx", "t-b", MessageType::Transaction, None)).await;
    assert_eq!(
        end_tx(
            &mut c,
            &b,
            TransactionResolution::Rollback,
            TransactionSource::SourceClient
        )
        .await,
        20000
    );
    drop(c);
    h.stop().await;
    h.start_again().await;
    assert_eq!(
        h.broker().txns().open_total(),
        1,
        "a is still open, b is not"
    );
    let mut c = h.client().await;
    let cons = h.consumer("g", "tx").await;
    assert!(drain(&cons, Duration::from_millis(500)).await.is_empty());
    assert_eq!(
        end_tx(
            &mut c,
            &a,
            TransactionResolution::Commit,
            TransactionSource::SourceClient
        )
        .await,
        20000
    );
    let got = drain(&cons, Duration::from_millis(1_000)).await;
    let ids: Vec<&str> = got.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(ids, vec!["t-a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_back_asks_the_producer_then_applies_the_default() {
    let h = H::start(|c| {
        c.transaction.check_delay_ms = 300;
        c.transaction.check_interval_ms = 300;
        c.transaction.max_checks = 2;
        c.transaction.tick_ms = 50;
    })
    .await;
    let mut c = h.client().await;
    let cons = h.consumer("g", "tx").await;
    // A producer's Telemetry stream, publishing to "tx".
    let (tx, rx) = tokio::sync::mpsc::channel::<TelemetryCommand>(8);
    tx.send(TelemetryCommand {
        status: None,
        command: Some(Command::Settings(Settings {
            client_type: Some(ClientType::Producer as i32),
            pub_sub: Some(PubSub::Publishing(Publishing {
                topics: vec![Resource {
                    name: "tx".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut inbound = c
        .telemetry(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = inbound.message().await.unwrap().unwrap();
    assert!(matches!(first.command, Some(Command::Settings(_))));

    let answered = send(&mut c, msg("tx", "checked", MessageType::Transaction, None)).await;
    assert_eq!(code(&answered), 20000);
    // The broker asks about it; the producer answers COMMIT as a checker would.
    let cmd = tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .expect("a check-back within 5 s")
        .unwrap()
        .unwrap();
    let Some(Command::RecoverOrphanedTransactionCommand(r)) = cmd.command else {
        panic!("expected a recover command, got {cmd:?}");
    };
    let m = r.message.unwrap();
    assert_eq!(m.topic.unwrap().name, "tx");
    assert_eq!(m.system_properties.unwrap().message_id, "checked");
    assert_eq!(r.transaction_id, answered.transaction_id);
    assert_eq!(
        end_tx(
            &mut c,
            &answered,
            TransactionResolution::Commit,
            TransactionSource::SourceServerCheck
        )
        .await,
        20000
    );
    // Unanswered: checked twice, then rolled back by the default outcome.
    drop(tx);
    let ignored = send(&mut c, msg("tx", "ignored", MessageType::Transaction, None)).await;
    assert_eq!(code(&ignored), 20000);
    let got = drain(&cons, Duration::from_millis(2_500)).await;
    let ids: Vec<&str> = got.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(ids, vec!["checked"]);
    assert_eq!(
        h.broker().txns().open_total(),
        0,
        "the ignored one was rolled back"
    );
    let n = |i: usize, j: usize| {
        h.broker().txns().counters.outcomes[i][j].load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(n(0, 1), 1, "one commit answering a check");
    assert_eq!(n(1, 2), 1, "one rollback by timeout");
    assert!(
        h.broker()
            .txns()
            .counters
            .checks_sent
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert_eq!(
        end_tx(
            &mut c,
            &ignored,
            TransactionResolution::Commit,
            TransactionSource::SourceClient
        )
        .await,
        Code::PreconditionFailed as i32,
        "a commit after the broker rolled it back is refused"
    );
}
