//! Automatic failover through real processes: a controller (`sofamq controller`), a
//! NameServer and one broker group of three brokers that follow it (`min_insync_replicas`
//! 2: with one broker down the other two still take writes).
//!
//! * kill -9 of the master under load, several times: the slave takes over, the old master
//!   rejoins as a slave, and no acked message is lost (checked on both logs at the end);
//!   the failover time (last OK before the kill to the first OK after) is printed.
//! * SIGSTOP of the master past the timeout, then SIGCONT: it acks nothing and rejoins.
//! * kill of the controller leader (3 voters): sends go on, the master keeps its epoch.
//! * kill of the controller leader and the master together: nothing acked is lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sofamq_client::{Message, Producer, ProducerConfig};
use sofamq_controller::GroupState;
use sofamq_proto::v2::messaging_service_client::MessagingServiceClient;
use sofamq_proto::v2::{self as v2, SendMessageRequest};
use sofamq_testkit::Cluster;
use sofamq_testkit::controller::Controllers;
use sofamq_testkit::repl::ReplBroker;

const GROUP: &str = "broker-a";
const TOPIC: &str = "ft";
/// Brokers in the group.
const BROKERS: u64 = 3;
/// Controller timings for the tests (the defaults are 3000 / 2000 ms; set
/// `FAILOVER_DEFAULT_TIMINGS=1` to measure with those).
fn controller_flags() -> Vec<&'static str> {
    if std::env::var_os("FAILOVER_DEFAULT_TIMINGS").is_some() {
        Vec::new()
    } else {
        vec!["--master-timeout-ms", "2500", "--lease-ms", "1500"]
    }
}

/// Generous timings for the tests that assert that nothing fails over: a loaded CI
/// machine must not look like a dead master.
const PATIENT: [&str; 4] = ["--master-timeout-ms", "8000", "--lease-ms", "6000"];

/// Every message id of the test topic in the log of `store_dir`, with how often it is there.
fn ids_in_log(store_dir: &std::path::Path) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for (topic, id, _, _) in sofamq_testkit::logs::messages(store_dir).unwrap() {
        if topic == TOPIC {
            *out.entry(id).or_insert(0) += 1;
        }
    }
    out
}

/// The whole durable log of a store as bytes.
fn log_bytes(store_dir: &std::path::Path) -> Vec<u8> {
    sofamq_testkit::logs::log_bytes(store_dir).unwrap()
}

struct Setup {
    cluster: Cluster,
    ctl: Controllers,
    brokers: Vec<ReplBroker>,
}

impl Setup {
    fn start(voters: u64) -> Setup {
        Self::start_with(voters, &controller_flags())
    }

    fn start_with(voters: u64, controller_flags: &[&str]) -> Setup {
        let cluster = Cluster::start_namesrv().unwrap();
        let dir = cluster.dir.path().to_path_buf();
        let ctl = Controllers::start(&dir, voters, controller_flags).unwrap();
        let mut brokers = Vec::new();
        for id in 0..BROKERS {
            let mut b =
                ReplBroker::new(&dir, &cluster.namesrv.addr, GROUP, &format!("b{id}")).unwrap();
            b.start_controlled(GROUP, &ctl.addrs(), id, &broker_flags())
                .unwrap();
            brokers.push(b);
        }
        Setup {
            cluster,
            ctl,
            brokers,
        }
    }

    /// Waits until the controller's committed state satisfies `f`.
    async fn wait_group(
        &self,
        what: &str,
        wait: Duration,
        f: impl Fn(&GroupState) -> bool,
    ) -> GroupState {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(g) = self.ctl.group(GROUP).await
                && f(&g)
            {
                return g;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {wait:?}; state {:?}\nb0 log:\n{}\nb1 log:\n{}\nb2 log:\n{}",
                self.ctl.group(GROUP).await,
                tail(&self.brokers[0].log()),
                tail(&self.brokers[1].log()),
                tail(&self.brokers[2].log())
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for a master with every broker in sync; returns the state.
    async fn wait_healthy(&self) -> GroupState {
        self.wait_group("master with all in sync", Duration::from_secs(40), |g| {
            g.master.is_some() && g.insync.len() == BROKERS as usize
        })
        .await
    }

    fn restart(&mut self, id: u64) {
        let addrs = self.ctl.addrs();
        self.brokers[id as usize]
            .start_controlled(GROUP, &addrs, id, &broker_flags())
            .unwrap();
    }
}

fn broker_flags() -> Vec<&'static str> {
    vec!["--topic", "ft:4", "--ack-timeout-ms", "2000"]
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A load of `tasks` concurrent senders; every OK is recorded with its time.
struct Load {
    producer: Producer,
    acked: Arc<Mutex<Vec<(Instant, String)>>>,
    failed: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(namesrv: &str, tasks: usize) -> Load {
        Self::start_attempts(namesrv, tasks, 16).await
    }

    /// [`Load::start`] with `attempts` per send (the backoff caps at 800 ms).
    async fn start_attempts(namesrv: &str, tasks: usize, attempts: u32) -> Load {
        let cfg = ProducerConfig::new([namesrv.to_string()])
            .with_max_attempts(attempts)
            .with_request_timeout(Duration::from_secs(3))
            .with_route_refresh_interval(Duration::from_millis(300))
            .with_broker_isolation(Duration::from_millis(300))
            .with_retry_backoff(Duration::from_millis(50), Duration::from_millis(800), 2.0);
        let producer = Producer::start(cfg).await.unwrap();
        let acked: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for t in 0..tasks {
            let (p, acked, failed, stop) = (
                producer.clone(),
                acked.clone(),
                failed.clone(),
                stop.clone(),
            );
            handles.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let body = format!("t{t}-m{i}").into_bytes();
                    match p.send(Message::new(TOPIC, body)).await {
                        Ok(r) => acked.lock().unwrap().push((Instant::now(), r.message_id)),
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        Load {
            producer,
            acked,
            failed,
            stop,
            tasks: handles,
        }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn wait_progress(&self, n: usize, wait: Duration) {
        let before = self.count();
        let deadline = Instant::now() + wait;
        while self.count() < before + n {
            assert!(
                Instant::now() < deadline,
                "no send progress within {wait:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The longest stretch without an OK between `from` and `to` (edges included).
    fn longest_pause(&self, from: Instant, to: Instant) -> Duration {
        let a = self.acked.lock().unwrap();
        let mut times: Vec<Instant> = a
            .iter()
            .map(|x| x.0)
            .filter(|x| *x > from && *x < to)
            .collect();
        times.sort();
        let mut prev = from;
        let mut worst = Duration::ZERO;
        for t in times.into_iter().chain([to]) {
            worst = worst.max(t - prev);
            prev = t;
        }
        worst
    }

    /// Last OK at or before `t`, first OK after it.
    fn gap_around(&self, t: Instant) -> Option<Duration> {
        let a = self.acked.lock().unwrap();
        let last = a.iter().map(|x| x.0).filter(|x| *x <= t).max()?;
        let first = a.iter().map(|x| x.0).filter(|x| *x > t).min()?;
        Some(first - last)
    }

    async fn stop(self) -> (Vec<String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.producer.shutdown().await;
        let ids = self
            .acked
            .lock()
            .unwrap()
            .iter()
            .map(|x| x.1.clone())
            .collect();
        (ids, self.failed.load(Ordering::Relaxed))
    }
}

/// Stops every broker and checks: every acked id is in every log exactly once, and the
/// logs agree byte for byte up to the shortest one.
fn check_logs(brokers: &mut [ReplBroker], acked: &[String]) {
    for b in brokers.iter_mut() {
        b.stop();
    }
    let logs: Vec<HashMap<String, usize>> =
        brokers.iter().map(|b| ids_in_log(&b.store_dir())).collect();
    let mut lost = 0;
    for id in acked {
        for (i, l) in logs.iter().enumerate() {
            match l.get(id) {
                None => {
                    lost += 1;
                    eprintln!("acked {id} missing from b{i}");
                }
                Some(n) => assert_eq!(*n, 1, "acked {id} stored {n} times on b{i}"),
            }
        }
    }
    assert_eq!(lost, 0, "acked messages lost");
    let all: Vec<Vec<u8>> = brokers.iter().map(|b| log_bytes(&b.store_dir())).collect();
    for (i, other) in all.iter().enumerate().skip(1) {
        let n = all[0].len().min(other.len());
        assert!(
            all[0][..n] == other[..n],
            "logs of b0 and b{i} diverge below {n}"
        );
    }
}

fn kills() -> usize {
    std::env::var("FAILOVER_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

/// kill -9 of whichever broker is master, `FAILOVER_KILLS` times (3 by default), under a
/// continuous load; each time the other one takes over and the killed one comes back as a
/// slave. Nothing acked is lost; the failover times are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_master_under_load_fails_over_without_loss() {
    let mut s = Setup::start(1);
    let g = s.wait_healthy().await;
    let load = Load::start(&s.cluster.namesrv.addr, 8).await;
    load.wait_progress(50, Duration::from_secs(30)).await;
    let mut epoch = g.master_epoch;
    let mut times = Vec::new();
    for round in 0..kills() {
        let g = s.wait_healthy().await;
        load.wait_progress(20, Duration::from_secs(30)).await;
        let master = g.master.unwrap();
        s.brokers[master as usize].kill9();
        let killed_at = Instant::now();
        let g2 = s
            .wait_group("new master", Duration::from_secs(20), |x| {
                x.master.is_some_and(|m| m != master) && x.master_epoch > epoch
            })
            .await;
        epoch = g2.master_epoch;
        load.wait_progress(10, Duration::from_secs(20)).await;
        let gap = load.gap_around(killed_at).expect("OKs around the kill");
        eprintln!(
            "round {round}: master b{master} killed, b{} took over at epoch {epoch}; failover {} ms",
            g2.master.unwrap(),
            gap.as_millis()
        );
        times.push(gap.as_millis() as u64);
        s.restart(master);
    }
    s.wait_healthy().await;
    load.wait_progress(20, Duration::from_secs(30)).await;
    let (acked, failed) = load.stop().await;
    times.sort_unstable();
    eprintln!(
        "failover times (ms, sorted): {times:?}; median {} max {}; {} acked, {failed} sends failed after retries",
        times[times.len() / 2],
        times[times.len() - 1],
        acked.len()
    );
    check_logs(&mut s.brokers, &acked);
}

async fn send_direct(addr: &str, id: &str) -> Option<i32> {
    let mut c = MessagingServiceClient::connect(format!("http://{addr}"))
        .await
        .ok()?;
    let msg = v2::Message {
        topic: Some(v2::Resource {
            name: TOPIC.into(),
            ..Default::default()
        }),
        system_properties: Some(v2::SystemProperties {
            message_id: id.into(),
            message_type: v2::MessageType::Normal as i32,
            born_host: "test".into(),
            ..Default::default()
        }),
        body: b"direct".to_vec().into(),
        ..Default::default()
    };
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        c.send_message(SendMessageRequest {
            messages: vec![msg],
        }),
    )
    .await
    .ok()?
    .ok()?
    .into_inner();
    r.status.map(|s| s.code)
}

/// SIGSTOP of the master past the master timeout: the slave is elected; after SIGCONT the
/// old master acks nothing (its lease ran out) and rejoins as a slave of the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_master_acks_nothing_and_rejoins_as_slave() {
    let mut s = Setup::start(1);
    let g = s.wait_healthy().await;
    let old = g.master.unwrap();
    let old_addr = s.brokers[old as usize].grpc.clone();
    let load = Load::start(&s.cluster.namesrv.addr, 4).await;
    load.wait_progress(30, Duration::from_secs(30)).await;
    s.brokers[old as usize].pause(true);
    let g2 = s
        .wait_group("slave elected", Duration::from_secs(20), |x| {
            x.master.is_some_and(|m| m != old) && x.master_epoch > g.master_epoch
        })
        .await;
    load.wait_progress(20, Duration::from_secs(20)).await;
    s.brokers[old as usize].pause(false);
    // Right after SIGCONT, a send straight to the old master must not be acked.
    let code = send_direct(&old_addr, "direct-after-sigcont").await;
    assert_ne!(
        code,
        Some(v2::Code::Ok as i32),
        "the paused master acked a send after resuming"
    );
    // It rejoins as a slave: both in sync again under the new master.
    let g3 = s.wait_healthy().await;
    assert_eq!(g3.master, g2.master, "the new master stays");
    let code = send_direct(&old_addr, "direct-after-rejoin").await;
    assert_ne!(
        code,
        Some(v2::Code::Ok as i32),
        "the old master acked as a slave"
    );
    load.wait_progress(20, Duration::from_secs(20)).await;
    let (acked, _) = load.stop().await;
    check_logs(&mut s.brokers, &acked);
}

/// Killing the controller leader (of 3 voters) changes nothing for producers: the master
/// and its epoch stay, and no send fails after its retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_leader_kill_does_not_disturb_sends() {
    let mut s = Setup::start_with(3, &PATIENT);
    let g = s.wait_healthy().await;
    let load = Load::start(&s.cluster.namesrv.addr, 4).await;
    load.wait_progress(30, Duration::from_secs(30)).await;
    let leader = s.ctl.leader(Duration::from_secs(10)).await.unwrap();
    s.ctl.kill9(leader);
    let new_leader = {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(l) = s.ctl.leader(Duration::from_secs(1)).await
                && l != leader
            {
                break l;
            }
            assert!(Instant::now() < deadline, "no new controller leader");
        }
    };
    // Stay past the master timeout: the new leader must not depose a live master.
    tokio::time::sleep(Duration::from_secs(9)).await;
    load.wait_progress(20, Duration::from_secs(20)).await;
    let g2 = s.ctl.group(GROUP).await.unwrap();
    assert_eq!(
        g2.master, g.master,
        "master changed after a controller leader kill"
    );
    assert_eq!(g2.master_epoch, g.master_epoch, "epoch changed");
    let (acked, failed) = load.stop().await;
    assert_eq!(
        failed, 0,
        "sends failed across the controller leader change"
    );
    eprintln!(
        "controller leader {leader} killed, {new_leader} took over; {} acked",
        acked.len()
    );
    s.ctl.restart(leader).unwrap();
    check_logs(&mut s.brokers, &acked);
}

/// The controller leader and the master killed at once: a new controller leader elects
/// the slave, and no acked message is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_leader_and_master_killed_together_lose_nothing() {
    let mut s = Setup::start(3);
    let g = s.wait_healthy().await;
    let load = Load::start(&s.cluster.namesrv.addr, 8).await;
    load.wait_progress(50, Duration::from_secs(30)).await;
    let leader = s.ctl.leader(Duration::from_secs(10)).await.unwrap();
    let master = g.master.unwrap();
    s.ctl.kill9(leader);
    s.brokers[master as usize].kill9();
    s.wait_group("slave elected", Duration::from_secs(30), |x| {
        x.master.is_some_and(|m| m != master) && x.master_epoch > g.master_epoch
    })
    .await;
    load.wait_progress(20, Duration::from_secs(30)).await;
    s.restart(master);
    s.ctl.restart(leader).unwrap();
    s.wait_healthy().await;
    let (acked, _) = load.stop().await;
    check_logs(&mut s.brokers, &acked);
}

/// A rolling upgrade of a whole controlled cluster under load, one process at a time: the
/// three controller voters, then the slaves, then the master (its stop is the group's one
/// failover; it comes back as a slave). The new processes run `SOFAMQ_NEXT_BIN` (a
/// `--features next-proto` build of sofamq-cli) when it is set, and otherwise this build
/// offering the next versions (`--protocol-max 2`, `--replication-protocol-max 3`). Nothing
/// acked is lost, no send fails after its retries, the master changes exactly once, and the
/// slave sessions end on replication version 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_fails_over_once_and_loses_nothing() {
    use sofamq_proto::admin::ReplicationStatusRequest;
    use sofamq_proto::admin::broker_admin_client::BrokerAdminClient;
    let next = std::env::var_os("SOFAMQ_NEXT_BIN").map(std::path::PathBuf::from);
    let (ctl_next, broker_next): (&[&str], &[&str]) = if next.is_some() {
        (&[], &[])
    } else {
        (
            &["--protocol-max", "2"],
            &["--replication-protocol-max", "3"],
        )
    };
    // Patient timings (a loaded CI machine restarting controllers must not look like a dead
    // master); FAILOVER_DEFAULT_TIMINGS=1 measures with the defaults.
    let timings: &[&str] = if std::env::var_os("FAILOVER_DEFAULT_TIMINGS").is_some() {
        &[]
    } else {
        &PATIENT
    };
    let mut s = Setup::start_with(3, timings);
    let g = s.wait_healthy().await;
    let first_master = g.master.unwrap();
    // With the patient timings one failover takes about 8 s: 30 attempts ride it out.
    let load = Load::start_attempts(&s.cluster.namesrv.addr, 4, 30).await;
    load.wait_progress(30, Duration::from_secs(30)).await;
    // The controller voters, one at a time: each is back before the next goes.
    for id in 1..=3 {
        s.ctl.stop(id);
        let c = s.ctl.nodes.iter_mut().find(|c| c.id == id).unwrap();
        c.bin = next.clone();
        c.extra = ctl_next.iter().map(|x| x.to_string()).collect();
        s.ctl.restart(id).unwrap();
        s.ctl.leader(Duration::from_secs(20)).await.unwrap();
        load.wait_progress(20, Duration::from_secs(30)).await;
    }
    // The slaves, then the master: each back in sync before the next goes.
    let mut order: Vec<u64> = (0..BROKERS).filter(|b| *b != first_master).collect();
    order.push(first_master);
    let mut master_window = None;
    for b in order {
        let broker = &mut s.brokers[b as usize];
        let began = Instant::now();
        broker.stop();
        broker.bin = next.clone();
        let mut flags = broker_flags();
        flags.extend_from_slice(broker_next);
        let addrs = s.ctl.addrs();
        s.brokers[b as usize]
            .start_controlled(GROUP, &addrs, b, &flags)
            .unwrap();
        s.wait_healthy().await;
        load.wait_progress(20, Duration::from_secs(30)).await;
        if b == first_master {
            master_window = Some((began, Instant::now()));
        }
    }
    let g2 = s.wait_healthy().await;
    assert_ne!(
        g2.master,
        Some(first_master),
        "the master's restart fails over"
    );
    assert_eq!(
        g2.master_epoch,
        g.master_epoch + 1,
        "exactly one failover: {g:?} -> {g2:?}"
    );
    let (from, to) = master_window.unwrap();
    let pause = load.longest_pause(from, to);
    let master = &s.brokers[g2.master.unwrap() as usize].grpc;
    let mut admin = BrokerAdminClient::connect(format!("http://{master}"))
        .await
        .unwrap();
    let st = admin
        .replication_status(ReplicationStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let versions: Vec<u32> = st.slaves.iter().map(|x| x.protocol_version).collect();
    assert_eq!(
        versions,
        [3, 3],
        "slave sessions after the upgrade: {:?}",
        st.slaves
    );
    let (acked, failed) = load.stop().await;
    assert_eq!(failed, 0, "sends failed during the upgrade");
    eprintln!(
        "rolling upgrade ({}): {} acked, 0 failed, one failover; longest pause without an ack while the master restarted: {} ms",
        if next.is_some() {
            "SOFAMQ_NEXT_BIN"
        } else {
            "flags"
        },
        acked.len(),
        pause.as_millis()
    );
    check_logs(&mut s.brokers, &acked);
}
