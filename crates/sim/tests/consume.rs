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
/// Of those, how many must catch it at least. Seeds 0..32 caught it on 7 (7, 15, 16, 17, 22,
/// 25, 29) on 2026-12-07, the same on every run now that a seed replays.
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
    replay::show_host_logs();
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
/// same outcome.
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

/// A seed run here, beside another simulation on a second thread (and other tests'), ends as
/// it does alone in another process. Before crashes went through `Links::crash`, seed 2
/// ended with 341 acked sends instead of 344 in about one process of five: a crash's FINs
/// drew their latencies from the seed's generator in the order tokio dropped the host's
/// tasks, which follows task ids counted for the whole process (see `sofamq_sim::links`).
/// Without the fix this fails about one run in five; with it, 0 of 40 in a loop.
#[test]
fn a_run_beside_another_simulation_matches_one_alone() {
    let bg = std::thread::spawn(|| {
        for seed in 5..7 {
            let _ = run_consume_seed(seed, ConsumeKnobs::default());
        }
    });
    let here = render(&run_consume_seed(2, ConsumeKnobs::default()));
    bg.join().expect("background simulation");
    let alone = replay::run_in_child("child_prints_one_consume_seed", CHILD_SEED, 2);
    if let Some(d) = replay::first_difference(&here, &alone) {
        panic!("seed 2 beside another simulation differed from seed 2 alone: {d}");
    }
}
