"""Malformed and hostile Kafka input, sent on raw sockets.

Frames are built by hand (``kafka_wire.py``) so the tests can send what no
client would: record batches with a wrong CRC32C, batches over the topic's or
the broker's ``max.message.bytes``, produce requests for topics that do not
exist (the broker runs with ``--auto-create-topics false``), unsupported API
versions, absurd frame lengths and plain garbage.

After each, the tests check that

* the broker answered with the Kafka error code a real broker uses, or closed
  that one connection promptly;
* nothing of the rejected data was stored (the topic holds exactly what was
  accepted, plus a sentinel produced afterwards);
* a normal confluent-kafka producer and consumer on other connections still work.

A control test first shows that a correct hand-made batch *is* accepted and
reads back exactly, so a rejection is never an artefact of the test's encoder.

All tests share one broker (module scope) to keep the suite fast; each test
checks the broker is still alive before and after.
"""

from __future__ import annotations

import random
import struct
import time
import uuid

import pytest

import kafka_wire as kw
from harness import Broker, track_broker
from kafka_clients import (
    Rec,
    consume_confluent,
    create_topic,
    list_topics,
    produce_confluent,
    unique_topic,
)

BROKER_MAX_MESSAGE_BYTES = 200_000
TOPIC_MAX_MESSAGE_BYTES = 2048
CLOSE_TIMEOUT = 5.0  # "promptly"


@pytest.fixture(scope="module")
def strict_broker_module(tmp_path_factory):
    broker = Broker(tmp_path_factory.mktemp("bad-input"), name="strata-strict",
                    args=["--auto-create-topics", "false",
                          "--max-message-bytes", str(BROKER_MAX_MESSAGE_BYTES)])
    broker.start()
    yield broker
    code = broker.close()
    assert code in (None, 0), f"broker exited with {code} on SIGTERM\n{broker.log_tail()}"


@pytest.fixture
def broker(strict_broker_module, request) -> Broker:
    track_broker(request.node, strict_broker_module)
    assert strict_broker_module.is_running(), "the shared broker died in an earlier test"
    return strict_broker_module


@pytest.fixture
def conn(broker):
    with kw.KafkaConnection(broker.bootstrap) as c:
        yield c


@pytest.fixture
def produce_version(broker) -> int:
    with kw.KafkaConnection(broker.bootstrap) as c:
        return kw.pick_version(c.api_versions(), kw.API_PRODUCE, 3, 8)


def batch(*values: bytes, key: bytes = b"k") -> bytes:
    now = int(time.time() * 1000)
    return kw.encode_record_batch(
        [kw.WireRecord(key, v, [("h", b"1")], now - 1000 + i) for i, v in enumerate(values)],
        base_timestamp=now - 1000)


def corrupt(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0xFF
    return bytes(b)


def assert_broker_serves(broker: Broker, topic: str, partition: int = 0,
                         stored_before: list[bytes] = ()) -> None:
    """The broker is alive, and a normal client on new connections can produce and read
    ``topic``; the partition holds exactly ``stored_before`` values, then the sentinel."""
    assert broker.is_running(), f"broker died\n{broker.log_tail()}"
    assert broker.healthz() == 200
    sentinel = f"sentinel-{uuid.uuid4().hex}".encode()
    delivered = produce_confluent(broker.bootstrap, topic, [Rec(b"s", sentinel, partition=partition)])
    assert delivered[0].offset == len(stored_before), (
        f"sentinel got offset {delivered[0].offset}; expected {len(stored_before)} "
        f"(something rejected was stored?)")
    values = [r.value for r in consume_confluent(broker.bootstrap, topic, partition)]
    assert values == list(stored_before) + [sentinel], (
        f"{topic}/{partition} holds {[v[:40] for v in values]}")


def fresh_topic(broker: Broker, prefix: str, partitions: int = 1, config: dict | None = None) -> str:
    topic = unique_topic(prefix)
    create_topic(broker.bootstrap, topic, partitions, config=config)
    return topic


# ----------------------------------------------------------------------- control


def test_handmade_batch_is_accepted_and_reads_back(broker, conn):
    """Control: the encoder in kafka_wire.py produces batches the broker accepts."""
    topic = fresh_topic(broker, "bad-control")
    versions = conn.api_versions()
    lo, hi = versions[kw.API_PRODUCE]
    tried = [v for v in (3, 5, 7, 8) if lo <= v <= hi]
    assert tried, f"broker advertises Produce {lo}..{hi}: none of v3..v8"
    now = int(time.time() * 1000)
    expected = []
    for i, version in enumerate(tried):
        records = [
            kw.WireRecord(f"key-{i}".encode(), f"value-{i}".encode(), [("a", b"1"), ("a", b"2")], now - 5000),
            kw.WireRecord(None, None, [("n", None)], now - 9000),
            kw.WireRecord(b"", b"", [], now),
        ]
        [res] = conn.produce(version, {topic: {0: kw.encode_record_batch(records, now - 9000)}})
        assert (res.error_code, res.base_offset) == (0, 3 * i), f"Produce v{version}: {res}"
        expected += [Rec(r.key, r.value, tuple(r.headers), r.timestamp) for r in records]
    got = consume_confluent(broker.bootstrap, topic, 0)
    assert [r.offset for r in got] == list(range(len(expected)))
    assert [r.content() for r in got] == [r.content() for r in expected]


# ------------------------------------------------------------------- bad batches


@pytest.mark.parametrize("damage", ["payload-byte", "crc-field", "last-offset-delta"])
def test_bad_crc_is_corrupt_message(broker, conn, produce_version, damage):
    topic = fresh_topic(broker, "bad-crc")
    good = batch(b"this record must not be stored")
    at = {"payload-byte": len(good) - 10, "crc-field": kw.BATCH_CRC_OFFSET + 1,
          "last-offset-delta": kw.BATCH_ATTRIBUTES_OFFSET + 5}[damage]
    [res] = conn.produce(produce_version, {topic: {0: corrupt(good, at)}})
    assert res.error_code == kw.CORRUPT_MESSAGE, f"expected CORRUPT_MESSAGE (2), got {res}"
    assert_broker_serves(broker, topic)


def test_truncated_batch_is_rejected(broker, conn, produce_version):
    topic = fresh_topic(broker, "bad-trunc")
    good = batch(b"truncated record " * 10)
    [res] = conn.produce(produce_version, {topic: {0: good[:-25]}})
    # Kafka reports a batch shorter than its own length field as CORRUPT_MESSAGE.
    assert res.error_code in (kw.CORRUPT_MESSAGE, 87), f"expected CORRUPT_MESSAGE (2), got {res}"
    assert_broker_serves(broker, topic)


def test_one_bad_partition_does_not_reject_the_other(broker, conn, produce_version):
    topic = fresh_topic(broker, "bad-mixed", partitions=2)
    good = batch(b"good record")
    bad = corrupt(batch(b"bad record"), -5)
    results = {r.partition: r for r in conn.produce(produce_version, {topic: {0: good, 1: bad}})}
    assert (results[0].error_code, results[0].base_offset) == (0, 0), results
    assert results[1].error_code == kw.CORRUPT_MESSAGE, results
    assert_broker_serves(broker, topic, 0, stored_before=[b"good record"])
    assert_broker_serves(broker, topic, 1)


def test_batch_over_topic_max_message_bytes(broker, conn, produce_version):
    topic = fresh_topic(broker, "bad-toolarge", config={"max.message.bytes": TOPIC_MAX_MESSAGE_BYTES})
    rng = random.Random(1)
    too_big = batch(rng.randbytes(4 * TOPIC_MAX_MESSAGE_BYTES))  # incompressible
    [res] = conn.produce(produce_version, {topic: {0: too_big}})
    assert res.error_code == kw.MESSAGE_TOO_LARGE, f"expected MESSAGE_TOO_LARGE (10), got {res}"
    fits = rng.randbytes(TOPIC_MAX_MESSAGE_BYTES - 300)
    assert len(batch(fits)) < TOPIC_MAX_MESSAGE_BYTES - 100
    [res] = conn.produce(produce_version, {topic: {0: batch(fits)}})
    assert (res.error_code, res.base_offset) == (0, 0), f"a batch under the limit was refused: {res}"
    assert_broker_serves(broker, topic, stored_before=[fits])


def test_batch_over_broker_max_message_bytes(broker, conn, produce_version):
    """--max-message-bytes is the limit for topics without their own max.message.bytes."""
    topic = fresh_topic(broker, "bad-brokermax")
    rng = random.Random(2)
    [res] = conn.produce(produce_version, {topic: {0: batch(rng.randbytes(BROKER_MAX_MESSAGE_BYTES + 50_000))}})
    assert res.error_code == kw.MESSAGE_TOO_LARGE, f"expected MESSAGE_TOO_LARGE (10), got {res}"
    fits = rng.randbytes(BROKER_MAX_MESSAGE_BYTES // 2)
    [res] = conn.produce(produce_version, {topic: {0: batch(fits)}})
    assert (res.error_code, res.base_offset) == (0, 0), f"a batch under the limit was refused: {res}"
    assert_broker_serves(broker, topic, stored_before=[fits])


def test_unknown_topic_is_not_created(broker, conn, produce_version):
    missing = unique_topic("bad-missing")
    [res] = conn.produce(produce_version, {missing: {0: batch(b"nowhere")}})
    assert res.error_code == kw.UNKNOWN_TOPIC_OR_PARTITION, f"expected 3, got {res}"
    assert missing not in list_topics(broker.bootstrap), "produce auto-created the topic"
    # Nor does a Metadata request for it, even one that asks for auto-creation.
    version = kw.pick_version(conn.api_versions(), kw.API_METADATA, 1, 8)
    corr = conn.send_request(kw.API_METADATA, version, kw.metadata_body(version, [missing]))
    conn.recv_response(corr)
    assert missing not in list_topics(broker.bootstrap), "metadata auto-created the topic"

    topic = fresh_topic(broker, "bad-nopart")
    [res] = conn.produce(produce_version, {topic: {7: batch(b"no such partition")}})
    assert res.error_code == kw.UNKNOWN_TOPIC_OR_PARTITION, f"expected 3 for partition 7, got {res}"
    assert_broker_serves(broker, topic)


# -------------------------------------------------------------- protocol versions


def test_api_versions_unsupported_version_answers_v0_error(broker, conn):
    """As Kafka does: a v0 ApiVersions response with UNSUPPORTED_VERSION (35), after
    which the client retries on the same connection with a version it knows."""
    corr = conn.send_request(kw.API_VERSIONS, 99,
                             kw.compact_string("strata-tests") + kw.compact_string("1.0") + b"\x00",
                             flexible_header=True)
    error, versions = kw.parse_api_versions_v0(conn.recv_response(corr))
    assert error == kw.UNSUPPORTED_VERSION, f"ApiVersions v99 returned error {error}, expected 35"
    if versions:
        assert kw.API_VERSIONS in versions, "the fallback list should include ApiVersions itself"
    assert kw.API_PRODUCE in conn.api_versions(), "connection unusable after the v99 request"
    assert_broker_serves(broker, fresh_topic(broker, "bad-apiv"))


def test_produce_unsupported_version(broker, conn):
    topic = fresh_topic(broker, "bad-prodv")
    body = kw.produce_body(8, {topic: {0: batch(b"sent with Produce v99")}})
    corr = conn.send_request(kw.API_PRODUCE, 99, body)
    try:
        payload = conn.recv_frame(CLOSE_TIMEOUT)
    except kw.ConnectionClosed:
        pass  # closing the connection is what Kafka does
    except TimeoutError:
        pytest.fail(f"no response and no close within {CLOSE_TIMEOUT}s of a Produce v99 request")
    else:
        assert struct.unpack_from(">i", payload)[0] == corr, "response to v99 has a wrong correlation id"
    assert_broker_serves(broker, topic)


# ----------------------------------------------------------------- broken framing


@pytest.mark.parametrize("length", [0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x40000000],
                         ids=["2GiB-1", "min-int", "minus-1", "1GiB"])
def test_absurd_frame_length_closes_connection(broker, length):
    with kw.KafkaConnection(broker.bootstrap) as bystander:
        bystander.api_versions()
        rss_before = broker.rss_bytes()
        with kw.KafkaConnection(broker.bootstrap) as bad:
            bad.send_raw(struct.pack(">I", length) + b"\x00" * 100)
            assert bad.closed_by_peer(CLOSE_TIMEOUT), (
                f"frame length {length:#x}: connection still open after {CLOSE_TIMEOUT}s")
        assert broker.rss_bytes() < rss_before + (256 << 20), "broker memory jumped (allocated the frame?)"
        bystander.api_versions()  # an open connection is unaffected
    assert_broker_serves(broker, fresh_topic(broker, "bad-len"))


def _framed(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


GARBAGE = {
    "http-request": b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "tls-client-hello": bytes.fromhex("16030100f5010000f10303") + random.Random(3).randbytes(64),
    "random-bytes": b"\xff" + random.Random(4).randbytes(4095),  # leading 0xff: negative length
    "unknown-api-key": _framed(struct.pack(">hhi", 0x7A7A, 0, 1) + b"\x00\x00" + random.Random(5).randbytes(64)),
    "zero-length-frame": b"\x00\x00\x00\x00",
    "frame-shorter-than-header": _framed(b"\x00\x12\x00"),
    "metadata-with-huge-array": _framed(kw.request_header(kw.API_METADATA, 1, 1) + kw.i32(0x7FFFFFF0)),
    # transactional_id claims 32767 bytes; 38 follow.
    "produce-body-truncated": _framed(kw.request_header(kw.API_PRODUCE, 3, 1) + kw.i16(0x7FFF)
                                      + random.Random(6).randbytes(38)),
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_closes_connection(broker, name):
    with kw.KafkaConnection(broker.bootstrap) as bad:
        bad.send_raw(GARBAGE[name])
        assert bad.closed_by_peer(CLOSE_TIMEOUT), f"{name}: connection still open after {CLOSE_TIMEOUT}s"
    assert_broker_serves(broker, fresh_topic(broker, "bad-garbage"))
