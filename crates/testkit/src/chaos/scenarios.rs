//! The scenarios: each starts a cluster and the workload, injects one kind of fault in rounds
//! (timing drawn from a seeded RNG) until the duration is up, heals everything, drains every
//! queue, reads the master's and slave's logs offline and runs the checker.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::checker::{Report, check};
use super::cluster::{ChaosCluster, ClusterOptions, Failover, has_controller};
use super::history::History;
pub use super::rng::Rng;
use super::workload::{Workload, WorkloadConfig};
use crate::disk::LoopDisk;
use crate::official;
use crate::proxy::LinkMode;

/// Every scenario: name and what it does.
pub const SCENARIOS: &[(&str, &str)] = &[
    (
        "master-kill",
        "stall replication until the slave leaves the in-sync set, kill -9 the master, fail over to the slave, restart the old master as slave",
    ),
    (
        "slave-kill",
        "kill -9 the slave and restart it (sends block meanwhile)",
    ),
    ("master-pause", "SIGSTOP the master for 1-3 s, then SIGCONT"),
    (
        "partition",
        "cut or blackhole the master-slave replication link for 1-4 s, then heal",
    ),
    (
        "link-flaps",
        "flap the client-master link: cut, blackhole or stall for 0.1-0.8 s, pass for 0.2-1 s",
    ),
    (
        "disk-full",
        "the master's disk budget fills mid-run: sends fail, reads and acks keep working",
    ),
    (
        "power-loss",
        "every broker's and controller's data on a power-loss filesystem of its own (LazyFs, FUSE): cut power to the master (the controller elects the slave), the slave, both at once, or the controller leader's node: the process is killed -9 and what it did not fsync is lost, kept in part or torn; then it restarts (needs root, /dev/fuse and a controller)",
    ),
    (
        "enospc",
        "each broker on a 64 MiB ext4 of its own (loop device): fill the master's, the slave's or both disks to ENOSPC for 1-3 s, then free them; sends fail and nothing is acked meanwhile, and both logs take writes again without a restart (needs root)",
    ),
    (
        "eio",
        "each broker's data on a LazyFs (FUSE) that can fail like a dying disk: by round, the master's fdatasync (its unsynced pages dropped) or its writes answer a real EIO; its log must fence and say why (log, /metrics, /health, admin status), the controller must elect the slave at once; then the old master is killed, the device healed, and it rejoins as a slave (needs root, /dev/fuse and a controller)",
    ),
    (
        "eio-thin",
        "each broker on a 64 MiB ext4 whose loop image sits on a tmpfs: starve the master's tmpfs so its next fdatasync gets a real EIO; its log must fence and say why, the controller must elect the slave at once; then the old master is killed, its filesystem repaired (e2fsck) and it rejoins as a slave (needs root and a controller)",
    ),
    (
        "bit-flip",
        "rounds rotate: kill -9 the slave, or the master (after the controller elects the slave), flip one byte of its log below its durable offset, restart it as slave: it must open fenced, cut its log where the damage begins (keeping the cut bytes aside), fetch the range again from the master and be in sync again, never elected meanwhile; then flip a byte in a sealed segment of the running slave, or of the running master: its scrub must find it within 15 s and fence the log, a master must be replaced by its slave, and the victim must cut, fetch the range again and be in sync without a restart (64 KiB segments; needs a controller)",
    ),
    (
        "segment-loss",
        "kill -9 the slave (even rounds) or the master (odd rounds, after the controller elects the slave), then truncate a sealed segment, remove a sealed segment, truncate the active segment below the durable offset or remove the active segment (64 KiB segments), restart it as slave: a loss below the durable offset must open fenced and be repaired from the master, never elected meanwhile (needs a controller)",
    ),
    (
        "file-damage",
        "rounds rotate over five damages: zero a 4 KiB block of a stopped broker's log below its durable offset; flip a byte of a record of a stopped follower controller's Raft log; corrupt an epoch-history entry that is not its last, remove the epoch file or lose its last entry; damage its checkpoint (flip, zero, cut short, remove); swap two old entries of a consume queue. The broker (the slave or, after failover, the old master: over 10 rounds each role meets each damage) restarts as slave: a damaged log or epoch history must fence, be cut and fetched again, never elected meanwhile; a damaged checkpoint costs a full scan and nothing else; a damaged queue must be found by the scrub and rebuilt from the log at the next restart. The controller must catch up from the leader, voting again only then (needs a controller)",
    ),
    (
        "clock-jump",
        "every process under libfaketime with a wall clock of its own: jump the master's, the slave's, the controller leader's or every node's wall clock by 30 s to 30 min forward or back (absolute offsets, monotonic clocks untouched); sends must go on within 10 s; odd rounds also kill -9 the master while the clocks disagree, the controller elects the slave (needs a controller and libfaketime)",
    ),
    (
        "torn-write",
        "kill -9 the master, append a torn record to its last segment, restart it",
    ),
    (
        "rolling-restart",
        "restart the namesrv, the slave, then switch over and restart the old master",
    ),
    (
        "controller-leader-kill",
        "kill -9 the controller leader and restart it (needs controller)",
    ),
    (
        "master-controller-kill",
        "kill -9 the master and the controller leader together (needs controller)",
    ),
    (
        "timer-failover",
        "timers (0.5-8 s delays) pending while the master is killed -9, the controller fails over, the old master returns as slave (needs controller)",
    ),
    (
        "official-python",
        "the official Python client 5.1.2 (4 producers, a SimpleConsumer, a PushConsumer) through kill -9 of the master every 15 s; the killed broker restarts after 1 s, or stays dead with --leave-dead (needs controller)",
    ),
    (
        "official-node",
        "the official Node client 1.0.8 (4 producers) through kill -9 of the master every 15 s, as official-python (needs controller, node, npm)",
    ),
    (
        "official-rust",
        "the official Rust client 5.0.0 (4 producers) through kill -9 of the master every 15 s, as official-python (needs controller, cargo)",
    ),
    (
        "txn-failover",
        "half messages open (commit, rollback, check-back commit, abandoned) while the master is killed -9, the controller fails over, the old master returns as slave (needs controller)",
    ),
];

/// The short set run in CI.
pub const CI_SET: &[&str] = &[
    "master-kill",
    "slave-kill",
    "master-pause",
    "partition",
    "link-flaps",
    "disk-full",
    "power-loss",
    "enospc",
    "eio",
    "eio-thin",
    "bit-flip",
    "segment-loss",
    "file-damage",
    "clock-jump",
    "torn-write",
    "timer-failover",
    "txn-failover",
    "official-python",
];

/// The DELAY topic of the timer scenario, the TRANSACTION topic of the transaction one.
const TIMER_TOPIC: &str = "chaos-timer";
const TXN_TOPIC: &str = "chaos-txn";
/// A timer that fires later than this after its due time is a failure: a round's outage
/// (detection, election, first write of the new master) is a few seconds.
const TIMER_LATE_BOUND_MS: i64 = 15_000;
/// Check-back timing of the transaction scenario (`[transaction]` of the brokers).
const TXN_TOML: &str =
    "[transaction]\ncheck_delay_ms = 1000\ncheck_interval_ms = 1000\nmax_checks = 5\n";

/// What a broker's log says once it repaired a damaged range from the master.
const REPAIRED: &str = "damaged log range repaired from the master";

/// The largest wall-clock jump of `clock-jump`, seconds: past the idempotency window
/// (`dedup_window_ms`, 10 min), which must not forget ids when a clock jumps.
const MAX_JUMP_S: u64 = 1800;

/// libfaketime's path (`scripts/chaos/setup-faketime.sh` installs it where it can), or why
/// there is none.
fn faketime_lib() -> Result<std::path::PathBuf, String> {
    let script = crate::repo_root().join("scripts/chaos/setup-faketime.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("needs libfaketime: running {}: {e}", script.display()))?;
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    if !out.status.success() || path.is_empty() {
        return Err("needs libfaketime (Debian package libfaketime)".into());
    }
    Ok(path.into())
}

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct ScenarioOptions {
    /// Fault phase length.
    pub duration: Duration,
    /// RNG seed for fault timing.
    pub seed: u64,
    /// Failover strategy.
    pub failover: Failover,
    /// The broken build: `min_insync_replicas = 1`, acks before the slave has the message.
    pub unsafe_ack_before_replication: bool,
    /// Stop the fault phase after this many rounds even before `duration` is up.
    pub max_rounds: Option<u32>,
    /// `official-*`: the killed broker stays dead for the kill's window (variant B) rather
    /// than restarting after 1 s.
    pub leave_dead: bool,
}

/// What a scenario run produced.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per scenario run
pub enum Outcome {
    /// The checker's verdict.
    Checked(Report),
    /// An `official-*` scenario: the figures of issue 15 (judge with
    /// [`official::Report::violations`]).
    Official(official::Report),
    /// Not run, and why (e.g. "needs controller").
    Skipped(String),
}

fn needs_controller(name: &str) -> bool {
    matches!(
        name,
        "controller-leader-kill"
            | "master-controller-kill"
            | "timer-failover"
            | "txn-failover"
            | "eio"
            | "eio-thin"
            | "bit-flip"
            | "segment-loss"
            | "file-damage"
            | "clock-jump"
            | "power-loss"
    ) || name.starts_with("official-")
}

/// Runs scenario `name`.
pub async fn run(name: &str, o: &ScenarioOptions) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        SCENARIOS.iter().any(|(n, _)| *n == name),
        "unknown scenario {name:?}; known: {}",
        SCENARIOS
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut failover = o.failover;
    if needs_controller(name) {
        if !has_controller() {
            return Ok(Outcome::Skipped(
                "needs controller: this sofamq has no `controller` subcommand".into(),
            ));
        }
        failover = Failover::Controller;
    }
    if failover == Failover::Controller && !has_controller() {
        return Ok(Outcome::Skipped(
            "needs controller: this sofamq has no `controller` subcommand".into(),
        ));
    }
    if let Some(client) = name.strip_prefix("official-") {
        return run_official(client, o).await;
    }
    if matches!(name, "enospc" | "eio-thin")
        && let Some(why) = LoopDisk::unavailable()
    {
        return Ok(Outcome::Skipped(why));
    }
    if matches!(name, "power-loss" | "eio")
        && let Some(why) = sofamq_lazyfs::LazyFs::unavailable()
    {
        return Ok(Outcome::Skipped(why));
    }
    let fake_clocks = if name == "clock-jump" {
        match faketime_lib() {
            Ok(lib) => Some(lib),
            Err(why) => return Ok(Outcome::Skipped(why)),
        }
    } else {
        None
    };
    let secs = o.duration.as_secs().max(1);
    let copts = ClusterOptions {
        fake_clocks,
        lazyfs: matches!(name, "power-loss" | "eio"),
        failover,
        min_insync: if o.unsafe_ack_before_replication {
            1
        } else {
            2
        },
        // About a third of the way into the run at the workload's ~45 KiB/s.
        master_disk_budget: (name == "disk-full").then(|| 96 * 1024 + secs * 15 * 1024),
        loop_disk_mib: matches!(name, "enospc" | "eio-thin").then_some(64),
        thin_disks: name == "eio-thin",
        extra_topics: match name {
            "timer-failover" => vec![(TIMER_TOPIC.into(), "DELAY".into())],
            "txn-failover" => vec![(TXN_TOPIC.into(), "TRANSACTION".into())],
            "clock-jump" => vec![(PROBE_TOPIC.into(), "NORMAL".into())],
            _ => Vec::new(),
        },
        broker_toml: match name {
            "txn-failover" => TXN_TOML.into(),
            // Small segments, so that sealed ones exist within a short run.
            "segment-loss" => "segment_bytes = 65536\n".into(),
            // No zero-fill ahead: the zeros it keeps written past the log's end take up to
            // 16 MiB of appends on a full disk without a refusal, and this workload writes
            // ~45 KiB/s, so a 1-3 s fill of the disk would be absorbed whenever the zeros
            // reach far enough. The fill itself on a full disk is the store test
            // `a_failed_write_of_zeros_stops_the_fill_and_appends_go_on`.
            "enospc" => "prefill_bytes = 0\n".into(),
            // Sealed segments for the running-broker flips, and a scrub that finds them fast.
            "bit-flip" | "file-damage" => {
                "segment_bytes = 65536\nscrub_bytes_per_sec = 67108864\nscrub_pause_secs = 1\n"
                    .into()
            }
            _ => String::new(),
        },
        ..ClusterOptions::default()
    };
    let mut c = ChaosCluster::start(copts).await?;
    let mut w = WorkloadConfig::new(&c.namesrv_addr, &c.opts.topic);
    match name {
        "timer-failover" => {
            w.producers = 2;
            w.timer_producers = 2;
            w.timer_topic = TIMER_TOPIC.into();
        }
        "txn-failover" => {
            w.producers = 2;
            w.txn_producers = 2;
            w.txn_topic = TXN_TOPIC.into();
            // Check delay + max checks x interval, and a failover's worth.
            w.txn_settle = Duration::from_secs(12);
        }
        _ => {}
    }
    let mut w = Workload::start(w).await?;
    anyhow::ensure!(
        w.wait_acked(20, Duration::from_secs(30)).await,
        "no sends acked before the faults"
    );
    let mut rng = Rng::new(o.seed);
    let deadline = Instant::now() + o.duration;
    let mut rounds = Rounds {
        done: 0,
        max: o.max_rounds,
        deadline,
        repairs: Vec::new(),
    };
    let fault_error = faults(name, &mut c, &w, &mut rng, &mut rounds)
        .await
        .err()
        .map(|e| format!("{e:#}"));
    if let Some(e) = &fault_error {
        tracing_note(&format!("{name}: fault phase error: {e}"));
    }
    heal(&mut c).await.context("healing")?;
    // Liveness after the heal (not required for a disk that stays full).
    if name != "disk-full" && !w.wait_acked(5, Duration::from_secs(20)).await {
        tracing_note(&format!("{name}: no sends acked after the heal"));
        // A full disk that was freed must not leave a broker refusing writes.
        anyhow::ensure!(
            name != "enospc",
            "enospc: no sends acked within 20 s of freeing the disks"
        );
    }
    if name == "enospc" {
        // No log may have fenced: a full disk is refused and given back, never fatal.
        for e in std::fs::read_dir(c.log_dir())?.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("commit log fenced")) {
                anyhow::bail!(
                    "enospc: {} fenced its log after a full disk: {line}",
                    e.file_name().to_string_lossy()
                );
            }
        }
    }
    w.stop_producers().await;
    w.drain(
        Duration::from_secs(2),
        Duration::from_secs(10),
        Duration::from_secs(60),
    )
    .await?;
    let (sends, reads) = w.take();
    let txn_checks = w.checks();
    drop(w);
    let caught_up = c.wait_caught_up(Duration::from_secs(15)).await;
    if !caught_up {
        tracing_note(&format!("{name}: slave not caught up at the end"));
    }
    c.stop_all().await;
    let m = c.master;
    let master = c.log_digest(m).await?;
    let slave = c.log_digest(c.peer(m)).await?;
    let h = History {
        sends,
        reads,
        audited: true,
        log_pairs: vec![(master, slave)],
        timer_late_bound_ms: TIMER_LATE_BOUND_MS,
        txn_checks,
    };
    let mut report = check(name, &h);
    report.rounds = rounds.done;
    report.fault_error = fault_error;
    report.repair_ms = rounds
        .repairs
        .iter()
        .map(|d| d.as_millis() as u64)
        .collect();
    if o.unsafe_ack_before_replication {
        report.scenario = format!("{name}(unsafe)");
    }
    Ok(Outcome::Checked(report))
}

/// An official client through master kills (the harness of [`official`]): one kill per
/// round, every 15 s, `max_rounds` of them or as many as fit in `duration`.
async fn run_official(client: &str, o: &ScenarioOptions) -> anyhow::Result<Outcome> {
    let client = official::OfficialClient::parse(client)?;
    let driver = match official::driver(client)? {
        Ok(d) => d,
        Err(why) => return Ok(Outcome::Skipped(why)),
    };
    let kills = o.max_rounds.map_or_else(
        || (o.duration.as_secs() / 15).max(1) as usize,
        |r| r.max(1) as usize,
    );
    let mut s = official::Scenario::standard(client, !o.leave_dead, kills);
    if client == official::OfficialClient::Python {
        s.consumers = vec![official::ConsumerMode::Simple, official::ConsumerMode::Push];
    }
    Ok(Outcome::Official(official::run(&s, &driver).await?))
}

fn tracing_note(s: &str) {
    eprintln!("chaos: {s}");
}

/// Brings every process back, heals every link and waits for a master with an in-sync slave.
async fn heal(c: &mut ChaosCluster) -> anyhow::Result<()> {
    c.heal_links();
    for i in 0..c.brokers.len() {
        if let Some(pid) = c.brokers[i].pid() {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }
    for i in 0..c.controllers.len() {
        if !controller_running(c, i) {
            c.start_controller(i).await?;
        }
    }
    if c.opts.failover == Failover::Controller {
        for i in 0..c.brokers.len() {
            if !c.brokers[i].running() {
                let peer = c.peer(i);
                c.start_broker(i, Some(peer)).await?;
            }
        }
    } else {
        if !c.brokers[c.master].running() {
            let dead = c.master;
            c.fail_over(dead).await?;
        }
        let s = c.peer(c.master);
        if !c.brokers[s].running() {
            c.restart_as_slave(s).await?;
        }
    }
    c.settle(Duration::from_secs(30)).await
}

fn controller_running(c: &ChaosCluster, i: usize) -> bool {
    c.controllers.get(i).is_some_and(|_| {
        // A controller the kit killed has no process; the cluster tracks that.
        c.controller_alive(i)
    })
}

async fn sleep(d: Duration) {
    tokio::time::sleep(d).await;
}

fn left(deadline: Instant) -> bool {
    Instant::now() < deadline
}

/// The fault rounds: begun so far, the most to run, and the end of the fault phase.
struct Rounds {
    done: u32,
    max: Option<u32>,
    deadline: Instant,
    /// How long each repair took (see [`Report::repair_ms`]).
    repairs: Vec<Duration>,
}

impl Rounds {
    /// Whether to begin another round (and count it).
    fn next(&mut self) -> bool {
        if !left(self.deadline) || self.max.is_some_and(|m| self.done >= m) {
            return false;
        }
        self.done += 1;
        true
    }
}

/// The fault loop of one scenario.
async fn faults(
    name: &str,
    c: &mut ChaosCluster,
    w: &Workload,
    rng: &mut Rng,
    rounds: &mut Rounds,
) -> anyhow::Result<()> {
    let deadline = rounds.deadline;
    match name {
        "master-kill" => {
            while rounds.next() {
                sleep(rng.ms(1000, 3000)).await;
                let m = c.master;
                // Make the slave lag until it leaves the in-sync set (max_lag_ms), so acks the
                // master gives alone (the broken build) are not on the slave when it dies. A
                // correct master acks nothing meanwhile.
                c.brokers[m].repl_proxy.set(LinkMode::Stall);
                let lag = c.opts.max_lag_ms;
                w.wait_acked(10, rng.ms(lag + 500, lag + 1500)).await;
                c.kill9(m);
                c.brokers[m].repl_proxy.heal();
                sleep(rng.ms(200, 1000)).await;
                c.fail_over(m).await?;
                sleep(rng.ms(200, 1500)).await;
                c.restart_as_slave(m).await?;
                c.settle(Duration::from_secs(30)).await?;
            }
        }
        "slave-kill" => {
            while rounds.next() {
                sleep(rng.ms(1000, 3000)).await;
                let s = c.peer(c.master);
                c.kill9(s);
                sleep(rng.ms(300, 2000)).await;
                c.restart_as_slave(s).await?;
                c.settle(Duration::from_secs(30)).await?;
            }
        }
        "master-pause" => {
            while rounds.next() {
                sleep(rng.ms(1000, 3000)).await;
                c.pause(c.master)?;
                sleep(rng.ms(1000, 3000)).await;
                c.resume(c.master)?;
                c.settle(Duration::from_secs(30)).await?;
            }
        }
        "partition" => {
            while rounds.next() {
                sleep(rng.ms(1000, 3000)).await;
                let mode = if rng.below(2) == 0 {
                    LinkMode::Cut
                } else {
                    LinkMode::Drop
                };
                let m = c.master;
                c.brokers[m].repl_proxy.set(mode);
                sleep(rng.ms(1000, 4000)).await;
                c.brokers[m].repl_proxy.heal();
                c.settle(Duration::from_secs(30)).await?;
            }
        }
        "link-flaps" => {
            while rounds.next() {
                let mode = match rng.below(3) {
                    0 => LinkMode::Cut,
                    1 => LinkMode::Drop,
                    _ => LinkMode::Stall,
                };
                let m = c.master;
                c.brokers[m].client_proxy.set(mode);
                sleep(rng.ms(100, 800)).await;
                c.brokers[m].client_proxy.heal();
                sleep(rng.ms(200, 1000)).await;
            }
        }
        "disk-full" => {
            // The budget fills by itself; keep going until the end.
            while left(deadline) {
                sleep(Duration::from_millis(200)).await;
            }
        }
        "enospc" => {
            while rounds.next() {
                sleep(rng.ms(1000, 3000)).await;
                let m = c.master;
                let full: Vec<usize> = match rng.below(3) {
                    0 => vec![m],
                    1 => vec![c.peer(m)],
                    _ => vec![m, c.peer(m)],
                };
                let mut filled = Ok(());
                for &i in &full {
                    if let Some(d) = &c.brokers[i].disk {
                        filled = filled.and(d.fill(0).map(drop));
                    }
                }
                if filled.is_ok() {
                    sleep(rng.ms(1000, 3000)).await;
                }
                // Freed whether or not every fill worked: a disk left full would fail the heal.
                for &i in &full {
                    if let Some(d) = &c.brokers[i].disk {
                        d.free()?;
                    }
                }
                filled?;
                tracing_note(&format!(
                    "enospc: filled {:?}",
                    full.iter().map(|&i| &c.brokers[i].name).collect::<Vec<_>>()
                ));
                c.settle(Duration::from_secs(30)).await?;
            }
        }
        "eio" | "eio-thin" => {
            let mut round = 0u64;
            while rounds.next() {
                sleep(rng.ms(1000, 3000)).await;
                let fault = if name == "eio-thin" {
                    EioFault::Thin
                } else if round.is_multiple_of(2) {
                    EioFault::Fuse(sofamq_lazyfs::IoFault::Fsync)
                } else {
                    EioFault::Fuse(sofamq_lazyfs::IoFault::Write)
                };
                round += 1;
                rounds.repairs.push(eio_round(c, fault).await?);
            }
        }
        "bit-flip" => {
            let mut round = 0u64;
            while rounds.next() {
                sleep(rng.ms(1000, 3000)).await;
                // Rounds 0, 1 mod 4: a stopped slave / master (recovery finds the flip);
                // 2, 3: a running slave / master (only the scrub finds it).
                let victim = if round.is_multiple_of(2) {
                    c.peer(c.master)
                } else {
                    c.master
                };
                let live = round % 4 >= 2;
                round += 1;
                let name = c.brokers[victim].name.clone();
                if live {
                    if let Some(took) = flip_live(c, victim, rng.next_u64()).await? {
                        rounds.repairs.push(took);
                    }
                    continue;
                }
                c.kill9(victim);
                if victim == c.master {
                    c.fail_over(victim).await?;
                }
                let Some(at) = c.flip_durable_byte(victim, rng.next_u64())? else {
                    tracing_note(&format!(
                        "bit-flip: {name}'s durable log too short; no flip"
                    ));
                    c.restart_as_slave(victim).await?;
                    c.settle(Duration::from_secs(30)).await?;
                    continue;
                };
                let repaired_before = log_mentions(c.log_dir(), &name, REPAIRED)?;
                let restarted = Instant::now();
                c.restart_as_slave(victim).await?;
                c.settle(Duration::from_secs(30)).await?;
                let took = restarted.elapsed();
                wait_repaired(
                    c,
                    &name,
                    repaired_before,
                    &format!("bit-flip: byte {at} flipped"),
                )
                .await?;
                rounds.repairs.push(took);
                tracing_note(&format!(
                    "bit-flip: {name} byte {at} flipped; cut, fetched again and in sync {:.1} s after its restart",
                    took.as_secs_f64()
                ));
            }
        }
        "segment-loss" => {
            let mut round = 0u64;
            while rounds.next() {
                sleep(rng.ms(1000, 3000)).await;
                let victim = if round.is_multiple_of(2) {
                    c.peer(c.master)
                } else {
                    c.master
                };
                let name = c.brokers[victim].name.clone();
                c.kill9(victim);
                if victim == c.master {
                    c.fail_over(victim).await?;
                }
                // Over 8 rounds each victim role meets each kind once.
                let loss = c.lose_segment(victim, round + round / 2, rng.next_u64())?;
                round += 1;
                let repaired_before = log_mentions(c.log_dir(), &name, REPAIRED)?;
                let restarted = Instant::now();
                c.restart_as_slave(victim).await?;
                c.settle(Duration::from_secs(30)).await?;
                let took = restarted.elapsed();
                if loss.below_durable {
                    rounds.repairs.push(took);
                    let what = format!("segment-loss: {}", loss.what);
                    wait_repaired(c, &name, repaired_before, &what).await?;
                }
                tracing_note(&format!(
                    "segment-loss: {name}: {}; {} and in sync {:.1} s after its restart",
                    loss.what,
                    if loss.below_durable {
                        "fenced, cut, fetched again"
                    } else {
                        "above the durable offset: caught up"
                    },
                    took.as_secs_f64()
                ));
            }
        }
        "file-damage" => {
            use crate::chaos::cluster::FileDamage;
            let mut round = 0u64;
            while rounds.next() {
                sleep(rng.ms(1000, 3000)).await;
                let kind = round % 5;
                let victim = if (round / 5 + round % 5).is_multiple_of(2) {
                    c.peer(c.master)
                } else {
                    c.master
                };
                round += 1;
                if kind == 1 {
                    let took = damage_a_controller(c, rng.next_u64()).await?;
                    rounds.repairs.extend(took);
                    continue;
                }
                let name = c.brokers[victim].name.clone();
                c.kill9(victim);
                if victim == c.master {
                    c.fail_over(victim).await?;
                }
                // Over 10 rounds each broker role meets each damage once (1 is the controller).
                let mut kind = [
                    FileDamage::ZeroBlock,
                    FileDamage::ZeroBlock,
                    FileDamage::EpochEntry,
                    FileDamage::Checkpoint,
                    FileDamage::QueueEntries,
                ][kind as usize];
                let mut what = c.damage_file(victim, kind, rng.next_u64())?;
                if what.is_none() && kind != FileDamage::ZeroBlock {
                    kind = FileDamage::ZeroBlock;
                    what = c.damage_file(victim, kind, rng.next_u64())?;
                }
                let Some(what) = what else {
                    tracing_note(&format!("file-damage: {name}'s log too short; no damage"));
                    c.restart_as_slave(victim).await?;
                    c.settle(Duration::from_secs(30)).await?;
                    continue;
                };
                let repaired_before = log_mentions(c.log_dir(), &name, REPAIRED)?;
                // Counted before the restart: its scrub may find the damage at once.
                let found_before = log_mentions(c.log_dir(), &name, QUEUE_DAMAGED)?;
                let restarted = Instant::now();
                c.restart_as_slave(victim).await?;
                c.settle(Duration::from_secs(30)).await?;
                let mut took = restarted.elapsed();
                if kind == FileDamage::Checkpoint {
                    anyhow::ensure!(
                        log_mentions(c.log_dir(), &name, REPAIRED)? == repaired_before,
                        "file-damage: {name}: {what}, yet it cut and fetched its log again"
                    );
                } else if kind == FileDamage::QueueEntries {
                    // Found by the scrub, rebuilt by a second restart: from the first
                    // restart to settled after the second.
                    took = rebuild_queues(c, victim, &what, restarted, found_before).await?;
                    rounds.repairs.push(took);
                } else {
                    wait_repaired(c, &name, repaired_before, &format!("file-damage: {what}"))
                        .await?;
                    rounds.repairs.push(took);
                }
                tracing_note(&format!(
                    "file-damage: {name}: {what}; in sync {:.1} s after its restart",
                    took.as_secs_f64()
                ));
            }
        }
        "power-loss" => {
            use sofamq_lazyfs::Fate;
            let mut round = 0u64;
            while rounds.next() {
                sleep(rng.ms(1000, 3000)).await;
                let fate = match rng.below(3) {
                    0 => Fate::DropAll,
                    1 => Fate::KeepPrefix,
                    _ => Fate::Torn,
                };
                let m = c.master;
                let s = c.peer(m);
                let kind = round % 4;
                round += 1;
                let (who, cuts) = match kind {
                    0 => {
                        let r = c.power_cut(m, fate, rng.next_u64())?;
                        c.fail_over(m).await?;
                        (c.brokers[m].name.clone(), vec![r])
                    }
                    1 => (
                        c.brokers[s].name.clone(),
                        vec![c.power_cut(s, fate, rng.next_u64())?],
                    ),
                    2 => {
                        let a = c.power_cut(m, fate, rng.next_u64())?;
                        let b = c.power_cut(s, fate, rng.next_u64())?;
                        ("both brokers".to_string(), vec![a, b])
                    }
                    _ => {
                        let l = c
                            .controller_leader()
                            .await
                            .context("no controller leader")?;
                        let name = format!("controller-{}", c.controllers[l].id);
                        (name, vec![c.power_cut_controller(l, fate, rng.next_u64())?])
                    }
                };
                let cut = Instant::now();
                match kind {
                    0 => c.restart_as_slave(m).await?,
                    1 => c.restart_as_slave(s).await?,
                    // Both come back at once; the controller picks the master.
                    _ => heal(c).await?,
                }
                c.settle(Duration::from_secs(30)).await?;
                let took = cut.elapsed();
                rounds.repairs.push(took);
                let dropped: u64 = cuts.iter().map(|r| r.dropped_bytes()).sum();
                let kept: u64 = cuts.iter().map(|r| r.kept_bytes()).sum();
                let torn: usize = cuts.iter().map(|r| r.torn_files()).sum();
                tracing_note(&format!(
                    "power-loss: {who}: {fate:?}: {dropped} unsynced bytes lost, {kept} kept, {torn} files torn; settled {:.1} s after the restart",
                    took.as_secs_f64()
                ));
            }
        }
        "clock-jump" => {
            let mut round = 0u64;
            let mut offset_of = std::collections::HashMap::new();
            while rounds.next() {
                sleep(rng.ms(1000, 2500)).await;
                let m = c.master;
                let s = c.peer(m);
                let mut clocks = Vec::new();
                let who = match round % 4 {
                    0 => {
                        clocks.push(c.brokers[m].name.clone());
                        "the master"
                    }
                    1 => {
                        clocks.push(c.brokers[s].name.clone());
                        "the slave"
                    }
                    2 => {
                        let l = c
                            .controller_leader()
                            .await
                            .context("no controller leader")?;
                        clocks.push(format!("controller-{}", c.controllers[l].id));
                        "the controller leader"
                    }
                    _ => {
                        clocks = every_clock(c);
                        "every node"
                    }
                };
                // Each clock gets its own offset, so "every node" also disagree among themselves.
                let mut set = Vec::new();
                let mut offsets = Vec::new();
                for clk in &clocks {
                    let by = 30 + rng.below(MAX_JUMP_S - 30 + 1);
                    let by = if rng.below(2) == 0 {
                        by as i64
                    } else {
                        -(by as i64)
                    };
                    c.set_clock(clk, by)?;
                    set.push(format!("{clk} {by:+} s"));
                    offsets.push(by);
                }
                // libfaketime reads the offset again within a second: then the brokers whose
                // clock moved forward must show it in the Date of their HTTP answers (whole
                // seconds, so within 2 s). Not after a jump back: hyper keeps its cached
                // Date until the clock passes the second it last formatted, so only a clock
                // set past the furthest it ever was (a process restart aside) must show it.
                sleep(Duration::from_millis(1500)).await;
                for (clk, by) in clocks.iter().zip(&offsets) {
                    let furthest = offset_of.get(clk).copied().unwrap_or(0);
                    offset_of.insert(clk.clone(), furthest.max(*by));
                    if *by <= furthest {
                        continue;
                    }
                    if let Some(i) = c.brokers.iter().position(|b| &b.name == clk) {
                        let seen = wait_for(Duration::from_secs(5), || async {
                            c.clock_offset(i).await.filter(|o| (o - by).abs() <= 2)
                        })
                        .await;
                        anyhow::ensure!(
                            seen.is_some(),
                            "clock-jump: {clk}'s wall clock should be {by:+} s off, it is {:?}",
                            c.clock_offset(i).await
                        );
                    }
                }
                let jumped = Instant::now();
                anyhow::ensure!(
                    w.wait_acked(5, Duration::from_secs(10)).await,
                    "clock-jump: no sends acked within 10 s of moving the wall clock of {who} ({})",
                    set.join(", ")
                );
                let resumed = jumped.elapsed();
                let killed = round % 2 == 1;
                let mut probe = None;
                if killed {
                    // A send acked just before the kill and retried (same message id) after
                    // the failover must get its first receipt back, whatever the new
                    // master's wall clock says about the record's store timestamp.
                    let id = format!("CLOCKPROBE{round:04}");
                    probe = Some((id.clone(), send_probe(c, m, &id).await?));
                    // Failover while the clocks disagree: the old master's lease and the
                    // controller's timeouts must hold on their monotonic clocks.
                    sleep(rng.ms(200, 1000)).await;
                    c.kill9(m);
                    c.fail_over(m).await?;
                    sleep(rng.ms(200, 1000)).await;
                    c.restart_as_slave(m).await?;
                }
                c.settle(Duration::from_secs(30)).await?;
                if let Some((id, first)) = probe {
                    let again = send_probe(c, c.master, &id).await?;
                    anyhow::ensure!(
                        again == first,
                        "clock-jump: {id} was acked at queue offset {first} before the failover; \
                         retried after it ({who}: {}), it was stored again at {again}",
                        set.join(", ")
                    );
                }
                round += 1;
                tracing_note(&format!(
                    "clock-jump: {who}: {}; 5 sends acked {:.2} s after the clocks moved{}",
                    set.join(", "),
                    resumed.as_secs_f64(),
                    if killed {
                        "; master killed -9 and replaced"
                    } else {
                        ""
                    }
                ));
            }
            // Back to real time: one more jump for every clock.
            for clk in &every_clock(c) {
                c.set_clock(clk, 0)?;
            }
            anyhow::ensure!(
                w.wait_acked(5, Duration::from_secs(10)).await,
                "clock-jump: no sends acked within 10 s of setting every clock back"
            );
        }
        "torn-write" => {
            while rounds.next() {
                sleep(rng.ms(1000, 3000)).await;
                let m = c.master;
                c.kill9(m);
                let n = c.tear_tail(m, rng.next_u64())?;
                tracing_note(&format!("torn-write: appended {n} torn bytes"));
                // Restart it as the master (the slave never has more than the master).
                c.start_broker(m, None).await?;
                c.settle(Duration::from_secs(30)).await?;
            }
        }
        "rolling-restart" => {
            while rounds.next() {
                sleep(rng.ms(500, 1500)).await;
                c.stop_namesrv().await;
                sleep(rng.ms(100, 500)).await;
                c.start_namesrv().await?;
                let s = c.peer(c.master);
                c.stop(s).await;
                c.restart_as_slave(s).await?;
                c.settle(Duration::from_secs(30)).await?;
                let m = c.master;
                c.stop(m).await;
                c.fail_over(m).await?;
                c.restart_as_slave(m).await?;
                c.settle(Duration::from_secs(30)).await?;
            }
        }
        "controller-leader-kill" => {
            while rounds.next() {
                sleep(rng.ms(1000, 3000)).await;
                let l = c.controller_leader().await.context("no controller")?;
                c.kill9_controller(l);
                sleep(rng.ms(1000, 3000)).await;
                c.start_controller(l).await?;
            }
        }
        "master-controller-kill" => {
            while rounds.next() {
                sleep(rng.ms(1000, 3000)).await;
                let l = c.controller_leader().await.context("no controller")?;
                let m = c.master;
                c.kill9_controller(l);
                c.kill9(m);
                sleep(rng.ms(1000, 3000)).await;
                c.start_controller(l).await?;
                c.fail_over(m).await?;
                c.restart_as_slave(m).await?;
                c.settle(Duration::from_secs(30)).await?;
            }
        }
        "timer-failover" | "txn-failover" => {
            while rounds.next() {
                // Let timers and open transactions pile up, then kill the master under them.
                sleep(rng.ms(1500, 3000)).await;
                let m = c.master;
                c.kill9(m);
                sleep(rng.ms(200, 1000)).await;
                c.fail_over(m).await?;
                sleep(rng.ms(500, 2000)).await;
                c.restart_as_slave(m).await?;
                c.settle(Duration::from_secs(30)).await?;
            }
        }
        other => anyhow::bail!("unknown scenario {other}"),
    }
    Ok(())
}

/// Polls `f` every 100 ms until it gives a value or `max` passes.
async fn wait_for<T, F, Fut>(max: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + max;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        sleep(Duration::from_millis(100)).await;
    }
}

/// How often the log files of broker `name` (all of its starts) contain `needle`.
/// Every wall clock of a `fake_clocks` cluster: the namesrv's, each broker's, each controller's.
fn every_clock(c: &ChaosCluster) -> Vec<String> {
    let mut all = vec!["namesrv".to_string()];
    all.extend(c.brokers.iter().map(|b| b.name.clone()));
    all.extend(c.controllers.iter().map(|k| format!("controller-{}", k.id)));
    all
}

/// Waits (5 s at most) for broker `name`'s log to say `REPAIRED` once more than `before`
/// times: a replica in sync again after damage (`what`) must have repaired, not skipped it.
async fn wait_repaired(
    c: &ChaosCluster,
    name: &str,
    before: usize,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while log_mentions(c.log_dir(), name, REPAIRED)? == before {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: {name} is in sync but never said it repaired its log"
        );
        sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// How an `eio` round makes the master's disk fail.
#[derive(Debug, Clone, Copy)]
enum EioFault {
    /// Starve the tmpfs under its thin loop image ([`LoopDisk::starve`]): the loop
    /// device's write-back fails under ext4, fdatasync returns EIO (or ENOSPC).
    Thin,
    /// Its LazyFs answers EIO to this operation ([`sofamq_lazyfs::LazyFs::fail`]).
    Fuse(sofamq_lazyfs::IoFault),
}

/// One `eio` round: the master's disk fails; within 15 s its `/health` must answer 503
/// `fenced` with the reason (an I/O error), within 10 s more the controller must elect the
/// slave, and its log, `/metrics` and `sofamq admin status` must say it is fenced and why.
/// Then the kit kills it, heals the disk (e2fsck for a thin one) and restarts it as slave.
/// The time from the fault to the new master.
async fn eio_round(c: &mut ChaosCluster, fault: EioFault) -> anyhow::Result<Duration> {
    let m = c.master;
    let s = c.peer(m);
    let name_m = c.brokers[m].name.clone();
    let fenced_before = log_mentions(c.log_dir(), &name_m, "commit log fenced")?;
    match fault {
        EioFault::Thin => c.brokers[m]
            .disk
            .as_ref()
            .context("eio: no disk")?
            .starve()?,
        EioFault::Fuse(f) => c.brokers[m]
            .lazy
            .as_ref()
            .context("eio: no LazyFs")?
            .fail(Some(f)),
    }
    let failed = Instant::now();
    // `/health` answers 503 with the reason once the log is fenced.
    let fenced = wait_for(Duration::from_secs(15), || async {
        c.health(m).await.and_then(|(code, h)| {
            let r = h["fenced_reason"].as_str().unwrap_or_default();
            (code == 503 && h["status"] == "fenced" && !r.is_empty()).then(|| r.to_string())
        })
    })
    .await;
    let elected = match &fenced {
        Some(_) => {
            wait_for(Duration::from_secs(10), || async {
                c.status(s)
                    .await
                    .filter(|st| st["role"].as_str() == Some("master"))
            })
            .await
        }
        None => None,
    };
    let took = failed.elapsed();
    // Room again (or a healed device) before anything can fail: the repair needs it.
    match fault {
        EioFault::Thin => c.brokers[m].disk.as_ref().context("eio: no disk")?.feed()?,
        EioFault::Fuse(_) => c.brokers[m]
            .lazy
            .as_ref()
            .context("eio: no LazyFs")?
            .fail(None),
    }
    let reason = fenced.with_context(|| {
        format!("eio: {name_m} did not fence within 15 s of its disk failing ({fault:?})")
    })?;
    // The loop driver passes the starved tmpfs's error up as EIO or, for some write-backs,
    // as ENOSPC; either way fdatasync failed (a full disk on write() refuses the batch
    // instead, and never fences). The LazyFs answers EIO.
    let expected = match fault {
        EioFault::Thin => reason.contains("(os error 5)") || reason.contains("(os error 28)"),
        EioFault::Fuse(_) => reason.contains("(os error 5)"),
    };
    anyhow::ensure!(
        expected,
        "eio: {name_m} fenced for another reason: {reason}"
    );
    anyhow::ensure!(
        elected.is_some(),
        "eio: {} not master within 10 s of {name_m} fencing",
        c.brokers[s].name
    );
    anyhow::ensure!(
        log_mentions(c.log_dir(), &name_m, "commit log fenced")? > fenced_before,
        "eio: {name_m}'s log does not say it fenced"
    );
    anyhow::ensure!(
        c.metric(m, "sofamq_broker_fenced").await == Some(1.0),
        "eio: {name_m}'s /metrics does not show sofamq_broker_fenced 1"
    );
    anyhow::ensure!(
        c.status(m)
            .await
            .is_some_and(|st| st["fenced_reason"] == reason.as_str()),
        "eio: `sofamq admin status` of {name_m} does not give the fence reason"
    );
    c.kill9(m);
    c.master = s;
    let healed = match fault {
        EioFault::Thin => {
            let fsck = c.brokers[m]
                .disk
                .as_ref()
                .context("eio: no disk")?
                .repair()?;
            format!("e2fsck: {}", fsck.lines().last().unwrap_or_default())
        }
        EioFault::Fuse(f) => format!("{f:?} EIO healed"),
    };
    tracing_note(&format!(
        "eio: {name_m} fenced ({reason}); {} master {:.1} s after its disk failed; {healed}",
        c.brokers[s].name,
        took.as_secs_f64(),
    ));
    c.restart_as_slave(m).await?;
    c.settle(Duration::from_secs(30)).await?;
    Ok(took)
}

/// After two consume-queue entries of `victim` were swapped and it restarted: its scrub
/// must say within 15 s that a queue does not match the log; then it is killed and
/// restarted, must say it rebuilds every queue from the log, and the group must settle.
/// The time from the first restart to settled.
async fn rebuild_queues(
    c: &mut ChaosCluster,
    victim: usize,
    what: &str,
    restarted: Instant,
    found_before: usize,
) -> anyhow::Result<Duration> {
    let name = c.brokers[victim].name.clone();
    let rebuilt_before = log_mentions(c.log_dir(), &name, REBUILT)?;
    let deadline = restarted + Duration::from_secs(15);
    while log_mentions(c.log_dir(), &name, QUEUE_DAMAGED)? == found_before {
        if Instant::now() >= deadline {
            // Recovery re-dispatches the queue entries past the checkpoint's flushed
            // offset (or rebuilds every queue for its own reasons): if it rewrote these
            // two, the queue is whole again and there is nothing left to find.
            anyhow::ensure!(
                queue_head_in_order(&c.brokers[victim].store_dir(), what),
                "file-damage: {name}: {what}; its scrub did not find it within 15 s"
            );
            tracing_note(&format!(
                "file-damage: {name}: {what}; recovery rewrote the entries at the restart"
            ));
            return Ok(restarted.elapsed());
        }
        sleep(Duration::from_millis(100)).await;
    }
    c.kill9(victim);
    if victim == c.master {
        c.fail_over(victim).await?;
    }
    c.restart_as_slave(victim).await?;
    c.settle(Duration::from_secs(30)).await?;
    anyhow::ensure!(
        log_mentions(c.log_dir(), &name, REBUILT)? > rebuilt_before,
        "file-damage: {name}: {what}; the restart did not rebuild its consume queues"
    );
    Ok(restarted.elapsed())
}

/// Whether the first two entries of the queue named in `what` ("... consume queue T/Q
/// swapped") point at increasing log offsets again.
fn queue_head_in_order(store_dir: &std::path::Path, what: &str) -> bool {
    let Some(tq) = what
        .split("consume queue ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
    else {
        return false;
    };
    let Ok(b) = std::fs::read(store_dir.join("consumequeue").join(tq)) else {
        return false;
    };
    let at = |i: usize| {
        let mut o = [0u8; 8];
        o.copy_from_slice(&b[i * 20..i * 20 + 8]);
        u64::from_le_bytes(o)
    };
    b.len() >= 40 && at(0) < at(1)
}

/// The topic of `clock-jump`'s idempotence probes (outside the checked workload).
const PROBE_TOPIC: &str = "chaos-probe";

/// Sends message `id` (one queue, a fixed body) straight to broker `i` and returns the
/// queue offset of its receipt; fails unless it is answered OK within 10 s.
async fn send_probe(c: &ChaosCluster, i: usize, id: &str) -> anyhow::Result<i64> {
    use sofamq_proto::v2::{self, messaging_service_client::MessagingServiceClient};
    let addr = format!("http://{}", c.brokers[i].grpc);
    let msg = v2::Message {
        topic: Some(v2::Resource {
            name: PROBE_TOPIC.into(),
            ..Default::default()
        }),
        system_properties: Some(v2::SystemProperties {
            message_id: id.into(),
            message_type: v2::MessageType::Normal as i32,
            born_host: "chaos".into(),
            queue_id: 0,
            ..Default::default()
        }),
        body: format!("probe {id}").into_bytes().into(),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = async {
            let mut cl = MessagingServiceClient::connect(addr.clone()).await?;
            let mut req = tonic::Request::new(v2::SendMessageRequest {
                messages: vec![msg.clone()],
            });
            req.set_timeout(Duration::from_secs(3));
            anyhow::Ok(cl.send_message(req).await?.into_inner())
        }
        .await;
        let last = match r {
            Ok(r) => match r.entries.first() {
                Some(e)
                    if e.status
                        .as_ref()
                        .is_some_and(|s| s.code == v2::Code::Ok as i32) =>
                {
                    return Ok(e.offset);
                }
                _ => format!("{:?}", r.status),
            },
            Err(e) => e.to_string(),
        };
        anyhow::ensure!(
            Instant::now() < deadline,
            "probe {id} to {}: not acked within 10 s: {last}",
            c.brokers[i].name
        );
        sleep(Duration::from_millis(200)).await;
    }
}

/// What a store says when a consume queue does not match the log.
const QUEUE_DAMAGED: &str = "consume queue damaged";

/// What a store's recovery says when it rebuilds the consume queues from the log.
const REBUILT: &str = "rebuilding every consume queue from the commit log";

/// What a broker's log says when its scrub found damage.
const SCRUB_FOUND: &str = "found by the scrub";

/// Flips a byte in a sealed segment of running broker `victim` (a slave, or the master): its
/// scrub must find it within 15 s and fence the log; a master must then be replaced by its
/// slave; the victim, still running, must cut its log there, fetch the range again and be in
/// sync within 30 s, with no restart. The time from the flip to in sync.
async fn flip_live(
    c: &mut ChaosCluster,
    victim: usize,
    seed: u64,
) -> anyhow::Result<Option<Duration>> {
    let name = c.brokers[victim].name.clone();
    let role = if victim == c.master {
        "master"
    } else {
        "slave"
    };
    let found_before = log_mentions(c.log_dir(), &name, SCRUB_FOUND)?;
    let repaired_before = log_mentions(c.log_dir(), &name, REPAIRED)?;
    let Some(at) = c.flip_sealed_byte(victim, seed)? else {
        tracing_note(&format!(
            "bit-flip: {name}'s durable log too short; no flip"
        ));
        return Ok(None);
    };
    let flipped = Instant::now();
    let what = format!("bit-flip: byte {at} of running {role} {name} flipped");
    while log_mentions(c.log_dir(), &name, SCRUB_FOUND)? == found_before {
        anyhow::ensure!(
            flipped.elapsed() < Duration::from_secs(15),
            "{what}; its scrub did not find it within 15 s"
        );
        sleep(Duration::from_millis(100)).await;
    }
    let found = flipped.elapsed();
    while log_mentions(c.log_dir(), &name, REPAIRED)? == repaired_before {
        anyhow::ensure!(
            flipped.elapsed() < Duration::from_secs(30),
            "{what}; its scrub found it, but it did not repair its log within 30 s"
        );
        sleep(Duration::from_millis(100)).await;
    }
    c.settle(Duration::from_secs(30)).await?;
    anyhow::ensure!(
        role == "slave" || c.master != victim,
        "{what}; still the master after its scrub fenced its log"
    );
    let took = flipped.elapsed();
    tracing_note(&format!(
        "{what}; its scrub found it after {:.1} s; cut, fetched again and in sync {:.1} s after the flip, no restart",
        found.as_secs_f64(),
        took.as_secs_f64()
    ));
    Ok(Some(took))
}

/// What a controller's log says once it caught up after its Raft log was damaged.
const CONTROLLER_REPAIRED: &str = "controller log repaired from the leader";

/// kill -9 a controller (the leader for odd seeds, a follower for even ones), damage its Raft
/// log, restart it at once: it must say it is catching up, then that it caught up from the
/// leader (within 30 s). A leader back before its followers' election timeout would take up
/// its old leadership without an election, with a log missing what it had committed: it
/// must come back a follower. The time from its restart to caught up, when a damage was made.
async fn damage_a_controller(c: &mut ChaosCluster, seed: u64) -> anyhow::Result<Option<Duration>> {
    anyhow::ensure!(c.controllers.len() >= 3, "file-damage needs 3 controllers");
    let leader = c.controller_leader().await;
    let pick_leader = seed % 2 == 1;
    let Some(f) = (0..c.controllers.len())
        .find(|i| (Some(*i) == leader) == pick_leader && c.controller_alive(*i))
    else {
        anyhow::bail!("file-damage: no such controller running");
    };
    let name = format!(
        "controller-{} ({})",
        c.controllers[f].id,
        if pick_leader {
            "the leader"
        } else {
            "a follower"
        }
    );
    let node = format!("controller-{}", c.controllers[f].id);
    c.kill9_controller(f);
    let Some(what) = c.damage_controller_log(f, seed)? else {
        tracing_note(&format!(
            "file-damage: {name}'s Raft log is empty; no damage"
        ));
        c.start_controller(f).await?;
        return Ok(None);
    };
    let before = log_mentions(c.log_dir(), &node, CONTROLLER_REPAIRED)?;
    let catching = log_mentions(c.log_dir(), &node, "controller catching up")?;
    let restarted = Instant::now();
    c.start_controller(f).await?;
    while log_mentions(c.log_dir(), &node, CONTROLLER_REPAIRED)? == before {
        anyhow::ensure!(
            restarted.elapsed() < Duration::from_secs(30),
            "file-damage: {name}: {what}; not caught up from the leader within 30 s"
        );
        sleep(Duration::from_millis(100)).await;
    }
    let took = restarted.elapsed();
    anyhow::ensure!(
        log_mentions(c.log_dir(), &node, "controller catching up")? > catching,
        "file-damage: {name}: {what}; it never said it was catching up"
    );
    tracing_note(&format!(
        "file-damage: {name}: {what}; caught up from the leader {:.1} s after its restart",
        took.as_secs_f64()
    ));
    Ok(Some(took))
}

/// How often `needle` occurs in the logs of node `name`, one file per incarnation
/// (`a0-2.log`, `controller-1-3.log`).
fn log_mentions(dir: &std::path::Path, name: &str, needle: &str) -> anyhow::Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)?.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        if file.starts_with(&format!("{name}-"))
            && let Ok(t) = std::fs::read_to_string(e.path())
        {
            n += t.matches(needle).count();
        }
    }
    Ok(n)
}
