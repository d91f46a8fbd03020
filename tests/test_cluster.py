"""Several brokers sharing one PostgreSQL catalog and one S3 bucket: a Strata cluster.

Every broker of a test gets the same ``--catalog`` (one fresh PostgreSQL database) and the
same ``--objects`` (one fresh moto bucket), its own data dir (WAL, ``broker-id``, so its own
node id) and its own Kafka/QUIC/HTTP ports, and ``--lease-ms 3000``: a broker whose last
heartbeat is older than 3 s is dead and its partitions are taken over.

What the cluster promises, and what the tests here hold it to:

* each partition has one owner, by rendezvous hashing over the live brokers; a Metadata
  response from *any* broker lists every live broker (node id, host, port, rack = zone) and
  names the owner as the leader (replicas = ISR = every live broker, leader first);
* a Produce sent to a non-owner gets NOT_LEADER_OR_FOLLOWER; any broker serves a Fetch;
* FindCoordinator names one broker whoever is asked; group requests sent to another broker
  get NOT_COORDINATOR;
* ownership moves, bytes do not: a joining broker gets its share within seconds, the old owner
  flushes then releases, and nothing already stored is written again;
* SIGTERM hands a broker's partitions over before it exits 0; kill -9 hands them over once the
  lease expires; a broker frozen (SIGSTOP) past its lease is fenced when it wakes: its late
  commits are refused, it drops what it no longer owns, and it rejoins;
* KIP-392: a consumer with ``client.rack`` = Z is told to fetch from a broker in zone Z.

The scenario tests run a **workload** the whole time (`Workload`): an idempotent confluent-kafka
producer (acks=all, unbounded retries, a long message timeout) bootstrapped with every broker,
producing unique, counter-numbered values at a steady rate round-robin over the partitions;
and a consumer in a group (`GroupReader`) that polls and commits throughout. Afterwards
`verify_exactly_once` reads every partition from offset 0 with a fresh consumer: offsets are
contiguous, every value the producer sent is stored exactly once, each acknowledged one at its
acknowledged partition and offset, per partition in produce order; and the group consumer
must read to the end of every partition and commit there.

Partition counts: rendezvous hashing over random node ids gives each broker a random share,
so "every broker owns something" is a probability. With 12 partitions and 3 brokers one of
them owns nothing ~2.3% of the time, and a 4th broker gets nothing ~3.2% of the time; the
tests use ``PARTITIONS = 40`` (≈1e-5 for a joining 4th broker, ≈1e-7 for the others).

Ownership is read with hand-rolled Metadata requests (``metadata_view``), one connection to
one broker: a librdkafka ``list_topics()`` may go to any broker the client has learned of,
so it cannot show what *a given* broker answers.

Only the generous bounds of the spec are timing assertions: join ≤ 15 s, kill -9 takeover
≤ lease + 10 s, rejoin after SIGCONT ≤ 20 s. Measured times are printed.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import re
import signal
import struct
import threading
import time
import urllib.parse
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

import kafka_wire as kw
from harness import Broker, S3Bucket, http_request, wait_until
from kafka_clients import Rec, confluent_conf, create_topic, produce_confluent, unique_topic

LEASE_MS = 3000
LEASE_S = LEASE_MS / 1000
PARTITIONS = 40               # see the module docstring: 12 would make ownership checks flaky
RATE = 200                    # workload records per second
VALUE_SIZE = 100              # bytes per workload value
CONVERGE_TIMEOUT = 30.0       # a fresh cluster agreeing on owners
JOIN_BOUND_S = 15.0           # spec: a new broker owns its share within ~5 s
TAKEOVER_BOUND_S = LEASE_S + 10.0   # spec: lease + 1-2 s; slack for 2-core CI
REJOIN_BOUND_S = 20.0         # spec: a thawed broker owns partitions again within ~15 s
PROGRESS_TIMEOUT = 60.0       # the workload acknowledging N more records

# Kafka error codes and API keys the raw requests use.
NONE = 0
NOT_LEADER_OR_FOLLOWER = 6
NOT_COORDINATOR = 16
API_FIND_COORDINATOR = 10
API_HEARTBEAT = 12

NET_ERRORS = (OSError, kw.ConnectionClosed, struct.error)


# =====================================================================================
# Cluster: N brokers sharing one catalog database and one bucket
# =====================================================================================


class Cluster:
    """Brokers made by the ``make_broker`` fixture, all on one catalog and one bucket.

    ``add()`` makes (and by default starts) one more broker ``node<N>`` with
    ``--lease-ms 3000`` and an optional ``--zone``. Brokers are stopped with SIGTERM by the
    ``make_broker`` teardown (each must exit 0). Before that, the ``cluster`` fixture stops
    what the test registered with ``on_close`` (workload threads) and SIGCONTs any broker
    still frozen by ``freeze()``.
    """

    def __init__(self, make_broker, catalog: str, bucket: S3Bucket):
        self._make = make_broker
        self.catalog = catalog
        self.bucket = bucket
        self.brokers: list[Broker] = []
        self.zones: dict[str, str | None] = {}
        self.frozen: set[str] = set()
        self.node_ids: dict[int, int] = {}       # kafka port -> node id, learned from Metadata
        self._closers: list[Callable[[], None]] = []

    # -- membership ------------------------------------------------------------------

    def add(self, zone: str | None = None, start: bool = True) -> Broker:
        name = f"node{len(self.brokers) + 1}"
        args = ["--lease-ms", str(LEASE_MS)]
        if zone is not None:
            args += ["--zone", zone]
        broker = self._make(name, start=False, catalog=self.catalog,
                            objects=self.bucket.objects_url, env=self.bucket.env, args=args)
        broker.s3 = self.bucket
        self.brokers.append(broker)
        self.zones[name] = zone
        if start:
            broker.start()
        return broker

    def start(self, n: int, zones: Sequence[str | None] | None = None) -> "Cluster":
        for i in range(n):
            self.add(zone=zones[i] if zones else None)
        return self

    @property
    def live(self) -> list[Broker]:
        """Running brokers that are not frozen."""
        return [b for b in self.brokers if b.is_running() and b.name not in self.frozen]

    @property
    def bootstrap(self) -> str:
        """Every broker ever added (clients skip the ones that are down)."""
        return ",".join(b.bootstrap for b in self.brokers)

    @property
    def live_bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.live)

    def by_port(self, port: int) -> Broker:
        for b in self.brokers:
            if b.kafka_port == port:
                return b
        raise AssertionError(f"Metadata names a broker on port {port}, which is none of ours: "
                             f"{[(b.name, b.kafka_port) for b in self.brokers]}")

    def node_id(self, broker: Broker) -> int:
        assert broker.kafka_port in self.node_ids, f"{broker.name}'s node id was never seen"
        return self.node_ids[broker.kafka_port]

    # -- faults ------------------------------------------------------------------------

    def freeze(self, broker: Broker) -> None:
        os.kill(broker.pid, signal.SIGSTOP)
        self.frozen.add(broker.name)

    def thaw(self, broker: Broker) -> None:
        os.kill(broker.pid, signal.SIGCONT)
        self.frozen.discard(broker.name)

    # -- teardown ----------------------------------------------------------------------

    def on_close(self, fn: Callable[[], None]) -> None:
        self._closers.append(fn)

    def close(self) -> list[str]:
        problems = []
        for b in self.brokers:  # a frozen broker cannot answer SIGTERM
            if b.name in self.frozen and b.is_running():
                try:
                    self.thaw(b)
                except ProcessLookupError:
                    pass
        for fn in reversed(self._closers):
            try:
                fn()
            except BaseException as exc:  # the test has failed already; keep tearing down
                problems.append(repr(exc))
        return problems


@pytest.fixture
def cluster(make_broker, postgres, moto):
    """An empty `Cluster` on a fresh PostgreSQL database and a fresh bucket."""
    c = Cluster(make_broker, postgres.fresh_database(), moto)
    yield c
    c.close()


# =====================================================================================
# Ownership: raw Metadata from one given broker
# =====================================================================================


@dataclass
class PartitionMeta:
    error: int
    leader: int
    replicas: list[int]
    isr: list[int]


@dataclass
class View:
    """One broker's Metadata answer for one topic."""

    asked: str                                         # broker name
    brokers: dict[int, tuple[str, int, str | None]]    # node id -> (host, port, rack)
    topic_error: int | None                            # None: topic not in the answer
    partitions: dict[int, PartitionMeta] = field(default_factory=dict)

    def leader_ports(self) -> dict[int, int | None]:
        return {p: (self.brokers[m.leader][1] if m.leader in self.brokers else None)
                for p, m in self.partitions.items()}

    def summary(self) -> str:
        ports = {i: port for i, (_, port, _) in self.brokers.items()}
        count = Counter(ports.get(m.leader, f"?{m.leader}") for m in self.partitions.values())
        return (f"{self.asked}: brokers {sorted(ports.items())} topic_error {self.topic_error} "
                f"leaders by port {dict(count)}")


def metadata_view(broker: Broker, topic: str, timeout: float = 5.0) -> View:
    """Metadata v7 for ``topic`` sent to ``broker`` itself (no auto-creation)."""
    with kw.KafkaConnection(broker.bootstrap, timeout=timeout) as conn:
        corr = conn.send_request(kw.API_METADATA, 7, kw.metadata_body(7, [topic], False))
        r = kw.Reader(conn.recv_response(corr))
    r.i32()  # throttle_time_ms
    brokers = {}
    for _ in range(r.i32()):
        node, host, port, rack = r.i32(), r.string(), r.i32(), r.string()
        brokers[node] = (host, port, rack)
    r.string()  # cluster_id
    r.i32()     # controller_id
    view = View(broker.name, brokers, None)
    for _ in range(r.i32()):
        error, name, _internal = r.i16(), r.string(), r.i8()
        parts = {}
        for _ in range(r.i32()):
            perr, index, leader, _epoch = r.i16(), r.i32(), r.i32(), r.i32()
            replicas = r.array(r.i32)
            isr = r.array(r.i32)
            r.array(r.i32)  # offline_replicas
            parts[index] = PartitionMeta(perr, leader, replicas, isr)
        if name == topic:
            view.topic_error, view.partitions = error, parts
    return view


@dataclass
class Ownership:
    """What every asked broker agreed on."""

    owners: dict[int, Broker]      # partition -> owning broker
    views: list[View]

    def owned_by(self, broker: Broker) -> list[int]:
        return sorted(p for p, b in self.owners.items() if b is broker)

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(b.name for b in self.owners.values()).items()))


def agreed_ownership(cluster: Cluster, topic: str, members: Sequence[Broker],
                     partitions: int = PARTITIONS, last: list | None = None) -> Ownership | None:
    """The ownership every broker in ``members`` reports, if they all report the same one,
    list exactly ``members`` as the live brokers, and name a leader for every partition.
    ``last`` (a list) receives the views, for a timeout message."""
    try:
        views = [metadata_view(b, topic) for b in members]
    except NET_ERRORS as exc:
        if last is not None:
            last[:] = [f"metadata request failed: {exc!r}"]
        return None
    if last is not None:
        last[:] = views
    want_ports = {b.kafka_port for b in members}
    agreed = None
    for v in views:
        for node, (_, port, _) in v.brokers.items():
            cluster.node_ids[port] = node
        if {port for _, port, _ in v.brokers.values()} != want_ports:
            return None
        if v.topic_error != NONE or len(v.partitions) != partitions:
            return None
        if any(m.error != NONE for m in v.partitions.values()):
            return None
        leaders = v.leader_ports()
        if any(port is None for port in leaders.values()):
            return None
        if agreed is None:
            agreed = leaders
        elif leaders != agreed:
            return None
    return Ownership({p: cluster.by_port(port) for p, port in agreed.items()}, views)


def wait_ownership(cluster: Cluster, topic: str, members: Sequence[Broker], timeout: float,
                   what: str, condition: Callable[[Ownership], bool] = lambda o: True,
                   partitions: int = PARTITIONS) -> Ownership:
    """Wait until ``members`` agree (see `agreed_ownership`) and ``condition`` holds."""
    last: list = []

    def check():
        o = agreed_ownership(cluster, topic, members, partitions, last)
        return o if o is not None and condition(o) else None

    def context():
        return "last Metadata answers:\n" + "\n".join(
            v.summary() if isinstance(v, View) else str(v) for v in last)

    return wait_until(check, timeout, what, interval=0.2, on_timeout=context)


# =====================================================================================
# Workload: an idempotent producer and a group consumer running throughout
# =====================================================================================


def workload_value(n: int) -> bytes:
    return f"k-{n:08d}-".encode().ljust(VALUE_SIZE, b".")


def value_counter(value: bytes) -> int:
    return int(value[2:10])


class Workload:
    """Produces ``workload_value(n)`` to partition ``n % partitions`` at ``rate`` per second
    from its own thread with an idempotent producer (acks=all, unbounded retries, 2-minute
    message timeout) bootstrapped with every broker. Records the delivery reports: ``acked``
    (value -> (partition, offset)), ``failures`` (delivery reports with an error: with
    idempotence and unbounded retries there should be none) and ``fatal`` client errors."""

    def __init__(self, bootstrap: str, topic: str, partitions: int = PARTITIONS,
                 rate: float = RATE):
        self.topic = topic
        self.partitions = partitions
        self.rate = rate
        self.producer = Producer(confluent_conf(bootstrap, **{
            "acks": "all",
            "enable.idempotence": True,
            "max.in.flight.requests.per.connection": 5,
            "linger.ms": 5,
            "message.timeout.ms": 120000,
            "request.timeout.ms": 5000,          # a frozen broker: retry elsewhere soon
            "retry.backoff.ms": 100,
            "retry.backoff.max.ms": 1000,
            "topic.metadata.refresh.interval.ms": 1000,
            "error_cb": self._on_error,
        }))
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.sent: dict[bytes, int] = {}                    # value -> partition
        self.acked: dict[bytes, tuple[int, int]] = {}       # value -> (partition, offset)
        self.offsets_acked: dict[tuple[int, int], bytes] = {}
        self.double_acks: list[tuple] = []
        self.failures: Counter[str] = Counter()
        self.fatal: list[str] = []
        self.client_errors: Counter[str] = Counter()
        self.unflushed = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="cluster-workload", daemon=True)

    def _on_error(self, err: KafkaError) -> None:
        with self.lock:
            if err.fatal():
                self.fatal.append(str(err))
            self.client_errors[err.name()] += 1

    def _on_delivery(self, err, msg) -> None:
        with self.lock:
            if err is not None:
                self.failures[err.name()] += 1
                return
            value = msg.value()
            key = (msg.partition(), msg.offset())
            if value in self.acked:
                self.double_acks.append(("value", value, self.acked[value], key))
            if msg.offset() >= 0:
                if key in self.offsets_acked:
                    self.double_acks.append(("offset", key, self.offsets_acked[key], value))
                self.offsets_acked[key] = value
            self.acked[value] = key

    def _run(self) -> None:
        try:
            n = 0
            next_at = time.monotonic()
            while not self.stop_event.is_set():
                now = time.monotonic()
                if now < next_at:
                    self.producer.poll(min(next_at - now, 0.05))
                    continue
                if len(self.producer) >= 5000:  # bound the backlog while partitions move
                    self.producer.poll(0.05)
                    next_at = time.monotonic()
                    continue
                value = workload_value(n)
                partition = n % self.partitions
                try:
                    self.producer.produce(self.topic, value=value, partition=partition,
                                          on_delivery=self._on_delivery)
                except BufferError:
                    self.producer.poll(0.05)
                    continue
                with self.lock:
                    self.sent[value] = partition
                n += 1
                next_at = max(next_at + 1.0 / self.rate, now - 0.5)  # no catch-up bursts
                self.producer.poll(0)
            self.unflushed = self.producer.flush(90)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    # -- control -------------------------------------------------------------------------

    def start(self) -> "Workload":
        self.thread.start()
        return self

    @property
    def ack_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def check(self) -> None:
        assert self.error is None, f"workload thread failed: {self.error!r}"
        assert not self.fatal, f"fatal producer error: {self.fatal}"

    def wait_acks(self, more: int, what: str, timeout: float = PROGRESS_TIMEOUT) -> int:
        """Wait for ``more`` acknowledgements beyond the current count; returns the new count."""
        target = self.ack_count + more

        def done():
            self.check()
            return self.ack_count >= target

        wait_until(done, timeout, f"{what}: {more} more acknowledged records (target {target})",
                   interval=0.1, on_timeout=self.describe)
        return self.ack_count

    @property
    def queued(self) -> int:
        producer = self.producer
        return len(producer) if producer is not None else self.unflushed

    def describe(self) -> str:
        with self.lock:
            return (f"workload: {len(self.sent)} sent, {len(self.acked)} acknowledged, "
                    f"{self.queued} queued, failures {dict(self.failures)}, "
                    f"client errors {dict(self.client_errors)}, fatal {self.fatal}")

    def stop(self) -> None:
        if self.thread.ident is None or (self.stop_event.is_set() and not self.thread.is_alive()):
            return  # never started, or stopped already
        self.stop_event.set()
        self.thread.join(120)
        assert not self.thread.is_alive(), "workload thread did not finish within 120s"
        # Destroy the producer now: it and its callbacks (bound methods of this object) form
        # a reference cycle, so it would otherwise live on until a full garbage collection,
        # reconnecting to the stopped brokers of this test ("Connection refused" noise in
        # later tests' output).
        self.producer = None
        if self.error is not None:
            raise self.error


class GroupReader:
    """A confluent-kafka consumer in a group, subscribed to the topic, polling and committing
    (asynchronously, about once a second) from its own thread for the whole scenario. It must
    not crash (no fatal error, no exception); ``positions`` is the next offset it has read to,
    per partition. ``stop()`` commits those positions synchronously (retrying while the group
    moves or rebalances) and closes the consumer."""

    def __init__(self, bootstrap: str, topic: str, group: str | None = None):
        self.topic = topic
        self.group = group or f"cluster-{uuid.uuid4().hex[:10]}"
        self.consumer = Consumer(confluent_conf(bootstrap, **{
            "group.id": self.group,
            "client.id": "cluster-group-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 500,
            "fetch.wait.max.ms": 100,
            "topic.metadata.refresh.interval.ms": 1000,
            "error_cb": self._on_error,
            "on_commit": self._on_commit,
        }))
        self.lock = threading.Lock()
        self.positions: dict[int, int] = {}
        self.records = 0
        self.errors: Counter[str] = Counter()
        self.fatal: list[str] = []
        self.commit_errors: Counter[str] = Counter()
        self.final_commit: dict[int, int] | None = None
        self.error: BaseException | None = None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="cluster-group-reader", daemon=True)

    def _on_error(self, err: KafkaError) -> None:
        with self.lock:
            if err.fatal():
                self.fatal.append(str(err))
            self.errors[err.name()] += 1

    def _on_commit(self, err, partitions) -> None:
        if err is not None:
            with self.lock:
                self.commit_errors[err.name() if hasattr(err, "name") else str(err)] += 1

    def _consume(self, timeout: float) -> None:
        for msg in self.consumer.consume(num_messages=500, timeout=timeout):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                with self.lock:
                    if err.fatal():
                        self.fatal.append(str(err))
                    self.errors[err.name()] += 1
                continue
            with self.lock:
                p = msg.partition()
                self.positions[p] = max(self.positions.get(p, 0), msg.offset() + 1)
                self.records += 1

    def _offsets(self) -> list[TopicPartition]:
        with self.lock:
            return [TopicPartition(self.topic, p, o) for p, o in sorted(self.positions.items())]

    def _run(self) -> None:
        try:
            self.consumer.subscribe([self.topic])
            last_commit = time.monotonic()
            while not self.stop_event.is_set():
                self._consume(0.2)
                if time.monotonic() - last_commit >= 1.0 and self.positions:
                    last_commit = time.monotonic()
                    try:
                        self.consumer.commit(offsets=self._offsets(), asynchronous=True)
                    except KafkaException as exc:
                        with self.lock:
                            if exc.args[0].fatal():
                                self.fatal.append(str(exc))
                            self.commit_errors[exc.args[0].name()] += 1
            # Final synchronous commit of what was read; the group may be moving.
            deadline = time.monotonic() + 45
            while True:
                offsets = self._offsets()
                if not offsets:
                    self.final_commit = {}
                    break
                try:
                    result = self.consumer.commit(offsets=offsets, asynchronous=False)
                    bad = [tp for tp in result if tp.error is not None]
                    if not bad:
                        self.final_commit = {tp.partition: tp.offset for tp in offsets}
                        break
                    problem = f"partition errors {bad[:3]}"
                except KafkaException as exc:
                    if exc.args[0].fatal():
                        raise
                    problem = str(exc)
                if time.monotonic() > deadline:
                    raise AssertionError(f"group reader could not commit its final offsets "
                                         f"within 45s: {problem}")
                self._consume(0.2)  # serves the rebalance/coordinator change meanwhile
        except BaseException as exc:  # surfaced by stop()/check()
            self.error = exc
        finally:
            try:
                self.consumer.close()
            except Exception as exc:
                if self.error is None:
                    self.error = exc

    # -- control -------------------------------------------------------------------------

    def start(self) -> "GroupReader":
        self.thread.start()
        return self

    def check(self) -> None:
        assert self.error is None, f"group reader failed: {self.error!r}"
        assert not self.fatal, f"fatal group consumer error: {self.fatal}"

    def position(self, p: int) -> int:
        with self.lock:
            return self.positions.get(p, 0)

    def describe(self) -> str:
        with self.lock:
            return (f"group reader: {self.records} records, positions {dict(sorted(self.positions.items()))}, "
                    f"errors {dict(self.errors)}, commit errors {dict(self.commit_errors)}")

    def stop(self) -> None:
        if self.thread.ident is None or (self.stop_event.is_set() and not self.thread.is_alive()):
            return  # never started, or stopped already
        self.stop_event.set()
        self.thread.join(90)
        assert not self.thread.is_alive(), "group reader did not finish within 90s"
        self.check()


def start_workload(cluster: Cluster, topic: str) -> tuple[Workload, GroupReader]:
    """Start a `Workload` and a `GroupReader`; the cluster fixture stops them at teardown."""
    load = Workload(cluster.bootstrap, topic)
    reader = GroupReader(cluster.bootstrap, topic)
    cluster.on_close(load.stop)     # no-ops once the test stopped them
    cluster.on_close(reader.stop)
    load.start()
    reader.start()
    return load, reader


# =====================================================================================
# Verification
# =====================================================================================


def high_watermarks(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> dict[int, int]:
    c = Consumer(confluent_conf(bootstrap, **{"group.id": f"hw-{uuid.uuid4().hex}",
                                             "enable.auto.commit": False}))
    try:
        out = {}
        for p in range(partitions):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=15, cached=False)
            out[p] = high
        return out
    finally:
        c.close()


def read_everything(bootstrap: str, topic: str, partitions: int = PARTITIONS,
                    timeout: float = 120) -> tuple[dict[int, int], dict[int, list[tuple[int, bytes]]]]:
    """Every partition from offset 0 to its high watermark (taken first), with one fresh
    consumer using assign(). Returns (high watermarks, partition -> [(offset, value)])."""
    errors: list[str] = []
    c = Consumer(confluent_conf(bootstrap, **{
        "group.id": f"verify-{uuid.uuid4().hex}",   # never joined: assign() only
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "error",
        "check.crcs": True,
        "fetch.wait.max.ms": 100,
        "error_cb": lambda err: errors.append(str(err)) if err.fatal() else None,
    }))
    try:
        ends = {}
        for p in range(partitions):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=15, cached=False)
            assert low == 0, f"partition {p}: log start offset {low}, expected 0 (no retention here)"
            ends[p] = high
        out: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(partitions)}
        pending = {p for p in range(partitions) if ends[p] > 0}
        c.assign([TopicPartition(topic, p, 0) for p in sorted(pending)])
        deadline = time.monotonic() + timeout
        while pending:
            assert not errors, f"fatal consumer error while verifying: {errors}"
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"verifying consumer did not reach the end of {len(pending)} partitions in "
                    f"{timeout}s: " + ", ".join(
                        f"{p}: {out[p][-1][0] if out[p] else None}/{ends[p]}" for p in sorted(pending)))
            for msg in c.consume(num_messages=1000, timeout=0.2):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF or err.retriable() or err.code() in (
                            KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
                        continue
                    raise AssertionError(f"verifying consumer error: {err}")
                p, off = msg.partition(), msg.offset()
                if off < ends[p]:
                    out[p].append((off, msg.value()))
                if off >= ends[p] - 1:
                    pending.discard(p)
        return ends, out
    finally:
        c.close()


def verify_exactly_once(cluster: Cluster, topic: str, load: Workload, reader: GroupReader,
                        partitions: int = PARTITIONS, min_acked: int = 1000) -> None:
    """Stop the workload, then check the log against it (see the module docstring) and that
    the group consumer reads to the end of every partition and commits there."""
    load.stop()
    print(load.describe())
    load.check()
    assert load.unflushed == 0, f"{load.unflushed} records never got a delivery report"
    assert not load.failures, (
        f"delivery failures (idempotent producer, unbounded retries: there should be none): "
        f"{dict(load.failures)}")
    assert not load.double_acks, f"acknowledged twice: {load.double_acks[:5]}"
    assert len(load.acked) >= min_acked, f"only {len(load.acked)} records acknowledged: test too weak"

    ends, logs = read_everything(cluster.live_bootstrap, topic, partitions)
    stored_at: dict[tuple[int, int], bytes] = {}
    counts: Counter[bytes] = Counter()
    for p in range(partitions):
        offsets = [o for o, _ in logs[p]]
        assert offsets == list(range(ends[p])), (
            f"partition {p}: offsets not contiguous 0..{ends[p] - 1}: first gap/dup near index "
            f"{next((i for i, o in enumerate(offsets) if o != i), len(offsets))}")
        ours = [v for _, v in logs[p] if v.startswith(b"k-")]
        counters = [value_counter(v) for v in ours]
        assert counters == sorted(counters), (
            f"partition {p}: workload records out of produce order near offset "
            f"{next(i for i in range(1, len(counters)) if counters[i] < counters[i - 1])}")
        for o, v in logs[p]:
            stored_at[(p, o)] = v
            if v.startswith(b"k-"):
                counts[v] += 1

    dupes = sorted(v for v, n in counts.items() if n > 1)
    assert not dupes, (f"{len(dupes)} workload records stored more than once, e.g. "
                       + ", ".join(f"{v[:11]!r} x{counts[v]}" for v in dupes[:5]))
    missing = sorted(v for v in load.acked if counts[v] == 0)
    assert not missing, (f"{len(missing)} acknowledged records missing, e.g. "
                         + ", ".join(f"{v[:11]!r} acked at {load.acked[v]}" for v in missing[:5]))
    moved = [(v, pos) for v, pos in load.acked.items()
             if pos[1] >= 0 and stored_at.get(pos) != v]
    assert not moved, (f"{len(moved)} acknowledged records not at their acknowledged offset, e.g. "
                       + ", ".join(f"{v[:11]!r} acked at {pos}, stored there "
                                   f"{(stored_at.get(pos) or b'<nothing>')[:11]!r}"
                                   for v, pos in moved[:5]))
    strangers = [v for v in counts if v not in load.sent]
    assert not strangers, f"workload-like records nobody sent: {strangers[:5]}"
    misplaced = [(v[:11], p, load.sent[v]) for (p, _), v in stored_at.items()
                 if v.startswith(b"k-") and load.sent[v] != p]
    assert not misplaced, f"records stored in another partition than sent to (value, in, sent to): {misplaced[:5]}"
    # Every record was delivered (no failures, nothing unflushed): the log holds exactly what
    # was sent, each once.
    assert set(counts) == set(load.sent), (
        f"{len(load.sent)} sent vs {len(counts)} stored: "
        f"{len(set(load.sent) - set(counts))} never stored")
    print(f"exactly once: {len(counts)} workload records in {sum(ends.values())} offsets")

    # The group consumer kept going through the scenario: it reads to the end and commits.
    reader.check()
    wait_until(lambda: (reader.check() or all(reader.position(p) >= ends[p] for p in range(partitions))),
               60, "the group consumer to read to the end of every partition",
               interval=0.2, on_timeout=reader.describe)
    reader.stop()
    print(reader.describe())
    final = reader.final_commit or {}
    short = {p: (final.get(p), ends[p]) for p in range(partitions)
             if ends[p] > 0 and final.get(p, -1) < ends[p]}
    assert not short, f"final group commit behind the end (committed, end): {short}"
    c = Consumer(confluent_conf(cluster.live_bootstrap, **{"group.id": reader.group,
                                                          "enable.auto.commit": False}))
    try:
        committed = {tp.partition: tp.offset
                     for tp in c.committed([TopicPartition(topic, p) for p in range(partitions)],
                                           timeout=30)}
    finally:
        c.close()
    behind = {p: (committed.get(p), ends[p]) for p in range(partitions)
              if ends[p] > 0 and committed.get(p, -1) < ends[p]}
    assert not behind, f"committed group offsets behind the end (committed, end): {behind}"


# =====================================================================================
# Small raw-protocol and bucket helpers
# =====================================================================================


def raw_produce(broker: Broker, topic: str, batches: dict[int, bytes],
                timeout: float = 10) -> dict[int, tuple[int, int]]:
    """One Produce v7 (acks=all) to ``broker``: partition -> (error code, base offset)."""
    with kw.KafkaConnection(broker.bootstrap, timeout=timeout) as conn:
        results = conn.produce(7, {topic: batches}, acks=-1, timeout=timeout)
    return {r.partition: (r.error_code, r.base_offset) for r in results}


def one_record(value: bytes) -> bytes:
    return kw.encode_record_batch([kw.WireRecord(None, value)])


@dataclass
class FetchAnswer:
    error: int
    high_watermark: int
    preferred_read_replica: int
    records: bytes


def raw_fetch_v11(broker: Broker, topic: str, partition: int, offset: int,
                  rack: str = "", timeout: float = 10) -> FetchAnswer:
    """A consumer's Fetch v11 (KIP-392 rack id) for one partition, sent to ``broker``."""
    body = kw.fetch_body(11, topic, partition, offset)
    body = body[:-2] + kw.string(rack)     # fetch_body ends with an empty rack_id
    with kw.KafkaConnection(broker.bootstrap, timeout=timeout) as conn:
        corr = conn.send_request(kw.API_FETCH, 11, body)
        r = kw.Reader(conn.recv_response(corr, timeout))
    r.i32()  # throttle
    top_error = r.i16()
    r.i32()  # session id
    assert top_error == NONE, f"Fetch to {broker.name}: top-level error {top_error}"
    for _ in range(r.i32()):
        r.string()
        for _ in range(r.i32()):
            index, error, hw = r.i32(), r.i16(), r.i64()
            r.i64()  # last stable offset
            r.i64()  # log start offset
            r.array(lambda: (r.i64(), r.i64()))  # aborted transactions
            preferred = r.i32()
            records = r.nbytes() or b""
            if index == partition:
                return FetchAnswer(error, hw, preferred, records)
    raise AssertionError(f"Fetch to {broker.name}: no answer for partition {partition}")


def find_coordinator(broker: Broker, group: str) -> tuple[int, int, str | None, int]:
    """FindCoordinator v1 for a group, sent to ``broker``: (error, node id, host, port)."""
    with kw.KafkaConnection(broker.bootstrap, timeout=10) as conn:
        corr = conn.send_request(API_FIND_COORDINATOR, 1, kw.string(group) + kw.i8(0))
        r = kw.Reader(conn.recv_response(corr))
    r.i32()  # throttle
    error = r.i16()
    r.string()  # error message
    node, host, port = r.i32(), r.string(), r.i32()
    return error, node, host, port


def heartbeat_error(broker: Broker, group: str) -> int:
    """Heartbeat v0 for an unknown member of ``group``, sent to ``broker``: its error code."""
    body = kw.string(group) + kw.i32(1) + kw.string("nobody")
    with kw.KafkaConnection(broker.bootstrap, timeout=10) as conn:
        corr = conn.send_request(API_HEARTBEAT, 0, body)
        return kw.Reader(conn.recv_response(corr)).i16()


def put_counters(brokers: Iterable[Broker]) -> tuple[float, float]:
    """Sum over ``brokers`` of strata_object_store_{bytes,requests}_total{op="put"}."""
    bytes_, reqs = 0.0, 0.0
    for b in brokers:
        m = b.metrics()  # a broker that has not PUT anything yet has no op="put" sample
        bytes_ += m.value("strata_object_store_bytes_total", op="put")
        reqs += m.value("strata_object_store_requests_total", op="put")
    return bytes_, reqs


SEG_TRAILER = 18
SEG_ENTRY = 72


def segment_extents(body: bytes) -> list[tuple[bytes, int, int, int]]:
    """Footer of a segment object (storage/src/segment.rs): (topic id, partition, base, last)."""
    assert len(body) >= SEG_TRAILER and body[-8:] == b"STRATASG", "not a Strata segment"
    footer_len, crc, _version = struct.unpack(">IIH", body[-SEG_TRAILER:-8])
    footer = body[len(body) - SEG_TRAILER - footer_len:len(body) - SEG_TRAILER]
    assert footer_len % SEG_ENTRY == 0 and kw.crc32c(footer) == crc, "bad segment footer"
    out = []
    for i in range(0, footer_len, SEG_ENTRY):
        partition, base, last = struct.unpack_from(">iqq", footer, i + 16)
        out.append((footer[i:i + 16], partition, base, last))
    return out


def get_object(bucket: S3Bucket, key: str) -> bytes:
    """An object's bytes, with a signed request (moto refuses anonymous object GETs)."""
    import boto3  # installed with moto[server]

    s3 = boto3.client(
        "s3",
        endpoint_url=bucket.endpoint,
        region_name=bucket.env.get("AWS_REGION", "us-east-1"),
        aws_access_key_id=bucket.env.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=bucket.env.get("AWS_SECRET_ACCESS_KEY", "testing"),
    )
    return s3.get_object(Bucket=bucket.bucket, Key=key)["Body"].read()


def segment_keys(bucket: S3Bucket) -> set[str]:
    return {k for k, _ in bucket.list_keys() if k.endswith(".seg")}


def fresh_cluster(cluster: Cluster, n: int, partitions: int = PARTITIONS,
                  zones: Sequence[str | None] | None = None,
                  prefix: str = "cluster") -> tuple[str, Ownership]:
    """Start ``n`` brokers, create a topic and wait until all of them agree on its owners
    and every broker owns at least one partition."""
    cluster.start(n, zones)
    topic = unique_topic(prefix)
    create_topic(cluster.bootstrap, topic, partitions)
    own = wait_ownership(
        cluster, topic, cluster.brokers, CONVERGE_TIMEOUT,
        f"{n} brokers to agree on the owners of {topic}, each owning some",
        condition=lambda o: len(o.counts()) == n, partitions=partitions)
    print(f"ownership: {own.counts()}")
    return topic, own


# =====================================================================================
# Tests
# =====================================================================================


def test_three_brokers_spread_ownership(cluster):
    """Every broker lists all three brokers (node id, host, port, rack) and names the same
    owner for every partition; the owners are spread over all three brokers; replicas and ISR
    are every live broker, leader first."""
    zones = ["zone-a", "zone-b", "zone-c"]
    topic, own = fresh_cluster(cluster, 3, zones=zones, prefix="spread")
    assert set(own.counts()) == {b.name for b in cluster.brokers}, own.counts()
    ids = {cluster.node_id(b) for b in cluster.brokers}
    assert len(ids) == 3, f"node ids are not distinct: {cluster.node_ids}"
    for v in own.views:
        assert set(v.brokers) == ids, f"{v.asked} lists node ids {sorted(v.brokers)}, want {sorted(ids)}"
        for node, (host, port, rack) in v.brokers.items():
            b = cluster.by_port(port)
            assert cluster.node_id(b) == node
            assert host == "127.0.0.1", f"{v.asked} advertises {b.name} at host {host!r}"
            assert rack == cluster.zones[b.name], (
                f"{v.asked} gives {b.name} rack {rack!r}, its --zone is {cluster.zones[b.name]!r}")
        for p, m in sorted(v.partitions.items()):
            assert m.replicas and m.replicas[0] == m.leader and sorted(m.replicas) == sorted(ids), (
                f"{v.asked}: partition {p} leader {m.leader} replicas {m.replicas} "
                f"(want every live broker, leader first)")
            assert m.isr and m.isr[0] == m.leader and sorted(m.isr) == sorted(ids), (
                f"{v.asked}: partition {p} leader {m.leader} isr {m.isr}")


def test_produce_fetch_and_group_requests_are_routed(cluster):
    """A non-owner refuses a Produce with NOT_LEADER_OR_FOLLOWER, the owner takes it and every
    broker serves the Fetch; every broker names the same group coordinator, and the others
    answer group requests with NOT_COORDINATOR."""
    topic, own = fresh_cluster(cluster, 3, prefix="routing")
    p = 0
    owner = own.owners[p]
    others = [b for b in cluster.brokers if b is not owner]

    for b in others:
        result = raw_produce(b, topic, {p: one_record(b"to-a-non-owner")})
        assert result[p][0] == NOT_LEADER_OR_FOLLOWER, (
            f"Produce of partition {p} (owner {owner.name}) to {b.name} answered {result[p]}, "
            f"expected NOT_LEADER_OR_FOLLOWER ({NOT_LEADER_OR_FOLLOWER})")
    result = raw_produce(owner, topic, {p: one_record(b"to-the-owner")})
    error, base = result[p]
    assert error == NONE and base >= 0, f"Produce to the owner {owner.name}: {result[p]}"

    for b in cluster.brokers:
        last: list[FetchAnswer] = []

        def served(b=b, last=last):
            answer = raw_fetch_v11(b, topic, p, base)
            last[:] = [answer]
            if answer.error != NONE:
                return False
            return any(bt.base_offset <= base <= bt.last_offset and bt.crc_ok
                       for bt in kw.decode_batches(answer.records))

        # A non-owner may learn of the new high watermark a moment later; bounded.
        wait_until(served, 10, f"{b.name} to serve the acknowledged record {p}@{base}",
                   interval=0.1, on_timeout=lambda last=last: f"last answer: {last}")
        assert last[0].high_watermark == base + 1, (
            f"Fetch from {b.name}: high watermark {last[0].high_watermark}, want {base + 1}")

    group = f"routing-{uuid.uuid4().hex[:8]}"
    answers = {b.name: find_coordinator(b, group) for b in cluster.brokers}
    assert all(a[0] == NONE for a in answers.values()), answers
    assert len({a[1] for a in answers.values()}) == 1, (
        f"brokers disagree on the coordinator of {group}: {answers}")
    _, node, host, port = next(iter(answers.values()))
    coordinator = cluster.by_port(port)
    assert cluster.node_id(coordinator) == node, (answers, cluster.node_ids)
    for b in cluster.brokers:
        code = heartbeat_error(b, group)
        if b is coordinator:
            assert code != NOT_COORDINATOR, f"the coordinator {b.name} answered NOT_COORDINATOR"
        else:
            assert code == NOT_COORDINATOR, (
                f"Heartbeat for {group} to {b.name} (coordinator: {coordinator.name}) answered "
                f"{code}, expected NOT_COORDINATOR ({NOT_COORDINATOR})")


PREFILL_RECORDS = 2048
PREFILL_VALUE = 8192          # 16 MiB of incompressible data stored before the join
JOIN_RECORD_BYTES = 200       # generous stored size of one workload record (value + batch)
PUT_OVERHEAD = 1024           # generous per-object overhead: footer, trailer, zstd frames
PUT_SLACK = 256 * 1024


def test_fourth_broker_joins(cluster):
    """3 brokers under the workload, with 16 MiB of incompressible data already stored; a 4th
    broker starts. Within 15 s every broker agrees it owns some partitions. Ownership moved,
    bytes did not: (1) the PUT bytes of all brokers during the join stay within what the
    records produced meanwhile explain (plus a per-object allowance) — copying the new
    broker's share of the stored data would exceed it; (2) no segment object written from
    the start of the join holds an offset that was already committed when it started.
    Then exactly-once."""
    topic, own = fresh_cluster(cluster, 3, prefix="join")

    rng = random.Random(20240613)
    prefill = [Rec(None, f"prefill-{i:06d}-".encode() + rng.randbytes(PREFILL_VALUE),
                   partition=i % PARTITIONS) for i in range(PREFILL_RECORDS)]
    produce_confluent(cluster.bootstrap, topic, prefill, timeout=120,
                      **{"linger.ms": 20, "enable.idempotence": True})

    load, reader = start_workload(cluster, topic)
    load.wait_acks(300, "workload warm-up")

    # The start of the window: committed offsets, then the objects (in that order: an object
    # not listed yet was PUT after every offset in h0 was committed), then the counters.
    h0 = high_watermarks(cluster.live_bootstrap, topic)
    keys0 = segment_keys(cluster.bucket)
    put0, reqs0 = put_counters(cluster.live)

    launched = time.monotonic()
    newcomer = cluster.add()   # returns once its /healthz answers 200
    started = time.monotonic()
    own = wait_ownership(cluster, topic, cluster.brokers, JOIN_BOUND_S,
                         f"all 4 brokers to agree that {newcomer.name} owns partitions",
                         condition=lambda o: bool(o.owned_by(newcomer)))
    joined = time.monotonic() - started
    print(f"{newcomer.name} ready {started - launched:.1f}s after launch; owns "
          f"{len(own.owned_by(newcomer))} partitions {joined:.1f}s later; ownership {own.counts()}")
    load.wait_acks(200, "workload after the join")

    put1, reqs1 = put_counters(cluster.live)
    h1 = high_watermarks(cluster.live_bootstrap, topic)
    keys1 = segment_keys(cluster.bucket)

    records = sum(h1[p] - h0[p] for p in range(PARTITIONS))
    put_bytes, put_reqs = put1 - put0, reqs1 - reqs0
    limit = 2 * JOIN_RECORD_BYTES * records + PUT_OVERHEAD * put_reqs + PUT_SLACK
    copy_floor = PREFILL_RECORDS * PREFILL_VALUE * len(own.owned_by(newcomer)) // PARTITIONS
    assert put_reqs > 0, "no strata_object_store_requests_total{op=\"put\"} counted during the join"
    print(f"join window: {records} records committed, {put_reqs:.0f} PUTs of {put_bytes:.0f} bytes "
          f"(limit {limit:.0f}; copying the newcomer's share would PUT >= {copy_floor})")
    assert put_bytes <= limit, (
        f"{put_bytes:.0f} bytes PUT during the join, more than the {records} records committed "
        f"meanwhile explain ({limit:.0f}): was stored data copied?")

    new_keys = sorted(keys1 - keys0)
    assert new_keys, "no segment object was written during the join"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda k: get_object(cluster.bucket, k), new_keys))
    rewritten = []
    for key, body in zip(new_keys, bodies):
        for _topic_id, partition, base, last in segment_extents(body):
            # This test's catalog holds one topic, so the partition number identifies it.
            if base < h0.get(partition, 0):
                rewritten.append((key, partition, base, last, h0[partition]))
    assert not rewritten, (
        f"{len(rewritten)} extents written during the join hold offsets committed before it "
        f"(key, partition, base, last, committed end at the start): {rewritten[:5]}")
    print(f"{len(new_keys)} segment objects written during the join, none rewriting stored data")

    load.wait_acks(200, "workload before the check")
    verify_exactly_once(cluster, topic, load, reader, min_acked=700)


def test_sigterm_hands_over(cluster):
    """SIGTERM one of 3 brokers under the workload: it exits 0, its partitions get owners
    among the other two, the workload goes on, the producer sees no delivery failure, and
    every record is stored exactly once."""
    topic, own = fresh_cluster(cluster, 3, prefix="sigterm")
    load, reader = start_workload(cluster, topic)
    load.wait_acks(300, "workload warm-up")

    victim = cluster.brokers[1]
    had = own.owned_by(victim)
    started = time.monotonic()
    code = victim.stop()  # asserts exit code 0
    assert code == 0
    rest = [b for b in cluster.brokers if b is not victim]
    own = wait_ownership(cluster, topic, rest, 15,
                         f"the other two brokers to own all partitions after {victim.name} left")
    print(f"{victim.name} (owned {len(had)}) exited 0; {time.monotonic() - started:.1f}s to a "
          f"2-broker ownership {own.counts()}")
    assert not own.owned_by(victim)

    load.wait_acks(300, "workload after the handover")
    verify_exactly_once(cluster, topic, load, reader, min_acked=600)


def wait_every_partition_accepts_produce(cluster: Cluster, topic: str, members: Sequence[Broker],
                                         timeout: float, partitions: int = PARTITIONS) -> None:
    """Until a Produce (acks=all) of one record succeeds on every partition: each round asks a
    live broker for the owners and sends each owner one request for its pending partitions."""
    ok: set[int] = set()
    rounds = [0]
    live_ports = {b.kafka_port for b in members}

    def attempt():
        rounds[0] += 1
        asked = members[rounds[0] % len(members)]
        try:
            view = metadata_view(asked, topic)
        except NET_ERRORS:
            return False
        by_owner: dict[int, list[int]] = defaultdict(list)
        for p in range(partitions):
            m = view.partitions.get(p)
            if p in ok or m is None or m.error != NONE or m.leader not in view.brokers:
                continue
            port = view.brokers[m.leader][1]
            if port in live_ports:
                by_owner[port].append(p)
        for port, parts in by_owner.items():
            batches = {p: one_record(f"probe-{rounds[0]}-{p}".encode()) for p in parts}
            try:
                result = raw_produce(cluster.by_port(port), topic, batches, timeout=10)
            except NET_ERRORS:
                continue
            ok.update(p for p, (error, _) in result.items() if error == NONE)
        return len(ok) == partitions

    wait_until(attempt, timeout, "every partition to accept a produce again", interval=0.1,
               on_timeout=lambda: f"partitions still refusing: {sorted(set(range(partitions)) - ok)}")


def test_kill9_takeover(cluster):
    """kill -9 one of 3 brokers under the workload: every partition accepts produce again
    within lease + 10 s (spec: lease + 1-2 s; slack for 2-core CI), owned by the other two.
    The killed broker then restarts on its data dir: the WAL entries it replays belong to
    partitions it lost, so they must not be committed again; it rejoins and owns partitions.
    Exactly once, no delivery failure."""
    topic, own = fresh_cluster(cluster, 3, prefix="kill9")
    load, reader = start_workload(cluster, topic)
    load.wait_acks(300, "workload warm-up")

    victim = cluster.brokers[1]
    had = own.owned_by(victim)
    rest = [b for b in cluster.brokers if b is not victim]
    victim.kill9()
    killed = time.monotonic()
    wait_every_partition_accepts_produce(cluster, topic, rest, 60)
    took = time.monotonic() - killed
    print(f"kill -9 of {victim.name} (owned {len(had)}): every partition accepts produce after "
          f"{took:.1f}s (lease {LEASE_S:.0f}s)")
    assert took <= TAKEOVER_BOUND_S, (
        f"partitions of the killed broker took {took:.1f}s to accept produce again "
        f"(bound: lease {LEASE_S:.0f}s + 10s)")
    own = wait_ownership(cluster, topic, rest, 15,
                         f"the other two brokers to agree they own everything after {victim.name} died")
    assert not own.owned_by(victim)
    load.wait_acks(300, "workload after the takeover")

    victim.start()
    own = wait_ownership(cluster, topic, cluster.brokers, REJOIN_BOUND_S,
                         f"{victim.name}, restarted after kill -9, to own partitions again",
                         condition=lambda o: bool(o.owned_by(victim)))
    print(f"{victim.name} restarted and owns {len(own.owned_by(victim))} partitions: {own.counts()}")
    load.wait_acks(300, "workload after the restart")
    verify_exactly_once(cluster, topic, load, reader, min_acked=900)


def test_sigstop_fenced_and_rejoins(cluster):
    """SIGSTOP one of 3 brokers for longer than its lease (lease + 3 s) under the workload:
    the others stop listing it and own all its partitions. After SIGCONT its late commits
    are refused (fenced) and it drops its stale partitions, then rejoins and owns a share
    again. No acknowledged record is lost or duplicated; it still exits 0 on SIGTERM."""
    topic, own = fresh_cluster(cluster, 3, prefix="sigstop")
    load, reader = start_workload(cluster, topic)
    load.wait_acks(300, "workload warm-up")

    victim = cluster.brokers[1]
    had = own.owned_by(victim)
    rest = [b for b in cluster.brokers if b is not victim]
    cluster.freeze(victim)
    frozen_at = time.monotonic()
    try:
        own = wait_ownership(cluster, topic, rest, TAKEOVER_BOUND_S + 10,
                             f"the other two brokers to drop the frozen {victim.name} and own "
                             f"all partitions")
        print(f"{victim.name} frozen (owned {len(had)}); taken over after "
              f"{time.monotonic() - frozen_at:.1f}s: {own.counts()}")
        # The scenario: stay frozen for lease + 3 s in all (not a synchronisation).
        remaining = LEASE_S + 3 - (time.monotonic() - frozen_at)
        if remaining > 0:
            time.sleep(remaining)
        load.wait_acks(100, "workload while a broker is frozen")
    finally:
        cluster.thaw(victim)
    thawed = time.monotonic()

    own = wait_ownership(cluster, topic, cluster.brokers, REJOIN_BOUND_S,
                         f"the thawed {victim.name} to rejoin and own partitions",
                         condition=lambda o: bool(o.owned_by(victim)))
    print(f"{victim.name} rejoined {time.monotonic() - thawed:.1f}s after SIGCONT and owns "
          f"{len(own.owned_by(victim))} partitions: {own.counts()}")
    assert victim.is_running(), f"{victim.name} exited after SIGCONT\n{victim.log_tail()}"
    fenced = [line for line in victim.log_text().splitlines() if "fenc" in line.lower()]
    print(f"{victim.name} log lines mentioning fencing ({len(fenced)}):\n" + "\n".join(fenced[:5]))

    load.wait_acks(300, "workload after the rejoin")
    verify_exactly_once(cluster, topic, load, reader, min_acked=700)
    # The make_broker teardown checks that every broker, the thawed one too, exits 0 on SIGTERM.


ZONE_PARTITIONS = 16          # a partition owned by the zone-a broker: all but 2^-16 of the time
ZONE_RECORDS = 300


def test_consumer_fetches_from_its_zone(cluster):
    """KIP-392: 2 brokers in zones a and b. A Fetch v11 with rack "b" sent to the zone-a owner
    of a partition names the zone-b broker as preferred read replica; a confluent-kafka
    consumer with client.rack=b reads every record of that partition, and the Fetch requests
    are served by the zone-b broker (strata_kafka_requests_total{api="Fetch"}): the zone-a
    broker answers at most a few (the first fetch, which redirects)."""
    topic, own = fresh_cluster(cluster, 2, partitions=ZONE_PARTITIONS, zones=["a", "b"],
                               prefix="zones")
    zone_a, zone_b = cluster.brokers
    mine = own.owned_by(zone_a)
    assert mine, f"zone-a broker owns none of {ZONE_PARTITIONS} partitions: {own.counts()}"
    p = mine[0]
    id_b = cluster.node_id(zone_b)

    records = [Rec(None, f"zone-{i:05d}".encode().ljust(200, b"z"), partition=p)
               for i in range(ZONE_RECORDS)]
    produce_confluent(cluster.bootstrap, topic, records, timeout=60)

    answer = raw_fetch_v11(zone_a, topic, p, 0, rack="b")
    assert answer.error == NONE, f"Fetch v11 rack=b to the owner: error {answer.error}"
    assert answer.preferred_read_replica == id_b, (
        f"Fetch v11 with rack_id 'b' to the zone-a owner named preferred read replica "
        f"{answer.preferred_read_replica}, expected the zone-b broker {id_b}")
    same_zone = raw_fetch_v11(zone_a, topic, p, 0, rack="a")
    assert same_zone.error == NONE and same_zone.preferred_read_replica in (-1, cluster.node_id(zone_a)), (
        f"a zone-a client fetching from the zone-a owner was sent elsewhere: "
        f"preferred read replica {same_zone.preferred_read_replica}")

    def fetches() -> dict[str, float]:
        return {b.name: b.metrics().value("strata_kafka_requests_total", api="Fetch")
                for b in (zone_a, zone_b)}

    before = fetches()
    consumer = Consumer(confluent_conf(cluster.bootstrap, **{
        "group.id": f"zones-{uuid.uuid4().hex}",   # never joined: assign() only
        "client.rack": "b",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "error",
        "fetch.wait.max.ms": 100,
    }))
    got: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, p, 0)])
        deadline = time.monotonic() + 60
        while len(got) < ZONE_RECORDS:
            assert time.monotonic() < deadline, f"read {len(got)} of {ZONE_RECORDS} records in 60s"
            for msg in consumer.consume(num_messages=500, timeout=0.2):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise AssertionError(f"consumer error: {err}")
                got.append(msg.value())
    finally:
        consumer.close()
    after = fetches()
    assert got == [r.value for r in records], "the zone-b consumer read other records than produced"

    delta = {name: after[name] - before[name] for name in after}
    print(f"Fetch requests during the read: {delta}")
    assert delta[zone_b.name] >= 1, (
        f"the zone-b broker served no Fetch: the rack-b consumer did not follow the preferred "
        f"read replica ({delta})")
    assert delta[zone_a.name] <= 3 and delta[zone_a.name] < delta[zone_b.name], (
        f"the zone-a owner answered {delta[zone_a.name]:.0f} Fetch requests of a rack-b consumer "
        f"(zone-b broker: {delta[zone_b.name]:.0f}): it kept fetching across zones")


def test_cluster_info_shows_brokers_zones_heartbeats_owners_and_epochs(cluster):
    """`strata cluster info`, asked of one broker over QUIC, lists every broker with its zone
    and a fresh heartbeat, and every partition with its owner (the same as Kafka metadata)
    and an epoch of at least 1 (it was claimed)."""
    from strata_cli import has_word, lines_with, strata

    partitions = PARTITIONS  # fewer could all land on one broker (see the module docstring)
    topic, own = fresh_cluster(cluster, 2, partitions=partitions, zones=["zone-a", "zone-b"],
                               prefix="info")
    # Other brokers' claims show from the answering broker's next heartbeat on.
    def claimed_everywhere() -> str | None:
        text = strata(cluster.brokers[0], "cluster", "info").stdout
        rows = lines_with(text, topic)
        epochs = [int(r.split()[-1].strip("|│ ")) for r in rows]
        return text if len(rows) == partitions and min(epochs) >= 1 else None

    out = wait_until(claimed_everywhere, 15, "every partition shown claimed (epoch >= 1)",
                     interval=0.3)
    for b in cluster.brokers:
        node = str(cluster.node_id(b))
        rows = [r for r in lines_with(out, node) if has_word(r, cluster.zones[b.name])]
        assert rows, f"no row for broker {node} with zone {cluster.zones[b.name]}:\n{out}"
        assert any(re.search(r"\d+\.\d s ago", r) for r in rows), f"no heartbeat age:\n{out}"
    for p, owner in own.owners.items():
        rows = [r for r in lines_with(out, topic, str(p)) if has_word(r, str(cluster.node_id(owner)))]
        assert rows, f"partition {p} not shown owned by {cluster.node_id(owner)}:\n{out}"
        epoch = int(rows[0].split()[-1].strip("|│ "))
        assert epoch >= 1, f"partition {p} epoch {epoch}:\n{out}"
    assert f"2 brokers" in out, out


def test_transaction_spans_partitions_of_every_broker(cluster):
    """A transaction over partitions owned by two brokers: its coordinator writes the markers
    of its own partitions and asks the other broker for the rest (Kafka's WriteTxnMarkers).
    A read_committed consumer then reads the committed transaction on every partition and
    nothing of the aborted one; a read_uncommitted consumer reads both."""
    partitions = PARTITIONS  # fewer could all land on one broker (see the module docstring)
    topic, own = fresh_cluster(cluster, 2, partitions=partitions, prefix="txn")
    producer = Producer(confluent_conf(cluster.bootstrap, **{"transactional.id": unique_topic("tx")}))
    producer.init_transactions(30)
    for tag, commit in (("kept", True), ("dropped", False), ("again", True)):
        producer.begin_transaction()
        for p in range(partitions):
            producer.produce(topic, f"{tag}-{p}".encode(), partition=p)
        producer.flush(30)  # the records reach every owner before the transaction ends
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)

    def read(isolation: str) -> list[str]:
        consumer = Consumer(confluent_conf(cluster.bootstrap, **{
            "group.id": unique_topic("g"), "isolation.level": isolation,
            "enable.auto.commit": False, "enable.partition.eof": True}))
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        values, done = [], set()
        deadline = time.monotonic() + 60
        while len(done) < partitions and time.monotonic() < deadline:
            m = consumer.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    done.add(m.partition())
                continue
            values.append(m.value().decode())
        consumer.close()
        assert len(done) == partitions, f"{isolation}: only {sorted(done)} reached their end"
        return sorted(values)

    committed = sorted(f"{t}-{p}" for t in ("kept", "again") for p in range(partitions))
    # The last stable offset moves once each owner's marker is committed: wait for it.
    wait_until(lambda: read("read_committed") == committed, 60,
               "read_committed to see both committed transactions on every partition")
    everything = sorted(committed + [f"dropped-{p}" for p in range(partitions)])
    assert read("read_uncommitted") == everything
    assert len(own.counts()) == 2, "the partitions are spread over both brokers"
    forwarded = sum(b.metrics().value("strata_kafka_requests_total", api="WriteTxnMarkers")
                    for b in cluster.brokers if b.metrics().has("strata_kafka_requests_total",
                                                                api="WriteTxnMarkers"))
    assert forwarded >= 2, f"markers were forwarded to the other owner {forwarded} times"


def test_rest_produce_to_any_broker_reaches_every_owner(cluster):
    """A REST client talks to one broker of a cluster: records for partitions another broker
    owns are forwarded to their owner (a Kafka Produce at acks=all) and answered with their
    offsets, so every partition gets its records, in order, whichever broker the client
    picked."""
    import json

    partitions = PARTITIONS  # fewer could all land on one broker (see the module docstring)
    topic, own = fresh_cluster(cluster, 2, partitions=partitions, prefix="rest")
    front = cluster.brokers[0]
    records = [{"partition": p, "value": {"n": i, "p": p}}
               for i in range(3) for p in range(partitions)]
    status, body = http_request(
        "POST", f"{front.http_url}/topics/{topic}", json.dumps({"records": records}).encode(),
        headers={"Content-Type": "application/vnd.kafka.json.v2+json"})
    assert status == 200, body
    offsets = json.loads(body)["offsets"]
    assert all(o["error_code"] is None for o in offsets), offsets
    assert [o["partition"] for o in offsets] == [r["partition"] for r in records]
    _, got = read_everything(cluster.bootstrap, topic, partitions)
    for p in range(partitions):
        values = [json.loads(v) for _, v in got[p]]
        assert [v["n"] for v in values] == [0, 1, 2], f"partition {p}: {values}"
    assert len(own.counts()) == 2, "some partitions belong to the other broker"
