//! Operator views: `/healthz`, `/readyz` and the status page at `/`.
//!
//! - `/healthz` answers 200 while the process serves (liveness).
//! - `/readyz` answers 200 only when the catalog (a topic listing) and the object store (a
//!   listing of an empty prefix) both answer within [`READY_TIMEOUT`]; otherwise 503, naming
//!   which failed. Load balancers take the broker out of rotation on 503.
//! - `/` is one HTML page, no scripts: the brokers of the cluster, the topics with their
//!   partitions and end offsets, this broker's produce throughput, and the consumer groups
//!   with their lag (end offsets minus committed offsets).
//!
//! Throughput comes from [`Throughput`], sampled every few seconds by the HTTP server's
//! housekeeping task: records appended to the partitions this broker owns (the sum of their
//! high watermarks) and bytes it flushed to the object store.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::HttpState;
use crate::broker::Broker;

/// How long `/readyz` waits for each dependency.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Throughput samples kept: with a 5 s period, the rate is over the last 10 s.
const SAMPLES: usize = 3;

/// Partitions listed one by one per topic on the status page; beyond, only totals.
const PARTITIONS_SHOWN: i32 = 32;

/// Recent samples of what this broker wrote, for the status page's rates.
#[derive(Debug, Default)]
pub struct Throughput {
    samples: Mutex<VecDeque<(Instant, i64, f64)>>,
}

impl Throughput {
    /// Takes a sample: records in the partitions this broker owns, bytes it has flushed.
    pub async fn sample(&self, broker: &Broker) {
        let mut records = 0i64;
        for (tp, _) in broker.engine().held() {
            if let Ok((_, end)) = broker.engine().offsets(tp).await {
                records += end.0;
            }
        }
        let bytes = strata_storage::metrics::metrics()
            .flush_bytes
            .get_sample_sum();
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.push_back((Instant::now(), records, bytes));
        while samples.len() > SAMPLES {
            samples.pop_front();
        }
    }

    /// Records per second and bytes per second over the samples kept, once there are two.
    pub fn rate(&self) -> Option<(f64, f64)> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let (first, last) = (samples.front()?, samples.back()?);
        let secs = last.0.duration_since(first.0).as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        // Ownership moving away lowers the sum: never report a negative rate.
        Some((
            ((last.1 - first.1) as f64 / secs).max(0.0),
            ((last.2 - first.2) / secs).max(0.0),
        ))
    }
}

/// Liveness: the process serves.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// What `/readyz` found.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not ready`.
    pub status: String,
    /// `ok`, or why the catalog did not answer.
    pub catalog: String,
    /// `ok`, or why the object store did not answer.
    pub object_store: String,
}

fn outcome<E: std::fmt::Display>(r: Result<Result<(), E>, tokio::time::error::Elapsed>) -> String {
    match r {
        Ok(Ok(())) => "ok".into(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => format!("no answer within {} ms", READY_TIMEOUT.as_millis()),
    }
}

/// Readiness: 200 when the catalog and the object store both answer, else 503.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness, content_type = "application/json"),
        (status = 503, description = "Not ready: a dependency did not answer", body = Readiness, content_type = "application/json")))]
pub async fn readyz(State(state): State<HttpState>) -> Response {
    let broker = &state.broker;
    let (catalog, objects) = tokio::join!(
        tokio::time::timeout(READY_TIMEOUT, async {
            broker.catalog().list_topics().await.map(|_| ())
        }),
        tokio::time::timeout(READY_TIMEOUT, async {
            match broker.engine().objects().list("readyz-probe").await {
                Ok(_) | Err(strata_storage::objects::ObjectsError::NotFound(_)) => Ok(()),
                Err(e) => Err(e),
            }
        }),
    );
    let (catalog, object_store) = (outcome(catalog), outcome(objects));
    let ready = catalog == "ok" && object_store == "ok";
    if !ready {
        tracing::warn!(catalog, object_store, "not ready");
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        status: if ready { "ready" } else { "not ready" }.into(),
        catalog,
        object_store,
    };
    (status, axum::Json(body)).into_response()
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}\
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.muted{color:#777}";

/// The status page.
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "The status page", body = String, content_type = "text/html")))]
pub async fn page(State(state): State<HttpState>) -> Response {
    let html = render(&state).await;
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

async fn render(state: &HttpState) -> String {
    let broker = &state.broker;
    let me = broker.membership().me().node_id;
    let mut h = String::with_capacity(8192);
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Strata broker {me}</title>\
         <style>{STYLE}</style></head><body><h1>Strata</h1>\
         <p>Broker {me} of cluster <b>{}</b> · version {} · <a href=\"/metrics\">metrics</a> · \
         <a href=\"/openapi.json\">REST API</a></p>",
        super::v3::CLUSTER_ID,
        env!("CARGO_PKG_VERSION"),
    );
    brokers(&mut h, broker);
    throughput(&mut h, state);
    topics(&mut h, broker).await;
    groups(&mut h, broker).await;
    h.push_str("</body></html>\n");
    h
}

fn brokers(h: &mut String, broker: &Broker) {
    let now = chrono::Utc::now().timestamp_millis();
    h.push_str("<h2>Brokers</h2><table><tr><th>node id</th><th>Kafka</th><th>QUIC</th><th>HTTP</th><th>zone</th><th>last heartbeat</th><th>state</th></tr>");
    for m in broker.membership().members() {
        let beat = if m.heartbeat_ms > 0 {
            format!("{:.1} s ago", (now - m.heartbeat_ms).max(0) as f64 / 1000.0)
        } else {
            "—".into()
        };
        let _ = write!(
            h,
            "<tr><td class=\"n\">{}</td><td>{}:{}</td><td>{}</td><td>{}</td><td>{}</td><td>{beat}</td><td>{}</td></tr>",
            m.node_id,
            esc(&m.kafka.0),
            m.kafka.1,
            esc(&m.quic),
            esc(&m.http),
            esc(m.zone.as_deref().unwrap_or("—")),
            if m.leaving { "leaving" } else { "live" },
        );
    }
    h.push_str("</table>");
}

fn throughput(h: &mut String, state: &HttpState) {
    h.push_str("<h2>Produce throughput (this broker)</h2>");
    match state.throughput.rate() {
        Some((records, bytes)) => {
            let _ = write!(
                h,
                "<p>{records:.1} records/s appended to its partitions; {:.3} MB/s flushed to the object store (last 10 s).</p>",
                bytes / 1e6
            );
        }
        None => h.push_str(
            "<p class=\"muted\">Measuring: rates appear after the first samples (5 s).</p>",
        ),
    }
}

async fn topics(h: &mut String, broker: &Broker) {
    h.push_str("<h2>Topics</h2><table><tr><th>topic</th><th>partitions</th><th>records (sum of end offsets)</th><th>partition: start–end (owner)</th></tr>");
    let topics = broker.topics();
    if topics.is_empty() {
        h.push_str("<tr><td colspan=\"4\" class=\"muted\">no topics</td></tr>");
    }
    for t in topics {
        let mut total = 0i64;
        let mut detail = String::new();
        for p in 0..t.meta.partitions {
            let Ok(tp) = t.partition(p) else { continue };
            match broker.offsets(&t, p).await {
                Ok((start, end)) => {
                    total += end.0;
                    if p < PARTITIONS_SHOWN {
                        let _ = write!(
                            detail,
                            "{p}: {}–{} ({})<br>",
                            start.0,
                            end.0,
                            broker.membership().leader(tp)
                        );
                    }
                }
                Err(e) => {
                    let _ = write!(
                        detail,
                        "{p}: <span class=\"muted\">{}</span><br>",
                        esc(&e.to_string())
                    );
                }
            }
        }
        if t.meta.partitions > PARTITIONS_SHOWN {
            let _ = write!(detail, "… {} more", t.meta.partitions - PARTITIONS_SHOWN);
        }
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{total}</td><td>{detail}</td></tr>",
            esc(&t.meta.name),
            t.meta.partitions
        );
    }
    h.push_str("</table>");
}

async fn groups(h: &mut String, broker: &Broker) {
    h.push_str("<h2>Consumer groups</h2><table><tr><th>group</th><th>state</th><th>members</th><th>total lag</th><th>lag per partition (committed → end)</th></tr>");
    let groups = match broker.groups().list().await {
        Ok(g) => g,
        Err(e) => {
            let _ = write!(
                h,
                "<tr><td colspan=\"5\">could not list groups: {}</td></tr></table>",
                esc(&e.to_string())
            );
            return;
        }
    };
    if groups.is_empty() {
        h.push_str("<tr><td colspan=\"5\" class=\"muted\">no groups</td></tr>");
    }
    for g in groups {
        let mut total = 0i64;
        let mut detail = String::new();
        for c in broker
            .groups()
            .committed(&g.group)
            .await
            .unwrap_or_default()
        {
            let Some(topic) = broker.topic_by_id(c.tp.topic) else {
                continue;
            };
            let Ok((_, end)) = broker.offsets(&topic, c.tp.partition.0).await else {
                continue;
            };
            let lag = (end.0 - c.offset).max(0);
            total += lag;
            let _ = write!(
                detail,
                "{}/{}: {lag} ({} → {})<br>",
                esc(&topic.meta.name),
                c.tp.partition.0,
                c.offset,
                end.0
            );
        }
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{total}</td><td>{detail}</td></tr>",
            esc(&g.group),
            g.state,
            g.members.len()
        );
    }
    h.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(esc("<a href=\"x\">&"), "&lt;a href=&quot;x&quot;&gt;&amp;");
    }

    #[test]
    fn rates_need_two_samples() {
        let t = Throughput::default();
        assert!(t.rate().is_none());
        let start = Instant::now();
        {
            let mut s = t.samples.lock().unwrap();
            s.push_back((start, 100, 1000.0));
            s.push_back((start + Duration::from_secs(2), 300, 5000.0));
        }
        assert_eq!(t.rate(), Some((100.0, 2000.0)));
    }
}
