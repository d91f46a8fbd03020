#!/usr/bin/env python3
"""Consumer-group measurements on this machine, against one release broker.

Starts `strata serve` on free loopback ports with a temporary data directory (SQLite catalog,
local object store, default flags), waits for GET /healthz, then measures with confluent-kafka
(librdkafka), printing a table:

* **first assignment, one consumer**: a fresh group id each round; time from
  `Consumer.subscribe([topic], on_assign=cb)` until `cb` fires (the consumer is created, not
  timed, just before; it is polled with 50 ms timeouts, and the callback is served as soon as
  the assignment arrives). 6-partition topic. Median, min and max of `--rounds`.
* **first assignment, group of three**: three consumers (one polling thread each) pass a
  barrier and subscribe at the same moment with a fresh group id; time from the first
  subscribe() until all three hold a non-empty assignment together covering all 6 partitions
  (on_revoke empties a member's assignment, so a transient assignment that a later rebalance
  takes back does not count). The number of on_assign calls it took is reported too.
* **group vs assign consume MB/s**: `--mbytes` MB (10^6 bytes) of 1 KiB JSON-like records
  (random hex ids and a random blob, a third of the record, plus text drawn from a small
  vocabulary: zstd level 3 makes them 0.34×) are produced round-robin into a 6-partition
  topic (`acks=all`, idempotence off, `linger.ms=5`, `batch.size=1MiB`, no client
  compression: the broker zstd-compresses), followed by one unreported warm-up read. Then,
  each round, everything is read back by (a) ONE consumer in a fresh group via subscribe()
  (`auto.offset.reset=earliest`, librdkafka's default auto-commit) and (b) ONE consumer via
  assign() of all 6 partitions at offset 0 (confluent-kafka requires a group.id: a fresh one,
  never joined, auto-commit off). The order alternates (group first in odd rounds, assign
  first in even ones) to be fair on a noisy machine. Both use the same consumer settings
  (librdkafka's fetch defaults: fetch.max.bytes 50 MiB, max.partition.fetch.bytes 1 MiB,
  fetch.wait.max.ms 500) and the same loop (`consume(num_messages=min(10000, left))`). MB/s
  counts value bytes, up to the last record, measured both from the subscribe()/assign()
  call (so the group's includes joining and the assignment) and from the first record (the
  first consume() batch that returned records, whose bytes are then left out).

Needs a release build and confluent-kafka (`scripts/test.sh` installs it):

    cargo build --release -p strata
    python3 scripts/group_bench.py [--rounds 5] [--mbytes 256] [--strata-bin target/release/strata]

The default run takes about 15 seconds on a 2-core machine (a 256 MB read lasts ~0.3 s, so the
"from the call" figures are dominated by the group join; raise --mbytes to weigh it less).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
import confluent_kafka

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 6
RECORD_BYTES = 1024

# -------------------------------------------------------------------------- broker


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


def healthz(url: str) -> int:
    try:
        with _opener.open(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


class Broker:
    """One `strata serve` on free loopback ports and a temporary data dir."""

    def __init__(self, binary: Path, root: Path):
        self.binary = binary
        self.root = root
        self.kafka_port = free_port(socket.SOCK_STREAM)
        self.http_port = free_port(socket.SOCK_STREAM)
        while self.http_port == self.kafka_port:
            self.http_port = free_port(socket.SOCK_STREAM)
        self.quic_port = free_port(socket.SOCK_DGRAM)
        self.log_path = root / "strata.log"
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def command(self) -> list[str]:
        return [str(self.binary), "serve",
                "--data-dir", str(self.root / "data"),
                "--kafka-addr", self.bootstrap,
                "--quic-addr", f"127.0.0.1:{self.quic_port}",
                "--http-addr", f"127.0.0.1:{self.http_port}"]

    def start(self, timeout: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STRATA_", "AWS_"))}
        env.setdefault("RUST_LOG", "info")
        cmd = self.command()
        setpriv = shutil.which("setpriv")  # the kernel kills the broker if this script dies
        with open(self.log_path, "wb") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(
                ([setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []) + cmd,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{self.http_port}/healthz"
        deadline = time.monotonic() + timeout
        while healthz(url) != 200:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"broker not healthy within {timeout} s\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code (killed after `timeout`: -9)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# ------------------------------------------------------------------------- helpers

_group_seq = 0


def fresh_group(what: str) -> str:
    global _group_seq
    _group_seq += 1
    return f"bench-{what}-{os.getpid()}-{_group_seq}"


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        f.result(timeout=30)


def stats(xs: list[float]) -> tuple[float, float, float]:
    return statistics.median(xs), min(xs), max(xs)


# ------------------------------------------------------------ 1. one consumer's assignment


def first_assignment_one(bootstrap: str, topic: str) -> float:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": fresh_group("one"),
                  "auto.offset.reset": "earliest"})
    assigned: list[float] = []

    def on_assign(consumer, partitions):
        if partitions and not assigned:
            assigned.append(time.monotonic())

    try:
        t0 = time.monotonic()
        c.subscribe([topic], on_assign=on_assign)
        while not assigned:
            c.poll(0.05)
            if time.monotonic() - t0 > 60:
                raise RuntimeError("no assignment within 60 s")
        return assigned[0] - t0
    finally:
        c.close()


# ---------------------------------------------------------- 2. a group of three's assignment


def first_assignment_three(bootstrap: str, topic: str) -> tuple[float, int]:
    """Seconds from the first subscribe() until all three hold partitions covering the topic,
    and how many on_assign calls that took."""
    group = fresh_group("three")
    consumers = [Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                           "auto.offset.reset": "earliest"}) for _ in range(3)]
    lock = threading.Condition()
    current: list[set[int]] = [set() for _ in consumers]
    subscribed: list[float] = []
    done_at: list[float] = []
    assign_calls = [0]
    barrier = threading.Barrier(3)
    stop = threading.Event()
    errors: list[BaseException] = []

    def complete() -> bool:
        return all(current) and set().union(*current) == set(range(PARTITIONS))

    def run(i: int) -> None:
        c = consumers[i]

        def on_assign(consumer, partitions):
            with lock:
                assign_calls[0] += 1
                current[i] = {p.partition for p in partitions}
                if not done_at and complete():
                    done_at.append(time.monotonic())
                    lock.notify_all()

        def on_revoke(consumer, partitions):
            with lock:
                current[i] = set()

        try:
            barrier.wait(30)
            t = time.monotonic()
            c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
            with lock:
                subscribed.append(t)
            while not stop.is_set():
                c.poll(0.05)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    try:
        with lock:
            if not lock.wait_for(lambda: bool(done_at) or bool(errors), timeout=60):
                raise RuntimeError(f"the three consumers were not all assigned within 60 s: {current}")
            if errors:
                raise errors[0]
            return done_at[0] - min(subscribed), assign_calls[0]
    finally:
        stop.set()
        for t in threads:
            t.join(30)


# --------------------------------------------------------------------- 3. produce, consume

VOCAB = ("click view purchase cart search login logout scroll hover submit page user item order "
         "price total region eu us asia mobile desktop tablet chrome firefox safari referrer "
         "campaign email social organic paid status ok error retry timeout session checkout "
         "product category shoes books music garden toys kitchen").split()


def make_record(i: int, rng: random.Random) -> bytes:
    head = (f'{{"seq":{i},"ts":{1_760_000_000_000 + i * 3},"user":"u{rng.randrange(1_000_000):06d}",'
            f'"session":"{rng.getrandbits(128):032x}","event":"{rng.choice(VOCAB)}",'
            f'"amount":{rng.randrange(100_000) / 100},"note":"')
    tail = f'","blob":"{rng.getrandbits(1200):0300x}"}}'
    fill = " ".join(rng.choices(VOCAB, k=120))
    room = RECORD_BYTES - len(head) - len(tail)
    body = (head + fill[:room] + tail).encode()
    assert len(body) == RECORD_BYTES, len(body)
    return body


def produce(bootstrap: str, topic: str, records: list[bytes]) -> float:
    """Produces all records (acks=all), raising on any delivery error; returns seconds."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False,
                  "linger.ms": 5, "batch.size": 1 << 20, "compression.type": "none",
                  "queue.buffering.max.messages": 2_000_000,
                  "queue.buffering.max.kbytes": 2 << 20})
    failed: list[str] = []

    def on_delivery(err, msg):
        if err is not None:
            failed.append(str(err))

    t0 = time.monotonic()
    for i, value in enumerate(records):
        while True:
            try:
                p.produce(topic, value, partition=i % PARTITIONS, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        if i % 10_000 == 0:
            p.poll(0)
    remaining = p.flush(300)
    took = time.monotonic() - t0
    if remaining or failed:
        raise RuntimeError(f"{remaining} undelivered, {len(failed)} failed: {failed[:3]}")
    return took


CONSUMER_CONF = {"enable.partition.eof": False}  # librdkafka's fetch defaults otherwise


def consume_all(bootstrap: str, topic: str, expect: int, mode: str) -> dict:
    """Reads `expect` records with one consumer, via subscribe() ("group") or assign()."""
    conf = {"bootstrap.servers": bootstrap, **CONSUMER_CONF}
    assigned: list[float] = []
    if mode == "group":
        conf.update({"group.id": fresh_group("consume"), "auto.offset.reset": "earliest"})
    else:
        # confluent-kafka insists on a group.id; it is never joined, and nothing is committed.
        conf.update({"group.id": fresh_group("assign"), "enable.auto.commit": False})
    c = Consumer(conf)
    n = nbytes = first_batch_bytes = 0
    t_first = t_last = None
    try:
        t0 = time.monotonic()
        if mode == "group":
            c.subscribe([topic], on_assign=lambda cons, parts: assigned.append(time.monotonic()))
        else:
            c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        last_progress = t0
        while n < expect:
            # consume() waits for num_messages or the timeout: never ask for more than is left.
            msgs = c.consume(num_messages=min(10_000, expect - n), timeout=0.5)
            now = time.monotonic()
            for m in msgs:
                if m.error():
                    raise KafkaException(m.error())
                n += 1
                nbytes += len(m.value())
            if msgs:
                last_progress = now
                if t_first is None:
                    t_first, first_batch_bytes = now, nbytes
                t_last = now
            elif now - last_progress > 60:
                raise RuntimeError(f"{mode}: stuck at {n}/{expect} records for 60 s")
    finally:
        c.close()
    if n != expect:
        raise RuntimeError(f"{mode}: read {n} records, expected {expect}")
    return {
        "mode": mode,
        "bytes": nbytes,
        "from_call": nbytes / (t_last - t0) / 1e6,
        # The first batch arrived at t_first: its bytes are not part of the rate after it.
        "from_first": (nbytes - first_batch_bytes) / (t_last - t_first) / 1e6
        if t_last > t_first else float("nan"),
        "first_msg_s": t_first - t0,
        "assign_s": (assigned[0] - t0) if assigned else None,
    }


def wait_readable(bootstrap: str, topic: str, expect: int, timeout: float = 60) -> None:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": fresh_group("watermarks")})
    try:
        deadline = time.monotonic() + timeout
        while True:
            total = sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                        for p in range(PARTITIONS))
            if total >= expect:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {total}/{expect} records readable after {timeout} s")
            time.sleep(0.1)
    finally:
        c.close()


# --------------------------------------------------------------------------- main


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mbytes", type=int, default=256, help="MB (10^6 bytes) of values to produce and read back")
    ap.add_argument("--strata-bin", type=Path, default=ROOT / "target/release/strata")
    ap.add_argument("--keep", type=Path, help="keep the broker's data dir and log under this directory")
    args = ap.parse_args()
    binary = args.strata_bin.resolve()
    if not binary.is_file():
        sys.exit(f"{binary} not found: cargo build --release -p strata")

    started = datetime.datetime.now().astimezone()
    cmdline = " ".join(["python3", "scripts/group_bench.py", *sys.argv[1:]])
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        tmp_ctx = None
        root = Path(tempfile.mkdtemp(prefix="group-bench-", dir=args.keep))
    else:
        tmp_ctx = tempfile.TemporaryDirectory(prefix="group-bench-")
        root = Path(tmp_ctx.name)

    broker = Broker(binary, root)
    broker.start()
    exit_code = None
    try:
        b = broker.bootstrap
        print(f"== broker {binary} on {b} (log {broker.log_path})", flush=True)
        create_topic(b, "assign-timing", PARTITIONS)
        create_topic(b, "data", PARTITIONS)

        print(f"== first assignment, one consumer ({args.rounds} rounds)", flush=True)
        one = []
        for r in range(args.rounds):
            one.append(first_assignment_one(b, "assign-timing"))
            print(f"  round {r + 1}: {one[-1] * 1000:.0f} ms", flush=True)

        print(f"== first assignment, group of three ({args.rounds} rounds)", flush=True)
        three, three_calls = [], []
        for r in range(args.rounds):
            t, calls = first_assignment_three(b, "assign-timing")
            three.append(t)
            three_calls.append(calls)
            print(f"  round {r + 1}: {t * 1000:.0f} ms ({calls} on_assign calls)", flush=True)

        count = args.mbytes * 1_000_000 // RECORD_BYTES
        rng = random.Random(42)
        records = [make_record(i, rng) for i in range(count)]
        print(f"== producing {count} records of {RECORD_BYTES} B ({count * RECORD_BYTES / 1e6:.0f} MB)", flush=True)
        produce_s = produce(b, "data", records)
        del records
        produce_mbs = count * RECORD_BYTES / produce_s / 1e6
        print(f"  {produce_s:.1f} s, {produce_mbs:.1f} MB/s", flush=True)
        wait_readable(b, "data", count)
        warm = consume_all(b, "data", count, "assign")
        print(f"  warm-up read (assign, not reported): {warm['from_call']:.1f} MB/s", flush=True)

        print(f"== group vs assign consume ({args.rounds} rounds, order alternating)", flush=True)
        runs = []
        for r in range(args.rounds):
            order = ("group", "assign") if r % 2 == 0 else ("assign", "group")
            res = {mode: consume_all(b, "data", count, mode) for mode in order}
            runs.append((order, res))
            g, a = res["group"], res["assign"]
            print(f"  round {r + 1} ({order[0]} first): group {g['from_call']:.1f} MB/s, "
                  f"assign {a['from_call']:.1f} MB/s", flush=True)
    finally:
        exit_code = broker.stop()
        if tmp_ctx is not None and exit_code == 0:
            tmp_ctx.cleanup()
    if exit_code != 0:
        sys.exit(f"broker exited with {exit_code} after SIGTERM\n{broker.log_tail()}"
                 + (f"\n(data kept in {root})" if tmp_ctx is not None else ""))

    def ms(xs):
        med, lo, hi = stats(xs)
        return f"{med * 1000:.0f} ms", f"{lo * 1000:.0f} ms", f"{hi * 1000:.0f} ms"

    def mbs(xs):
        med, lo, hi = stats(xs)
        return f"{med:.1f} MB/s", f"{lo:.1f}", f"{hi:.1f}"

    def ratio(xs):
        med, lo, hi = stats(xs)
        return f"{med:.2f}×", f"{lo:.2f}", f"{hi:.2f}"

    g_call = [res["group"]["from_call"] for _, res in runs]
    g_first = [res["group"]["from_first"] for _, res in runs]
    a_call = [res["assign"]["from_call"] for _, res in runs]
    a_first = [res["assign"]["from_first"] for _, res in runs]
    g_assign = [res["group"]["assign_s"] for _, res in runs if res["group"]["assign_s"] is not None]

    print()
    print(f"date: {started:%Y-%m-%d %H:%M:%S %Z}")
    print(f"command: {cmdline}")
    built = datetime.datetime.fromtimestamp(binary.stat().st_mtime).astimezone()
    print(f"strata: {binary} (built {built:%Y-%m-%d %H:%M %Z}; tree at git {git_rev()}); confluent-kafka {confluent_kafka.__version__}, "
          f"librdkafka {confluent_kafka.libversion()[0]}; {os.cpu_count()} CPUs, {platform.machine()}")
    print(f"data: {count} records × {RECORD_BYTES} B = {count * RECORD_BYTES / 1e6:.0f} MB of values, "
          f"{PARTITIONS} partitions, produced at {produce_mbs:.1f} MB/s (acks=all); "
          f"broker exit code after SIGTERM: {exit_code}")
    print()
    print(f"| measurement ({args.rounds} rounds) | median | min | max |")
    print("|---|---|---|---|")
    print("| first assignment, 1 consumer (subscribe → on_assign) | %s | %s | %s |" % ms(one))
    print("| first assignment, 3 consumers (first subscribe → all 3 assigned) | %s | %s | %s |" % ms(three))
    print("| on_assign calls until the 3 are assigned | %g | %d | %d |"
          % (statistics.median(three_calls), min(three_calls), max(three_calls)))
    print("| group consume, from subscribe() to last record | %s | %s | %s |" % mbs(g_call))
    print("| group consume, first to last record | %s | %s | %s |" % mbs(g_first))
    print("| assign consume, from assign() to last record | %s | %s | %s |" % mbs(a_call))
    print("| assign consume, first to last record | %s | %s | %s |" % mbs(a_first))
    print("| group / assign, from the call | %s | %s | %s |" % ratio([g / a for g, a in zip(g_call, a_call)]))
    print("| group / assign, first to last record | %s | %s | %s |"
          % ratio([g / a for g, a in zip(g_first, a_first)]))
    if g_assign:
        print("| group consumer: subscribe() → on_assign | %s | %s | %s |" % ms(g_assign))
    print()
    print("| round | order | group MB/s (call / first msg) | group: first msg after | "
          "assign MB/s (call / first msg) | assign: first msg after | group/assign (call / first msg) |")
    print("|---|---|---|---|---|---|---|")
    for r, (order, res) in enumerate(runs):
        g, a = res["group"], res["assign"]
        print(f"| {r + 1} | {order[0]} first | {g['from_call']:.1f} / {g['from_first']:.1f} | "
              f"{g['first_msg_s'] * 1000:.0f} ms | {a['from_call']:.1f} / {a['from_first']:.1f} | "
              f"{a['first_msg_s'] * 1000:.0f} ms | {g['from_call'] / a['from_call']:.2f} / "
              f"{g['from_first'] / a['from_first']:.2f} |")


if __name__ == "__main__":
    main()
