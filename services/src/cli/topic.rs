//! `strata topic create|list|describe|alter|delete`.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use clap::Subcommand;
use strata_proto::native::messages::{AlterTopicRequest, CreateTopicRequest, TopicDescription};

use super::output::{print, table};
use crate::client::Client;

/// `strata topic …`.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Partition count.
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// A topic config, `KEY=VALUE` (Kafka names, e.g. retention.ms=86400000); repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
    },
    /// List topics.
    List,
    /// Show a topic's partitions (offsets) and configs.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Change configs or grow the partition count.
    Alter {
        /// Topic name.
        name: String,
        /// Set a config, `KEY=VALUE`; repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// Return a config to its default; repeatable.
        #[arg(long = "delete-config", value_name = "KEY")]
        delete: Vec<String>,
        /// New, larger partition count.
        #[arg(long)]
        partitions: Option<i32>,
    },
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
    },
}

fn parse_configs(configs: &[String]) -> Result<BTreeMap<String, String>> {
    configs
        .iter()
        .map(|c| match c.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--config '{c}' must be KEY=VALUE, e.g. retention.ms=86400000"),
        })
        .collect()
}

/// Runs a topic command.
pub async fn run(client: &Client, command: TopicCommand) -> Result<()> {
    match command {
        TopicCommand::Create {
            name,
            partitions,
            configs,
        } => {
            let req = CreateTopicRequest {
                name: name.clone(),
                partitions,
                configs: parse_configs(&configs)?,
                validate_only: false,
            };
            let t = client.create_topic(&req).await?;
            eprintln!(
                "created topic {} with {} partitions",
                t.name,
                t.partitions.len()
            );
        }
        TopicCommand::List => {
            let meta = client.metadata(None).await?;
            let mut t = table(["TOPIC", "PARTITIONS", "ID"]);
            for topic in &meta.topics {
                t.add_row([
                    topic.name.clone(),
                    topic.partitions.len().to_string(),
                    topic.id.clone(),
                ]);
            }
            print(&t);
        }
        TopicCommand::Describe { name } => describe(&client.describe_topic(&name).await?),
        TopicCommand::Alter {
            name,
            configs,
            delete,
            partitions,
        } => {
            if configs.is_empty() && delete.is_empty() && partitions.is_none() {
                bail!(
                    "nothing to change: give --config KEY=VALUE, --delete-config KEY or --partitions N"
                );
            }
            let req = AlterTopicRequest {
                name,
                set: parse_configs(&configs)?,
                delete,
                partitions,
            };
            describe(&client.alter_topic(&req).await?);
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            eprintln!("deleted topic {name}");
        }
    }
    Ok(())
}

fn describe(d: &TopicDescription) {
    println!(
        "topic {} (id {}), {} partitions",
        d.name,
        d.id,
        d.partitions.len()
    );
    println!();
    let mut t = table([
        "PARTITION",
        "LEADER",
        "LOG START",
        "END OFFSET",
        "OFFSETS",
        "STORED BYTES",
        "EXTENTS",
        "OBJECTS",
    ]);
    for p in &d.partitions {
        t.add_row([
            p.partition.to_string(),
            p.leader.to_string(),
            p.log_start.to_string(),
            p.high_watermark.to_string(),
            (p.high_watermark - p.log_start).to_string(),
            p.stored_bytes.to_string(),
            p.extents.to_string(),
            p.objects.to_string(),
        ]);
    }
    print(&t);
    println!();
    let mut t = table(["CONFIG", "VALUE", "SOURCE"]);
    for c in &d.configs {
        t.add_row([
            c.name.clone(),
            c.value.clone().unwrap_or_default(),
            c.source.clone(),
        ]);
    }
    print(&t);
}
