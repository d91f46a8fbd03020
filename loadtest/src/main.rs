//! `strata-loadtest`: reproducible load for Strata and any Kafka-compatible broker.
//!
//! `strata-loadtest run W1` starts the release `strata` beside it (temporary data dir, free
//! loopback ports), runs the workload, prints a table and, with `--json FILE`, writes the
//! results. `--bootstrap HOST:PORT` runs the Kafka workloads against a broker already
//! running instead, for side-by-side comparisons (broker-side figures are then absent).
//! Ctrl-C stops a run cleanly and reports what it measured so far.

mod broker;
mod kafka;
mod native;
mod payload;
mod report;
mod workloads;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

/// Load tests for Strata.
#[derive(Parser)]
#[command(name = "strata-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one workload and report.
    Run(RunArgs),
}

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum Workload {
    /// Ingest over Kafka: 16 partitions, acks=all, local-dir object store.
    W1,
    /// Ingest over QUIC (Strata's native protocol), same shape as W1; then the data read back
    /// with fetches and with server-push subscriptions.
    W2,
    /// Cold replay: write 2 GiB, restart the broker with an empty cache, read it all back.
    W3,
    /// Latency at a fixed 20 MB/s with simulated object-store latency (PUT p50 100 ms / p99
    /// 200 ms, GET p50 20 ms / p99 60 ms): produce-ack and end-to-end percentiles.
    W4,
    /// Object-store cost: PUTs per GiB at full load, calls per minute idle, GETs per GiB
    /// replayed.
    W5,
    /// Broker memory: peak RSS during W1 and W3.
    W6,
}

/// Options of `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The workload.
    pub workload: Workload,
    /// Seconds of load for time-bound phases (W1, W4, W5 ingest).
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Partitions of the test topic.
    #[arg(long, default_value_t = 16)]
    pub partitions: i32,
    /// Bytes per record.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Producer acks: 0, 1 or all.
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// Fixed produce rate in MB/s (10^6 bytes); W4 defaults to 20.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Producer instances.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Consumer instances.
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// Bytes written before a replay (W3, W6), e.g. 2147483648.
    #[arg(long, default_value_t = 2 << 30)]
    pub bytes: u64,
    /// Seconds of idleness measured by W5.
    #[arg(long, default_value_t = 60)]
    pub idle_seconds: u64,
    /// Run against this already-running Kafka-compatible broker instead of starting Strata.
    #[arg(long)]
    pub bootstrap: Option<String>,
    /// The strata binary to start (default: the one beside this executable).
    #[arg(long)]
    pub strata_bin: Option<PathBuf>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let Command::Run(args) = Cli::parse().command;
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            eprintln!("\nstopping: finishing in-flight work and reporting what was measured");
            stop.store(true, Ordering::SeqCst);
        })
        .context("cannot install the Ctrl-C handler")?;
    }
    let reports = workloads::run(&args, &stop)?;
    print!("{}", report::table(&reports));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&reports)?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
        println!("results written to {}", path.display());
    }
    Ok(())
}
