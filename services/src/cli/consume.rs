//! `strata consume TOPIC`: records printed one per line, alone or in a consumer group.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;

use super::output::progress;
use super::parse_start;
use crate::client::{Client, ConsumedRecord, Consumer, GroupMembership, StartFrom};

/// `strata consume` flags.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    /// Where to start without a committed offset: earliest, latest, OFFSET or @TIMESTAMP
    /// (ms since the epoch, or RFC 3339).
    #[arg(long, default_value = "earliest", value_parser = parse_start)]
    pub from: StartFrom,
    /// Read as a member of this consumer group, from its committed offsets, committing
    /// what was printed.
    #[arg(long)]
    pub group: Option<String>,
    /// Stop after this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// Keep waiting for new records at the end of the log.
    #[arg(long)]
    pub follow: bool,
    /// Output: a template with %k key, %v value, %o offset, %p partition, %t topic,
    /// %T timestamp (ms) and \n \t escapes; or `json` for one JSON object per record.
    #[arg(long, default_value = "%v\\n")]
    pub format: String,
    /// Read only this partition.
    #[arg(long)]
    pub partition: Option<i32>,
}

/// Runs `strata consume`.
pub async fn run(client: &Client, args: ConsumeArgs) -> Result<()> {
    let meta = client.metadata(Some(vec![args.topic.clone()])).await?;
    let topic = meta.topics.into_iter().next();
    let count = match topic {
        Some(t) if t.error.is_none() => t.partitions.len() as i32,
        Some(t) => bail!("{}", t.error.map(|e| e.message).unwrap_or_default()),
        None => bail!("topic '{}' does not exist", args.topic),
    };
    if let Some(p) = args.partition
        && !(0..count).contains(&p)
    {
        bail!(
            "topic '{}' has {count} partitions; there is no partition {p}",
            args.topic
        );
    }
    let mut consumer = Consumer::new(client.clone());
    let mut group = match &args.group {
        Some(g) => {
            Some(GroupMembership::join(client.clone(), g, vec![args.topic.clone()], None).await?)
        }
        None => None,
    };
    assign(&mut consumer, group.as_ref(), &args, count).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let bar = progress(args.count, "consumed");
    let mut printed = 0u64;
    let mut consumed: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let wait = if args.follow {
        Duration::from_secs(1)
    } else {
        Duration::ZERO
    };
    let result: Result<()> = async {
        loop {
            if args.count.is_some_and(|n| printed >= n) {
                break;
            }
            if let Some(g) = group.as_mut()
                && g.needs_rejoin()
            {
                commit(g, &consumed).await;
                g.rejoin().await?;
                consumer.unassign_all();
                assign(&mut consumer, Some(g), &args, count).await?;
            }
            if !args.follow && consumer.at_end() {
                break;
            }
            for r in consumer.poll(wait).await? {
                if args.count.is_some_and(|n| printed >= n) {
                    break;
                }
                if write(&mut out, &args.format, &r).is_err() {
                    // The reader went away (a closed pipe): stop quietly.
                    return Ok(());
                }
                consumed.insert((r.topic.clone(), r.partition), r.record.offset + 1);
                printed += 1;
                bar.inc(1);
            }
            if args.follow {
                let _ = out.flush();
            }
        }
        Ok(())
    }
    .await;
    let _ = out.flush();
    bar.finish_and_clear();
    if let Some(g) = group {
        commit(&g, &consumed).await;
        if let Err(e) = g.leave().await {
            tracing::warn!(error = %e, "could not leave the group");
        }
    }
    result
}

async fn commit(g: &GroupMembership, consumed: &BTreeMap<(String, i32), i64>) {
    let mine: BTreeMap<_, _> = consumed
        .iter()
        .filter(|(tp, _)| g.assignment().contains(tp))
        .map(|(tp, o)| (tp.clone(), *o))
        .collect();
    if mine.is_empty() {
        return;
    }
    if let Err(e) = g.commit(&mine).await {
        eprintln!("warning: could not commit offsets: {e}");
    }
}

async fn assign(
    consumer: &mut Consumer,
    group: Option<&GroupMembership>,
    args: &ConsumeArgs,
    count: i32,
) -> Result<()> {
    let partitions: Vec<i32> = match group {
        Some(g) => g
            .assignment()
            .iter()
            .filter(|(t, p)| *t == args.topic && args.partition.is_none_or(|only| only == *p))
            .map(|(_, p)| *p)
            .collect(),
        None => match args.partition {
            Some(p) => vec![p],
            None => (0..count).collect(),
        },
    };
    let committed = match group {
        Some(g) => g.committed().await?,
        None => Default::default(),
    };
    for p in partitions {
        let offset = match committed.get(&(args.topic.clone(), p)) {
            Some(o) => *o,
            None => consumer.resolve(&args.topic, p, args.from).await?,
        };
        consumer.seek(&args.topic, p, offset);
    }
    Ok(())
}

fn write(out: &mut impl Write, format: &str, r: &ConsumedRecord) -> std::io::Result<()> {
    if format == "json" {
        let text =
            |b: &Option<bytes::Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
        let line = serde_json::json!({
            "topic": r.topic,
            "partition": r.partition,
            "offset": r.record.offset,
            "timestamp": r.record.timestamp,
            "key": text(&r.record.key),
            "value": text(&r.record.value),
        });
        return writeln!(out, "{line}");
    }
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek().copied()) {
            ('%', Some(f)) => {
                chars.next();
                match f {
                    'k' => out.write_all(r.record.key.as_deref().unwrap_or_default())?,
                    'v' => out.write_all(r.record.value.as_deref().unwrap_or_default())?,
                    'o' => write!(out, "{}", r.record.offset)?,
                    'p' => write!(out, "{}", r.partition)?,
                    't' => write!(out, "{}", r.topic)?,
                    'T' => write!(out, "{}", r.record.timestamp)?,
                    '%' => out.write_all(b"%")?,
                    other => write!(out, "%{other}")?,
                }
            }
            ('\\', Some(e)) => {
                chars.next();
                match e {
                    'n' => out.write_all(b"\n")?,
                    't' => out.write_all(b"\t")?,
                    '\\' => out.write_all(b"\\")?,
                    other => write!(out, "\\{other}")?,
                }
            }
            (c, _) => write!(out, "{c}")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::batch::StoredRecord;

    #[test]
    fn templates_expand() {
        let r = ConsumedRecord {
            topic: "t".into(),
            partition: 3,
            record: StoredRecord {
                offset: 7,
                timestamp: 99,
                key: Some("k".into()),
                value: Some("v".into()),
                headers: vec![],
            },
        };
        let mut out = Vec::new();
        write(&mut out, "%t/%p@%o %k=%v %T%%\\n", &r).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "t/3@7 k=v 99%\n");
        let mut out = Vec::new();
        write(&mut out, "json", &r).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("\"offset\":7"));
    }
}
