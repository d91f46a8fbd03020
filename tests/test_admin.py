"""Topic administration, ListOffsets and Fetch limits, through real Kafka clients.

Against a real broker, with confluent-kafka's AdminClient/Consumer/Producer,
kafka-python's KafkaAdminClient/KafkaConsumer (where it shows something the
other does not: the CreateTopics response itself, the timestamp ListOffsets
returns) and kcat, these tests check:

* CreateTopics: the partition count and configs take effect (DescribeConfigs
  reports the configs that were set as DYNAMIC_TOPIC_CONFIG and every other one
  as DEFAULT_CONFIG with the default value; a too-large record is refused by the
  topic's ``max.message.bytes``); an existing name gives TOPIC_ALREADY_EXISTS,
  ``bad/name`` INVALID_TOPIC_EXCEPTION, zero partitions INVALID_PARTITIONS, an
  unknown config INVALID_CONFIG, and none of those creates or changes anything;
  ``validate_only`` answers like a real create but creates nothing.
* CreatePartitions: 2 -> 5 shows in Metadata and partition 4 takes data;
  shrinking (or asking for the current count) gives INVALID_PARTITIONS.
* DeleteTopics: the topic leaves Metadata; an unknown name gives
  UNKNOWN_TOPIC_OR_PARTITION; a topic re-created under the same name starts
  empty at offset 0 and stays so over a flush and a restart.
* ListOffsets: earliest/latest, and by timestamp the first record at or after
  it (exact offsets, including timestamps that fall inside one batch); a
  timestamp after every record gives -1.
* Fetch: a long poll (``fetch.wait.max.ms``) on an empty partition returns a
  record produced while it waits; with a 1 KiB ``max.partition.fetch.bytes``
  10 KiB records still come back (KIP-74: at least one whole batch).
* Metadata for an unknown topic with auto-creation off (on the broker, or only
  on the client side) gives UNKNOWN_TOPIC_OR_PARTITION and creates nothing.

Timing is only asserted with bounds of several seconds; every wait is bounded.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource, ConfigSource, NewPartitions, NewTopic

import kafka_wire as kw
from harness import wait_until
from kafka_clients import (
    KCAT,
    Rec,
    _consumer_conf,
    _kp_common,
    admin,
    confluent_conf,
    consume_confluent,
    consume_kafka_python,
    create_partitions,
    create_topic,
    delete_topic,
    kcat_consume,
    kcat_produce,
    list_topics,
    produce_confluent,
    unique_topic,
    wait_for_topic,
    watermarks,
)

ADMIN_TIMEOUT = 30.0

# Kafka error codes, as the tests expect them on the wire.
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_PARTITIONS = 37


def admin_error(future, timeout: float = ADMIN_TIMEOUT) -> KafkaError:
    """The KafkaError an admin future fails with (fails the test if it succeeds)."""
    try:
        result = future.result(timeout=timeout)
    except KafkaException as exc:
        return exc.args[0]
    raise AssertionError(f"admin request succeeded ({result!r}), expected an error")


def describe_entries(client, topic: str) -> dict:
    """name -> confluent ConfigEntry for every config DescribeConfigs reports on ``topic``."""
    resource = ConfigResource("topic", topic)
    return client.describe_configs([resource], request_timeout=ADMIN_TIMEOUT)[resource].result(
        timeout=ADMIN_TIMEOUT)


def produce_error(bootstrap: str, topic: str, partition: int, value: bytes,
                  timeout: float = 30) -> KafkaError | None:
    """Produce one uncompressed record; the delivery error, or None if it was stored."""
    producer = Producer(confluent_conf(bootstrap, **{
        "acks": "all", "enable.idempotence": False, "compression.type": "none",
        "message.timeout.ms": int(timeout * 1000), "retries": 0}))
    outcome: list = []
    producer.produce(topic, value=value, partition=partition,
                     on_delivery=lambda err, msg: outcome.append(err))
    assert producer.flush(timeout + 5) == 0, "delivery report never came"
    assert len(outcome) == 1
    return outcome[0]


def raw_fetch(bootstrap: str, topic: str, partition: int, offset: int,
              partition_max_bytes: int = 8 << 20, max_wait_ms: int = 100) -> kw.FetchPartition:
    """One sessionless Fetch on a raw socket (highest of v4..v11 the broker offers)."""
    with kw.KafkaConnection(bootstrap) as conn:
        version = kw.pick_version(conn.api_versions(), kw.API_FETCH, 4, 11)
        corr = conn.send_request(kw.API_FETCH, version, kw.fetch_body(
            version, topic, partition, offset, partition_max_bytes=partition_max_bytes,
            max_wait_ms=max_wait_ms))
        top_error, parts = kw.parse_fetch_response(version, conn.recv_response(corr, 30))
    assert top_error == kw.NONE, f"Fetch v{version} top-level error {top_error}"
    assert len(parts) == 1 and parts[0].partition == partition, parts
    return parts[0]


def batch_layout(bootstrap: str, topic: str, partition: int, end: int) -> list[tuple[int, int]]:
    """(base offset, last offset) of every stored batch in ``[0, end)``, as Fetch returns them."""
    layout: list[tuple[int, int]] = []
    offset = 0
    deadline = time.monotonic() + 30
    while offset < end:
        assert time.monotonic() < deadline, f"raw fetch stuck at offset {offset}: {layout}"
        part = raw_fetch(bootstrap, topic, partition, offset)
        assert part.error_code == kw.NONE, f"Fetch {topic}/{partition}@{offset}: error {part.error_code}"
        for b in kw.decode_batches(part.records or b""):
            if b.last_offset >= offset:
                layout.append((b.base_offset, b.last_offset))
                offset = b.last_offset + 1
    return layout


def kafka_python_admin(bootstrap: str):
    from kafka.admin import KafkaAdminClient

    return KafkaAdminClient(**_kp_common(bootstrap))


# ------------------------------------------------------------------------ CreateTopics


def test_create_topics_partitions_and_configs_take_effect(broker):
    bootstrap = broker.bootstrap
    client = admin(bootstrap)
    topic = unique_topic("create")
    plain = unique_topic("create-plain")
    config = {"max.message.bytes": "4096", "retention.ms": "3600000"}
    futures = client.create_topics(
        [NewTopic(topic, num_partitions=3, replication_factor=1, config=config),
         NewTopic(plain, num_partitions=1, replication_factor=1)],
        request_timeout=ADMIN_TIMEOUT)
    for name, future in futures.items():
        assert future.result(timeout=ADMIN_TIMEOUT) is None, name
    wait_for_topic(bootstrap, topic, 3)
    wait_for_topic(bootstrap, plain, 1)

    # Configs: what was set is DYNAMIC_TOPIC_CONFIG, the rest is the default.
    defaults = describe_entries(client, plain)
    assert {"max.message.bytes", "retention.ms", "cleanup.policy"} <= set(defaults), sorted(defaults)
    for name, entry in defaults.items():
        assert entry.source == ConfigSource.DEFAULT_CONFIG.value, (
            f"{plain}: {name}={entry.value} has source {entry.source}, expected DEFAULT_CONFIG")
        assert entry.is_default, f"{plain}: {name} not reported as default"
    assert defaults["max.message.bytes"].value == "1048588", "broker default message.max.bytes"
    entries = describe_entries(client, topic)
    assert set(entries) == set(defaults), "both topics should report the same config names"
    for name, entry in entries.items():
        if name in config:
            assert (entry.value, entry.source) == (config[name], ConfigSource.DYNAMIC_TOPIC_CONFIG.value), (
                f"{topic}: {name}={entry.value!r} source {entry.source}, expected "
                f"{config[name]!r} from DYNAMIC_TOPIC_CONFIG")
            assert not entry.is_default
        else:
            assert (entry.value, entry.source) == (defaults[name].value, ConfigSource.DEFAULT_CONFIG.value), (
                f"{topic}: {name}={entry.value!r} source {entry.source}, expected the default "
                f"{defaults[name].value!r} from DEFAULT_CONFIG")

    # Partitions take data; max.message.bytes=4096 is enforced for this topic only.
    produced = produce_confluent(bootstrap, topic, [
        Rec(b"k", f"p{p}".encode(), partition=p) for p in range(3)])
    assert sorted((r.partition, r.offset) for r in produced) == [(0, 0), (1, 0), (2, 0)]
    big = random.Random(1).randbytes(8000)  # incompressible, batch well over 4096 bytes
    err = produce_error(bootstrap, topic, 1, big)
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE, (
        f"an 8000-byte record on a topic with max.message.bytes=4096: {err}")
    assert produce_error(bootstrap, plain, 0, big) is None, "the default limit is 1 MB"
    assert watermarks(bootstrap, topic, 1) == (0, 1), "the refused record must not be stored"

    # kafka-python shows the CreateTopics response itself: partitions and config sources.
    kp = kafka_python_admin(bootstrap)
    try:
        name = unique_topic("create-kp")
        response = kp.create_topics({name: {"num_partitions": 2, "replication_factor": 1,
                                            "configs": {"retention.ms": "5000"}}})
        [result] = response["topics"]
        assert (result["name"], result["error_code"], result["num_partitions"]) == (name, 0, 2), result
        sources = {k: (v["value"], v["config_source"]) for k, v in result["configs"].items()}
        assert sources["retention.ms"] == ("5000", "DYNAMIC_TOPIC_CONFIG"), sources
        assert all(src == "DEFAULT_CONFIG" for k, (_, src) in sources.items() if k != "retention.ms"), sources
    finally:
        kp.close()
    wait_for_topic(bootstrap, name, 2)


def test_create_topics_errors_change_nothing(broker):
    bootstrap = broker.bootstrap
    client = admin(bootstrap)
    existing = unique_topic("exists")
    create_topic(bootstrap, existing, 2, config={"retention.ms": "3600000"})

    cases = {
        "existing name": (NewTopic(existing, num_partitions=5, replication_factor=1,
                                   config={"retention.ms": "1000"}), KafkaError.TOPIC_ALREADY_EXISTS),
        "bad/name": (NewTopic("bad/name", num_partitions=1, replication_factor=1),
                     KafkaError.TOPIC_EXCEPTION),  # INVALID_TOPIC_EXCEPTION, 17
        "zero partitions": (NewTopic(unique_topic("zero"), num_partitions=0, replication_factor=1),
                            KafkaError.INVALID_PARTITIONS),
        "unknown config": (NewTopic(unique_topic("badcfg"), num_partitions=1, replication_factor=1,
                                    config={"no.such.config": "1"}), KafkaError.INVALID_CONFIG),
    }
    for what, (new_topic, expected) in cases.items():
        for validate_only in (False, True):
            future = client.create_topics([new_topic], request_timeout=ADMIN_TIMEOUT,
                                          validate_only=validate_only)[new_topic.topic]
            err = admin_error(future)
            assert err.code() == expected, (
                f"CreateTopics {what} (validate_only={validate_only}): got {err}, expected "
                f"{KafkaError(expected).name()}")

    # kafka-python sends the request as is: the raw error codes, one request for all.
    kp = kafka_python_admin(bootstrap)
    try:
        zero = unique_topic("zero-kp")
        response = kp.create_topics(
            {zero: {"num_partitions": 0, "replication_factor": 1},
             "bad/name": {"num_partitions": 1, "replication_factor": 1},
             existing: {"num_partitions": 1, "replication_factor": 1}},
            raise_errors=False)
        codes = {t["name"]: t["error_code"] for t in response["topics"]}
        assert codes == {zero: 37, "bad/name": 17, existing: 36}, codes
    finally:
        kp.close()

    # Nothing was created, and the existing topic kept its partitions and config.
    topics = list_topics(bootstrap)
    created = [t for t in topics if t != existing]
    assert not created, f"failed CreateTopics requests created topics: {created}"
    assert len(topics[existing].partitions) == 2
    assert describe_entries(client, existing)["retention.ms"].value == "3600000"
    # The refused names are really free: creating them properly now works.
    for what in ("zero partitions", "unknown config"):
        name = cases[what][0].topic
        create_topic(bootstrap, name, 1)


def test_create_topics_validate_only_creates_nothing(broker):
    bootstrap = broker.bootstrap
    client = admin(bootstrap)
    topic = unique_topic("validate")
    future = client.create_topics(
        [NewTopic(topic, num_partitions=4, replication_factor=1, config={"retention.ms": "60000"})],
        request_timeout=ADMIN_TIMEOUT, validate_only=True)[topic]
    assert future.result(timeout=ADMIN_TIMEOUT) is None

    kp = kafka_python_admin(bootstrap)
    try:
        response = kp.create_topics({topic: {"num_partitions": 4, "replication_factor": 1}},
                                    validate_only=True)
        [result] = response["topics"]
        assert (result["error_code"], result["num_partitions"]) == (0, 4), result
        [described] = kp.describe_topics([topic])
        assert described["error_code"] == UNKNOWN_TOPIC_OR_PARTITION, described
    finally:
        kp.close()

    assert topic not in list_topics(bootstrap), "validate_only created the topic"
    err = admin_error(client.describe_configs([ConfigResource("topic", topic)],
                                              request_timeout=ADMIN_TIMEOUT)[ConfigResource("topic", topic)])
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, f"DescribeConfigs after validate_only: {err}"
    # The name is still free, and the real create gets exactly what was asked.
    create_topic(bootstrap, topic, 4, config={"retention.ms": "60000"})
    assert describe_entries(client, topic)["retention.ms"].value == "60000"
    assert all(watermarks(bootstrap, topic, p) == (0, 0) for p in range(4))


# -------------------------------------------------------------------- CreatePartitions


def test_create_partitions_grow_and_refuse_shrink(broker):
    bootstrap = broker.bootstrap
    client = admin(bootstrap)
    topic = unique_topic("grow")
    create_topic(bootstrap, topic, 2)
    before = produce_confluent(bootstrap, topic, [
        Rec(b"k", f"before-{p}-{i}".encode(), partition=p) for p in range(2) for i in range(3)])

    # validate_only changes nothing.
    future = client.create_partitions([NewPartitions(topic, 5)], request_timeout=ADMIN_TIMEOUT,
                                      validate_only=True)[topic]
    assert future.result(timeout=ADMIN_TIMEOUT) is None
    assert len(list_topics(bootstrap)[topic].partitions) == 2, "validate_only added partitions"

    create_partitions(bootstrap, topic, 5)
    wait_for_topic(bootstrap, topic, 5)
    meta = list_topics(bootstrap)[topic]
    assert sorted(meta.partitions) == [0, 1, 2, 3, 4]

    # The new partition 4 takes data from two clients and reads back; old data is untouched.
    kcat_produce(bootstrap, topic, 4, [("kk", "from kcat 0"), (None, "from kcat 1")])
    [rec] = produce_confluent(bootstrap, topic, [Rec(b"ck", b"from confluent", partition=4)])
    assert (rec.partition, rec.offset) == (4, 2)
    got = consume_confluent(bootstrap, topic, 4)
    assert [(r.offset, r.key, r.value) for r in got] == [
        (0, b"kk", b"from kcat 0"), (1, None, b"from kcat 1"), (2, b"ck", b"from confluent")]
    assert [(r.offset, r.value) for r in kcat_consume(bootstrap, topic, 4)] == [
        (r.offset, r.value) for r in got]
    for p in (2, 3):
        assert watermarks(bootstrap, topic, p) == (0, 0), f"new partition {p} is not empty"
    for p in range(2):
        assert [r.value for r in consume_confluent(bootstrap, topic, p)] == [
            r.value for r in before if r.partition == p], f"old partition {p} changed"

    # Shrinking, or asking for the current count, is INVALID_PARTITIONS (as in Kafka).
    for count in (3, 5):
        err = admin_error(client.create_partitions([NewPartitions(topic, count)],
                                                   request_timeout=ADMIN_TIMEOUT)[topic])
        assert err.code() == KafkaError.INVALID_PARTITIONS, (
            f"CreatePartitions {topic} 5 -> {count}: got {err}, expected INVALID_PARTITIONS")
    nope = unique_topic("nope")
    err = admin_error(client.create_partitions([NewPartitions(nope, 3)],
                                               request_timeout=ADMIN_TIMEOUT)[nope])
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, f"CreatePartitions on an unknown topic: {err}"
    assert len(list_topics(bootstrap)[topic].partitions) == 5


# ------------------------------------------------------------------------ DeleteTopics


def test_delete_topics_and_recreate_starts_empty(broker):
    bootstrap = broker.bootstrap
    client = admin(bootstrap)
    topic = unique_topic("delete")
    keep = unique_topic("keep")
    create_topic(bootstrap, topic, 2)
    create_topic(bootstrap, keep, 1)
    produce_confluent(bootstrap, topic, [Rec(b"old", f"old-{p}-{i}".encode(), partition=p)
                                         for p in range(2) for i in range(5)])
    # The last ones are only in the WAL (acks=1) when the delete comes.
    produce_confluent(bootstrap, topic, [Rec(b"old", b"old-wal", partition=0)], acks="1")
    produce_confluent(bootstrap, keep, [Rec(b"k", b"kept")])

    delete_topic(bootstrap, topic)
    wait_until(lambda: topic not in list_topics(bootstrap), 30, f"{topic} to leave Metadata",
               interval=0.2)
    assert keep in list_topics(bootstrap), "deleting one topic removed another"

    err = admin_error(client.delete_topics([topic], request_timeout=ADMIN_TIMEOUT)[topic])
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, f"deleting {topic} twice: {err}"
    never = unique_topic("never")
    err = admin_error(client.delete_topics([never], request_timeout=ADMIN_TIMEOUT)[never])
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, f"deleting an unknown topic: {err}"
    kp = kafka_python_admin(bootstrap)
    try:
        response = kp.delete_topics([never], raise_errors=False)
        codes = {r["name"]: r["error_code"] for r in response["topics"]}
        assert codes == {never: UNKNOWN_TOPIC_OR_PARTITION}, response
    finally:
        kp.close()

    # Re-created under the same name (one partition now): empty, offsets from 0.
    create_topic(bootstrap, topic, 1)
    assert watermarks(bootstrap, topic, 0) == (0, 0), "re-created topic is not empty"
    [rec] = produce_confluent(bootstrap, topic, [Rec(b"new", b"new-0")])
    assert rec.offset == 0, f"first record of the re-created topic got offset {rec.offset}"

    def only_new(where: str) -> None:
        assert watermarks(bootstrap, topic, 0) == (0, 1), f"{where}: watermarks"
        got = consume_confluent(bootstrap, topic, 0)
        assert [(r.offset, r.key, r.value) for r in got] == [(0, b"new", b"new-0")], (
            f"{where}: {[(r.offset, r.value) for r in got]}")
        assert [(r.offset, r.value) for r in kcat_consume(bootstrap, topic, 0)] == [(0, b"new-0")]

    only_new("after re-create")
    # Let the flusher drain everything accepted (the old topic's WAL data must not land in the
    # new one), then restart (WAL replay must not bring it back either).
    wait_until(lambda: broker.metrics().has("strata_unflushed_bytes")
               and broker.metrics().value("strata_unflushed_bytes") == 0, 30,
               "strata_unflushed_bytes to reach 0")
    only_new("after the flush")
    broker.restart()
    only_new("after restart")
    assert sorted(t for t in list_topics(bootstrap) if t in (topic, keep)) == sorted([topic, keep])
    assert [r.value for r in consume_confluent(bootstrap, keep, 0)] == [b"kept"]


# ------------------------------------------------------------------------- ListOffsets


def test_list_offsets_earliest_latest_and_by_timestamp(broker):
    bootstrap = broker.bootstrap
    topic = unique_topic("offsets")
    create_topic(bootstrap, topic, 2)  # partition 1 stays empty
    t0 = (int(time.time()) - 600) * 1000  # ten minutes ago, a whole second
    stamps = [t0 + i * 1000 for i in range(10)]

    # Offsets 0..2: one record per produce (separate batches); 3..7 and 8..9: one batch each.
    for i in range(3):
        [rec] = produce_confluent(bootstrap, topic, [Rec(b"k", f"v{i}".encode(), (), stamps[i], 0)])
        assert rec.offset == i
    for lo, hi in ((3, 8), (8, 10)):
        got = produce_confluent(bootstrap, topic, [Rec(b"k", f"v{i}".encode(), (), stamps[i], 0)
                                                   for i in range(lo, hi)], **{"linger.ms": 2000})
        assert [r.offset for r in got] == list(range(lo, hi))
    # The premise: the broker stores (and serves) exactly that batch layout.
    assert batch_layout(bootstrap, topic, 0, 10) == [(0, 0), (1, 1), (2, 2), (3, 7), (8, 9)]
    assert [r.timestamp for r in consume_confluent(bootstrap, topic, 0)] == stamps

    def expected(ts: int) -> int:
        return next((o for o, s in enumerate(stamps) if s >= ts), -1)

    targets = [0, t0 - 60_000, t0, t0 + 1, t0 + 999, t0 + 1000, t0 + 1001, t0 + 2000, t0 + 2001,
               t0 + 2999, t0 + 3000, t0 + 3001, t0 + 4500, t0 + 5000, t0 + 6999, t0 + 7000,
               t0 + 7001, t0 + 8500, t0 + 9000, t0 + 9001, int(time.time() * 1000) + 3_600_000]
    assert expected(t0 + 4500) == 5 and expected(t0 + 9001) == -1  # the reference itself

    consumer = Consumer(_consumer_conf(bootstrap))
    try:
        assert consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=15,
                                              cached=False) == (0, 10)
        assert consumer.get_watermark_offsets(TopicPartition(topic, 1), timeout=15,
                                              cached=False) == (0, 0)
        # Earliest (-2) and latest (-1) through offsets_for_times take the same ListOffsets path.
        [tp] = consumer.offsets_for_times([TopicPartition(topic, 0, -2)], timeout=15)
        assert tp.offset == 0 and tp.error is None
        [tp] = consumer.offsets_for_times([TopicPartition(topic, 0, -1)], timeout=15)
        assert tp.offset == 10 and tp.error is None
        wrong = {}
        for ts in targets:
            [tp] = consumer.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=15)
            assert tp.error is None, f"offsets_for_times({ts}): {tp.error}"
            if tp.offset != expected(ts):
                wrong[ts - t0] = (tp.offset, expected(ts))
        assert not wrong, f"offsets_for_times (t - t0: (got, expected)): {wrong}"
        [tp] = consumer.offsets_for_times([TopicPartition(topic, 1, t0)], timeout=15)
        assert (tp.offset, tp.error) == (-1, None), "by timestamp on an empty partition"
    finally:
        consumer.close()

    # kafka-python also shows the timestamp the broker answers with.
    from kafka import KafkaConsumer, TopicPartition as KTP

    kc = KafkaConsumer(**_kp_common(bootstrap), group_id=None, enable_auto_commit=False)
    try:
        tp = KTP(topic, 0)
        assert kc.beginning_offsets([tp], timeout_ms=15000) == {tp: 0}
        assert kc.end_offsets([tp], timeout_ms=15000) == {tp: 10}
        wrong = {}
        for ts in targets:
            answer = kc.offsets_for_times({tp: ts}, timeout_ms=15000)[tp]
            want = expected(ts)
            got = None if answer is None else (answer.offset, answer.timestamp)
            if got != (None if want < 0 else (want, stamps[want])):
                wrong[ts - t0] = (got, want)
        assert not wrong, f"kafka-python offsets_for_times (t - t0: (got, expected offset)): {wrong}"
    finally:
        kc.close()


# ------------------------------------------------------------------------------ Fetch


@pytest.mark.parametrize("wait_ms", [3000, 30000])
def test_fetch_long_poll_returns_when_data_arrives(broker, wait_ms):
    """A consumer long-polls an empty partition; a record produced ~1 s later arrives.

    With ``fetch.wait.max.ms=3000`` only arrival is checked. With 30 s the record
    must arrive well before the poll would expire on its own (15 s bound): the
    broker has to answer the waiting Fetch when data comes, not at the timeout.
    """
    bootstrap = broker.bootstrap
    topic = unique_topic("longpoll")
    create_topic(bootstrap, topic, 1)
    consumer = Consumer(_consumer_conf(bootstrap, **{
        "fetch.wait.max.ms": wait_ms, "enable.partition.eof": False,
        "socket.timeout.ms": wait_ms + 30000}))
    produced: list = []
    errors: list = []

    def produce_later():
        try:
            time.sleep(1.0)  # the scenario: data comes while the Fetch waits
            produced.extend(produce_confluent(bootstrap, topic, [Rec(b"late", b"arrived")]))
            produced.append(time.monotonic())
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        producer = threading.Thread(target=produce_later, daemon=True)
        start = time.monotonic()
        producer.start()
        msg = None
        while msg is None and time.monotonic() - start < 45:
            m = consumer.poll(0.5)
            if m is not None:
                assert m.error() is None, f"consumer error: {m.error()}"
                msg = m
        arrived = time.monotonic()
        producer.join(60)
        assert not errors, f"producer failed: {errors}"
        assert len(produced) == 2, "the producer thread did not finish"
        assert msg is not None, "the record produced during the long poll never arrived in 45 s"
        assert (msg.offset(), msg.key(), msg.value()) == (0, b"late", b"arrived")
        acked = produced[-1]
        assert arrived - acked < 15, (
            f"record arrived {arrived - acked:.1f}s after it was acknowledged "
            f"(fetch.wait.max.ms={wait_ms})")
    finally:
        consumer.close()


def test_fetch_small_partition_limit_still_progresses(broker):
    """KIP-74: a partition limit smaller than a batch still returns that whole batch."""
    bootstrap = broker.bootstrap
    topic = unique_topic("kip74")
    create_topic(bootstrap, topic, 1)
    rng = random.Random(74)
    values = [rng.randbytes(10 * 1024) for _ in range(7)]  # incompressible
    for i in range(3):  # three one-record batches
        produce_confluent(bootstrap, topic, [Rec(b"k%d" % i, values[i])])
    produce_confluent(bootstrap, topic, [Rec(b"k%d" % i, values[i]) for i in range(3, 7)],
                      **{"linger.ms": 2000})  # one four-record batch of ~40 KiB
    assert batch_layout(bootstrap, topic, 0, 7) == [(0, 0), (1, 1), (2, 2), (3, 6)]

    # On the wire: each Fetch with a 1 KiB partition limit returns at least one whole batch.
    for offset, last in ((0, 0), (2, 2), (3, 6), (5, 6)):
        part = raw_fetch(bootstrap, topic, 0, offset, partition_max_bytes=1024)
        assert part.error_code == kw.NONE and part.high_watermark == 7, part
        batches = kw.decode_batches(part.records or b"")
        assert batches, (f"Fetch at {offset} with partition_max_bytes=1024 returned no whole batch "
                         f"({len(part.records or b'')} bytes)")
        assert (batches[0].base_offset, batches[0].last_offset) == (
            offset if offset != 5 else 3, last), [(b.base_offset, b.last_offset) for b in batches]
        assert batches[0].crc_ok

    # And real consumers with tiny limits read everything.
    expected = [(i, b"k%d" % i, values[i]) for i in range(7)]
    got = consume_confluent(bootstrap, topic, 0, timeout=60, **{
        "max.partition.fetch.bytes": 1024, "fetch.max.bytes": 1024, "message.max.bytes": 1000})
    assert [(r.offset, r.key, r.value) for r in got] == expected, "confluent with 1 KiB fetch limits"
    got = consume_kafka_python(bootstrap, topic, 0, timeout=60, max_partition_fetch_bytes=1024,
                               fetch_max_bytes=1024)
    assert [(r.offset, r.key, r.value) for r in got] == expected, "kafka-python with 1 KiB fetch limits"


# --------------------------------------------------------------- Metadata, no auto-create


def assert_unknown_everywhere(bootstrap: str, missing: str) -> None:
    """Metadata for ``missing`` from clients that do not ask for auto-creation."""
    consumer = Consumer(_consumer_conf(bootstrap, **{"allow.auto.create.topics": False}))
    try:
        meta = consumer.list_topics(topic=missing, timeout=15).topics[missing]
        assert meta.error is not None and meta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, (
            f"confluent consumer Metadata for {missing}: {meta.error}, partitions {meta.partitions}")
    finally:
        consumer.close()
    kp = kafka_python_admin(bootstrap)
    try:
        [described] = kp.describe_topics([missing])  # allow_auto_topic_creation=False
        assert described["error_code"] == UNKNOWN_TOPIC_OR_PARTITION, described
    finally:
        kp.close()


def test_metadata_unknown_topic_with_auto_create_off(make_broker):
    broker = make_broker("strata-no-auto", args=["--auto-create-topics", "false"])
    bootstrap = broker.bootstrap
    missing = unique_topic("missing")

    assert_unknown_everywhere(bootstrap, missing)
    # Clients that do ask for auto-creation (admin, kcat) get the same answer here.
    meta = admin(bootstrap).list_topics(topic=missing, timeout=15).topics[missing]
    assert meta.error is not None and meta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, meta.error
    proc = subprocess.run([KCAT, "-b", bootstrap, "-L", "-t", missing, "-J",
                           "-X", "broker.address.family=v4"], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    [listed] = json.loads(proc.stdout)["topics"]
    assert listed["topic"] == missing and "Unknown topic or partition" in listed.get("error", ""), listed
    assert not listed["partitions"], listed

    assert missing not in list_topics(bootstrap), "Metadata created the topic"
    assert list_topics(bootstrap) == {}, "nothing should exist on this broker"
    # Really nothing: the name can now be created, with the partitions asked for.
    create_topic(bootstrap, missing, 2)
    assert len(list_topics(bootstrap)[missing].partitions) == 2


def test_metadata_client_without_auto_create_creates_nothing(broker):
    """Broker auto-creation on, but the client's Metadata request says no: nothing is created."""
    bootstrap = broker.bootstrap
    missing = unique_topic("missing")
    assert_unknown_everywhere(bootstrap, missing)
    assert missing not in list_topics(bootstrap), "Metadata with allow_auto_topic_creation=false created it"
    # Whereas a client that asks (librdkafka's admin handle does) gets it created, as in Kafka.
    asked = unique_topic("asked")
    admin(bootstrap).list_topics(topic=asked, timeout=15)
    wait_for_topic(bootstrap, asked, 1)


# ------------------------------------------------------- AlterConfigs, DescribeCluster


def config_value(client, topic: str, name: str) -> tuple[str, int]:
    entry = describe_entries(client, topic)[name]
    return entry.value, entry.source


def test_incremental_alter_configs_set_delete_append_and_refuse(broker):
    """KIP-339 IncrementalAlterConfigs: SET and DELETE take effect and show in
    DescribeConfigs with the right source; APPEND adds to the list config
    cleanup.policy; a bad value or an unknown name gives INVALID_CONFIG and changes
    nothing in that resource; validate_only changes nothing."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry

    client = admin(broker.bootstrap)
    topic = unique_topic("incr-alter")
    create_topic(broker.bootstrap, topic, 1)
    resource = lambda *entries: ConfigResource("topic", topic, incremental_configs=list(entries))

    def alter(res, validate_only=False):
        return client.incremental_alter_configs([res], validate_only=validate_only,
                                                request_timeout=ADMIN_TIMEOUT)[res]

    alter(resource(ConfigEntry("retention.ms", "3600000",
                               incremental_operation=AlterConfigOpType.SET))).result(timeout=ADMIN_TIMEOUT)
    assert config_value(client, topic, "retention.ms") == ("3600000", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)

    alter(resource(ConfigEntry("cleanup.policy", "compact",
                               incremental_operation=AlterConfigOpType.APPEND))).result(timeout=ADMIN_TIMEOUT)
    assert config_value(client, topic, "cleanup.policy")[0] == "delete,compact"

    # One bad value in the request: nothing of it is applied.
    err = admin_error(alter(resource(
        ConfigEntry("retention.ms", "60000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("max.message.bytes", "lots", incremental_operation=AlterConfigOpType.SET))))
    assert err.code() == KafkaError.INVALID_CONFIG, err
    err = admin_error(alter(resource(
        ConfigEntry("no.such.config", "1", incremental_operation=AlterConfigOpType.SET))))
    assert err.code() == KafkaError.INVALID_CONFIG, err
    assert config_value(client, topic, "retention.ms")[0] == "3600000"

    alter(resource(ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)),
          validate_only=True).result(timeout=ADMIN_TIMEOUT)
    assert config_value(client, topic, "retention.ms")[0] == "3600000", "validate_only changed the topic"

    alter(resource(ConfigEntry("retention.ms", None,
                               incremental_operation=AlterConfigOpType.DELETE))).result(timeout=ADMIN_TIMEOUT)
    value, source = config_value(client, topic, "retention.ms")
    assert source == ConfigSource.DEFAULT_CONFIG.value, (value, source)

    # Broker configs are flags: refused with a message, not silently ignored.
    node = client.describe_cluster(request_timeout=ADMIN_TIMEOUT).result(timeout=ADMIN_TIMEOUT).nodes[0]
    broker_res = ConfigResource("broker", str(node.id), incremental_configs=[
        ConfigEntry("num.partitions", "3", incremental_operation=AlterConfigOpType.SET)])
    err = admin_error(client.incremental_alter_configs([broker_res], request_timeout=ADMIN_TIMEOUT)[broker_res])
    assert err.code() == KafkaError.INVALID_REQUEST, err


def test_alter_configs_replaces_the_whole_set(broker):
    """Legacy AlterConfigs: the configs given become the topic's whole set, so one
    set earlier and not repeated returns to its default (Kafka's semantics, which is
    why KIP-339 added the incremental form)."""
    client = admin(broker.bootstrap)
    topic = unique_topic("alter")
    create_topic(broker.bootstrap, topic, 1, {"retention.ms": 86400000})
    res = ConfigResource("topic", topic, set_config={"max.message.bytes": "2097152"})
    client.alter_configs([res], request_timeout=ADMIN_TIMEOUT)[res].result(timeout=ADMIN_TIMEOUT)
    assert config_value(client, topic, "max.message.bytes") == (
        "2097152", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
    assert config_value(client, topic, "retention.ms")[1] == ConfigSource.DEFAULT_CONFIG.value


def test_describe_cluster(broker):
    """DescribeCluster (KIP-700) through confluent-kafka: the cluster id, this broker
    as the only node and the controller, at its advertised address."""
    client = admin(broker.bootstrap)
    cluster = client.describe_cluster(request_timeout=ADMIN_TIMEOUT).result(timeout=ADMIN_TIMEOUT)
    assert cluster.cluster_id == "strata"
    assert len(cluster.nodes) == 1
    node = cluster.nodes[0]
    assert f"{node.host}:{node.port}" == broker.bootstrap
    assert cluster.controller is not None and cluster.controller.id == node.id


# ------------------------------------------------------ DeleteRecords, OffsetForLeaderEpoch


def test_delete_records_moves_the_log_start(broker):
    """DeleteRecords: the low watermark moves to the offset asked, reads below it get
    OFFSET_OUT_OF_RANGE, reads from the beginning start there, it survives a restart, and
    an offset past the high watermark is refused with OFFSET_OUT_OF_RANGE, changing nothing."""
    from confluent_kafka import TopicPartition as TP

    client = admin(broker.bootstrap)
    topic = unique_topic("delrec")
    create_topic(broker.bootstrap, topic, 1)
    produce_confluent(broker.bootstrap, topic, [Rec(None, f"v{i}".encode(), partition=0) for i in range(100)])
    wait_until(lambda: watermarks(broker.bootstrap, topic, 0)[1] == 100, 30, "100 records readable")

    result = client.delete_records([TP(topic, 0, 40)], request_timeout=ADMIN_TIMEOUT)
    deleted = result[TP(topic, 0, 40)].result(timeout=ADMIN_TIMEOUT)
    assert deleted.low_watermark == 40, deleted
    assert watermarks(broker.bootstrap, topic, 0) == (40, 100)

    err = admin_error(client.delete_records([TP(topic, 0, 500)], request_timeout=ADMIN_TIMEOUT)[TP(topic, 0, 500)])
    assert err.code() == KafkaError.OFFSET_OUT_OF_RANGE, err
    assert watermarks(broker.bootstrap, topic, 0) == (40, 100)

    below = raw_fetch(broker.bootstrap, topic, 0, 10)
    assert below.error_code == 1, f"a fetch below the log start must be OFFSET_OUT_OF_RANGE, got {below.error_code}"

    values = [m.value for m in consume_confluent(broker.bootstrap, topic, 0, start=40)]
    assert values == [f"v{i}".encode() for i in range(40, 100)], values[:3]

    broker.restart()
    assert watermarks(broker.bootstrap, topic, 0) == (40, 100), "the log start survives a restart"


def test_offset_for_leader_epoch_answers_the_high_watermark(broker):
    """OffsetForLeaderEpoch v2 on the wire: for the epoch Metadata reports (0), the end
    offset is the high watermark (a Strata log is never truncated); a current epoch the
    client cannot have seen gets UNKNOWN_LEADER_EPOCH (75)."""
    topic = unique_topic("ofle")
    create_topic(broker.bootstrap, topic, 1)
    produce_confluent(broker.bootstrap, topic, [Rec(None, b"x", partition=0) for _ in range(7)])
    wait_until(lambda: watermarks(broker.bootstrap, topic, 0)[1] == 7, 30, "7 records readable")

    def ask(current_epoch: int, epoch: int) -> tuple[int, int, int]:
        body = (kw.i32(1) + kw.string(topic) + kw.i32(1)
                + kw.i32(0) + kw.i32(current_epoch) + kw.i32(epoch))
        with kw.KafkaConnection(broker.bootstrap) as conn:
            corr = conn.send_request(23, 2, body)
            r = kw.Reader(conn.recv_response(corr, 30))
        r.i32()  # throttle
        assert r.i32() == 1 and r.string() == topic and r.i32() == 1
        error, partition, leader_epoch, end_offset = r.i16(), r.i32(), r.i32(), r.i64()
        assert partition == 0
        return error, leader_epoch, end_offset

    assert ask(0, 0) == (0, 0, 7)
    assert ask(-1, 0) == (0, 0, 7)
    assert ask(5, 0)[0] == 75


# --------------------------------------- DescribeProducers, List/DescribeTransactions


def _read_uvarint(r: "kw.Reader") -> int:
    shift = result = 0
    while True:
        b = r.i8() & 0xFF
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result
        shift += 7


def _compact_string(r: "kw.Reader") -> str | None:
    n = _read_uvarint(r) - 1
    if n < 0:
        return None
    return bytes(r.i8() & 0xFF for _ in range(n)).decode()


def test_describe_producers_and_transactions(broker):
    """DescribeProducers (KIP-664) on the wire: after an idempotent confluent producer
    wrote 10 records, the partition lists that producer with epoch 0 and last sequence 9.
    ListTransactions answers an empty list and echoes an unknown state filter;
    DescribeTransactions answers TRANSACTIONAL_ID_NOT_FOUND (105): no transactions exist."""
    topic = unique_topic("producers")
    create_topic(broker.bootstrap, topic, 1)
    produce_confluent(broker.bootstrap, topic, [Rec(None, b"x", partition=0) for _ in range(10)],
                      **{"enable.idempotence": True})

    body = (kw.uvarint(2) + kw.compact_string(topic) + kw.uvarint(2) + kw.i32(0) + b"\x00" + b"\x00")
    with kw.KafkaConnection(broker.bootstrap) as conn:
        corr = conn.send_request(61, 0, body, flexible_header=True)
        r = kw.Reader(conn.recv_response(corr, 30, flexible_header=True))
    r.i32()  # throttle
    assert _read_uvarint(r) == 2 and _compact_string(r) == topic
    assert _read_uvarint(r) == 2
    partition, error = r.i32(), r.i16()
    assert (partition, error) == (0, 0)
    _compact_string(r)  # error message
    producers = _read_uvarint(r) - 1
    assert producers == 1, f"one idempotent producer expected, got {producers}"
    pid, epoch, last_seq = r.i64(), r.i32(), r.i32()
    assert pid >= 0 and epoch == 0 and last_seq == 9, (pid, epoch, last_seq)

    body = kw.uvarint(2) + kw.compact_string("NoSuchState") + kw.uvarint(1) + kw.i64(-1) + b"\x00"
    with kw.KafkaConnection(broker.bootstrap) as conn:
        corr = conn.send_request(66, 1, body, flexible_header=True)
        r = kw.Reader(conn.recv_response(corr, 30, flexible_header=True))
    r.i32()
    assert r.i16() == 0
    assert _read_uvarint(r) == 2 and _compact_string(r) == "NoSuchState"
    assert _read_uvarint(r) == 1, "no transactions"

    body = kw.uvarint(2) + kw.compact_string("my-txn") + b"\x00"
    with kw.KafkaConnection(broker.bootstrap) as conn:
        corr = conn.send_request(65, 0, body, flexible_header=True)
        r = kw.Reader(conn.recv_response(corr, 30, flexible_header=True))
    r.i32()
    assert _read_uvarint(r) == 2
    assert r.i16() == 105
    assert _compact_string(r) == "my-txn"


def test_list_offsets_max_timestamp(broker):
    """ListOffsets v7's MAX_TIMESTAMP (KIP-734), through confluent-kafka's AdminClient: the
    first record carrying the partition's largest timestamp, even when later records are
    older; an empty partition answers -1."""
    from confluent_kafka import TopicPartition as TP
    from confluent_kafka.admin import OffsetSpec

    client = admin(broker.bootstrap)
    topic = unique_topic("maxts")
    create_topic(broker.bootstrap, topic, 2)
    # Recent timestamps: older ones would be subject to the default 7-day retention.
    t0 = (int(time.time()) - 60) * 1000
    stamps = [t0 + 1000, t0 + 5000, t0 + 3000, t0 + 5000, t0 + 2000]
    produce_confluent(broker.bootstrap, topic,
                      [Rec(None, f"v{i}".encode(), timestamp=ts, partition=0) for i, ts in enumerate(stamps)])
    wait_until(lambda: watermarks(broker.bootstrap, topic, 0)[1] == len(stamps), 30, "records readable")
    result = client.list_offsets({TP(topic, 0): OffsetSpec.max_timestamp(),
                                  TP(topic, 1): OffsetSpec.max_timestamp()},
                                 request_timeout=ADMIN_TIMEOUT)
    got = result[TP(topic, 0)].result(timeout=ADMIN_TIMEOUT)
    assert (got.offset, got.timestamp) == (1, t0 + 5000), got
    empty = result[TP(topic, 1)].result(timeout=ADMIN_TIMEOUT)
    assert empty.offset == -1, empty
