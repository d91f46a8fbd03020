//! The workloads, each a sequence of phases over one broker.
//!
//! Every phase reports what it moved, in how long, and (for a Strata the tool started) the
//! object-store calls made during that phase and the broker's peak memory so far.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use crate::broker::{Broker, StoreCounts, find_binary};
use crate::kafka::{self, ConsumeSpec, ProduceSpec};
use crate::native;
use crate::report::{Percentiles, Report};
use crate::{RunArgs, Workload};

const GIB: f64 = (1u64 << 30) as f64;

/// The simulated object-store latency of W4, as the broker's flag takes it.
const W4_LATENCY: &str = "put=100:200,get=20:60";

/// Broker flags for the replay workloads: compact each second, with no minimum age.
const COMPACT_AT_ONCE: [&str; 4] = [
    "--compaction-interval-ms",
    "1000",
    "--compaction-min-age-ms",
    "0",
];

/// Compaction is settled when its counter has not moved for this long.
const COMPACTION_QUIET: Duration = Duration::from_secs(3);

/// Waits (at most two minutes) until the broker's compaction has caught up with what was
/// written; returns how long that took, and how many compactions ran.
fn settle_compaction(broker: &Broker) -> Result<(f64, f64)> {
    let started = Instant::now();
    let mut last = broker.metric("strata_compactions_total")?;
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < COMPACTION_QUIET && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(250));
        let now = broker.metric("strata_compactions_total")?;
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    let busy = (started.elapsed() - COMPACTION_QUIET.min(started.elapsed())).as_secs_f64();
    Ok((busy, last))
}

/// The broker under test: one this tool started, or one given by `--bootstrap`.
struct Target {
    broker: Option<Broker>,
    bootstrap: String,
}

impl Target {
    fn new(args: &RunArgs, extra: &[&str]) -> Result<Target> {
        if let Some(b) = &args.bootstrap {
            return Ok(Target {
                broker: None,
                bootstrap: b.clone(),
            });
        }
        let bin = find_binary(args.strata_bin.as_deref())?;
        let broker = Broker::start(bin, extra.iter().map(|s| s.to_string()).collect())?;
        let bootstrap = broker.bootstrap();
        Ok(Target {
            broker: Some(broker),
            bootstrap,
        })
    }

    fn counts(&self) -> Result<Option<StoreCounts>> {
        self.broker.as_ref().map(Broker::store_counts).transpose()
    }

    fn rss(&self) -> Option<u64> {
        self.broker.as_ref().and_then(Broker::peak_rss)
    }

    /// Fills in the broker-side figures of a phase that began at `before`.
    fn finish(&self, report: &mut Report, before: Option<StoreCounts>) -> Result<()> {
        if let (Some(before), Some(now)) = (before, self.counts()?) {
            report.object_store = Some(now.since(before));
        }
        report.broker_peak_rss_bytes = self.rss();
        Ok(())
    }
}

fn bar(total: Option<u64>, what: &str) -> ProgressBar {
    let bar = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    let template = match total {
        Some(_) => "{msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec})",
        None => "{msg} [{elapsed_precise}] {spinner} {bytes} ({bytes_per_sec})",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn topic_name(workload: &str) -> String {
    format!(
        "loadtest-{}-{}",
        workload.to_lowercase(),
        std::process::id()
    )
}

fn produce_spec(args: &RunArgs, target: &Target, topic: &str) -> ProduceSpec {
    ProduceSpec {
        bootstrap: target.bootstrap.clone(),
        topic: topic.to_string(),
        partitions: args.partitions,
        record_size: args.record_size,
        acks: args.acks.clone(),
        producers: args.producers,
        duration: Some(Duration::from_secs(args.duration)),
        total_bytes: None,
        rate: args.rate.map(|r| r * 1e6),
        stamp_send_time: false,
    }
}

/// A timed ingest phase.
fn ingest(
    args: &RunArgs,
    target: &Target,
    topic: &str,
    name: &str,
    stop: &AtomicBool,
) -> Result<Report> {
    let spec = produce_spec(args, target, topic);
    let before = target.counts()?;
    let pb = bar(None, &format!("{name}: producing"));
    let result = kafka::produce(&spec, stop, &pb)?;
    pb.finish_and_clear();
    let mut r = Report::new(name, result.records, result.bytes, result.seconds);
    r.latency_ms = Percentiles::of(&result.latency);
    r.extra
        .insert("failed_records".into(), result.errors as f64);
    target.finish(&mut r, before)?;
    if let Some(s) = &r.object_store
        && result.bytes > 0
    {
        r.extra.insert(
            "puts_per_gib".into(),
            s.put as f64 / (result.bytes as f64 / GIB),
        );
        r.extra.insert(
            "stored_to_produced_ratio".into(),
            s.put_bytes as f64 / result.bytes as f64,
        );
    }
    Ok(r)
}

/// W2: ingest over QUIC, then read everything back with fetches and with subscriptions.
fn native_ingest(
    args: &RunArgs,
    target: &Target,
    topic: &str,
    stop: &AtomicBool,
) -> Result<Vec<Report>> {
    let endpoint = target
        .broker
        .as_ref()
        .map(Broker::native)
        .ok_or_else(|| anyhow::anyhow!("W2 needs a Strata broker started by this tool"))?;
    native::create_topic(&endpoint, topic, args.partitions)?;
    let acks = match args.acks.as_str() {
        "0" => 0,
        "1" => 1,
        _ => -1,
    };
    let before = target.counts()?;
    let pb = bar(None, "W2: producing over QUIC");
    let result = native::produce(
        &endpoint,
        topic,
        args.partitions,
        args.record_size,
        acks,
        args.producers,
        Duration::from_secs(args.duration),
        stop,
        &pb,
    )?;
    pb.finish_and_clear();
    let mut ingest = Report::new("W2", result.records, result.bytes, result.seconds);
    ingest.protocol = "quic".into();
    ingest.latency_ms = Percentiles::of(&result.latency);
    ingest
        .extra
        .insert("failed_records".into(), result.errors as f64);
    target.finish(&mut ingest, before)?;
    let mut out = vec![ingest];
    for (name, subscribe) in [("W2 fetch", false), ("W2 subscribe", true)] {
        let pb = bar(Some(result.bytes), &format!("{name}: reading"));
        let before = target.counts()?;
        let read = native::read(
            &endpoint,
            topic,
            args.partitions,
            result.records,
            subscribe,
            stop,
            &pb,
        )?;
        pb.finish_and_clear();
        let mut r = Report::new(name, read.records, read.bytes, read.seconds);
        r.protocol = "quic".into();
        target.finish(&mut r, before)?;
        out.push(r);
    }
    Ok(out)
}

/// Writes `args.bytes`, then (Strata) restarts with an empty cache and reads it all back.
fn replay(
    args: &RunArgs,
    target: &mut Target,
    topic: &str,
    name: &str,
    stop: &AtomicBool,
) -> Result<Vec<Report>> {
    let mut spec = produce_spec(args, target, topic);
    spec.duration = None;
    spec.total_bytes = Some(args.bytes);
    let before = target.counts()?;
    let pb = bar(Some(args.bytes), &format!("{name}: writing"));
    let written = kafka::produce(&spec, stop, &pb)?;
    pb.finish_and_clear();
    let mut write = Report::new(
        &format!("{name} write"),
        written.records,
        written.bytes,
        written.seconds,
    );
    write.latency_ms = Percentiles::of(&written.latency);
    target.finish(&mut write, before)?;
    if let Some(b) = target.broker.as_mut() {
        let pb = bar(None, &format!("{name}: compaction settling"));
        let (seconds, compactions) = settle_compaction(b)?;
        pb.finish_and_clear();
        write.extra.insert("compaction_seconds".into(), seconds);
        write.extra.insert("compactions".into(), compactions);
        b.restart(true)?;
    }
    let before = target.counts()?;
    let pb = bar(Some(written.bytes), &format!("{name}: cold replay"));
    let read = kafka::consume(
        &ConsumeSpec {
            bootstrap: target.bootstrap.clone(),
            topic: topic.to_string(),
            partitions: args.partitions,
            consumers: args.consumers,
            from_beginning: true,
            records: Some(written.records),
            duration: None,
            stamped: false,
        },
        stop,
        &pb,
    )?;
    pb.finish_and_clear();
    let mut r = Report::new(
        &format!("{name} cold replay"),
        read.records,
        read.bytes,
        read.seconds,
    );
    target.finish(&mut r, before)?;
    if let Some(s) = &r.object_store
        && read.bytes > 0
    {
        r.extra.insert(
            "gets_per_gib_replayed".into(),
            s.get as f64 / (read.bytes as f64 / GIB),
        );
    }
    Ok(vec![write, r])
}

/// W4: a fixed-rate producer and a tailing consumer, end-to-end latency from stamps.
fn latency(args: &RunArgs, target: &Target, topic: &str, stop: &AtomicBool) -> Result<Report> {
    let mut spec = produce_spec(args, target, topic);
    spec.rate = Some(args.rate.unwrap_or(20.0) * 1e6);
    spec.stamp_send_time = true;
    let consume = ConsumeSpec {
        bootstrap: target.bootstrap.clone(),
        topic: topic.to_string(),
        partitions: args.partitions,
        consumers: args.consumers,
        from_beginning: true,
        records: None,
        duration: Some(Duration::from_secs(args.duration + 10)),
        stamped: true,
    };
    let before = target.counts()?;
    let pb = bar(None, "W4: producing at a fixed rate");
    let (produced, consumed) = std::thread::scope(|s| {
        let consumer = s.spawn(|| kafka::consume(&consume, stop, &ProgressBar::hidden()));
        let produced = kafka::produce(&spec, stop, &pb);
        (produced, consumer.join())
    });
    pb.finish_and_clear();
    let produced = produced?;
    let consumed = consumed.map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
    let mut r = Report::new("W4", produced.records, produced.bytes, produced.seconds);
    r.latency_ms = Percentiles::of(&produced.latency);
    r.e2e_latency_ms = consumed.e2e.as_ref().and_then(Percentiles::of);
    r.extra
        .insert("consumed_records".into(), consumed.records as f64);
    target.finish(&mut r, before)?;
    Ok(r)
}

/// W5's idle phase: no traffic, count calls.
fn idle(args: &RunArgs, target: &Target, stop: &AtomicBool) -> Result<Report> {
    let before = target.counts()?;
    let pb = bar(Some(args.idle_seconds), "W5: idle");
    pb.set_style(
        ProgressStyle::with_template("{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} s")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for _ in 0..args.idle_seconds {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        pb.inc(1);
    }
    let seconds = pb.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let mut r = Report::new("W5 idle", 0, 0, seconds);
    target.finish(&mut r, before)?;
    if let Some(s) = &r.object_store {
        let minutes = seconds / 60.0;
        r.extra
            .insert("idle_puts_per_min".into(), s.put as f64 / minutes);
        r.extra
            .insert("idle_gets_per_min".into(), s.get as f64 / minutes);
    }
    Ok(r)
}

/// Runs the workload `args` names.
pub fn run(args: &RunArgs, stop: &AtomicBool) -> Result<Vec<Report>> {
    let name = format!("{:?}", args.workload);
    let topic = topic_name(&name);
    let extra: &[&str] = match args.workload {
        Workload::W4 => &["--simulate-object-store-latency", W4_LATENCY],
        // Replays read history as it is after compaction (months-old data always is):
        // compaction starts as soon as data is written instead of after a minute.
        Workload::W3 | Workload::W5 | Workload::W6 => &COMPACT_AT_ONCE,
        _ => &[],
    };
    if args.workload == Workload::W2 && args.bootstrap.is_some() {
        anyhow::bail!(
            "W2 speaks Strata's native protocol over QUIC; it cannot run against --bootstrap"
        );
    }
    let mut target = Target::new(args, extra)?;
    if args.workload == Workload::W2 {
        let reports = native_ingest(args, &target, &topic, stop)?;
        if let Some(b) = target.broker.as_mut() {
            b.stop()?;
        }
        return Ok(reports);
    }
    kafka::create_topic(&target.bootstrap, &topic, args.partitions)?;
    let reports = match args.workload {
        Workload::W1 => vec![ingest(args, &target, &topic, "W1", stop)?],
        Workload::W2 => unreachable!("handled above"),
        Workload::W3 => replay(args, &mut target, &topic, "W3", stop)?,
        Workload::W4 => vec![latency(args, &target, &topic, stop)?],
        Workload::W5 => {
            let mut out = vec![ingest(args, &target, &topic, "W5 ingest", stop)?];
            // Idle means no data arrives and no work is left: compaction of what was just
            // written finishes first (its PUTs are counted in neither phase).
            if let Some(b) = target.broker.as_ref() {
                settle_compaction(b)?;
            }
            out.push(idle(args, &target, stop)?);
            let replay_topic = format!("{topic}-replay");
            kafka::create_topic(&target.bootstrap, &replay_topic, args.partitions)?;
            out.extend(replay(args, &mut target, &replay_topic, "W5", stop)?);
            out
        }
        Workload::W6 => {
            let mut out = vec![ingest(args, &target, &topic, "W6 (W1 ingest)", stop)?];
            let replay_topic = format!("{topic}-replay");
            kafka::create_topic(&target.bootstrap, &replay_topic, args.partitions)?;
            out.extend(replay(args, &mut target, &replay_topic, "W6 (W3)", stop)?);
            out
        }
    };
    if let Some(b) = target.broker.as_mut() {
        b.stop()?;
    }
    Ok(reports)
}
