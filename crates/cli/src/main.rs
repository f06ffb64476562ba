//! `sofamq`: the one user binary.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "sofamq", version, about = "SofaMQ: a durable message queue")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Placeholder until the store bench lands.
    Store,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(BenchCmd::Store) => Ok(()),
    }
}
