//! Process-wide Prometheus metrics for the storage engine.
//!
//! One registry for the whole process, so the broker's `/metrics` shows the engine's counters
//! (object-store calls, WAL syncs, flushes, cache hits) beside the front ends' own. Metrics are
//! created once, on first use, and cost an atomic add per event.

use std::sync::LazyLock;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// The engine's metrics. Reach them through [`metrics()`].
pub struct Metrics {
    /// The registry every Strata metric is registered in.
    pub registry: Registry,
    /// Object-store calls by operation (`put`, `get`, `delete`, `list`, `head`).
    pub object_store_requests: IntCounterVec,
    /// Object-store payload bytes by operation.
    pub object_store_bytes: IntCounterVec,
    /// Object-store calls that failed, by operation.
    pub object_store_errors: IntCounterVec,
    /// Object-store call latency by operation.
    pub object_store_seconds: HistogramVec,
    /// `fdatasync` calls made by the WAL; each covers a whole group of appends.
    pub wal_syncs: IntCounter,
    /// Entries appended to the WAL.
    pub wal_appends: IntCounter,
    /// Bytes appended to the WAL (entry framing included).
    pub wal_bytes: IntCounter,
    /// Time one WAL group write + sync takes.
    pub wal_sync_seconds: Histogram,
    /// Segment objects written by the flusher.
    pub flushes: IntCounter,
    /// Objects deleted because no live record was left in them.
    pub gc_objects_deleted: IntCounter,
    /// Compactions committed (runs of small extents rewritten as one object).
    pub compactions: IntCounter,
    /// Bytes rewritten by compaction.
    pub compacted_bytes: IntCounter,
    /// Orphans deleted: objects a flush stored but never committed (a crash between the two).
    pub gc_orphans_deleted: IntCounter,
    /// Times retention moved a partition's log start.
    pub retention_moves: IntCounter,
    /// Records removed by key compaction (`cleanup.policy=compact`).
    pub cleaned_records: IntCounter,
    /// Catalog snapshots written to the object store.
    pub snapshots: IntCounter,
    /// Size of each flushed segment object.
    pub flush_bytes: Histogram,
    /// Time from the start of a flush to its catalog commit.
    pub flush_seconds: Histogram,
    /// Flushes that failed and will be retried.
    pub flush_errors: IntCounter,
    /// Partitions dropped from a flush because a newer owner had claimed them.
    pub flush_fenced: IntCounter,
    /// Time the committer waits for a flush's PUT to finish (after earlier commits).
    pub flush_put_wait_seconds: Histogram,
    /// Time one catalog commit of a flush takes.
    pub flush_commit_seconds: Histogram,
    /// Read-cache lookups that found the bytes.
    pub cache_hits: IntCounter,
    /// Read-cache lookups that went to the object store.
    pub cache_misses: IntCounter,
    /// Bytes accepted but not yet flushed to the object store.
    pub unflushed_bytes: IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric name is valid");
    registry
        .register(Box::new(c.clone()))
        .expect("metric is registered once");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("metric name is valid");
    registry
        .register(Box::new(c.clone()))
        .expect("metric is registered once");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("metric name is valid");
    registry
        .register(Box::new(h.clone()))
        .expect("metric is registered once");
    h
}

/// Latency buckets from 100 µs to 10 s.
pub fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0001, 2.5, 14).expect("valid buckets")
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let object_store_seconds = HistogramVec::new(
        HistogramOpts::new(
            "strata_object_store_seconds",
            "Object-store call latency by operation.",
        )
        .buckets(latency_buckets()),
        &["op"],
    )
    .expect("metric name is valid");
    registry
        .register(Box::new(object_store_seconds.clone()))
        .expect("metric is registered once");
    let unflushed_bytes = IntGauge::new(
        "strata_unflushed_bytes",
        "Bytes accepted but not yet in the object store.",
    )
    .expect("metric name is valid");
    registry
        .register(Box::new(unflushed_bytes.clone()))
        .expect("metric is registered once");
    Metrics {
        object_store_requests: counter_vec(
            &registry,
            "strata_object_store_requests_total",
            "Object-store calls by operation.",
            "op",
        ),
        object_store_bytes: counter_vec(
            &registry,
            "strata_object_store_bytes_total",
            "Object-store payload bytes by operation.",
            "op",
        ),
        object_store_errors: counter_vec(
            &registry,
            "strata_object_store_errors_total",
            "Object-store calls that failed, by operation.",
            "op",
        ),
        object_store_seconds,
        wal_syncs: counter(&registry, "strata_wal_syncs_total", "WAL fdatasync calls."),
        wal_appends: counter(
            &registry,
            "strata_wal_appends_total",
            "WAL entries appended.",
        ),
        wal_bytes: counter(
            &registry,
            "strata_wal_bytes_total",
            "Bytes appended to the WAL.",
        ),
        wal_sync_seconds: histogram(
            &registry,
            "strata_wal_sync_seconds",
            "Time one WAL group write and sync takes.",
            latency_buckets(),
        ),
        flushes: counter(
            &registry,
            "strata_flushes_total",
            "Segment objects flushed.",
        ),
        compactions: counter(
            &registry,
            "strata_compactions_total",
            "Runs of small extents rewritten as one object.",
        ),
        compacted_bytes: counter(
            &registry,
            "strata_compacted_bytes_total",
            "Bytes rewritten by compaction.",
        ),
        gc_orphans_deleted: counter(
            &registry,
            "strata_gc_orphans_deleted_total",
            "Objects deleted because no catalog commit ever recorded them (a crash between PUT and commit).",
        ),
        retention_moves: counter(
            &registry,
            "strata_retention_moves_total",
            "Times retention.ms or retention.bytes moved a partition's log start.",
        ),
        cleaned_records: counter(
            &registry,
            "strata_cleaned_records_total",
            "Records removed by key compaction: older records of a key, expired tombstones.",
        ),
        snapshots: counter(
            &registry,
            "strata_snapshots_total",
            "Catalog snapshots written to the object store.",
        ),
        gc_objects_deleted: counter(
            &registry,
            "strata_gc_objects_deleted_total",
            "Objects deleted after retention or DeleteRecords left no live record in them.",
        ),
        flush_bytes: histogram(
            &registry,
            "strata_flush_bytes",
            "Size of each flushed segment object.",
            prometheus::exponential_buckets(1024.0, 4.0, 10).expect("valid buckets"),
        ),
        flush_seconds: histogram(
            &registry,
            "strata_flush_seconds",
            "Time from the start of a flush to its catalog commit.",
            latency_buckets(),
        ),
        flush_put_wait_seconds: histogram(
            &registry,
            "strata_flush_put_wait_seconds",
            "Time the committer waits for a flush's PUT after the previous commit.",
            latency_buckets(),
        ),
        flush_commit_seconds: histogram(
            &registry,
            "strata_flush_commit_seconds",
            "Time one catalog commit of a flush takes.",
            latency_buckets(),
        ),
        flush_errors: counter(
            &registry,
            "strata_flush_errors_total",
            "Flushes that failed and were retried.",
        ),
        flush_fenced: counter(
            &registry,
            "strata_flush_fenced_total",
            "Partitions dropped from a flush because another broker had claimed them.",
        ),
        cache_hits: counter(&registry, "strata_cache_hits_total", "Read-cache hits."),
        cache_misses: counter(&registry, "strata_cache_misses_total", "Read-cache misses."),
        unflushed_bytes,
        registry,
    }
});

/// The process's storage metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}
