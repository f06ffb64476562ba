//! Replaying a seed in other processes: a test binary runs itself again with one test
//! selected and a seed in the environment; the child prints the seed's rendered outcome
//! between markers and the parent compares it with its own. Other processes have other hash
//! keys, other tokio runtime seeds and other addresses, so an equal outcome shows the seed
//! does not depend on any of them.

use std::process::Command;

const BEGIN: &str = "--- sim outcome ---";
const END: &str = "--- end of sim outcome ---";

/// In the child: prints `outcome` between the markers [`run_in_child`] looks for.
pub fn print_outcome(outcome: &str) {
    println!("{BEGIN}\n{outcome}\n{END}");
}

/// Runs the test `child_test` of this test binary in a new process with `env` set to `seed`
/// and returns the outcome it printed with [`print_outcome`]. Panics if the child fails.
pub fn run_in_child(child_test: &str, env: &str, seed: u64) -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args(["--exact", child_test, "--nocapture", "--test-threads=1"])
        .env(env, seed.to_string())
        .output()
        .expect("run the test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, rest) = stdout
        .split_once(&format!("{BEGIN}\n"))
        .expect("no outcome in the child's output");
    let (outcome, _) = rest
        .split_once(&format!("\n{END}"))
        .expect("outcome not terminated");
    outcome.to_string()
}

/// The first line where two rendered outcomes differ, both sides, or `None` if equal.
pub fn first_difference(here: &str, there: &str) -> Option<String> {
    if here == there {
        return None;
    }
    let at = here
        .lines()
        .zip(there.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| here.lines().count().min(there.lines().count()));
    Some(format!(
        "first difference at line {at}: {:?} vs {:?}",
        here.lines().nth(at),
        there.lines().nth(at)
    ))
}

/// The seed in the environment variable `var`, if it is set to a number (a replay request,
/// or a child process's seed).
pub fn seed_from_env(var: &str) -> Option<u64> {
    std::env::var(var).ok().and_then(|s| s.parse().ok())
}

/// Runs `seed` alone in `1 + processes` child processes (the test `child_test` with `env`
/// set) and returns how each later child's outcome differs from the first's, one line each
/// (empty: all replayed exactly). A test compares a run in its own process with
/// [`run_in_child`] and [`first_difference`].
pub fn differences_in_children(
    child_test: &str,
    env: &str,
    seed: u64,
    processes: u64,
) -> Vec<String> {
    let first = run_in_child(child_test, env, seed);
    assert!(first.lines().count() > 5, "seed {seed}: {first}");
    (1..=processes)
        .filter_map(|i| {
            let there = run_in_child(child_test, env, seed);
            first_difference(&first, &there).map(|d| format!("seed {seed}, process {i}: {d}"))
        })
        .collect()
}

/// Stamps a log line with the simulated time (ms) of the host that wrote it, so the hosts'
/// own logs line up with a seed's trace.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(d) => write!(w, "{:>5}", d.as_millis()),
            None => write!(w, "    -"),
        }
    }
}

/// For a replayed seed: the hosts' logs (filtered by `RUST_LOG`) to the test's output,
/// stamped with simulated time, without colour codes.
pub fn show_host_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_timer(SimTime)
        .with_ansi(false)
        .with_test_writer()
        .try_init();
}
