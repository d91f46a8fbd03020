"""OpenTelemetry: traces and metrics over OTLP/HTTP, to a collector the test runs itself.

The collector is a small OTLP/HTTP receiver (Python's ``http.server`` decoding the protobuf
bodies with ``opentelemetry-proto``). A broker started with ``OTEL_EXPORTER_OTLP_ENDPOINT``
pointing at it exports:

* a ``kafka.produce`` span whose parent is the W3C trace context the producer put in the
  record's ``traceparent`` header, with ``storage.append`` and ``storage.durable`` children,
  the latter linked to the ``flush`` span (its own trace) whose PUT made the records durable;
* an ``http.request`` span for a REST produce, parented by the request's ``traceparent``
  header, with a ``storage.append`` child;
* ``kafka.fetch`` spans with ``storage.read`` children;
* the flusher's ``flush`` spans with ``object_store.put`` children;
* the metrics of ``/metrics`` (``strata_kafka_requests_total`` among them), under the
  service name it was given.

Without the variables nothing is exported (the broker says so in neither direction).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from harness import free_port, http_request, wait_until
from kafka_clients import Rec, consume_confluent, create_topic, produce_confluent, unique_topic

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Collector:
    """An OTLP/HTTP receiver keeping every span and metric name it is sent."""

    def __init__(self):
        self.spans: list = []
        self.metrics: set[str] = set()
        self.services: set[str] = set()
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/v1/traces":
                    req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                    reply = trace_service_pb2.ExportTraceServiceResponse()
                    with collector.lock:
                        for rs in req.resource_spans:
                            collector.services.update(
                                a.value.string_value for a in rs.resource.attributes
                                if a.key == "service.name")
                            for ss in rs.scope_spans:
                                collector.spans.extend(ss.spans)
                elif self.path == "/v1/metrics":
                    req = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                    reply = metrics_service_pb2.ExportMetricsServiceResponse()
                    with collector.lock:
                        for rm in req.resource_metrics:
                            for sm in rm.scope_metrics:
                                collector.metrics.update(m.name for m in sm.metrics)
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                out = reply.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def named(self, name: str) -> list:
        with self.lock:
            return [s for s in self.spans if s.name == name]

    def children_of(self, span, name: str) -> list:
        return [s for s in self.named(name)
                if s.parent_span_id == span.span_id and s.trace_id == span.trace_id]

    def close(self):
        self.server.shutdown()


def test_produce_and_fetch_traces_and_metrics_reach_the_collector(make_broker):
    collector = Collector()
    try:
        broker = make_broker(env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            "OTEL_SERVICE_NAME": "strata-under-test",
        })
        topic = unique_topic("traced")
        create_topic(broker.bootstrap, topic, 1)
        traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
        produce_confluent(broker.bootstrap, topic, [
            Rec(b"k", b"traced value", headers=(("traceparent", traceparent.encode()),),
                partition=0)])
        assert [r.value for r in consume_confluent(broker.bootstrap, topic, 0)] == [b"traced value"]

        def produce_span():
            for s in collector.named("kafka.produce"):
                if s.trace_id.hex() == TRACE_ID and s.parent_span_id.hex() == PARENT_ID:
                    return s
            return None

        span = wait_until(produce_span, 30, "the kafka.produce span, parented by the producer's traceparent",
                          on_timeout=lambda: f"spans: {sorted({s.name for s in collector.spans})}")
        wait_until(lambda: collector.children_of(span, "storage.append"), 30,
                   "storage.append under kafka.produce")
        durable = wait_until(lambda: collector.children_of(span, "storage.durable"), 30,
                             "storage.durable under kafka.produce")

        def linked_to_a_flush():
            flushes = {(f.trace_id, f.span_id) for f in collector.named("flush")}
            return any((link.trace_id, link.span_id) in flushes
                       for d in durable for link in d.links)

        wait_until(linked_to_a_flush, 30,
                   "storage.durable linked to the flush that made the records durable")
        wait_until(lambda: any(collector.children_of(f, "storage.read")
                               for f in collector.named("kafka.fetch")), 30,
                   "storage.read under a kafka.fetch")
        wait_until(lambda: any(collector.children_of(f, "object_store.put")
                               for f in collector.named("flush")), 30,
                   "object_store.put under a flush")
        # Over HTTP, the traceparent request header parents the request's span.
        rest_trace = "0af7651916cd43dd8448eb211c80319c"
        status, _ = http_request(
            "POST", f"{broker.http_url}/topics/{topic}",
            json.dumps({"records": [{"value": {"via": "rest"}}]}).encode(),
            headers={"Content-Type": "application/vnd.kafka.json.v2+json",
                     "traceparent": f"00-{rest_trace}-b7ad6b7169203331-01"})
        assert status == 200

        def rest_span():
            return next((s for s in collector.named("http.request")
                         if s.trace_id.hex() == rest_trace), None)

        rest = wait_until(rest_span, 30, "the http.request span, parented by the traceparent header")
        wait_until(lambda: collector.children_of(rest, "storage.append"), 30,
                   "storage.append under http.request")
        wait_until(lambda: "strata_kafka_requests_total" in collector.metrics, 30,
                   "the broker's metrics", on_timeout=lambda: f"metrics: {sorted(collector.metrics)}")
        assert "strata_object_store_requests_total" in collector.metrics
        assert collector.services == {"strata-under-test"}
        assert "exporting OpenTelemetry" in broker.log_text()
    finally:
        collector.close()


def test_nothing_is_exported_without_the_variables(broker):
    topic = unique_topic("untraced")
    create_topic(broker.bootstrap, topic, 1)
    produce_confluent(broker.bootstrap, topic, [Rec(b"k", b"v", partition=0)])
    assert "exporting OpenTelemetry" not in broker.log_text()
