//! `sofamq`: the one user binary — servers, a local cluster, client and admin
//! commands, benchmarks.

mod admin;
mod auth;
mod bench;
mod bench_floor;
mod bench_namesrv;
mod chaos;
mod consume;
mod controller;
mod cpu;
mod ops;
mod produce;
mod servers;
mod standalone;
mod startup;
mod table;
mod target;
mod timefmt;
mod topic;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: the gRPC send path allocates per message and per request
/// (prost, h2, tonic buffers), and glibc's malloc/free was about a fifth of the broker's
/// instructions under `bench produce`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "sofamq", version, about = "SofaMQ: a durable message queue")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    auth: auth::AuthArgs,
    /// Log more: client commands log warnings only unless -v (info) or -vv (debug) is
    /// given; servers log info by default. RUST_LOG overrides both.
    #[arg(short = 'v', long = "verbose", global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Async runtime worker threads (default: one per core). On few cores, a broker with
    /// one fewer than the cores answers a lone send sooner and carries a little less load
    /// (docs/benchmarks.md, "Runtime workers").
    #[arg(long, global = true, env = "SOFAMQ_WORKER_THREADS",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
}

impl Command {
    /// Client commands print their results on stdout and keep stderr quiet.
    fn is_client(&self) -> bool {
        matches!(
            self,
            Command::Topic(_)
                | Command::Produce(_)
                | Command::Recall(_)
                | Command::Consume(_)
                | Command::Admin(_)
        )
    }
}

/// The runtime's worker threads: `--worker-threads` if given, else one per core.
///
/// A broker's commit log has its own writer and sync threads besides. On 2 cores, one
/// worker took a replicated send's p50 at 1 in flight from 0.55 to 0.49 ms (a request's
/// tasks no longer hop between workers, each hop a cross-core wake-up) but cost about 6 %
/// of the throughput at 64 in flight (docs/benchmarks.md, "Runtime workers"): the
/// default keeps the throughput.
fn worker_threads(explicit: Option<u16>, cores: usize) -> usize {
    explicit.map_or(cores.max(1), usize::from)
}

/// The log filter when RUST_LOG is unset.
fn default_filter(cmd: &Command, verbose: u8) -> &'static str {
    match (verbose, cmd) {
        (v, _) if v >= 2 => "debug",
        // `chaos` drives SDK clients through faults on purpose: their retry logs are noise there.
        (0, Command::Chaos(_)) => "warn,sofamq_client=off",
        (0, c) if c.is_client() => "warn",
        _ => "info",
    }
}

/// Colour only on a terminal, and never when NO_COLOR is set to anything non-empty
/// (<https://no-color.org>).
fn use_color(is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A whole local cluster in one process (namesrv + broker-a).
    Standalone(standalone::StandaloneArgs),
    /// Run a NameServer.
    Namesrv(servers::NamesrvArgs),
    /// Run a broker.
    Broker(servers::BrokerArgs),
    /// Run a controller node (Raft group deciding masters and epochs).
    Controller(controller::ControllerArgs),
    /// Create, delete and list topics.
    #[command(subcommand)]
    Topic(topic::TopicCmd),
    /// Send messages and print their receipts (also timer and transactional messages).
    Produce(produce::ProduceArgs),
    /// Cancel a pending timer (DELAY) message by its recall handle.
    Recall(produce::RecallArgs),
    /// Receive messages as a consumer group, print and ack them.
    Consume(consume::ConsumeArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Replication switchover (promote, demote) and status.
    #[command(subcommand)]
    Admin(admin::AdminCmd),
    /// Fault injection against a local cluster, with a lost/duplicated/out-of-order checker.
    Chaos(chaos::ChaosArgs),
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Commit-log append throughput (sync flush) against a raw write + fdatasync loop.
    Store(bench::StoreBenchArgs),
    /// Latency of a raw small append + fdatasync loop: the disk's floor under one send.
    Fsync(bench::FsyncBenchArgs),
    /// The machine's floor under a replicated send: client, master and slave threads over
    /// loopback TCP, each copy appended and fdatasynced, with no broker code in the way.
    Floor(bench_floor::FloorBenchArgs),
    /// Send throughput and latency through a running cluster.
    Produce(bench::ProduceBenchArgs),
    /// Receive + ack throughput of a consumer group through a running cluster.
    Consume(bench::ConsumeBenchArgs),
    /// Send-to-receive latency: producers and consumers together.
    E2e(bench::E2eBenchArgs),
    /// Timer (DELAY) lateness: steady-rate timers, received by a consumer group.
    Timers(bench::TimersBenchArgs),
    /// Control plane at scale: simulated broker groups and route-querying clients against a
    /// namesrv and a controller started as child processes (docs/scale.md).
    Namesrv(bench_namesrv::NamesrvBenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = default_filter(&cli.command, cli.verbose);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        // No colour codes in files and pipes, nor with NO_COLOR.
        .with_ansi(use_color(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR"),
        ))
        .init();
    auth::init(&cli.auth)?;
    match cli.command {
        Command::Bench(BenchCmd::Store(args)) => return bench::bench_store(args),
        Command::Bench(BenchCmd::Fsync(args)) => return bench::bench_fsync(args),
        Command::Bench(BenchCmd::Floor(args)) => return bench_floor::run(&args),
        _ => {}
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads(cli.worker_threads, cores))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Standalone(a) => standalone::run(a).await,
            Command::Namesrv(a) => servers::namesrv(a).await,
            Command::Broker(a) => servers::broker(a).await,
            Command::Controller(a) => controller::run(a).await,
            Command::Topic(c) => topic::run(c).await,
            Command::Produce(a) => produce::run(a).await,
            Command::Recall(a) => produce::recall(a).await,
            Command::Consume(a) => consume::run(a).await,
            Command::Bench(BenchCmd::Produce(a)) => bench::bench_produce(a).await,
            Command::Bench(BenchCmd::Consume(a)) => bench::bench_consume(a).await,
            Command::Bench(BenchCmd::E2e(a)) => bench::bench_e2e(a).await,
            Command::Bench(BenchCmd::Timers(a)) => bench::bench_timers(a).await,
            Command::Bench(BenchCmd::Namesrv(a)) => bench_namesrv::run(a).await,
            Command::Admin(c) => admin::run(c).await,
            Command::Chaos(a) => chaos::run(a).await,
            Command::Bench(BenchCmd::Store(_) | BenchCmd::Fsync(_) | BenchCmd::Floor(_)) => {
                unreachable!("handled above")
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("sofamq").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn client_commands_are_quiet_unless_verbose() {
        for args in [
            &["topic", "list"][..],
            &["produce", "--topic", "t", "--body", "x"],
            &["consume", "--topic", "t", "--group", "g"],
            &["admin", "cluster"],
        ] {
            let c = parse(args);
            assert_eq!(default_filter(&c.command, c.verbose), "warn", "{args:?}");
            let mut v: Vec<&str> = args.to_vec();
            v.push("-v");
            let c = parse(&v);
            assert_eq!(default_filter(&c.command, c.verbose), "info", "{args:?} -v");
        }
        let c = parse(&["namesrv"]);
        assert_eq!(default_filter(&c.command, c.verbose), "info");
        let c = parse(&["-vv", "topic", "list"]);
        assert_eq!(default_filter(&c.command, c.verbose), "debug");
    }

    #[test]
    fn worker_threads_default_to_the_cores_and_refuse_zero() {
        let threads = |args: &[&str], cores| worker_threads(parse(args).worker_threads, cores);
        assert_eq!(threads(&["standalone"], 2), 2);
        assert_eq!(threads(&["topic", "list"], 8), 8);
        assert_eq!(threads(&["--worker-threads", "1", "standalone"], 2), 1);
        assert_eq!(threads(&["broker", "--worker-threads", "3"], 2), 3);
        for bad in ["0", "-1", "x", "1025"] {
            let r = Cli::try_parse_from(["sofamq", "--worker-threads", bad, "standalone"]);
            assert!(r.is_err(), "--worker-threads {bad} accepted");
        }
    }

    #[test]
    fn standalone_drop_behind_is_off_by_default_and_refuses_zero() {
        let mb = |args: &[&str]| match parse(args).command {
            Command::Standalone(a) => a.drop_behind_mb,
            _ => unreachable!(),
        };
        assert_eq!(mb(&["standalone"]), None);
        assert_eq!(mb(&["standalone", "--drop-behind-mb", "64"]), Some(64));
        for bad in ["0", "x", "-1"] {
            let r = Cli::try_parse_from(["sofamq", "standalone", "--drop-behind-mb", bad]);
            assert!(r.is_err(), "--drop-behind-mb {bad} accepted");
        }
    }

    #[test]
    fn standalone_prefill_is_16_mib_by_default_and_0_turns_it_off() {
        let mb = |args: &[&str]| match parse(args).command {
            Command::Standalone(a) => a.prefill_mb,
            _ => unreachable!(),
        };
        assert_eq!(mb(&["standalone"]), 16);
        assert_eq!(mb(&["standalone", "--prefill-mb", "0"]), 0);
        for bad in ["x", "-1", "1025"] {
            let r = Cli::try_parse_from(["sofamq", "standalone", "--prefill-mb", bad]);
            assert!(r.is_err(), "--prefill-mb {bad} accepted");
        }
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_color(true, None));
        assert!(!use_color(false, None));
        assert!(!use_color(true, Some("1".into())));
        assert!(use_color(true, Some("".into())));
    }
}
