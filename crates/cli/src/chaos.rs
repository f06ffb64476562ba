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
    #[arg(long, required_unless_present = "against")]
    pub scenario: Option<String>,
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
    #[command(flatten)]
    pub external: ExternalArgs,
}

/// `sofamq chaos --against ...`: the workload against a cluster that already runs
/// (`scripts/multihost.sh`). No log-divergence check in this mode (the logs are elsewhere).
#[derive(clap::Args, Debug)]
pub struct ExternalArgs {
    /// Run the SDK workload against these name servers (comma separated) instead of
    /// starting a cluster; the load runs until `--stop-file` exists, then an audit group
    /// drains every queue and the checker prints lost / unexpected / dup.
    #[arg(long, value_delimiter = ',')]
    pub against: Option<Vec<String>>,
    /// Controller addresses (comma separated): watch each group's master and count
    /// failovers.
    #[arg(long, value_delimiter = ',', requires = "against")]
    pub controller: Option<Vec<String>>,
    /// Topic of the SDK producers (create it on every group first).
    #[arg(long, default_value = "multihost", requires = "against")]
    pub topic: String,
    /// SDK producers.
    #[arg(long, default_value_t = 3, requires = "against")]
    pub producers: u32,
    /// Sends per second per producer.
    #[arg(long, default_value_t = 20, requires = "against")]
    pub rate: u32,
    /// Attempts per send (the SDK retries onto another broker group).
    #[arg(long, default_value_t = 3, requires = "against")]
    pub max_attempts: u32,
    /// Live consumers during the load.
    #[arg(long, default_value_t = 1, requires = "against")]
    pub consumers: u32,
    /// The load phase ends when this file exists (or after `--duration` seconds if
    /// `--duration` is above its default).
    #[arg(long, requires = "against")]
    pub stop_file: Option<PathBuf>,
    /// Topic of the official client's load (the audit drain reads it too).
    #[arg(long, requires_all = ["against", "official_acked"])]
    pub official_topic: Option<String>,
    /// The official driver's JSON lines (`{"ok":true,"message_id":..}`), read after the
    /// load phase.
    #[arg(long, requires = "official_topic")]
    pub official_acked: Option<PathBuf>,
    /// Append every change of a group's master, epoch or in-sync set here (JSON lines).
    #[arg(long, requires = "controller")]
    pub events: Option<PathBuf>,
    /// Rewrite the controller's latest view here on every poll (text: `healthy 0|1`, ...).
    #[arg(long, requires = "controller")]
    pub state: Option<PathBuf>,
    /// Broker groups the cluster has (`healthy 1` needs all of them).
    #[arg(long, default_value_t = 1, requires = "against")]
    pub groups: usize,
    /// Poll period of the controller watcher, ms.
    #[arg(long, default_value_t = 150, requires = "against")]
    pub poll_ms: u64,
}

/// Runs the chosen scenarios.
pub async fn run(a: ChaosArgs) -> anyhow::Result<()> {
    if let Some(ns) = &a.external.against {
        return against(ns.clone(), &a).await;
    }
    let scenario = a.scenario.clone().unwrap_or_default();
    let names: Vec<&str> = match scenario.as_str() {
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

/// `--against`: the workload against an existing cluster; prints one line per load and
/// a summary line, writes `--json`, fails when anything was lost, unexpected or duplicated.
async fn against(namesrv: Vec<String>, a: &ChaosArgs) -> anyhow::Result<()> {
    let e = &a.external;
    let stop_file = e
        .stop_file
        .clone()
        .context("--against needs --stop-file (the load runs until it exists)")?;
    let mut o = chaos::external::ExternalOptions::new(namesrv, &e.topic, stop_file);
    o.controllers = e.controller.clone().unwrap_or_default();
    o.producers = e.producers;
    o.rate = e.rate;
    o.max_attempts = e.max_attempts;
    o.consumers = e.consumers;
    o.official_topic = e.official_topic.clone();
    o.official_acked = e.official_acked.clone();
    o.events = e.events.clone();
    o.state = e.state.clone();
    o.groups = e.groups;
    o.poll = Duration::from_millis(e.poll_ms.max(20));
    // The default --duration (20 s) is for the scenarios; here only a longer one bounds
    // the load phase (the stop file normally ends it).
    if a.duration > 20 {
        o.max_duration = Duration::from_secs(a.duration);
    }
    let r = chaos::external::run(o).await?;
    for ex in &r.sdk.examples {
        eprintln!("chaos: multihost: {ex}");
    }
    let s = &r.sdk;
    println!(
        "sdk: acked={} failed={} unknown={} recovered={} read={} lost={} unexpected={} aborted={} dup={} out_of_order={}",
        s.ok,
        s.failed,
        s.unknown,
        s.recovered,
        s.read,
        s.lost(),
        s.unexpected,
        s.aborted,
        s.duplicated,
        s.out_of_order
    );
    if let Some(o) = &r.official {
        for ex in &o.examples {
            eprintln!("chaos: multihost: {ex}");
        }
        println!(
            "official: acked={} failed={} read={} recovered={} lost={} unexpected={} dup={}",
            o.acked, o.failed, o.read, o.recovered, o.lost, o.unexpected, o.dup
        );
    }
    println!(
        "total: groups={} acked={} lost={} unexpected={} dup={} failovers={} drained={} dup_cross_group={} dup_within_group={}",
        r.groups,
        r.acked(),
        r.lost(),
        r.unexpected(),
        r.dup(),
        r.failovers,
        r.drained,
        r.dup_cross_group,
        r.dup_within_group
    );
    for (why, n) in s.reasons.iter().take(8) {
        println!("sdk failed/unknown: {n:>6}  {why}");
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&r)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    anyhow::ensure!(
        r.pass(),
        "chaos: messages lost, unexpected or duplicated against {}",
        e.against.as_deref().unwrap_or_default().join(",")
    );
    Ok(())
}
