//! Results: a table for people, JSON for machines.
//!
//! The JSON fields are a contract (BENCHMARKS.md and scripts read them): `workload`,
//! `protocol`, `records`, `bytes`, `seconds`, `mb_per_s`, `records_per_s`, `latency_ms`,
//! `e2e_latency_ms`, `object_store`, `broker_peak_rss_bytes`, plus `extra` for figures only
//! one workload has. MB is 10^6 bytes.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::broker::StoreCounts;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest seen.
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of a histogram recorded in microseconds; `None` when it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Percentiles> {
        if h.is_empty() {
            return None;
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Some(Percentiles {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
        })
    }
}

/// One phase's results.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Workload and phase, e.g. `W1` or `W3 replay`.
    pub workload: String,
    /// `kafka` or `quic`.
    pub protocol: String,
    /// Records moved.
    pub records: u64,
    /// Value bytes moved.
    pub bytes: u64,
    /// Wall time.
    pub seconds: f64,
    /// Throughput, 10^6 bytes per second.
    pub mb_per_s: f64,
    /// Records per second.
    pub records_per_s: f64,
    /// Produce acknowledgement latency.
    pub latency_ms: Option<Percentiles>,
    /// Produce → consumer latency.
    pub e2e_latency_ms: Option<Percentiles>,
    /// Object-store calls made during the phase (Strata only).
    pub object_store: Option<StoreCounts>,
    /// The broker's peak resident memory so far (Strata only).
    pub broker_peak_rss_bytes: Option<u64>,
    /// Figures particular to the workload.
    pub extra: BTreeMap<String, f64>,
}

impl Report {
    /// A report with throughput derived from records, bytes and seconds.
    pub fn new(workload: &str, records: u64, bytes: u64, seconds: f64) -> Report {
        let seconds = seconds.max(1e-9);
        Report {
            workload: workload.to_string(),
            protocol: "kafka".to_string(),
            records,
            bytes,
            seconds,
            mb_per_s: bytes as f64 / seconds / 1e6,
            records_per_s: records as f64 / seconds,
            latency_ms: None,
            e2e_latency_ms: None,
            object_store: None,
            broker_peak_rss_bytes: None,
            extra: BTreeMap::new(),
        }
    }
}

fn row(out: &mut String, name: &str, value: String) {
    out.push_str(&format!("  {name:<28} {value}\n"));
}

fn latency_row(out: &mut String, name: &str, p: &Option<Percentiles>) {
    if let Some(p) = p {
        row(
            out,
            name,
            format!(
                "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
                p.p50, p.p90, p.p99, p.p999, p.max
            ),
        );
    }
}

/// The reports as a plain-text table.
pub fn table(reports: &[Report]) -> String {
    let mut out = String::new();
    for r in reports {
        out.push_str(&format!("{} ({})\n", r.workload, r.protocol));
        row(&mut out, "records", r.records.to_string());
        row(&mut out, "bytes", r.bytes.to_string());
        row(&mut out, "seconds", format!("{:.2}", r.seconds));
        row(&mut out, "MB/s", format!("{:.1}", r.mb_per_s));
        row(&mut out, "records/s", format!("{:.0}", r.records_per_s));
        latency_row(&mut out, "produce latency (ms)", &r.latency_ms);
        latency_row(&mut out, "end-to-end latency (ms)", &r.e2e_latency_ms);
        if let Some(s) = &r.object_store {
            row(
                &mut out,
                "object store",
                format!(
                    "{} PUT ({} bytes), {} GET ({} bytes)",
                    s.put, s.put_bytes, s.get, s.get_bytes
                ),
            );
        }
        if let Some(rss) = r.broker_peak_rss_bytes {
            row(
                &mut out,
                "broker peak RSS (MiB)",
                format!("{:.1}", rss as f64 / 1048576.0),
            );
        }
        for (k, v) in &r.extra {
            row(&mut out, k, format!("{v:.2}"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_is_derived_from_bytes_and_seconds() {
        let r = Report::new("W1", 2_000, 4_000_000, 2.0);
        assert_eq!(r.mb_per_s, 2.0);
        assert_eq!(r.records_per_s, 1000.0);
        // A zero-length phase does not divide by zero.
        assert!(Report::new("W5 idle", 0, 0, 0.0).mb_per_s == 0.0);
    }

    #[test]
    fn percentiles_are_in_milliseconds() {
        let mut h = crate::kafka::histogram();
        for micros in 1..=1000u64 {
            h.record(micros * 1000).unwrap();
        }
        let p = Percentiles::of(&h).unwrap();
        assert!((p.p50 - 500.0).abs() < 2.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() < 2.0, "{p:?}");
        assert!((p.max - 1000.0).abs() < 2.0, "{p:?}");
        assert!(p.p50 <= p.p90 && p.p90 <= p.p99 && p.p99 <= p.p999 && p.p999 <= p.max);
        assert!(Percentiles::of(&crate::kafka::histogram()).is_none());
    }

    #[test]
    fn store_counts_subtract_and_json_has_the_contract_fields() {
        let before = StoreCounts {
            put: 1,
            get: 2,
            put_bytes: 10,
            get_bytes: 20,
        };
        let after = StoreCounts {
            put: 5,
            get: 2,
            put_bytes: 60,
            get_bytes: 25,
        };
        let mut r = Report::new("W1", 1, 1, 1.0);
        r.object_store = Some(after.since(before));
        let json = serde_json::to_value(&r).unwrap();
        for field in [
            "workload",
            "protocol",
            "records",
            "bytes",
            "seconds",
            "mb_per_s",
            "records_per_s",
            "latency_ms",
            "e2e_latency_ms",
            "object_store",
            "broker_peak_rss_bytes",
        ] {
            assert!(json.get(field).is_some(), "missing {field}");
        }
        assert_eq!(json["object_store"]["put"], 4);
        assert_eq!(json["object_store"]["get_bytes"], 5);
        assert!(table(&[r]).contains("4 PUT (50 bytes)"));
    }
}
