//! Consumers on the real broker through faults, a failover and a power cut (see
//! `sofamq_sim::consumesim`).

use std::time::Instant;

use sofamq_sim::consumesim::{ConsumeKnobs, ConsumeOutcome, run_consume_seed};
use sofamq_sim::journal::env_u64;
use sofamq_sim::replay;

/// Default number of seeds (`CONSUME_SIM_SEEDS=N` for more, `CONSUME_SIM_FIRST_SEED` to shift).
const DEFAULT_SEEDS: u64 = 16;
/// Seeds the broken variant runs (`CONSUME_SIM_MUTANT_SEEDS=N`).
const MUTANT_SEEDS: u64 = 32;
/// Of those, how many must catch it at least. Seeds 0..16 catch it on 5 (7, 8, 9, 10, 15),
/// the same on every run now that a seed replays.
const MUTANT_MIN_CAUGHT: u64 = 3;

fn replay_hint(seed: u64, o: &ConsumeOutcome) -> String {
    format!(
        "seed {seed}: {:?}\n  replay: CONSUME_SIM_SEED={seed} cargo test -p sofamq-sim --test consume replay_one_consume_seed -- --nocapture",
        o.violations
    )
}

/// `CONSUME_SIM_SEED=N` replays one seed and prints its whole trace
/// (`CONSUME_SIM_BREAK=1`: with the broken variant).
#[test]
fn replay_one_consume_seed() {
    let Some(seed) = replay::seed_from_env("CONSUME_SIM_SEED") else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let o = run_consume_seed(
        seed,
        ConsumeKnobs {
            deliver_above_replicated: std::env::var("CONSUME_SIM_BREAK").is_ok(),
        },
    );
    eprintln!("{}", o.trace.join("\n"));
    eprintln!(
        "acked sends {}, deliveries {}, acks {}, redelivered across the failover {}, stale handles refused {}, dead letters {}, nacks {}, receives {:?}, above readable {}",
        o.acked_sends,
        o.deliveries,
        o.acks,
        o.redelivered_across_failover,
        o.stale_refused,
        o.dead_letters,
        o.nacks,
        o.receives,
        o.above_readable
    );
    assert!(o.violations.is_empty(), "{:#?}", o.violations);
}

#[test]
fn consumers_keep_their_guarantees_through_faults_a_failover_and_a_power_cut() {
    let first = env_u64("CONSUME_SIM_FIRST_SEED", 0);
    let n = env_u64("CONSUME_SIM_SEEDS", DEFAULT_SEEDS);
    let t0 = Instant::now();
    let (mut sends, mut deliveries, mut acks, mut across, mut stale, mut dead) = (0, 0, 0, 0, 0, 0);
    let (mut receives, mut receive_errors, mut nacks) = (0, 0, 0);
    let mut failed = Vec::new();
    for seed in first..first + n {
        let o = run_consume_seed(seed, ConsumeKnobs::default());
        sends += o.acked_sends;
        deliveries += o.deliveries;
        acks += o.acks;
        across += o.redelivered_across_failover;
        stale += o.stale_refused;
        dead += o.dead_letters;
        if !o.violations.is_empty() {
            failed.push(replay_hint(seed, &o));
        }
        if o.above_readable > 0 {
            failed.push(format!(
                "seed {seed}: {} deliveries above the readable offset",
                o.above_readable
            ));
        }
        receives += o.receives.0;
        receive_errors += o.receives.1;
        nacks += o.nacks;
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "consume sim: {n} seeds in {secs:.1} s ({:.1} seeds/min): {sends} acked sends, {deliveries} deliveries, {acks} acks, {across} redelivered after an ack across the failover, {stale} stale handles refused, {dead} dead letters, {nacks} nacks, {receives} receives ({receive_errors} failed)",
        n as f64 * 60.0 / secs
    );
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // The run exercised what it checks.
    assert!(
        sends as u64 > n * 100,
        "only {sends} acked sends over {n} seeds"
    );
    assert!(acks as u64 > n * 50, "only {acks} acks over {n} seeds");
    assert!(stale > 0, "no stale handle was ever tried");
    assert!(dead as u64 >= n, "only {dead} dead letters over {n} seeds");
    assert!(nacks >= n, "only {nacks} nacks over {n} seeds");
}

/// The broken variant: receive reads up to the master's durable offset, above what the
/// in-sync slave acked. A failover then loses records a consumer was given; the check
/// "every delivered record is in the surviving log" must catch it within CI's seeds.
#[test]
fn delivering_above_the_replicated_offset_is_caught() {
    let first = env_u64("CONSUME_SIM_FIRST_SEED", 0);
    let n = env_u64("CONSUME_SIM_MUTANT_SEEDS", MUTANT_SEEDS);
    let caught: Vec<u64> = (first..first + n)
        .filter(|&seed| {
            !run_consume_seed(
                seed,
                ConsumeKnobs {
                    deliver_above_replicated: true,
                },
            )
            .violations
            .is_empty()
        })
        .collect();
    eprintln!(
        "deliver-above-replicated caught on {} of {n} seeds: {caught:?}",
        caught.len()
    );
    assert!(
        caught.len() as u64 >= MUTANT_MIN_CAUGHT.min(n),
        "only {} of {n} seeds caught a broker that delivers above the replicated offset",
        caught.len()
    );
}

/// Set in a child process of this test binary: the seed it runs and prints.
const CHILD_SEED: &str = "CONSUME_SIM_CHILD_SEED";

/// Everything a replay must reproduce, as text.
fn render(o: &ConsumeOutcome) -> String {
    format!(
        "{}\nsends {} deliveries {} acks {} across {} stale {} dead {} receives {:?} nacks {} \
         violations {:?}",
        o.trace.join("\n"),
        o.acked_sends,
        o.deliveries,
        o.acks,
        o.redelivered_across_failover,
        o.stale_refused,
        o.dead_letters,
        o.receives,
        o.nacks,
        o.violations
    )
}

/// The child half of [`a_consume_seed_replays_in_other_processes`].
#[test]
fn child_prints_one_consume_seed() {
    let Some(seed) = replay::seed_from_env(CHILD_SEED) else {
        return;
    };
    replay::print_outcome(&render(&run_consume_seed(seed, ConsumeKnobs::default())));
}

/// A seed replays exactly: seeds 2 and 9, each run alone in three child processes, give the
/// same outcome. Not compared with a run in this process: here other tests' simulations run
/// on other threads, and the first consumer seed of a process that starts beside another
/// simulation has been seen to differ (see [`first_run_beside_another_simulation`]).
#[test]
fn a_consume_seed_replays_in_other_processes() {
    let differed: Vec<String> = [2, 9]
        .into_iter()
        .flat_map(|seed| {
            replay::differences_in_children("child_prints_one_consume_seed", CHILD_SEED, seed, 2)
        })
        .collect();
    assert!(differed.is_empty(), "{}", differed.join("\n"));
}

/// Diagnostic of an open defect (`--ignored`): in a new process, seed 2 run while another
/// consumer simulation starts on a second thread has ended with 341 acked sends instead of
/// 344, in about one process of five; every later run in that process gives 344, and so
/// does every run alone. Traced with prints: the first difference is the first heartbeat of
/// broker `m` after its crash-restart at 897 ms, sent at 897 ms in both runs, reaching the
/// controller at 904 ms in one and 907 ms in the other (a new connection, Hello, then the
/// heartbeat); everything after follows 3 ms apart, until a retried send at 2,136 ms is
/// refused for "1 of 2 required replicas in sync" in one run only. So the divergence starts
/// in the restarted host's fresh runtime or the simulated network, before any broker
/// decision differs; its cause is not found. It fails when it reproduces: run it several
/// times.
#[test]
#[ignore = "diagnostic of an open nondeterminism; run with --ignored"]
fn first_run_beside_another_simulation() {
    let bg = std::thread::spawn(|| {
        for seed in 5..8 {
            let _ = run_consume_seed(seed, ConsumeKnobs::default());
        }
    });
    let first = render(&run_consume_seed(2, ConsumeKnobs::default()));
    let second = render(&run_consume_seed(2, ConsumeKnobs::default()));
    bg.join().expect("background simulation");
    if let Some(d) = replay::first_difference(&first, &second) {
        panic!("the first run differed: {d}");
    }
}
