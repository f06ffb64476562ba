//! Timer (DELAY) and transactional messages through the official RocketMQ 5 Python
//! client (`rocketmq-python-client==5.1.2`, `scripts/compat/python_timer_txn.py`):
//! delivery at the due time, recall, commit, rollback and the broker's check-back
//! (RecoverOrphanedTransactionCommand on the Telemetry stream answered by the
//! client's TransactionChecker). The script checks each scenario itself and exits
//! non-zero naming what failed; this side re-checks the facts it reports and asks
//! the broker (admin Pending) that nothing is left pending.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sofamq_proto::admin::PendingRequest;
use sofamq_proto::admin::broker_admin_client::BrokerAdminClient;
use sofamq_proto::namesrv::ListBrokersRequest;
use sofamq_proto::namesrv::name_server_admin_client::NameServerAdminClient;
use sofamq_proto::v2 as pb;
use sofamq_proto::v2::messaging_service_client::MessagingServiceClient;
use sofamq_testkit::{Cluster, Standalone, compat_python, repo_root};

/// Bound on one script run (the script's own watchdog fires at 90 s).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// The broker's `transaction.check_delay_ms` / `check_interval_ms` in the check-back test.
const CHECK_DELAY_MS: u64 = 1000;
const CHECK_INTERVAL_MS: u64 = 1000;

struct Run {
    events: Vec<Value>,
    summary: Value,
}

fn tail(s: &str, n: usize) -> String {
    let skip = s.chars().count().saturating_sub(n);
    s.chars().skip(skip).collect()
}

/// Runs `python_timer_txn.py MODE ACCESS_POINT TOPIC GROUP [EXTRA..]`, bounded by
/// [`SCRIPT_TIMEOUT`] (the child is killed by its PID after that).
fn run_py(mode: &str, access_point: &str, topic: &str, group: &str, extra: &[&str]) -> Run {
    let py = compat_python().expect("python client install");
    let mut child = Command::new(&py)
        .arg(repo_root().join("scripts/compat/python_timer_txn.py"))
        .args([mode, access_point, topic, group])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait python") {
            break Some(st);
        }
        if Instant::now() > deadline {
            // Child::kill signals exactly this child's PID.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    let events: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let fail = events
        .iter()
        .find_map(|v| v.get("fail").and_then(Value::as_str))
        .unwrap_or("(no failure line)");
    let Some(status) = status else {
        panic!(
            "python {mode} still running after {SCRIPT_TIMEOUT:?}; killed.\nstdout:\n{}\nstderr:\n{}",
            tail(&stdout, 4000),
            tail(&stderr, 4000)
        );
    };
    assert!(
        status.success(),
        "python {mode} failed ({status}): {fail}\nstdout:\n{}\nstderr:\n{}",
        tail(&stdout, 4000),
        tail(&stderr, 6000)
    );
    let summary = events
        .iter()
        .find(|v| v.get("done").and_then(Value::as_str) == Some(mode))
        .cloned()
        .unwrap_or_else(|| panic!("python {mode}: no summary line in\n{stdout}"));
    // Visible with --nocapture: the measured lateness / check-back delays.
    println!("python {mode}: {summary}");
    Run { events, summary }
}

impl Run {
    fn s(&self, key: &str) -> &str {
        self.summary[key]
            .as_str()
            .unwrap_or_else(|| panic!("summary lacks {key}: {}", self.summary))
    }

    fn i(&self, key: &str) -> i64 {
        self.summary[key]
            .as_i64()
            .unwrap_or_else(|| panic!("summary lacks {key}: {}", self.summary))
    }

    /// Receive times of each received message id.
    fn received(&self) -> HashMap<String, Vec<i64>> {
        let mut m: HashMap<String, Vec<i64>> = HashMap::new();
        for v in self.events.iter().filter(|v| v["event"] == "received") {
            m.entry(v["id"].as_str().unwrap().to_string())
                .or_default()
                .push(v["at_ms"].as_i64().unwrap());
        }
        m
    }

    fn events(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|v| v["event"] == kind).collect()
    }
}

/// Waits (bounded) until the access point routes `topic` to at least one queue.
async fn wait_routable(access_point: &str, topic: &str) {
    let mut c = MessagingServiceClient::connect(format!("http://{access_point}"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .query_route(pb::QueryRouteRequest {
                topic: Some(pb::Resource {
                    resource_namespace: String::new(),
                    name: topic.into(),
                }),
                endpoints: None,
            })
            .await
            .unwrap()
            .into_inner();
        let ok = r.status.as_ref().map(|s| s.code) == Some(pb::Code::Ok as i32);
        if ok && !r.message_queues.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "topic {topic} never routable: {:?}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The gRPC endpoint of the current master, from the name server.
async fn master(namesrv: &str) -> String {
    let mut ns = NameServerAdminClient::connect(format!("http://{namesrv}"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let groups = ns
            .list_brokers(ListBrokersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .groups;
        if let Some(m) = groups
            .iter()
            .flat_map(|g| g.members.iter())
            .find(|m| m.broker_id == 0)
        {
            return m.grpc_endpoint.clone();
        }
        assert!(Instant::now() < deadline, "no master registered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asserts (polling up to 5 s) that the broker holds no pending timer and no open
/// half message of `topic`.
async fn assert_nothing_pending(broker: &str, topic: &str) {
    let mut admin = BrokerAdminClient::connect(format!("http://{broker}"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = admin
            .pending(PendingRequest {
                topic: topic.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let status = r.status.clone().unwrap_or_default();
        assert_eq!(
            status.code,
            pb::Code::Ok as i32,
            "admin Pending{{{topic}}}: {status:?}"
        );
        let t = r.topics.iter().find(|t| t.topic == topic);
        let (timers, half) = t.map_or((0, 0), |t| (t.pending_timers, t.open_half));
        if timers == 0 && half == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: still {timers} pending timers, {half} open half messages: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `sofamq standalone` with `topic` (2 queues, `ty`), once the access point routes it.
async fn standalone_with(topic: &str, ty: &str) -> Standalone {
    let spec = format!("{topic}:2:{ty}");
    let sa = Standalone::start(&["--topic", &spec]).unwrap();
    wait_routable(&sa.node.addr, topic).await;
    sa
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_delay_message_arrives_at_its_due_time() {
    let sa = standalone_with("pydelay", "DELAY").await;
    let ap = sa.node.addr.clone();
    // (1) Not before the due time, once, at most 3 s late.
    let run = run_py("delay", &ap, "pydelay", "py-delay", &[]);
    let (id, due) = (run.s("id").to_string(), run.i("due_ms"));
    let got = run.received();
    assert_eq!(got.len(), 1, "only the delay message: {got:?}");
    let at = &got[&id];
    assert_eq!(at.len(), 1, "delivered once: {at:?}");
    assert!(
        at[0] >= due - 20 && at[0] <= due + 3000,
        "received at {} for due {due}",
        at[0]
    );
    // Due is a whole second (the client's granularity) at least 3 s after it is
    // computed, a fraction of a millisecond before the send.
    let sent = run.events("sent");
    assert!(
        sent[0]["due_ms"].as_i64().unwrap() - sent[0]["sent_ms"].as_i64().unwrap() >= 2990,
        "sent 3 s ahead: {sent:?}"
    );
    assert_nothing_pending(&master(&ap).await, "pydelay").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_recall_cancels_a_delay_message() {
    let sa = standalone_with("pyrecall", "DELAY").await;
    let ap = sa.node.addr.clone();
    // (2) A recalled message never arrives; its sibling, due at the same time, does.
    // The client sends RecallMessage to its access point (here the name server).
    let run = run_py("recall", &ap, "pyrecall", "py-recall", &[]);
    let (recalled, kept, due) = (run.s("recalled"), run.s("kept"), run.i("due_ms"));
    let got = run.received();
    assert!(
        !got.contains_key(recalled),
        "recalled one delivered: {got:?}"
    );
    let at = got.get(kept).expect("the message not recalled arrives");
    assert!(
        at.len() == 1 && at[0] >= due - 20 && at[0] <= due + 3000,
        "{at:?} vs due {due}"
    );
    assert_eq!(run.events("recalled")[0]["id"], recalled);
    assert_eq!(run.events("recall-delivered-refused")[0]["code"], 42800);
    assert_nothing_pending(&master(&ap).await, "pyrecall").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_transaction_commit() {
    // Default transaction settings (check delay 6 s): the script commits after 2 s,
    // so the broker must not check back here.
    let sa = standalone_with("pytxcommit", "TRANSACTION").await;
    let ap = sa.node.addr.clone();
    // (3) Invisible while open; exactly once after the commit.
    let run = run_py("commit", &ap, "pytxcommit", "py-txcommit", &[]);
    let id = run.s("id");
    let got = run.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[id].len(), 1, "received once: {got:?}");
    assert!(got[id][0] >= run.i("committed_ms"), "not before the commit");
    assert_eq!(
        run.events("commit").len(),
        2,
        "commit, then a repeated commit (OK)"
    );
    assert!(run.events("check").is_empty(), "no check-back");
    assert_nothing_pending(&master(&ap).await, "pytxcommit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_transaction_rollback() {
    let sa = standalone_with("pytxrollback", "TRANSACTION").await;
    let ap = sa.node.addr.clone();
    // (4) A rolled-back message never arrives; the committed control one does.
    let run = run_py("rollback", &ap, "pytxrollback", "py-txrollback", &[]);
    let got = run.received();
    assert!(!got.contains_key(run.s("rolled_back")), "{got:?}");
    assert_eq!(got.get(run.s("control")).map(Vec::len), Some(1), "{got:?}");
    assert_eq!(
        run.events("commit-after-rollback-refused")[0]["code"],
        42800
    );
    assert!(run.events("check").is_empty(), "no check-back");
    assert_nothing_pending(&master(&ap).await, "pytxrollback").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_transaction_checker_resolves_open_transactions() {
    // A name server and one broker process, the broker with a short check delay.
    let mut cluster = Cluster::start_namesrv().unwrap();
    let config = cluster.dir.path().join("broker-tx.toml");
    std::fs::write(
        &config,
        format!(
            "[transaction]\ncheck_delay_ms = {CHECK_DELAY_MS}\ncheck_interval_ms = {CHECK_INTERVAL_MS}\n"
        ),
    )
    .unwrap();
    cluster
        .add_broker(
            "broker-tx",
            &[
                "--config".into(),
                config.display().to_string(),
                "--topic".into(),
                "pytxcheck:2:TRANSACTION".into(),
            ],
        )
        .unwrap();
    let ap = cluster.namesrv.addr.clone();
    let broker = cluster.brokers[0].addr.clone();
    wait_routable(&ap, "pytxcheck").await;

    // (5) Neither transaction is ended by the application: the broker checks back
    // after check_delay_ms; the checker commits one (received once) and rolls back
    // the other (never received).
    let delay = CHECK_DELAY_MS.to_string();
    let run = run_py("checkback", &ap, "pytxcheck", "py-txcheck", &[&delay]);
    let (committed, rolled_back) = (run.s("committed"), run.s("rolled_back"));
    let got = run.received();
    assert_eq!(got.get(committed).map(Vec::len), Some(1), "{got:?}");
    assert!(!got.contains_key(rolled_back), "{got:?}");
    let checks = run.events("check");
    for (id, answer) in [(committed, "COMMIT"), (rolled_back, "ROLLBACK")] {
        let first = checks
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no check for {id}: {checks:?}"));
        assert_eq!(first["answer"], answer);
        assert_eq!(first["topic"], "pytxcheck");
    }
    for after in run.summary["check_after_ms"].as_array().unwrap() {
        let after = after.as_i64().unwrap();
        assert!(
            after >= CHECK_DELAY_MS as i64 - 20,
            "checked {after} ms after the send, before check_delay_ms"
        );
    }
    assert_nothing_pending(&broker, "pytxcheck").await;
}
