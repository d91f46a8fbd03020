//! `strata group list|describe|reset-offsets|delete`.

use anyhow::{Result, bail};
use clap::Subcommand;
use strata_proto::native::messages::{CommitOffsetsRequest, PartitionOffset};

use super::output::{print, table};
use super::parse_start;
use crate::client::{Client, Consumer, StartFrom};

/// `strata group …`.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List consumer groups.
    List,
    /// Show a group's members, committed offsets and lag.
    Describe {
        /// Group id.
        group: String,
    },
    /// Move a group's committed offsets (only while it has no active members).
    ResetOffsets {
        /// Group id.
        group: String,
        /// The topic whose offsets to move.
        #[arg(long)]
        topic: String,
        /// Where to: earliest, latest, OFFSET or @TIMESTAMP.
        #[arg(long, value_parser = parse_start)]
        to: StartFrom,
        /// Only this partition.
        #[arg(long)]
        partition: Option<i32>,
    },
    /// Delete a group (with no active members) and its committed offsets.
    Delete {
        /// Group id.
        group: String,
    },
}

/// Runs a group command.
pub async fn run(client: &Client, command: GroupCommand) -> Result<()> {
    match command {
        GroupCommand::List => {
            let groups = client.list_groups().await?;
            let mut t = table(["GROUP", "STATE", "PROTOCOL TYPE", "MEMBERS"]);
            for g in groups.groups {
                t.add_row([g.group, g.state, g.protocol_type, g.members.to_string()]);
            }
            print(&t);
        }
        GroupCommand::Describe { group } => {
            let d = client.describe_group(&group).await?;
            println!(
                "group {} is {}{}",
                d.group,
                d.state,
                if d.protocol.is_empty() {
                    String::new()
                } else {
                    format!(" (protocol {} {})", d.protocol_type, d.protocol)
                }
            );
            println!();
            let mut t = table(["MEMBER", "INSTANCE", "CLIENT", "HOST", "PARTITIONS"]);
            for m in &d.members {
                let parts: Vec<String> = m
                    .assignment
                    .iter()
                    .map(|p| format!("{}/{}", p.topic, p.partition))
                    .collect();
                t.add_row([
                    m.member_id.clone(),
                    m.instance_id.clone().unwrap_or_else(|| "-".into()),
                    m.client_id.clone(),
                    m.client_host.clone(),
                    parts.join(","),
                ]);
            }
            print(&t);
            println!();
            let mut t = table(["TOPIC", "PARTITION", "COMMITTED", "END OFFSET", "LAG"]);
            for o in &d.offsets {
                t.add_row([
                    o.topic.clone(),
                    o.partition.to_string(),
                    o.offset.to_string(),
                    o.high_watermark.to_string(),
                    o.lag.to_string(),
                ]);
            }
            print(&t);
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            to,
            partition,
        } => reset(client, &group, &topic, to, partition).await?,
        GroupCommand::Delete { group } => {
            client.delete_group(&group).await?;
            eprintln!("deleted group {group}");
        }
    }
    Ok(())
}

async fn reset(
    client: &Client,
    group: &str,
    topic: &str,
    to: StartFrom,
    partition: Option<i32>,
) -> Result<()> {
    let d = client.describe_topic(topic).await?;
    let partitions: Vec<i32> = match partition {
        Some(p) if d.partitions.iter().any(|x| x.partition == p) => vec![p],
        Some(p) => bail!("topic '{topic}' has no partition {p}"),
        None => d.partitions.iter().map(|p| p.partition).collect(),
    };
    let consumer = Consumer::new(client.clone());
    let mut offsets = Vec::with_capacity(partitions.len());
    for p in partitions {
        offsets.push(PartitionOffset {
            topic: topic.to_string(),
            partition: p,
            offset: consumer.resolve(topic, p, to).await?,
            metadata: None,
        });
    }
    let req = CommitOffsetsRequest {
        group: group.to_string(),
        generation: -1,
        member_id: String::new(),
        offsets: offsets.clone(),
    };
    client.commit_offsets(&req).await.map_err(|e| {
        anyhow::anyhow!("{e}; offsets can be reset only while the group has no active members: stop its consumers first")
    })?;
    let mut t = table(["TOPIC", "PARTITION", "NEW OFFSET"]);
    for o in offsets {
        t.add_row([o.topic, o.partition.to_string(), o.offset.to_string()]);
    }
    print(&t);
    Ok(())
}
