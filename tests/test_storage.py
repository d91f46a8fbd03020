"""Storage behaviour seen from outside: compression, corrupted objects, torn WAL.

* Uncompressed, text-like JSON (~20 MB, producer compression off) must reach the
  object store compressed: the ``strata_object_store_bytes_total{op="put"}``
  counter, and the segment files themselves, stay well under half the bytes
  produced.
* A segment object with bytes flipped in its middle, or cut short: reading the
  partition it holds gives the client KAFKA_STORAGE_ERROR (the broker neither
  crashes nor serves the bad bytes), the broker log names the object and the
  offsets it should hold, and other topics, whose data lives in other objects,
  are still served.
* A WAL with garbage appended after a kill -9 (a torn write): the broker starts,
  cuts the tail, keeps every record acknowledged at acks=1, and appends after
  the cut without losing anything on the next crash either.

Background compaction and retention are pushed out of the way through their
environment variables, so they cannot rewrite the objects the tests inspect.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import time
import uuid

import pytest

import kafka_wire as kw
from harness import files_under, wait_until
from kafka_clients import (
    Rec,
    consume_confluent,
    create_topic,
    produce_confluent,
    unique_topic,
    wait_for_high_watermark,
    watermarks,
)

QUIET_BACKGROUND = {
    "STRATA_COMPACTION_INTERVAL_MS": "3600000",
    "STRATA_RETENTION_INTERVAL_MS": "3600000",
}
KAFKA_STORAGE_ERROR = 56
WAL_ONLY = ["--flush-interval-ms", "600000", "--flush-bytes", "1000000000"]


def json_records(count: int, partitions: int, seed: int) -> list[Rec]:
    """Text-like JSON events: repetitive structure, varied words and numbers."""
    rng = random.Random(seed)
    words = ("checkout cart product search login logout view click scroll purchase refund "
             "shipping billing account profile settings mobile desktop tablet chrome firefox "
             "safari linux windows macos android ios premium free trial").split()
    countries = ["DE", "FR", "US", "GB", "JP", "BR", "IN", "NL", "SE", "ES"]
    now = int(time.time() * 1000)
    out = []
    for i in range(count):
        event = {
            "id": str(uuid.UUID(int=rng.getrandbits(128))),
            "seq": i,
            "ts": now - rng.randint(0, 3_600_000),
            "user": {"id": rng.randint(1, 50_000), "country": rng.choice(countries),
                     "segment": rng.choice(words)},
            "event": rng.choice(words),
            "url": "https://shop.example.com/" + "/".join(rng.choice(words) for _ in range(3)),
            "referrer": rng.choice(["https://www.google.com/", "https://news.example.org/", None]),
            "amount": round(rng.uniform(0, 500), 2),
            "tags": rng.sample(words, 4),
            "message": " ".join(rng.choice(words) for _ in range(rng.randint(20, 50))),
        }
        value = json.dumps(event).encode()
        out.append(Rec(f"user-{event['user']['id']}".encode(), value, partition=i % partitions))
    return out


def digest(values) -> str:
    h = hashlib.sha256()
    for v in values:
        h.update(len(v).to_bytes(4, "big") + v)
    return h.hexdigest()


# ----------------------------------------------------------------- compression


def test_uncompressed_json_is_compressed_in_the_object_store(make_broker):
    broker = make_broker(env=QUIET_BACKGROUND)
    topic = unique_topic("compress")
    create_topic(broker.bootstrap, topic, 3)
    records = json_records(40_000, 3, seed=42)
    produced = sum(len(r.key) + len(r.value) for r in records)
    assert produced > 18_000_000, produced

    before = broker.metrics()
    put_bytes_0 = before.value("strata_object_store_bytes_total", op="put")
    put_reqs_0 = before.value("strata_object_store_requests_total", op="put")

    produce_confluent(broker.bootstrap, topic, records, timeout=300, **{
        "compression.type": "none", "linger.ms": 20, "batch.size": 1_000_000, "acks": "all"})

    # acks=all: every record is in the object store; the counters must show it.
    def counted():
        m = broker.metrics()
        return m if m.value("strata_object_store_bytes_total", op="put") > put_bytes_0 else None

    after = wait_until(counted, 30, 'strata_object_store_bytes_total{op="put"} to grow')
    for name in ("strata_object_store_requests_total", "strata_object_store_bytes_total"):
        assert after.has(name, op="put"), f'/metrics lacks {name}{{op="put"}}:\n{after.text[:3000]}'
    put_bytes = after.value("strata_object_store_bytes_total", op="put") - put_bytes_0
    put_reqs = after.value("strata_object_store_requests_total", op="put") - put_reqs_0
    seg_bytes = sum(p.stat().st_size for p in files_under(broker.objects_dir, "*.seg"))
    print(f"produced {produced} B; object store put {put_bytes:.0f} B in {put_reqs:.0f} requests "
          f"(ratio {put_bytes / produced:.3f}); segment files {seg_bytes} B")
    assert put_reqs >= 1
    assert put_bytes < 0.5 * produced, (
        f"put {put_bytes:.0f} B for {produced} B of JSON: ratio {put_bytes / produced:.2f}, want < 0.5")
    assert 0 < seg_bytes < 0.5 * produced, f"segment files hold {seg_bytes} B for {produced} B produced"

    # And the data is intact.
    for p in range(3):
        expected = [r.value for r in records if r.partition == p]
        got = consume_confluent(broker.bootstrap, topic, p, timeout=120)
        assert len(got) == len(expected), f"partition {p}: {len(got)} of {len(expected)} records"
        assert digest(r.value for r in got) == digest(expected), f"partition {p}: values differ"


# ----------------------------------------------------------- corrupted segment


def flip_middle(path, span: int = 64) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, min(mid + span, len(data))):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))


def fetch_until_error(bootstrap: str, topic: str, partition: int, timeout: float = 60) -> tuple[int, int]:
    """Fetch from offset 0 onwards with raw Fetch requests until the broker reports an error.

    Returns (error code, offset it happened at). Fails if the broker serves a batch whose
    CRC is wrong or reaches the high watermark without an error.
    """
    deadline = time.monotonic() + timeout
    with kw.KafkaConnection(bootstrap, timeout=30) as conn:
        version = kw.pick_version(conn.api_versions(), kw.API_FETCH, 4, 11)
        offset, empty = 0, 0
        while time.monotonic() < deadline:
            top_error, parts = conn.fetch(version, topic, partition, offset)
            if top_error:
                return top_error, offset
            [part] = parts
            if part.error_code:
                return part.error_code, offset
            batches = kw.decode_batches(part.records or b"")
            bad = [b.base_offset for b in batches if not b.crc_ok]
            assert not bad, f"broker served batches with a wrong CRC at offsets {bad} and no error"
            if not batches:
                assert offset < part.high_watermark, (
                    f"read all of {topic}/{partition} up to {part.high_watermark} without an error "
                    "although its segment object is corrupted")
                empty += 1
                assert empty < 20, f"20 empty fetches at offset {offset} < high watermark, no error"
                continue
            offset = batches[-1].last_offset + 1
            if offset >= part.high_watermark:
                pytest.fail(f"read all of {topic}/{partition} ({offset} records) without an error "
                            "although its segment object is corrupted")
    pytest.fail(f"no error within {timeout}s reading {topic}/{partition}")


def truncate_half(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [flip_middle, truncate_half], ids=["flipped", "truncated"])
def test_corrupted_segment_object_fails_reads_of_that_data_only(make_broker, damage):
    """A segment object with flipped bytes, or cut short: reads of the data it holds fail
    with KAFKA_STORAGE_ERROR and a log line naming the object and the offsets it should
    hold; the broker keeps serving every other topic and keeps taking writes."""
    broker = make_broker(start=False, env=QUIET_BACKGROUND)

    # Run 1: topic A lives only in the WAL until SIGTERM flushes it: one flush, A only.
    broker.start(WAL_ONLY)
    topic_a = unique_topic("corrupt-a")
    create_topic(broker.bootstrap, topic_a, 1)
    records_a = json_records(3000, 1, seed=5)
    produce_confluent(broker.bootstrap, topic_a, records_a, acks="1")
    broker.stop()
    segments_a = files_under(broker.objects_dir, "*.seg")
    assert segments_a, f"no segment object under {broker.objects_dir} after SIGTERM flushed topic A"

    # Run 2: topic B goes to objects of its own.
    broker.start()
    topic_b = unique_topic("corrupt-b")
    create_topic(broker.bootstrap, topic_b, 2)
    records_b = produce_confluent(broker.bootstrap, topic_b, json_records(400, 2, seed=6))
    broker.stop()
    segments_b = [p for p in files_under(broker.objects_dir, "*.seg") if p not in segments_a]
    assert segments_b, "topic B produced no new segment object"
    missing = [p for p in segments_a if not p.exists()]
    assert not missing, f"A's objects were rewritten or deleted meanwhile: {missing}"

    for path in segments_a:
        damage(path)
    shutil.rmtree(broker.data_dir / "cache", ignore_errors=True)  # no cached copy may hide it

    # Run 3: reads of A fail cleanly, everything else works.
    broker.start()
    error, at = fetch_until_error(broker.bootstrap, topic_a, 0)
    print(f"fetch of {topic_a} failed at offset {at} with error code {error}")
    assert broker.is_running() and broker.healthz() == 200, "broker died reading a corrupted object"

    assert error == KAFKA_STORAGE_ERROR, f"expected KAFKA_STORAGE_ERROR (56), got {error}"
    names = [p.stem for p in segments_a]
    named = re.compile(r"offsets \d+\.\.=\d+ in object '[^']*(" + "|".join(map(re.escape, names)) + ")")
    wait_until(lambda: named.search(broker.log_text()), 10,
               f"a broker log line naming the corrupted object ({', '.join(names)}) and its offsets",
               on_timeout=broker.log_tail)

    for p in range(2):
        expected = [r for r in records_b if r.partition == p]
        got = consume_confluent(broker.bootstrap, topic_b, p)
        assert [(r.offset, r.value) for r in got] == [(r.offset, r.value) for r in expected], (
            f"topic B partition {p} not served intact")

    topic_c = unique_topic("corrupt-c")
    create_topic(broker.bootstrap, topic_c, 1)
    produce_confluent(broker.bootstrap, topic_c, [Rec(b"c", b"still writable", partition=0)])
    assert [r.value for r in consume_confluent(broker.bootstrap, topic_c, 0)] == [b"still writable"]
    assert broker.is_running()


# -------------------------------------------------------------------- torn WAL


def newest_wal_file(broker):
    files = [p for p in files_under(broker.wal_dir) if p.stat().st_size > 0]
    assert files, f"no non-empty WAL file under {broker.wal_dir}"
    return max(files, key=lambda p: (p.stat().st_mtime_ns, str(p)))


@pytest.mark.parametrize("garbage", ["random-bytes", "zero-fill", "copy-of-file-head"])
def test_torn_wal_tail_is_cut_and_acked_records_survive(make_broker, garbage):
    broker = make_broker(start=False, env=QUIET_BACKGROUND)
    broker.start(WAL_ONLY)
    topic = unique_topic("torn")
    create_topic(broker.bootstrap, topic, 2)

    first = produce_confluent(broker.bootstrap, topic, [
        Rec(f"k{i}".encode(), f"before-crash-{i}".encode() + b"." * (i % 97), partition=i % 2)
        for i in range(300)], acks="1")
    assert not files_under(broker.objects_dir, "*.seg"), (
        "precondition: with --flush-interval-ms 600000 --flush-bytes 1e9 nothing should be "
        "flushed yet, so the data is only in the WAL")
    broker.kill9()

    wal = newest_wal_file(broker)
    original = wal.read_bytes()
    junk = {
        "random-bytes": random.Random(9).randbytes(777),
        "zero-fill": b"\x00" * 4096,
        "copy-of-file-head": original[:150],  # looks like the start of a real entry, then stops
    }[garbage]
    with open(wal, "ab") as f:
        f.write(junk)

    # The broker must start on the torn WAL and keep appending after the cut.
    broker.start(WAL_ONLY)
    second = produce_confluent(broker.bootstrap, topic, [
        Rec(f"k{i}".encode(), f"after-crash-{i}".encode(), partition=i % 2)
        for i in range(300, 400)], acks="1")
    for p in range(2):
        offsets = [r.offset for r in second if r.partition == p]
        assert offsets == list(range(150, 200)), (
            f"partition {p}: records after the restart got offsets {offsets[:3]}..., expected 150.. "
            "(were acknowledged records before the torn tail lost?)")
    broker.kill9()

    broker.start()  # default flush: replayed entries go to the object store
    acked = first + second
    for p in range(2):
        wait_for_high_watermark(broker.bootstrap, topic, p, 200, timeout=60)
        assert watermarks(broker.bootstrap, topic, p) == (0, 200)
        got = consume_confluent(broker.bootstrap, topic, p)
        expected = sorted((r for r in acked if r.partition == p), key=lambda r: r.offset)
        assert [(r.offset, r.key, r.value) for r in got] == [
            (r.offset, r.key, r.value) for r in expected], f"partition {p} differs from what was acked"
