//! `strata produce TOPIC`: one record per input line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::output::progress;
use crate::client::{Client, Producer, ProducerConfig};

/// Acknowledgements outstanding before reading more input.
const MAX_PENDING: usize = 200_000;

/// `strata produce` flags.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to produce to.
    pub topic: String,
    /// Read lines from this file instead of stdin.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Split each line at the first SEP into key and value.
    #[arg(long, value_name = "SEP")]
    pub key_sep: Option<String>,
    /// `0`, `1` or `all`: how durable a record is before it counts as produced.
    #[arg(long, default_value = "all", value_parser = parse_acks)]
    pub acks: i16,
    /// Produce every record to this partition instead of choosing by key.
    #[arg(long)]
    pub partition: Option<i32>,
    /// How long records may wait for a fuller batch, in ms.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
}

fn parse_acks(s: &str) -> Result<i16, String> {
    match s {
        "0" => Ok(0),
        "1" => Ok(1),
        "all" | "-1" => Ok(-1),
        _ => Err(format!("'{s}' is not an ack level: use 0, 1 or all")),
    }
}

/// Runs `strata produce`.
pub async fn run(client: &Client, args: ProduceArgs) -> Result<()> {
    let config = ProducerConfig {
        acks: args.acks,
        linger: std::time::Duration::from_millis(args.linger_ms),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config).await?;
    producer.partitions(&args.topic).await?;
    let input: Box<dyn AsyncRead + Unpin + Send> = match &args.file {
        Some(path) => Box::new(
            tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open {}", path.display()))?,
        ),
        None => Box::new(tokio::io::stdin()),
    };
    let mut lines = BufReader::with_capacity(1 << 20, input).split(b'\n');
    let bar = progress(None, "produced");
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    let (mut sent, mut acked, mut failed) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    let mut note =
        |result: Result<crate::client::Delivered, crate::client::ClientError>| match result {
            Ok(_) => acked += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        };
    while let Some(mut line) = lines.next_segment().await.context("cannot read input")? {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let (key, value) = split(line, args.key_sep.as_deref());
        let record = crate::client::batch::Record {
            key,
            value: Some(value),
            headers: Vec::new(),
            timestamp: chrono::Utc::now().timestamp_millis(),
        };
        pending.push(
            producer
                .send_record(&args.topic, args.partition, record)
                .await?,
        );
        sent += 1;
        while pending.len() >= MAX_PENDING {
            if let Some(r) = pending.next().await {
                note(r);
            }
        }
        while let Some(Some(r)) = futures::FutureExt::now_or_never(pending.next()) {
            note(r);
            bar.inc(1);
        }
    }
    producer.flush().await;
    while let Some(r) = pending.next().await {
        note(r);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "produced {acked} of {sent} records to {} in {secs:.2} s ({:.0} records/s)",
        args.topic,
        acked as f64 / secs.max(1e-9)
    );
    producer.close().await;
    if let Some(e) = first_error {
        bail!("{failed} records were not produced; the first error: {e}");
    }
    Ok(())
}

fn split(line: Vec<u8>, sep: Option<&str>) -> (Option<Bytes>, Bytes) {
    let line = Bytes::from(line);
    let Some(sep) = sep.filter(|s| !s.is_empty()) else {
        return (None, line);
    };
    match line.windows(sep.len()).position(|w| w == sep.as_bytes()) {
        Some(i) => (Some(line.slice(..i)), line.slice(i + sep.len()..)),
        None => (None, line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_at_the_first_separator() {
        let (k, v) = split(b"user-1:a:b".to_vec(), Some(":"));
        assert_eq!(k.as_deref(), Some(&b"user-1"[..]));
        assert_eq!(&v[..], b"a:b");
        let (k, v) = split(b"no separator".to_vec(), Some("::"));
        assert_eq!(k, None);
        assert_eq!(&v[..], b"no separator");
    }
}
