//! Timer and transactional messages end to end: the Rust SDK and the `sofamq` CLI against a
//! real `sofamq standalone` (send_delayed / recall, send_half / commit / rollback, the
//! broker's check-back answered by the producer's checker over Telemetry, `admin pending`).

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sofamq_client::{
    Code, ConsumerConfig, Message, Producer, ProducerConfig, ReceivedMessage, SimpleConsumer,
    TransactionResolution,
};
use sofamq_testkit::{Standalone, sofamq_bin};

fn cli(args: &[&str]) -> String {
    let out = Command::new(sofamq_bin())
        .args(args)
        .output()
        .expect("running sofamq");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sofamq {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `admin pending --json` for `topic`: (pending timers, open half messages, oldest half ms).
fn pending(ap: &str, topic: &str) -> (u64, u64, i64) {
    let out = cli(&[
        "admin",
        "pending",
        "--access-point",
        ap,
        "--topic",
        topic,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let mut sum = (0, 0, 0);
    for b in v.as_array().unwrap() {
        for t in b["topics"].as_array().unwrap() {
            if t["topic"] == topic {
                sum.0 += t["pending_timers"].as_u64().unwrap();
                sum.1 += t["open_half"].as_u64().unwrap();
                sum.2 = sum.2.max(t["oldest_half_ms"].as_i64().unwrap());
            }
        }
    }
    sum
}

/// Waits (at most 10 s) until `admin pending` for `topic` shows `want` in the field `pick`
/// selects. The counts come from the timer and transaction index loops, which pick up a
/// new timer, a recall or an end of a transaction on their next poll, so they trail the
/// RPC that caused them by up to one poll interval.
async fn pending_reaches(ap: &str, topic: &str, pick: fn((u64, u64, i64)) -> u64, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = pick(pending(ap, topic));
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "admin pending for {topic} stayed at {got}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn timers(p: (u64, u64, i64)) -> u64 {
    p.0
}

fn open_half(p: (u64, u64, i64)) -> u64 {
    p.1
}

async fn consumer(ap: &str, group: &str, topic: &str) -> SimpleConsumer {
    let cfg = ConsumerConfig::new([ap.to_string()], group)
        .with_long_polling_timeout(Duration::from_secs(1));
    SimpleConsumer::start(cfg, vec![(topic.to_string(), "*".to_string())])
        .await
        .unwrap()
}

/// Receives and acks until `done(ids so far)` or `within` passed; (id, arrival) in order.
async fn drain(
    c: &SimpleConsumer,
    within: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Vec<(String, Instant)> {
    let deadline = Instant::now() + within;
    let mut got: Vec<(String, Instant)> = Vec::new();
    while Instant::now() < deadline {
        for m in c.receive(16, Duration::from_secs(30)).await.unwrap() {
            c.ack(&m).await.unwrap();
            got.push((m.message_id.clone(), Instant::now()));
        }
        let ids: Vec<String> = got.iter().map(|(i, _)| i.clone()).collect();
        if done(&ids) {
            break;
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_and_cli_timers_and_transactions_against_standalone() {
    let sa = Standalone::start(&[
        "--topic",
        "reminders:2:DELAY",
        "--topic",
        "orders:2:TRANSACTION",
    ])
    .unwrap();
    let ap = sa.node.addr.clone();
    let checked: Arc<Mutex<Vec<String>>> = Arc::default();
    let checked2 = checked.clone();
    let cfg =
        ProducerConfig::new([ap.clone()]).with_transaction_checker(move |m: &ReceivedMessage| {
            checked2.lock().unwrap().push(m.message_id.clone());
            match m.keys.first().map(String::as_str) {
                Some("commit") => TransactionResolution::Commit,
                Some("rollback") => TransactionResolution::Rollback,
                _ => TransactionResolution::Unknown,
            }
        });
    let producer = Producer::start(cfg).await.unwrap();

    // ---- timers
    let reminders = consumer(&ap, "g-reminders", "reminders").await;
    let sent = Instant::now();
    let soon = producer
        .send_delayed(Message::new("reminders", "soon"), Duration::from_secs(2))
        .await
        .unwrap();
    let later = producer
        .send_delayed(
            Message::new("reminders", "later"),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    let (soon_handle, later_handle) = (
        soon.recall_handle
            .clone()
            .expect("a DELAY receipt has a recall handle"),
        later
            .recall_handle
            .clone()
            .expect("a DELAY receipt has a recall handle"),
    );
    pending_reaches(&ap, "reminders", timers, 2).await;
    assert_eq!(
        producer.recall("reminders", &later_handle).await.unwrap(),
        later.message_id
    );
    // Idempotent.
    assert_eq!(
        producer.recall("reminders", &later_handle).await.unwrap(),
        later.message_id
    );
    // The wrong topic is refused.
    let err = producer.recall("orders", &soon_handle).await.unwrap_err();
    assert_eq!(err.code_enum(), Some(Code::BadRequest), "{err}");

    let got = drain(&reminders, Duration::from_secs(10), |ids| !ids.is_empty()).await;
    let ids: Vec<&str> = got.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(ids, [soon.message_id.as_str()]);
    let waited = got[0].1 - sent;
    assert!(
        waited >= Duration::from_millis(1900),
        "delivered after {waited:?}"
    );
    // Delivered: too late to recall.
    let err = producer
        .recall("reminders", &soon_handle)
        .await
        .unwrap_err();
    assert_eq!(err.code_enum(), Some(Code::PreconditionFailed), "{err}");
    pending_reaches(&ap, "reminders", timers, 0).await;

    // The CLI: --delay prints the handle, `recall` takes it.
    let out = cli(&[
        "produce",
        "--access-point",
        &ap,
        "--topic",
        "reminders",
        "--body",
        "cli",
        "--delay",
        "1h",
    ]);
    let handle = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("recall_handle="))
        .unwrap_or_else(|| panic!("no recall handle in {out:?}"))
        .to_string();
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    pending_reaches(&ap, "reminders", timers, 1).await;
    let out = cli(&[
        "recall",
        "--access-point",
        &ap,
        "--topic",
        "reminders",
        "--handle",
        &handle,
    ]);
    assert_eq!(out.trim(), format!("RECALLED {id} reminders"));
    pending_reaches(&ap, "reminders", timers, 0).await;

    // ---- transactions
    let orders = consumer(&ap, "g-orders", "orders").await;
    let committed = producer
        .send_half(Message::new("orders", "committed"))
        .await
        .unwrap();
    let rolled = producer
        .send_half(Message::new("orders", "rolled back"))
        .await
        .unwrap();
    pending_reaches(&ap, "orders", open_half, 2).await;
    committed.commit().await.unwrap();
    committed.commit().await.unwrap(); // idempotent
    rolled.rollback().await.unwrap();
    let err = rolled.commit().await.unwrap_err();
    assert_eq!(err.code_enum(), Some(Code::PreconditionFailed), "{err}");
    let out = cli(&[
        "produce",
        "--access-point",
        &ap,
        "--topic",
        "orders",
        "--body",
        "cli",
        "--transaction",
        "commit",
    ]);
    assert!(
        out.contains("transaction_id=") && out.trim_end().ends_with("committed"),
        "{out}"
    );
    let cli_id = out.split_whitespace().nth(1).unwrap().to_string();

    // Left open: the broker checks back and the checker decides.
    let orphan_commit = producer
        .send_half(
            Message::builder("orders", "orphan, committed by the checker")
                .key("commit")
                .transaction_check_delay(Duration::from_secs(2))
                .build(),
        )
        .await
        .unwrap();
    let orphan_rollback = producer
        .send_half(
            Message::builder("orders", "orphan, rolled back by the checker")
                .key("rollback")
                .transaction_check_delay(Duration::from_secs(2))
                .build(),
        )
        .await
        .unwrap();
    pending_reaches(&ap, "orders", open_half, 2).await;
    assert!(pending(&ap, "orders").2 > 0);

    let want: HashSet<String> = [
        committed.message_id().to_string(),
        cli_id,
        orphan_commit.message_id().to_string(),
    ]
    .into();
    let got = drain(&orders, Duration::from_secs(20), |ids| {
        ids.len() >= want.len()
    })
    .await;
    let got_ids: Vec<String> = got.into_iter().map(|(i, _)| i).collect();
    assert_eq!(got_ids.len(), want.len(), "{got_ids:?}");
    assert_eq!(got_ids.iter().cloned().collect::<HashSet<_>>(), want);
    let asked = checked.lock().unwrap().clone();
    assert!(
        asked.contains(&orphan_commit.message_id().to_string()),
        "{asked:?}"
    );
    // The rollback answer may trail the commit by a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pending(&ap, "orders").1 != 0 {
        assert!(Instant::now() < deadline, "orphan rollback never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        checked
            .lock()
            .unwrap()
            .contains(&orphan_rollback.message_id().to_string())
    );
    // Nothing else shows up (the rolled-back ones stay gone).
    let extra = drain(&orders, Duration::from_secs(2), |_| false).await;
    assert!(extra.is_empty(), "{extra:?}");
    producer.shutdown().await;
}
