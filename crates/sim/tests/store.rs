//! The real store on a simulated disk under seeded crashes (see `sofamq_sim::storesim`).

use std::time::Instant;

use sofamq_sim::journal::env_u64;
use sofamq_sim::replay;
use sofamq_sim::storesim::{StoreKnobs, StoreOutcome, run_store_seed};

/// Default number of seeds (`STORE_SIM_SEEDS=N` for more, `STORE_SIM_FIRST_SEED` to shift).
const DEFAULT_SEEDS: u64 = 40;

/// `STORE_SIM_SEED=N` replays one seed and prints its whole trace.
#[test]
fn replay_one_store_seed() {
    let Some(seed) = replay::seed_from_env("STORE_SIM_SEED") else {
        return;
    };
    let o = run_store_seed(
        seed,
        StoreKnobs {
            lie_on_sync: std::env::var("STORE_SIM_BREAK_FSYNC").is_ok(),
        },
    );
    eprintln!("{}", o.trace.join("\n"));
    assert!(o.violations.is_empty(), "{:#?}", o.violations);
}

#[test]
fn the_real_store_keeps_every_acked_record_through_seeded_crashes() {
    let first = env_u64("STORE_SIM_FIRST_SEED", 0);
    let n = env_u64("STORE_SIM_SEEDS", DEFAULT_SEEDS);
    let t0 = Instant::now();
    let (mut acks, mut opens, mut errors, mut eio_seeds, mut unopened) = (0u64, 0, 0, 0, 0);
    let mut failed = Vec::new();
    for seed in first..first + n {
        let o = run_store_seed(seed, StoreKnobs::default());
        acks += o.acks as u64;
        opens += o.opens;
        errors += o.append_errors;
        unopened += u64::from(!o.final_open);
        eio_seeds += u64::from(o.trace.iter().any(|t| t.contains("store fenced")));
        if !o.violations.is_empty() {
            failed.push(format!(
                "seed {seed}: {:?}\n  replay: STORE_SIM_SEED={seed} cargo test -p sofamq-sim --test store replay_one_store_seed -- --nocapture",
                o.violations
            ));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "store sim: {n} seeds in {secs:.1} s ({:.0} seeds/min), {acks} acks, {opens} opens, {errors} failed appends, {eio_seeds} seeds fenced by EIO, {unopened} seeds whose full disk kept the store from reopening",
        n as f64 * 60.0 / secs
    );
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // The runs exercised what they claim to: acks, restarts, and the EIO path.
    assert!(acks > n * 100, "only {acks} acks over {n} seeds");
    assert!(opens >= n * 3, "only {opens} opens over {n} seeds");
    assert!(n < 20 || eio_seeds > 0, "no seed hit the EIO path");
    assert!(
        unopened * 4 <= n,
        "{unopened} of {n} seeds never reopened the store"
    );
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 11] {
        let a = run_store_seed(seed, StoreKnobs::default());
        let b = run_store_seed(seed, StoreKnobs::default());
        assert_eq!(a.trace, b.trace, "seed {seed} did not replay");
        assert_eq!((a.acks, a.opens), (b.acks, b.opens));
        assert!(a.acks > 0);
    }
}

/// The broken variant: a disk (or a store) that acks before the fdatasync is done. The checks
/// must catch it within the seeds CI runs.
#[test]
fn acking_before_the_fdatasync_is_caught() {
    const SEEDS: u64 = 10;
    let caught = (0..SEEDS)
        .filter(|&seed| {
            !run_store_seed(seed, StoreKnobs { lie_on_sync: true })
                .violations
                .is_empty()
        })
        .count();
    eprintln!("ack-before-fdatasync caught on {caught} of {SEEDS} seeds");
    assert!(
        caught > 0,
        "no seed caught a store that acks before its fdatasync"
    );
}

/// Set in a child process of this test binary: the seed it runs and prints.
const CHILD_SEED: &str = "STORE_SIM_CHILD_SEED";

fn render(o: &StoreOutcome) -> String {
    format!(
        "{}\nacks {} opens {} append errors {} final open {} violations {:?}",
        o.trace.join("\n"),
        o.acks,
        o.opens,
        o.append_errors,
        o.final_open,
        o.violations
    )
}

/// The child half of [`a_store_seed_replays_in_other_processes`].
#[test]
fn child_prints_one_store_seed() {
    let Some(seed) = replay::seed_from_env(CHILD_SEED) else {
        return;
    };
    replay::print_outcome(&render(&run_store_seed(seed, StoreKnobs::default())));
}

/// A seed replays exactly in other processes: seeds 3 and 11, each run alone in three child
/// processes.
#[test]
fn a_store_seed_replays_in_other_processes() {
    let differed: Vec<String> = [3, 11]
        .into_iter()
        .flat_map(|seed| {
            replay::differences_in_children("child_prints_one_store_seed", CHILD_SEED, seed, 2)
        })
        .collect();
    assert!(differed.is_empty(), "{}", differed.join("\n"));
}
