"""Compaction rewrites a partition's small extents (one per flush) as large objects of its own.

The broker runs with tiny compaction settings (a pass every 200 ms, 4 KiB objects, no minimum
age) and no garbage-collection grace. Each produce waits until its records are readable, so
each lands in its own flush and its own small extent. Then:

* the extents are rewritten into few objects (``strata_compactions_total`` moves, the stored
  extent count drops), the old objects, left with no live extent, are deleted;
* every record is read back, by two different clients, with the same offset, key and value
  as before; a restart changes nothing;
* records produced after compaction continue the log at the next offset.

A topic with ``cleanup.policy=compact`` is also cleaned: each key keeps only its newest record,
at the offset it was produced at, and a key's tombstone goes once ``delete.retention.ms`` old.
"""
from __future__ import annotations

import time

from harness import segment_objects, wait_until
from kafka_clients import (
    Rec,
    consume_confluent,
    consume_kafka_python,
    create_topic,
    kcat_consume,
    produce_confluent,
    unique_topic,
    watermarks,
)

COMPACTION_ARGS = (
    "--compaction-interval-ms", "200",
    "--compaction-target-bytes", "4096",
    "--compaction-min-age-ms", "0",
    "--retention-interval-ms", "200",
    "--gc-grace-ms", "0",
)


def produce_in_flushes(bootstrap: str, topic: str, flushes: int, per_flush: int,
                       start: int = 0) -> list[Rec]:
    """Produces ``flushes`` rounds of ``per_flush`` records to partition 0 (whose end is
    ``start``), each round readable before the next starts; returns what was sent, with
    offsets."""
    sent: list[Rec] = []
    for f in range(flushes):
        records = [Rec(b"k%d" % (start + f * per_flush + i), b"value-%d-" % (start + f * per_flush + i) + b"x" * 200,
                       partition=0) for i in range(per_flush)]
        produce_confluent(bootstrap, topic, records)
        base = start + len(sent)
        end = base + per_flush
        wait_until(lambda: watermarks(bootstrap, topic, 0)[1] == end, 30, f"offset {end} readable")
        sent.extend([Rec(r.key, r.value, partition=0, offset=base + i) for i, r in enumerate(records)])
    return sent


def same_records(got: list[Rec], sent: list[Rec]) -> None:
    assert [(r.offset, r.key, r.value) for r in got] == [(r.offset, r.key, r.value) for r in sent]


def test_compaction_keeps_every_record_at_its_offset(store_broker):
    broker = store_broker(args=COMPACTION_ARGS)
    topic = unique_topic("compact")
    create_topic(broker.bootstrap, topic, 1, {"retention.ms": -1})
    sent = produce_in_flushes(broker.bootstrap, topic, flushes=30, per_flush=5)
    wait_until(lambda: broker.metrics().value("strata_compactions_total") >= 1, 30,
               "a compaction to run")
    # 30 flushes of ~1.1 KiB each become objects of about 4 KiB: far fewer of them, once the
    # old ones (no live extent left, no grace) are collected.
    wait_until(lambda: len(segment_objects(broker)) <= 12, 30,
               "the small objects to be replaced and collected",
               on_timeout=lambda: f"{len(segment_objects(broker))} objects")
    same_records(consume_confluent(broker.bootstrap, topic, 0), sent)
    same_records(kcat_consume(broker.bootstrap, topic, 0), sent)
    more = produce_in_flushes(broker.bootstrap, topic, flushes=1, per_flush=3, start=len(sent))
    assert watermarks(broker.bootstrap, topic, 0) == (0, len(sent) + 3)
    assert [r.key for r in consume_confluent(broker.bootstrap, topic, 0, start=len(sent))] == \
        [r.key for r in more]
    broker.restart()
    same_records(consume_confluent(broker.bootstrap, topic, 0, end=len(sent)), sent)


def test_compacted_topic_keeps_the_newest_record_per_key(store_broker):
    """cleanup.policy=compact: after ten rounds of updates to twenty keys and two tombstones,
    the cleaner leaves each live key's newest record at the offset it was produced at; the
    key whose tombstone is older than delete.retention.ms is gone, the newer tombstone stays.
    confluent-kafka, kafka-python and kcat read the cleaned log alike, before and after a
    restart, and the log goes on at the next offset."""
    broker = store_broker(args=COMPACTION_ARGS)
    bootstrap = broker.bootstrap
    topic = unique_topic("keyed")
    create_topic(bootstrap, topic, 1, {"cleanup.policy": "compact", "delete.retention.ms": 60000})
    latest: dict[bytes, Rec] = {}
    end = 0

    def produce_round(records: list[Rec]) -> None:
        nonlocal end
        for rec in produce_confluent(bootstrap, topic, records):
            latest[rec.key] = rec
        end += len(records)
        wait_until(lambda: watermarks(bootstrap, topic, 0)[1] == end, 30, f"offset {end} readable")

    for r in range(10):
        produce_round([Rec(b"key-%d" % k, b"round-%d-" % r + b"x" * 200, partition=0)
                       for k in range(20)])
    now_ms = int(time.time() * 1000)
    produce_round([Rec(b"key-0", None, timestamp=now_ms - 3_600_000, partition=0)])  # expired
    produce_round([Rec(b"key-1", None, partition=0)])  # recent: kept
    produce_round([Rec(b"sentinel", b"end", partition=0)])  # the newest extent: never cleaned

    expected = sorted(((r.offset, r.key, r.value) for k, r in latest.items() if k != b"key-0"))
    assert len(expected) == 20  # 18 live keys, key-1's tombstone, the sentinel

    def seen(records: list[Rec]) -> list[tuple]:
        return [(r.offset, r.key, r.value) for r in records]

    wait_until(lambda: seen(consume_confluent(bootstrap, topic, 0)) == expected, 60,
               "the cleaner to leave only the newest record per key",
               on_timeout=lambda: f"{len(consume_confluent(bootstrap, topic, 0))} records readable")
    assert broker.metrics().value("strata_cleaned_records_total") >= 10 * 20 + 1 - 20
    assert seen(kcat_consume(bootstrap, topic, 0)) == expected
    assert seen(consume_kafka_python(bootstrap, topic, 0)) == expected
    assert watermarks(bootstrap, topic, 0)[1] == end, "offsets are kept: the log end does not move"

    broker.restart()
    assert seen(consume_confluent(bootstrap, topic, 0)) == expected
    more = produce_confluent(bootstrap, topic, [Rec(b"key-5", b"after", partition=0)])
    assert more[0].offset == end
