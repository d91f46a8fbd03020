//! Telemetry: log lines on stderr always; OpenTelemetry traces and metrics over OTLP/HTTP when
//! the standard variables name a collector (`OTEL_EXPORTER_OTLP_ENDPOINT`, or the
//! `…_TRACES_ENDPOINT`/`…_METRICS_ENDPOINT` of one signal), and nothing at all otherwise.
//!
//! **Traces.** Requests open spans as they go through the broker: `kafka.produce` →
//! `storage.append` and `storage.durable`; `kafka.fetch` → `storage.read` →
//! `object_store.get` on a cache miss; the flusher's own `flush` → `object_store.put` and
//! `catalog.commit`. They are DEBUG-level `tracing` spans that only the OpenTelemetry layer
//! listens to, so without an exporter they are never even created. A producer's W3C trace
//! context (a `traceparent` header on the first record of an uncompressed batch) becomes the
//! parent of its `kafka.produce` span, so a trace runs from the client into the broker.
//!
//! **Metrics.** Every metric of the Prometheus registry behind `/metrics` is also exported:
//! counters as OTel counters, gauges as gauges, histograms as their `_sum` and `_count`.
//! The exporters honour the standard variables (`OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_METRIC_EXPORT_INTERVAL`, `OTEL_SERVICE_NAME`, …).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{MetricExporter, SpanExporter};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prometheus::proto::MetricType;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, filter};

/// Set when spans are exported: the produce path looks for trace context only then.
static TRACING: AtomicBool = AtomicBool::new(false);

/// How often new metric families are looked for in the Prometheus registry.
const METRIC_DISCOVERY: Duration = Duration::from_secs(1);

/// The exporters, flushed at shutdown.
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
    metrics: Option<SdkMeterProvider>,
}

/// Whether the standard variables ask for `signal` (`TRACES`, `METRICS`) to be exported.
fn wanted(signal: &str) -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let none = std::env::var(format!("OTEL_{signal}_EXPORTER")).is_ok_and(|v| v == "none");
    !disabled
        && !none
        && (set("OTEL_EXPORTER_OTLP_ENDPOINT")
            || set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")))
}

fn resource() -> Resource {
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "strata".into());
    Resource::builder().with_service_name(name).build()
}

/// Whether spans are being exported.
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

impl Telemetry {
    /// Installs the log subscriber (stderr, `RUST_LOG` or `default_level`) and, when the
    /// variables ask for them, the OTLP exporters. Exporter errors are logged, never fatal.
    pub fn init(default_level: &str) -> Telemetry {
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
            );
        let mut problems = Vec::new();
        let traces = wanted("TRACES")
            .then(|| SpanExporter::builder().with_http().build())
            .and_then(|r| r.map_err(|e| problems.push(format!("traces: {e}"))).ok())
            .map(|exporter| {
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource())
                    .build()
            });
        let otel = traces.as_ref().map(|provider| {
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("strata"))
                .with_filter(filter::filter_fn(|m| {
                    m.is_span()
                        && m.target().starts_with("strata")
                        && *m.level() <= tracing::Level::DEBUG
                }))
        });
        tracing_subscriber::registry().with(fmt).with(otel).init();
        TRACING.store(traces.is_some(), Ordering::Relaxed);
        let metrics = wanted("METRICS")
            .then(|| MetricExporter::builder().with_http().build())
            .and_then(|r| r.map_err(|e| problems.push(format!("metrics: {e}"))).ok())
            .map(|exporter| {
                let provider = SdkMeterProvider::builder()
                    .with_periodic_exporter(exporter)
                    .with_resource(resource())
                    .build();
                bridge_registry(provider.meter("strata"));
                provider
            });
        for p in problems {
            tracing::error!(problem = %p, "OpenTelemetry exporter not started; check the OTEL_EXPORTER_OTLP_* variables");
        }
        if traces.is_some() || metrics.is_some() {
            tracing::info!(
                traces = traces.is_some(),
                metrics = metrics.is_some(),
                "exporting OpenTelemetry over OTLP/HTTP"
            );
        }
        Telemetry { traces, metrics }
    }

    /// Exports what is buffered and stops the exporters.
    pub fn shutdown(&self) {
        if let Some(t) = &self.traces
            && let Err(e) = t.shutdown()
        {
            eprintln!("OpenTelemetry traces did not shut down cleanly: {e}");
        }
        if let Some(m) = &self.metrics
            && let Err(e) = m.shutdown()
        {
            eprintln!("OpenTelemetry metrics did not shut down cleanly: {e}");
        }
    }
}

/// Headers read as a W3C trace context carrier.
struct Headers<'a>(&'a [(&'a str, &'a str)]);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| *v)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

/// Makes the W3C trace context in `headers` (`traceparent`, `tracestate`), if any, the
/// parent of `span`. For Kafka record headers and HTTP headers alike.
pub fn adopt_parent(span: &tracing::Span, headers: &[(&str, &str)]) {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// One series' attributes and value.
type Point = (Vec<KeyValue>, f64);

/// Latest values of the registry's metrics, by OTel instrument name.
type Values = Arc<RwLock<HashMap<String, Vec<Point>>>>;

/// Exports the Prometheus registry's metrics through `meter`: a thread reads the registry
/// every [`METRIC_DISCOVERY`], creating an observable instrument for each new family (front
/// ends register theirs on first use) and refreshing the values the instruments report.
fn bridge_registry(meter: Meter) {
    let values: Values = Arc::default();
    let spawned = std::thread::Builder::new()
        .name("otel-metrics".into())
        .spawn(move || {
            let mut instruments = Vec::new();
            loop {
                let families = strata_storage::metrics::metrics().registry.gather();
                let mut fresh: HashMap<String, Vec<Point>> = HashMap::new();
                for f in &families {
                    for (name, kind, points) in points_of(f) {
                        if !values.read().is_ok_and(|v| v.contains_key(&name))
                            && !fresh.contains_key(&name)
                        {
                            instruments.push(instrument(&meter, &name, f.help(), kind, &values));
                        }
                        fresh.entry(name).or_default().extend(points);
                    }
                }
                if let Ok(mut v) = values.write() {
                    *v = fresh;
                }
                std::thread::sleep(METRIC_DISCOVERY);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the metrics exporter thread");
    }
}

/// Counter or gauge, as OTel instruments go.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// The OTel series of one Prometheus family: `(name, kind, [(attributes, value)])`.
fn points_of(f: &prometheus::proto::MetricFamily) -> Vec<(String, Kind, Vec<Point>)> {
    let attrs = |m: &prometheus::proto::Metric| -> Vec<KeyValue> {
        m.get_label()
            .iter()
            .map(|l| KeyValue::new(l.name().to_string(), l.value().to_string()))
            .collect()
    };
    let name = f.name().to_string();
    let metrics = f.get_metric();
    match f.get_field_type() {
        MetricType::COUNTER => vec![(
            name,
            Kind::Counter,
            metrics
                .iter()
                .map(|m| (attrs(m), m.get_counter().get_value()))
                .collect(),
        )],
        MetricType::GAUGE => vec![(
            name,
            Kind::Gauge,
            metrics
                .iter()
                .map(|m| (attrs(m), m.get_gauge().get_value()))
                .collect(),
        )],
        MetricType::HISTOGRAM => vec![
            (
                format!("{name}_sum"),
                Kind::Counter,
                metrics
                    .iter()
                    .map(|m| (attrs(m), m.get_histogram().get_sample_sum()))
                    .collect(),
            ),
            (
                format!("{name}_count"),
                Kind::Counter,
                metrics
                    .iter()
                    .map(|m| (attrs(m), m.get_histogram().get_sample_count() as f64))
                    .collect(),
            ),
        ],
        _ => Vec::new(),
    }
}

/// An observable instrument reporting `name`'s latest values from `values`.
fn instrument(
    meter: &Meter,
    name: &str,
    help: &str,
    kind: Kind,
    values: &Values,
) -> Box<dyn std::any::Any + Send> {
    let read = {
        let values = values.clone();
        let name = name.to_string();
        move || {
            values
                .read()
                .ok()
                .and_then(|v| v.get(&name).cloned())
                .unwrap_or_default()
        }
    };
    match kind {
        Kind::Counter => Box::new(
            meter
                .f64_observable_counter(name.to_string())
                .with_description(help.to_string())
                .with_callback(move |o| {
                    for (attrs, v) in read() {
                        o.observe(v, &attrs);
                    }
                })
                .build(),
        ),
        Kind::Gauge => Box::new(
            meter
                .f64_observable_gauge(name.to_string())
                .with_description(help.to_string())
                .with_callback(move |o| {
                    for (attrs, v) in read() {
                        o.observe(v, &attrs);
                    }
                })
                .build(),
        ),
    }
}
