//! Clients spread across broker groups, through real processes: a namesrv, a controller,
//! a replicated group (broker-a, master and slave under the controller) and two single
//! groups. While broker-a fails over, the SDK's sends go to the other groups and none
//! surfaces an error; a group added while the cluster runs (`topic create --groups`)
//! shows in the routes and takes sends; a group that leaves drops out of them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sofamq_client::{Message, Producer, ProducerConfig};
use sofamq_testkit::Cluster;
use sofamq_testkit::controller::Controllers;
use sofamq_testkit::repl::ReplBroker;

const TOPIC: &str = "spread";

/// Sends `n` messages one by one; every one must be acked. Returns the count per group.
async fn send_all(p: &Producer, n: usize, tag: &str) -> HashMap<String, usize> {
    let mut per = HashMap::new();
    for i in 0..n {
        let r = p
            .send(Message::new(TOPIC, format!("{tag}-{i}").into_bytes()))
            .await
            .unwrap_or_else(|e| panic!("{tag}: send {i} surfaced an error: {e}"));
        *per.entry(r.broker).or_default() += 1;
    }
    per
}

/// Sends until one lands on `group` (every send must be acked), within `within`.
async fn until_on(p: &Producer, group: &str, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut i = 0;
    loop {
        i += 1;
        let r = p
            .send(Message::new(
                TOPIC,
                format!("until-{group}-{i}").into_bytes(),
            ))
            .await
            .unwrap_or_else(|e| panic!("send {i} surfaced an error: {e}"));
        if r.broker == group {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "no send reached {group} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_spread_over_groups_skip_one_failing_over_and_follow_groups_added_and_removed() {
    let mut c = Cluster::start_namesrv().unwrap();
    let ns = c.namesrv.addr.clone();
    let dir = c.dir.path().to_path_buf();
    let ctl = Controllers::start(
        &dir,
        1,
        &["--master-timeout-ms", "2500", "--lease-ms", "1500"],
    )
    .unwrap();
    let mut a: Vec<ReplBroker> = (0..2)
        .map(|id| {
            let mut b = ReplBroker::new(&dir, &ns, "broker-a", &format!("a{id}")).unwrap();
            b.start_controlled("broker-a", &ctl.addrs(), id, &["--ack-timeout-ms", "2000"])
                .unwrap();
            b
        })
        .collect();
    c.add_broker("broker-b", &[]).unwrap();
    c.add_broker("broker-c", &[]).unwrap();
    // broker-a's master is the controller's choice: wait for it, with its slave in sync.
    let deadline = Instant::now() + Duration::from_secs(30);
    let master = loop {
        if let Some(g) = ctl.group("broker-a").await
            && let Some(m) = g.master
            && g.insync.len() == 2
        {
            break m;
        }
        assert!(Instant::now() < deadline, "broker-a has no master");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    c.cli(&[
        "topic",
        "create",
        TOPIC,
        "--queues",
        "2",
        "--access-point",
        &ns,
    ])
    .unwrap();
    // A group the namesrv does not know is refused by name.
    let err = c
        .cli(&[
            "topic",
            "create",
            "other",
            "--groups",
            "broker-x",
            "--access-point",
            &ns,
        ])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"broker-x\" has no master registered"),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await; // the namesrv learns the topic

    let cfg = ProducerConfig::new([ns.clone()])
        .with_max_attempts(3)
        .with_request_timeout(Duration::from_secs(2))
        .with_retry_backoff(Duration::from_millis(20), Duration::from_millis(200), 2.0)
        .with_route_refresh_interval(Duration::from_millis(500));
    let p = Producer::start(cfg).await.unwrap();
    let per = send_all(&p, 90, "before").await;
    for g in ["broker-a", "broker-b", "broker-c"] {
        assert!(
            per.get(g).copied().unwrap_or(0) > 0,
            "{g} got none: {per:?}"
        );
    }

    // broker-a's master dies: the group fails over; meanwhile nothing surfaces an error.
    a[master as usize].kill9();
    let began = Instant::now();
    let during = send_all(&p, 300, "failover").await;
    eprintln!(
        "during broker-a's failover ({:?}): {during:?}",
        began.elapsed()
    );
    let others: usize = ["broker-b", "broker-c"]
        .iter()
        .map(|g| during.get(*g).copied().unwrap_or(0))
        .sum();
    assert!(
        others >= 200,
        "sends did not go to the other groups: {during:?}"
    );
    // The killed broker comes back (as systemd would restart it) and rejoins as the slave:
    // with two copies required, broker-a takes sends again once it is in sync.
    a[master as usize]
        .start_controlled(
            "broker-a",
            &ctl.addrs(),
            master,
            &["--ack-timeout-ms", "2000"],
        )
        .unwrap();
    let n = until_on(&p, "broker-a", Duration::from_secs(30)).await;
    let g = ctl.group("broker-a").await.unwrap();
    assert_ne!(g.master, Some(master), "broker-a failed over: {g:?}");
    eprintln!(
        "broker-a back after {n} more sends, {:?} after the kill",
        began.elapsed()
    );

    // A group added while the cluster runs: the topic is created on it alone, and the
    // routes (refreshed every 500 ms here, 30 s by default) bring it to the producer.
    c.add_broker("broker-d", &[]).unwrap();
    let out = c
        .cli(&[
            "topic",
            "create",
            TOPIC,
            "--queues",
            "2",
            "--groups",
            "broker-d",
            "--access-point",
            &ns,
        ])
        .unwrap();
    assert!(
        out.contains("on broker-d") && !out.contains("on broker-b"),
        "{out}"
    );
    until_on(&p, "broker-d", Duration::from_secs(20)).await;

    // It leaves (a clean stop unregisters it): sends go on, and once the routes have it
    // gone none goes there.
    let d = c.brokers.len() - 1;
    c.brokers[d].terminate(Duration::from_secs(10));
    send_all(&p, 30, "d-left").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = send_all(&p, 90, "after").await;
    assert_eq!(after.get("broker-d"), None, "{after:?}");
    p.shutdown().await;
    for b in &mut a {
        b.stop();
    }
}
