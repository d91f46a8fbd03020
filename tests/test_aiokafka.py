"""aiokafka (the asyncio Kafka client, pure Python) works against Strata unchanged.

aiokafka has its own protocol implementation, so it is a fourth independent
client stack next to kcat, confluent-kafka and kafka-python. These tests prove:

* Produce and consume in a group: ``AIOKafkaProducer`` with ``acks='all'`` and
  ``enable_idempotence=True`` (InitProducerId, sequenced batches) sends keyed
  records with headers to a 3-partition topic, letting its default partitioner
  place them by key. An ``AIOKafkaConsumer`` in a consumer group reads every
  record back at exactly the partition and offset the producer's RecordMetadata
  reported, with the same key, value and headers, and commits. The committed
  offsets read back (OffsetFetch) are the high watermarks. A second consumer in
  the same group, started after the first left, is positioned at the committed
  offsets and reads only records produced after the commit — nothing old. A raw
  Fetch shows every stored batch carries the producer id and gap-free sequences.
* Partition split: two consumers in one group both get partitions, their
  assignments are disjoint and cover the topic, and each receives exactly the
  records of its own partitions. Once one stops (LeaveGroup), the other is given
  every partition and goes on from the committed offsets: it reads everything
  produced since, and nothing twice.
* Admin: ``AIOKafkaAdminClient`` creates a topic (a second create is refused
  with TOPIC_ALREADY_EXISTS), lists it and describes its partitions; the topic
  is also visible through confluent-kafka's Metadata.

Each test runs its coroutine with ``asyncio.run``; every await is bounded with
``asyncio.wait_for`` (see `bounded`), and waits for a condition poll it with a
deadline — no test depends on a sleep.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Awaitable, Callable, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from kafka_clients import (
    assert_idempotent_batches,
    create_topic,
    list_topics,
    unique_topic,
    wait_for_topic,
    watermarks,
)

PARTITIONS = 3
OP_TIMEOUT = 30.0  # one client call: start, send, commit, stop, an admin request
SETTLE_TIMEOUT = 60.0  # a group converging or a consumer catching up

TOPIC_ALREADY_EXISTS = 36

T = TypeVar("T")

# (partition, offset, key, value, headers): everything a round trip must keep.
Row = tuple[int, int, "bytes | None", "bytes | None", tuple[tuple[str, bytes], ...]]


async def bounded(aw: Awaitable[T], what: str, timeout: float = OP_TIMEOUT) -> T:
    """``await asyncio.wait_for(aw, timeout)``, failing with a message naming ``what``."""
    try:
        return await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out after {timeout:.0f}s: {what}") from None


async def poll_until(predicate: Callable[[], object], what: str, timeout: float = SETTLE_TIMEOUT,
                     context: Callable[[], str] | None = None, interval: float = 0.05):
    """Poll a synchronous ``predicate`` on the event loop until it is truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{context()}" if context else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        await asyncio.sleep(interval)


def unique_group(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def row(msg) -> Row:
    return (msg.partition, msg.offset, msg.key, msg.value, tuple((k, v) for k, v in msg.headers))


def consumer(bootstrap: str, topic: str, group: str, **extra) -> AIOKafkaConsumer:
    conf = dict(bootstrap_servers=bootstrap, group_id=group, client_id=f"{group}-member",
                auto_offset_reset="earliest", enable_auto_commit=False, check_crcs=True,
                fetch_max_wait_ms=100, heartbeat_interval_ms=300, session_timeout_ms=10000,
                request_timeout_ms=int(OP_TIMEOUT * 1000), retry_backoff_ms=50)
    conf.update(extra)
    return AIOKafkaConsumer(topic, **conf)


async def produce(producer: AIOKafkaProducer, topic: str,
                  records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]],
                  partition: Callable[[int], int | None] = lambda i: None) -> list[Row]:
    """Send every (key, value, headers) and return them as rows with the partition and
    offset of their RecordMetadata (default partitioner unless ``partition`` says)."""
    futures = [
        await bounded(producer.send(topic, value=v, key=k, headers=h, partition=partition(i)),
                      f"enqueueing record {i} for {topic}")
        for i, (k, v, h) in enumerate(records)
    ]
    metas = await bounded(asyncio.gather(*futures), f"acks for {len(records)} records to {topic}")
    return [(md.partition, md.offset, k, v, tuple(h))
            for md, (k, v, h) in zip(metas, records)]


async def read_exactly(c: AIOKafkaConsumer, count: int, what: str,
                       timeout: float = SETTLE_TIMEOUT) -> list[Row]:
    """getmany() until ``count`` records arrived (more is an error the caller sees)."""
    out: list[Row] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(
                f"{what}: read {len(out)} of {count} records in {timeout:.0f}s "
                f"(assignment {sorted(tp.partition for tp in c.assignment())}); got {out[:5]}...")
        batches = await bounded(c.getmany(timeout_ms=200), f"{what}: getmany")
        for msgs in batches.values():
            out.extend(row(m) for m in msgs)
    return out


def contiguous_offsets(rows: list[Row]) -> dict[int, list[int]]:
    by_partition: dict[int, list[int]] = {}
    for p, o, *_ in rows:
        by_partition.setdefault(p, []).append(o)
    return {p: sorted(offs) for p, offs in by_partition.items()}


# ---------------------------------------------------------------- produce and consume


def test_idempotent_produce_group_consume_commit_and_resume(broker):
    topic = unique_topic("aiokafka-rt")
    group = unique_group("aiokafka-rt")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]

    first = [(f"key-{i}".encode(), f"value-{i} héllo".encode("utf-8"),
              [("seq", str(i).encode()), ("client", b"aiokafka"), ("seq", b"dup-key"),
               ("empty", b"")])
             for i in range(30)]
    fresh = [(f"fresh-key-{i}".encode(), f"fresh-{i}".encode(), [("seq", str(i).encode())])
             for i in range(12)]

    async def scenario():
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                                    enable_idempotence=True, linger_ms=5,
                                    request_timeout_ms=int(OP_TIMEOUT * 1000))
        await bounded(producer.start(), "AIOKafkaProducer.start (InitProducerId)")
        try:
            sent = await produce(producer, topic, first)

            # RecordMetadata: the key partitioner used every partition, offsets dense from 0.
            offsets = contiguous_offsets(sent)
            assert set(offsets) == set(range(PARTITIONS)), (
                f"30 keys should land on all {PARTITIONS} partitions, got {offsets}")
            for p, offs in offsets.items():
                assert offs == list(range(len(offs))), f"partition {p} acked offsets {offs}"
                low, high = watermarks(broker.bootstrap, topic, p)
                assert (low, high) == (0, len(offs)), (
                    f"partition {p}: watermarks {(low, high)} after {len(offs)} acked records")

            # A group member reads everything back, as acknowledged.
            c1 = consumer(broker.bootstrap, topic, group)
            await bounded(c1.start(), "first consumer start")
            try:
                got = await read_exactly(c1, len(sent), "first consumer")
                assert sorted(got) == sorted(sent), (
                    "consumed records differ from the produced ones:\n"
                    f"missing {sorted(set(sent) - set(got))[:5]}\n"
                    f"unexpected {sorted(set(got) - set(sent))[:5]}")
                assert len(got) == len(set(got)), "a record was delivered twice"
                assert c1.assignment() == set(tps), f"lone member assignment {c1.assignment()}"

                await bounded(c1.commit(), "first consumer commit")
                for tp in tps:
                    committed = await bounded(c1.committed(tp), f"committed({tp})")
                    assert committed == len(offsets[tp.partition]), (
                        f"{tp}: committed offset {committed}, expected the high watermark "
                        f"{len(offsets[tp.partition])}")
            finally:
                await bounded(c1.stop(), "first consumer stop (LeaveGroup)")

            fresh_sent = await produce(producer, topic, fresh)
            assert {p for p, *_ in fresh_sent} == set(range(PARTITIONS)), (
                f"fresh keys should cover every partition: {contiguous_offsets(fresh_sent)}")
        finally:
            await bounded(producer.stop(), "producer stop")

        # The next member of the group starts at the committed offsets: only the fresh records.
        c2 = consumer(broker.bootstrap, topic, group)
        await bounded(c2.start(), "second consumer start")
        try:
            got = await read_exactly(c2, len(fresh_sent), "second consumer")
            old = [r for r in got if r in set(sent)]
            assert not old, f"second consumer re-read {len(old)} committed records, e.g. {old[:3]}"
            assert sorted(got) == sorted(fresh_sent), (
                f"second consumer read {sorted(got)[:5]}..., expected {sorted(fresh_sent)[:5]}...")
            for tp in tps:
                first_fresh = min(o for p, o, *_ in fresh_sent if p == tp.partition)
                assert first_fresh == len(offsets[tp.partition])
                position = await bounded(c2.position(tp), f"position({tp})")
                assert position == first_fresh + sum(1 for p, *_ in fresh_sent if p == tp.partition), (
                    f"{tp}: position {position} after reading the fresh records")
        finally:
            await bounded(c2.stop(), "second consumer stop")

    asyncio.run(scenario())
    assert_idempotent_batches(broker.bootstrap, topic, PARTITIONS)


# ---------------------------------------------------------------------- partition split


class Member:
    """An AIOKafkaConsumer polled by its own task; commits after every non-empty batch."""

    def __init__(self, name: str, bootstrap: str, topic: str, group: str):
        self.name = name
        self.topic = topic
        self.client = consumer(bootstrap, topic, group, client_id=name)
        self.rows: list[Row] = []
        self.error: BaseException | None = None
        self.task: asyncio.Task | None = None
        self.stopping = False

    async def start(self) -> "Member":
        await bounded(self.client.start(), f"{self.name} start")
        self.task = asyncio.create_task(self._run(), name=self.name)
        return self

    async def _run(self) -> None:
        # Ended by a flag, not Task.cancel(): before Python 3.12, asyncio.wait_for can swallow
        # a cancellation that arrives as the awaited call completes.
        try:
            while not self.stopping:
                batches = await bounded(self.client.getmany(timeout_ms=200), f"{self.name} getmany")
                if not batches:
                    continue
                for msgs in batches.values():
                    self.rows.extend(row(m) for m in msgs)
                await bounded(self.client.commit({tp: msgs[-1].offset + 1
                                                  for tp, msgs in batches.items() if msgs}),
                              f"{self.name} commit")
        except BaseException as exc:  # reported by check()
            self.error = exc

    def partitions(self) -> frozenset[int]:
        return frozenset(tp.partition for tp in self.client.assignment())

    def check(self) -> None:
        assert self.error is None, f"{self.name} failed: {self.error!r}"

    async def stop(self) -> None:
        self.stopping = True
        try:
            if self.task is not None:
                await bounded(asyncio.shield(self.task), f"{self.name} poll loop to end")
        finally:
            await bounded(self.client.stop(), f"{self.name} stop (LeaveGroup)")
        self.check()


def test_two_members_split_partitions_and_survivor_takes_over(broker):
    topic = unique_topic("aiokafka-split")
    group = unique_group("aiokafka-split")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    everything = frozenset(range(PARTITIONS))

    def records(tag: str, per_partition: int):
        return [(f"{tag}-k{i}".encode(), f"{tag}-{i}".encode(), [("tag", tag.encode())])
                for i in range(per_partition * PARTITIONS)]

    async def scenario():
        a = await Member("member-a", broker.bootstrap, topic, group).start()
        b = await Member("member-b", broker.bootstrap, topic, group).start()
        members = [a, b]
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                                    enable_idempotence=True)
        await bounded(producer.start(), "producer start")
        try:
            def split():
                for m in members:
                    m.check()
                pa, pb = a.partitions(), b.partitions()
                return pa and pb and not (pa & pb) and (pa | pb) == everything

            await poll_until(split, "both members to hold disjoint assignments covering the topic",
                             context=lambda: f"a={sorted(a.partitions())} b={sorted(b.partitions())}")
            owned = {m.name: m.partitions() for m in members}

            # Records for every partition go to that partition's owner only.
            batch1 = records("one", 4)
            sent1 = await produce(producer, topic, batch1, partition=lambda i: i % PARTITIONS)
            await poll_until(lambda: len(a.rows) + len(b.rows) >= len(sent1),
                             f"the two members to read {len(sent1)} records",
                             context=lambda: f"a read {len(a.rows)}, b read {len(b.rows)}")
            for m in members:
                m.check()
                assert m.partitions() == owned[m.name], (
                    f"{m.name}'s assignment changed from {sorted(owned[m.name])} to "
                    f"{sorted(m.partitions())} without a membership change")
                want = sorted(r for r in sent1 if r[0] in owned[m.name])
                assert sorted(m.rows) == want, (
                    f"{m.name} owns {sorted(owned[m.name])} but read {sorted(m.rows)[:5]}..., "
                    f"expected {want[:5]}...")

            # Every batch is committed before member-a leaves.
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            highs = {p: sum(1 for r in sent1 if r[0] == p) for p in range(PARTITIONS)}

            async def committed():
                return {tp.partition: await bounded(b.client.committed(tp), f"committed({tp})")
                        for tp in tps}

            deadline = time.monotonic() + SETTLE_TIMEOUT
            while (seen := await committed()) != highs:
                assert time.monotonic() < deadline, f"committed offsets {seen}, expected {highs}"
                await asyncio.sleep(0.1)

            await a.stop()
            members.remove(a)
            await poll_until(lambda: b.check() or b.partitions() == everything,
                             "the surviving member to be assigned every partition",
                             context=lambda: f"b={sorted(b.partitions())}")

            b_before = len(b.rows)
            sent2 = await produce(producer, topic, records("two", 3),
                                  partition=lambda i: i % PARTITIONS)
            await poll_until(lambda: len(b.rows) - b_before >= len(sent2),
                             f"the survivor to read the {len(sent2)} new records",
                             context=lambda: f"read {len(b.rows) - b_before}: {b.rows[b_before:][:5]}")
            b.check()
            after = b.rows[b_before:]
            assert sorted(after) == sorted(sent2), (
                f"after taking over, member-b read {len(after)} records; old ones re-read: "
                f"{sorted(set(after) & set(sent1))[:5]}; missing new ones: "
                f"{sorted(set(sent2) - set(after))[:5]}")
        finally:
            try:
                for m in members:
                    await m.stop()
            finally:
                await bounded(producer.stop(), "producer stop")

    asyncio.run(scenario())


# -------------------------------------------------------------------------------- admin


def test_admin_client_creates_and_lists_topic(broker):
    try:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    except ImportError as exc:
        pytest.skip(f"this aiokafka has no admin client (aiokafka.admin): {exc}")
    for method in ("create_topics", "list_topics", "describe_topics"):
        if not hasattr(AIOKafkaAdminClient, method):
            pytest.skip(f"AIOKafkaAdminClient.{method} is absent in this aiokafka version")

    topic = unique_topic("aiokafka-admin")

    async def scenario():
        client = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap,
                                     request_timeout_ms=int(OP_TIMEOUT * 1000))
        await bounded(client.start(), "admin client start")
        try:
            resp = await bounded(client.create_topics(
                [NewTopic(topic, num_partitions=2, replication_factor=1)]), "CreateTopics")
            errors = {t[0]: t[1] for t in resp.topic_errors}
            assert errors == {topic: 0}, f"CreateTopics answered {resp.topic_errors}"

            again = await bounded(client.create_topics(
                [NewTopic(topic, num_partitions=2, replication_factor=1)]), "CreateTopics again")
            errors = {t[0]: t[1] for t in again.topic_errors}
            assert errors == {topic: TOPIC_ALREADY_EXISTS}, (
                f"re-creating {topic} answered {again.topic_errors}, "
                f"expected TOPIC_ALREADY_EXISTS ({TOPIC_ALREADY_EXISTS})")

            names = await bounded(client.list_topics(), "list_topics (Metadata)")
            assert topic in names, f"{topic} not in list_topics(): {names}"

            described = await bounded(client.describe_topics([topic]), "describe_topics")
            assert len(described) == 1, f"describe_topics([{topic}]) returned {described}"
            d = described[0]
            assert d["topic"] == topic and d["error_code"] == 0, f"describe_topics: {d}"
            assert sorted(p["partition"] for p in d["partitions"]) == [0, 1], (
                f"{topic} should have partitions [0, 1]: {d['partitions']}")
            assert all(p["error_code"] == 0 and p["leader"] >= 0 for p in d["partitions"]), (
                f"every partition should be led: {d['partitions']}")
        finally:
            await bounded(client.close(), "admin client close")

    asyncio.run(scenario())

    # Another client stack agrees.
    wait_for_topic(broker.bootstrap, topic, 2)
    assert len(list_topics(broker.bootstrap)[topic].partitions) == 2
