"""The REST front end, driven as the Confluent REST Proxy documentation drives it.

Plain HTTP requests (``requests``, see ``rest_client.py``) against ``--http-addr``:

* v2 produce with the json and binary embedded formats, answered with the proxy's shapes;
  keyed records land on Kafka's murmur2 partition of the key;
* consumer instances: create, subscribe (or assign and seek), read records, commit, read
  committed offsets; offsets committed over REST are the group's offsets for Kafka clients
  too (confluent-kafka reads them), and a second REST instance of the group shares the
  partitions;
* the same records read with kcat and confluent-kafka; records produced with kcat read
  over REST;
* v3 produce of one record, and a stream of newline-delimited records answered by a stream
  of results, in order; v3 topic admin;
* bad input — malformed JSON, wrong content types, oversized bodies, unknown consumer
  instances, topics and partitions, bad base64 — each answered with the proxy's error shape
  and status, after which the broker still serves.
"""

from __future__ import annotations

import json

from confluent_kafka import Consumer, Producer, TopicPartition

from kafka_clients import (
    _consumer_conf,
    confluent_conf,
    consume_confluent,
    create_topic,
    kcat_consume,
    kcat_produce,
    unique_topic,
)
from rest_client import BINARY_V2, JSON_V2, V2, Rest, b64, stream_produce, unb64


def committed_by_kafka(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets as a Kafka client (confluent-kafka) sees them."""
    c = Consumer(_consumer_conf(bootstrap, **{"group.id": group}))
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=15)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def murmur2_partition(bootstrap: str, topic: str, key: bytes) -> int:
    """Where a Java-compatible Kafka producer (librdkafka's murmur2 partitioner) puts ``key``."""
    p = Producer(confluent_conf(bootstrap, partitioner="murmur2_random", acks="all"))
    got: list[int] = []
    p.produce(topic, key=key, value=b"probe", on_delivery=lambda err, msg: got.append(msg.partition()))
    assert p.flush(30) == 0
    return got[0]


def test_v2_produce_consume_commit_flow(broker):
    """JSON and binary records produced over v2 are read back by a subscribed consumer
    instance with their keys, values, partitions and offsets; a commit is the group's offset
    for confluent-kafka too; kcat reads the very same records."""
    rest = Rest(broker.http_url)
    topic = unique_topic("rest-flow")
    create_topic(broker.bootstrap, topic, partitions=3)

    r = rest.produce_json(topic, [
        {"key": "user-1", "value": {"n": 1, "tags": ["a", "b"]}},
        {"key": "user-2", "value": {"n": 2}},
        {"value": "unkeyed", "partition": 2},
        {"key": None, "value": None, "partition": 1},
    ])
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == V2
    body = r.json()
    assert body["key_schema_id"] is None and body["value_schema_id"] is None
    offsets = body["offsets"]
    assert len(offsets) == 4
    assert all(o["error_code"] is None and o["error"] is None and o["offset"] >= 0 for o in offsets)
    assert offsets[2]["partition"] == 2 and offsets[3]["partition"] == 1
    # Keys are placed as a Java client (murmur2) places them.
    assert offsets[0]["partition"] == murmur2_partition(broker.bootstrap, topic, b'"user-1"')

    r = rest.produce_binary(topic, [{"key": b64(b"bin-key"), "value": b64(b"\x01\x02 bytes \xe2\x9c\x93")}],
                            partition=0)
    assert r.status_code == 200, r.text
    (bin_offset,) = r.json()["offsets"]
    assert bin_offset["partition"] == 0 and bin_offset["error_code"] is None

    group = unique_topic("rest-group")
    inst = rest.create_consumer(group, "c1", fmt="binary", reset="earliest")
    assert rest.request("POST", inst + "/subscription", json_body={"topics": [topic]}).status_code == 204
    sub = rest.request("GET", inst + "/subscription")
    assert sub.status_code == 200 and sub.json()["topics"] == [topic]
    # Four JSON records, the binary one, and the murmur2 probe.
    records = rest.consume_all(inst, 6, accept=BINARY_V2)
    seen = {(r["partition"], r["offset"]): (unb64(r["key"]), unb64(r["value"])) for r in records}
    assert seen[(offsets[0]["partition"], offsets[0]["offset"])] == (b'"user-1"', b'{"n":1,"tags":["a","b"]}')
    assert seen[(offsets[1]["partition"], offsets[1]["offset"])] == (b'"user-2"', b'{"n":2}')
    assert seen[(2, offsets[2]["offset"])] == (None, b'"unkeyed"')
    assert seen[(1, offsets[3]["offset"])] == (None, None)
    assert seen[(0, bin_offset["offset"])] == (b"bin-key", b"\x01\x02 bytes \xe2\x9c\x93")
    assert all(r["topic"] == topic for r in records)

    # Commit everything read (no body), then the committed offsets are the ends, for REST...
    assert rest.request("POST", inst + "/offsets").status_code == 200
    ends = {p: rest.request("GET", f"/topics/{topic}/partitions/{p}/offsets").json()["end_offset"]
            for p in range(3)}
    got = rest.request("GET", inst + "/offsets", json_body={
        "partitions": [{"topic": topic, "partition": p} for p in range(3)]})
    assert got.status_code == 200, got.text
    assert {o["partition"]: o["offset"] for o in got.json()["offsets"]} == ends
    # ... and for a Kafka client of the same group.
    assert committed_by_kafka(broker.bootstrap, group, topic, 3) == ends

    # kcat reads the same bytes at the same offsets.
    for p in range(3):
        by_kcat = {r.offset: (r.key, r.value) for r in kcat_consume(broker.bootstrap, topic, p)}
        assert {off: kv for (part, off), kv in seen.items() if part == p} == {
            off: kv for off, kv in by_kcat.items() if (p, off) in seen}, p
    # Bytes that are not text travel too (kcat's JSON cannot show them; confluent-kafka can).
    r = rest.produce_binary(topic, [{"value": b64(b"\xff\xfe\x00raw")}], partition=0)
    raw_offset = r.json()["offsets"][0]["offset"]
    assert [unb64(r["value"]) for r in rest.consume_all(inst, 1, accept=BINARY_V2)] == [b"\xff\xfe\x00raw"]
    by_confluent = {r.offset: (r.key, r.value) for r in consume_confluent(broker.bootstrap, topic, 0)}
    assert by_confluent[raw_offset] == (None, b"\xff\xfe\x00raw")
    assert by_confluent[bin_offset["offset"]] == (b"bin-key", b"\x01\x02 bytes \xe2\x9c\x93")

    assert rest.request("DELETE", inst + "/subscription").status_code == 204
    assert rest.request("DELETE", inst).status_code == 204
    assert rest.request("GET", inst + "/subscription").status_code == 404


def test_kcat_records_read_over_rest_with_assign_and_seek(broker):
    """Records produced with kcat are read over REST by an instance with assigned
    partitions, from a seek to the beginning; an explicit commit names the last offset
    consumed and the group resumes after it, as with the REST proxy."""
    rest = Rest(broker.http_url)
    topic = unique_topic("rest-kcat")
    create_topic(broker.bootstrap, topic, partitions=1)
    lines = [(f"k{i}", json.dumps({"i": i})) for i in range(10)]
    kcat_produce(broker.bootstrap, topic, 0, lines)

    group = unique_topic("rest-assign")
    inst = rest.create_consumer(group, "reader", fmt="json", reset="latest")
    r = rest.request("POST", inst + "/assignments",
                     json_body={"partitions": [{"topic": topic, "partition": 0}]})
    assert r.status_code == 204, r.text
    assert rest.request("GET", inst + "/assignments").json() == {
        "partitions": [{"topic": topic, "partition": 0}]}
    r = rest.request("POST", inst + "/positions/beginning",
                     json_body={"partitions": [{"topic": topic, "partition": 0}]})
    assert r.status_code == 204, r.text
    records = rest.consume_all(inst, 10, accept=JSON_V2)
    assert [(r["offset"], r["value"]["i"]) for r in records] == [(i, i) for i in range(10)]
    # kcat's keys are not JSON: the json format shows them as strings.
    assert records[3]["key"] == "k3"

    # Seek to an offset, read from there.
    assert rest.request("POST", inst + "/positions", json_body={
        "offsets": [{"topic": topic, "partition": 0, "offset": 7}]}).status_code == 204
    assert [r["offset"] for r in rest.consume_all(inst, 3)] == [7, 8, 9]

    r = rest.request("POST", inst + "/offsets", json_body={
        "offsets": [{"topic": topic, "partition": 0, "offset": 4}]})
    assert r.status_code == 200, r.text
    assert committed_by_kafka(broker.bootstrap, group, topic, 1) == {0: 5}

    # A new instance of the group starts at the committed offset.
    inst2 = rest.create_consumer(group, "resumer", fmt="json", reset="latest")
    rest.request("DELETE", inst)
    rest.request("POST", inst2 + "/subscription", json_body={"topics": [topic]})
    assert [r["offset"] for r in rest.consume_all(inst2, 5)] == [5, 6, 7, 8, 9]


def test_instances_of_a_group_share_partitions(broker):
    """Two REST instances subscribed to one topic in one group read disjoint partitions that
    together cover the topic; auto-commit commits what was read."""
    rest = Rest(broker.http_url)
    topic = unique_topic("rest-share")
    create_topic(broker.bootstrap, topic, partitions=4)
    for p in range(4):
        assert rest.produce_json(topic, [{"value": p}], partition=p).status_code == 200
    group = unique_topic("rest-share-g")
    a = rest.create_consumer(group, "a", auto_commit="true")
    b = rest.create_consumer(group, "b", auto_commit="true")
    for inst in (a, b):
        rest.request("POST", inst + "/subscription", json_body={"topics": [topic]})
    pa = {p["partition"] for p in rest.request("GET", a + "/assignments").json()["partitions"]}
    pb = {p["partition"] for p in rest.request("GET", b + "/assignments").json()["partitions"]}
    assert pa and pb and not pa & pb and pa | pb == {0, 1, 2, 3}
    got_a = rest.consume_all(a, len(pa))
    got_b = rest.consume_all(b, len(pb))
    assert {r["partition"] for r in got_a} == pa and {r["partition"] for r in got_b} == pb
    # Auto-commit happens at the next read and at deletion.
    rest.poll(a, timeout_ms=0)
    assert rest.request("DELETE", b).status_code == 204
    assert committed_by_kafka(broker.bootstrap, group, topic, 4) == {0: 1, 1: 1, 2: 1, 3: 1}


def test_v3_single_and_streamed_produce(broker):
    """A v3 record is answered with its partition and offset; a stream of 2000
    newline-delimited records is answered by 2000 results in order (one bad line gets an
    error line and the stream goes on), and every record reads back with confluent-kafka."""
    rest = Rest(broker.http_url)
    topic = unique_topic("rest-v3")
    create_topic(broker.bootstrap, topic, partitions=2)
    path = f"/v3/clusters/strata/topics/{topic}/records"
    r = rest.request("POST", path, content_type="application/json", json_body={
        "partition_id": 1,
        "headers": [{"name": "trace", "value": b64(b"abc")}],
        "key": {"type": "STRING", "data": "k"},
        "value": {"type": "JSON", "data": {"hello": "world"}},
    })
    assert r.status_code == 200, r.text
    one = r.json()
    assert one["error_code"] == 200 and one["cluster_id"] == "strata"
    assert (one["topic_name"], one["partition_id"], one["offset"]) == (topic, 1, 0)
    assert one["key"] == {"type": "STRING", "size": 1}
    assert one["value"]["type"] == "JSON" and one["timestamp"].endswith("Z")

    n = 2000
    lines = [json.dumps({"partition_id": 0, "value": {"type": "BINARY", "data": b64(b"v%d" % i)}}).encode()
             for i in range(n)]
    lines.insert(1000, b'{"value": not json}')
    results = stream_produce(broker.http_port, path, lines, chunk_bytes=4096)
    assert len(results) == n + 1
    bad = results.pop(1000)
    assert bad["error_code"] == 400 and "message" in bad
    assert all(r["error_code"] == 200 for r in results)
    assert [r["offset"] for r in results] == list(range(n))

    read = consume_confluent(broker.bootstrap, topic, 0)
    assert [r.value for r in read] == [b"v%d" % i for i in range(n)]
    back = consume_confluent(broker.bootstrap, topic, 1)
    assert back[0].key == b"k" and back[0].value == b'{"hello":"world"}'
    assert back[0].headers == (("trace", b"abc"),)


def test_v3_topic_admin(broker):
    """v3 lists the cluster, creates a topic with configs, shows it, its partitions and
    configs, refuses a duplicate with 40002, deletes it, and 404s an unknown cluster."""
    rest = Rest(broker.http_url)
    clusters = rest.request("GET", "/v3/clusters").json()
    assert [c["cluster_id"] for c in clusters["data"]] == ["strata"]
    topic = unique_topic("rest-admin")
    r = rest.request("POST", "/v3/clusters/strata/topics", content_type="application/json",
                     json_body={"topic_name": topic, "partitions_count": 3,
                                "configs": [{"name": "retention.ms", "value": "3600000"}]})
    assert r.status_code == 201, r.text
    assert r.json()["partitions_count"] == 3
    names = [t["topic_name"] for t in rest.request("GET", "/v3/clusters/strata/topics").json()["data"]]
    assert topic in names
    assert rest.request("GET", f"/v3/clusters/strata/topics/{topic}").json()["topic_name"] == topic
    parts = rest.request("GET", f"/v3/clusters/strata/topics/{topic}/partitions").json()["data"]
    assert [p["partition_id"] for p in parts] == [0, 1, 2]
    configs = {c["name"]: c for c in
               rest.request("GET", f"/v3/clusters/strata/topics/{topic}/configs").json()["data"]}
    assert configs["retention.ms"]["value"] == "3600000" and not configs["retention.ms"]["is_default"]
    assert configs["cleanup.policy"]["is_default"]
    # The v2 views agree.
    assert topic in rest.request("GET", "/topics").json()
    v2 = rest.request("GET", f"/topics/{topic}").json()
    assert v2["configs"]["retention.ms"] == "3600000" and len(v2["partitions"]) == 3

    dup = rest.request("POST", "/v3/clusters/strata/topics", content_type="application/json",
                       json_body={"topic_name": topic})
    assert dup.status_code == 400 and dup.json()["error_code"] == 40002
    assert rest.request("DELETE", f"/v3/clusters/strata/topics/{topic}").status_code == 204
    gone = rest.request("GET", f"/v3/clusters/strata/topics/{topic}")
    assert gone.status_code == 404 and gone.json()["error_code"] == 404
    assert rest.request("GET", "/v3/clusters/other").status_code == 404


def test_bad_input_gets_the_proxys_errors(make_broker):
    """Malformed JSON (400), wrong content types (415), bodies over --max-request-bytes
    (413), unknown consumer instances (40403), topics (40401) and partitions (40402), bad
    base64 (42201/42202), an Accept the instance cannot give (40601), and unknown routes:
    each gets the proxy's error shape and status, and the broker keeps serving."""
    broker = make_broker(args=["--max-request-bytes", "65536", "--auto-create-topics", "false"])
    rest = Rest(broker.http_url)
    topic = unique_topic("rest-bad")
    create_topic(broker.bootstrap, topic, partitions=1)

    def error(r, status: int, code: int):
        assert r.status_code == status, (r.status_code, r.text)
        body = r.json()
        assert body["error_code"] == code and isinstance(body["message"], str) and body["message"], body
        return body

    error(rest.request("POST", f"/topics/{topic}", data=b'{"records": [', content_type=JSON_V2), 400, 400)
    error(rest.request("POST", f"/topics/{topic}", data=b'{"records": 5}', content_type=JSON_V2), 422, 422)
    error(rest.request("POST", f"/topics/{topic}", data=b'{"records": []}', content_type="text/plain"), 415, 415)
    error(rest.request("POST", f"/topics/{topic}", json_body={"records": []}, content_type="application/json"), 415, 415)
    error(rest.request("POST", "/consumers/g", data=b"name=x", content_type="application/x-www-form-urlencoded"), 415, 415)
    big = json.dumps({"records": [{"value": "x" * 70000}]}).encode()
    error(rest.request("POST", f"/topics/{topic}", data=big, content_type=JSON_V2), 413, 413)
    # The same without a Content-Length: refused while reading.
    r = rest.session.post(f"{broker.http_url}/topics/{topic}", data=iter([big[:40000], big[40000:]]),
                          headers={"Content-Type": JSON_V2}, timeout=30)
    error(r, 413, 413)
    error(rest.produce_binary(topic, [{"key": "%%%", "value": b64(b"v")}]), 422, 42201)
    error(rest.produce_binary(topic, [{"value": "not base64!"}]), 422, 42202)
    error(rest.request("GET", "/topics/no-such-topic"), 404, 40401)
    error(rest.produce_json("no-such-topic", [{"value": 1}]), 404, 40401)
    error(rest.request("GET", f"/topics/{topic}/partitions/7"), 404, 40402)
    error(rest.request("GET", f"/topics/{topic}/partitions/x/offsets"), 404, 40402)
    error(rest.produce_json(topic, [{"value": 1, "partition": 9}]), 404, 40402)
    error(rest.request("GET", "/consumers/g/instances/nobody/records"), 404, 40403)
    error(rest.request("POST", "/consumers/g/instances/nobody/offsets"), 404, 40403)
    error(rest.request("DELETE", "/consumers/g/instances/nobody"), 404, 40403)
    error(rest.request("POST", "/consumers/g", json_body={"name": "x", "format": "avro"}), 422, 42204)
    inst = rest.create_consumer("g", "json-one")
    error(rest.request("POST", "/consumers/g", json_body={"name": "json-one"}), 409, 40902)
    error(rest.request("GET", inst + "/records", accept=BINARY_V2), 406, 40601)
    error(rest.request("GET", inst + "/records"), 409, 40903)  # neither subscribed nor assigned
    error(rest.request("GET", inst + "/records", params={"timeout": "soon"}), 400, 400)
    error(rest.request("GET", "/no/such/route"), 404, 404)
    v3 = f"/v3/clusters/strata/topics/{topic}/records"
    error(rest.request("POST", v3, data=b"{", content_type="application/json"), 400, 400)
    error(rest.request("POST", v3, json_body={"value": {"type": "BINARY", "data": 5}},
                       content_type="application/json"), 422, 422)
    error(rest.request("POST", v3, json_body={"partition_id": 3}, content_type="application/json"), 404, 404)
    error(rest.request("POST", "/v3/clusters/strata/topics", content_type="application/json",
                       json_body={"topic_name": "bad/name"}), 400, 400)

    # Still serving: health, and a produce that reads back.
    assert rest.request("GET", "/healthz").status_code == 200
    r = rest.produce_json(topic, [{"value": {"ok": True}}])
    assert r.status_code == 200 and r.json()["offsets"][0]["offset"] == 0
    assert [r.value for r in consume_confluent(broker.bootstrap, topic, 0)] == [b'{"ok":true}']
    assert broker.is_running()
