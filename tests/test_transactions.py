"""Kafka transactions (KIP-98) end to end, with real clients.

A transactional producer (``transactional.id``) gets its producer id and epoch from the
transaction coordinator (FindCoordinator key_type=1, InitProducerId), registers the partitions
it writes (AddPartitionsToTxn) and the groups whose offsets it commits (AddOffsetsToTxn,
TxnOffsetCommit), and ends each transaction with EndTxn: the broker then appends a control
batch (a COMMIT or ABORT marker) to every partition of the transaction. A ``read_committed``
consumer reads only up to the last stable offset (LSO: the first offset of the oldest open
transaction) and drops aborted records, using the aborted-transactions list of the Fetch
response; a ``read_uncommitted`` consumer reads everything. Neither ever gets a control record.

These tests check, with confluent-kafka (librdkafka 2.16) and kafka-python 3.x:

* commit, abort, commit over three partitions: read_committed sees exactly the records of the
  two committed transactions, read_uncommitted all three; the log holds one marker per
  transaction and partition (COMMIT, ABORT, COMMIT), each between its transaction's records
  and the next (on both broker flavours for confluent-kafka; once for kafka-python);
* the exactly-once loop: a consume–transform–produce loop that commits its input offsets with
  ``send_offsets_to_transaction`` writes every transformed input exactly once to the output,
  even though one of its transactions is aborted after its records were written and the
  consumer restarts from the group's committed offsets; the group ends committed at the
  input's end offsets;
* an abandoned transaction holds the LSO (read_committed consumers see nothing after it)
  until its ``transaction.timeout.ms`` runs out; then the broker aborts it, the records
  produced after it become readable, its own never do, its producer cannot commit it, and a
  new producer with the same transactional.id initialises and commits;
* fencing: a second producer with the same transactional.id aborts the first one's open
  transaction; the first one's commit fails with the fatal error its client expects
  (librdkafka ``_FENCED``, kafka-python ``ProducerFencedError``), a raw Produce at its epoch
  gets INVALID_PRODUCER_EPOCH (47), and the second producer keeps working;
* durability: a committed transaction stays committed, and an open one stays open (hidden)
  and is aborted by its timeout, across a clean restart and a ``kill -9``;
* admin (kafka-python's KafkaAdminClient, KIP-664): ListTransactions, DescribeTransactions
  and DescribeProducers report an open transaction as Ongoing with its partitions and its
  first offset, then CompleteCommit / CompleteAbort. confluent-kafka's AdminClient has no
  transaction listing, so kafka-python's is used.

Waits are bounded polls (``wait_until``). Kafka writes markers after EndTxn returns, so a
test reads only once every partition has settled (LSO == high watermark: nothing open).
The only time-dependent statements are of the form "the transaction timeout cannot have run
out yet, so it must still be open": they are asserted only when the elapsed time proves it.
"""

from __future__ import annotations

import gc
import struct
import threading
import time
import uuid
import zlib
from dataclasses import dataclass

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

import kafka_wire as kw
from harness import wait_until
from kafka_clients import (
    Rec,
    _consumer_conf,
    _hdrs,
    _kp_common,
    confluent_conf,
    create_topic,
    produce_confluent,
    unique_topic,
)

OP_TIMEOUT = 30.0          # one transactional API call / one read
SETTLE_TIMEOUT = 30.0      # markers written after EndTxn, the LSO catching up
ABANDON_TIMEOUT_MS = 3000  # transaction.timeout.ms of abandoned transactions
RESTART_TIMEOUT_MS = 6000  # … of the transaction left open across a restart
# The broker checks for timed-out transactions at least every second; this bound leaves room.
ABORT_SLACK = 30.0

OFFSET_INVALID = -1001     # librdkafka: no committed offset
INVALID_PRODUCER_EPOCH = 47

# Control record types (the key of the single record of a control batch: version, type).
ABORT, COMMIT = 0, 1
ATTR_TRANSACTIONAL = 0x10
ATTR_CONTROL = 0x20


@pytest.fixture(autouse=True)
def release_clients(make_broker):
    """Frees the test's librdkafka instances (some are caught in reference cycles, e.g. with
    a ``pytest.raises`` traceback) before its brokers stop, so none keeps reconnecting."""
    yield
    gc.collect()


def unique_txid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def vals(tag: str, count: int) -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(count)]


def bounded(fn, timeout: float, what: str):
    """Run a blocking client call (kafka-python's transactional calls take no timeout) on a
    thread and fail if it has not returned within ``timeout``; its exception is re-raised."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised below
            box["error"] = exc

    thread = threading.Thread(target=run, name=what, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"{what} did not return within {timeout}s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# ------------------------------------------------------------- confluent producer


class TxnProducer:
    """A confluent-kafka transactional producer that records its delivery reports.

    The callbacks close over plain containers, not over ``self``: no reference cycle keeps
    the librdkafka instance alive (and reconnecting to a stopped broker) after a test."""

    def __init__(self, bootstrap: str, txid: str, timeout_ms: int | None = None, **extra):
        self.txid = txid
        offsets: dict[bytes, tuple[int, int]] = {}   # value -> (partition, offset)
        failures: list[str] = []
        client_errors: list[str] = []
        self.offsets, self.failures, self.client_errors = offsets, failures, client_errors

        def on_error(err: KafkaError) -> None:
            client_errors.append(str(err))

        def on_delivery(err, msg) -> None:
            if err is not None:
                failures.append(f"{msg.value()!r}: {err}")
            else:
                offsets[msg.value()] = (msg.partition(), msg.offset())

        self._on_delivery = on_delivery
        conf = confluent_conf(bootstrap, **{
            "transactional.id": txid,
            "acks": "all",
            "linger.ms": 5,
            "error_cb": on_error,
        })
        if timeout_ms is not None:
            conf["transaction.timeout.ms"] = timeout_ms
            # librdkafka: socket.timeout.ms must be <= transaction.timeout.ms + 100.
            conf["socket.timeout.ms"] = min(conf["socket.timeout.ms"], timeout_ms)
        conf.update(extra)
        self.producer = Producer(conf)

    def init(self) -> "TxnProducer":
        self.producer.init_transactions(OP_TIMEOUT)
        return self

    def begin(self) -> None:
        self.producer.begin_transaction()

    def send(self, topic: str, partition: int, values: list[bytes]) -> None:
        for v in values:
            self.producer.produce(topic, value=v, key=v[:8], partition=partition,
                                  on_delivery=self._on_delivery)
        self.producer.poll(0)

    def flush(self) -> None:
        """Wait until every record is written (acknowledged); fail on a failed delivery."""
        left = self.producer.flush(OP_TIMEOUT)
        assert left == 0, f"{self.txid}: {left} records undelivered after {OP_TIMEOUT}s"
        assert not self.failures, f"{self.txid}: delivery failures {self.failures[:5]}"

    def commit(self) -> None:
        self.flush()
        self.producer.commit_transaction(OP_TIMEOUT)

    def abort(self) -> None:
        # Flushed first, so the aborted records really are in the log (librdkafka would purge
        # unsent ones) and EndTxn never overtakes AddPartitionsToTxn (librdkafka#4849).
        self.flush()
        self.producer.abort_transaction(OP_TIMEOUT)

    def offsets_of(self, values: list[bytes]) -> list[int]:
        return [self.offsets[v][1] for v in values]


def txn_error(excinfo) -> KafkaError:
    err = excinfo.value.args[0]
    assert isinstance(err, KafkaError), f"expected a KafkaError, got {excinfo.value!r}"
    return err


# ------------------------------------------------------------------------ reading


def end_offset(bootstrap: str, topic: str, partition: int, isolation: str) -> int:
    """ListOffsets LATEST at ``isolation``: the LSO for read_committed, the high watermark
    for read_uncommitted."""
    c = Consumer(_consumer_conf(bootstrap, **{"isolation.level": isolation}))
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10,
                                       cached=False)[1]
    finally:
        c.close()


def stable_and_high(bootstrap: str, topic: str, partition: int,
                    timeout: float = OP_TIMEOUT) -> tuple[int, int]:
    """(LSO, high watermark); retried while the broker cannot answer (just restarted)."""
    def ask():
        try:
            return (end_offset(bootstrap, topic, partition, "read_committed"),
                    end_offset(bootstrap, topic, partition, "read_uncommitted"))
        except KafkaException:
            return None

    return wait_until(ask, timeout, f"ListOffsets answers for {topic}/{partition}", interval=0.2)


def wait_settled(bootstrap: str, topic: str, partitions: int, at_least: dict[int, int] | None = None,
                 timeout: float = SETTLE_TIMEOUT) -> dict[int, int]:
    """Wait until no transaction is open on any partition (LSO == high watermark) and each
    high watermark is at least ``at_least[p]``; returns the high watermarks."""
    at_least = at_least or {}
    state: dict[int, tuple[int, int]] = {}

    def settled():
        for p in range(partitions):
            state[p] = stable_and_high(bootstrap, topic, p)
        return all(lso == high and high >= at_least.get(p, 1) for lso, high in state.values())

    wait_until(settled, timeout, f"{topic}: every partition settled (LSO == high watermark)",
               interval=0.2, on_timeout=lambda: f"(LSO, high watermark) per partition: {state}")
    return {p: high for p, (_, high) in state.items()}


def read_confluent(bootstrap: str, topic: str, partition: int, isolation: str,
                   timeout: float = OP_TIMEOUT) -> list[Rec]:
    """Everything a confluent consumer at ``isolation`` delivers from the start of the
    partition up to its end offset (LSO or high watermark, taken first). Control records are
    never delivered, so the end is the partition-EOF event at that offset, not a record."""
    end = end_offset(bootstrap, topic, partition, isolation)
    if end <= 0:
        return []
    c = Consumer(_consumer_conf(bootstrap, **{"isolation.level": isolation}))
    out: list[Rec] = []
    try:
        c.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, (
                f"{isolation} read of {topic}/{partition} did not reach offset {end} in "
                f"{timeout}s: {len(out)} records, last offset {out[-1].offset if out else None}")
            msg = c.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    if msg.offset() >= end:
                        return out
                    continue
                raise AssertionError(f"{isolation} consumer error on {topic}/{partition}: "
                                     f"{msg.error()}")
            out.append(Rec(msg.key(), msg.value(), _hdrs(msg.headers()), msg.timestamp()[1],
                           msg.partition(), msg.offset()))
    finally:
        c.close()


def read_values(bootstrap: str, topic: str, partition: int, isolation: str) -> list[bytes]:
    return [r.value for r in read_confluent(bootstrap, topic, partition, isolation)]


def read_kafka_python(bootstrap: str, topic: str, partition: int, isolation: str,
                      timeout: float = OP_TIMEOUT) -> list[tuple[int, bytes]]:
    """(offset, value) of everything a kafka-python consumer at ``isolation`` returns up to
    its end offset; kafka-python moves its position past control and aborted batches."""
    from kafka import KafkaConsumer, TopicPartition as KTP

    consumer = KafkaConsumer(**_kp_common(bootstrap), group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", isolation_level=isolation,
                             fetch_max_wait_ms=100, check_crcs=True)
    try:
        tp = KTP(topic, partition)
        consumer.assign([tp])
        end = consumer.end_offsets([tp], timeout_ms=15000)[tp]
        consumer.seek_to_beginning(tp)
        out: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + timeout
        while consumer.position(tp, timeout_ms=15000) < end:
            assert time.monotonic() < deadline, (
                f"kafka-python {isolation} read of {topic}/{partition} did not reach {end} in "
                f"{timeout}s (position {consumer.position(tp)}, {len(out)} records)")
            for records in consumer.poll(timeout_ms=200).values():
                out.extend((m.offset, m.value) for m in records)
        return out
    finally:
        consumer.close()


# ---------------------------------------------------------------- the raw log


@dataclass
class StoredBatch:
    base_offset: int
    last_offset: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    transactional: bool
    marker: int | None  # ABORT / COMMIT for a control batch, None for data


def _batch_records(raw: bytes, attributes: int) -> bytes:
    body = raw[61:]  # the records follow the 61-byte RecordBatch header
    codec = attributes & 0x07
    if codec == 0:
        return body
    if codec == 1:
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if codec == 3:
        import lz4.frame
        return lz4.frame.decompress(body)
    if codec == 4:
        import zstandard
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    raise AssertionError(f"control batch compressed with codec {codec}: not decoded by the test")


def _control_type(raw: bytes, attributes: int) -> int:
    """The type (0 ABORT, 1 COMMIT) in the key of a control batch's record."""
    records = _batch_records(raw, attributes)
    pos = kw.read_zigzag_varint(records, 0)[1]      # record length
    pos += 1                                         # record attributes
    pos = kw.read_zigzag_varint(records, pos)[1]     # timestamp delta
    pos = kw.read_zigzag_varint(records, pos)[1]     # offset delta
    key_len, pos = kw.read_zigzag_varint(records, pos)
    assert key_len >= 4, f"control record key of {key_len} bytes"
    version, kind = struct.unpack_from(">hh", records, pos)
    assert version == 0 and kind in (ABORT, COMMIT), f"control record key v{version} type {kind}"
    return kind


def stored_batches(bootstrap: str, topic: str, partition: int,
                   timeout: float = OP_TIMEOUT) -> list[StoredBatch]:
    """Every batch of the partition up to its high watermark, read raw (read_uncommitted)."""
    out: list[StoredBatch] = []
    with kw.KafkaConnection(bootstrap, timeout=30) as conn:
        version = kw.pick_version(conn.api_versions(), kw.API_FETCH, 4, 11)
        offset, high = 0, None
        deadline = time.monotonic() + timeout
        while high is None or offset < high:
            assert time.monotonic() < deadline, f"raw fetch of {topic}/{partition} stuck at {offset}"
            error, parts = conn.fetch(version, topic, partition, offset)
            assert error == kw.NONE, f"raw fetch of {topic}/{partition}: error {error}"
            [part] = parts
            assert part.error_code == kw.NONE, (
                f"raw fetch of {topic}/{partition}@{offset}: error {part.error_code}")
            high = part.high_watermark
            for b in kw.decode_batches(part.records or b""):
                if b.last_offset < offset:
                    continue
                assert b.crc_ok, f"{topic}/{partition}: bad CRC in the batch at {b.base_offset}"
                control = bool(b.attributes & ATTR_CONTROL)
                out.append(StoredBatch(
                    b.base_offset, b.last_offset, b.producer_id, b.producer_epoch,
                    b.base_sequence, bool(b.attributes & ATTR_TRANSACTIONAL),
                    _control_type(b.raw, b.attributes) if control else None))
                offset = b.last_offset + 1
    return out


def markers(batches: list[StoredBatch]) -> list[tuple[int, str]]:
    """(offset, "COMMIT"/"ABORT") of every control batch, in log order."""
    return [(b.base_offset, "COMMIT" if b.marker == COMMIT else "ABORT")
            for b in batches if b.marker is not None]


def transactional_batch(pid: int, epoch: int, seq: int, values: list[bytes]) -> bytes:
    """A transactional producer's data batch (isTransactional attribute set, CRC recomputed)."""
    raw = bytearray(kw.encode_record_batch([kw.WireRecord(None, v) for v in values],
                                           producer_id=pid, producer_epoch=epoch,
                                           base_sequence=seq))
    (attributes,) = struct.unpack_from(">h", raw, kw.BATCH_ATTRIBUTES_OFFSET)
    struct.pack_into(">h", raw, kw.BATCH_ATTRIBUTES_OFFSET, attributes | ATTR_TRANSACTIONAL)
    struct.pack_into(">I", raw, kw.BATCH_CRC_OFFSET,
                     kw.crc32c(bytes(raw[kw.BATCH_ATTRIBUTES_OFFSET:])))
    return bytes(raw)


def check_layout(batches: list[StoredBatch], txns: list[tuple[str, list[int]]], what: str) -> None:
    """``txns`` is [(outcome, offsets of its records in this partition)] in order: the log
    must hold exactly one marker of that outcome per transaction, after its records and
    before the next transaction's, and the transaction's data batches must be transactional."""
    got = markers(batches)
    assert [kind for _, kind in got] == [outcome for outcome, _ in txns], (
        f"{what}: markers {got}, expected one per transaction: {[o for o, _ in txns]}")
    for i, ((outcome, offsets), (marker_at, _)) in enumerate(zip(txns, got)):
        assert marker_at > max(offsets), (
            f"{what}: the {outcome} marker of transaction {i} at {marker_at} precedes its records "
            f"{offsets}")
        if i + 1 < len(txns):
            assert marker_at < min(txns[i + 1][1]), (
                f"{what}: the marker of transaction {i} at {marker_at} is not before the records "
                f"of transaction {i + 1} {txns[i + 1][1]}")
    data_offsets = {o for _, offsets in txns for o in offsets}
    for b in batches:
        if b.marker is None and b.base_offset in data_offsets:
            assert b.transactional and b.producer_id >= 0, (
                f"{what}: the data batch at {b.base_offset} is not marked transactional: {b}")


# ====================================================================== 1. confluent


PARTITIONS = 3
PER_PARTITION = 4


def test_commit_abort_commit_read_committed_and_uncommitted(each_broker):
    """confluent-kafka: three transactions over three partitions — committed, aborted,
    committed, each flushed (written) before it ends. A read_committed consumer sees exactly
    the records of the first and third in produce order; a read_uncommitted one sees all
    three. No control record is delivered: the offsets skip one per transaction and
    partition, where the log holds the COMMIT, ABORT, COMMIT markers."""
    bootstrap = each_broker.bootstrap
    topic = unique_topic("txn-cac")
    create_topic(bootstrap, topic, PARTITIONS)
    producer = TxnProducer(bootstrap, unique_txid("cac")).init()
    outcomes = ["COMMIT", "ABORT", "COMMIT"]
    sent = {p: [vals(f"t{i}-p{p}", PER_PARTITION) for i in range(len(outcomes))]
            for p in range(PARTITIONS)}
    for i, outcome in enumerate(outcomes):
        producer.begin()
        for p in range(PARTITIONS):
            producer.send(topic, p, sent[p][i])
        if outcome == "COMMIT":
            producer.commit()
        else:
            producer.abort()

    wait_settled(bootstrap, topic, PARTITIONS)
    for p in range(PARTITIONS):
        committed = read_confluent(bootstrap, topic, p, "read_committed")
        everything = read_confluent(bootstrap, topic, p, "read_uncommitted")
        assert [r.value for r in committed] == sent[p][0] + sent[p][2], (
            f"partition {p}: read_committed delivered {[r.value for r in committed]}")
        assert [r.value for r in everything] == sent[p][0] + sent[p][1] + sent[p][2], (
            f"partition {p}: read_uncommitted delivered {[r.value for r in everything]}")
        # Both see each record at the offset its delivery report gave.
        for r in everything:
            assert producer.offsets[r.value] == (p, r.offset), (
                f"partition {p}: {r.value!r} read at {r.offset}, acknowledged at "
                f"{producer.offsets[r.value]}")
        txn_offsets = [producer.offsets_of(sent[p][i]) for i in range(len(outcomes))]
        for i in range(1, len(outcomes)):
            assert min(txn_offsets[i]) > max(txn_offsets[i - 1]) + 1, (
                f"partition {p}: no offset left for a marker between transactions: {txn_offsets}")
        check_layout(stored_batches(bootstrap, topic, p), list(zip(outcomes, txn_offsets)),
                     f"partition {p}")


# ===================================================================== 2. kafka-python


def test_kafka_python_transactions(broker):
    """kafka-python 3.x: KafkaProducer(transactional_id) commits, aborts and commits a
    transaction over two partitions; a KafkaConsumer with isolation_level='read_committed'
    gets the committed records only and one with 'read_uncommitted' all of them, at the
    offsets the producer was told. librdkafka's read_committed consumer agrees."""
    from kafka import KafkaProducer

    bootstrap = broker.bootstrap
    topic = unique_topic("txn-kp")
    create_topic(bootstrap, topic, 2)
    producer = KafkaProducer(**_kp_common(bootstrap), transactional_id=unique_txid("kp"),
                             linger_ms=5, max_block_ms=15000)
    sent = {p: [vals(f"kp{i}-p{p}", 3) for i in range(3)] for p in range(2)}
    acked: dict[bytes, tuple[int, int]] = {}
    try:
        assert producer.config["enable_idempotence"], "a transactional producer is idempotent"
        bounded(producer.init_transactions, OP_TIMEOUT, "kafka-python init_transactions")
        for i, outcome in enumerate(["commit", "abort", "commit"]):
            producer.begin_transaction()
            futures = [(v, producer.send(topic, value=v, partition=p))
                       for p in range(2) for v in sent[p][i]]
            bounded(lambda: producer.flush(timeout=OP_TIMEOUT), OP_TIMEOUT + 5, "flush")
            for v, f in futures:
                md = f.get(timeout=OP_TIMEOUT)
                acked[v] = (md.partition, md.offset)
            end = producer.commit_transaction if outcome == "commit" else producer.abort_transaction
            bounded(end, OP_TIMEOUT, f"kafka-python {outcome}_transaction")
    finally:
        producer.close(timeout=10)

    wait_settled(bootstrap, topic, 2)
    for p in range(2):
        committed = read_kafka_python(bootstrap, topic, p, "read_committed")
        everything = read_kafka_python(bootstrap, topic, p, "read_uncommitted")
        assert [v for _, v in committed] == sent[p][0] + sent[p][2], (
            f"partition {p}: read_committed returned {committed}")
        assert [v for _, v in everything] == sent[p][0] + sent[p][1] + sent[p][2], (
            f"partition {p}: read_uncommitted returned {everything}")
        assert all(acked[v] == (p, o) for o, v in everything), (
            f"partition {p}: records read at other offsets than acknowledged: {everything} "
            f"vs {acked}")
        assert read_values(bootstrap, topic, p, "read_committed") == sent[p][0] + sent[p][2]
        check_layout(stored_batches(bootstrap, topic, p),
                     [(o, [acked[v][1] for v in sent[p][i]])
                      for i, o in enumerate(["COMMIT", "ABORT", "COMMIT"])],
                     f"partition {p}")


# ================================================================ 3. exactly-once loop

EOS_PARTITIONS = 3
EOS_RECORDS = 60
EOS_BATCH = 8
EOS_ABORT_AT = 2  # the third transaction is aborted


def _eos_consumer(bootstrap: str, group: str, topic: str) -> Consumer:
    c = Consumer(confluent_conf(bootstrap, **{
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "fetch.wait.max.ms": 100,
    }))
    c.subscribe([topic])
    return c


def test_consume_transform_produce_is_exactly_once(broker):
    """The exactly-once loop with confluent-kafka: a group consumer (read_committed, no
    auto-commit) and a transactional producer; each batch is transformed into an output
    topic and its input positions committed with send_offsets_to_transaction in the same
    transaction. The third transaction is aborted after its records were written, and the
    consumer is closed and replaced, resuming from the group's committed offsets: the aborted
    range is processed again. The output read with read_committed holds every transformed
    input exactly once, in input order per partition (read_uncommitted also shows the aborted
    copies), and the group's committed offsets equal the input's end offsets."""
    bootstrap = broker.bootstrap
    source, sink = unique_topic("eos-in"), unique_topic("eos-out")
    group = f"eos-{uuid.uuid4().hex[:10]}"
    create_topic(bootstrap, source, EOS_PARTITIONS)
    create_topic(bootstrap, sink, EOS_PARTITIONS)
    inputs = produce_confluent(bootstrap, source, [
        Rec(f"k{i}".encode(), f"in-{i:03d}".encode(), partition=i % EOS_PARTITIONS)
        for i in range(EOS_RECORDS)])
    input_ends = {p: 1 + max(r.offset for r in inputs if r.partition == p)
                  for p in range(EOS_PARTITIONS)}

    producer = TxnProducer(bootstrap, unique_txid("eos")).init()
    consumer = _eos_consumer(bootstrap, group, source)
    transactions = {"committed": 0, "aborted": 0}
    aborted_values: list[bytes] = []
    try:
        deadline = time.monotonic() + 90
        while True:
            assert time.monotonic() < deadline, (
                f"the loop did not finish in 90s: {transactions}, assignment "
                f"{consumer.assignment()}")
            msgs = consumer.consume(num_messages=EOS_BATCH, timeout=0.5)
            for m in msgs:
                assert not m.error(), f"consumer error: {m.error()}"
            if not msgs:
                assignment = consumer.assignment()
                if len(assignment) == EOS_PARTITIONS:
                    positions = consumer.position(assignment)
                    if all(tp.offset >= input_ends[tp.partition] for tp in positions):
                        break
                continue
            producer.begin()
            for m in msgs:
                producer.send(sink, m.partition(), [b"out:" + m.value()])
            producer.producer.send_offsets_to_transaction(
                consumer.position(consumer.assignment()), consumer.consumer_group_metadata(),
                OP_TIMEOUT)
            if transactions["committed"] + transactions["aborted"] == EOS_ABORT_AT:
                producer.abort()
                transactions["aborted"] += 1
                aborted_values = [b"out:" + m.value() for m in msgs]
                # The processor "restarts": its replacement resumes at the committed offsets.
                consumer.close()
                consumer = _eos_consumer(bootstrap, group, source)
            else:
                producer.commit()
                transactions["committed"] += 1
    finally:
        consumer.close()
    assert transactions["aborted"] == 1 and transactions["committed"] >= 3, transactions

    wait_settled(bootstrap, sink, EOS_PARTITIONS)
    for p in range(EOS_PARTITIONS):
        want = [b"out:" + r.value for r in inputs if r.partition == p]
        got = read_values(bootstrap, sink, p, "read_committed")
        assert got == want, (
            f"output partition {p} (read_committed) is not its transformed input exactly once "
            f"in order: missing {sorted(set(want) - set(got))}, duplicated "
            f"{sorted({v for v in got if got.count(v) > 1})}, got {got}")
    everything = [v for p in range(EOS_PARTITIONS)
                  for v in read_values(bootstrap, sink, p, "read_uncommitted")]
    extra = list(everything)
    for r in inputs:
        extra.remove(b"out:" + r.value)
    assert sorted(extra) == sorted(aborted_values), (
        f"read_uncommitted should hold the aborted transaction's copies besides every output "
        f"once: extra {extra}, aborted {aborted_values}")

    checker = Consumer(confluent_conf(bootstrap, **{
        "group.id": group, "enable.auto.commit": False, "isolation.level": "read_committed"}))
    try:
        committed = checker.committed(
            [TopicPartition(source, p) for p in range(EOS_PARTITIONS)], timeout=OP_TIMEOUT)
    finally:
        checker.close()
    got = {tp.partition: tp.offset for tp in committed}
    assert all(tp.error is None for tp in committed), committed
    assert got == input_ends, f"group {group} committed {got}, input ends at {input_ends}"


# ============================================================ 4. abandoned transaction


def test_abandoned_transaction_is_aborted_after_its_timeout(broker):
    """A transaction left open (records written, never committed nor aborted) with
    transaction.timeout.ms=3000: while it is open the LSO stays at its first record, so a
    read_committed consumer gets nothing at or after it — not even the non-transactional
    records produced after it. Once the timeout has run out the broker aborts it: the LSO
    moves past, the consumer reads the later records and never the abandoned ones, the log
    holds an ABORT marker after them, the abandoned producer cannot commit any more, and a
    new producer with the same transactional.id initialises and commits."""
    bootstrap = broker.bootstrap
    topic = unique_topic("txn-abandon")
    create_topic(bootstrap, topic, 1)
    txid = unique_txid("abandon")
    before = produce_confluent(bootstrap, topic, [Rec(None, v, partition=0) for v in vals("before", 3)])

    abandoned = TxnProducer(bootstrap, txid, timeout_ms=ABANDON_TIMEOUT_MS).init()
    began = time.monotonic()
    abandoned.begin()
    abandoned.send(topic, 0, vals("abandoned", 5))
    abandoned.flush()
    first_open = min(abandoned.offsets_of(vals("abandoned", 5)))
    after = produce_confluent(bootstrap, topic, [Rec(None, v, partition=0) for v in vals("after", 3)])
    high = max(r.offset for r in after) + 1
    assert first_open == max(r.offset for r in before) + 1 and min(r.offset for r in after) > first_open

    lso = end_offset(bootstrap, topic, 0, "read_committed")
    still_open = time.monotonic() - began < ABANDON_TIMEOUT_MS / 1000
    if still_open:  # the timeout cannot have run out: the transaction is open
        assert lso == first_open, (
            f"open transaction from offset {first_open}: LSO is {lso}, high watermark {high}")
    else:
        print("the transaction timeout may have run out before the LSO was read: not checked")

    # A read_committed consumer reads along; every delivery is stamped with the time it came.
    consumer = Consumer(_consumer_conf(bootstrap, **{"isolation.level": "read_committed"}))
    got: list[tuple[float, int, bytes]] = []
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])

        def read_all_after():
            msg = consumer.poll(0.2)
            if msg is not None:
                if msg.error():
                    assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                else:
                    got.append((time.monotonic() - began, msg.offset(), msg.value()))
            return any(v == b"after-2" for _, _, v in got)

        wait_until(read_all_after, ABANDON_TIMEOUT_MS / 1000 + ABORT_SLACK,
                   "the records after the abandoned transaction to become readable "
                   "(the broker aborting it on its timeout)", interval=0,
                   on_timeout=lambda: f"read so far: {got}; (LSO, high watermark) "
                                      f"{stable_and_high(bootstrap, topic, 0)}")
    finally:
        consumer.close()
    assert [v for _, _, v in got] == vals("before", 3) + vals("after", 3), (
        f"read_committed delivered {[(o, v) for _, o, v in got]}")
    early = [(round(t, 2), o, v) for t, o, v in got
             if v.startswith(b"after") and t < ABANDON_TIMEOUT_MS / 1000]
    assert not early, (f"records after an open transaction were delivered before its "
                       f"{ABANDON_TIMEOUT_MS} ms timeout could have run out: {early}")

    hw = wait_settled(bootstrap, topic, 1)[0]
    assert hw > high, f"no ABORT marker appended: high watermark {hw}, was {high} before"
    assert read_values(bootstrap, topic, 0, "read_committed") == vals("before", 3) + vals("after", 3)
    assert read_values(bootstrap, topic, 0, "read_uncommitted") == (
        vals("before", 3) + vals("abandoned", 5) + vals("after", 3))
    check_layout(stored_batches(bootstrap, topic, 0),
                 [("ABORT", abandoned.offsets_of(vals("abandoned", 5)))], "partition 0")

    # The abandoned producer learns its transaction is gone: the commit fails for good.
    with pytest.raises(KafkaException) as excinfo:
        abandoned.producer.commit_transaction(OP_TIMEOUT)
    err = txn_error(excinfo)
    print(f"the abandoned producer's commit: {err.name()} fatal={err.fatal()} "
          f"abortable={err.txn_requires_abort()}: {err.str()}")
    assert not err.retriable(), f"commit of a timed-out transaction: retriable {err}"

    fresh = TxnProducer(bootstrap, txid, timeout_ms=ABANDON_TIMEOUT_MS).init()
    fresh.begin()
    fresh.send(topic, 0, vals("fresh", 2))
    fresh.commit()
    wait_settled(bootstrap, topic, 1)
    assert read_values(bootstrap, topic, 0, "read_committed") == (
        vals("before", 3) + vals("after", 3) + vals("fresh", 2))


# ========================================================================= 5. fencing


def test_fenced_confluent_producer(broker):
    """Two confluent-kafka producers with one transactional.id: the second's
    init_transactions aborts the first one's open transaction and fences it. The first one's
    commit then fails with a fatal error of code _FENCED (librdkafka's name for
    PRODUCER_FENCED / INVALID_PRODUCER_EPOCH), and it stays failed; a raw Produce of its next
    transactional batch at its old epoch gets INVALID_PRODUCER_EPOCH (47). The second
    producer keeps working: its committed records are what read_committed shows."""
    bootstrap = broker.bootstrap
    topic = unique_topic("txn-fence")
    create_topic(bootstrap, topic, 1)
    txid = unique_txid("fence")
    first = TxnProducer(bootstrap, txid).init()
    first.begin()
    first.send(topic, 0, vals("first", 3))
    first.flush()

    second = TxnProducer(bootstrap, txid).init()

    with pytest.raises(KafkaException) as excinfo:
        first.producer.commit_transaction(OP_TIMEOUT)
    err = txn_error(excinfo)
    assert err.fatal() and err.code() == KafkaError._FENCED, (
        f"the fenced producer's commit: expected a fatal _FENCED error, got {err} "
        f"(fatal={err.fatal()}, code {err.name()})")
    with pytest.raises(KafkaException) as excinfo:
        first.begin()
    assert txn_error(excinfo).fatal(), f"the fenced producer recovered: {txn_error(excinfo)}"

    second.begin()
    second.send(topic, 0, vals("second", 3))
    second.commit()
    wait_settled(bootstrap, topic, 1)
    assert read_values(bootstrap, topic, 0, "read_committed") == vals("second", 3)
    assert read_values(bootstrap, topic, 0, "read_uncommitted") == vals("first", 3) + vals("second", 3)
    batches = stored_batches(bootstrap, topic, 0)
    check_layout(batches, [("ABORT", first.offsets_of(vals("first", 3))),
                           ("COMMIT", second.offsets_of(vals("second", 3)))], "partition 0")

    # On the wire: the fenced producer's next batch, at its old epoch, is refused.
    [old] = [b for b in batches if b.marker is None and b.base_offset == first.offsets_of(vals("first", 3))[0]]
    [new] = [b for b in batches if b.marker is None and b.base_offset == second.offsets_of(vals("second", 3))[0]]
    # The transactional id keeps its producer id; fencing bumped the epoch.
    assert new.producer_id == old.producer_id and new.producer_epoch > old.producer_epoch, (
        f"fenced producer's batch {old}, its successor's {new}")
    with kw.KafkaConnection(bootstrap, timeout=30) as conn:
        version = kw.pick_version(conn.api_versions(), kw.API_PRODUCE, 3, 8)
        [res] = conn.produce(version, {topic: {0: transactional_batch(
            old.producer_id, old.producer_epoch, 3, vals("late", 1))}}, acks=-1, timeout=30)
    assert res.error_code == INVALID_PRODUCER_EPOCH, (
        f"Produce at the fenced epoch {old.producer_epoch}: expected INVALID_PRODUCER_EPOCH (47), "
        f"got {res.error_code} ({res.error_message!r})")
    assert read_values(bootstrap, topic, 0, "read_uncommitted") == vals("first", 3) + vals("second", 3)


def test_fenced_kafka_python_producer(broker):
    """The same with kafka-python: once a second KafkaProducer with the transactional id has
    initialised, the first one's commit_transaction raises ProducerFencedError, its next
    begin_transaction fails too, and the second one commits what read_committed shows."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError as KPError, ProducerFencedError

    bootstrap = broker.bootstrap
    topic = unique_topic("txn-fence-kp")
    create_topic(bootstrap, topic, 1)
    txid = unique_txid("fence-kp")

    def make():
        return KafkaProducer(**_kp_common(bootstrap), transactional_id=txid, linger_ms=5,
                             max_block_ms=15000)

    def send_all(producer, values: list[bytes]) -> list[int]:
        futures = [producer.send(topic, value=v, partition=0) for v in values]
        bounded(lambda: producer.flush(timeout=OP_TIMEOUT), OP_TIMEOUT + 5, "flush")
        return [f.get(timeout=OP_TIMEOUT).offset for f in futures]

    first, second = make(), None
    try:
        bounded(first.init_transactions, OP_TIMEOUT, "first init_transactions")
        first.begin_transaction()
        first_offsets = send_all(first, vals("first", 3))

        second = make()
        bounded(second.init_transactions, OP_TIMEOUT, "second init_transactions")
        with pytest.raises(ProducerFencedError):
            bounded(first.commit_transaction, OP_TIMEOUT, "the fenced producer's commit")
        with pytest.raises(KPError):
            first.begin_transaction()

        second.begin_transaction()
        second_offsets = send_all(second, vals("second", 3))
        bounded(second.commit_transaction, OP_TIMEOUT, "second commit_transaction")
    finally:
        first.close(timeout=5)
        if second is not None:
            second.close(timeout=10)
    wait_settled(bootstrap, topic, 1)
    assert [v for _, v in read_kafka_python(bootstrap, topic, 0, "read_committed")] == vals("second", 3)
    check_layout(stored_batches(bootstrap, topic, 0),
                 [("ABORT", first_offsets), ("COMMIT", second_offsets)], "partition 0")


# ======================================================================== 6. restarts


@pytest.mark.parametrize("how", ["restart", "crash_restart"])
def test_transactions_survive_a_restart(broker, how):
    """A committed transaction and one left open (records written, transaction.timeout.ms
    6000) across a clean restart (SIGTERM) or a kill -9: afterwards the committed records
    are visible to read_committed, the open transaction is still open (its records and those
    after it hidden) until its timeout, then aborted — its state lives in the catalog, not
    in the broker process — and a new producer with its transactional.id commits."""
    bootstrap = broker.bootstrap
    topic = unique_topic(f"txn-{how.replace('_', '-')}")
    create_topic(bootstrap, topic, 1)
    committer = TxnProducer(bootstrap, unique_txid("durable")).init()
    committer.begin()
    committer.send(topic, 0, vals("committed", 3))
    committer.commit()
    wait_settled(bootstrap, topic, 1)

    open_txid = unique_txid("left-open")
    left_open = TxnProducer(bootstrap, open_txid, timeout_ms=RESTART_TIMEOUT_MS).init()
    began = time.monotonic()
    left_open.begin()
    left_open.send(topic, 0, vals("open", 3))
    left_open.flush()
    first_open = min(left_open.offsets_of(vals("open", 3)))
    after = produce_confluent(bootstrap, topic, [Rec(None, v, partition=0) for v in vals("after", 2)])
    high = max(r.offset for r in after) + 1
    lso = end_offset(bootstrap, topic, 0, "read_committed")
    if time.monotonic() - began < RESTART_TIMEOUT_MS / 1000:
        assert lso == first_open, f"open transaction at {first_open}: LSO {lso} before the {how}"

    getattr(broker, how)()

    lso, hw = stable_and_high(bootstrap, topic, 0)
    if time.monotonic() - began < RESTART_TIMEOUT_MS / 1000:
        assert (lso, hw) == (first_open, high), (
            f"after the {how}, with the transaction still open: (LSO, high watermark) "
            f"{(lso, hw)}, expected {(first_open, high)}")
    else:
        print(f"the {how} took longer than the transaction timeout: open state not checked")
    wait_until(lambda: stable_and_high(bootstrap, topic, 0)[0] > first_open,
               RESTART_TIMEOUT_MS / 1000 + ABORT_SLACK,
               f"the transaction left open across the {how} to be aborted on its timeout",
               interval=0.2, on_timeout=lambda: f"(LSO, high watermark) "
                                                f"{stable_and_high(bootstrap, topic, 0)}")
    wait_settled(bootstrap, topic, 1)
    assert read_values(bootstrap, topic, 0, "read_committed") == vals("committed", 3) + vals("after", 2)
    check_layout(stored_batches(bootstrap, topic, 0),
                 [("COMMIT", committer.offsets_of(vals("committed", 3))),
                  ("ABORT", left_open.offsets_of(vals("open", 3)))], "partition 0")

    fresh = TxnProducer(bootstrap, open_txid).init()
    fresh.begin()
    fresh.send(topic, 0, vals("fresh", 2))
    fresh.commit()
    wait_settled(bootstrap, topic, 1)
    assert read_values(bootstrap, topic, 0, "read_committed") == (
        vals("committed", 3) + vals("after", 2) + vals("fresh", 2))


# ============================================================================ 7. admin


def test_list_and_describe_transactions(broker):
    """KIP-664 admin APIs through kafka-python's KafkaAdminClient, for a confluent-kafka
    transaction over partitions 0 and 1 of a 3-partition topic: while it is open,
    ListTransactions lists it Ongoing (also under the state filter Ongoing),
    DescribeTransactions shows Ongoing with exactly those partitions, the producer's id and
    its transaction.timeout.ms, and DescribeProducers shows the producer on partition 0 with
    the transaction's first offset there. After the commit: CompleteCommit, no partitions,
    no open transaction in DescribeProducers, not listed under Ongoing; a second transaction
    aborted ends CompleteAbort. An unknown transactional id is TRANSACTIONAL_ID_NOT_FOUND."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import TransactionalIdNotFoundError
    from kafka.structs import TopicPartition as KTP

    bootstrap = broker.bootstrap
    topic = unique_topic("txn-admin")
    create_topic(bootstrap, topic, 3)
    txid = unique_txid("admin")
    producer = TxnProducer(bootstrap, txid, **{"transaction.timeout.ms": 45000}).init()
    client = KafkaAdminClient(**_kp_common(bootstrap))
    try:
        def listed(state_filters=None) -> dict[str, tuple[int, str]]:
            by_broker = client.list_transactions(state_filters=state_filters)
            return {t.transactional_id: (t.producer_id, t.state.value)
                    for rows in by_broker.values() for t in rows}

        def describe():
            return client.describe_transactions([txid])[txid]

        def producers(partition: int):
            tp = KTP(topic, partition)
            return client.describe_producers([tp])[tp].active_producers

        wall_before = time.time() * 1000
        producer.begin()
        producer.send(topic, 0, vals("p0", 2))
        producer.send(topic, 1, vals("p1", 2))
        producer.flush()
        wall_after = time.time() * 1000

        desc = describe()
        assert desc.state.value == "Ongoing", desc
        assert desc.topic_partitions == {KTP(topic, 0), KTP(topic, 1)}, desc
        assert desc.transaction_timeout_ms == 45000, desc
        assert desc.producer_id >= 0 and desc.producer_epoch >= 0, desc
        assert wall_before - 60000 <= desc.transaction_start_time_ms <= wall_after + 60000, (
            f"transaction start time {desc.transaction_start_time_ms} is not near now "
            f"({wall_before:.0f}..{wall_after:.0f})")
        pid = desc.producer_id
        assert listed().get(txid) == (pid, "Ongoing"), listed()
        assert listed(["Ongoing"]).get(txid) == (pid, "Ongoing"), listed(["Ongoing"])
        assert txid not in listed(["CompleteCommit"]), listed(["CompleteCommit"])
        [mine] = [s for s in producers(0) if s.producer_id == pid]
        assert mine.current_transaction_start_offset == min(producer.offsets_of(vals("p0", 2))), mine
        assert mine.producer_epoch == desc.producer_epoch, (mine, desc)
        assert not [s for s in producers(2) if s.producer_id == pid], producers(2)

        producer.commit()
        wait_until(lambda: describe().state.value == "CompleteCommit", SETTLE_TIMEOUT,
                   "DescribeTransactions to show CompleteCommit", interval=0.2,
                   on_timeout=lambda: str(describe()))
        desc = describe()
        assert desc.topic_partitions == set() and desc.producer_id == pid, desc
        assert txid not in listed(["Ongoing"]), listed(["Ongoing"])
        assert listed().get(txid) == (pid, "CompleteCommit"), listed()
        wait_settled(bootstrap, topic, 2)
        [mine] = [s for s in producers(0) if s.producer_id == pid]
        assert mine.current_transaction_start_offset == -1, mine

        producer.begin()
        producer.send(topic, 2, vals("p2", 1))
        producer.abort()
        wait_until(lambda: describe().state.value == "CompleteAbort", SETTLE_TIMEOUT,
                   "DescribeTransactions to show CompleteAbort", interval=0.2,
                   on_timeout=lambda: str(describe()))

        with pytest.raises(TransactionalIdNotFoundError):
            client.describe_transactions([unique_txid("no-such")])
    finally:
        client.close()
