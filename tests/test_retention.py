"""Retention by time and by size moves a partition's log start, as Kafka's does.

With ``--retention-interval-ms 200`` the broker applies each topic's ``retention.ms`` and
``retention.bytes`` five times a second. Each produce below waits until its records are
readable, so each lands in its own flush (its own extent, Strata's unit of deletion, like a
Kafka segment):

* by time: records whose timestamps are older than ``retention.ms`` go; the log start moves
  past them, reads below it get OFFSET_OUT_OF_RANGE, the object that held only them is
  deleted (``--gc-grace-ms 0``), the newer records stay readable, and the new start survives
  a restart;
* by size: with ``retention.bytes`` smaller than the data, the oldest extents go but the
  newest stays (Kafka keeps its active segment);
* ``retention.ms=-1`` with no size limit keeps everything.
"""
from __future__ import annotations

import time

from harness import segment_objects, wait_until
from kafka_clients import Rec, create_topic, produce_confluent, unique_topic, watermarks
from test_admin import raw_fetch

RETENTION_ARGS = ("--retention-interval-ms", "200", "--gc-grace-ms", "0")


def produce_and_wait(bootstrap: str, topic: str, values: list[bytes], timestamp: int | None = None) -> int:
    """Produces ``values`` to partition 0 and waits until they are readable; the new end."""
    _, before = watermarks(bootstrap, topic, 0)
    produce_confluent(bootstrap, topic, [Rec(None, v, timestamp=timestamp, partition=0) for v in values])
    end = before + len(values)
    wait_until(lambda: watermarks(bootstrap, topic, 0)[1] == end, 30, f"offset {end} readable")
    return end


def test_retention_by_time(store_broker):
    broker = store_broker(args=RETENTION_ARGS)
    topic = unique_topic("ret-time")
    create_topic(broker.bootstrap, topic, 1, {"retention.ms": 5000})
    old = int(time.time() * 1000) - 60_000
    produce_and_wait(broker.bootstrap, topic, [b"old-%d" % i for i in range(5)], timestamp=old)
    old_objects = segment_objects(broker)
    assert len(old_objects) == 1, old_objects
    produce_and_wait(broker.bootstrap, topic, [b"new-%d" % i for i in range(5)])
    wait_until(lambda: watermarks(broker.bootstrap, topic, 0) == (5, 10), 30,
               "the expired records to leave the log")
    # With no grace, the object that held only expired records is deleted; the other stays.
    wait_until(lambda: not (segment_objects(broker) & old_objects), 30, "the expired object deleted")
    assert len(segment_objects(broker)) == 1
    assert broker.metrics().value("strata_gc_objects_deleted_total") >= 1
    assert broker.metrics().value("strata_retention_moves_total") >= 1
    assert raw_fetch(broker.bootstrap, topic, 0, 2).error_code == 1, "below the start: OFFSET_OUT_OF_RANGE"
    part = raw_fetch(broker.bootstrap, topic, 0, 5)
    assert part.error_code == 0 and part.records, "the records inside retention stay readable"
    broker.restart()
    assert watermarks(broker.bootstrap, topic, 0) == (5, 10), "the log start survives a restart"


def test_retention_by_size_keeps_the_newest_extent(store_broker):
    broker = store_broker(args=RETENTION_ARGS)
    topic = unique_topic("ret-size")
    create_topic(broker.bootstrap, topic, 1, {"retention.bytes": 1, "retention.ms": -1})
    ends = [produce_and_wait(broker.bootstrap, topic, [b"x" * 1000 for _ in range(10)]) for _ in range(3)]
    wait_until(lambda: watermarks(broker.bootstrap, topic, 0) == (ends[1], ends[2]), 30,
               "all but the newest extent to leave the log")


def test_unbounded_retention_keeps_everything(store_broker):
    broker = store_broker(args=RETENTION_ARGS)
    topic = unique_topic("ret-none")
    create_topic(broker.bootstrap, topic, 1, {"retention.ms": -1})
    produce_and_wait(broker.bootstrap, topic, [b"a"] * 5, timestamp=1_000_000_000_000)
    time.sleep(1)  # five retention passes; nothing may move
    assert watermarks(broker.bootstrap, topic, 0) == (0, 5)
