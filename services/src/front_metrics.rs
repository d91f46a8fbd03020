//! The metrics every front end keeps, registered the same way: requests counted by kind,
//! their latency, and connections by how they started or ended.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

/// Request and connection metrics of one front end.
pub struct FrontEndMetrics {
    /// `strata_<front>_requests_total`.
    pub requests: IntCounterVec,
    /// `strata_<front>_request_seconds`.
    pub seconds: HistogramVec,
    /// `strata_<front>_connections_total{outcome}`.
    pub connections: IntCounterVec,
}

impl FrontEndMetrics {
    /// Registers `strata_<front>_…` in the process registry. `requests` and `seconds` give
    /// each metric's help text and labels. Call once per front end (a `LazyLock` static).
    pub fn register(
        front: &str,
        requests: (&str, &[&str]),
        seconds: (&str, &[&str]),
        connections_help: &str,
    ) -> FrontEndMetrics {
        let registry = &strata_storage::metrics::metrics().registry;
        let requests_vec = IntCounterVec::new(
            Opts::new(format!("strata_{front}_requests_total"), requests.0),
            requests.1,
        )
        .expect("metric name is valid");
        let seconds_vec = HistogramVec::new(
            HistogramOpts::new(format!("strata_{front}_request_seconds"), seconds.0)
                .buckets(strata_storage::metrics::latency_buckets()),
            seconds.1,
        )
        .expect("metric name is valid");
        let connections = IntCounterVec::new(
            Opts::new(
                format!("strata_{front}_connections_total"),
                connections_help,
            ),
            &["outcome"],
        )
        .expect("metric name is valid");
        for m in [
            Box::new(requests_vec.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(seconds_vec.clone()),
            Box::new(connections.clone()),
        ] {
            registry.register(m).expect("metric is registered once");
        }
        FrontEndMetrics {
            requests: requests_vec,
            seconds: seconds_vec,
            connections,
        }
    }
}
