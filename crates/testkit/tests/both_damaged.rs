//! Both copies of a group's log damaged: no replica is whole, so the group stays without a
//! master (unavailable, not lossy), every broker says why on `/health`, the controller says
//! why in `sofamq admin cluster` and its log, and nothing is cut. Needs the `sofamq` binary
//! (`scripts/test.sh` builds it).

use std::time::{Duration, Instant};

use sofamq_client::{Message, Producer, ProducerConfig};
use sofamq_testkit::chaos::cluster::{cli, has_controller};
use sofamq_testkit::chaos::{ChaosCluster, ClusterOptions, Failover};

fn log_bytes(c: &ChaosCluster, i: usize) -> u64 {
    std::fs::read_dir(c.brokers[i].store_dir().join("commitlog"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

async fn cluster_json(c: &ChaosCluster) -> Option<serde_json::Value> {
    let out = cli(vec![
        "admin".into(),
        "cluster".into(),
        "--access-point".into(),
        c.namesrv_addr.clone(),
        "--controller".into(),
        c.controller_list(),
        "--json".into(),
    ])
    .await
    .ok()?;
    serde_json::from_str(out.trim()).ok()
}

fn controller_said(c: &ChaosCluster, what: &str) -> bool {
    std::fs::read_dir(c.log_dir()).unwrap().any(|e| {
        let p = e.unwrap().path();
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("controller"))
            && std::fs::read_to_string(&p).is_ok_and(|s| s.contains(what))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_copies_damaged_leave_the_group_unavailable_and_say_why() {
    if !has_controller() {
        eprintln!("skipped: the sofamq binary has no controller");
        return;
    }
    let mut c = ChaosCluster::start(ClusterOptions {
        failover: Failover::Controller,
        controllers: 1,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    c.settle(Duration::from_secs(30)).await.unwrap();
    let cfg = ProducerConfig::new([c.namesrv_addr.clone()])
        .with_max_attempts(2)
        .with_request_timeout(Duration::from_secs(2))
        .with_retry_backoff(Duration::from_millis(50), Duration::from_millis(200), 2.0);
    let p = Producer::start(cfg).await.unwrap();
    for i in 0..300 {
        p.send(Message::new("chaos", format!("m-{i}").into_bytes()))
            .await
            .unwrap_or_else(|e| panic!("m-{i}: {e}"));
    }
    let m = c.master;
    let s = c.peer(m);
    // Let the slave's last acks land, then stop both (slave first: no failover in between).
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.kill9(s);
    c.kill9(m);
    let at_m = c
        .flip_durable_byte(m, 7)
        .unwrap()
        .expect("master log long enough");
    let at_s = c
        .flip_durable_byte(s, 8)
        .unwrap()
        .expect("slave log long enough");
    let sizes = [log_bytes(&c, 0), log_bytes(&c, 1)];
    c.start_broker(m, None).await.unwrap();
    c.start_broker(s, None).await.unwrap();

    // The controller names both replicas and what is wrong with each.
    let deadline = Instant::now() + Duration::from_secs(40);
    let why = loop {
        let why = cluster_json(&c).await.and_then(|j| {
            j["controller"]["groups"][0]["unavailable"]
                .as_str()
                .map(str::to_owned)
        });
        if let Some(w) = why.filter(|w| w.matches("is fenced: corrupt record").count() == 2) {
            break w;
        }
        assert!(
            Instant::now() < deadline,
            "the controller never said the group is unavailable"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(why.contains("without losing acked messages"), "{why}");
    // Still so a while later: nobody was elected meanwhile, each broker says why.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let j = cluster_json(&c).await.expect("admin cluster answers");
    assert!(
        j["controller"]["groups"][0]["master"].is_null(),
        "a damaged replica was elected: {j}"
    );
    for (i, at) in [(m, at_m), (s, at_s)] {
        let (code, h) = c.health(i).await.expect("health answers");
        assert_eq!(code, 503, "{h}");
        assert_eq!(h["status"], "fenced", "{h}");
        assert_ne!(h["role"], "master", "{h}");
        let reason = h["fenced_reason"].as_str().unwrap_or_default();
        assert!(reason.contains("corrupt record"), "byte {at}: {reason}");
    }
    // Sends are refused, not stored.
    assert!(
        p.send(Message::new("chaos", b"after".to_vec()))
            .await
            .is_err(),
        "a send was acked by a group with no whole replica"
    );
    p.shutdown().await;
    // Nothing was cut: the damaged logs wait for an operator (or a healthy copy).
    assert_eq!([log_bytes(&c, 0), log_bytes(&c, 1)], sizes);
    assert!(controller_said(&c, "broker group unavailable"));
    c.stop_all().await;
}
