"""Idempotent producers: InitProducerId and the per-partition sequence rules, end to end.

An idempotent producer gets a producer id and epoch from InitProducerId and numbers the
records it sends to each partition (``baseSequence`` in the RecordBatch header). For each
(partition, producer id) the broker keeps the epoch and the last five batches it appended:

* the next sequence is appended;
* a batch equal to one of the last five (same first and last sequence) is a duplicate: it is
  answered with its *original* base offset and not stored again;
* a gap is ``OUT_OF_ORDER_SEQUENCE_NUMBER`` (45) and stores nothing;
* an older epoch is ``INVALID_PRODUCER_EPOCH`` (47); a newer epoch must restart at sequence 0;
* several batches for one partition in one request from an idempotent producer are
  ``INVALID_RECORD`` (87).

The state is committed with the data and rebuilt from the WAL, so a retry after a clean
restart or a ``kill -9`` is still recognised.

The raw-wire tests build batches with ``kafka_wire`` (so they control the producer id, epoch
and sequences exactly); the client tests drive confluent-kafka (``enable.idempotence``) and
kafka-python 3.x (idempotent by default) and check on the wire that their batches really
carried producer ids and contiguous sequences. The last test kills the broker under an
idempotent librdkafka producer: librdkafka retries unanswered batches with the same
sequences, so every record must end up stored exactly once, in order. Its seed is printed
and can be fixed with STRATA_TEST_SEED.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter

import pytest
from confluent_kafka import KafkaError, Producer

from harness import wait_until
from kafka_clients import (
    _kp_common,
    confluent_conf,
    consume_confluent,
    create_topic,
    produce_confluent,
    Rec,
    unique_topic,
    wait_for_high_watermark,
    watermarks,
)
from kafka_wire import (
    API_FETCH,
    API_INIT_PRODUCER_ID,
    API_PRODUCE,
    INVALID_PRODUCER_EPOCH,
    INVALID_RECORD,
    NONE,
    OUT_OF_ORDER_SEQUENCE_NUMBER,
    BatchInfo,
    KafkaConnection,
    PartitionProduceResult,
    WireRecord,
    decode_batches,
    encode_record_batch,
    pick_version,
)

SEED = int(os.environ.get("STRATA_TEST_SEED", "20240613"))

# ------------------------------------------------------------------------- helpers


class Wire:
    """One raw connection plus the Produce/Fetch versions the broker and the tests share."""

    def __init__(self, bootstrap: str):
        self.conn = KafkaConnection(bootstrap, timeout=30)
        versions = self.conn.api_versions()
        self.versions = versions
        self.produce_version = pick_version(versions, API_PRODUCE, 3, 8)
        self.fetch_version = pick_version(versions, API_FETCH, 4, 11)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def init_producer_id(self, version: int = 1, **kw):
        return self.conn.init_producer_id(version, **kw)

    def new_producer(self) -> int:
        res = self.init_producer_id()
        assert res.error_code == NONE and res.producer_id >= 0 and res.producer_epoch == 0, res
        return res.producer_id

    def produce(self, topic: str, batch: bytes, acks: int = -1, partition: int = 0
                ) -> PartitionProduceResult:
        [res] = self.conn.produce(self.produce_version, {topic: {partition: batch}}, acks=acks,
                                  timeout=30)
        assert (res.topic, res.partition) == (topic, partition), res
        return res

    def batches(self, topic: str, partition: int = 0) -> list[BatchInfo]:
        """Every stored batch of the partition, from offset 0 to the high watermark."""
        out: list[BatchInfo] = []
        offset, high = 0, None
        deadline = time.monotonic() + 60
        while high is None or offset < high:
            assert time.monotonic() < deadline, f"raw fetch of {topic}/{partition} stuck at {offset}"
            error, parts = self.conn.fetch(self.fetch_version, topic, partition, offset)
            assert error == NONE, f"fetch error {error}"
            [part] = parts
            assert part.error_code == NONE, f"fetch {topic}/{partition}@{offset}: error {part.error_code}"
            high = part.high_watermark
            for b in decode_batches(part.records or b""):
                if b.last_offset >= offset:
                    assert b.crc_ok, f"bad CRC in the batch at {b.base_offset}"
                    out.append(b)
                    offset = b.last_offset + 1
        return out


def values(tag: str, first: int, count: int) -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(first, first + count)]


def idem_batch(pid: int, epoch: int, seq: int, vals: list[bytes]) -> bytes:
    """An idempotent producer's batch: records ``vals`` numbered from sequence ``seq``."""
    # A current timestamp: records older than retention.ms (7 days by default) may be deleted.
    return encode_record_batch([WireRecord(None, v) for v in vals], base_timestamp=int(time.time() * 1000),
                               producer_id=pid, producer_epoch=epoch, base_sequence=seq)


def expect(res: PartitionProduceResult, error: int, base_offset: int | None = None,
           what: str = "") -> None:
    got = (res.error_code, res.base_offset) if base_offset is not None else res.error_code
    want = (error, base_offset) if base_offset is not None else error
    assert got == want, (f"{what}: expected (error, base offset) {want}, got {got} "
                         f"(message {res.error_message!r})")


def stored_values(bootstrap: str, topic: str, partition: int = 0) -> list[tuple[int, bytes]]:
    return [(r.offset, r.value) for r in consume_confluent(bootstrap, topic, partition, timeout=60)]


def high_watermark(bootstrap: str, topic: str, partition: int = 0) -> int:
    return watermarks(bootstrap, topic, partition)[1]


# ---------------------------------------------------------------- 1. InitProducerId


def test_init_producer_id_hands_out_fresh_ids_and_bumps_transactional_epochs(broker):
    seen: list[int] = []
    with Wire(broker.bootstrap) as w:
        lo, hi = w.versions.get(API_INIT_PRODUCER_ID, (None, None))
        assert lo is not None and lo <= 0 and hi >= 4, (
            f"InitProducerId advertised as {lo}..{hi}, expected 0..4")
        for version in range(5):
            for _ in range(2):
                res = w.init_producer_id(version)
                assert res.error_code == NONE, f"v{version}: {res}"
                assert res.producer_id >= 0 and res.producer_epoch == 0, f"v{version}: {res}"
                seen.append(res.producer_id)
        assert len(set(seen)) == len(seen), f"producer ids handed out twice: {seen}"

        # A transactional id keeps its producer id; each InitProducerId bumps the epoch,
        # which fences the instance before it (the transaction coordinator's rule).
        txn_pid = None
        for version in range(5):
            res = w.init_producer_id(version, transactional_id="orders-txn")
            assert res.error_code == NONE, f"v{version} with a transactional id: {res}"
            assert res.producer_epoch == version, f"v{version}: epoch {res.producer_epoch}"
            assert txn_pid in (None, res.producer_id), f"v{version}: id changed: {res}"
            txn_pid = res.producer_id
        seen.append(txn_pid)

        # v3+ (KIP-360): an idempotent producer naming its current id and epoch gets a fresh
        # id at epoch 0, as Kafka's coordinator answers every non-transactional request.
        for version in (3, 4):
            pid = w.init_producer_id(version).producer_id
            seen.append(pid)
            fresh = w.init_producer_id(version, producer_id=pid, producer_epoch=0)
            assert fresh.error_code == NONE and fresh.producer_epoch == 0, (
                f"v{version} re-init of {pid}/0: {fresh}")
            assert fresh.producer_id not in seen, f"v{version}: id {fresh.producer_id} reused"
            seen.append(fresh.producer_id)
        # The connection is still usable after everything above.
        w.conn.api_versions()

    # Ids are never reused across restarts, clean or not: a reused id would inherit the
    # sequence state an earlier producer left on its partitions.
    for restart in (broker.restart, broker.crash_restart):
        restart()
        with Wire(broker.bootstrap) as w:
            for version in (0, 4):
                pid = w.new_producer() if version == 0 else w.init_producer_id(version).producer_id
                assert pid >= 0 and pid not in seen, (
                    f"after {restart.__name__}: producer id {pid} was handed out before ({seen})")
                seen.append(pid)


# ------------------------------------------------------------ 2. sequence rules (wire)


def test_sequence_rules_on_the_wire(broker):
    topic = unique_topic("idem-wire")
    create_topic(broker.bootstrap, topic, 1)
    with Wire(broker.bootstrap) as w:
        pid = w.new_producer()
        b0 = idem_batch(pid, 0, 0, values("a", 0, 5))
        first = w.produce(topic, b0)
        expect(first, NONE, what="seq 0..4")
        x = first.base_offset
        assert x >= 0

        # The identical batch again (a retry): the original offset, nothing stored.
        expect(w.produce(topic, b0), NONE, x, "retry of seq 0..4")
        assert high_watermark(broker.bootstrap, topic) == x + 5
        assert stored_values(broker.bootstrap, topic) == list(zip(range(x, x + 5), values("a", 0, 5)))

        # A gap: refused, nothing stored.
        expect(w.produce(topic, idem_batch(pid, 0, 10, values("gap", 10, 5))),
               OUT_OF_ORDER_SEQUENCE_NUMBER, what="seq 10 after 4")
        assert high_watermark(broker.bootstrap, topic) == x + 5

        # The next sequence lands right after the first batch.
        b5 = idem_batch(pid, 0, 5, values("a", 5, 5))
        expect(w.produce(topic, b5), NONE, x + 5, "seq 5..9")
        # Both are still remembered as duplicates, the older one too.
        expect(w.produce(topic, b0), NONE, x, "second retry of seq 0..4")
        expect(w.produce(topic, b5), NONE, x + 5, "retry of seq 5..9")
        # A batch overlapping a remembered one but not equal to it is not a duplicate.
        expect(w.produce(topic, idem_batch(pid, 0, 5, values("a", 5, 3))),
               OUT_OF_ORDER_SEQUENCE_NUMBER, what="seq 5..7 (a prefix of 5..9)")

        # Two batches for one partition in one request from an idempotent producer.
        two = (idem_batch(pid, 0, 10, values("two", 10, 1))
               + idem_batch(pid, 0, 11, values("two", 11, 1)))
        expect(w.produce(topic, two), INVALID_RECORD, what="two idempotent batches in one request")
        assert high_watermark(broker.bootstrap, topic) == x + 10

        # A second producer on the same partition has its own sequences.
        pid2 = w.new_producer()
        assert pid2 != pid
        expect(w.produce(topic, idem_batch(pid2, 0, 0, values("b", 0, 2))), NONE, x + 10,
               "second producer seq 0..1")

        # Epoch bump (named in the batch, as a producer resetting its sequences does): the old
        # epoch is fenced, the new one must start at 0.
        expect(w.produce(topic, idem_batch(pid, 1, 10, values("e1", 10, 3))),
               OUT_OF_ORDER_SEQUENCE_NUMBER, what="epoch 1 starting at seq 10")
        expect(w.produce(topic, idem_batch(pid, 1, 0, values("e1", 0, 3))), NONE, x + 12,
               "epoch 1 seq 0..2")
        expect(w.produce(topic, idem_batch(pid, 0, 10, values("old", 10, 5))),
               INVALID_PRODUCER_EPOCH, what="epoch 0 after the bump to 1")
        expect(w.produce(topic, b0), INVALID_PRODUCER_EPOCH, what="epoch 0 retry after the bump")
        # A higher epoch named only in the batch (no InitProducerId) starting at 0 is taken,
        # and fences epoch 1 in turn.
        expect(w.produce(topic, idem_batch(pid, 5, 0, values("e5", 0, 2))), NONE, x + 15,
               "epoch 5 seq 0..1")
        expect(w.produce(topic, idem_batch(pid, 1, 3, values("e1", 3, 1))),
               INVALID_PRODUCER_EPOCH, what="epoch 1 after epoch 5")
        # The other producer was not affected by any of this.
        expect(w.produce(topic, idem_batch(pid2, 0, 2, values("b", 2, 1))), NONE, x + 17,
               "second producer seq 2")

        want = (values("a", 0, 10) + values("b", 0, 2) + values("e1", 0, 3) + values("e5", 0, 2)
                + values("b", 2, 1))
        assert high_watermark(broker.bootstrap, topic) == x + len(want)
        assert stored_values(broker.bootstrap, topic) == list(zip(range(x, x + len(want)), want))

        # What is stored keeps each batch's producer fields.
        got = [(b.base_offset, b.producer_id, b.producer_epoch, b.base_sequence, b.record_count)
               for b in w.batches(topic)]
        assert got == [
            (x, pid, 0, 0, 5), (x + 5, pid, 0, 5, 5), (x + 10, pid2, 0, 0, 2),
            (x + 12, pid, 1, 0, 3), (x + 15, pid, 5, 0, 2), (x + 17, pid2, 0, 2, 1),
        ], got


def test_only_the_last_five_batches_are_remembered(broker):
    topic = unique_topic("idem-five")
    create_topic(broker.bootstrap, topic, 1)
    with Wire(broker.bootstrap) as w:
        pid = w.new_producer()
        sent = [idem_batch(pid, 0, 2 * i, values("f", 2 * i, 2)) for i in range(6)]
        bases = []
        for i, b in enumerate(sent):
            res = w.produce(topic, b, acks=1)
            expect(res, NONE, what=f"batch {i}")
            bases.append(res.base_offset)
        assert bases == list(range(bases[0], bases[0] + 12, 2)), bases
        for i in range(1, 6):
            expect(w.produce(topic, sent[i], acks=1), NONE, bases[i], f"retry of batch {i}")
        # The first batch fell out of the five remembered: a retry of it is out of order.
        expect(w.produce(topic, sent[0], acks=1), OUT_OF_ORDER_SEQUENCE_NUMBER,
               what="retry of a batch six batches back")
        wait_for_high_watermark(broker.bootstrap, topic, 0, bases[0] + 12)
        assert high_watermark(broker.bootstrap, topic) == bases[0] + 12
        assert [v for _, v in stored_values(broker.bootstrap, topic)] == values("f", 0, 12)


# ------------------------------------------------------------------ 3. across restarts


def test_duplicates_are_recognised_after_kill9(make_broker):
    # A flush interval far beyond the test: an acks=1 batch is only in the WAL when the broker
    # is killed, so the producer state must be rebuilt by the WAL replay.
    broker = make_broker("strata", args=["--flush-interval-ms", "3600000"])
    topic = unique_topic("idem-kill9")
    create_topic(broker.bootstrap, topic, 1)
    with Wire(broker.bootstrap) as w:
        pid = w.new_producer()
        b0 = idem_batch(pid, 0, 0, values("k", 0, 5))
        b5 = idem_batch(pid, 0, 5, values("k", 5, 5))
        r0 = w.produce(topic, b0, acks=1)
        expect(r0, NONE, what="seq 0..4 acks=1")
        x = r0.base_offset
        expect(w.produce(topic, b5, acks=1), NONE, x + 5, "seq 5..9 acks=1")
        assert high_watermark(broker.bootstrap, topic) <= x, "flushed despite the long interval"

    broker.crash_restart()  # state only in the WAL
    with Wire(broker.bootstrap) as w:
        expect(w.produce(topic, b0, acks=1), NONE, x, "retry of seq 0..4 after kill -9 (WAL)")
        expect(w.produce(topic, b5, acks=1), NONE, x + 5, "retry of seq 5..9 after kill -9 (WAL)")
        expect(w.produce(topic, idem_batch(pid, 0, 20, values("gap", 20, 1)), acks=1),
               OUT_OF_ORDER_SEQUENCE_NUMBER, what="gap after kill -9")
        # The replay flushes what it found; wait for that so the next kill -9 finds the first two
        # batches in the catalog and only the third in the WAL.
        wait_for_high_watermark(broker.bootstrap, topic, 0, x + 10)
        b10 = idem_batch(pid, 0, 10, values("k", 10, 5))
        expect(w.produce(topic, b10, acks=1), NONE, x + 10, "seq 10..14 acks=1")

    broker.crash_restart()  # state from the catalog plus the WAL
    with Wire(broker.bootstrap) as w:
        for b, base, what in ((b0, x, "0..4"), (b5, x + 5, "5..9"), (b10, x + 10, "10..14")):
            expect(w.produce(topic, b, acks=1), NONE, base, f"retry of seq {what} after 2nd kill -9")

    broker.restart()  # SIGTERM flushes everything
    with Wire(broker.bootstrap) as w:
        for b, base, what in ((b0, x, "0..4"), (b5, x + 5, "5..9"), (b10, x + 10, "10..14")):
            expect(w.produce(topic, b, acks=-1), NONE, base,
                   f"retry of seq {what} (acks=all) after a clean restart")
        assert high_watermark(broker.bootstrap, topic) == x + 15
        assert stored_values(broker.bootstrap, topic) == list(zip(range(x, x + 15), values("k", 0, 15)))


def test_duplicates_are_recognised_after_clean_restart_acks_all(each_broker):
    # Both catalogs (SQLite and PostgreSQL) keep the producer state and the id counter.
    broker = each_broker
    topic = unique_topic("idem-restart")
    create_topic(broker.bootstrap, topic, 1)
    with Wire(broker.bootstrap) as w:
        pid = w.new_producer()
        b0 = idem_batch(pid, 0, 0, values("r", 0, 5))
        r0 = w.produce(topic, b0, acks=-1)
        expect(r0, NONE, what="seq 0..4 acks=all")
        x = r0.base_offset

    broker.restart()
    with Wire(broker.bootstrap) as w:
        assert w.new_producer() != pid, "a producer id was handed out again after a restart"
        expect(w.produce(topic, b0, acks=-1), NONE, x, "retry of seq 0..4 after a clean restart")
        b5 = idem_batch(pid, 0, 5, values("r", 5, 5))
        expect(w.produce(topic, b5, acks=-1), NONE, x + 5, "seq 5..9 after a clean restart")

    broker.crash_restart()  # everything acknowledged with acks=all is in the catalog
    with Wire(broker.bootstrap) as w:
        expect(w.produce(topic, b0, acks=-1), NONE, x, "retry of seq 0..4 after kill -9")
        expect(w.produce(topic, b5, acks=-1), NONE, x + 5, "retry of seq 5..9 after kill -9")
        expect(w.produce(topic, idem_batch(pid, 0, 10, values("r", 10, 1)), acks=-1), NONE, x + 10,
               "seq 10 after kill -9")
        assert high_watermark(broker.bootstrap, topic) == x + 11
        assert stored_values(broker.bootstrap, topic) == list(zip(range(x, x + 11), values("r", 0, 11)))


# ------------------------------------------------------------------- 4. real clients

CLIENT_PARTITIONS = 3
CLIENT_RECORDS = 2000


def _produce_kafka_python_defaults(bootstrap: str, topic: str, records: list[Rec],
                                   timeout: float = 120) -> list[Rec]:
    """kafka-python 3.x with its defaults (idempotent, acks=all): nothing about idempotence set."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**_kp_common(bootstrap), linger_ms=5, max_block_ms=15000)
    try:
        assert producer.config["enable_idempotence"], "kafka-python did not default to idempotence"
        futures = [producer.send(topic, value=r.value, key=r.key, partition=r.partition)
                   for r in records]
        producer.flush(timeout=timeout)
        return [r.at(f.get(timeout=timeout).partition, f.get(timeout=timeout).offset)
                for r, f in zip(records, futures)]
    finally:
        producer.close(timeout=10)


@pytest.mark.parametrize("client", ["confluent-kafka", "kafka-python"])
def test_idempotent_clients_store_every_record_once_in_order(broker, client):
    topic = unique_topic(f"idem-{client}")
    create_topic(broker.bootstrap, topic, CLIENT_PARTITIONS)
    records = [Rec(None, f"{client}-{i:05d}".encode() + b"." * (i % 97),
                   partition=i % CLIENT_PARTITIONS) for i in range(CLIENT_RECORDS)]
    if client == "confluent-kafka":
        delivered = produce_confluent(broker.bootstrap, topic, records,
                                      **{"enable.idempotence": True})
    else:
        delivered = _produce_kafka_python_defaults(broker.bootstrap, topic, records)

    with Wire(broker.bootstrap) as w:
        pids = set()
        for p in range(CLIENT_PARTITIONS):
            want = [r.value for r in records if r.partition == p]
            acked = sorted(r.offset for r in delivered if r.partition == p)
            assert acked == list(range(len(want))), f"partition {p}: acknowledged offsets {acked[:20]}…"
            wait_for_high_watermark(broker.bootstrap, topic, p, len(want))
            stored = stored_values(broker.bootstrap, topic, p)
            assert [o for o, _ in stored] == list(range(len(want))), f"partition {p}: offsets"
            assert [v for _, v in stored] == want, f"partition {p}: records differ from those sent"
            for r in delivered:
                if r.partition == p:
                    assert stored[r.offset][1] == r.value, f"partition {p}: {r} acknowledged elsewhere"
            # The client really produced idempotently: every batch carries its producer id and
            # the sequences run on without a gap from 0.
            batches = w.batches(topic, p)
            pids |= {b.producer_id for b in batches}
            seq = 0
            for b in batches:
                assert b.producer_id >= 0 and b.base_sequence == seq, (
                    f"partition {p}: batch at {b.base_offset} has producer {b.producer_id} "
                    f"epoch {b.producer_epoch} sequence {b.base_sequence}, expected sequence {seq}")
                seq += b.record_count
        assert len(pids) == 1, f"batches from several producer ids: {pids}"


# ------------------------------------------------------------ 5. kill -9 under load

KILL_PARTITIONS = 3
KILL_ROUNDS = 3


class IdempotentLoad:
    """An idempotent confluent-kafka producer producing continuously from its own thread."""

    def __init__(self, bootstrap: str, topic: str, seed: int):
        self.topic = topic
        self.producer = Producer(confluent_conf(bootstrap, **{
            "acks": "all",
            "enable.idempotence": True,
            "max.in.flight.requests.per.connection": 5,
            "linger.ms": 2,
            "message.timeout.ms": 300000,       # retries (unbounded by default) never run out
            "request.timeout.ms": 10000,
            "error_cb": self._on_error,
        }))
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.sent: dict[bytes, int] = {}                     # value -> partition
        self.acked: dict[tuple[int, int], bytes] = {}
        self.double_acks: list[tuple[tuple[int, int], bytes, bytes]] = []
        self.failures: Counter[str] = Counter()
        self.fatal: list[str] = []
        self.client_errors: Counter[str] = Counter()
        self.unflushed = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="idempotent-load", daemon=True)

    @property
    def ack_count(self) -> int:
        with self.lock:
            return len(self.acked)

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
            key = (msg.partition(), msg.offset())
            if key in self.acked:
                self.double_acks.append((key, self.acked[key], msg.value()))
            self.acked[key] = msg.value()

    def _run(self) -> None:
        try:
            seq = 0
            while not self.stop_event.is_set():
                if len(self.producer) >= 2000:  # bound the backlog while the broker is down
                    self.producer.poll(0.05)
                    continue
                value = (f"{seq:09d}|{self.rng.getrandbits(64):016x}|".encode()
                         + b"x" * self.rng.randint(0, 300))
                partition = seq % KILL_PARTITIONS
                try:
                    self.producer.produce(self.topic, value=value, partition=partition,
                                          on_delivery=self._on_delivery)
                except BufferError:
                    self.producer.poll(0.05)
                    continue
                with self.lock:
                    self.sent[value] = partition
                seq += 1
                self.producer.poll(0)
            self.unflushed = self.producer.flush(120)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(150)
        assert not self.thread.is_alive(), "producer thread did not finish within 150s"
        if self.error is not None:
            raise self.error


def test_kill9_under_idempotent_load_stores_every_record_exactly_once(make_broker):
    broker = make_broker("strata")
    topic = unique_topic("idem-crash")
    create_topic(broker.bootstrap, topic, KILL_PARTITIONS)
    rng = random.Random(f"{SEED}-idempotent")
    print(f"seed {SEED} (set STRATA_TEST_SEED to replay)")
    load = IdempotentLoad(broker.bootstrap, topic, seed=rng.getrandbits(32))
    load.start()
    try:
        for round_no in range(1, KILL_ROUNDS + 1):
            target = load.ack_count + rng.randint(20, 1500)
            wait_until(lambda: load.ack_count >= target or load.error or load.fatal, 90,
                       f"round {round_no}: {target} acknowledged records (have {load.ack_count})",
                       on_timeout=broker.log_tail)
            assert load.error is None, f"producer thread failed: {load.error!r}"
            assert not load.fatal, f"fatal producer error: {load.fatal}"
            time.sleep(rng.uniform(0, 0.3))  # spread the kill over the flush cycle
            broker.kill9()
            print(f"round {round_no}: killed at {load.ack_count} acks, failures {dict(load.failures)}")
            broker.start()
        target = max(load.ack_count + 200, 1000)
        wait_until(lambda: load.ack_count >= target or load.error or load.fatal, 90,
                   "acknowledgements after the last restart", on_timeout=broker.log_tail)
    finally:
        load.stop()
    print(f"{len(load.acked)} acknowledged, {len(load.sent)} sent, failures {dict(load.failures)}, "
          f"client errors {dict(load.client_errors)}")
    assert not load.fatal, f"fatal producer error: {load.fatal}"
    assert load.unflushed == 0, f"{load.unflushed} records never got a delivery report"
    assert not load.double_acks, (
        f"{len(load.double_acks)} offsets were acknowledged twice, first: {load.double_acks[:3]}")
    assert len(load.acked) >= 1000, f"only {len(load.acked)} records acknowledged: test too weak"
    # Unbounded retries with a 5-minute message timeout: every record is delivered.
    assert not load.failures, f"delivery failures: {dict(load.failures)}"

    broker.kill9()
    broker.start()
    for p in range(KILL_PARTITIONS):
        acked = {off: v for (part, off), v in load.acked.items() if part == p}
        sent_here = [v for v, part in load.sent.items() if part == p]
        wait_for_high_watermark(broker.bootstrap, topic, p, max(acked, default=-1) + 1, timeout=60)
        low, high = watermarks(broker.bootstrap, topic, p)
        assert low == 0, f"partition {p}: log start offset {low}"
        records = consume_confluent(broker.bootstrap, topic, p, 0, high, timeout=120)
        offsets = [r.offset for r in records]
        assert offsets == list(range(high)), (
            f"partition {p}: offsets not contiguous 0..{high - 1}: first gap/dup near "
            f"{next((i for i, o in enumerate(offsets) if o != i), len(offsets))}")
        stored = [r.value for r in records]
        dupes = [v[:30] for v, n in Counter(stored).items() if n > 1]
        assert not dupes, (f"partition {p}: {len(dupes)} records stored more than once, e.g. "
                           f"{dupes[:3]} at offsets "
                           f"{[i for i, v in enumerate(stored) if v[:30] == dupes[0]]}")
        moved = {o: v for o, v in acked.items() if o >= high or stored[o] != v}
        assert not moved, (
            f"partition {p}: {len(moved)} acknowledged records missing or moved, e.g. "
            + ", ".join(f"offset {o}: acked {v[:20]!r} stored "
                        f"{stored[o][:20] if o < high else b'<none>'!r}"
                        for o, v in sorted(moved.items())[:5]))
        # Exactly once: the partition holds precisely the records sent to it, each once.
        assert sorted(stored) == sorted(sent_here), (
            f"partition {p}: {len(stored)} stored vs {len(sent_here)} sent; "
            f"unknown {len(set(stored) - set(sent_here))}, missing {len(set(sent_here) - set(stored))}")
        # … and in the order they were produced (the value starts with the produce counter).
        counters = [int(v[:9]) for v in stored]
        assert counters == sorted(counters), (
            f"partition {p}: records out of produce order near offset "
            f"{next(i for i in range(1, len(counters)) if counters[i] < counters[i - 1])}")
