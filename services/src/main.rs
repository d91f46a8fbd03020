//! `strata`: the broker and its command line.

use clap::{Parser, Subcommand};

use strata::cli::{ClientCommand, ConnectArgs};
use strata::config::ServeArgs;

/// Strata: a Kafka-compatible log service whose data lives in object storage.
#[derive(Parser)]
#[command(name = "strata", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker. With no flags: SQLite catalog and local object store under
    /// ./strata-data, Kafka on 127.0.0.1:9092, QUIC on 127.0.0.1:9093 (UDP), HTTP on
    /// 127.0.0.1:9094.
    Serve(Box<ServeArgs>),
    /// Rebuild a lost catalog from the object store alone (the newest catalog snapshot and
    /// every segment's footer), into a new, empty catalog.
    Recover(strata::cli::recover::RecoverArgs),
    #[command(flatten)]
    Client(ClientCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The broker logs what it does; a command-line tool only what goes wrong.
    let default_level = match cli.command {
        Command::Serve(_) | Command::Recover(_) => "info",
        Command::Client(_) => "warn",
    };
    let telemetry = strata::telemetry::Telemetry::init(default_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(strata::serve::run(*args)),
        Command::Recover(args) => runtime.block_on(strata::cli::recover::run(args)),
        Command::Client(command) => runtime.block_on(strata::cli::run(command, cli.connect)),
    };
    telemetry.shutdown();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
