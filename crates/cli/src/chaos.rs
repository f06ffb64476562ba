//! `sofamq chaos`: runs a fault-injection scenario against a real local cluster (processes of
//! this same binary) and prints the checker's table; exits non-zero when a scenario fails.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use sofamq_testkit::chaos::{self, Failover, Outcome, SCENARIOS, ScenarioOptions};

/// Options of `sofamq chaos`.
#[derive(clap::Args, Debug)]
pub struct ChaosArgs {
    /// Scenario name, `ci` (the short CI set) or `all`; `list` prints them.
    #[arg(long)]
    pub scenario: String,
    /// Length of the fault phase of each scenario, seconds.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Stop each fault phase after this many rounds (even before `--duration` is up).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Seed of the fault timing.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Failover strategy: manual (the kit promotes) or controller (`sofamq controller`).
    #[arg(long, default_value = "manual")]
    pub failover: Failover,
    /// Write the reports as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The broken build: brokers ack before the slave has the message (min_insync_replicas = 1).
    #[arg(long)]
    pub unsafe_ack_before_replication: bool,
    /// `official-*` scenarios: the killed master stays dead for its window instead of
    /// restarting after 1 s.
    #[arg(long)]
    pub leave_dead: bool,
}

/// Runs the chosen scenarios.
pub async fn run(a: ChaosArgs) -> anyhow::Result<()> {
    let names: Vec<&str> = match a.scenario.as_str() {
        "list" => {
            for (n, d) in SCENARIOS {
                println!("{n:<24} {d}");
            }
            return Ok(());
        }
        "all" => SCENARIOS.iter().map(|(n, _)| *n).collect(),
        "ci" => chaos::CI_SET.to_vec(),
        one => vec![one],
    };
    if a.leave_dead
        && let Some(other) = names.iter().find(|n| !n.starts_with("official-"))
    {
        anyhow::bail!("--leave-dead applies to the official-* scenarios only, not {other}");
    }
    // The scenarios start `sofamq` processes: this very binary.
    if std::env::var_os("SOFAMQ_BIN").is_none() {
        let me = std::env::current_exe().context("current_exe")?;
        sofamq_testkit::set_sofamq_bin(&me);
    }
    let opts = ScenarioOptions {
        duration: Duration::from_secs(a.duration),
        seed: a.seed,
        failover: a.failover,
        unsafe_ack_before_replication: a.unsafe_ack_before_replication,
        max_rounds: a.rounds,
        leave_dead: a.leave_dead,
    };
    let mut reports = Vec::new();
    let mut failed = false;
    for name in names {
        eprintln!(
            "chaos: running {name} for {}s (seed {})",
            a.duration, a.seed
        );
        match chaos::run(name, &opts).await {
            Ok(Outcome::Checked(r)) => {
                for e in &r.examples {
                    eprintln!("chaos: {name}: {e}");
                }
                failed |= !r.pass();
                println!("{}", chaos::checker::row(&r));
                let special = chaos::checker::special_row(&r);
                if !special.is_empty() {
                    println!("{special}");
                }
                reports.push(r);
            }
            Ok(Outcome::Official(r)) => {
                println!("{name}:\n{}", r.render());
                let broken = r.violations(true);
                for v in &broken {
                    println!("{name:<20} FAIL: {v}");
                }
                if broken.is_empty() {
                    println!("{name:<20} PASS");
                }
                failed |= !broken.is_empty();
            }
            Ok(Outcome::Skipped(why)) => {
                println!("{name:<20} SKIPPED: {why}");
            }
            Err(e) => {
                failed = true;
                println!("{name:<20} ERROR: {e:#}");
            }
        }
    }
    println!("\n{}", chaos::table(&reports));
    for r in &reports {
        let special = chaos::checker::special_row(r);
        if !special.is_empty() {
            println!("{special}");
        }
    }
    for r in reports.iter().filter(|r| !r.reasons.is_empty()) {
        println!(
            "\n{}: sends that failed or ended unknown, by reason",
            r.scenario
        );
        for (why, n) in r.reasons.iter().take(8) {
            println!("  {n:>6}  {why}");
        }
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&reports)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    anyhow::ensure!(!failed, "chaos: at least one scenario failed");
    Ok(())
}
