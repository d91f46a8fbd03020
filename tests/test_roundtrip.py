"""Round trips through real Kafka clients, on both broker flavours.

For every producer (kcat, confluent-kafka, kafka-python, with and without
compression) we create a 3-partition topic with the AdminClient, produce keyed
records with headers (and, where the client can, explicit timestamps) to every
partition, then read every partition back with *all three* consumers. Each
consumer must see exactly what was produced: same offsets 0..n-1, keys, values,
headers (order and duplicates included) and timestamps.

Each test runs on the default broker (SQLite + file://) and on PostgreSQL + S3
(moto). A second test checks that a clean restart (SIGTERM, start) keeps topics,
their configs, data and offsets, and that produce continues at the next offset.
"""

from __future__ import annotations

import random
import time
import zlib

import pytest

from harness import files_under
from kafka_clients import (
    Rec,
    consume_confluent,
    consume_kafka_python,
    create_topic,
    describe_topic_config,
    kcat_consume,
    kcat_produce,
    list_topics,
    produce_confluent,
    produce_kafka_python,
    unique_topic,
    wait_for_high_watermark,
    watermarks,
)

PARTITIONS = 3

CONSUMERS = {
    "kcat": kcat_consume,
    "confluent": consume_confluent,
    "kafka-python": consume_kafka_python,
}

# producer name -> (client, compression)
PRODUCERS = {
    "kcat": ("kcat", None),
    "kcat-snappy": ("kcat", "snappy"),
    "confluent": ("confluent", "none"),
    "confluent-zstd": ("confluent", "zstd"),
    "confluent-lz4": ("confluent", "lz4"),
    "kafka-python": ("kafka-python", None),
    "kafka-python-gzip": ("kafka-python", "gzip"),
}

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu héllo wörld 日本語 ✓".split()


def sample_records(seed: int, per_partition: int = 12) -> list[Rec]:
    """Records for every partition, covering the awkward cases.

    Null keys, a null value (tombstone), an empty value, a 150 kB value, unicode,
    headers that repeat a key, an empty header value. Timestamps are explicit,
    recent (retention must not be allowed to touch them) and deliberately not
    monotonic within a partition. Everything is UTF-8 so kcat's JSON can carry it.
    """
    rng = random.Random(seed)
    base = int(time.time() * 1000) - 30 * 60 * 1000
    records = []
    for p in range(PARTITIONS):
        for i in range(per_partition):
            key = None if i % 5 == 3 else f"key-{p}-{i}".encode()
            if i == 1:
                value = None
            elif i == 2:
                value = b""
            elif i == 4:
                value = " ".join(rng.choice(WORDS) for _ in range(20000)).encode()[:150_000]
            else:
                value = f"value {p}/{i} ".encode() + " ".join(
                    rng.choice(WORDS) for _ in range(rng.randint(1, 30))).encode()
            headers = [
                (),
                (("trace-id", f"{p}-{i}".encode()),),
                (("dup", b"1"), ("dup", b"2"), ("ünïcode", "✓".encode())),
                (("empty", b""),),
            ][i % 4]
            ts = base + i * 997 - (i % 3) * 5000
            records.append(Rec(key, value, headers, ts, partition=p))
    return records


def produce_kcat(bootstrap: str, topic: str, compression: str | None) -> list[Rec]:
    """kcat cannot set timestamps or per-message headers: headers are per run (two runs
    per partition), timestamps are the client's clock (checked against a window)."""
    expected = []
    rng = random.Random(7)
    for p in range(PARTITIONS):
        for run, headers in enumerate([
            [("source", "kcat"), ("partition", str(p))],
            [("dup", "1"), ("dup", "2"), ("ünïcode", "✓")],
        ]):
            lines = []
            for i in range(6):
                key = None if i == 2 else f"kcat-{p}-{run}-{i}"
                value = f"kcat value {p}/{run}/{i} " + " ".join(rng.choice(WORDS) for _ in range(i * 3 + 1))
                lines.append((key, value))
            kcat_produce(bootstrap, topic, p, lines, headers=headers, compression=compression)
            hdrs = tuple((k, v.encode()) for k, v in headers)
            expected += [Rec(None if k is None else k.encode(), v.encode(), hdrs, None, partition=p)
                         for k, v in lines]
    return expected


def produce_with(name: str, bootstrap: str, topic: str) -> tuple[list[Rec], bool]:
    """Produce the sample set with the named producer.

    Returns (expected records, whether their offsets are known from delivery reports).
    """
    client, compression = PRODUCERS[name]
    if client == "kcat":
        return produce_kcat(bootstrap, topic, compression), False
    records = sample_records(seed=zlib.crc32(name.encode()))
    if client == "confluent":
        return produce_confluent(bootstrap, topic, records, **{"compression.type": compression}), True
    return produce_kafka_python(bootstrap, topic, records, compression_type=compression), True


def check_partition(consumer: str, partition: int, expected: list[Rec], got: list[Rec],
                    offsets_known: bool, ts_window: tuple[int, int]) -> None:
    where = f"{consumer} reading partition {partition}"
    assert [r.offset for r in got] == list(range(len(expected))), (
        f"{where}: offsets {[r.offset for r in got]}, expected 0..{len(expected) - 1}")
    assert all(r.partition == partition for r in got), f"{where}: records from another partition"
    if offsets_known:
        assert [r.offset for r in expected] == list(range(len(expected))), (
            f"delivery reports gave offsets {[r.offset for r in expected]} for partition {partition}")
    for exp, rec in zip(expected, got):
        if exp.timestamp is None:
            lo, hi = ts_window
            assert lo <= rec.timestamp <= hi, (
                f"{where} offset {rec.offset}: timestamp {rec.timestamp} outside the produce "
                f"window [{lo}, {hi}]")
            rec = Rec(rec.key, rec.value, rec.headers, None, rec.partition, rec.offset)
        assert rec.content() == exp.content(), (
            f"{where} offset {rec.offset}:\n  got      {rec.content()!r:.300}\n"
            f"  expected {exp.content()!r:.300}")


@pytest.mark.parametrize("producer", list(PRODUCERS))
def test_roundtrip(each_broker, producer):
    bootstrap = each_broker.bootstrap
    topic = unique_topic(f"rt-{producer}")
    create_topic(bootstrap, topic, PARTITIONS)

    t0 = int(time.time() * 1000) - 1000
    expected, offsets_known = produce_with(producer, bootstrap, topic)
    t1 = int(time.time() * 1000) + 1000
    by_partition = {p: [r for r in expected if r.partition == p] for p in range(PARTITIONS)}
    assert all(by_partition.values()), "every partition should have records"

    seen: dict[str, dict[int, list[Rec]]] = {}
    for consumer, consume in CONSUMERS.items():
        seen[consumer] = {}
        for p in range(PARTITIONS):
            got = consume(bootstrap, topic, p)
            check_partition(consumer, p, by_partition[p], got, offsets_known, (t0, t1))
            seen[consumer][p] = got

    # Broker-chosen timestamps (kcat) must at least be the same for every reader.
    reference = seen["confluent"]
    for consumer, parts in seen.items():
        for p, records in parts.items():
            assert [r.timestamp for r in records] == [r.timestamp for r in reference[p]], (
                f"{consumer} and confluent disagree on timestamps in partition {p}")

    for p in range(PARTITIONS):
        assert watermarks(bootstrap, topic, p) == (0, len(by_partition[p]))

    if each_broker.s3 is not None:
        # acks=all means the data is in the object store: it must be in the bucket,
        # not in a local fallback directory.
        keys = each_broker.s3.list_keys()
        assert any(k.endswith(".seg") for k, _ in keys), f"no segment objects in the bucket: {keys}"
        assert not files_under(each_broker.objects_dir, "*.seg"), "segments written locally, not to S3"


def test_clean_restart_keeps_topics_data_and_offsets(each_broker):
    bootstrap = each_broker.bootstrap
    topic = unique_topic("restart")
    config = {"max.message.bytes": "300000", "retention.ms": str(30 * 24 * 3600 * 1000)}
    create_topic(bootstrap, topic, PARTITIONS, config=config)

    first = produce_confluent(bootstrap, topic, sample_records(seed=11, per_partition=10))
    before = {p: consume_confluent(bootstrap, topic, p) for p in range(PARTITIONS)}
    for p in range(PARTITIONS):
        produced = [r for r in first if r.partition == p]
        assert [(r.offset, r.content()) for r in before[p]] == [
            (r.offset, r.content()) for r in produced], f"partition {p} before restart"
    # Acknowledged at acks=1 (WAL) right before SIGTERM: must survive the restart too.
    last = produce_confluent(bootstrap, topic, [Rec(b"last", f"acks1-{p}".encode(), partition=p)
                                                for p in range(PARTITIONS)], acks="1")
    assert sorted((r.partition, r.offset) for r in last) == [(p, 10) for p in range(PARTITIONS)]

    each_broker.restart()  # asserts exit code 0 on SIGTERM

    meta = list_topics(bootstrap)
    assert topic in meta, f"topic lost over restart; topics now: {sorted(meta)}"
    assert len(meta[topic].partitions) == PARTITIONS
    described = describe_topic_config(bootstrap, topic)
    for key, value in config.items():
        assert described.get(key) == value, f"config {key}: {described.get(key)!r} after restart"
    for p in range(PARTITIONS):
        wait_for_high_watermark(bootstrap, topic, p, 11, timeout=30)
        assert watermarks(bootstrap, topic, p) == (0, 11), f"partition {p} offsets after restart"
        after = consume_confluent(bootstrap, topic, p)
        assert after[:10] == before[p], f"partition {p} data changed over restart"
        assert (after[10].offset, after[10].key, after[10].value) == (10, b"last", f"acks1-{p}".encode())

    more = produce_confluent(bootstrap, topic, [Rec(b"k", f"after-{p}-{i}".encode(), (), None, partition=p)
                                                for p in range(PARTITIONS) for i in range(3)])
    for p in range(PARTITIONS):
        offsets = [r.offset for r in more if r.partition == p]
        assert offsets == [11, 12, 13], f"partition {p}: produce after restart got offsets {offsets}"
        assert [r.offset for r in consume_confluent(bootstrap, topic, p)] == list(range(14))
