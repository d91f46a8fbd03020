"""Consumer groups (Kafka's classic group protocol) end to end, with real clients.

Three client stacks form groups on a 6-partition topic: confluent-kafka
(librdkafka 2.16) with the range, roundrobin and cooperative-sticky assignors,
kafka-python 3.x and kcat (librdkafka 2.0, ``-G``). These tests check:

* Exactly once: three members share a pre-produced set and every record is
  delivered to exactly one member exactly once. The members commit what they
  processed synchronously after every batch and, for partitions being revoked,
  in the revocation callback — the standard at-least-once loop, which against a
  Kafka broker delivers each record once as long as no member dies. To make a
  mid-stream rebalance certain, the first member reads a part alone and the
  other two join while it holds a processed, uncommitted batch. The check runs
  once the group has settled (three members, two partitions each) and every
  partition's committed offset is its high watermark, so a re-delivery could not
  still be on its way; a commit refused in a revocation callback fails the test
  at once. A second set produced once the group is stable is read by the owners
  of its partitions. kcat checks that the assignment spreads (DescribeGroups: 2
  partitions per process), every record is read, and records produced once the
  group is stable go, once each, to the process owning their partition.
* A lone consumer gets its assignment less than 3 s after ``subscribe()``
  (the only timing assertion, far above the ~0.5 s it takes).
* Commit and resume: half of the records consumed with commits, the consumer
  closed, the broker restarted (SIGTERM, same data dir); OffsetFetch (confluent
  ``committed()``, kafka-python ``committed()``) returns the committed offsets,
  metadata included, and a new member resumes at exactly those offsets.
* A member killed with SIGKILL is expelled after its 3 s session timeout; the
  survivors take over its partitions and read everything produced since,
  exactly once.
* Static membership (``group.instance.id``): a member killed with SIGKILL and
  restarted under the same instance id within its session timeout gets the
  same partitions back; the other member sees no rebalance and keeps its
  member id and assignment.
* Admin: ListGroups/DescribeGroups show a Stable group with its members and
  assignments, Empty once they leave; DeleteGroups refuses an active group
  (NON_EMPTY_GROUP) and deletes an empty one with its offsets; OffsetFetch and
  OffsetCommit with generation -1 (list/alter_consumer_group_offsets) work on an
  empty group and the latter is refused (UNKNOWN_MEMBER_ID) on an active one.
* Error codes on the wire: KIP-394 MEMBER_ID_REQUIRED, INVALID_SESSION_TIMEOUT,
  ILLEGAL_GENERATION for a commit or heartbeat of a stale generation,
  UNKNOWN_MEMBER_ID for a heartbeat of an unknown or departed member, and a
  commit made while the group prepares a rebalance is accepted, as Kafka does
  (consumers commit in their revocation callback at exactly that moment).

Members that must die with SIGKILL run in a subprocess: this file run as a
script (``python3 test_groups.py member '<json>'``) is one confluent-kafka
member that reports what it receives and commits as JSON lines on stdout.

Every wait is bounded (``wait_until``); no test depends on a timing except the
3 s assignment bound above.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)

import kafka_wire as kw
from harness import die_with_us, wait_until
from kafka_clients import (
    KCAT,
    Rec,
    _kp_common,
    admin,
    confluent_conf,
    create_topic,
    produce_confluent,
    unique_topic,
    watermarks,
)

PARTITIONS = 6
SETTLE_TIMEOUT = 90.0  # a group converging: joins, rebalances, everything consumed
ADMIN_TIMEOUT = 30.0
OFFSET_INVALID = -1001  # librdkafka: no committed offset

# Kafka error codes.
NONE = 0
ILLEGAL_GENERATION = 22
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
REBALANCE_IN_PROGRESS = 27
MEMBER_ID_REQUIRED = 79

API_OFFSET_COMMIT = 8
API_OFFSET_FETCH = 9
API_JOIN_GROUP = 11
API_HEARTBEAT = 12
API_LEAVE_GROUP = 13
API_SYNC_GROUP = 14


def unique_group(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# ------------------------------------------------------------------ data helpers


def produce_set(bootstrap: str, topic: str, count: int, tag: str,
                partitions: Iterable[int] = range(PARTITIONS)) -> list[Rec]:
    """``count`` records with unique values spread round-robin over ``partitions``;
    returns them with the offsets the broker acknowledged."""
    parts = list(partitions)
    records = [Rec(f"k{i}".encode(), f"{tag}-{i:06d}".encode(), partition=parts[i % len(parts)])
               for i in range(count)]
    return produce_confluent(bootstrap, topic, records)


def high_watermarks(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> dict[int, int]:
    return {p: watermarks(bootstrap, topic, p)[1] for p in range(partitions)}


def group_offsets(bootstrap: str, group: str, topic: str,
                  partitions: int = PARTITIONS) -> dict[int, int]:
    """Committed offsets via OffsetFetch (AdminClient); OFFSET_INVALID where none."""
    client = admin(bootstrap)
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])
    result = client.list_consumer_group_offsets([request], request_timeout=ADMIN_TIMEOUT)[group].result(
        timeout=ADMIN_TIMEOUT)
    out = {}
    for tp in result.topic_partitions:
        assert tp.error is None, f"OffsetFetch error for {tp}: {tp.error}"
        out[tp.partition] = tp.offset
    return out


def describe_group(bootstrap: str, group: str):
    """DescribeGroups via AdminClient: a ConsumerGroupDescription."""
    client = admin(bootstrap)
    return client.describe_consumer_groups([group], request_timeout=ADMIN_TIMEOUT)[group].result(
        timeout=ADMIN_TIMEOUT)


def member_partitions(description) -> dict[str, frozenset[int]]:
    """member id -> assigned partitions, from a ConsumerGroupDescription."""
    return {m.member_id: frozenset(tp.partition for tp in m.assignment.topic_partitions)
            for m in description.members}


def summarize(description) -> str:
    members = ", ".join(
        f"{m.client_id}/{m.group_instance_id}/{m.member_id[-8:]}:"
        f"{sorted(tp.partition for tp in m.assignment.topic_partitions)}"
        for m in description.members)
    return f"state={description.state} assignor={description.partition_assignor} members=[{members}]"


def stable_with(bootstrap: str, group: str, members: int, per_member: int | None = None):
    """The description if the group is Stable with ``members`` members whose assignments
    are disjoint and cover all partitions (``per_member`` each, if given); else None."""
    d = describe_group(bootstrap, group)
    if d.state != ConsumerGroupState.STABLE or len(d.members) != members:
        return None
    parts = list(member_partitions(d).values())
    union = frozenset().union(*parts)
    if sum(len(p) for p in parts) != PARTITIONS or union != frozenset(range(PARTITIONS)):
        return None
    if per_member is not None and any(len(p) != per_member for p in parts):
        return None
    return d


def wait_stable(bootstrap: str, group: str, members: int, per_member: int | None = None,
                timeout: float = SETTLE_TIMEOUT):
    last = []

    def check():
        d = stable_with(bootstrap, group, members, per_member)
        if d is None:
            last[:] = [summarize(describe_group(bootstrap, group))]
        return d

    return wait_until(check, timeout,
                      f"group {group} Stable with {members} members covering {PARTITIONS} partitions",
                      interval=0.2, on_timeout=lambda: f"last seen: {last[0] if last else '?'}")


class Ledger:
    """Every record delivered to the application of any member, in delivery order."""

    def __init__(self):
        self.lock = threading.Lock()
        self.deliveries: list[tuple[str, int, int, bytes]] = []

    def add(self, member: str, partition: int, offset: int, value: bytes) -> None:
        with self.lock:
            self.deliveries.append((member, partition, offset, value))

    def snapshot(self) -> list[tuple[str, int, int, bytes]]:
        with self.lock:
            return list(self.deliveries)

    def count(self, member: str | None = None) -> int:
        with self.lock:
            return sum(1 for d in self.deliveries if member is None or d[0] == member)

    def values(self) -> set[bytes]:
        with self.lock:
            return {d[3] for d in self.deliveries}

    def assert_exactly_once(self, expected: list[Rec], since: int = 0) -> None:
        """Deliveries from index ``since`` on are exactly ``expected``, each once, at the
        offset it was acknowledged with."""
        got = self.snapshot()[since:]
        want = {(r.partition, r.offset): r.value for r in expected}
        counts = Counter((p, o) for _, p, o, _ in got)
        dups = {pos: n for pos, n in counts.items() if n > 1}
        missing = sorted(set(want) - set(counts))
        extra = sorted(set(counts) - set(want))
        wrong = [(p, o, v) for _, p, o, v in got if (p, o) in want and want[(p, o)] != v]
        if dups:
            who = {}
            for m, p, o, _ in got:
                if (p, o) in dups:
                    who.setdefault((p, o), []).append(m)
            sample = sorted(who.items())[:10]
            by_partition = Counter(p for p, _ in dups)
            raise AssertionError(
                f"{len(dups)} records delivered more than once (per partition: "
                f"{dict(sorted(by_partition.items()))}); e.g. (partition, offset) -> members: "
                f"{sample}")
        assert not missing, f"{len(missing)} records never delivered, e.g. {missing[:10]}"
        assert not extra, f"{len(extra)} unexpected records delivered, e.g. {extra[:10]}"
        assert not wrong, f"records with the wrong value at their offset: {wrong[:5]}"


# ------------------------------------------------------------------- group members


class Member(threading.Thread):
    """One group member driven by its own thread: poll, hand records to the ledger, commit
    what was processed synchronously; on revocation commit what is pending for the revoked
    partitions first. A paused member holds a processed but uncommitted batch and polls no
    more (heartbeats go on in the client's own threads)."""

    def __init__(self, name: str, topic: str, ledger: Ledger):
        super().__init__(name=f"member-{name}", daemon=True)
        self.member_name = name
        self.topic = topic
        self.ledger = ledger
        self.lock = threading.Lock()
        self.events: list[tuple[str, frozenset[int]]] = []
        self.commit_errors: list[str] = []
        self.revocation_commit_errors: list[str] = []
        self.pending: dict[int, int] = {}
        self.assigned: frozenset[int] = frozenset()
        self.error: str | None = None
        self.ready = threading.Event()
        self.paused = threading.Event()
        self.stopping = threading.Event()
        self.subscribed_at: float | None = None
        self.first_assignment_at: float | None = None
        self.delivered = 0
        self.hold_at: int | None = None  # pause itself once it has delivered this many

    # -- client specific ------------------------------------------------------------------

    def open(self) -> None:
        raise NotImplementedError

    def poll_batch(self) -> list[tuple[int, int, bytes]]:
        raise NotImplementedError

    def commit(self, offsets: dict[int, int]) -> None:
        """Synchronous commit; raises on failure."""
        raise NotImplementedError

    def close_client(self) -> None:
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.open()
            self.ready.set()
            while not self.stopping.is_set():
                for p, o, v in self.poll_batch():
                    self.ledger.add(self.member_name, p, o, v)
                    self.pending[p] = o + 1
                    self.delivered += 1
                if self.hold_at is not None and self.delivered >= self.hold_at:
                    self.hold_at = None
                    self.paused.set()
                # Paused between processing a batch and committing it.
                while self.paused.is_set() and not self.stopping.is_set():
                    time.sleep(0.02)
                self.commit_pending()
        except BaseException:  # reported by stop()
            self.error = traceback.format_exc()
        finally:
            self.ready.set()
            try:
                self.close_client()
            except BaseException:
                if self.error is None:
                    self.error = traceback.format_exc()

    def commit_pending(self, partitions: Iterable[int] | None = None,
                       revoking: bool = False) -> None:
        keys = [p for p in (self.pending if partitions is None else partitions) if p in self.pending]
        if not keys:
            return
        offsets = {p: self.pending[p] for p in keys}
        try:
            self.commit(offsets)
        except Exception as exc:  # kept pending: retried after the next batch
            self.commit_failed(exc, revoking)
            return
        for p in keys:
            if self.pending.get(p) == offsets[p]:
                del self.pending[p]

    def _event(self, kind: str, partitions: Iterable[int]) -> None:
        parts = frozenset(partitions)
        with self.lock:
            self.events.append((kind, parts))
            if kind == "assign":
                if self.first_assignment_at is None and parts:
                    self.first_assignment_at = time.monotonic()
                self.assigned = self.assigned | parts if self.incremental else parts
            else:
                self.assigned = self.assigned - parts

    incremental = False

    def on_assigned(self, partitions: Iterable[int]) -> None:
        self._event("assign", partitions)

    def on_revoked(self, partitions: Iterable[int]) -> None:
        parts = list(partitions)
        self.commit_pending(parts, revoking=True)
        self.revoked(parts)

    def revoked(self, parts: list[int]) -> None:
        for p in parts:  # not ours any more: never commit them again
            self.pending.pop(p, None)
        self._event("revoke", parts)

    def commit_failed(self, exc: BaseException, revoking: bool = False) -> None:
        """A failed commit after a batch is retried after the next one; one made while
        partitions are revoked is final: their next owner will re-read those records."""
        with self.lock:
            self.commit_errors.append(f"{type(exc).__name__}: {exc}")
            if revoking:
                self.revocation_commit_errors.append(f"{type(exc).__name__}: {exc}")

    def on_lost(self, partitions: Iterable[int]) -> None:
        parts = list(partitions)
        for p in parts:
            self.pending.pop(p, None)
        self._event("lost", parts)

    def assignment(self) -> frozenset[int]:
        with self.lock:
            return self.assigned

    def event_count(self) -> int:
        with self.lock:
            return len(self.events)

    def begin(self, timeout: float = 30) -> "Member":
        self.start()
        assert self.ready.wait(timeout), f"{self.member_name} did not open its client in {timeout}s"
        self.check()
        return self

    def resume(self) -> None:
        self.paused.clear()

    def check(self) -> None:
        assert self.error is None, f"member {self.member_name} failed:\n{self.error}"

    def stop(self, timeout: float = 60) -> None:
        self.stopping.set()
        self.join(timeout)
        assert not self.is_alive(), f"member {self.member_name} did not stop within {timeout}s"
        self.check()


class ConfluentMember(Member):
    def __init__(self, bootstrap: str, group: str, topic: str, ledger: Ledger, name: str,
                 **conf):
        super().__init__(name, topic, ledger)
        self.conf = confluent_conf(bootstrap, **{
            "group.id": group,
            "client.id": name,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 500,
            "fetch.wait.max.ms": 100,
            **conf,
        })
        self.incremental = "cooperative" in str(self.conf.get("partition.assignment.strategy", ""))
        self.consumer: Consumer | None = None

    def open(self) -> None:
        self.consumer = Consumer(self.conf)
        # Warm up the connection so the subscribe-to-assignment time is the group's alone.
        self.consumer.list_topics(self.topic, timeout=15)
        self.subscribed_at = time.monotonic()
        self.consumer.subscribe(
            [self.topic],
            on_assign=lambda c, tps: self.on_assigned(tp.partition for tp in tps),
            on_revoke=lambda c, tps: self.on_revoked(tp.partition for tp in tps),
            on_lost=lambda c, tps: self.on_lost(tp.partition for tp in tps),
        )

    def poll_batch(self) -> list[tuple[int, int, bytes]]:
        out = []
        for msg in self.consumer.consume(num_messages=100, timeout=0.1):
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(msg.error())
            out.append((msg.partition(), msg.offset(), msg.value()))
        return out

    def commit(self, offsets: dict[int, int]) -> None:
        self.consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in offsets.items()],
                             asynchronous=False)

    def close_client(self) -> None:
        if self.consumer is not None:
            self.consumer.close()


class KafkaPythonMember(Member):
    def __init__(self, bootstrap: str, group: str, topic: str, ledger: Ledger, name: str,
                 **conf):
        super().__init__(name, topic, ledger)
        self.conf = {**_kp_common(bootstrap), "group_id": group, "client_id": name,
                     "enable_auto_commit": False, "auto_offset_reset": "earliest",
                     "session_timeout_ms": 10000, "heartbeat_interval_ms": 500,
                     "fetch_max_wait_ms": 100, **conf}
        self.consumer = None

    def open(self) -> None:
        from kafka import AsyncConsumerRebalanceListener, KafkaConsumer

        member = self

        # kafka-python 3 runs listeners on its IO thread, where the blocking commit() is
        # refused: the revocation commit awaits commit_async() instead.
        class Listener(AsyncConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked):
                parts = [tp.partition for tp in revoked]
                offsets = {p: member.pending[p] for p in parts if p in member.pending}
                if offsets:
                    try:
                        await member.consumer.commit_async(member.kafka_offsets(offsets))
                    except Exception as exc:
                        member.commit_failed(exc, revoking=True)
                member.revoked(parts)

            async def on_partitions_assigned(self, assigned):
                member.on_assigned(tp.partition for tp in assigned)

            async def on_partitions_lost(self, lost):
                member.on_lost(tp.partition for tp in lost)

        self.consumer = KafkaConsumer(**self.conf)
        self.consumer.partitions_for_topic(self.topic)
        self.subscribed_at = time.monotonic()
        self.consumer.subscribe([self.topic], listener=Listener())

    def kafka_offsets(self, offsets: dict[int, int]) -> dict:
        from kafka import OffsetAndMetadata, TopicPartition as KTP

        return {KTP(self.topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}

    def poll_batch(self) -> list[tuple[int, int, bytes]]:
        out = []
        for records in self.consumer.poll(timeout_ms=100, max_records=100).values():
            out.extend((m.partition, m.offset, m.value) for m in records)
        return out

    def commit(self, offsets: dict[int, int]) -> None:
        self.consumer.commit(self.kafka_offsets(offsets))

    def close_client(self) -> None:
        if self.consumer is not None:
            self.consumer.close(autocommit=False)


def stop_all(members: Iterable[Member]) -> None:
    members = list(members)
    for m in members:
        m.stopping.set()
    for m in members:
        m.stop()


def wait_settled(bootstrap: str, group: str, topic: str, members: list[Member],
                 per_member: int, group_size: int | None = None,
                 check_members: Callable[[], None] | None = None,
                 timeout: float = SETTLE_TIMEOUT):
    """Wait until the group is Stable with ``group_size`` members (default: ``members``),
    ``per_member`` partitions each (as both DescribeGroups and ``members`` themselves see
    it), and every partition's committed offset is its high watermark. Returns the
    description."""
    hw = high_watermarks(bootstrap, topic)
    size = len(members) if group_size is None else group_size
    state = {}

    def settled():
        for m in members:
            m.check()
            # A member giving up partitions is still in the current generation here (no
            # member is expelled while it holds uncommitted records): Kafka accepts its commit.
            assert not m.revocation_commit_errors, (
                f"{m.member_name}'s commit of processed records while giving up partitions "
                f"failed: {m.revocation_commit_errors[:3]} (other failed commits: "
                f"{m.commit_errors[:3]}); the partitions' next owner re-reads them")
        if check_members:
            check_members()
        own = [m.assignment() for m in members]
        state["members"] = {m.member_name: sorted(a) for m, a in zip(members, own)}
        if any(len(a) != per_member for a in own):
            return None
        if size == len(members) and frozenset().union(*own) != frozenset(range(PARTITIONS)):
            return None
        d = stable_with(bootstrap, group, size, per_member)
        state["described"] = summarize(d) if d else summarize(describe_group(bootstrap, group))
        if d is None:
            return None
        committed = group_offsets(bootstrap, group, topic)
        state["committed"] = committed
        return d if committed == hw else None

    def context():
        errors = {m.member_name: m.commit_errors[:3] for m in members if m.commit_errors}
        return f"last seen: {state}\nfailed commits: {errors or 'none'}"

    return wait_until(settled, timeout,
                      f"group {group} settled: {size} members x {per_member} partitions, "
                      f"committed offsets = high watermarks {hw}",
                      interval=0.2, on_timeout=context)


def join_staggered(first: Member, others: list[Member], bootstrap: str, group: str,
                   head: int) -> None:
    """``first`` reads at least ``head`` records alone and holds its last batch processed
    but uncommitted while the others join. It goes on once DescribeGroups lists them all:
    with an eager assignor the group is then still PreparingRebalance (``first`` has not
    rejoined), so ``first`` commits that batch, and maybe reads and commits more, during
    the rebalance; with cooperative-sticky the group rebalances around it meanwhile."""
    first.hold_at = head
    first.begin()
    wait_until(lambda: first.check() or first.paused.is_set(), SETTLE_TIMEOUT,
               f"{first.member_name} to read {head} records alone", interval=0.05)
    assert first.pending, "the held member has nothing uncommitted"
    for m in others:
        m.begin()

    def all_joined():
        for m in [first, *others]:
            m.check()
        return len(describe_group(bootstrap, group).members) == 1 + len(others)

    wait_until(all_joined, SETTLE_TIMEOUT, f"all members in group {group}", interval=0.05,
               on_timeout=lambda: summarize(describe_group(bootstrap, group)))
    first.resume()


def check_exactly_once_group(bootstrap: str, group: str, topic: str, members: list[Member],
                             head: int):
    """The exactly-once scenario for three members: a pre-produced set read with a
    mid-stream rebalance, then a second set read once the group is stable, each record by
    the owner of its partition. Returns the settled description."""
    produced = produce_set(bootstrap, topic, RECORDS, "pre")
    ledger = members[0].ledger
    join_staggered(members[0], members[1:], bootstrap, group, head)
    d = wait_settled(bootstrap, group, topic, members, per_member=2)
    by_client = {m.client_id: frozenset(tp.partition for tp in m.assignment.topic_partitions)
                 for m in d.members}
    assert by_client == {m.member_name: m.assignment() for m in members}, summarize(d)
    ledger.assert_exactly_once(produced)

    mark = len(ledger.snapshot())
    more = produce_set(bootstrap, topic, 600, "post")
    wait_settled(bootstrap, group, topic, members, per_member=2)
    ledger.assert_exactly_once(more, since=mark)
    owner = {p: name for name, parts in by_client.items() for p in parts}
    misread = [(m, p, o) for m, p, o, _ in ledger.snapshot()[mark:] if owner[p] != m]
    assert not misread, f"records read by a member not owning their partition: {misread[:5]}"
    for m in members:
        assert ledger.count(m.member_name) > 0, f"{m.member_name} read nothing"
    assert not [m for m in members if m.assignment() != by_client[m.member_name]], (
        "assignment changed while the group was stable")
    return d


# ------------------------------------------------------------ 1. three members, exactly once

RECORDS = 3000


@pytest.mark.parametrize("strategy", ["range", "roundrobin", "cooperative-sticky"])
def test_confluent_group_consumes_every_record_exactly_once(broker, strategy):
    topic = unique_topic("grp-ck")
    group = unique_group(f"ck-{strategy}")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    ledger = Ledger()
    members = [ConfluentMember(broker.bootstrap, group, topic, ledger, f"ck-{i}",
                               **{"partition.assignment.strategy": strategy})
               for i in range(3)]
    try:
        d = check_exactly_once_group(broker.bootstrap, group, topic, members, RECORDS // 6)
        assert d.partition_assignor == strategy, summarize(d)
        if strategy == "cooperative-sticky":
            # Incremental: the first member never gave up all its partitions at once.
            revoked = [parts for kind, parts in members[0].events if kind == "revoke"]
            assert revoked and all(len(r) < PARTITIONS for r in revoked), members[0].events
        else:
            # Eager: the first member gave up everything, then got its share back.
            assert [k for k, _ in members[0].events][:3] == ["assign", "revoke", "assign"], (
                members[0].events)
    finally:
        stop_all(members)


def test_kafka_python_group_consumes_every_record_exactly_once(broker):
    topic = unique_topic("grp-kp")
    group = unique_group("kp")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    ledger = Ledger()
    members = [KafkaPythonMember(broker.bootstrap, group, topic, ledger, f"kp-{i}") for i in range(3)]
    try:
        d = check_exactly_once_group(broker.bootstrap, group, topic, members, RECORDS // 6)
        assert d.partition_assignor == "range", summarize(d)
    finally:
        stop_all(members)


class KcatMember:
    """``kcat -G group topic`` (balanced consumer) with its output parsed as it comes."""

    def __init__(self, bootstrap: str, group: str, topic: str, name: str, log_dir: Path):
        assert KCAT, "kcat is not installed (scripts/test.sh installs it with apt-get)"
        self.name = name
        self.lock = threading.Lock()
        self.records: list[tuple[int, int, bytes]] = []
        self.stderr_path = log_dir / f"{name}.stderr"
        cmd = [KCAT, "-b", bootstrap, "-G", group, "-X", f"client.id={name}",
               "-X", "auto.offset.reset=earliest", "-X", "broker.address.family=v4",
               "-X", "session.timeout.ms=10000", "-X", "heartbeat.interval.ms=500",
               "-u", "-q", "-f", "%p %o %s\\n", topic]
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(die_with_us(cmd), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=err)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            p, o, v = line.rstrip(b"\n").split(b" ", 2)
            with self.lock:
                self.records.append((int(p), int(o), v))

    def snapshot(self) -> list[tuple[int, int, bytes]]:
        with self.lock:
            return list(self.records)

    def check_running(self) -> None:
        assert self.proc.poll() is None, (
            f"{self.name} exited with {self.proc.returncode}: "
            f"{self.stderr_path.read_text(errors='replace')[-2000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"{self.name} did not exit within 30s of SIGTERM")
        self.reader.join(10)
        return self.proc.returncode


def test_kcat_group_spreads_partitions_and_reads_everything(broker, tmp_path):
    topic = unique_topic("grp-kcat")
    group = unique_group("kcat")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    first = produce_set(broker.bootstrap, topic, 1200, "kcat-a")
    members = [KcatMember(broker.bootstrap, group, topic, f"kcat-{i}", tmp_path) for i in range(3)]
    try:
        def everything_read():
            for m in members:
                m.check_running()
            seen = {v for m in members for _, _, v in m.snapshot()}
            return seen >= {r.value for r in first}

        wait_until(everything_read, SETTLE_TIMEOUT, "the kcat group to read the pre-produced set",
                   interval=0.2,
                   on_timeout=lambda: f"read {[len(m.snapshot()) for m in members]}")
        d = wait_stable(broker.bootstrap, group, 3, per_member=2)
        owner = {}
        for m in d.members:
            for tp in m.assignment.topic_partitions:
                owner[tp.partition] = m.client_id
        spread = sorted(Counter(owner.values()).items())
        assert spread == [("kcat-0", 2), ("kcat-1", 2), ("kcat-2", 2)], summarize(d)
        at = {(r.partition, r.offset): r.value for r in first}
        for m in members:  # every record a process read is the one produced at that offset
            for p, o, v in m.snapshot():
                assert at.get((p, o)) == v, f"{m.name} read {(p, o, v)}, produced {at.get((p, o))!r}"

        # With the group stable, new records go to the process that owns their partition,
        # each to exactly one process.
        before = {m.name: len(m.snapshot()) for m in members}
        second = produce_set(broker.bootstrap, topic, 600, "kcat-b")
        want = {r.value for r in second}

        def second_read():
            for m in members:
                m.check_running()
            return sum(1 for m in members for _, _, v in m.snapshot()[before[m.name]:]
                       if v in want) >= len(want)

        wait_until(second_read, SETTLE_TIMEOUT,
                   "the kcat group to read the records produced once stable", interval=0.2)
        for m in members:
            new = [(p, o, v) for p, o, v in m.snapshot()[before[m.name]:] if v in want]
            assert new, f"{m.name} got none of the new records"
            wrong = [(p, o) for p, o, _ in new if owner[p] != m.name]
            assert not wrong, f"{m.name} read partitions it does not own: {wrong[:5]} (owners {owner})"
        read = Counter(v for m in members for _, _, v in m.snapshot()[before[m.name]:] if v in want)
        assert set(read) == want and max(read.values()) == 1, (
            f"records read more than once: {[v for v, n in read.items() if n > 1][:5]}")
        assert stable_with(broker.bootstrap, group, 3, 2) is not None, (
            summarize(describe_group(broker.bootstrap, group)))
    finally:
        codes = [m.stop() for m in members]
    assert codes == [0, 0, 0], f"kcat exit codes after SIGTERM: {codes}"
    wait_until(lambda: describe_group(broker.bootstrap, group).state == ConsumerGroupState.EMPTY,
               ADMIN_TIMEOUT, f"group {group} to be Empty after the kcat processes left")


# --------------------------------------------------------------- lone consumer start-up


@pytest.mark.parametrize("client", ["confluent-kafka", "kafka-python"])
def test_lone_consumer_gets_assignment_within_3s(broker, client):
    topic = unique_topic("grp-lone")
    group = unique_group("lone")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    produced = produce_set(broker.bootstrap, topic, 60, "lone")
    ledger = Ledger()
    cls = ConfluentMember if client == "confluent-kafka" else KafkaPythonMember
    member = cls(broker.bootstrap, group, topic, ledger, "lone")
    try:
        member.begin()
        wait_until(lambda: member.check() or member.first_assignment_at, 30,
                   "the lone consumer's first assignment")
        elapsed = member.first_assignment_at - member.subscribed_at
        assert elapsed < 3.0, f"subscribe() to first assignment took {elapsed:.2f}s (limit 3s)"
        assert member.assignment() == frozenset(range(PARTITIONS))
        wait_until(lambda: member.check() or ledger.count() >= len(produced), 30,
                   "the lone consumer to read everything")
        ledger.assert_exactly_once(produced)
    finally:
        member.stop()


# ------------------------------------------------------------------- 2. commit and resume


def test_committed_offsets_survive_restart_and_consumer_resumes(broker):
    from kafka import KafkaConsumer, TopicPartition as KTP

    topic = unique_topic("grp-resume")
    group = unique_group("resume")
    parts = 4  # partition 3 stays empty: nothing is ever committed for it
    create_topic(broker.bootstrap, topic, parts)
    produced = produce_set(broker.bootstrap, topic, 300, "resume", partitions=range(3))
    half = len(produced) // 2

    consumer = Consumer(confluent_conf(broker.bootstrap, **{
        "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 100}))
    consumed: list[tuple[int, int, bytes]] = []
    committed: dict[int, int] = {}
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while len(consumed) < half:
            assert time.monotonic() < deadline, f"read {len(consumed)} of {half} records"
            batch = consumer.consume(num_messages=min(40, half - len(consumed)), timeout=0.2)
            offsets = {}
            for msg in batch:
                assert msg.error() is None, msg.error()
                consumed.append((msg.partition(), msg.offset(), msg.value()))
                offsets[msg.partition()] = msg.offset() + 1
            if offsets:
                result = consumer.commit(
                    offsets=[TopicPartition(topic, p, o, f"meta-{p}-{o}") for p, o in offsets.items()],
                    asynchronous=False)
                assert all(tp.error is None for tp in result), result
                committed.update(offsets)
    finally:
        consumer.close()
    assert len(consumed) == half and len(set(consumed)) == half

    tps = [TopicPartition(topic, p) for p in range(parts)]
    expected = {p: committed.get(p, OFFSET_INVALID) for p in range(parts)}

    def confluent_committed() -> dict[int, tuple[int, str | None]]:
        c = Consumer(confluent_conf(broker.bootstrap,
                                    **{"group.id": group, "enable.auto.commit": False}))
        try:
            return {tp.partition: (tp.offset, tp.metadata) for tp in c.committed(tps, timeout=30)}
        finally:
            c.close()

    before = confluent_committed()
    assert {p: o for p, (o, _) in before.items()} == expected
    for p, o in committed.items():
        assert before[p][1] == f"meta-{p}-{o}", f"partition {p} committed metadata {before[p][1]!r}"

    broker.restart()

    assert confluent_committed() == before, "committed offsets changed over a broker restart"
    kp = KafkaConsumer(**_kp_common(broker.bootstrap), group_id=group, enable_auto_commit=False)
    try:
        for p in range(parts):
            got = kp.committed(KTP(topic, p))
            want = committed.get(p)  # kafka-python: None when nothing was committed
            assert got == want, f"kafka-python committed({p}) = {got}, expected {want}"
    finally:
        kp.close(autocommit=False)

    # A new member of the group resumes exactly after the committed offsets.
    ledger = Ledger()
    resumed = ConfluentMember(broker.bootstrap, group, topic, ledger, "resumed")
    rest = [r for r in produced if r.offset >= committed.get(r.partition, 0)]
    assert len(rest) == len(produced) - half
    try:
        resumed.begin()
        hw = high_watermarks(broker.bootstrap, topic, parts)
        wait_until(lambda: resumed.check() or group_offsets(broker.bootstrap, group, topic, parts)
                   == {p: (hw[p] if hw[p] else OFFSET_INVALID) for p in range(parts)},
                   SETTLE_TIMEOUT, "the resumed member to read and commit the rest", interval=0.2)
        ledger.assert_exactly_once(rest)
        first_read = {}
        for _, p, o, _ in ledger.snapshot():
            first_read.setdefault(p, o)
        starts = {p: committed.get(p, 0) for p in range(parts)}
        assert first_read == {p: o for p, o in starts.items() if o < hw[p]}, (
            f"first offsets read after the restart {first_read}, committed {committed}")
    finally:
        resumed.stop()


# ------------------------------------------------------ subprocess members (kill -9 able)


class MemberProcess:
    """This file run as a script: one confluent-kafka member in its own process, reporting
    assignments, records and commits as JSON lines (see ``_member_main``)."""

    def __init__(self, name: str, ledger: Ledger, log_dir: Path, **spec):
        self.name = name
        self.ledger = ledger
        self.lock = threading.Lock()
        self.events: list[dict] = []
        self.stderr_path = log_dir / f"{name}.{uuid.uuid4().hex[:6]}.stderr"
        spec = {"name": name, **spec}
        cmd = [sys.executable, str(Path(__file__).resolve()), "member", json.dumps(spec)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(die_with_us(cmd), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=err, env=env,
                                         cwd=Path(__file__).resolve().parent)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            ev = json.loads(line)
            if ev["ev"] == "rec":
                self.ledger.add(self.name, ev["p"], ev["o"], ev["v"].encode())
            with self.lock:
                self.events.append(ev)

    def check_running(self) -> None:
        assert self.proc.poll() is None, (
            f"member process {self.name} exited with {self.proc.returncode}:\n"
            f"{self.stderr_path.read_text(errors='replace')[-3000:]}")

    def assignment(self) -> frozenset[int]:
        """What the process currently owns, from its assign/revoke reports."""
        owned: frozenset[int] = frozenset()
        with self.lock:
            for ev in self.events:
                if ev["ev"] == "assign":
                    parts = frozenset(ev["parts"])
                    owned = owned | parts if ev.get("incremental") else parts
                elif ev["ev"] in ("revoke", "lost"):
                    owned = owned - frozenset(ev["parts"])
        return owned

    def kill9(self) -> None:
        self.check_running()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.reader.join(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.reader.join(10)


class _JsonLedger:
    def add(self, member, partition, offset, value):
        _emit(ev="rec", p=partition, o=offset, v=value.decode())


def _emit(**event) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _member_main(spec: dict) -> None:
    """Subprocess entry: run one ConfluentMember on this thread until SIGTERM."""
    conf = {"session.timeout.ms": spec.get("session_timeout_ms", 10000)}
    if spec.get("instance_id"):
        conf["group.instance.id"] = spec["instance_id"]
    member = ConfluentMember(spec["bootstrap"], spec["group"], spec["topic"], _JsonLedger(),
                             spec["name"], **conf)
    original = member._event

    def report(kind, partitions):
        parts = sorted(partitions)
        original(kind, parts)
        _emit(ev=kind, parts=parts, incremental=member.incremental)

    member._event = report
    original_commit = member.commit

    def commit(offsets):
        original_commit(offsets)
        _emit(ev="commit", offsets={str(p): o for p, o in offsets.items()})

    member.commit = commit
    signal.signal(signal.SIGTERM, lambda *_: member.stopping.set())
    member.run()  # on this thread
    if member.error:
        sys.stderr.write(member.error)
        sys.exit(1)


# ---------------------------------------------------------- 3. a dead member is expelled


def test_killed_member_is_expelled_and_survivors_take_over(broker, tmp_path):
    topic = unique_topic("grp-dead")
    group = unique_group("dead")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    ledger = Ledger()
    survivors = [ConfluentMember(broker.bootstrap, group, topic, ledger, f"alive-{i}")
                 for i in range(2)]
    doomed = None
    try:
        for m in survivors:
            m.begin()
        doomed = MemberProcess("doomed", ledger, tmp_path, bootstrap=broker.bootstrap, group=group,
                               topic=topic, session_timeout_ms=3000)
        d = wait_stable(broker.bootstrap, group, 3, per_member=2)
        doomed_id = next(m.member_id for m in d.members if m.client_id == "doomed")
        doomed_parts = member_partitions(d)[doomed_id]

        first = produce_set(broker.bootstrap, topic, 1200, "dead-a")
        wait_settled(broker.bootstrap, group, topic, survivors, per_member=2, group_size=3,
                     check_members=doomed.check_running)
        ledger.assert_exactly_once(first)
        assert doomed.assignment() == doomed_parts
        assert {p for m, p, _, _ in ledger.snapshot() if m == "doomed"} == doomed_parts

        doomed.kill9()
        mark = len(ledger.snapshot())

        def expelled():
            d = stable_with(broker.bootstrap, group, 2, per_member=3)
            return d if d and doomed_id not in member_partitions(d) else None

        d = wait_until(expelled, SETTLE_TIMEOUT,
                       f"the killed member to be expelled and its partitions {sorted(doomed_parts)} "
                       "reassigned", interval=0.2,
                       on_timeout=lambda: summarize(describe_group(broker.bootstrap, group)))
        taken = frozenset().union(*member_partitions(d).values())
        assert taken == frozenset(range(PARTITIONS))

        second = produce_set(broker.bootstrap, topic, 1200, "dead-b")
        wait_settled(broker.bootstrap, group, topic, survivors, per_member=3)
        ledger.assert_exactly_once(second, since=mark)
        readers = {(m, p) for m, p, _, _ in ledger.snapshot()[mark:]}
        assert {m for m, _ in readers} == {"alive-0", "alive-1"}, readers
        assert {p for _, p in readers} >= doomed_parts, readers
    finally:
        if doomed is not None:
            doomed.stop()
        stop_all(survivors)


# ----------------------------------------------------------------- 4. static membership


def test_static_member_restart_gets_same_partitions_without_rebalance(broker, tmp_path):
    topic = unique_topic("grp-static")
    group = unique_group("static")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    ledger = Ledger()
    # The dynamic member joins first and leads; the static one restarts.
    other = ConfluentMember(broker.bootstrap, group, topic, ledger, "other")
    first = second = None
    try:
        other.begin()
        wait_stable(broker.bootstrap, group, 1)
        first = MemberProcess("static", ledger, tmp_path, bootstrap=broker.bootstrap, group=group,
                              topic=topic, instance_id="static-1", session_timeout_ms=30000)
        d = wait_stable(broker.bootstrap, group, 2, per_member=3)
        wait_until(lambda: first.check_running() or len(first.assignment()) == 3, SETTLE_TIMEOUT,
                   "the static member to report its assignment")
        wait_until(lambda: other.check() or len(other.assignment()) == 3, SETTLE_TIMEOUT,
                   "the other member to settle on 3 partitions")
        by_instance = {m.group_instance_id: m for m in d.members}
        assert set(by_instance) == {None, "static-1"}, summarize(d)
        static_id = by_instance["static-1"].member_id
        other_id = by_instance[None].member_id
        before = member_partitions(d)
        assert before[static_id] == first.assignment()
        assert before[other_id] == other.assignment()
        other_events = other.event_count()

        first.kill9()
        # A static member is not gone until its session times out.
        d = describe_group(broker.bootstrap, group)
        assert member_partitions(d) == before and d.state == ConsumerGroupState.STABLE, summarize(d)

        second = MemberProcess("static", ledger, tmp_path, bootstrap=broker.bootstrap, group=group,
                               topic=topic, instance_id="static-1", session_timeout_ms=30000)
        wait_until(lambda: second.check_running() or second.assignment(), SETTLE_TIMEOUT,
                   "the restarted static member to get an assignment")
        assert second.assignment() == before[static_id]

        d = wait_stable(broker.bootstrap, group, 2, per_member=3)
        after = {m.group_instance_id: m for m in d.members}
        assert set(after) == {None, "static-1"}, summarize(d)
        assert after[None].member_id == other_id, "the other member's id changed"
        assert member_partitions(d)[other_id] == before[other_id]
        assert member_partitions(d)[after["static-1"].member_id] == before[static_id]
        assert other.event_count() == other_events, (
            f"the other member went through a rebalance: {other.events[other_events:]}")

        # Both read their own partitions.
        mark = len(ledger.snapshot())
        records = produce_set(broker.bootstrap, topic, 600, "static")
        wait_until(lambda: second.check_running() or other.check()
                   or len(ledger.snapshot()) - mark >= len(records), SETTLE_TIMEOUT,
                   "both members to read the new records", interval=0.2)
        ledger.assert_exactly_once(records, since=mark)
        for m, p, _, _ in ledger.snapshot()[mark:]:
            owner = "static" if p in before[static_id] else "other"
            assert m == owner, f"partition {p} read by {m}, owned by {owner}"
        assert other.event_count() == other_events, other.events[other_events:]
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.stop()
        other.stop()


# ------------------------------------------------------------------------------ 5. admin


def admin_error(future, timeout: float = ADMIN_TIMEOUT) -> KafkaError:
    try:
        result = future.result(timeout=timeout)
    except KafkaException as exc:
        return exc.args[0]
    raise AssertionError(f"admin request succeeded ({result!r}), expected an error")


def listed_groups(bootstrap: str, **kwargs) -> dict[str, ConsumerGroupState]:
    client = admin(bootstrap)  # must outlive the future: destroying it fails the request
    result = client.list_consumer_groups(request_timeout=ADMIN_TIMEOUT, **kwargs).result(
        timeout=ADMIN_TIMEOUT)
    assert not result.errors, result.errors
    return {g.group_id: g.state for g in result.valid}


def test_admin_list_describe_delete_and_offsets(broker):
    topic = unique_topic("grp-admin")
    group = unique_group("admin")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    produced = produce_set(broker.bootstrap, topic, 600, "admin")
    client = admin(broker.bootstrap)
    ledger = Ledger()
    members = [ConfluentMember(broker.bootstrap, group, topic, ledger, f"adm-{i}",
                               **{"partition.assignment.strategy": "roundrobin"}) for i in range(2)]
    try:
        for m in members:
            m.begin()
        wait_settled(broker.bootstrap, group, topic, members, per_member=3)
        ledger.assert_exactly_once(produced)

        assert listed_groups(broker.bootstrap).get(group) == ConsumerGroupState.STABLE
        assert group in listed_groups(broker.bootstrap, states={ConsumerGroupState.STABLE})
        assert group not in listed_groups(broker.bootstrap, states={ConsumerGroupState.EMPTY})
        d = describe_group(broker.bootstrap, group)
        assert d.state == ConsumerGroupState.STABLE, summarize(d)
        assert d.partition_assignor == "roundrobin", summarize(d)
        assert not d.is_simple_consumer_group
        assert sorted(m.client_id for m in d.members) == ["adm-0", "adm-1"]
        assert {m.client_id: frozenset(tp.partition for tp in m.assignment.topic_partitions)
                for m in d.members} == {m.member_name: m.assignment() for m in members}
        assert all(m.host for m in d.members), summarize(d)
        assert all(tp.topic == topic for m in d.members for tp in m.assignment.topic_partitions)

        err = admin_error(client.delete_consumer_groups([group], request_timeout=ADMIN_TIMEOUT)[group])
        assert err.code() == KafkaError.NON_EMPTY_GROUP, err
        # OffsetCommit with generation -1 is for groups without members.
        alter = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 1)])
        try:
            future = client.alter_consumer_group_offsets([alter], request_timeout=ADMIN_TIMEOUT)[group]
            errors = [tp.error for tp in future.result(timeout=ADMIN_TIMEOUT).topic_partitions]
        except KafkaException as exc:
            errors = [exc.args[0]]
        assert errors and all(e is not None and e.code() == KafkaError.UNKNOWN_MEMBER_ID
                              for e in errors), errors
        hw = high_watermarks(broker.bootstrap, topic)
        assert group_offsets(broker.bootstrap, group, topic) == hw
    finally:
        stop_all(members)

    wait_until(lambda: describe_group(broker.bootstrap, group).state == ConsumerGroupState.EMPTY,
               ADMIN_TIMEOUT, f"group {group} to be Empty after its members left")
    d = describe_group(broker.bootstrap, group)
    assert d.members == [], summarize(d)
    assert listed_groups(broker.bootstrap).get(group) == ConsumerGroupState.EMPTY
    assert group in listed_groups(broker.bootstrap, states={ConsumerGroupState.EMPTY})

    # Offsets of an empty group: read and altered.
    assert group_offsets(broker.bootstrap, group, topic) == hw
    alter = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 5),
                                                 TopicPartition(topic, 1, 0)])
    result = client.alter_consumer_group_offsets([alter], request_timeout=ADMIN_TIMEOUT)[group].result(
        timeout=ADMIN_TIMEOUT)
    assert all(tp.error is None for tp in result.topic_partitions), result.topic_partitions
    assert group_offsets(broker.bootstrap, group, topic) == {**hw, 0: 5, 1: 0}

    # A member joining now starts at the altered offsets.
    ledger2 = Ledger()
    late = ConfluentMember(broker.bootstrap, group, topic, ledger2, "late")
    try:
        late.begin()
        wait_until(lambda: late.check() or group_offsets(broker.bootstrap, group, topic) == hw,
                   SETTLE_TIMEOUT, "the late member to re-read partitions 0 and 1", interval=0.2)
        ledger2.assert_exactly_once([r for r in produced if (r.partition == 0 and r.offset >= 5)
                                     or r.partition == 1])
    finally:
        late.stop()
    wait_until(lambda: describe_group(broker.bootstrap, group).state == ConsumerGroupState.EMPTY,
               ADMIN_TIMEOUT, f"group {group} to be Empty again")

    deleted = client.delete_consumer_groups([group], request_timeout=ADMIN_TIMEOUT)[group]
    assert deleted.result(timeout=ADMIN_TIMEOUT) is None
    assert group not in listed_groups(broker.bootstrap)
    assert describe_group(broker.bootstrap, group).state == ConsumerGroupState.DEAD
    assert group_offsets(broker.bootstrap, group, topic) == dict.fromkeys(range(PARTITIONS),
                                                                          OFFSET_INVALID)
    err = admin_error(client.delete_consumer_groups([group], request_timeout=ADMIN_TIMEOUT)[group])
    assert err.code() == KafkaError.GROUP_ID_NOT_FOUND, err


# ------------------------------------------------------------------- 6. wire error codes


def subscription(topics: list[str]) -> bytes:
    """ConsumerProtocolSubscription v0 (what a consumer puts in its JoinGroup)."""
    return kw.i16(0) + kw.i32(len(topics)) + b"".join(kw.string(t) for t in topics) + kw.nbytes(None)


def assignment(topic: str, partitions: list[int]) -> bytes:
    """ConsumerProtocolAssignment v0 (what the leader hands out in SyncGroup)."""
    return (kw.i16(0) + kw.i32(1) + kw.string(topic) + kw.i32(len(partitions))
            + b"".join(kw.i32(p) for p in partitions) + kw.nbytes(None))


def join_group_v5(group: str, member_id: str, metadata: bytes, session_ms: int = 10000,
                  rebalance_ms: int = 30000, instance_id: str | None = None) -> bytes:
    return (kw.string(group) + kw.i32(session_ms) + kw.i32(rebalance_ms) + kw.string(member_id)
            + kw.string(instance_id) + kw.string("consumer") + kw.i32(1)
            + kw.string("range") + kw.nbytes(metadata))


def parse_join_group_v5(payload: bytes) -> dict:
    r = kw.Reader(payload)
    r.i32()  # throttle_time_ms
    out = {"error": r.i16(), "generation": r.i32(), "protocol": r.string(), "leader": r.string(),
           "member_id": r.string()}
    out["members"] = r.array(lambda: (r.string(), r.string(), r.nbytes()))
    return out


class RawMember:
    """One group member speaking the group APIs itself over one connection."""

    def __init__(self, bootstrap: str, group: str, topic: str = "unused"):
        self.conn = kw.KafkaConnection(bootstrap, timeout=30)
        self.group = group
        self.topic = topic
        self.member_id = ""
        self.generation = -1

    def close(self):
        self.conn.close()

    def send_join(self, session_ms: int = 10000) -> int:
        return self.conn.send_request(
            API_JOIN_GROUP, 5, join_group_v5(self.group, self.member_id, subscription([self.topic]),
                                             session_ms))

    def recv_join(self, corr: int, timeout: float = 30) -> dict:
        resp = parse_join_group_v5(self.conn.recv_response(corr, timeout))
        if resp["error"] == NONE:
            self.member_id, self.generation = resp["member_id"], resp["generation"]
        return resp

    def join(self, session_ms: int = 10000) -> dict:
        """JoinGroup v5 with KIP-394: a new member is first given its id."""
        resp = self.recv_join(self.send_join(session_ms))
        if resp["error"] == MEMBER_ID_REQUIRED:
            assert resp["member_id"], resp
            self.member_id = resp["member_id"]
            resp = self.recv_join(self.send_join(session_ms))
        return resp

    def sync(self, assignments: dict[str, bytes] | None = None) -> tuple[int, bytes | None]:
        body = (kw.string(self.group) + kw.i32(self.generation) + kw.string(self.member_id)
                + kw.string(None) + kw.i32(len(assignments or {})))
        for mid, data in (assignments or {}).items():
            body += kw.string(mid) + kw.nbytes(data)
        corr = self.conn.send_request(API_SYNC_GROUP, 3, body)
        r = kw.Reader(self.conn.recv_response(corr))
        r.i32()
        return r.i16(), r.nbytes()

    def heartbeat(self, generation: int | None = None, member_id: str | None = None) -> int:
        body = (kw.string(self.group) + kw.i32(self.generation if generation is None else generation)
                + kw.string(self.member_id if member_id is None else member_id) + kw.string(None))
        corr = self.conn.send_request(API_HEARTBEAT, 3, body)
        r = kw.Reader(self.conn.recv_response(corr))
        r.i32()
        return r.i16()

    def commit(self, topic: str, offsets: dict[int, int], generation: int | None = None,
               member_id: str | None = None) -> dict[int, int]:
        """OffsetCommit v7 -> partition -> error code."""
        body = (kw.string(self.group) + kw.i32(self.generation if generation is None else generation)
                + kw.string(self.member_id if member_id is None else member_id) + kw.string(None)
                + kw.i32(1) + kw.string(topic) + kw.i32(len(offsets)))
        for p, o in offsets.items():
            body += kw.i32(p) + kw.i64(o) + kw.i32(-1) + kw.string("")
        corr = self.conn.send_request(API_OFFSET_COMMIT, 7, body)
        r = kw.Reader(self.conn.recv_response(corr))
        r.i32()
        out = {}
        for _ in range(r.i32()):
            r.string()
            for _ in range(r.i32()):
                p, err = r.i32(), r.i16()
                out[p] = err
        return out

    def fetch_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]:
        """OffsetFetch v5 -> partition -> committed offset."""
        body = kw.string(self.group) + kw.i32(1) + kw.string(topic) + kw.i32(len(partitions))
        body += b"".join(kw.i32(p) for p in partitions)
        corr = self.conn.send_request(API_OFFSET_FETCH, 5, body)
        r = kw.Reader(self.conn.recv_response(corr))
        r.i32()
        out = {}
        for _ in range(r.i32()):
            r.string()
            for _ in range(r.i32()):
                p, offset = r.i32(), r.i64()
                r.i32()  # leader epoch
                r.string()  # metadata
                err = r.i16()
                assert err == NONE, f"OffsetFetch partition {p} error {err}"
                out[p] = offset
        assert r.i16() == NONE
        return out

    def leave(self) -> int:
        body = kw.string(self.group) + kw.i32(1) + kw.string(self.member_id) + kw.string(None)
        corr = self.conn.send_request(API_LEAVE_GROUP, 3, body)
        r = kw.Reader(self.conn.recv_response(corr))
        r.i32()
        top = r.i16()
        members = r.array(lambda: (r.string(), r.string(), r.i16()))
        assert top == NONE and [m[2] for m in members] == [NONE], (top, members)
        return top


def start_rebalance(a: RawMember, b: RawMember) -> int:
    """``a`` is the group's only member; ``b`` joins (KIP-394 round trip), which starts a
    rebalance that ``a`` learns of from its heartbeat. Returns b's pending JoinGroup."""
    resp = b.recv_join(b.send_join())
    assert resp["error"] == MEMBER_ID_REQUIRED, resp
    b.member_id = resp["member_id"]
    corr = b.send_join()
    wait_until(lambda: a.heartbeat() == REBALANCE_IN_PROGRESS, 30,
               "the first member's heartbeat to report the rebalance")
    return corr


def test_group_error_codes_on_the_wire(broker):
    topic = unique_topic("grp-wire")
    group = unique_group("wire")
    create_topic(broker.bootstrap, topic, 2)
    a, b = RawMember(broker.bootstrap, group, topic), RawMember(broker.bootstrap, group, topic)
    try:
        # Session timeouts below the broker's minimum (1000 ms) are refused.
        resp = a.recv_join(a.send_join(session_ms=500))
        assert resp["error"] == INVALID_SESSION_TIMEOUT, resp

        # KIP-394: a new member gets MEMBER_ID_REQUIRED and its id, then joins with it.
        resp = a.recv_join(a.send_join())
        assert resp["error"] == MEMBER_ID_REQUIRED and resp["member_id"], resp
        a.member_id = resp["member_id"]
        resp = a.recv_join(a.send_join())
        assert resp["error"] == NONE, resp
        assert resp["leader"] == a.member_id and resp["protocol"] == "range", resp
        assert [m[0] for m in resp["members"]] == [a.member_id], resp
        gen1 = a.generation
        everything = assignment(topic, [0, 1])
        assert a.sync({a.member_id: everything}) == (NONE, everything)
        assert a.heartbeat() == NONE
        assert a.commit(topic, {0: 3}) == {0: NONE}

        # Unknown members and groups, generations that are not the current one.
        assert a.heartbeat(member_id="nobody") == UNKNOWN_MEMBER_ID
        assert a.heartbeat(generation=gen1 + 1) == ILLEGAL_GENERATION
        assert a.commit(topic, {0: 4}, member_id="nobody") == {0: UNKNOWN_MEMBER_ID}
        assert a.commit(topic, {0: 4}, generation=gen1 + 1) == {0: ILLEGAL_GENERATION}
        stranger = RawMember(broker.bootstrap, unique_group("nogroup"))
        try:
            assert stranger.heartbeat(0, "nobody") == UNKNOWN_MEMBER_ID
        finally:
            stranger.close()
        assert a.fetch_offsets(topic, [0, 1]) == {0: 3, 1: -1}

        # A second member: both rejoin into the next generation.
        corr_b = start_rebalance(a, b)
        resp_a = a.join()
        resp_b = b.recv_join(corr_b)
        assert resp_a["error"] == NONE and resp_b["error"] == NONE, (resp_a, resp_b)
        gen2 = a.generation
        assert gen2 > gen1 and b.generation == gen2
        assert resp_a["leader"] == a.member_id == resp_b["leader"]
        assert sorted(m[0] for m in resp_a["members"]) == sorted([a.member_id, b.member_id])
        assert resp_b["members"] == []
        p0, p1 = assignment(topic, [0]), assignment(topic, [1])
        assert a.sync({a.member_id: p0, b.member_id: p1}) == (NONE, p0)
        assert b.sync() == (NONE, p1)

        # The old generation is stale now: its commits and heartbeats are refused.
        assert a.commit(topic, {0: 6}, generation=gen1) == {0: ILLEGAL_GENERATION}
        assert a.heartbeat(generation=gen1) == ILLEGAL_GENERATION
        assert a.fetch_offsets(topic, [0, 1]) == {0: 3, 1: -1}
        assert a.commit(topic, {0: 7}) == {0: NONE}
        assert b.commit(topic, {1: 2}) == {1: NONE}
        assert b.heartbeat() == NONE
        assert a.fetch_offsets(topic, [0, 1]) == {0: 7, 1: 2}

        # A member that left is unknown.
        left_id = b.member_id
        assert b.leave() == NONE
        assert b.heartbeat() == UNKNOWN_MEMBER_ID
        assert b.commit(topic, {1: 9}, member_id=left_id) == {1: UNKNOWN_MEMBER_ID}
        assert a.fetch_offsets(topic, [0, 1]) == {0: 7, 1: 2}
    finally:
        a.close()
        b.close()


def test_commit_accepted_while_group_prepares_rebalance(broker):
    """Kafka accepts an OffsetCommit of the current generation while the group is
    PreparingRebalance: that is when consumers commit in their revocation callback (the
    Java consumer's commit-before-rejoin, librdkafka's on_revoke). Refusing it makes the
    partitions' next owner re-read what was already processed."""
    topic = unique_topic("grp-prep")
    group = unique_group("prep")
    create_topic(broker.bootstrap, topic, 2)
    a, b = RawMember(broker.bootstrap, group, topic), RawMember(broker.bootstrap, group, topic)
    try:
        assert a.join()["error"] == NONE
        everything = assignment(topic, [0, 1])
        assert a.sync({a.member_id: everything}) == (NONE, everything)
        assert a.commit(topic, {0: 10, 1: 20}) == {0: NONE, 1: NONE}
        corr_b = start_rebalance(a, b)
        assert describe_group(broker.bootstrap, group).state == ConsumerGroupState.PREPARING_REBALANCING
        assert a.commit(topic, {0: 11, 1: 21}) == {0: NONE, 1: NONE}, (
            "OffsetCommit (v7, current generation and member) while PreparingRebalance")
        assert a.fetch_offsets(topic, [0, 1]) == {0: 11, 1: 21}
        assert a.join()["error"] == NONE
        assert b.recv_join(corr_b)["error"] == NONE
    finally:
        a.close()
        b.close()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "member":
        _member_main(json.loads(sys.argv[2]))
    else:
        sys.exit(f"usage: {sys.argv[0]} member '<json spec>'")
