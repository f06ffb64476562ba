//! `sofamq`: the one user binary — servers, a local cluster, client and admin
//! commands, benchmarks.

mod admin;
mod auth;
mod bench;
mod chaos;
mod consume;
mod controller;
mod ops;
mod produce;
mod servers;
mod shutdown;
mod standalone;
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
    /// Send throughput and latency through a running cluster.
    Produce(bench::ProduceBenchArgs),
    /// Receive + ack throughput of a consumer group through a running cluster.
    Consume(bench::ConsumeBenchArgs),
    /// Send-to-receive latency: producers and consumers together.
    E2e(bench::E2eBenchArgs),
    /// Timer (DELAY) lateness: steady-rate timers, received by a consumer group.
    Timers(bench::TimersBenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `chaos` drives SDK clients through faults on purpose: their retry logs are noise there.
    let default_filter = match cli.command {
        Command::Chaos(_) => "warn,sofamq_client=off",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        // No colour codes in files and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    auth::init(&cli.auth)?;
    if let Command::Bench(BenchCmd::Store(args)) = cli.command {
        return bench::bench_store(args);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
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
            Command::Admin(c) => admin::run(c).await,
            Command::Chaos(a) => chaos::run(a).await,
            Command::Bench(BenchCmd::Store(_)) => unreachable!("handled above"),
        }
    })
}
