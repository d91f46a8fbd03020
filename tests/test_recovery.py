"""Recovery from the bucket alone: delete the catalog, run ``strata recover``, restart.

A broker runs with fast compaction (so the bucket holds both the small flush objects and the
compacted objects that replaced them, as after any crash within the garbage-collection grace
period) and frequent catalog snapshots. Its data: two topics with configs, records over many
flushes, a consumer group's committed offsets, and a log start moved by DeleteRecords. Then
the catalog is thrown away and rebuilt with ``strata recover`` from the objects alone (segment
footers and the newest snapshot), into a new SQLite file or a new PostgreSQL database; the
broker restarted on it serves every record at its original offset, with the topics, their
configs, the group's offsets and the log start back, and the log goes on where it was.
Both flavours: SQLite with the local-directory store, and PostgreSQL with moto S3.
"""

from __future__ import annotations

import subprocess

import pytest
from confluent_kafka import Consumer, TopicPartition

from harness import STRATA_BIN, wait_until
from kafka_clients import (
    Rec,
    admin,
    confluent_conf,
    consume_confluent,
    create_topic,
    describe_topic_config,
    produce_confluent,
    unique_topic,
    watermarks,
)

ARGS = (
    "--snapshot-interval-ms", "300",
    "--compaction-interval-ms", "300",
    "--compaction-target-bytes", "1000",
    "--compaction-min-age-ms", "0",
)


def produce_rounds(bootstrap: str, topic: str, partitions: int, rounds: int) -> list[Rec]:
    """``rounds`` flushes' worth of records spread over the partitions, each round readable
    before the next starts (so each lands in its own object)."""
    sent: list[Rec] = []
    for r in range(rounds):
        batch = [Rec(b"k%d" % i, b"round-%d-record-%d-" % (r, i) + b"y" * 300, partition=i % partitions)
                 for i in range(partitions * 4)]
        sent += produce_confluent(bootstrap, topic, batch)
        for p in range(partitions):
            end = 1 + max(x.offset for x in sent if x.partition == p)
            wait_until(lambda: watermarks(bootstrap, topic, p)[1] >= end, 30, "records readable")
    return sent


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer(confluent_conf(bootstrap, **{"group.id": group}))
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=15)
        return {t.partition: t.offset for t in got}
    finally:
        c.close()


def recover(broker, catalog: str) -> str:
    objects = broker.objects or f"file://{broker.objects_dir}"
    proc = subprocess.run(
        [str(STRATA_BIN), "recover", "--objects", objects, "--catalog", catalog],
        capture_output=True, text=True, timeout=120, env=broker.environment())
    assert proc.returncode == 0, f"strata recover failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("flavour", ["sqlite-file", "postgres-s3"])
def test_catalog_rebuilt_from_the_bucket_alone(request, make_broker, flavour):
    if flavour == "sqlite-file":
        broker = make_broker("strata", args=ARGS)
    else:
        postgres, moto = request.getfixturevalue("postgres"), request.getfixturevalue("moto")
        broker = make_broker("strata-pg-s3", start=False, catalog=postgres.fresh_database(),
                             objects=moto.objects_url, env=moto.env, args=ARGS)
        broker.s3 = moto
        broker.start()
    bootstrap = broker.bootstrap
    orders, events = unique_topic("orders"), unique_topic("events")
    create_topic(bootstrap, orders, 3, {"retention.ms": -1, "max.message.bytes": 2097152})
    create_topic(bootstrap, events, 1)
    sent_orders = produce_rounds(bootstrap, orders, 3, rounds=8)
    sent_events = produce_rounds(bootstrap, events, 1, rounds=4)
    wait_until(lambda: broker.metrics().value("strata_compactions_total") >= 1, 30,
               "a compaction to replace small objects (both stay in the bucket)")
    # A consumer group's offsets, and a log start moved by DeleteRecords.
    group = unique_topic("group")
    c = Consumer(confluent_conf(bootstrap, **{"group.id": group}))
    c.commit(offsets=[TopicPartition(orders, p, 5 + p) for p in range(3)], asynchronous=False)
    c.close()
    client = admin(bootstrap)  # kept alive until the result is in
    client.delete_records([TopicPartition(events, 0, 5)])[TopicPartition(events, 0, 5)] \
        .result(timeout=30)
    wait_until(lambda: watermarks(bootstrap, events, 0)[0] == 5, 30, "the log start to move")
    ends = {p: watermarks(bootstrap, orders, p)[1] for p in range(3)}
    assert broker.metrics().value("strata_snapshots_total") >= 1
    broker.stop()  # SIGTERM: everything flushed, and a last snapshot written

    # The catalog is lost.
    if flavour == "sqlite-file":
        for f in broker.data_dir.glob("catalog.db*"):
            f.unlink()
        catalog = f"sqlite://{broker.data_dir / 'catalog.db'}"
    else:
        catalog = request.getfixturevalue("postgres").fresh_database()
    report = recover(broker, catalog)
    print(report)
    assert "snapshots/" in report, report
    broker.catalog = catalog
    broker.start()

    for p in range(3):
        want = [(r.offset, r.key, r.value) for r in sent_orders if r.partition == p]
        got = [(r.offset, r.key, r.value) for r in consume_confluent(bootstrap, orders, p)]
        assert got == want, f"{orders}/{p} not restored at its original offsets"
        assert watermarks(bootstrap, orders, p) == (0, ends[p])
    assert watermarks(bootstrap, events, 0) == (5, len(sent_events))
    got = consume_confluent(bootstrap, events, 0, start=5)
    assert [(r.offset, r.value) for r in got] == [(r.offset, r.value) for r in sent_events[5:]]
    config = describe_topic_config(bootstrap, orders)
    assert (config["retention.ms"], config["max.message.bytes"]) == ("-1", "2097152")
    assert committed(bootstrap, group, orders, 3) == {0: 5, 1: 6, 2: 7}
    # The log goes on where it was.
    more = produce_confluent(bootstrap, orders, [Rec(b"after", b"recovery", partition=0)])
    assert more[0].offset == ends[0]
