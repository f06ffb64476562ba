//! Consumer groups end to end: in-process namesrv + broker on 127.0.0.1:0,
//! the SDK's Producer and SimpleConsumer.
//!
//! A broker with an in-process name server: it lives in `sofamq-cli`, the crate that
//! depends on both, so that `sofamq-broker` does not depend on `sofamq-namesrv`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sofamq_broker::topics::TopicType;
use sofamq_broker::{Broker, BrokerConfig};
use sofamq_client::{
    ConsumeResult, ConsumerConfig, Message, Producer, ProducerConfig, PushConfig, PushConsumer,
    ReceivedMessage, SimpleConsumer,
};
use tokio::net::TcpListener;
use tokio::sync::watch;

struct Node {
    broker: Broker,
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
    let mut cfg = BrokerConfig {
        data_dir: PathBuf::from(data),
        listen: l.local_addr().unwrap(),
        namesrv: vec![ns.to_string()],
        heartbeat_interval_ms: 200,
        ..Default::default()
    };
    cfg.consume.poll_interval_ms = 20;
    cfg.limits.shutdown_grace_ms = 200;
    tweak(&mut cfg);
    let broker = sofamq_broker::server::open(cfg).await.unwrap();
    for (t, ty) in [
        ("t", TopicType::Normal),
        ("tags", TopicType::Normal),
        ("fifo", TopicType::Fifo),
    ] {
        broker.create_topic(t, 4, ty).await.unwrap();
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
    Node { broker, stop, task }
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

    /// Stops the broker (its log closes) and opens it again on the same dir.
    async fn restart(&mut self) {
        let n = self.node.take().unwrap();
        let _ = n.stop.send(true);
        n.task.await.unwrap();
        drop(n.broker);
        // Let in-flight handlers drop their broker clones.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.node = Some(start_broker(&self.dir.path().join("b"), &self.ns, self.tweak).await);
    }

    async fn producer(&self) -> Producer {
        Producer::start(ProducerConfig::new([self.ns.clone()]))
            .await
            .unwrap()
    }

    async fn consumer(&self, group: &str, topic: &str, filter: &str) -> SimpleConsumer {
        let cfg = ConsumerConfig::new([self.ns.clone()], group)
            .with_long_polling_timeout(Duration::from_millis(300));
        SimpleConsumer::start(cfg, vec![(topic.to_string(), filter.to_string())])
            .await
            .unwrap()
    }
}

async fn send_n(p: &Producer, topic: &str, n: usize) -> Vec<String> {
    let hs: Vec<_> = (0..n)
        .map(|i| p.spawn_send(Message::builder(topic, format!("m-{i}")).build()))
        .collect();
    let mut ids = Vec::new();
    for h in hs {
        ids.push(h.await.unwrap().unwrap().message_id);
    }
    ids
}

fn s(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_consumers_receive_10000_messages_exactly_once() {
    let h = H::start(|_| {}).await;
    let p = h.producer().await;
    let sent: HashSet<String> = send_n(&p, "t", 10_000).await.into_iter().collect();
    assert_eq!(sent.len(), 10_000);
    let got: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = h.consumer("g4", "t", "*").await;
        let got = got.clone();
        tasks.push(tokio::spawn(async move {
            let mut empty = 0;
            while empty < 3 {
                let msgs = c.receive(32, Duration::from_secs(30)).await.unwrap();
                if msgs.is_empty() {
                    empty += 1;
                    continue;
                }
                empty = 0;
                for m in &msgs {
                    assert_eq!(m.delivery_attempt, 1);
                    c.ack(m).await.unwrap();
                    *got.lock().unwrap().entry(m.message_id.clone()).or_default() += 1;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 10_000, "every message received");
    assert!(got.values().all(|c| *c == 1), "no message twice");
    assert!(got.keys().all(|k| sent.contains(k)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_message_is_redelivered_to_another_consumer() {
    let h = H::start(|_| {}).await;
    let p = h.producer().await;
    let ids = send_n(&p, "t", 1).await;
    let a = h.consumer("gr", "t", "*").await;
    let b = h.consumer("gr", "t", "*").await;
    let first = a.receive(8, Duration::from_millis(800)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].message_id, ids[0]);
    // In flight to A: B sees nothing meanwhile.
    assert!(
        b.receive(8, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    // A "dies" without acking; after the invisibility B gets it, attempt 2.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut again = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while again.is_empty() && Instant::now() < deadline {
        again = b.receive(8, Duration::from_secs(30)).await.unwrap();
    }
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message_id, ids[0]);
    assert_eq!(again[0].delivery_attempt, 2);
    // A's handle is stale now.
    let err = a.ack(&first[0]).await.unwrap_err();
    assert_eq!(err.code, Some(40013), "{err}");
    b.ack(&again[0]).await.unwrap();
    // Acked: never again, and acking twice is rejected.
    assert_eq!(b.ack(&again[0]).await.unwrap_err().code, Some(40013));
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        a.receive(8, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_with_backoff_redelivers_after_the_backoff() {
    let h = H::start(|_| {}).await;
    let p = h.producer().await;
    send_n(&p, "t", 1).await;
    let c = h.consumer("gn", "t", "*").await;
    let mut m = c
        .receive(1, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0);
    let old = m.clone();
    let nacked = Instant::now();
    c.change_invisible_duration(&mut m, Duration::from_millis(1500))
        .await
        .unwrap();
    assert_ne!(m.receipt_handle, old.receipt_handle);
    assert_eq!(c.ack(&old).await.unwrap_err().code, Some(40013));
    let mut again = Vec::new();
    while again.is_empty() {
        again = c.receive(1, Duration::from_secs(30)).await.unwrap();
        assert!(nacked.elapsed() < Duration::from_secs(5));
    }
    assert!(
        nacked.elapsed() >= Duration::from_millis(1400),
        "redelivered before the backoff"
    );
    assert_eq!(again[0].message_id, m.message_id);
    assert_eq!(again[0].delivery_attempt, 2);
    c.ack(&again[0]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_moves_to_dlq_after_max_attempts_and_resend_brings_it_back() {
    let h = H::start(|c| c.consume.max_attempts = 3).await;
    let p = h.producer().await;
    let ids = send_n(&p, "t", 1).await;
    let c = h.consumer("gd", "t", "*").await;
    let mut attempts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        for m in c.receive(4, Duration::from_millis(200)).await.unwrap() {
            attempts.push(m.delivery_attempt);
        }
    }
    assert_eq!(
        attempts,
        vec![1, 2, 3],
        "delivered max_attempts times, then no more"
    );
    let dlq = h
        .broker()
        .store()
        .read_queue("%DLQ%gd", 0, 0, 10, 1 << 20)
        .unwrap();
    assert_eq!(dlq.len(), 1);
    assert!(
        dlq[0]
            .properties
            .iter()
            .any(|(k, v)| k == "__MSGID" && *v == ids[0])
    );
    // Resend: back to the topic, the group gets it again (a new message).
    assert_eq!(
        h.broker()
            .resend_dead_letters("gd", Some("t"), 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        h.broker()
            .resend_dead_letters("gd", None, 100)
            .await
            .unwrap(),
        0
    );
    let mut back = Vec::new();
    while back.is_empty() {
        back = c.receive(4, Duration::from_secs(30)).await.unwrap();
    }
    assert_eq!(back[0].message_id, ids[0]);
    assert_eq!(back[0].delivery_attempt, 1);
    c.ack(&back[0]).await.unwrap();
}

/// Dead letters resent by choice go back once: a second choice, the in-order resend and a
/// restart (state replayed from the log) all skip them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chosen_dead_letters_are_resent_once_whichever_way() {
    let mut h = H::start(|c| c.consume.max_attempts = 1).await;
    let p = h.producer().await;
    let ids: HashSet<String> = send_n(&p, "t", 4).await.into_iter().collect();
    let c = h.consumer("gc", "t", "*").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = h.broker().store().queue_offsets("%DLQ%gc", 0).1;
        if stored == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} dead letters after 30 s"
        );
        let _ = c.receive(4, Duration::from_millis(200)).await.unwrap();
    }
    let b = h.broker();
    let (n, skipped) = b
        .resend_chosen_dead_letters("gc", &[2, 0, 2, 9])
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(skipped, vec![(9, "not stored")]);
    let (n, skipped) = b.resend_chosen_dead_letters("gc", &[0]).await.unwrap();
    assert_eq!((n, skipped), (0, vec![(0, "already resent")]));
    assert_eq!(b.dead_letter_progress("gc").unwrap(), (0, vec![0, 2], 4));
    assert!(
        b.resend_chosen_dead_letters("gc", &vec![5; 1025])
            .await
            .is_err(),
        "more than 1,024 offsets in one call"
    );
    h.restart().await;
    let b = h.broker();
    assert_eq!(
        b.dead_letter_progress("gc").unwrap(),
        (0, vec![0, 2], 4),
        "replayed from the log"
    );
    // In order now: only the two not chosen.
    assert_eq!(b.resend_dead_letters("gc", None, 100).await.unwrap(), 2);
    assert_eq!(b.dead_letter_progress("gc").unwrap(), (4, vec![], 4));
    let (n, skipped) = b.resend_chosen_dead_letters("gc", &[1]).await.unwrap();
    assert_eq!((n, skipped), (0, vec![(1, "already resent")]));
    // Each of the four came back exactly once (delivery attempt 1 of its new copy).
    let c = h.consumer("gc", "t", "*").await;
    let mut back = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while back.len() < 4 && Instant::now() < deadline {
        for m in c.receive(4, Duration::from_secs(2)).await.unwrap() {
            c.ack(&m).await.unwrap();
            back.push(m);
        }
    }
    let got: HashSet<String> = back.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(back.len(), 4, "each dead letter back once");
    assert_eq!(got, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_filters_deliver_only_matching_messages() {
    let h = H::start(|_| {}).await;
    let p = h.producer().await;
    for i in 0..30 {
        let tag = ["a", "b", "c"][i % 3];
        p.send(
            Message::builder("tags", format!("{tag}-{i}"))
                .tag(tag)
                .build(),
        )
        .await
        .unwrap();
    }
    async fn drain(c: &SimpleConsumer) -> Vec<ReceivedMessage> {
        let mut all = Vec::new();
        loop {
            let got = c.receive(32, Duration::from_secs(30)).await.unwrap();
            if got.is_empty() {
                return all;
            }
            for m in &got {
                c.ack(m).await.unwrap();
            }
            all.extend(got);
        }
    }
    let ab = drain(&h.consumer("g-ab", "tags", "a || b").await).await;
    assert_eq!(ab.len(), 20);
    assert!(
        ab.iter()
            .all(|m| matches!(m.tag.as_deref(), Some("a" | "b")))
    );
    let all = drain(&h.consumer("g-all", "tags", "*").await).await;
    assert_eq!(all.len(), 30);
    let c = drain(&h.consumer("g-c", "tags", "c").await).await;
    assert!(c.iter().all(|m| m.tag.as_deref() == Some("c")) && c.len() == 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_groups_stay_in_order_under_retries() {
    let h = H::start(|_| {}).await;
    let p = h.producer().await;
    let groups = ["o1", "o2", "o3"];
    for i in 0..20 {
        for g in groups {
            p.send(
                Message::builder("fifo", format!("{g}:{i}"))
                    .message_group(g)
                    .build(),
            )
            .await
            .unwrap();
        }
    }
    let c = h.consumer("gf", "fifo", "*").await;
    let mut acked: HashMap<String, Vec<u32>> = HashMap::new();
    let mut failed_once: HashSet<String> = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.values().map(Vec::len).sum::<usize>() < 60 {
        assert!(Instant::now() < deadline, "timed out: {acked:?}");
        let got = c.receive(16, Duration::from_secs(30)).await.unwrap();
        let mut per_group = HashSet::new();
        for mut m in got {
            let body = s(&m.body);
            let (g, i) = body.split_once(':').unwrap();
            // At most one message of a group is in flight at a time.
            assert!(per_group.insert(g.to_string()), "two of {g} in one batch");
            let i: u32 = i.parse().unwrap();
            // Every third message fails its first delivery.
            if i.is_multiple_of(3) && failed_once.insert(body.clone()) {
                c.change_invisible_duration(&mut m, Duration::from_millis(100))
                    .await
                    .unwrap();
                continue;
            }
            c.ack(&m).await.unwrap();
            acked.entry(g.to_string()).or_default().push(i);
        }
    }
    for g in groups {
        assert_eq!(acked[g], (0..20).collect::<Vec<_>>(), "order of {g}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_acked_progress_and_redelivers_unacked() {
    let mut h = H::start(|_| {}).await;
    let p = h.producer().await;
    let ids: HashSet<String> = send_n(&p, "t", 300).await.into_iter().collect();
    let c = h.consumer("gs", "t", "*").await;
    let mut acked = HashSet::new();
    while acked.len() < 150 {
        for m in c.receive(16, Duration::from_secs(30)).await.unwrap() {
            c.ack(&m).await.unwrap();
            assert!(acked.insert(m.message_id.clone()));
        }
    }
    // Some in flight, never acked, when the broker goes down.
    let unacked: HashSet<String> = c
        .receive(20, Duration::from_secs(1))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    assert!(!unacked.is_empty());
    drop(c);
    h.restart().await;
    let c = h.consumer("gs", "t", "*").await;
    let mut after = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.len() + after.len() < 300 && Instant::now() < deadline {
        let got = match c.receive(32, Duration::from_secs(30)).await {
            Ok(g) => g,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        for m in got {
            assert!(
                !acked.contains(&m.message_id),
                "acked message redelivered after restart"
            );
            assert!(
                after.insert(m.message_id.clone()),
                "duplicate after restart"
            );
            if unacked.contains(&m.message_id) {
                assert!(m.delivery_attempt >= 2);
            }
            c.ack(&m).await.unwrap();
        }
    }
    let all: HashSet<String> = acked.union(&after).cloned().collect();
    assert_eq!(all, ids, "no message skipped");
    assert!(unacked.is_subset(&after));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_consumer_acks_successes_and_retries_failures() {
    let h = H::start(|_| {}).await;
    let p = h.producer().await;
    let ids: HashSet<String> = send_n(&p, "t", 50).await.into_iter().collect();
    let seen: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let s2 = seen.clone();
    let push = PushConfig {
        concurrency: 2,
        backoff_initial: Duration::from_millis(200),
        ..Default::default()
    };
    let cfg = ConsumerConfig::new([h.ns.clone()], "gp")
        .with_long_polling_timeout(Duration::from_millis(300));
    let pc = PushConsumer::start(
        cfg,
        vec![("t".into(), "*".into())],
        push,
        Arc::new(move |m: &ReceivedMessage| {
            let mut s = s2.lock().unwrap();
            let v = s.entry(m.message_id.clone()).or_default();
            v.push(m.delivery_attempt);
            // The first delivery of each message fails.
            if v.len() == 1 {
                ConsumeResult::Failure
            } else {
                ConsumeResult::Success
            }
        }),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = seen
            .lock()
            .unwrap()
            .values()
            .filter(|v| v.len() >= 2)
            .count();
        if done == 50 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    pc.shutdown().await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), ids);
    for v in seen.values() {
        assert_eq!(v, &vec![1, 2], "nacked once, then acked, never again");
    }
}

fn group_lag(b: &Broker, group: &str) -> u64 {
    b.group_states(Some(group))
        .first()
        .map(|g| g.lag)
        .unwrap_or(0)
}

/// The admin ResetOffset (console "reset to earliest / latest / time"): goes through
/// the log, so it survives a restart, and the reset messages are delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_offset_to_earliest_latest_and_time_goes_through_the_log() {
    let mut h = H::start(|_| {}).await;
    let p = h.producer().await;
    send_n(&p, "t", 20).await;
    let c = h.consumer("gr", "t", "*").await;
    let mut acked = 0;
    while acked < 20 {
        let msgs = c.receive(32, Duration::from_secs(30)).await.unwrap();
        for m in &msgs {
            c.ack(m).await.unwrap();
        }
        acked += msgs.len();
    }
    assert_eq!(group_lag(h.broker(), "gr"), 0);
    // The consumer that just received is listed as online.
    let online = &h.broker().group_states(Some("gr"))[0].consumers;
    assert_eq!(online.len(), 1, "{online:?}");
    assert!(online[0].last_seen_ms_ago < 60_000);
    let mid = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(20)).await;
    send_n(&p, "t", 5).await;
    assert_eq!(group_lag(h.broker(), "gr"), 5);

    // Earliest: all 25 are unconsumed again, and stay so across a restart.
    let qs = h
        .broker()
        .reset_group_offsets("gr", "t", 1, 0)
        .await
        .unwrap();
    assert_eq!(qs.len(), 4);
    assert!(qs.iter().all(|&(_, o)| o == 0));
    assert_eq!(group_lag(h.broker(), "gr"), 25);
    h.restart().await;
    assert_eq!(group_lag(h.broker(), "gr"), 25, "the reset was in the log");

    // Time: only the 5 sent after `mid` remain, and they are delivered again.
    h.broker()
        .reset_group_offsets("gr", "t", 3, mid)
        .await
        .unwrap();
    assert_eq!(group_lag(h.broker(), "gr"), 5);
    let c = h.consumer("gr", "t", "*").await;
    let mut again = 0;
    for _ in 0..20 {
        let msgs = c.receive(32, Duration::from_secs(30)).await.unwrap();
        again += msgs.len();
        if again >= 5 {
            break;
        }
    }
    assert_eq!(again, 5);

    // Latest: nothing left; an unknown mode is refused.
    h.broker()
        .reset_group_offsets("gr", "t", 2, 0)
        .await
        .unwrap();
    assert_eq!(group_lag(h.broker(), "gr"), 0);
    assert!(
        h.broker()
            .reset_group_offsets("gr", "t", 9, 0)
            .await
            .is_err()
    );
}
