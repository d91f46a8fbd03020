"""Compaction rewrites a partition's small extents (one per flush) as large objects of its own.

The broker runs with tiny compaction settings (a pass every 200 ms, 4 KiB objects, no minimum
age) and no garbage-collection grace. Each produce waits until its records are readable, so
each lands in its own flush and its own small extent. Then:

* the extents are rewritten into few objects (``strata_compactions_total`` moves, the stored
  extent count drops), the old objects, left with no live extent, are deleted;
* every record is read back, by two different clients, with the same offset, key and value
  as before; a restart changes nothing;
* records produced after compaction continue the log at the next offset.
"""
from __future__ import annotations

from harness import wait_until
from kafka_clients import (
    Rec,
    consume_confluent,
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


def segment_objects(broker) -> set[str]:
    return {p.name for p in broker.objects_dir.rglob("*.seg")}


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


def test_compaction_keeps_every_record_at_its_offset(make_broker):
    broker = make_broker(args=COMPACTION_ARGS)
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
