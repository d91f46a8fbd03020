"""Operator views: the status page in a real browser, and readiness.

The status page at ``/`` is loaded in headless Chromium (Debian's ``chromium``;
``scripts/test.sh`` installs it), which dumps the DOM it rendered: it must show the broker,
the topic the test created with its end offsets, and the consumer group with its lag.
``/readyz`` answers 200 on a healthy broker, and 503 naming the object store once the S3
bucket behind the broker is gone (and 200 again when it is back).
"""

from __future__ import annotations

import re
import shutil
import subprocess

from confluent_kafka import Consumer, TopicPartition

from harness import http_get, http_request, wait_until
from kafka_clients import _consumer_conf, create_topic, produce_confluent, unique_topic, Rec
from rest_client import Rest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def dump_dom(url: str) -> str:
    assert CHROMIUM, "chromium is not installed (scripts/test.sh installs it with apt-get)"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
         "--disable-dev-shm-usage", "--user-data-dir=/tmp/strata-chromium-test",
         "--dump-dom", url],
        capture_output=True, timeout=120)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}"
    return proc.stdout.decode()


def test_status_page_in_chromium(broker):
    """Chromium renders the status page with the broker, the topic the test created (with
    its end offsets) and a consumer group with its lag."""
    topic = unique_topic("status")
    create_topic(broker.bootstrap, topic, partitions=2)
    produce_confluent(broker.bootstrap, topic, [Rec(None, b"x%d" % i, partition=i % 2) for i in range(10)])
    group = unique_topic("status-group")
    c = Consumer(_consumer_conf(broker.bootstrap, **{"group.id": group}))
    try:
        c.commit(offsets=[TopicPartition(topic, 0, 2), TopicPartition(topic, 1, 5)], asynchronous=False)
    finally:
        c.close()

    dom = dump_dom(broker.http_url + "/")
    assert "<h2>Brokers</h2>" in dom and "<h2>Topics</h2>" in dom
    assert f"127.0.0.1:{broker.kafka_port}</td>" in dom  # this broker, by its Kafka address
    row = re.search(rf"<tr><td>{re.escape(topic)}</td>.*?</tr>", dom)
    assert row, f"topic {topic} not on the status page:\n{dom[:3000]}"
    assert ">2<" in row.group(0) and ">10<" in row.group(0)  # partitions, records
    assert "0: 0–5" in row.group(0) and "1: 0–5" in row.group(0)
    grow = re.search(rf"<tr><td>{re.escape(group)}</td>.*?</tr>", dom)
    assert grow, f"group {group} not on the status page"
    assert ">3<" in grow.group(0)  # lag: (5 - 2) + (5 - 5)
    assert "Produce throughput" in dom


def test_readyz(broker):
    """/readyz is 200 with both dependencies ok on a healthy broker; /healthz is 200."""
    status, body = http_get(broker.http_url + "/readyz")
    assert status == 200, body
    assert Rest(broker.http_url).request("GET", "/readyz").json() == {
        "status": "ready", "catalog": "ok", "object_store": "ok"}
    assert http_get(broker.http_url + "/healthz")[0] == 200


def test_readyz_names_an_unreachable_object_store(make_broker, moto):
    """With its S3 bucket gone, the broker is alive (/healthz 200) but not ready: /readyz
    answers 503 naming the object store; once the bucket is back, 200 again."""
    broker = make_broker(objects=moto.objects_url, env=moto.env)
    rest = Rest(broker.http_url)
    assert rest.request("GET", "/readyz").status_code == 200
    bucket_url = f"{moto.endpoint}/{moto.bucket}"
    assert moto.list_keys() == [], "a fresh broker wrote objects; the bucket cannot be deleted"
    status, body = http_request("DELETE", bucket_url)
    assert status in (200, 204), body
    try:
        def not_ready():
            r = rest.request("GET", "/readyz")
            return r.json() if r.status_code == 503 else None

        body = wait_until(not_ready, 30, "/readyz to answer 503")
        assert body["status"] == "not ready" and body["catalog"] == "ok"
        assert body["object_store"].startswith("error"), body
        assert rest.request("GET", "/healthz").status_code == 200
    finally:
        assert http_request("PUT", bucket_url)[0] == 200
    wait_until(lambda: rest.request("GET", "/readyz").status_code == 200, 30, "/readyz to answer 200 again")
