#!/usr/bin/env python3
"""Cluster measurements for issue #6, on this machine, with release binaries.

Starts a throwaway PostgreSQL (the catalog) and brokers sharing it and one local-directory
object store, then measures, printing a table of each:

* **failover**: a 3-broker cluster, a 12-partition topic; `kill -9` one broker and time until
  every one of its partitions accepts an `acks=all` produce again (through another broker).
  Repeated `--rounds` times (the killed broker restarts and the cluster settles in between);
  the median is reported. With the default 10 s lease the floor is the lease itself.
* **join**: a 2-broker cluster; a third starts; time from its readiness until metadata from
  every broker shows it leading its share of the partitions.
* **W1 throughput** with 1, 2 and 3 brokers: `strata-loadtest run W1 --bootstrap <all
  brokers>` (acks=all, 16 partitions), so the load test's producers spread over the owners.

Needs what `scripts/test.sh` installs (PostgreSQL, confluent-kafka) and a release build:

    cargo build --release --workspace
    python3 scripts/cluster_bench.py [--rounds 5] [--lease-ms 10000] [--w1-seconds 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from harness import Broker, PostgresServer, wait_until  # noqa: E402


class Cluster:
    def __init__(self, pg: PostgresServer, root: Path, lease_ms: int):
        self.catalog = pg.fresh_database()
        self.root = root
        self.objects = f"file://{root}/objects"
        self.lease_ms = lease_ms
        self.brokers: list[Broker] = []

    def add(self) -> Broker:
        b = Broker(self.root / f"b{len(self.brokers)}", name=f"b{len(self.brokers)}",
                   catalog=self.catalog, objects=self.objects,
                   args=["--lease-ms", str(self.lease_ms)])
        b.start()
        self.brokers.append(b)
        return b

    @property
    def bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.brokers if b.is_running())

    def leaders(self, via: Broker, topic: str) -> dict[int, int]:
        md = AdminClient({"bootstrap.servers": via.bootstrap}).list_topics(topic, timeout=10)
        return {p: m.leader for p, m in md.topics[topic].partitions.items()}

    def node_ids(self, via: Broker) -> dict[int, tuple[str, int]]:
        md = AdminClient({"bootstrap.servers": via.bootstrap}).list_topics(timeout=10)
        return {b.id: (b.host, b.port) for b in md.brokers.values()}

    def stop(self) -> None:
        for b in self.brokers:
            if b.is_running():
                b.stop(expect_code=None)


KEEP: Path | None = None


def workdir():
    """A fresh directory for one phase: temporary, or kept under `--keep` for reading logs."""
    if KEEP is None:
        return tempfile.TemporaryDirectory()
    KEEP.mkdir(parents=True, exist_ok=True)
    return contextlib.nullcontext(tempfile.mkdtemp(dir=KEEP))


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        f.result(timeout=30)


def node_of(cluster: Cluster, broker: Broker) -> int:
    for node, (_, port) in cluster.node_ids(broker).items():
        if port == broker.kafka_port:
            return node
    raise RuntimeError(f"{broker.name} not in its own metadata")


def produce_ok(bootstrap: str, topic: str, partition: int, timeout: float) -> bool:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                  "message.timeout.ms": int(timeout * 1000), "retry.backoff.ms": 50,
                  "topic.metadata.refresh.interval.ms": 200})
    result = []
    p.produce(topic, b"x", partition=partition, on_delivery=lambda e, m: result.append(e))
    p.flush(timeout + 1)
    return bool(result) and result[0] is None


def failover(pg: PostgresServer, rounds: int, lease_ms: int) -> list[float]:
    times = []
    with workdir() as d:
        c = Cluster(pg, Path(d), lease_ms)
        try:
            for _ in range(3):
                c.add()
            topic = "failover"
            create_topic(c.bootstrap, topic, 12)
            for r in range(rounds):
                victim = c.brokers[r % 3]
                survivor = next(b for b in c.brokers if b is not victim)
                node = node_of(c, victim)
                wait_until(lambda: node in c.leaders(survivor, topic).values(), timeout=60,
                           what="victim owns nothing")
                owned = [p for p, l in c.leaders(survivor, topic).items() if l == node]
                victim.kill9()
                killed = time.monotonic()
                others = ",".join(b.bootstrap for b in c.brokers if b is not victim)
                pending = set(owned)
                while pending:
                    for p in sorted(pending):
                        if produce_ok(others, topic, p, timeout=2.0):
                            pending.discard(p)
                    if time.monotonic() - killed > 120:
                        raise RuntimeError("partitions did not come back within 120 s")
                took = time.monotonic() - killed
                times.append(took)
                print(f"  round {r + 1}: {len(owned)} partitions back after {took:.2f} s", flush=True)
                victim.start()
                wait_until(lambda: node in c.leaders(survivor, topic).values(), timeout=60,
                           what="restarted broker got nothing back")
        finally:
            c.stop()
    return times


def join(pg: PostgresServer, lease_ms: int) -> float:
    with workdir() as d:
        c = Cluster(pg, Path(d), lease_ms)
        try:
            c.add()
            c.add()
            topic = "join"
            create_topic(c.bootstrap, topic, 12)
            newcomer = c.add()  # start() returns once it is ready
            ready = time.monotonic()
            node = node_of(c, newcomer)

            def settled() -> bool:
                return all(node in c.leaders(b, topic).values() for b in c.brokers)

            wait_until(settled, timeout=60, interval=0.05, what="newcomer got no share")
            return time.monotonic() - ready
        finally:
            c.stop()


def w1(pg: PostgresServer, n: int, seconds: int, lease_ms: int) -> dict:
    with workdir() as d:
        c = Cluster(pg, Path(d), lease_ms)
        try:
            for _ in range(n):
                c.add()
            out = Path(d) / "w1.json"
            subprocess.run(
                [str(ROOT / "target/release/strata-loadtest"), "run", "W1", "--bootstrap", c.bootstrap,
                 "--duration", str(seconds), "--json", str(out)],
                check=True, timeout=seconds + 300,
            )
            return json.loads(out.read_text())
        finally:
            c.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lease-ms", type=int, default=10_000)
    ap.add_argument("--w1-seconds", type=int, default=20)
    ap.add_argument("--skip-w1", action="store_true")
    ap.add_argument("--keep", type=Path, help="keep each phase's brokers (data, logs) under this directory")
    args = ap.parse_args()
    global KEEP
    KEEP = args.keep
    pg = PostgresServer().start()
    try:
        print(f"== failover: kill -9 of one of 3 brokers, lease {args.lease_ms} ms", flush=True)
        times = failover(pg, args.rounds, args.lease_ms)
        print(f"== join: third broker joins two", flush=True)
        joined = join(pg, args.lease_ms)
        results = {}
        if not args.skip_w1:
            for n in (1, 2, 3):
                print(f"== W1 with {n} broker(s)", flush=True)
                results[n] = w1(pg, n, args.w1_seconds, args.lease_ms)
        print()
        print("| measurement | value |")
        print("|---|---|")
        print(f"| kill -9 → partitions accept produce (median of {len(times)}) | "
              f"{statistics.median(times):.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)}) |")
        print(f"| joining broker leads its share (seen by every broker) | {joined:.2f} s |")
        for n, r in results.items():
            w = r[0] if isinstance(r, list) else r
            lat = w.get("latency_ms") or {}
            print(f"| W1 with {n} broker(s) | {w['mb_per_s']:.1f} MB/s, produce p50 {lat.get('p50', 0):.0f} ms, "
                  f"p99 {lat.get('p99', 0):.0f} ms, failed records {(w.get('extra') or {}).get('failed_records', 0):.0f} |")
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
