//! The real master and slave on simulated disks and network (see `sofamq_sim::replsim`).

use std::time::Instant;

use sofamq_sim::journal::env_u64;
use sofamq_sim::replay;
use sofamq_sim::replsim::{ReplKnobs, ReplOutcome, run_repl_seed};

/// Default number of seeds (`REPL_SIM_SEEDS=N` for more, `REPL_SIM_FIRST_SEED` to shift).
const DEFAULT_SEEDS: u64 = 30;

/// `REPL_SIM_SEED=N` replays one seed and prints its whole trace.
#[test]
fn replay_one_repl_seed() {
    let Some(seed) = replay::seed_from_env("REPL_SIM_SEED") else {
        return;
    };
    // RUST_LOG=debug shows the master's and slave's own logs.
    replay::show_host_logs();
    let o = run_repl_seed(
        seed,
        ReplKnobs {
            ack_before_slave: std::env::var("REPL_SIM_BREAK_ACK").is_ok(),
        },
    );
    eprintln!("{}", o.trace.join("\n"));
    assert!(o.violations.is_empty(), "{:#?}", o.violations);
}

#[test]
fn acked_records_are_on_master_and_slave_after_faults_and_a_power_cut() {
    let first = env_u64("REPL_SIM_FIRST_SEED", 0);
    let n = env_u64("REPL_SIM_SEEDS", DEFAULT_SEEDS);
    let t0 = Instant::now();
    let mut acks = 0usize;
    let mut failed = Vec::new();
    for seed in first..first + n {
        let o = run_repl_seed(seed, ReplKnobs::default());
        acks += o.acks;
        if !o.violations.is_empty() {
            failed.push(format!(
                "seed {seed}: {:?}\n  replay: REPL_SIM_SEED={seed} cargo test -p sofamq-sim --test repl replay_one_repl_seed -- --nocapture",
                o.violations
            ));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "repl sim: {n} seeds in {secs:.1} s ({:.0} seeds/min), {acks} acks",
        n as f64 * 60.0 / secs
    );
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert!(acks as u64 > n * 50, "only {acks} acks over {n} seeds");
}

/// The broken variant: a master that acks before its slave has the record. The power cut
/// must catch it within the seeds CI runs.
#[test]
fn acking_before_the_slave_is_caught() {
    const SEEDS: u64 = 10;
    let caught = (0..SEEDS)
        .filter(|&seed| {
            !run_repl_seed(
                seed,
                ReplKnobs {
                    ack_before_slave: true,
                },
            )
            .violations
            .is_empty()
        })
        .count();
    eprintln!("ack-before-slave caught on {caught} of {SEEDS} seeds");
    assert!(
        caught > 0,
        "no seed caught a master that acks before its slave"
    );
}

/// A seed replays exactly in one process: the same trace, recovered logs and acks (each run
/// builds new maps, runtimes and RNGs: per-instance hash keys and tokio's runtime seeds
/// differ between the two).
#[test]
fn a_seed_replays_exactly() {
    for seed in [1, 4, 7] {
        let a = run_repl_seed(seed, ReplKnobs::default());
        let b = run_repl_seed(seed, ReplKnobs::default());
        assert_eq!(a.trace, b.trace, "seed {seed}: the trace did not replay");
        assert_eq!(
            a.logs, b.logs,
            "seed {seed}: the recovered logs did not replay"
        );
        assert_eq!(a.acks, b.acks, "seed {seed}");
        assert!(a.acks > 0, "seed {seed} acked nothing");
        assert_eq!(a.logs.len(), 2, "seed {seed}: {:?}", a.logs.keys());
    }
}

/// Set in a child process of this test binary: the seed it runs and prints.
const CHILD_SEED: &str = "REPL_SIM_CHILD_SEED";

/// Everything a replay must reproduce, as text.
fn render(o: &ReplOutcome) -> String {
    let mut out = o.trace.join("\n");
    for (host, log) in &o.logs {
        out.push_str(&format!("\nlog {host}: {log:?}"));
    }
    out.push_str(&format!("\nacks {} violations {:?}", o.acks, o.violations));
    out
}

/// The child half of [`a_seed_replays_exactly_in_other_processes`]: does nothing unless
/// `REPL_SIM_CHILD_SEED` is set, then prints that seed's outcome.
#[test]
fn child_prints_one_seed() {
    let Some(seed) = replay::seed_from_env(CHILD_SEED) else {
        return;
    };
    replay::print_outcome(&render(&run_repl_seed(seed, ReplKnobs::default())));
}

/// A seed replays exactly in other processes (other hash keys, other tokio runtime seeds,
/// other addresses): the seed run alone in `1 + N` child processes, each child's trace,
/// recovered logs and acks equal to the first's. `REPL_SIM_PROCESSES=N` (default 2),
/// `REPL_SIM_REPLAY_SEED` picks the seed.
#[test]
fn a_seed_replays_exactly_in_other_processes() {
    let seed = env_u64("REPL_SIM_REPLAY_SEED", 5);
    let n = env_u64("REPL_SIM_PROCESSES", 2);
    let differed = replay::differences_in_children("child_prints_one_seed", CHILD_SEED, seed, n);
    eprintln!(
        "repl sim seed {seed}: {} of {n} further processes replayed the first one's outcome exactly",
        n - differed.len() as u64
    );
    assert!(differed.is_empty(), "{}", differed.join("\n"));
}
