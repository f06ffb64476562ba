//! The short chaos set: each scenario runs a real cluster (namesrv, master, slave) with faults
//! for a few seconds, drains, and the checker must find nothing lost, unexpected, aborted,
//! duplicated or divergent. One more run uses the broken build (acks before replication) and
//! must be caught losing acked messages. Needs the `sofamq` binary (`scripts/test.sh` builds it).
//! The scenarios run one at a time (they share 2 cores).

use std::time::Duration;

use sofamq_testkit::chaos::{self, Failover, Outcome, Report, ScenarioOptions};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn secs() -> u64 {
    std::env::var("SOFAMQ_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12)
}

async fn scenario(name: &str, seed: u64, failover: Failover, unsafe_ack: bool) -> Report {
    let _g = ONE_AT_A_TIME.lock().await;
    let opts = ScenarioOptions {
        duration: Duration::from_secs(secs()),
        seed,
        failover,
        unsafe_ack_before_replication: unsafe_ack,
        max_rounds: None,
        leave_dead: false,
    };
    let out = tokio::time::timeout(Duration::from_secs(180), chaos::run(name, &opts))
        .await
        .unwrap_or_else(|_| panic!("{name} did not finish within 180 s"))
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let Outcome::Checked(r) = out else {
        panic!("{name} skipped: {out:?}")
    };
    eprintln!("{}", chaos::table(std::slice::from_ref(&r)));
    eprintln!("{}", chaos::checker::special_row(&r));
    for e in &r.examples {
        eprintln!("  {e}");
    }
    r
}

async fn must_pass(name: &str, seed: u64, failover: Failover) {
    let r = scenario(name, seed, failover, false).await;
    assert!(r.pass(), "{name} failed the checker: {r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_master_kill() {
    must_pass("master-kill", 1, Failover::Controller).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_slave_kill() {
    must_pass("slave-kill", 2, Failover::Manual).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_master_pause() {
    must_pass("master-pause", 3, Failover::Controller).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_partition() {
    must_pass("partition", 4, Failover::Manual).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_link_flaps() {
    must_pass("link-flaps", 5, Failover::Manual).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_disk_full() {
    let r = scenario("disk-full", 6, Failover::Manual, false).await;
    assert!(r.pass(), "disk-full failed the checker: {r:#?}");
    assert!(
        r.failed + r.unknown > 0,
        "the disk budget never refused a send: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_enospc() {
    if let Some(why) = sofamq_testkit::disk::LoopDisk::unavailable() {
        eprintln!("chaos_enospc skipped: {why}");
        return;
    }
    let r = scenario("enospc", 16, Failover::Manual, false).await;
    assert!(r.pass(), "enospc failed the checker: {r:#?}");
    assert!(
        r.failed + r.unknown > 0,
        "no full disk ever refused a send: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_torn_write() {
    must_pass("torn-write", 7, Failover::Manual).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_rolling_restart() {
    must_pass("rolling-restart", 8, Failover::Controller).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_controller_leader_kill() {
    must_pass("controller-leader-kill", 9, Failover::Controller).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_master_and_controller_leader_kill() {
    must_pass("master-controller-kill", 10, Failover::Controller).await;
}

/// Timers pending across kill -9 of the master and a controller failover: none fires early,
/// none later than the bound, none is lost (the checker's lost count covers timers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_timer_failover() {
    let r = scenario("timer-failover", 11, Failover::Controller, false).await;
    assert!(r.pass(), "timer-failover failed the checker: {r:#?}");
    assert!(r.rounds >= 1 && r.timers > 0, "nothing exercised: {r:?}");
}

/// Half messages open across kill -9 of the master and a controller failover: no rolled-back
/// or never-committed one delivered, no committed one lost, the check-back reaches a producer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_txn_failover() {
    let r = scenario("txn-failover", 12, Failover::Controller, false).await;
    assert!(r.pass(), "txn-failover failed the checker: {r:#?}");
    assert!(
        r.rounds >= 1 && r.txn_committed > 0,
        "nothing exercised: {r:?}"
    );
    assert!(r.txn_checks > 0, "no check-back answered: {r:?}");
}

/// The broken build (min_insync_replicas = 1: the master acks before the slave has the
/// message) loses acked messages when the master dies while the slave lags, and the checker
/// says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_broken_build_is_caught() {
    // Manual failover: the operator promotes the lagging slave. (Under the controller the
    // in-sync rule refuses that election, so even this build loses nothing there.)
    let r = scenario("master-kill", 1, Failover::Manual, true).await;
    assert!(r.lost() > 0, "the checker missed the broken build: {r:#?}");
    assert!(!r.pass());
}

/// The official Python client (4 producers, a SimpleConsumer, a PushConsumer, each in its
/// default configuration) through 2 kills of the master, the killed broker restarted after
/// 1 s, through the name server's proxy: nothing acked lost or stored twice, every consumer
/// receives every acked message, no send fails after the client's own retries, and no
/// producer or consumer goes more than 8 s without an OK or a receipt (before the proxy:
/// about 17 s and thousands of failed sends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_official_python() {
    let _g = ONE_AT_A_TIME.lock().await;
    let opts = ScenarioOptions {
        duration: Duration::from_secs(30),
        seed: 1,
        failover: Failover::Controller,
        unsafe_ack_before_replication: false,
        max_rounds: Some(2),
        leave_dead: false,
    };
    let out = tokio::time::timeout(
        Duration::from_secs(400),
        chaos::run("official-python", &opts),
    )
    .await
    .expect("official-python did not finish within 400 s")
    .unwrap_or_else(|e| panic!("official-python: {e:#}"));
    let Outcome::Official(r) = out else {
        panic!("official-python skipped: {out:?}")
    };
    eprintln!("{}", r.render());
    assert_eq!(
        r.consumers.len(),
        2,
        "a SimpleConsumer and a PushConsumer ran"
    );
    let broken = r.violations(true);
    assert!(broken.is_empty(), "official-python: {broken:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_eio() {
    if let Some(why) = sofamq_lazyfs::LazyFs::unavailable() {
        eprintln!("chaos_eio skipped: {why}");
        return;
    }
    let r = scenario("eio", 17, Failover::Controller, false).await;
    assert!(r.pass(), "eio failed the checker: {r:#?}");
    assert!(r.rounds > 0, "no round ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_eio_thin() {
    if let Some(why) = sofamq_testkit::disk::LoopDisk::unavailable() {
        eprintln!("chaos_eio_thin skipped: {why}");
        return;
    }
    let r = scenario("eio-thin", 23, Failover::Controller, false).await;
    assert!(r.pass(), "eio-thin failed the checker: {r:#?}");
    assert!(r.rounds > 0, "no round ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_bit_flip() {
    let r = scenario("bit-flip", 18, Failover::Controller, false).await;
    assert!(r.pass(), "bit-flip failed the checker: {r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_file_damage() {
    let r = scenario("file-damage", 22, Failover::Controller, false).await;
    assert!(r.pass(), "file-damage failed the checker: {r:#?}");
    assert!(r.rounds > 0, "no round ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_segment_loss() {
    let r = scenario("segment-loss", 19, Failover::Controller, false).await;
    assert!(r.pass(), "segment-loss failed the checker: {r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_clock_jump() {
    let r = scenario("clock-jump", 20, Failover::Controller, false).await;
    assert!(r.pass(), "clock-jump failed the checker: {r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_power_loss() {
    if let Some(why) = sofamq_lazyfs::LazyFs::unavailable() {
        eprintln!("chaos_power_loss skipped: {why}");
        return;
    }
    let r = scenario("power-loss", 21, Failover::Controller, false).await;
    assert!(r.pass(), "power-loss failed the checker: {r:#?}");
}
