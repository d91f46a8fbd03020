//! The `strata` command line: topics, produce, consume, groups and the cluster, over the
//! native protocol (QUIC) through [`crate::client`].
//!
//! Every command connects with the global flags `--addr` and `--ca` (and `--cert`/`--key`
//! for brokers that require client certificates). Lists print as tables; long produce and
//! consume runs show a progress bar on a terminal; errors say what to do next.

mod cluster;
mod consume;
mod group;
mod output;
mod produce;
pub mod recover;
mod topic;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::client::{Client, ClientConfig, StartFrom};

pub use consume::ConsumeArgs;
pub use group::GroupCommand;
pub use produce::ProduceArgs;
pub use topic::TopicCommand;

/// How to reach the broker; accepted before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// The broker's QUIC address.
    #[arg(
        long,
        global = true,
        env = "STRATA_ADDR",
        default_value = "127.0.0.1:9093"
    )]
    pub addr: String,

    /// The CA certificate that signed the broker's certificate.
    #[arg(
        long,
        global = true,
        env = "STRATA_CA",
        default_value = "./strata-data/tls/ca.pem"
    )]
    pub ca: PathBuf,

    /// Client certificate (PEM), for a broker started with --client-ca.
    #[arg(long, global = true, env = "STRATA_CERT", requires = "key")]
    pub cert: Option<PathBuf>,

    /// Private key (PEM) of --cert.
    #[arg(long, global = true, env = "STRATA_KEY", requires = "cert")]
    pub key: Option<PathBuf>,

    /// The name to check the broker's certificate against (default: the host of --addr).
    #[arg(long, global = true, env = "STRATA_SERVER_NAME")]
    pub server_name: Option<String>,
}

impl ConnectArgs {
    /// Connects to the broker.
    pub async fn connect(&self) -> Result<Client> {
        let mut config = ClientConfig::new(self.addr.clone(), self.ca.clone());
        config.identity = self.cert.clone().zip(self.key.clone());
        config.server_name = self.server_name.clone();
        Ok(Client::connect(config).await?)
    }
}

/// The client commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Produce lines from stdin (or --file) as records.
    Produce(ProduceArgs),
    /// Print records of a topic.
    Consume(ConsumeArgs),
    /// List, describe, reset and delete consumer groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// The cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

/// `strata cluster …`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Brokers, their addresses and zones.
    Info,
}

/// Runs a client command.
pub async fn run(command: ClientCommand, connect: ConnectArgs) -> Result<()> {
    let client = connect.connect().await?;
    let result = match command {
        ClientCommand::Topic(c) => topic::run(&client, c).await,
        ClientCommand::Produce(a) => produce::run(&client, a).await,
        ClientCommand::Consume(a) => consume::run(&client, a).await,
        ClientCommand::Group(c) => group::run(&client, c).await,
        ClientCommand::Cluster(ClusterCommand::Info) => cluster::info(&client).await,
    };
    client.close().await;
    result
}

/// Parses `earliest`, `latest`, an offset, or `@TIMESTAMP` (ms since the epoch or RFC 3339).
pub fn parse_start(s: &str) -> Result<StartFrom, String> {
    match s {
        "earliest" | "beginning" => Ok(StartFrom::Earliest),
        "latest" | "end" => Ok(StartFrom::Latest),
        s if s.starts_with('@') => {
            let t = &s[1..];
            if let Ok(ms) = t.parse::<i64>() {
                return Ok(StartFrom::Timestamp(ms));
            }
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|d| StartFrom::Timestamp(d.timestamp_millis()))
                .map_err(|_| {
                    format!("'{t}' is not a time: use milliseconds since the epoch or RFC 3339, e.g. @2026-11-25T10:00:00Z")
                })
        }
        s => s
            .parse::<i64>()
            .ok()
            .filter(|o| *o >= 0)
            .map(StartFrom::Offset)
            .ok_or_else(|| {
                format!("'{s}' is not a start: use earliest, latest, an offset or @TIMESTAMP")
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_parse() {
        assert_eq!(parse_start("earliest"), Ok(StartFrom::Earliest));
        assert_eq!(parse_start("42"), Ok(StartFrom::Offset(42)));
        assert_eq!(
            parse_start("@1700000000000"),
            Ok(StartFrom::Timestamp(1_700_000_000_000))
        );
        assert_eq!(
            parse_start("@2023-11-14T22:13:20Z"),
            Ok(StartFrom::Timestamp(1_700_000_000_000))
        );
        assert!(parse_start("-1").is_err());
        assert!(parse_start("@yesterday").is_err());
    }
}
