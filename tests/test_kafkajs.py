"""kafkajs (the Node.js Kafka client, its own protocol implementation) works against Strata.

The client runs unchanged in Node: ``tests/js`` holds a package.json pinning kafkajs
2.2.4 (with its package-lock.json) and three small scripts that print one JSON object
each — ``admin.mjs`` (createTopics, listTopics, fetchTopicOffsets, fetchOffsets),
``produce.mjs`` (an idempotent producer, ``acks: -1``, the Java-compatible default
partitioner) and ``consume.mjs`` (a consumer-group member, ``fromBeginning: true``,
kafkajs' default automatic commits). A session fixture runs ``npm install`` there once;
a missing node/npm fails the tests (scripts/test.sh installs them), nothing is skipped.

These tests prove:

* Admin: createTopics creates a 3-partition topic (and answers ``false`` — Kafka's
  TOPIC_ALREADY_EXISTS — for a second create), listTopics lists it, confluent-kafka
  sees its partitions in Metadata, and fetchTopicOffsets (ListOffsets) reports
  ``low 0 / high 0`` when empty and exactly the counts another client produced after.
* Produce and consume in a group: kafkajs' idempotent producer sends keyed messages
  with headers (one header key repeated) and each acknowledgement's partition/offset
  is where the record is: confluent-kafka reads the same key, value and headers (in
  order) there, and a raw Fetch shows every batch carries one producer id with
  gap-free sequences. A kafkajs group member reads every message back with matching
  partition, offset, key, value and headers, and its commits (read back with the
  admin's fetchOffsets, i.e. OffsetFetch) are the high watermarks.
* Commits are honoured: after that member disconnected, more messages are produced
  and a second member of the same group reads exactly those — nothing old.

Every node process runs with a timeout (its own deadline, and ``subprocess.run``'s
above it); kafkajs logs at ERROR only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from kafka_clients import (
    Rec,
    assert_idempotent_batches,
    consume_confluent,
    create_topic,
    list_topics,
    produce_confluent,
    unique_topic,
    watermarks,
)

JS_DIR = Path(__file__).resolve().parent / "js"
KAFKAJS_VERSION = json.loads((JS_DIR / "package.json").read_text())["dependencies"]["kafkajs"]
PARTITIONS = 3
NPM_TIMEOUT = 300.0
SCRIPT_TIMEOUT = 60.0  # each script's own deadline; subprocess.run allows 30 s more


@dataclass
class KafkaJS:
    node: str
    bootstrap: str

    def run(self, script: str, *args: str, stdin: object = None,
            timeout: float = SCRIPT_TIMEOUT) -> dict:
        """Run ``node tests/js/<script> <bootstrap> <timeout-ms> args...``; its JSON output."""
        cmd = [self.node, str(JS_DIR / script), self.bootstrap, str(int(timeout * 1000)), *args]
        try:
            proc = subprocess.run(cmd, cwd=JS_DIR, capture_output=True, text=True,
                                  input=None if stdin is None else json.dumps(stdin),
                                  timeout=timeout + 30)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{' '.join(cmd[1:])} did not exit within {timeout + 30:.0f}s; "
                                 f"stderr: {exc.stderr}") from None
        lines = proc.stdout.strip().splitlines()
        try:
            out = json.loads(lines[-1]) if lines else None  # the scripts print it last
        except json.JSONDecodeError:
            out = None
        assert proc.returncode == 0 and out is not None and "error" not in out, (
            f"{script} {' '.join(args)} exited {proc.returncode}\n"
            f"stderr: {proc.stderr.strip()[-3000:]}\nstdout: {proc.stdout.strip()[-3000:]}")
        return out

    def admin(self, op: str, *args: str) -> dict:
        return self.run("admin.mjs", op, *args)


@pytest.fixture(scope="session")
def kafkajs_node() -> str:
    """Installs tests/js (kafkajs) with npm once per session; the node executable."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail(f"node ({node}) and npm ({npm}) are needed for the kafkajs tests; "
                    "scripts/test.sh installs Debian's `nodejs npm` with apt-get", pytrace=False)
    env = {**os.environ, "NPM_CONFIG_UPDATE_NOTIFIER": "false"}
    try:
        proc = subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=JS_DIR, env=env,
                              capture_output=True, text=True, timeout=NPM_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`npm install` in {JS_DIR} did not finish within {NPM_TIMEOUT:.0f}s",
                    pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"`npm install` in {JS_DIR} failed ({proc.returncode}):\n"
                    f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}", pytrace=False)
    installed = json.loads((JS_DIR / "node_modules" / "kafkajs" / "package.json").read_text())
    assert installed["version"] == KAFKAJS_VERSION, (
        f"npm installed kafkajs {installed['version']}, package.json pins {KAFKAJS_VERSION}")
    return node


@pytest.fixture
def kafkajs(kafkajs_node, broker) -> KafkaJS:
    return KafkaJS(kafkajs_node, broker.bootstrap)


def unique_group(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def messages(tag: str, count: int) -> list[dict]:
    """Keyed UTF-8 messages; headers include a repeated key (kafkajs: an array value)."""
    return [{"key": f"{tag}-key-{i}", "value": f"{tag}-value-{i} héllo ✓",
             "headers": {"seq": str(i), "client": "kafkajs", "multi": ["first", f"second-{i}"]}}
            for i in range(count)]


def as_rows(msgs: list[dict], results: list[dict]) -> list[tuple]:
    """(partition, offset, key, value, headers as sorted JSON) from sent messages + acks."""
    assert len(results) == len(msgs), f"{len(results)} acknowledgements for {len(msgs)} messages"
    bad = [r for r in results if r["errorCode"] != 0]
    assert not bad, f"produce acknowledgements with errors: {bad[:5]}"
    return [(r["partition"], r["offset"], m["key"], m["value"], json.dumps(m["headers"], sort_keys=True))
            for m, r in zip(msgs, results)]


def consumed_rows(out: dict) -> list[tuple]:
    return [(m["partition"], m["offset"], m["key"], m["value"], json.dumps(m["headers"], sort_keys=True))
            for m in out["messages"]]


def by_partition(rows: list[tuple]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for p, o, *_ in rows:
        out.setdefault(p, []).append(o)
    return {p: sorted(v) for p, v in sorted(out.items())}


# -------------------------------------------------------------------------------- admin


def test_admin_create_list_and_fetch_topic_offsets(kafkajs, broker):
    topic = unique_topic("kafkajs-admin")

    assert kafkajs.admin("create", topic, str(PARTITIONS)) == {"created": True}
    assert kafkajs.admin("create", topic, str(PARTITIONS)) == {"created": False}, (
        "kafkajs answers false when CreateTopics says TOPIC_ALREADY_EXISTS")

    topics = kafkajs.admin("list")["topics"]
    assert topic in topics, f"listTopics does not list {topic}: {topics}"
    meta = list_topics(broker.bootstrap)[topic]
    assert sorted(meta.partitions) == list(range(PARTITIONS)), (
        f"confluent-kafka Metadata: {topic} has partitions {sorted(meta.partitions)}")

    empty = kafkajs.admin("offsets", topic)["offsets"]
    assert empty == [{"partition": p, "offset": 0, "high": 0, "low": 0} for p in range(PARTITIONS)], (
        f"fetchTopicOffsets of the empty topic: {empty}")

    # Another client produces 1, 2 and 3 records to partitions 0, 1, 2.
    counts = {p: p + 1 for p in range(PARTITIONS)}
    produce_confluent(broker.bootstrap, topic,
                      [Rec(b"k", f"v{p}-{i}".encode(), partition=p)
                       for p, n in counts.items() for i in range(n)])
    offsets = kafkajs.admin("offsets", topic)["offsets"]
    assert offsets == [{"partition": p, "offset": n, "high": n, "low": 0} for p, n in counts.items()], (
        f"fetchTopicOffsets after producing {counts}: {offsets}")


# ------------------------------------------------------------------ produce and consume


def test_idempotent_produce_group_consume_and_commits_honoured(kafkajs, broker):
    topic = unique_topic("kafkajs-rt")
    group = unique_group("kafkajs-rt")
    create_topic(broker.bootstrap, topic, PARTITIONS)

    # 1. kafkajs' idempotent producer; every acknowledgement names where the record is.
    first = messages("first", 30)
    sent = as_rows(first, kafkajs.run("produce.mjs", topic, stdin={"messages": first})["results"])
    offsets = by_partition(sent)
    assert set(offsets) == set(range(PARTITIONS)), (
        f"30 keys should land on all {PARTITIONS} partitions, acknowledged {offsets}")
    for p, offs in offsets.items():
        assert offs == list(range(len(offs))), f"partition {p}: acknowledged offsets {offs}"
        assert watermarks(broker.bootstrap, topic, p) == (0, len(offs)), (
            f"partition {p}: watermarks after {len(offs)} acknowledged records")
        # What is stored there, as an independent client reads it (header order included).
        stored = consume_confluent(broker.bootstrap, topic, p)
        want = [Rec(k.encode(), v.encode(),
                    (("seq", h["seq"].encode()), ("client", b"kafkajs"),
                     ("multi", b"first"), ("multi", h["multi"][1].encode())), partition=p, offset=o)
                for (pp, o, k, v, _), h in zip(sent, (m["headers"] for m in first)) if pp == p]
        got = [Rec(r.key, r.value, r.headers, partition=r.partition, offset=r.offset) for r in stored]
        assert got == sorted(want, key=lambda r: r.offset), (
            f"partition {p}: confluent-kafka reads {got[:3]}..., kafkajs acknowledged {want[:3]}...")
    assert_idempotent_batches(broker.bootstrap, topic, PARTITIONS)

    # 2. A group member reads everything back and commits it.
    out = kafkajs.run("consume.mjs", topic, group, str(len(sent)))
    got = consumed_rows(out)
    assert sorted(got) == sorted(sent), (
        "the kafkajs consumer read different records than were produced:\n"
        f"missing {sorted(set(sent) - set(got))[:3]}\nunexpected {sorted(set(got) - set(sent))[:3]}")
    assert len(got) == len(set(got)), "a record was delivered twice"
    assert out["assignments"] and out["assignments"][-1] == {topic: list(range(PARTITIONS))}, (
        f"a lone member should be assigned every partition: {out['assignments']}")
    highs = {p: len(offs) for p, offs in offsets.items()}
    assert {int(p): o for p, o in out["committed"].items()} == highs, (
        f"the consumer committed {out['committed']}, expected the high watermarks {highs}")
    fetched = kafkajs.admin("group-offsets", group, topic)
    assert fetched["offsets"] == [{"partition": p, "offset": highs[p], "metadata": None}
                                  for p in range(PARTITIONS)], (
        f"fetchOffsets (OffsetFetch) for {group} after the consumer left: {fetched}")

    # 3. New records after the commit; the group's next member reads only those.
    fresh = messages("fresh", 12)
    fresh_sent = as_rows(fresh, kafkajs.run("produce.mjs", topic, stdin={"messages": fresh})["results"])
    assert {p for p, *_ in fresh_sent} == set(range(PARTITIONS)), (
        f"fresh keys should cover every partition: {by_partition(fresh_sent)}")
    for p, offs in by_partition(fresh_sent).items():
        assert offs[0] == highs[p], f"partition {p}: fresh records acknowledged at {offs}"

    out2 = kafkajs.run("consume.mjs", topic, group, str(len(fresh_sent)))
    got2 = consumed_rows(out2)
    old = sorted(set(got2) & set(sent))
    assert not old, f"the second member re-read {len(old)} committed records, e.g. {old[:3]}"
    assert sorted(got2) == sorted(fresh_sent), (
        f"the second member read {sorted(got2)[:3]}..., expected {sorted(fresh_sent)[:3]}...")
    assert out2["memberId"] != out["memberId"], "the second consumer should be a new member"
    final = {p: highs[p] + len(o) for p, o in by_partition(fresh_sent).items()}
    assert {int(p): o for p, o in out2["committed"].items()} == final, (
        f"second member committed {out2['committed']}, expected {final}")
