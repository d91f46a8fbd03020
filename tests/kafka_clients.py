"""Thin, bounded wrappers around the real Kafka clients the tests drive.

Three independent client stacks talk to the broker:

* ``kcat`` (Debian package, librdkafka 2.0.2) as a subprocess;
* ``confluent-kafka`` (bundled librdkafka 2.16);
* ``kafka-python`` 3.x (a pure-Python protocol implementation).

Every helper takes a timeout and fails with a message saying what it was
waiting for. Records are normalised into `Rec` so results from different
clients can be compared with ``==``. ``assert_idempotent_batches`` reads a topic
raw (``kafka_wire``) to check that a client's batches really carried a producer
id and gap-free sequences.

Strata has no consumer groups yet, so consumers use ``assign()`` with explicit
offsets. librdkafka refuses to build a Consumer without ``group.id``, so it gets
a unique one with auto-commit off and never joins a group; kafka-python runs
with ``group_id=None``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic

from harness import wait_until

Header = tuple[str, "bytes | None"]


@dataclass(frozen=True)
class Rec:
    """One record as the tests see it. ``timestamp`` None means "broker/client chose"."""

    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = ()
    timestamp: int | None = None
    partition: int = -1
    offset: int = -1

    def content(self) -> tuple:
        """What must survive a round trip (everything except the position)."""
        return (self.key, self.value, self.headers, self.timestamp)

    def at(self, partition: int, offset: int) -> "Rec":
        return replace(self, partition=partition, offset=offset)


def unique_topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _hdrs(headers) -> tuple[Header, ...]:
    return tuple((k, v) for k, v in (headers or ()))


# ----------------------------------------------------------------- confluent-kafka


def confluent_conf(bootstrap: str, **extra) -> dict:
    conf = {
        "bootstrap.servers": bootstrap,
        "broker.address.family": "v4",
        "socket.timeout.ms": 10000,
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 1000,
    }
    conf.update(extra)
    return conf


def admin(bootstrap: str) -> AdminClient:
    return AdminClient(confluent_conf(bootstrap))


def create_topic(bootstrap: str, name: str, partitions: int = 1, config: dict | None = None,
                 timeout: float = 30) -> None:
    """CreateTopics through confluent_kafka.admin, then wait until Metadata shows every partition led."""
    client = admin(bootstrap)  # must outlive the futures: destroying it fails them
    futures = client.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1,
                  config={k: str(v) for k, v in (config or {}).items()})],
        request_timeout=timeout,
    )
    futures[name].result(timeout=timeout)
    wait_for_topic(bootstrap, name, partitions, timeout)


def list_topics(bootstrap: str, timeout: float = 15) -> dict:
    """topic name -> TopicMetadata, from a Metadata request for all topics."""
    return admin(bootstrap).list_topics(timeout=timeout).topics


def wait_for_topic(bootstrap: str, name: str, partitions: int, timeout: float = 30) -> None:
    a = admin(bootstrap)

    def ready():
        topic = a.list_topics(timeout=10).topics.get(name)
        return (
            topic is not None
            and topic.error is None
            and len(topic.partitions) == partitions
            and all(p.error is None and p.leader >= 0 for p in topic.partitions.values())
        )

    wait_until(ready, timeout, f"topic {name} with {partitions} led partitions in Metadata",
               interval=0.2)


def delete_topic(bootstrap: str, name: str, timeout: float = 30) -> None:
    client = admin(bootstrap)
    client.delete_topics([name], request_timeout=timeout)[name].result(timeout=timeout)


def create_partitions(bootstrap: str, name: str, total: int, timeout: float = 30) -> None:
    client = admin(bootstrap)
    client.create_partitions([NewPartitions(name, total)],
                             request_timeout=timeout)[name].result(timeout=timeout)


def describe_topic_config(bootstrap: str, name: str, timeout: float = 30) -> dict[str, str | None]:
    resource = ConfigResource("topic", name)
    client = admin(bootstrap)
    entries = client.describe_configs([resource], request_timeout=timeout)[resource].result(
        timeout=timeout)
    return {key: entry.value for key, entry in entries.items()}


def watermarks(bootstrap: str, topic: str, partition: int, timeout: float = 15) -> tuple[int, int]:
    """(low, high) watermark via ListOffsets."""
    c = Consumer(_consumer_conf(bootstrap))
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout, cached=False)
    finally:
        c.close()


def wait_for_high_watermark(bootstrap: str, topic: str, partition: int, at_least: int,
                            timeout: float = 60) -> int:
    def hw():
        try:
            high = watermarks(bootstrap, topic, partition, timeout=5)[1]
        except KafkaException:
            return None
        return high if high >= at_least else None

    return wait_until(hw, timeout, f"{topic}/{partition} high watermark >= {at_least}", interval=0.2)


def produce_confluent(bootstrap: str, topic: str, records: Sequence[Rec], timeout: float = 120,
                      **conf) -> list[Rec]:
    """Produce ``records`` (each to its own ``partition``), wait for every delivery report.

    Returns the records with the partition/offset from their delivery reports;
    any failed delivery fails the test.
    """
    producer = Producer(confluent_conf(bootstrap, **{
        "acks": "all", "linger.ms": 5, "enable.idempotence": False,
        "message.timeout.ms": int(timeout * 1000), **conf}))
    delivered: list[Rec | None] = [None] * len(records)
    errors: list[str] = []

    def report(index: int):
        def cb(err, msg):
            if err is not None:
                errors.append(f"record {index}: {err}")
            else:
                delivered[index] = records[index].at(msg.partition(), msg.offset())
        return cb

    deadline = time.monotonic() + timeout
    for i, rec in enumerate(records):
        while True:
            try:
                producer.produce(topic, value=rec.value, key=rec.key, partition=rec.partition,
                                 timestamp=rec.timestamp or 0,
                                 headers=list(rec.headers) if rec.headers else None,
                                 on_delivery=report(i))
                break
            except BufferError:
                assert time.monotonic() < deadline, "producer queue stayed full"
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(max(1.0, deadline - time.monotonic()))
    assert left == 0, f"{left} records still undelivered after {timeout}s"
    assert not errors, f"delivery failures: {errors[:10]}"
    return delivered  # type: ignore[return-value]


def _consumer_conf(bootstrap: str, **extra) -> dict:
    return confluent_conf(bootstrap, **{
        "group.id": f"strata-test-{uuid.uuid4().hex}",  # required by librdkafka; never joined
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "error",
        "check.crcs": True,
        "fetch.wait.max.ms": 100,
        **extra,
    })


def consume_confluent(bootstrap: str, topic: str, partition: int, start: int = 0,
                      end: int | None = None, timeout: float = 60, **conf) -> list[Rec]:
    """Read ``[start, end)`` of one partition (``end`` defaults to the high watermark)."""
    consumer = Consumer(_consumer_conf(bootstrap, **conf))
    try:
        if end is None:
            end = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=15,
                                                 cached=False)[1]
        if end <= start:
            return []
        consumer.assign([TopicPartition(topic, partition, start)])
        out: list[Rec] = []
        deadline = time.monotonic() + timeout
        while not out or out[-1].offset < end - 1:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"confluent consumer read {len(out)} records of {topic}/{partition} "
                    f"[{start}, {end}) in {timeout}s (last offset "
                    f"{out[-1].offset if out else None})")
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(f"consumer error on {topic}/{partition}: {msg.error()}")
            out.append(Rec(msg.key(), msg.value(), _hdrs(msg.headers()), msg.timestamp()[1],
                           msg.partition(), msg.offset()))
        return [r for r in out if r.offset < end]
    finally:
        consumer.close()


# -------------------------------------------------------------------- kafka-python


def _kp_common(bootstrap: str) -> dict:
    return dict(bootstrap_servers=bootstrap, bootstrap_timeout_ms=15000, request_timeout_ms=15000,
                reconnect_backoff_max_ms=1000)


def produce_kafka_python(bootstrap: str, topic: str, records: Sequence[Rec], timeout: float = 120,
                         **conf) -> list[Rec]:
    from kafka import KafkaProducer

    producer = KafkaProducer(**_kp_common(bootstrap), acks="all", enable_idempotence=False,
                             linger_ms=5, max_block_ms=15000, **conf)
    try:
        futures = [
            producer.send(topic, value=r.value, key=r.key, partition=r.partition,
                          timestamp_ms=r.timestamp, headers=[(k, v) for k, v in r.headers])
            for r in records
        ]
        producer.flush(timeout=timeout)
        out = []
        for rec, fut in zip(records, futures):
            md = fut.get(timeout=timeout)
            out.append(rec.at(md.partition, md.offset))
        return out
    finally:
        producer.close(timeout=10)


def consume_kafka_python(bootstrap: str, topic: str, partition: int, start: int = 0,
                         timeout: float = 60, **conf) -> list[Rec]:
    """Read ``[start, high watermark)`` of one partition; ``conf`` overrides KafkaConsumer settings."""
    from kafka import KafkaConsumer, TopicPartition as KTP

    consumer = KafkaConsumer(**{**_kp_common(bootstrap), "group_id": None, "enable_auto_commit": False,
                                "auto_offset_reset": "none", "fetch_max_wait_ms": 100,
                                "check_crcs": True, **conf})
    try:
        tp = KTP(topic, partition)
        consumer.assign([tp])
        end = consumer.end_offsets([tp], timeout_ms=15000)[tp]
        if end <= start:
            return []
        consumer.seek(tp, start)
        out: list[Rec] = []
        deadline = time.monotonic() + timeout
        while not out or out[-1].offset < end - 1:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"kafka-python read {len(out)} records of {topic}/{partition} [{start}, {end}) "
                    f"in {timeout}s")
            for records in consumer.poll(timeout_ms=200).values():
                for m in records:
                    out.append(Rec(m.key, m.value, _hdrs(m.headers), m.timestamp, m.partition,
                                   m.offset))
        return [r for r in out if r.offset < end]
    finally:
        consumer.close()


# ---------------------------------------------------------------------------- kcat

KCAT = shutil.which("kcat") or shutil.which("kafkacat")


def _kcat() -> str:
    assert KCAT, "kcat is not installed (scripts/test.sh installs it with apt-get)"
    return KCAT


def kcat_produce(bootstrap: str, topic: str, partition: int, lines: Iterable[tuple[str | None, str]],
                 headers: Sequence[tuple[str, str]] = (), compression: str | None = None,
                 timeout: float = 60) -> None:
    """``kcat -P`` one message per line, ``key<TAB>value`` (no tab: null key), same headers for all."""
    cmd = [_kcat(), "-b", bootstrap, "-P", "-t", topic, "-p", str(partition), "-K", "\t",
           "-m", "20", "-X", "acks=all", "-X", "broker.address.family=v4"]
    for k, v in headers:
        cmd += ["-H", f"{k}={v}"]
    if compression:
        cmd += ["-z", compression]
    data = "".join((f"{k}\t" if k is not None else "") + v + "\n" for k, v in lines)
    proc = subprocess.run(cmd, input=data.encode(), capture_output=True, timeout=timeout)
    assert proc.returncode == 0 and b"ERROR" not in proc.stderr.upper(), (
        f"kcat produce failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")


def _utf8(s: str | None) -> bytes | None:
    return None if s is None else s.encode()


def kcat_consume(bootstrap: str, topic: str, partition: int, timeout: float = 60) -> list[Rec]:
    """``kcat -C -o beginning -e -J``: everything up to the end of the partition."""
    cmd = [_kcat(), "-C", "-b", bootstrap, "-t", topic, "-p", str(partition), "-o", "beginning",
           "-e", "-J", "-q", "-m", "20", "-X", "check.crcs=true", "-X", "broker.address.family=v4"]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"kcat consume failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    out = []
    for line in proc.stdout.decode().splitlines():
        if not line.strip():
            continue
        j = json.loads(line)
        raw = j.get("headers") or []
        headers = tuple((raw[i], _utf8(raw[i + 1])) for i in range(0, len(raw), 2))
        ts = j.get("ts") if j.get("tstype") not in (None, "notavailable") else None
        out.append(Rec(_utf8(j.get("key")), _utf8(j.get("payload")), headers, ts, j["partition"],
                       j["offset"]))
    return out


# ------------------------------------------------------------------------ raw wire


def assert_idempotent_batches(bootstrap: str, topic: str, partitions: int,
                              timeout: float = 60) -> None:
    """Fetch every stored batch of ``topic`` raw and check one idempotent producer wrote them:
    each batch carries the same producer id (>= 0) and, per partition, the base sequences run
    on from 0 without a gap. Proves a client really produced idempotently."""
    import kafka_wire as kw

    pids: set[int] = set()
    with kw.KafkaConnection(bootstrap, timeout=30) as conn:
        fetch_version = kw.pick_version(conn.api_versions(), kw.API_FETCH, 4, 11)
        for p in range(partitions):
            offset, high, seq = 0, None, 0
            deadline = time.monotonic() + timeout
            while high is None or offset < high:
                assert time.monotonic() < deadline, f"raw fetch of {topic}/{p} stuck at {offset}"
                error, parts = conn.fetch(fetch_version, topic, p, offset)
                assert error == kw.NONE, f"raw fetch of {topic}/{p}: error {error}"
                [part] = parts
                assert part.error_code == kw.NONE, (
                    f"raw fetch of {topic}/{p}@{offset}: error {part.error_code}")
                high = part.high_watermark
                for b in kw.decode_batches(part.records or b""):
                    if b.last_offset < offset:
                        continue
                    assert b.crc_ok, f"{topic}/{p}: bad CRC in the batch at {b.base_offset}"
                    pids.add(b.producer_id)
                    assert b.producer_id >= 0 and b.base_sequence == seq, (
                        f"{topic}/{p}: batch at {b.base_offset} has producer {b.producer_id} "
                        f"epoch {b.producer_epoch} sequence {b.base_sequence}, expected a "
                        f"producer id and sequence {seq}")
                    seq += b.record_count
                    offset = b.last_offset + 1
    assert len(pids) == 1, f"{topic}: batches from several producer ids: {pids}"
