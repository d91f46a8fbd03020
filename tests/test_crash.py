"""kill -9 under load: acknowledged records are never lost, moved or duplicated.

A confluent-kafka producer runs in a background thread and produces without
pause to a 3-partition topic, with idempotence and retries off: a record is sent
at most once, so the broker alone decides whether it is stored once or not at
all. "Acknowledged" means a delivery report without error; it carries the
(partition, offset) the broker assigned. Five times, at a random but seeded
point (a number of acknowledged records, so it adapts to the machine's speed, plus a
delay within the flush cycle), the broker is killed with SIGKILL and restarted on the same data dir and ports; the
producer reconnects by itself. At the end the broker is killed once more, and
then every partition is read from offset 0 to its high watermark:

* offsets are contiguous (every offset from 0 to the end is present);
* every acknowledged record is at its acknowledged offset with the same value;
* no offset was acknowledged twice and no value appears twice;
* anything else in the log is a record that was sent (unacknowledged ones may
  or may not have been stored — the client cannot know).

Run for acks=all (object-store durable) and acks=1 (WAL durable): both promise
survival of a process crash. The seed is printed and can be fixed with
STRATA_TEST_SEED to replay a failure.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter

import pytest
from confluent_kafka import Producer

from kafka_clients import (
    confluent_conf,
    consume_confluent,
    create_topic,
    unique_topic,
    wait_for_high_watermark,
    watermarks,
)
from harness import wait_until

PARTITIONS = 3
ROUNDS = 5
SEED = int(os.environ.get("STRATA_TEST_SEED", "20240613"))


class LoadProducer:
    """Produces continuously from its own thread and records delivery reports."""

    def __init__(self, bootstrap: str, topic: str, acks: str, seed: int):
        self.topic = topic
        self.producer = Producer(confluent_conf(bootstrap, **{
            "acks": acks,
            "enable.idempotence": False,
            "retries": 0,                       # never resend: no duplicate can be acknowledged
            "max.in.flight.requests.per.connection": 5,
            "linger.ms": 2,
            "message.timeout.ms": 30000,
            "request.timeout.ms": 10000,
        }))
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.sent: set[bytes] = set()
        self.acked: dict[tuple[int, int], bytes] = {}
        self.double_acks: list[tuple[tuple[int, int], bytes, bytes]] = []
        self.failures: Counter[str] = Counter()
        self.unflushed = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="load-producer", daemon=True)

    @property
    def ack_count(self) -> int:
        with self.lock:
            return len(self.acked)

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
                if len(self.producer) >= 2000:  # bound the in-memory backlog while the broker is down
                    self.producer.poll(0.05)
                    continue
                value = f"{seq:09d}|{self.rng.getrandbits(64):016x}|".encode() + b"x" * self.rng.randint(0, 300)
                try:
                    self.producer.produce(self.topic, value=value, partition=seq % PARTITIONS,
                                          on_delivery=self._on_delivery)
                except BufferError:
                    self.producer.poll(0.05)
                    continue
                with self.lock:
                    self.sent.add(value)
                seq += 1
                self.producer.poll(0)
            self.unflushed = self.producer.flush(60)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(90)
        assert not self.thread.is_alive(), "producer thread did not finish within 90s"
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize("acks", ["all", "1"])
def test_kill9_under_load_loses_no_acknowledged_record(make_broker, acks):
    broker = make_broker("strata")
    topic = unique_topic(f"crash-acks{acks}")
    create_topic(broker.bootstrap, topic, PARTITIONS)

    rng = random.Random(f"{SEED}-{acks}")
    print(f"seed {SEED} (set STRATA_TEST_SEED to replay)")
    load = LoadProducer(broker.bootstrap, topic, acks, seed=rng.getrandbits(32))
    load.start()
    try:
        for round_no in range(1, ROUNDS + 1):
            target = load.ack_count + rng.randint(20, 1500)
            wait_until(lambda: load.ack_count >= target or load.error, 90,
                       f"round {round_no}: {target} acknowledged records (have {load.ack_count})",
                       on_timeout=broker.log_tail)
            assert load.error is None, f"producer thread failed: {load.error!r}"
            # Acknowledgements arrive in bursts (one per flush), so a seeded random delay
            # spreads the kill over the flush cycle: WAL append, PUT, catalog commit.
            time.sleep(rng.uniform(0, 0.3))
            broker.kill9()
            print(f"round {round_no}: killed at {load.ack_count} acks, failures {dict(load.failures)}")
            broker.start()
        # Make sure the producer is working against the last incarnation, too.
        target = max(load.ack_count + 200, 1000)
        wait_until(lambda: load.ack_count >= target or load.error, 90,
                   "acknowledgements after the last restart", on_timeout=broker.log_tail)
    finally:
        load.stop()
    assert load.unflushed == 0, f"{load.unflushed} records never got a delivery report"

    broker.kill9()
    broker.start()
    verify_log(broker.bootstrap, topic, load)


def verify_log(bootstrap: str, topic: str, load: LoadProducer) -> None:
    assert not load.double_acks, (
        f"{len(load.double_acks)} offsets were acknowledged twice (offset reuse after a crash), "
        f"first: {load.double_acks[:3]}")
    assert len(load.acked) >= 1000, f"only {len(load.acked)} records acknowledged: test too weak"
    print(f"{len(load.acked)} acknowledged, {len(load.sent)} sent, failures {dict(load.failures)}")

    for p in range(PARTITIONS):
        acked = {off: v for (part, off), v in load.acked.items() if part == p}
        need = max(acked, default=-1) + 1
        wait_for_high_watermark(bootstrap, topic, p, need, timeout=60)
        low, high = watermarks(bootstrap, topic, p)
        assert low == 0, f"partition {p}: log start offset {low}, expected 0"
        records = consume_confluent(bootstrap, topic, p, 0, high, timeout=120)
        offsets = [r.offset for r in records]
        assert offsets == list(range(high)), (
            f"partition {p}: offsets not contiguous 0..{high - 1}: first gap/dup near "
            f"{next((i for i, o in enumerate(offsets) if o != i), len(offsets))}")
        stored = {r.offset: r.value for r in records}
        lost = {off: v for off, v in acked.items() if stored.get(off) != v}
        assert not lost, (
            f"partition {p}: {len(lost)} acknowledged records missing or changed, e.g. "
            + ", ".join(f"offset {o}: acked {v[:20]!r} stored {stored.get(o, b'<none>')[:20]!r}"
                        for o, v in sorted(lost.items())[:5]))
        dupes = [v for v, n in Counter(stored.values()).items() if n > 1]
        assert not dupes, f"partition {p}: {len(dupes)} values stored twice, e.g. {dupes[:3]}"
        strangers = [o for o, v in stored.items() if v not in load.sent]
        assert not strangers, f"partition {p}: records nobody sent at offsets {strangers[:10]}"
