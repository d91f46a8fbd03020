#!/usr/bin/env python3
"""REST produce throughput against Kafka-protocol produce, on one broker, in one run.

Starts a release broker (temporary data dir, free loopback ports; ``$STRATA_BIN`` or
``target/release/strata``), then writes the same records twice, each to a topic of its own
with ``--partitions`` partitions:

1. over HTTP: one v3 streamed produce (``Transfer-Encoding: chunked``, one JSON record per
   line, value ``{"type": "STRING"}``), sent by one thread while another reads the results;
   done when the last result (durable, ``acks=all``) has arrived;
2. over Kafka: confluent-kafka with ``acks=all``, ``linger.ms=5``; done when ``flush()``
   returns (every delivery report in).

Values are ``--record-bytes`` of random letters (compressible as text is); throughput is
value bytes per second. Prints both figures and their ratio.

    python3 scripts/rest_bench.py --mb 128
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from confluent_kafka import Producer  # noqa: E402

from harness import Broker  # noqa: E402
from kafka_clients import confluent_conf, create_topic  # noqa: E402
from rest_client import stream_produce  # noqa: E402


def values(count: int, size: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pool = "".join(rng.choices(string.ascii_letters + string.digits + " ", k=size * 64))
    return [pool[(i * 7919) % (len(pool) - size):][:size] for i in range(count)]


def bench_rest(broker: Broker, topic: str, vals: list[str]) -> float:
    lines = [json.dumps({"value": {"type": "STRING", "data": v}}).encode() for v in vals]
    path = f"/v3/clusters/strata/topics/{topic}/records"
    start = time.monotonic()
    results = stream_produce(broker.http_port, path, lines, chunk_bytes=256 << 10, timeout=600)
    elapsed = time.monotonic() - start
    failed = [r for r in results if r.get("error_code") != 200]
    assert len(results) == len(vals) and not failed, f"{len(results)} results, failures: {failed[:3]}"
    return elapsed


def bench_kafka(broker: Broker, topic: str, vals: list[str]) -> float:
    producer = Producer(confluent_conf(broker.bootstrap, **{
        "acks": "all", "linger.ms": 5, "enable.idempotence": False,
        "queue.buffering.max.kbytes": 1 << 20, "message.timeout.ms": 600000}))
    errors: list[str] = []

    def report(err, _msg):
        if err is not None:
            errors.append(str(err))

    encoded = [v.encode() for v in vals]
    start = time.monotonic()
    for v in encoded:
        while True:
            try:
                producer.produce(topic, value=v, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(600)
    elapsed = time.monotonic() - start
    assert left == 0 and not errors, f"{left} undelivered, errors: {errors[:3]}"
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=128, help="MiB of record values per protocol")
    parser.add_argument("--record-bytes", type=int, default=1024)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()

    count = (args.mb << 20) // args.record_bytes
    vals = values(count, args.record_bytes, seed=1)
    total = count * args.record_bytes
    with tempfile.TemporaryDirectory(prefix="strata-rest-bench-") as tmp:
        broker = Broker(Path(tmp), name="bench")
        broker.start()
        try:
            create_topic(broker.bootstrap, "bench-rest", partitions=args.partitions)
            create_topic(broker.bootstrap, "bench-kafka", partitions=args.partitions)
            rest_s = bench_rest(broker, "bench-rest", vals)
            kafka_s = bench_kafka(broker, "bench-kafka", vals)
        finally:
            broker.stop()
    rest_mbs, kafka_mbs = total / rest_s / 1e6, total / kafka_s / 1e6
    print(f"{count} records of {args.record_bytes} B ({total / 1e6:.1f} MB) per protocol, "
          f"{args.partitions} partitions, acks=all")
    print(f"REST v3 streamed produce : {rest_mbs:8.1f} MB/s  ({rest_s:.2f} s)")
    print(f"Kafka (confluent-kafka)  : {kafka_mbs:8.1f} MB/s  ({kafka_s:.2f} s)")
    print(f"REST / Kafka             : {rest_mbs / kafka_mbs:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
