//! Synchronous replication through real `sofamq` processes: kill -9 of the master loses no
//! acked message, a dead slave blocks acks, promotion truncates the old master's tail, and
//! retried sends are stored once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sofamq_client::{Code, Message, Producer, ProducerConfig};
use sofamq_proto::admin::broker_admin_client::BrokerAdminClient;
use sofamq_proto::admin::{ReadQueueRequest, ReplicationStatusRequest};
use sofamq_proto::v2::messaging_service_client::MessagingServiceClient;
use sofamq_proto::v2::{self as v2, SendMessageRequest};
use sofamq_testkit::Cluster;
use sofamq_testkit::repl::ReplBroker;

const GROUP: &str = "broker-a";

fn cli(args: &[&str]) -> String {
    let out = std::process::Command::new(sofamq_testkit::sofamq_bin())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sofamq {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn create_topic(broker: &ReplBroker, topic: &str, queues: u32) {
    cli(&[
        "topic",
        "create",
        topic,
        "--queues",
        &queues.to_string(),
        "--broker-addr",
        &broker.grpc,
    ]);
}

async fn status(addr: &str) -> sofamq_proto::admin::ReplicationStatusResponse {
    let mut c = BrokerAdminClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    c.replication_status(ReplicationStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn wait_in_sync(master: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(mut c) = BrokerAdminClient::connect(format!("http://{master}")).await
            && let Ok(r) = c.replication_status(ReplicationStatusRequest {}).await
            && r.into_inner().in_sync_slaves >= 1
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "slave not in sync within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every record of the log in `store_dir` with a message id: (topic, id, body, log offset).
fn log_messages(store_dir: &std::path::Path) -> Vec<(String, String, Vec<u8>, u64)> {
    sofamq_testkit::logs::messages(store_dir).unwrap()
}

/// The whole durable log of a store as bytes.
fn log_bytes(store_dir: &std::path::Path) -> Vec<u8> {
    sofamq_testkit::logs::log_bytes(store_dir).unwrap()
}

fn raw_message(topic: &str, id: &str, body: &[u8]) -> v2::Message {
    v2::Message {
        topic: Some(v2::Resource {
            name: topic.into(),
            ..Default::default()
        }),
        system_properties: Some(v2::SystemProperties {
            message_id: id.into(),
            message_type: v2::MessageType::Normal as i32,
            born_host: "test".into(),
            ..Default::default()
        }),
        body: body.to_vec().into(),
        ..Default::default()
    }
}

async fn send_raw(addr: &str, msgs: Vec<v2::Message>) -> v2::SendMessageResponse {
    let mut c = MessagingServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    c.send_message(SendMessageRequest { messages: msgs })
        .await
        .unwrap()
        .into_inner()
}

/// [`send_raw`], and whether the answer carried the not-held header.
async fn send_raw_held(addr: &str, msgs: Vec<v2::Message>) -> (v2::Status, bool) {
    let mut c = MessagingServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let resp = c
        .send_message(SendMessageRequest { messages: msgs })
        .await
        .unwrap();
    let not_held = resp
        .metadata()
        .get(sofamq_proto::codes::NOT_HELD_HEADER)
        .is_some();
    (resp.into_inner().status.unwrap(), not_held)
}

fn start_pair(c: &Cluster, master_extra: &[&str]) -> (ReplBroker, ReplBroker) {
    start_pair_with(c, master_extra, &[])
}

fn start_pair_with(
    c: &Cluster,
    master_extra: &[&str],
    slave_extra: &[&str],
) -> (ReplBroker, ReplBroker) {
    let dir = c.dir.path();
    let mut m = ReplBroker::new(dir, &c.namesrv.addr, GROUP, "a0").unwrap();
    let mut s = ReplBroker::new(dir, &c.namesrv.addr, GROUP, "a1").unwrap();
    m.start(GROUP, None, master_extra).unwrap();
    let ma = m.repl.clone();
    s.start(GROUP, Some(&ma), slave_extra).unwrap();
    (m, s)
}

/// (message id, body) of every acked send.
type Acked = Vec<(String, Vec<u8>)>;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// (a) The producer sends continuously; the master is kill -9'ed at random points, 20 times,
/// and restarted. Every acked message is in the slave's log byte for byte, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_master_rounds_lose_no_acked_message() {
    let c = Cluster::start_namesrv().unwrap();
    let master_flags = ["--ack-timeout-ms", "2000"];
    let (mut m, mut s) = start_pair(&c, &master_flags);
    create_topic(&m, "orders", 4);
    wait_in_sync(&m.grpc, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(600)).await; // namesrv learns the topic

    let cfg = ProducerConfig::new([c.namesrv.addr.clone()])
        .with_max_attempts(4)
        .with_request_timeout(Duration::from_secs(3))
        .with_retry_backoff(Duration::from_millis(50), Duration::from_millis(400), 2.0);
    let producer = Producer::start(cfg).await.unwrap();
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let p = producer.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let body = format!("t{t}-m{i}-{}", "x".repeat((i % 50) as usize)).into_bytes();
                if let Ok(r) = p.send(Message::new("orders", body.clone())).await {
                    acked.lock().unwrap().push((r.message_id, body));
                }
            }
        }));
    }

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let rounds = 20;
    for round in 0..rounds {
        // Let some sends be acked by this master incarnation, then kill it at a random point.
        let before = acked.lock().unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.lock().unwrap().len() < before + 5 {
            assert!(
                Instant::now() < deadline,
                "no progress in round {round}; master log:\n{}",
                m.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.next() % 150)).await;
        m.kill9();
        tokio::time::sleep(Duration::from_millis(rng.next() % 100)).await;
        m.start(GROUP, None, &master_flags).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    producer.shutdown().await;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= rounds * 5, "only {} acked", acked.len());

    s.stop();
    m.stop();
    let on_slave = log_messages(&s.store_dir());
    let mut by_id: HashMap<&str, (&[u8], usize)> = HashMap::new();
    for (_, id, body, _) in &on_slave {
        let e = by_id.entry(id.as_str()).or_insert((body.as_slice(), 0));
        e.1 += 1;
    }
    for (id, body) in &acked {
        match by_id.get(id.as_str()) {
            Some((b, n)) => {
                assert_eq!(
                    *b,
                    body.as_slice(),
                    "acked message {id} differs on the slave"
                );
                assert_eq!(*n, 1, "acked message {id} stored {n} times");
            }
            None => panic!("acked message {id} missing from the slave's log"),
        }
    }
    // The slave's log is a prefix of (or equal to) the master's, byte for byte.
    let sb = log_bytes(&s.store_dir());
    let mb = log_bytes(&m.store_dir());
    assert!(
        mb.len() >= sb.len() && mb[..sb.len()] == sb[..],
        "slave log is not a prefix of the master's"
    );
    eprintln!(
        "{} acked messages over {rounds} kill rounds, all on the slave",
        acked.len()
    );
}

/// (b) With the slave dead nothing is acked (HA_NOT_AVAILABLE or SLAVE_PERSISTENCE_TIMEOUT)
/// and consumers see nothing new; once it returns it catches up and sends succeed again.
/// `flush = "async"` acks a send once it is written: on the master, and on the slave as
/// soon as it received the bytes, not after the slave's own interval fdatasync (a minute
/// here, far beyond the ack timeout). Acks carry the received offset from replication
/// protocol 3 on, which the brokers here are told to speak. The acked messages are in the slave's log when it is
/// killed right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_flush_acks_what_the_slave_received() {
    let c = Cluster::start_namesrv().unwrap();
    let conf = c.dir.path().join("async.toml");
    std::fs::write(
        &conf,
        "flush = \"async\"\nasync_flush_interval_ms = 60000\n[replication]\nprotocol_max = 3\n",
    )
    .unwrap();
    let conf = conf.display().to_string();
    let args = ["--config", conf.as_str(), "--ack-timeout-ms", "3000"];
    let (m, mut s) = start_pair_with(&c, &args, &args);
    create_topic(&m, "t", 1);
    wait_in_sync(&m.grpc, Duration::from_secs(20)).await;
    for i in 0..20 {
        let id = format!("id-async-{i}");
        let r = send_raw(&m.grpc, vec![raw_message("t", &id, b"async")]).await;
        let st = r.status.unwrap();
        assert_eq!(st.code, Code::Ok as i32, "send {i}: {st:?}");
    }
    s.kill9();
    let held: Vec<String> = log_messages(&s.store_dir())
        .into_iter()
        .map(|(_, id, _, _)| id)
        .collect();
    for i in 0..20 {
        let id = format!("id-async-{i}");
        assert!(held.contains(&id), "{id} acked but not in the slave's log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_slave_blocks_acks_until_it_catches_up() {
    let c = Cluster::start_namesrv().unwrap();
    let (m, mut s) = start_pair(&c, &["--ack-timeout-ms", "1000"]);
    create_topic(&m, "t", 1);
    wait_in_sync(&m.grpc, Duration::from_secs(20)).await;
    let r = send_raw(&m.grpc, vec![raw_message("t", "id-before", b"before")]).await;
    assert_eq!(r.status.unwrap().code, Code::Ok as i32);

    s.kill9();
    for i in 0..5 {
        let r = send_raw(
            &m.grpc,
            vec![raw_message("t", &format!("id-down-{i}"), b"down")],
        )
        .await;
        let code = r.status.unwrap().code;
        assert!(
            code == Code::HaNotAvailable as i32 || code == Code::SlavePersistenceTimeout as i32,
            "send {i} with the slave dead answered {code}"
        );
    }
    // Consumers see only what was replicated.
    let mut admin = BrokerAdminClient::connect(format!("http://{}", m.grpc))
        .await
        .unwrap();
    let read = |admin: &mut BrokerAdminClient<_>| {
        let mut a = admin.clone();
        let _ = admin;
        async move {
            a.read_queue(ReadQueueRequest {
                topic: "t".into(),
                queue_id: 0,
                offset: 0,
                max_count: 100,
            })
            .await
            .unwrap()
            .into_inner()
            .messages
        }
    };
    let visible = read(&mut admin).await;
    assert_eq!(visible.len(), 1, "only the replicated message is readable");
    // Once the slave is out of the in-sync set, a refusal says whether this master holds
    // the messages: ids it stored (acked, or appended and never replicated) are held, a
    // new one is not, and a request is "not held" only when none of its ids is.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&m.grpc).await.in_sync_slaves > 0 {
        assert!(Instant::now() < deadline, "the dead slave stayed in sync");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored_unreplicated = log_messages(&m.store_dir())
        .into_iter()
        .find(|(_, id, _, _)| id.starts_with("id-down-"))
        .map(|(_, id, _, _)| id);
    let mut held = vec!["id-before".to_string()];
    held.extend(stored_unreplicated);
    for id in &held {
        let (st, not_held) = send_raw_held(&m.grpc, vec![raw_message("t", id, b"again")]).await;
        assert_eq!(st.code, Code::HaNotAvailable as i32, "{id}: {st:?}");
        assert!(!not_held, "{id} is in this master's log");
    }
    let (st, not_held) = send_raw_held(&m.grpc, vec![raw_message("t", "id-new", b"n")]).await;
    assert_eq!(st.code, Code::HaNotAvailable as i32, "{st:?}");
    assert!(not_held, "id-new was never sent here");
    let both = vec![
        raw_message("t", "id-new", b"n"),
        raw_message("t", "id-before", b"b"),
    ];
    assert!(!send_raw_held(&m.grpc, both).await.1);

    let ma = m.repl.clone();
    s.start(GROUP, Some(&ma), &[]).unwrap();
    wait_in_sync(&m.grpc, Duration::from_secs(20)).await;
    let r = send_raw(&m.grpc, vec![raw_message("t", "id-after", b"after")]).await;
    assert_eq!(r.status.unwrap().code, Code::Ok as i32);
    // The slave caught up with everything in the master's log, byte for byte.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ms, ss) = (status(&m.grpc).await, status(&s.grpc).await);
        if ss.durable_offset == ms.durable_offset {
            break;
        }
        assert!(Instant::now() < deadline, "slave did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let visible = read(&mut admin).await;
    assert!(visible.iter().any(|m| m.message_id == "id-after"));
    let mut m = m;
    s.stop();
    m.stop();
    assert_eq!(log_bytes(&s.store_dir()), log_bytes(&m.store_dir()));
}

/// After its master dies, a promoted slave short of in-sync replicas refuses sends; it
/// holds what was replicated to it (its id window is rebuilt from its log on promotion), so
/// a retry of such a message gets no not-held header, while one the dead master never
/// replicated does: the group cannot hold it. A slave refusing ("not master") never says
/// not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_master_without_its_slave_tells_what_it_does_not_hold() {
    let c = Cluster::start_namesrv().unwrap();
    let (mut a, b) = start_pair(&c, &[]);
    create_topic(&a, "t", 1);
    wait_in_sync(&a.grpc, Duration::from_secs(20)).await;
    let r = send_raw(&a.grpc, vec![raw_message("t", "replicated", b"1")]).await;
    assert_eq!(r.status.unwrap().code, Code::Ok as i32);
    let (st, not_held) = send_raw_held(&b.grpc, vec![raw_message("t", "fresh", b"2")]).await;
    assert_eq!(st.code, Code::HaNotAvailable as i32, "{st:?}");
    assert!(st.message.contains("not master"), "{}", st.message);
    assert!(!not_held, "a slave said not held");

    a.kill9();
    let out = cli(&["admin", "promote", "--broker-addr", &b.grpc]);
    assert!(out.contains("promoted"), "{out}");
    let (st, not_held) = send_raw_held(&b.grpc, vec![raw_message("t", "replicated", b"1")]).await;
    assert_eq!(st.code, Code::HaNotAvailable as i32, "{st:?}");
    assert!(
        st.message.contains("required replicas in sync"),
        "{}",
        st.message
    );
    assert!(!not_held, "the promoted master holds 'replicated'");
    let (st, not_held) = send_raw_held(&b.grpc, vec![raw_message("t", "fresh", b"2")]).await;
    assert_eq!(st.code, Code::HaNotAvailable as i32, "{st:?}");
    assert!(not_held, "'fresh' was never stored in the group");
}

/// (c) The old master has a tail the slave never got when the slave is promoted; rejoining as
/// a slave it truncates that tail and converges to the new master's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoted_slave_wins_and_old_master_truncates_its_tail() {
    let c = Cluster::start_namesrv().unwrap();
    // min in-sync 1 so that the old master acks alone while the slave is away (its tail).
    let (mut a, mut b) = start_pair(&c, &["--min-insync-replicas", "1"]);
    create_topic(&a, "t", 1);
    wait_in_sync(&a.grpc, Duration::from_secs(20)).await;
    let ok = |r: v2::SendMessageResponse| assert_eq!(r.status.unwrap().code, Code::Ok as i32);
    ok(send_raw(&a.grpc, vec![raw_message("t", "m1", b"one")]).await);
    // Acked with the slave in sync: it is on the slave too.
    b.kill9();
    for i in 0..5 {
        ok(send_raw(
            &a.grpc,
            vec![raw_message("t", &format!("tail-{i}"), b"tail")],
        )
        .await);
    }
    a.kill9();
    let a_end_before = log_bytes(&a.store_dir()).len();

    // B comes back as a slave of the dead A, and is promoted.
    let a_repl = a.repl.clone();
    b.start(GROUP, Some(&a_repl), &["--min-insync-replicas", "1"])
        .unwrap();
    let out = cli(&["admin", "promote", "--broker-addr", &b.grpc]);
    assert!(out.contains("promoted"), "{out}");
    let st = status(&b.grpc).await;
    assert_eq!(st.role, "master");
    assert!(st.epoch >= 2, "new epoch {}", st.epoch);
    for i in 0..5 {
        ok(send_raw(&b.grpc, vec![raw_message("t", &format!("new-{i}"), b"new")]).await);
    }
    // A slave answers sends with a clear "not master" status.
    // A rejoins as a slave of B.
    let b_repl = b.repl.clone();
    a.start(GROUP, Some(&b_repl), &[]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (bs, as_) = (status(&b.grpc).await, status(&a.grpc).await);
        if as_.durable_offset == bs.durable_offset && bs.in_sync_slaves == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "old master did not converge");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = send_raw(&a.grpc, vec![raw_message("t", "to-slave", b"x")]).await;
    let st = r.status.unwrap();
    assert_eq!(st.code, Code::HaNotAvailable as i32);
    assert!(st.message.contains("not master"), "{}", st.message);
    ok(send_raw(&b.grpc, vec![raw_message("t", "after-rejoin", b"y")]).await);

    a.stop();
    b.stop();
    let (ab, bb) = (log_bytes(&a.store_dir()), log_bytes(&b.store_dir()));
    assert_eq!(ab, bb, "old master's log differs from the new master's");
    let ids: Vec<String> = log_messages(&a.store_dir())
        .into_iter()
        .map(|m| m.1)
        .collect();
    assert!(ids.contains(&"m1".to_string()));
    assert!(
        ids.iter().all(|i| !i.starts_with("tail-")),
        "un-replicated tail survived: {ids:?}"
    );
    assert!(ids.contains(&"new-4".to_string()) && ids.contains(&"after-rejoin".to_string()));
    assert!(ab.len() != a_end_before);
    let a_log = std::fs::read_to_string(c.dir.path().join("a0-2.log")).unwrap_or_default();
    assert!(
        a_log.contains("truncating"),
        "old master did not log a truncation"
    );
}

/// A slave may durably hold bytes its master never made durable: the master streams what it
/// has WRITTEN, before its own fsync. When the master's machine then crashes, the master comes
/// back with a shorter log in the same epoch than its slave. Manual mode: the restarted master
/// begins a new epoch at its recovered end, and the slave must cut its longer tail of the old
/// epoch back to that end (the epoch rule) before it follows. The lost tail is faked here by
/// cutting the stopped master's log (`Store::truncate`): the effect of losing unsynced writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slave_ahead_of_a_restarted_master_in_the_same_epoch_is_cut_back() {
    let c = Cluster::start_namesrv().unwrap();
    let (mut a, mut b) = start_pair(&c, &[]);
    create_topic(&a, "t", 1);
    wait_in_sync(&a.grpc, Duration::from_secs(20)).await;
    let ok = |r: v2::SendMessageResponse| assert_eq!(r.status.unwrap().code, Code::Ok as i32);
    for i in 0..6 {
        ok(send_raw(&a.grpc, vec![raw_message("t", &format!("m{i}"), b"old")]).await);
    }
    a.stop();
    b.stop();
    assert_eq!(log_bytes(&a.store_dir()), log_bytes(&b.store_dir()));
    let cut = log_messages(&a.store_dir())
        .into_iter()
        .find(|m| m.1 == "m3")
        .expect("m3 in the master's log")
        .3;
    let (epoch_before, b_end) = {
        let bs = sofamq_store::Store::open(sofamq_store::StoreConfig::new(b.store_dir())).unwrap();
        (bs.current_epoch(), bs.log_end_offset())
    };
    {
        let s = sofamq_store::Store::open(sofamq_store::StoreConfig::new(a.store_dir())).unwrap();
        assert_eq!(s.current_epoch(), epoch_before);
        s.truncate(cut).unwrap();
    }
    assert!(
        b_end > cut,
        "the slave must be ahead of the master in the same epoch"
    );

    // The master restarts (new epoch at `cut`), then the slave follows it.
    a.start(GROUP, None, &[]).unwrap();
    let a_repl = a.repl.clone();
    b.start(GROUP, Some(&a_repl), &[]).unwrap();
    wait_in_sync(&a.grpc, Duration::from_secs(20)).await;
    let st = status(&a.grpc).await;
    assert!(
        st.epoch > epoch_before,
        "restarted master's epoch {}",
        st.epoch
    );
    for i in 0..3 {
        ok(send_raw(&a.grpc, vec![raw_message("t", &format!("n{i}"), b"new")]).await);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (sa, sb) = (status(&a.grpc).await, status(&b.grpc).await);
        if sa.durable_offset == sb.durable_offset {
            break;
        }
        assert!(Instant::now() < deadline, "slave did not converge");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b_log = b.log();
    a.stop();
    b.stop();
    assert!(
        b_log.contains("truncating"),
        "the slave did not cut its tail: {b_log}"
    );
    let (ab, bb) = (log_bytes(&a.store_dir()), log_bytes(&b.store_dir()));
    assert_eq!(ab, bb, "slave's log differs from the restarted master's");
    let ids: Vec<String> = log_messages(&b.store_dir())
        .into_iter()
        .filter(|m| m.0 == "t")
        .map(|m| m.1)
        .collect();
    assert_eq!(ids, ["m0", "m1", "m2", "n0", "n1", "n2"], "{ids:?}");
}

/// (d) A retried send of an already-stored message id stores one copy and returns the
/// original receipt: sequential retries, duplicates inside one batch, concurrent duplicates,
/// and retries after a master restart (the window is rebuilt from the log). Runs against
/// `sofamq standalone` (master + slave).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_sends_are_stored_once() {
    let sa = sofamq_testkit::Standalone::start(&["--topic", "t:1"]).unwrap();
    let master = format!("127.0.0.1:{}", sa.port_base + 1);
    let slave = format!("127.0.0.1:{}", sa.port_base + 3);
    let first = send_raw(&master, vec![raw_message("t", "dup-1", b"body")]).await;
    assert_eq!(first.status.unwrap().code, Code::Ok as i32);
    let offset = first.entries[0].offset;
    let again = send_raw(&master, vec![raw_message("t", "dup-1", b"body")]).await;
    assert_eq!(again.status.unwrap().code, Code::Ok as i32);
    assert_eq!(
        again.entries[0].offset, offset,
        "the retry gets the original receipt"
    );
    // Same id twice in one batch, plus a new one.
    let batch = send_raw(
        &master,
        vec![
            raw_message("t", "dup-2", b"b2"),
            raw_message("t", "dup-2", b"b2"),
            raw_message("t", "dup-1", b"body"),
        ],
    )
    .await;
    assert_eq!(batch.status.unwrap().code, Code::Ok as i32);
    assert_eq!(batch.entries[0].offset, batch.entries[1].offset);
    assert_eq!(batch.entries[2].offset, offset);
    // Concurrent duplicates.
    let mut hs = Vec::new();
    for _ in 0..8 {
        let m = master.clone();
        hs.push(tokio::spawn(async move {
            send_raw(&m, vec![raw_message("t", "dup-3", b"b3")]).await
        }));
    }
    let mut offs = Vec::new();
    for h in hs {
        let r = h.await.unwrap();
        assert_eq!(r.status.unwrap().code, Code::Ok as i32);
        offs.push(r.entries[0].offset);
    }
    assert!(offs.iter().all(|o| *o == offs[0]), "{offs:?}");

    // One copy of each id, on the master and on the slave.
    for addr in [&master, &slave] {
        let mut admin = BrokerAdminClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let msgs = admin
            .read_queue(ReadQueueRequest {
                topic: "t".into(),
                queue_id: 0,
                offset: 0,
                max_count: 100,
            })
            .await
            .unwrap()
            .into_inner()
            .messages;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut n = msgs.len();
        while addr == &slave && n < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            n = admin
                .read_queue(ReadQueueRequest {
                    topic: "t".into(),
                    queue_id: 0,
                    offset: 0,
                    max_count: 100,
                })
                .await
                .unwrap()
                .into_inner()
                .messages
                .len();
        }
        let mut ids: Vec<String> = msgs.into_iter().map(|m| m.message_id).collect();
        ids.sort();
        if addr == &master {
            assert_eq!(ids, vec!["dup-1", "dup-2", "dup-3"], "on the master");
        } else {
            assert_eq!(n, 3, "on the slave");
        }
    }
}

/// A hand-written slave's opening: connects to the master's replication port at `repl`,
/// says Hello as broker 1 with an empty log offering `versions`, and returns the socket,
/// its read buffer and the master's reply.
async fn raw_hello(
    repl: &str,
    versions: (u8, u8),
) -> (
    tokio::net::TcpStream,
    bytes::BytesMut,
    sofamq_broker::repl::frame::Frame,
) {
    use sofamq_broker::repl::frame::{self, MIN_VERSION, Msg};
    let mut sock = tokio::net::TcpStream::connect(repl).await.unwrap();
    let hello = Msg::Hello {
        broker_name: GROUP.into(),
        broker_id: 1,
        log_end: 0,
        history: vec![],
        versions,
    };
    frame::write_frame(&mut sock, MIN_VERSION, 0, &hello)
        .await
        .unwrap();
    let mut buf = bytes::BytesMut::new();
    let reply = frame::read_frame(&mut sock, &mut buf, 1 << 24)
        .await
        .unwrap();
    (sock, buf, reply)
}

/// A slave-role broker rejects sends; the master drops a slave that acks for another epoch
/// or beyond its log end (a fake slave speaking the frame protocol).
/// A raw slave session against a real master: acks of another epoch, beyond the master's
/// end, of another protocol version, or (version 3) with a received offset outside what was
/// streamed end the session; a Hello with no version in common is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_drops_acks_for_other_epochs_or_beyond_its_end() {
    use sofamq_broker::repl::frame::{self, MIN_VERSION, Msg};
    #[derive(Debug, Clone, Copy)]
    enum Bad {
        Epoch,
        BeyondEnd,
        OtherVersion,
        ReceivedBeyondEnd,
    }
    let c = Cluster::start_namesrv().unwrap();
    let dir = c.dir.path();
    let mut m = ReplBroker::new(dir, &c.namesrv.addr, GROUP, "a0").unwrap();
    // The master offers version 3 (the slave side below picks per case).
    m.start(GROUP, None, &["--replication-protocol-max", "3"])
        .unwrap();
    create_topic(&m, "t", 1);
    // No common version: refused, and the reason says so.
    let (_sock, _buf, reply) = raw_hello(&m.repl, (4, 5)).await;
    match reply.msg {
        Msg::Reject { reason } => assert!(
            reason.contains("no common replication protocol version"),
            "{reason}"
        ),
        other => panic!("expected a Reject, got {other:?}"),
    }
    for bad in [
        Bad::Epoch,
        Bad::BeyondEnd,
        Bad::OtherVersion,
        Bad::ReceivedBeyondEnd,
    ] {
        let (mut sock, mut buf, reply) = raw_hello(&m.repl, (2, 3)).await;
        let epoch = reply.epoch;
        let Msg::HelloReply {
            written, version, ..
        } = reply.msg
        else {
            panic!("{reply:?}")
        };
        assert_eq!(version, 3, "both speak 3: the session must");
        frame::write_frame(&mut sock, version, epoch, &Msg::Follow { from: 0 })
            .await
            .unwrap();
        let (v, e, ack) = match bad {
            Bad::Epoch => (version, epoch + 1, (0, Some(0))),
            Bad::BeyondEnd => (version, epoch, (written + 1_000_000, None)),
            Bad::OtherVersion => (MIN_VERSION, epoch, (0, None)),
            Bad::ReceivedBeyondEnd => (version, epoch, (0, Some(written + 1_000_000))),
        };
        let ack = Msg::Ack {
            durable: ack.0,
            received: ack.1,
        };
        frame::write_frame(&mut sock, v, e, &ack).await.unwrap();
        // The master closes the connection: reads end (after any data already sent).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout(
                Duration::from_secs(5),
                frame::read_frame(&mut sock, &mut buf, 1 << 22),
            )
            .await
            {
                Ok(Ok(_)) => assert!(Instant::now() < deadline, "connection not dropped"),
                Ok(Err(_)) => break,
                Err(_) => panic!("connection not dropped ({bad:?})"),
            }
        }
        assert_eq!(status(&m.grpc).await.in_sync_slaves, 0);
    }
}

/// Manual switchover on `sofamq standalone`: promote the slave, demote the master to follow
/// it; the new master knows the topics it only ever got through replication, acks once the
/// old master is in sync as its slave, and the old master refuses sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_swaps_master_and_slave() {
    let sa = sofamq_testkit::Standalone::start(&["--no-failover", "--topic", "t:1"]).unwrap();
    let old = format!("127.0.0.1:{}", sa.port_base + 1);
    let new = format!("127.0.0.1:{}", sa.port_base + 3);
    let new_repl = format!("127.0.0.1:{}", sa.port_base + 4);
    let r = send_raw(&old, vec![raw_message("t", "before", b"1")]).await;
    assert_eq!(r.status.unwrap().code, Code::Ok as i32);
    let r = send_raw(&new, vec![raw_message("t", "to-slave", b"1")]).await;
    assert_eq!(r.status.unwrap().code, Code::HaNotAvailable as i32);

    let before = status(&new).await.epoch;
    cli(&["admin", "promote", "--broker-addr", &new]);
    cli(&[
        "admin",
        "demote",
        "--broker-addr",
        &old,
        "--master-addr",
        &new_repl,
    ]);
    let st = status(&new).await;
    assert_eq!(st.role, "master");
    assert!(st.epoch > before);
    wait_in_sync(&new, Duration::from_secs(20)).await;
    let r = send_raw(&new, vec![raw_message("t", "after", b"2")]).await;
    assert_eq!(r.status.clone().unwrap().code, Code::Ok as i32, "{r:?}");
    // Idempotency survives the switchover: the window was rebuilt from the log.
    let again = send_raw(&new, vec![raw_message("t", "before", b"1")]).await;
    assert_eq!(again.status.unwrap().code, Code::Ok as i32);
    assert_eq!(again.entries[0].offset, 0, "original receipt of 'before'");
    let r = send_raw(&old, vec![raw_message("t", "x", b"3")]).await;
    let s = r.status.unwrap();
    assert_eq!(s.code, Code::HaNotAvailable as i32);
    assert!(s.message.contains("not master"), "{}", s.message);
    let (o, n) = (status(&old).await, status(&new).await);
    assert_eq!(o.role, "slave");
    assert_eq!(o.durable_offset, n.durable_offset);
}

/// Consumer progress lives in the log, so it replicates: after a switchover the
/// new master redelivers exactly the un-acked messages and none of the acked ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_progress_survives_switchover() {
    use sofamq_client::{ConsumerConfig, SimpleConsumer};
    use std::collections::HashSet;

    let sa = sofamq_testkit::Standalone::start(&["--no-failover", "--topic", "cs:1"]).unwrap();
    let old = format!("127.0.0.1:{}", sa.port_base + 1);
    let new = format!("127.0.0.1:{}", sa.port_base + 3);
    let new_repl = format!("127.0.0.1:{}", sa.port_base + 4);
    let ids: Vec<String> = (0..10).map(|i| format!("cs-{i}")).collect();
    let msgs = ids
        .iter()
        .map(|id| raw_message("cs", id, id.as_bytes()))
        .collect();
    let r = send_raw(&old, msgs).await;
    assert_eq!(r.status.unwrap().code, Code::Ok as i32);

    let cfg = ConsumerConfig::new([sa.node.addr.clone()], "g-switch")
        .with_long_polling_timeout(Duration::from_secs(2));
    let c = SimpleConsumer::start(cfg.clone(), vec![("cs".into(), "*".into())])
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while got.len() < 10 && Instant::now() < deadline {
        got.extend(c.receive(10, Duration::from_secs(3)).await.unwrap());
    }
    assert_eq!(got.len(), 10);
    got.sort_by_key(|m| m.message_id.clone());
    let (acked, unacked) = got.split_at(6);
    c.ack_all(acked).await.unwrap();
    let acked: HashSet<String> = acked.iter().map(|m| m.message_id.clone()).collect();
    let unacked: HashSet<String> = unacked.iter().map(|m| m.message_id.clone()).collect();

    cli(&["admin", "promote", "--broker-addr", &new]);
    cli(&[
        "admin",
        "demote",
        "--broker-addr",
        &old,
        "--master-addr",
        &new_repl,
    ]);
    wait_in_sync(&new, Duration::from_secs(20)).await;

    // The un-acked ones come back (after their 3 s invisibility), the acked never.
    let c2 = SimpleConsumer::start(cfg, vec![("cs".into(), "*".into())])
        .await
        .unwrap();
    let mut again = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while again.len() < unacked.len() && Instant::now() < deadline {
        for m in c2
            .receive(10, Duration::from_secs(30))
            .await
            .unwrap_or_default()
        {
            assert!(
                !acked.contains(&m.message_id),
                "acked {} redelivered after switchover",
                m.message_id
            );
            assert!(
                m.delivery_attempt >= 2,
                "{} attempt {}",
                m.message_id,
                m.delivery_attempt
            );
            again.insert(m.message_id.clone());
        }
    }
    assert_eq!(
        again, unacked,
        "exactly the un-acked messages are redelivered"
    );
}

/// The negotiated protocol version of the master's one slave session, once there is one.
async fn slave_version(master: &str, timeout: Duration) -> u32 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(mut c) = BrokerAdminClient::connect(format!("http://{master}")).await
            && let Ok(r) = c.replication_status(ReplicationStatusRequest {}).await
            && let Some(s) = r.into_inner().slaves.iter().find(|s| s.in_sync)
        {
            return s.protocol_version;
        }
        assert!(
            Instant::now() < deadline,
            "no in-sync slave within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A rolling upgrade of one group, one broker at a time, under load: the slave is upgraded
/// first (it offers version 3, the master 2: the session speaks 2), then the master is
/// restarted on the new version (both offer 3: the session speaks 3). Every acked message
/// ends up on the slave, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_negotiates_versions_and_loses_nothing() {
    let c = Cluster::start_namesrv().unwrap();
    let dir = c.dir.path();
    let mut m = ReplBroker::new(dir, &c.namesrv.addr, GROUP, "a0").unwrap();
    let mut s = ReplBroker::new(dir, &c.namesrv.addr, GROUP, "a1").unwrap();
    let old = ["--replication-protocol-max", "2"];
    let new = ["--replication-protocol-max", "3"];
    m.start(GROUP, None, &old).unwrap();
    let ma = m.repl.clone();
    s.start(GROUP, Some(&ma), &old).unwrap();
    create_topic(&m, "up", 2);
    assert_eq!(slave_version(&m.grpc, Duration::from_secs(20)).await, 2);
    tokio::time::sleep(Duration::from_millis(600)).await; // namesrv learns the topic
    let cfg = ProducerConfig::new([c.namesrv.addr.clone()])
        .with_max_attempts(20)
        .with_request_timeout(Duration::from_secs(3))
        .with_retry_backoff(Duration::from_millis(50), Duration::from_millis(400), 2.0);
    let producer = Producer::start(cfg).await.unwrap();
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (p, acked, stop) = (producer.clone(), acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let body = format!("t{t}-m{i}").into_bytes();
                if let Ok(r) = p.send(Message::new("up", body.clone())).await {
                    acked.lock().unwrap().push((r.message_id, body));
                }
            }
        }));
    }
    let progress = |n: usize| {
        let acked = acked.clone();
        async move {
            let before = acked.lock().unwrap().len();
            let deadline = Instant::now() + Duration::from_secs(30);
            while acked.lock().unwrap().len() < before + n {
                assert!(Instant::now() < deadline, "no progress");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    progress(50).await;
    // Upgrade the slave: it offers 3, the old master only 2.
    s.stop();
    s.start(GROUP, Some(&ma), &new).unwrap();
    assert_eq!(slave_version(&m.grpc, Duration::from_secs(20)).await, 2);
    progress(50).await;
    // Upgrade the master: both offer 3 now.
    m.stop();
    m.start(GROUP, None, &new).unwrap();
    assert_eq!(slave_version(&m.grpc, Duration::from_secs(20)).await, 3);
    progress(50).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    producer.shutdown().await;
    let acked = acked.lock().unwrap().clone();
    s.stop();
    m.stop();
    let on_slave = log_messages(&s.store_dir());
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (_, id, _, _) in &on_slave {
        *count.entry(id.as_str()).or_default() += 1;
    }
    for (id, _) in &acked {
        assert_eq!(
            count.get(id.as_str()).copied(),
            Some(1),
            "acked message {id} not stored exactly once on the slave"
        );
    }
    eprintln!(
        "{} acked through the upgrade, all on the slave once",
        acked.len()
    );
}

/// The master's writer sends what it writes straight to a caught-up slave's socket; the
/// session's stream task sends the rest. A raw slave that stops reading while about 12 MB
/// are written fills its socket, so the direct path is refused (or takes a frame in part)
/// and the stream task takes over: once the slave reads again it gets whole frames, each
/// starting where the last ended, and their bytes are the master's log byte for byte. The
/// master's `/metrics` counts frames sent both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_that_stops_reading_gets_the_log_in_order_from_both_senders() {
    use sofamq_broker::repl::frame::{self, MAX_VERSION, MIN_VERSION, Msg};
    let c = Cluster::start_namesrv().unwrap();
    let dir = c.dir.path();
    let mut m = ReplBroker::new(dir, &c.namesrv.addr, GROUP, "a0").unwrap();
    let http = format!("127.0.0.1:{}", sofamq_testkit::repl::free_port().unwrap());
    // Acked on the master's own fsync: sends go on while the slave does not read.
    m.start(
        GROUP,
        None,
        &["--min-insync-replicas", "1", "--http-listen", &http],
    )
    .unwrap();
    create_topic(&m, "t", 1);
    let (mut sock, mut buf, reply) = raw_hello(&m.repl, (MIN_VERSION, MAX_VERSION)).await;
    let (epoch, version) = match reply.msg {
        Msg::HelloReply { version, .. } => (reply.epoch, version),
        other => panic!("expected a HelloReply, got {other:?}"),
    };
    frame::write_frame(&mut sock, version, epoch, &Msg::Follow { from: 0 })
        .await
        .unwrap();
    // ~12 MB of records while the slave reads nothing: more than loopback buffers hold.
    let body = vec![b'x'; 1024];
    for r in 0..96 {
        let msgs = (0..128)
            .map(|i| raw_message("t", &format!("m-{r}-{i}"), &body))
            .collect();
        let resp = send_raw(&m.grpc, msgs).await;
        assert_eq!(resp.status.unwrap().code, v2::Code::Ok as i32);
    }
    // Now read: whole frames, contiguous from 0, acking as a slave does, until no data has
    // come for a while (heartbeats go on).
    let mut got: Vec<u8> = Vec::new();
    let mut last_data = Instant::now();
    while last_data.elapsed() < Duration::from_millis(1500) {
        let f = match tokio::time::timeout(
            Duration::from_millis(300),
            frame::read_frame(&mut sock, &mut buf, 1 << 24),
        )
        .await
        {
            Err(_) => continue,
            Ok(f) => f.unwrap_or_else(|e| panic!("{e} after {} bytes\n{}", got.len(), m.log())),
        };
        match f.msg {
            Msg::Data { start, bytes } => {
                assert_eq!(start, got.len() as u64, "a frame out of order");
                got.extend_from_slice(&bytes);
                last_data = Instant::now();
            }
            Msg::Heartbeat { .. } => {}
            other => panic!("unexpected frame {other:?}"),
        }
        let ack = Msg::Ack {
            durable: got.len() as u64,
            received: (version >= 3).then_some(got.len() as u64),
        };
        frame::write_frame(&mut sock, version, epoch, &ack)
            .await
            .unwrap();
    }
    let (code, doc) = sofamq_testkit::http::get(&http, "/metrics", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(code, 200);
    let frames = |path: &str| -> f64 {
        doc.lines()
            .find(|l| {
                l.starts_with("sofamq_replication_frames_sent_total{")
                    && l.contains(&format!("path=\"{path}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no frames_sent sample for {path}:\n{doc}"))
    };
    assert!(frames("direct") > 0.0, "no frame went the direct way");
    assert!(frames("stream") > 0.0, "the stream task never took over");
    drop(sock);
    m.stop();
    let log = log_bytes(&m.store_dir());
    assert!(log.len() > 12_000_000, "only {} bytes logged", log.len());
    assert_eq!(got.len(), log.len(), "the slave got a different length");
    assert!(
        got == log,
        "the slave got other bytes than the master's log"
    );
}
