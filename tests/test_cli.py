"""The ``strata`` command line end to end, against a real broker over QUIC.

What these tests prove:

* Topics: ``topic create`` (with ``--config``) shows up in ``topic list`` and
  ``topic describe`` (partitions, log start/end offsets, configs); ``topic alter`` sets and
  deletes configs and adds partitions (also seen by a Kafka AdminClient); ``topic delete``
  removes the topic.
* Bulk round trip: 100,000 lines piped into ``strata produce`` (stdin, and ``--file``)
  come back from ``strata consume``: in order on a 1-partition topic (``--count``), and on
  a 3-partition topic as the same multiset, spread over the partitions, in input order
  within each partition, at offsets 0..n-1 (read with ``--format '%p %o %v\\n'``).
* Output formats: ``--format json`` and the kcat-like template (``%t %p %o %k %v %T``);
  ``--key-sep`` splits at the first separator; ``--from OFFSET``/``latest``/``@ms``/
  ``@RFC3339`` start where they say.
* Keyed records land in the partition librdkafka's ``murmur2_random`` partitioner (Kafka's
  Java default) picks for the same key.
* Groups: ``consume --group`` commits what it read (seen by Kafka's OffsetFetch and by a
  confluent-kafka member of the same group), ``group describe`` shows lag 0, committed
  offsets win over ``--from``, ``group reset-offsets --to earliest`` replays, ``group list``
  and ``group delete``.
* Through a lossy, reordering UDP relay (``udp_relay.py``): every line acknowledged at
  ``--acks all`` is stored exactly once and reads back through the relay; the relay's
  counters prove datagrams really were dropped and reordered.
* ``cluster info`` lists the broker with its addresses and zone.
* Global flags work before or after the subcommand and from ``STRATA_ADDR``/``STRATA_CA``,
  and the CA defaults to ``./strata-data/tls/ca.pem``.
* Errors exit non-zero promptly with one line that says what to do: nothing answering at
  the address (is ``strata serve`` running?), an untrusted certificate (``--ca``), a missing
  CA file, a topic that exists or does not.

Every subprocess has a timeout; every wait is bounded.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import shutil
import time
from collections import Counter

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaError, TopicPartition

import native_wire as nw
import tls_certs as tc
from harness import free_udp_port, wait_until
from kafka_clients import (
    Rec,
    admin,
    confluent_conf,
    consume_confluent,
    describe_topic_config,
    list_topics,
    produce_confluent,
    unique_topic,
    watermarks,
)
from strata_cli import column, has_word, lines_with, run_cli, strata, table_after_header
from udp_relay import LossyRelay

BULK = 100_000
SEED = int(os.environ.get("STRATA_TEST_SEED", "20240601"))
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa héllo wörld ✓".split()
ADMIN_TIMEOUT = 30


def now_ms() -> int:
    return int(time.time() * 1000)


def create_topic(broker, prefix: str, partitions: int = 1, *configs: str) -> str:
    topic = unique_topic(prefix)
    args = ["topic", "create", topic, "--partitions", str(partitions)]
    for config in configs:
        args += ["--config", config]
    strata(broker, *args)
    return topic


def make_lines(count: int, tag: str, seed: int = SEED, words: int = 4) -> list[str]:
    rng = random.Random(f"{seed}-{tag}")
    return [f"{tag}-{i:06d} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, words)))
            for i in range(count)]


def first_difference(got: list[str], expected: list[str]) -> str:
    for i, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            return f"first difference at line {i}: got {g!r}, expected {e!r}"
    return f"got {len(got)} lines, expected {len(expected)}"


def unique_group(prefix: str) -> str:
    return unique_topic(prefix)


# ------------------------------------------------------------------- topics, bulk


def test_topic_create_list_describe_and_100k_lines_round_trip(broker, tmp_path):
    one = create_topic(broker, "cli-bulk-one", 1)
    three = create_topic(broker, "cli-bulk-three", 3, "retention.ms=604800000")

    listing = strata(broker, "topic", "list")
    assert listing.lines and not any(has_word(listing.lines[0], t) for t in (one, three)), (
        f"topic list should start with a header line:\n{listing.stdout}")
    for topic in (one, three):
        assert len(lines_with(listing.stdout, topic)) == 1, f"{topic} not listed once:\n{listing.stdout}"

    lines = make_lines(BULK, "bulk")
    text = "\n".join(lines) + "\n"
    strata(broker, "produce", one, input=text, timeout=300)
    path = tmp_path / "lines.txt"
    path.write_text(text)
    strata(broker, "produce", three, "--file", str(path), timeout=300)

    # One partition: the same lines in the same order.
    got = strata(broker, "consume", one, "--from", "earliest", "--count", str(BULK), timeout=300).lines
    assert got == lines, first_difference(got, lines)
    assert strata(broker, "consume", one, "--from", "earliest", "--count", "10").lines == lines[:10]
    assert watermarks(broker.bootstrap, one, 0) == (0, BULK)

    # Three partitions: the same multiset, spread, in input order within each partition.
    out = strata(broker, "consume", three, "--from", "earliest", "--format", r"%p %o %v\n", timeout=300)
    by_partition: dict[int, list[tuple[int, str]]] = {}
    for line in out.lines:
        p, o, v = line.split(" ", 2)
        by_partition.setdefault(int(p), []).append((int(o), v))
    values = [v for recs in by_partition.values() for _, v in recs]
    assert len(values) == BULK and Counter(values) == Counter(lines), (
        f"{len(values)} records read; missing {len(set(lines) - set(values))}, "
        f"duplicated {sum(1 for c in Counter(values).values() if c > 1)}")
    assert sorted(by_partition) == [0, 1, 2], f"records without key all went to {sorted(by_partition)}"
    index = {line: i for i, line in enumerate(lines)}
    for p, recs in by_partition.items():
        assert [o for o, _ in recs] == list(range(len(recs))), f"partition {p}: offsets not 0..{len(recs) - 1}"
        order = [index[v] for _, v in recs]
        assert order == sorted(order), f"partition {p}: records out of input order"
        assert watermarks(broker.bootstrap, three, p) == (0, len(recs))

    desc_one = strata(broker, "topic", "describe", one).stdout
    assert lines_with(desc_one, str(BULK)), f"describe does not show end offset {BULK}:\n{desc_one}"
    desc_three = strata(broker, "topic", "describe", three).stdout
    for p, recs in by_partition.items():
        assert lines_with(desc_three, str(p), str(len(recs))), (
            f"describe does not show partition {p} ending at {len(recs)}:\n{desc_three}")
    assert lines_with(desc_three, "retention.ms", "604800000"), f"describe lacks the config:\n{desc_three}"


def test_consume_formats_and_key_separator(broker):
    topic = create_topic(broker, "cli-formats")
    lines = [f"user-{i}:payload:{i}:✓ {'z' * (i % 7)}" for i in range(50)]
    t0 = now_ms() - 1000
    strata(broker, "produce", topic, "--key-sep", ":", input="\n".join(lines) + "\n")
    t1 = now_ms() + 1000

    objs = [json.loads(line) for line in strata(broker, "consume", topic, "--from", "earliest",
                                                "--format", "json").lines]
    assert len(objs) == len(lines), objs[:3]
    for i, (obj, line) in enumerate(zip(objs, lines)):
        key, value = line.split(":", 1)
        assert {k: obj.get(k) for k in ("topic", "partition", "offset", "key", "value")} == {
            "topic": topic, "partition": 0, "offset": i, "key": key, "value": value}, obj
        assert isinstance(obj["timestamp"], int) and t0 <= obj["timestamp"] <= t1, obj

    rows = [line.split("\t") for line in strata(
        broker, "consume", topic, "--from", "earliest", "--format", r"%t\t%p\t%o\t%k\t%v\t%T\n").lines]
    assert rows == [[topic, "0", str(i), o["key"], o["value"], str(o["timestamp"])]
                    for i, o in enumerate(objs)], rows[:3]

    middle = strata(broker, "consume", topic, "--from", "10", "--count", "5", "--format", r"%o %k\n").lines
    assert middle == [f"{i} user-{i}" for i in range(10, 15)], middle
    assert strata(broker, "consume", topic, "--from", "latest").lines == []


def test_consume_from_timestamp(broker):
    topic = create_topic(broker, "cli-time")
    before = make_lines(200, "before")
    after = make_lines(150, "after")
    strata(broker, "produce", topic, input="\n".join(before) + "\n")
    mark = now_ms() + 1
    wait_until(lambda: now_ms() > mark, 5, "the clock to pass the mark", interval=0.001)
    strata(broker, "produce", topic, input="\n".join(after) + "\n")

    got = strata(broker, "consume", topic, "--from", f"@{mark}").lines
    assert got == after, f"--from @{mark}: " + first_difference(got, after)
    rfc3339 = (datetime.datetime.fromtimestamp(mark // 1000, datetime.timezone.utc)
               .strftime("%Y-%m-%dT%H:%M:%S") + f".{mark % 1000:03d}Z")
    got = strata(broker, "consume", topic, "--from", f"@{rfc3339}").lines
    assert got == after, f"--from @{rfc3339}: " + first_difference(got, after)
    assert strata(broker, "consume", topic, "--from", f"@{now_ms() + 3_600_000}").lines == []
    assert strata(broker, "consume", topic, "--from", "earliest").lines == before + after


# ---------------------------------------------------------------------------- groups


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """OffsetFetch through confluent-kafka's AdminClient (negative: nothing committed)."""
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])
    client = admin(bootstrap)  # must outlive the future: destroying it fails the future
    result = client.list_consumer_group_offsets([request], request_timeout=ADMIN_TIMEOUT)[
        group].result(timeout=ADMIN_TIMEOUT)
    return {tp.partition: tp.offset for tp in result.topic_partitions}


def kafka_group_names(bootstrap: str) -> set[str]:
    client = admin(bootstrap)  # must outlive the future
    result = client.list_consumer_groups(request_timeout=ADMIN_TIMEOUT).result(timeout=ADMIN_TIMEOUT)
    return {g.group_id for g in result.valid}


def confluent_member_reads(bootstrap: str, group: str, topic: str, partitions: int,
                           timeout: float = 60) -> list[bytes]:
    """A confluent-kafka member of ``group`` (range assignor) reads from the committed offsets
    to the end of every partition, commits and leaves."""
    consumer = Consumer(confluent_conf(bootstrap, **{
        "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "error",
        "enable.partition.eof": True, "partition.assignment.strategy": "range",
        "session.timeout.ms": 10000, "fetch.wait.max.ms": 100}))
    try:
        consumer.subscribe([topic])
        values: list[bytes] = []
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        while at_end != set(range(partitions)):
            assert time.monotonic() < deadline, (
                f"confluent member of {group} reached the end of {sorted(at_end)} only, after {timeout}s")
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    continue
                raise AssertionError(f"confluent member of {group}: {msg.error()}")
            at_end.discard(msg.partition())
            values.append(msg.value())
        if values:
            consumer.commit(asynchronous=False)
        return values
    finally:
        consumer.close()


def test_group_commit_describe_reset_and_delete(broker):
    partitions = 2
    topic = create_topic(broker, "cli-group", partitions)
    group = unique_group("cli-g")
    lines = [f"k{i}:{v}" for i, v in enumerate(make_lines(300, "grp"))]
    values = [line.split(":", 1)[1] for line in lines]
    strata(broker, "produce", topic, "--key-sep", ":", input="\n".join(lines) + "\n")
    ends = {p: watermarks(broker.bootstrap, topic, p)[1] for p in range(partitions)}
    assert all(ends.values()), f"keyed records should reach both partitions: {ends}"

    got = strata(broker, "consume", topic, "--group", group, "--from", "earliest",
                 "--count", str(len(lines))).lines
    assert sorted(got) == sorted(values), first_difference(sorted(got), sorted(values))
    assert committed_offsets(broker.bootstrap, group, topic, partitions) == ends, "offsets committed on exit"

    described = strata(broker, "group", "describe", group).stdout
    header, rows = table_after_header(described, "LAG")
    p_col, lag_col = column(header, "PARTITION"), column(header, "LAG")
    committed_col = column(header, "COMMIT", "CURRENT", "OFFSET")
    end_col = column(header, "END", "HIGH", "WATERMARK", "HW")
    seen = {}
    for row in rows:
        seen[int(row[p_col])] = (row[committed_col], row[end_col], row[lag_col])
    assert seen == {p: (str(e), str(e), "0") for p, e in ends.items()}, (
        f"group describe should show committed = end, lag 0:\n{described}")
    assert lines_with(strata(broker, "group", "list").stdout, group), "group list lacks the group"

    # Committed offsets win over --from: nothing new, nothing printed.
    assert strata(broker, "consume", topic, "--group", group, "--from", "earliest").lines == []

    # A Kafka consumer in the same group starts at the command line's commits.
    more = [f"k{i}:more-{i}" for i in range(20)]
    strata(broker, "produce", topic, "--key-sep", ":", input="\n".join(more) + "\n")
    read = confluent_member_reads(broker.bootstrap, group, topic, partitions)
    assert sorted(v.decode() for v in read) == sorted(f"more-{i}" for i in range(20)), read
    assert strata(broker, "consume", topic, "--group", group).lines == []

    strata(broker, "group", "reset-offsets", group, "--topic", topic, "--to", "earliest")
    replay = strata(broker, "consume", topic, "--group", group).lines
    assert sorted(replay) == sorted(values + [f"more-{i}" for i in range(20)]), (
        f"after reset-offsets --to earliest: {len(replay)} lines")

    strata(broker, "group", "delete", group)
    assert not lines_with(strata(broker, "group", "list").stdout, group), "deleted group still listed"
    assert group not in kafka_group_names(broker.bootstrap)


# ------------------------------------------------------------------ alter, delete


def test_topic_alter_and_delete(broker):
    topic = create_topic(broker, "cli-alter", 2, "retention.ms=86400000")
    assert lines_with(strata(broker, "topic", "describe", topic).stdout, "retention.ms", "86400000")

    strata(broker, "topic", "alter", topic, "--config", "retention.ms=123456789",
           "--config", "max.message.bytes=300000")
    desc = strata(broker, "topic", "describe", topic).stdout
    assert lines_with(desc, "retention.ms", "123456789"), f"altered retention.ms not shown:\n{desc}"
    assert lines_with(desc, "max.message.bytes", "300000"), f"altered max.message.bytes not shown:\n{desc}"
    kafka_view = describe_topic_config(broker.bootstrap, topic)
    assert (kafka_view["retention.ms"], kafka_view["max.message.bytes"]) == ("123456789", "300000")

    strata(broker, "topic", "alter", topic, "--delete-config", "retention.ms", "--partitions", "4")
    desc = strata(broker, "topic", "describe", topic).stdout
    assert not lines_with(desc, "retention.ms", "123456789"), f"deleted config still shown:\n{desc}"
    assert describe_topic_config(broker.bootstrap, topic)["retention.ms"] != "123456789"
    assert lines_with(desc, "3"), f"partition 3 not described:\n{desc}"
    wait_until(lambda: len(list_topics(broker.bootstrap)[topic].partitions) == 4, 30,
               f"{topic} to have 4 partitions in Kafka metadata")

    strata(broker, "topic", "delete", topic)
    assert not lines_with(strata(broker, "topic", "list").stdout, topic), "deleted topic still listed"
    wait_until(lambda: topic not in list_topics(broker.bootstrap), 30, f"{topic} gone from Kafka metadata")


# --------------------------------------------------------------------------- keys


def test_keyed_produce_uses_kafka_murmur2_partitioner(broker):
    partitions = 6
    topic = create_topic(broker, "cli-keys", partitions)
    keys = [f"user-{i}" for i in range(40)] + ["ключ", "键-7", "a", "key with spaces", "x" * 200]
    delivered = produce_confluent(broker.bootstrap, topic,
                                  [Rec(k.encode(), b"confluent") for k in keys],
                                  partitioner="murmur2_random")
    expected = {r.key.decode(): r.partition for r in delivered}
    assert len(set(expected.values())) >= 4, f"librdkafka used only partitions {set(expected.values())}"

    strata(broker, "produce", topic, "--key-sep", ":",
           input="".join(f"{k}:strata-{i}\n" for i, k in enumerate(keys)))
    placed = {}
    for p in range(partitions):
        for rec in consume_confluent(broker.bootstrap, topic, p):
            if rec.value.startswith(b"strata-"):
                placed[rec.key.decode()] = p
    assert set(placed) == set(keys), f"strata records for keys {set(keys) - set(placed)} missing"
    wrong = {k: (placed[k], expected[k]) for k in keys if placed[k] != expected[k]}
    assert not wrong, f"key -> (strata partition, librdkafka murmur2 partition): {wrong}"


# ---------------------------------------------------------------------- lossy relay


def test_produce_and_consume_through_lossy_relay(broker):
    topic = create_topic(broker, "cli-lossy", 3)
    lines = make_lines(4000, "lossy", words=40)  # ~1 MB: enough datagrams for loss in both directions
    relay = LossyRelay(("127.0.0.1", broker.quic_port), drop=0.03, delay=0.03, seed=SEED).start()
    try:
        strata(broker, "produce", topic, "--acks", "all", addr=relay.addr,
               input="\n".join(lines) + "\n", timeout=300)
        got = strata(broker, "consume", topic, "--from", "earliest", addr=relay.addr, timeout=300).lines
        stats = relay.snapshot()
    finally:
        relay.stop()
    summary = relay.summary()
    assert stats["up"].dropped > 0 and stats["down"].dropped > 0, f"no loss in one direction: {summary}"
    assert stats["up"].reordered + stats["down"].reordered > 0, f"nothing reordered: {summary}"

    counts = Counter(got)
    dupes = {v: c for v, c in counts.items() if c > 1}
    missing = set(lines) - set(counts)
    assert not dupes and not missing and len(got) == len(lines), (
        f"{len(got)} lines read through the relay; {len(missing)} missing, {len(dupes)} duplicated "
        f"(e.g. {sorted(missing)[:3]} {list(dupes.items())[:3]}); relay: {summary}")
    stored = sum(watermarks(broker.bootstrap, topic, p)[1] for p in range(3))
    assert stored == len(lines), f"{stored} records stored for {len(lines)} acknowledged lines; relay: {summary}"


# ------------------------------------------------------------------------- cluster


def test_cluster_info_lists_broker_addresses_and_zone(make_broker):
    broker = make_broker("strata-zoned", args=["--zone", "test-zone-a"])
    with nw.connect(broker) as conn:
        broker_id = conn.hello()["broker_id"]
    out = strata(broker, "cluster", "info").stdout
    rows = lines_with(out, str(broker_id))
    assert any(f"127.0.0.1:{broker.quic_port}" in r and broker.bootstrap in r and "test-zone-a" in r
               for r in rows), f"no row with id {broker_id}, both addresses and the zone:\n{out}"


# ----------------------------------------------------------------- flags and errors


def test_global_flags_anywhere_from_environment_and_default_ca(broker, tmp_path):
    topic = create_topic(broker, "cli-flags")
    addr, ca = f"127.0.0.1:{broker.quic_port}", broker.data_dir / "tls" / "ca.pem"
    after = run_cli(["topic", "list", "--addr", addr, "--ca", ca])
    assert after.code == 0 and lines_with(after.stdout, topic), after.describe()
    from_env = run_cli(["topic", "list"], env={"STRATA_ADDR": addr, "STRATA_CA": str(ca)})
    assert from_env.code == 0 and lines_with(from_env.stdout, topic), from_env.describe()
    cwd = tmp_path / "cwd"
    (cwd / "strata-data" / "tls").mkdir(parents=True)
    shutil.copy(ca, cwd / "strata-data" / "tls" / "ca.pem")
    default_ca = run_cli(["--addr", addr, "topic", "list"], cwd=cwd)
    assert default_ca.code == 0 and lines_with(default_ca.stdout, topic), default_ca.describe()


def assert_one_line_error(result, *words: str, within: float = 30) -> None:
    assert result.code != 0, f"expected a failure:\n{result.describe()}"
    assert result.elapsed < within, f"took {result.elapsed:.1f}s to fail (bound {within}s):\n{result.describe()}"
    assert len(result.error_lines) == 1, f"expected a one-line error message:\n{result.describe()}"
    for word in words:
        assert word.lower() in result.stderr.lower(), f"the message does not mention {word!r}:\n{result.describe()}"


def test_error_when_nothing_answers(tmp_path):
    ca = tc.make_ca(tmp_path, "ca")
    addr = f"127.0.0.1:{free_udp_port()}"  # nothing listens there
    result = run_cli(["--addr", addr, "--ca", ca.cert_path, "topic", "list"], timeout=60)
    assert_one_line_error(result, addr, "strata serve")


def test_error_when_certificate_is_not_trusted(broker, tmp_path):
    other = tc.make_ca(tmp_path, "other")
    result = strata(broker, "topic", "list", ca=other.cert_path, check=False, timeout=60)
    assert_one_line_error(result, "certificate", "--ca")
    missing = tmp_path / "no-such-ca.pem"
    result = strata(broker, "topic", "list", ca=missing, check=False, timeout=60)
    assert_one_line_error(result, str(missing))


def test_error_for_admin_mistakes(broker):
    topic = create_topic(broker, "cli-mistakes")
    assert_one_line_error(strata(broker, "topic", "create", topic, "--partitions", "1", check=False), topic)
    missing = unique_topic("cli-missing")
    assert_one_line_error(strata(broker, "topic", "describe", missing, check=False), missing)
    assert_one_line_error(strata(broker, "topic", "delete", missing, check=False), missing)
