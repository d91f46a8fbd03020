"""Strata's native protocol (QUIC, ALPN ``strata/1``) end to end, with an independent client.

The client (``native_wire.py``, on aioquic) is written from ``proto/README.md`` alone, so
these tests also prove the specification is enough to write one. They check:

* TLS: on first start the broker writes a CA and a server certificate under
  ``<data-dir>/tls`` (SANs ``localhost``, ``127.0.0.1``, ``::1``) and keeps them over a
  restart; aioquic completes the handshake with ALPN ``strata/1`` verifying against that
  CA, and another ALPN is refused. ``--tls-cert``/``--tls-key`` serve a given chain.
* ``hello`` answers protocol 1, a version range for every message and ``max_frame_bytes``;
  ``metadata`` advertises the listen addresses.
* Produce and fetch: batches (uncompressed, gzip, zstd) read back with the same keys,
  values, headers and timestamps at consecutive offsets; fetch skips records below its
  offset, long-polls at the high watermark, and refuses an offset past it; list_offsets
  by earliest/latest/timestamp. Topic administration messages and their error codes.
* Cross-protocol: records produced natively read back byte for byte with kcat (``-f``)
  and confluent-kafka; lines produced with ``strata produce`` read back with kcat; records
  produced with kcat read back with ``strata consume``.
* Mutual TLS (``--client-ca``): no certificate, or one from another CA, is refused at the
  handshake (a TLS alert), by aioquic and by the command line; a certificate from the CA is
  served and ``hello`` reports its common name as the identity.
* Bad input on one connection: bad lengths, headers that are not the JSON the kind needs,
  an unknown kind, an unsupported version, corrupt or oversized batches, impossible
  requests — each gets the documented error code on its stream, and afterwards the SAME
  connection still serves ``hello``/``metadata``, a new connection is served, and nothing
  was stored. A request reset half way dies alone. A pending request never delays another.
* Subscribe pushes records in order as they are produced; an error ends the stream.
* Idempotent produce: a retried batch (same producer id, epoch, sequence), on the same or a
  new connection, gets its first base offset back and is stored once; a gap is refused.

Every wait is bounded; nothing here sleeps to synchronise.
"""

from __future__ import annotations

import random
import re
import struct
import subprocess
import time
import uuid
from types import SimpleNamespace

import pytest

import native_wire as nw
import tls_certs as tc
from harness import Broker, track_broker, wait_until
from kafka_clients import (
    KCAT,
    consume_confluent,
    kcat_consume,
    kcat_produce,
    unique_topic,
    watermarks,
)
from kafka_wire import WireRecord
from native_wire import KINDS, RESPONSE_BIT
from strata_cli import strata

MESSAGES = list(KINDS)  # every message name of protocol version 1
DEFAULT_MAX_FRAME = 100 * 1024 * 1024


def now_ms() -> int:
    return int(time.time() * 1000)


def ca_of(broker: Broker):
    return broker.data_dir / "tls" / "ca.pem"


def create(conn: nw.NativeClient, prefix: str, partitions: int = 1, configs: dict | None = None) -> str:
    topic = unique_topic(prefix)
    conn.create_topic(topic, partitions, configs)
    return topic


def sample_records(seed: int, count: int = 12) -> list[WireRecord]:
    """Keys and values of every awkward kind, binary included; headers repeated, null and
    unicode; explicit, non-monotonic timestamps."""
    rng = random.Random(seed)
    base = now_ms() - 60_000
    out = []
    for i in range(count):
        key = None if i % 5 == 3 else f"key-{seed}-{i}".encode()
        if i == 1:
            value = None
        elif i == 2:
            value = b""
        elif i == 4:
            value = bytes(rng.getrandbits(8) for _ in range(100_000))
        else:
            value = f"value {i} ✓ ".encode() + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))
        headers = [
            [],
            [("trace", f"{seed}-{i}".encode())],
            [("dup", b"1"), ("dup", b"2"), ("ünïcode", "✓".encode()), ("null", None)],
            [("empty", b"")],
        ][i % 4]
        out.append(WireRecord(key, value, headers, base + i * 997 - (i % 3) * 5000))
    return out


def names_in_metadata(meta: dict) -> set[str]:
    return {t["name"] for t in meta["topics"] if not t.get("error")}


# ------------------------------------------------------------------- TLS and hello


def test_handshake_alpn_hello_and_generated_certificates(broker, tmp_path):
    tls = broker.data_dir / "tls"
    for name in ("ca.pem", "ca.key", "server.pem", "server.key"):
        assert (tls / name).is_file(), f"{tls / name} not written on first start: {sorted(tls.glob('*'))}"
    ca, server = tc.load_cert(tls / "ca.pem"), tc.load_cert(tls / "server.pem")
    server.verify_directly_issued_by(ca)  # raises if server.pem is not signed by ca.pem
    sans = tc.san_names(server)
    assert {"localhost", "127.0.0.1", "::1"} <= sans, f"server certificate SANs: {sans}"

    with nw.connect(broker) as conn:
        assert conn.alpn == "strata/1", f"negotiated ALPN {conn.alpn!r}"
        hello = conn.hello()
        assert hello["protocol"] == 1, hello
        assert isinstance(hello["broker_id"], int), hello
        assert hello["max_frame_bytes"] == DEFAULT_MAX_FRAME, hello
        assert hello["identity"] is None, f"identity without mTLS: {hello['identity']!r}"
        versions = hello["versions"]
        missing = [m for m in MESSAGES if m not in versions]
        assert not missing, f"hello versions lack {missing}: {versions}"
        for name in MESSAGES:
            lo, hi = versions[name]
            assert lo <= 1 <= hi, f"{name}: versions [{lo}, {hi}] do not include 1"
        assert conn.hello(client=None)["protocol"] == 1, "hello without the optional client field"
        future = conn.call("hello", {"client": "t", "field_from_the_future": {"a": [1, 2]}}).header
        assert future["protocol"] == 1, f"unknown JSON fields must be ignored: {future}"

        meta = conn.metadata()
        assert meta["broker_id"] == hello["broker_id"]
        [me] = [b for b in meta["brokers"] if b["id"] == hello["broker_id"]]
        assert me["quic"] == f"127.0.0.1:{broker.quic_port}", f"advertised QUIC address: {me}"
        assert me["kafka"] == broker.bootstrap, f"advertised Kafka address: {me}"

    # The IP SAN works as a server name too (what the command line uses for --addr 127.0.0.1:…).
    with nw.connect(broker, server_name="127.0.0.1") as conn:
        assert conn.hello()["protocol"] == 1

    # A CA the broker did not use must not verify (the client really checks).
    other = tc.make_ca(tmp_path / "other", "other")
    with pytest.raises(nw.HandshakeFailed):
        nw.connect(broker, ca=other.cert_path, timeout=10).close()

    # The CA is made once: a restart keeps it and clients that trust it.
    before = (tls / "ca.pem").read_bytes()
    broker.restart()
    assert (tls / "ca.pem").read_bytes() == before, "ca.pem changed over a restart"
    with nw.connect(broker) as conn:
        assert conn.hello()["protocol"] == 1


def test_other_alpn_is_refused(broker):
    with pytest.raises(nw.HandshakeFailed) as info:
        nw.connect(broker, alpn="h3", timeout=10).close()
    assert info.value.is_tls_alert, f"expected a TLS alert (no_application_protocol), got {info.value}"
    with nw.connect(broker) as conn:  # and the broker is fine
        assert conn.hello()["protocol"] == 1


def test_given_certificate_chain_is_served(make_broker, tmp_path):
    certs = tmp_path / "certs"
    root = tc.make_ca(certs, "root")
    inter = tc.make_ca(certs, "intermediate", issuer=root)
    leaf = tc.issue(inter, certs, "server", "strata-test-server", dns=("localhost",),
                    ips=("127.0.0.1",), server=True)
    chain = tc.write_chain(certs / "chain.pem", leaf, inter)
    broker = make_broker("strata-own-cert",
                         args=["--tls-cert", str(chain), "--tls-key", str(leaf.key_path)])
    with nw.connect(broker, ca=root.cert_path) as conn:  # trusts only the root: chain must be sent
        assert conn.hello()["protocol"] == 1
    listed = strata(broker, "topic", "list", ca=root.cert_path)
    assert listed.code == 0


# --------------------------------------------------------------- produce and fetch


def test_produce_fetch_roundtrip(broker):
    with nw.connect(broker) as conn:
        topic = create(conn, "native-rt", partitions=2)
        batches = [sample_records(1), sample_records(2, 6), sample_records(3, 5)]
        expected: list[WireRecord] = []
        for records, compression in zip(batches, ["none", "gzip", "zstd"]):
            base = conn.produce_records(topic, 0, records, compression=compression)
            assert base == len(expected), f"{compression} batch got base_offset {base}, expected {len(expected)}"
            expected += records
        n = len(expected)

        got = conn.fetch_all(topic, 0)
        assert [r.offset for r in got] == list(range(n)), f"offsets {[r.offset for r in got]}"
        for rec, exp in zip(got, expected):
            assert rec.content() == nw.wire_content(exp, 0), (
                f"offset {rec.offset}:\n  got      {rec.content()!r:.300}\n  expected "
                f"{nw.wire_content(exp, 0)!r:.300}")

        mid = conn.fetch(topic, 0, 3)
        assert mid.records and mid.records[0].offset == 3, (
            f"fetch from 3 starts at {[r.offset for r in mid.records[:3]]}")
        assert (mid.log_start, mid.high_watermark) == (0, n), mid.header

        # At the high watermark a fetch with max_wait_ms waits, then answers empty.
        t0 = time.monotonic()
        idle = conn.fetch(topic, 0, n, max_wait_ms=500)
        waited = time.monotonic() - t0
        assert idle.records == [] and idle.high_watermark == n, idle.header
        assert 0.4 <= waited < 10, f"a 500 ms long poll answered after {waited:.2f}s"

        with pytest.raises(nw.NativeError) as info:
            conn.fetch(topic, 0, n + 5)
        assert info.value.code == "OFFSET_OUT_OF_RANGE", info.value

        # acks=1 and acks=0 are answered with offsets as well.
        assert conn.produce_records(topic, 1, [WireRecord(b"a", b"acks1")], acks=1) == 0
        assert conn.produce_records(topic, 1, [WireRecord(b"a", b"acks0")], acks=0) == 1
        wait_until(lambda: conn.high_watermark(topic, 1) == 2, 30, "acks=0 record to become readable")
        assert [r.value for r in conn.fetch_all(topic, 1)] == [b"acks1", b"acks0"]

        # list_offsets, with monotonic timestamps on a fresh partition of its own.
        ts_topic = create(conn, "native-ts")
        base_ts = now_ms() - 10_000
        conn.produce_records(ts_topic, 0, [WireRecord(b"k", f"t{i}".encode(), [], base_ts + 1000 * i)
                                           for i in range(5)])
        assert conn.list_offsets(ts_topic, 0, "earliest")["offset"] == 0
        assert conn.list_offsets(ts_topic, 0, "latest")["offset"] == 5
        at = conn.list_offsets(ts_topic, 0, "timestamp", base_ts + 1500)
        assert (at["offset"], at["timestamp_ms"]) == (2, base_ts + 2000), at
        after = conn.list_offsets(ts_topic, 0, "timestamp", base_ts + 60_000)
        assert after["offset"] is None, f"no record at or after that time, got {after}"

    # What was acknowledged is what a Kafka client reads too.
    assert watermarks(broker.bootstrap, topic, 0) == (0, n)


def test_topic_administration_messages(broker):
    with nw.connect(broker) as conn:
        broker_id = conn.hello()["broker_id"]
        name = unique_topic("native-admin")
        created = conn.create_topic(name, 3, {"retention.ms": "86400000"})
        assert created["name"] == name and created["id"], created
        assert [p["partition"] for p in created["partitions"]] == [0, 1, 2], created
        for p in created["partitions"]:
            assert (p["leader"], p["log_start"], p["high_watermark"]) == (broker_id, 0, 0), p
        configs = {c["name"]: c for c in created["configs"]}
        assert str(configs["retention.ms"]["value"]) == "86400000", configs.get("retention.ms")
        assert configs["retention.ms"]["source"] == "topic"
        assert any(c["source"] == "default" for c in created["configs"]), "no default configs listed"

        meta = conn.metadata([name])
        [t] = meta["topics"]
        assert t["name"] == name and len(t["partitions"]) == 3, t

        def refused(code: str, fn, *args, **kwargs):
            with pytest.raises(nw.NativeError) as info:
                fn(*args, **kwargs)
            assert info.value.code == code, f"expected {code}, got {info.value}"
            assert info.value.message, f"{code} without a message"

        refused("TOPIC_EXISTS", conn.create_topic, name, 3)
        refused("INVALID_PARTITIONS", conn.create_topic, unique_topic("zero"), 0)
        refused("INVALID_TOPIC", conn.create_topic, "bad/name?" + uuid.uuid4().hex[:6], 1)
        refused("INVALID_CONFIG", conn.create_topic, unique_topic("cfg"), 1, {"no.such.config": "1"})
        refused("INVALID_CONFIG", conn.create_topic, unique_topic("cfg"), 1, {"retention.ms": "soon"})
        refused("UNKNOWN_TOPIC", conn.describe_topic, unique_topic("missing"))

        dry = unique_topic("dry-run")
        assert conn.create_topic(dry, 2, validate_only=True)["name"] == dry
        assert dry not in names_in_metadata(conn.metadata()), "validate_only created the topic"
        refused("UNKNOWN_TOPIC", conn.describe_topic, dry)

        altered = conn.alter_topic(name, set={"max.message.bytes": "300000"}, delete=["retention.ms"],
                                   partitions=5)
        configs = {c["name"]: c for c in altered["configs"]}
        assert (str(configs["max.message.bytes"]["value"]), configs["max.message.bytes"]["source"]) == (
            "300000", "topic"), configs.get("max.message.bytes")
        assert configs.get("retention.ms", {}).get("source", "default") == "default", configs.get("retention.ms")
        assert len(altered["partitions"]) == 5, altered["partitions"]
        assert conn.describe_topic(name)["partitions"] == altered["partitions"]
        refused("INVALID_PARTITIONS", conn.alter_topic, name, partitions=2)

        assert conn.delete_topic(name) == {}
        wait_until(lambda: name not in names_in_metadata(conn.metadata()), 30, f"{name} gone from metadata")
        refused("UNKNOWN_TOPIC", conn.describe_topic, name)
        refused("UNKNOWN_TOPIC", conn.delete_topic, name)


# ----------------------------------------------------------------- cross-protocol


def kcat_format(bootstrap: str, topic: str, partition: int, fmt: str, timeout: float = 60) -> bytes:
    """``kcat -C -e -f FMT``: the raw bytes kcat prints for one partition, start to end."""
    assert KCAT, "kcat is not installed (scripts/test.sh installs it with apt-get)"
    cmd = [KCAT, "-C", "-b", bootstrap, "-t", topic, "-p", str(partition), "-o", "beginning", "-e",
           "-q", "-f", fmt, "-X", "broker.address.family=v4", "-X", "check.crcs=true"]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    assert proc.returncode == 0, f"kcat failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}"
    return proc.stdout


def test_native_produce_read_by_kcat_and_confluent(broker):
    rng = random.Random(5)
    with nw.connect(broker) as conn:
        topic = create(conn, "native-to-kafka")
        # Binary keys and values (no newline: kcat's -f output is line based).
        binary = [WireRecord(bytes(rng.choice([b for b in range(256) if b != 10]) for _ in range(rng.randint(1, 30))),
                             bytes(rng.choice([b for b in range(256) if b != 10]) for _ in range(rng.randint(0, 300))),
                             [("h", bytes([i]))], now_ms() - 1000 + i) for i in range(40)]
        assert conn.produce_records(topic, 0, binary[:25]) == 0
        assert conn.produce_records(topic, 0, binary[25:], compression="gzip") == 25

    expected = b"".join(b"%d|%s|%d|%s\n" % (len(r.key), r.key, len(r.value), r.value) for r in binary)
    got = kcat_format(broker.bootstrap, topic, 0, r"%K|%k|%S|%s\n")
    assert got == expected, "kcat read different bytes than the native producer sent:\n" + "\n".join(
        f"  got {g!r:.120}\n  exp {e!r:.120}" for g, e in zip(got.split(b"\n"), expected.split(b"\n")) if g != e)

    read = consume_confluent(broker.bootstrap, topic, 0)
    assert [(r.offset, r.key, r.value, r.headers, r.timestamp) for r in read] == [
        (i, r.key, r.value, tuple(r.headers), r.timestamp) for i, r in enumerate(binary)]


def test_strata_produce_read_by_kcat(broker):
    with nw.connect(broker) as conn:
        topic = create(conn, "cli-to-kcat")
    lines = [f"key-{i}:value {i} with: colons ✓ {'x' * (i % 17)}" for i in range(500)]
    t0 = now_ms() - 1000
    strata(broker, "produce", topic, "--key-sep", ":", "--acks", "all", input="\n".join(lines) + "\n")
    t1 = now_ms() + 1000

    expected = "".join(line.replace(":", "\t", 1) + "\n" for line in lines).encode()
    got = kcat_format(broker.bootstrap, topic, 0, r"%k\t%s\n")
    assert got == expected, f"kcat read {got[:300]!r}…, expected {expected[:300]!r}…"
    for rec in kcat_consume(broker.bootstrap, topic, 0):
        assert t0 <= rec.timestamp <= t1, f"offset {rec.offset}: timestamp {rec.timestamp} not in [{t0}, {t1}]"


def test_kcat_produce_read_by_strata_consume(broker):
    with nw.connect(broker) as conn:
        topic = create(conn, "kcat-to-cli", partitions=2)
    lines = [(f"k{i}", f"kcat line {i} ✓ {'y' * (i % 13)}") for i in range(300)]
    kcat_produce(broker.bootstrap, topic, 1, lines)

    values = strata(broker, "consume", topic, "--from", "earliest").lines
    assert values == [v for _, v in lines], f"strata consume printed {values[:5]}… ({len(values)} lines)"
    keyed = strata(broker, "consume", topic, "--from", "earliest", "--partition", "1",
                   "--format", r"%k=%v|%p|%o\n").lines
    assert keyed == [f"{k}={v}|1|{i}" for i, (k, v) in enumerate(lines)], keyed[:5]
    assert strata(broker, "consume", topic, "--from", "earliest", "--partition", "0").lines == []


# ---------------------------------------------------------------------- mutual TLS


@pytest.fixture(scope="module")
def mtls_module(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtls")
    certs = root / "certs"
    client_ca = tc.make_ca(certs, "client-ca")
    other_ca = tc.make_ca(certs, "other-ca")
    broker = Broker(root / "broker", name="strata-mtls", args=["--client-ca", str(client_ca.cert_path)])
    broker.start()
    yield SimpleNamespace(
        broker=broker,
        alice=tc.issue(client_ca, certs, "alice", "alice", client=True),
        mallory=tc.issue(other_ca, certs, "mallory", "mallory", client=True),
    )
    code = broker.close()
    assert code in (None, 0), f"broker exited with {code} on SIGTERM\n{broker.log_tail()}"


@pytest.fixture
def mtls(mtls_module, request):
    track_broker(request.node, mtls_module.broker)
    assert mtls_module.broker.is_running(), "the mTLS broker died in an earlier test"
    return mtls_module


def assert_refused(broker: Broker, **client) -> nw.ConnectionClosed:
    """The handshake is refused with a TLS alert. In TLS 1.3 the client may think it is
    connected before the server has checked its certificate, so a first request is made."""
    try:
        with nw.connect(broker, timeout=10, **client) as conn:
            answer = conn.hello()
    except nw.ConnectionClosed as exc:
        assert exc.is_tls_alert, f"connection ended without a TLS alert (CRYPTO_ERROR 0x1xx): {exc}"
        return exc
    raise AssertionError(f"the broker served a client it should refuse: hello answered {answer}")


def assert_cli_refused(result, *words: str) -> None:
    assert result.code != 0, f"strata succeeded where it should be refused:\n{result.describe()}"
    assert len(result.error_lines) == 1, f"expected a one-line error message:\n{result.describe()}"
    for word in words:
        assert word.lower() in result.stderr.lower(), f"error message does not mention {word!r}:\n{result.describe()}"


def test_mtls_refuses_client_without_certificate(mtls):
    assert_refused(mtls.broker)
    assert_cli_refused(strata(mtls.broker, "topic", "list", check=False, timeout=60), "certificate")


def test_mtls_serves_client_certificate_and_reports_its_name(mtls):
    with nw.connect(mtls.broker, cert=mtls.alice.cert_path, key=mtls.alice.key_path) as conn:
        hello = conn.hello()
        assert hello["identity"] == "alice", f"identity {hello['identity']!r}, expected the CN 'alice'"
        topic = create(conn, "mtls")
        assert conn.produce_records(topic, 0, [WireRecord(b"k", b"from alice")]) == 0

    auth = dict(cert=mtls.alice.cert_path, key=mtls.alice.key_path)
    assert topic in strata(mtls.broker, "topic", "list", **auth).stdout
    strata(mtls.broker, "produce", topic, **auth, input="from the command line\n")
    assert strata(mtls.broker, "consume", topic, "--from", "earliest", **auth).lines == [
        "from alice", "from the command line"]
    # The same through the environment.
    env = {"STRATA_CERT": str(mtls.alice.cert_path), "STRATA_KEY": str(mtls.alice.key_path)}
    assert topic in strata(mtls.broker, "topic", "list", env=env).stdout


def test_mtls_refuses_certificate_from_another_ca(mtls):
    assert_refused(mtls.broker, cert=mtls.mallory.cert_path, key=mtls.mallory.key_path)
    result = strata(mtls.broker, "topic", "list", cert=mtls.mallory.cert_path, key=mtls.mallory.key_path,
                    check=False, timeout=60)
    assert_cli_refused(result, "certificate")
    with nw.connect(mtls.broker, cert=mtls.alice.cert_path, key=mtls.alice.key_path) as conn:
        assert conn.hello()["identity"] == "alice", "a good client after the refusals"


# ---------------------------------------------------------------------- bad input

MAX_FRAME = 4 << 20
TOPIC_MAX_MESSAGE_BYTES = 4096


@pytest.fixture(scope="module")
def bad_input_module(tmp_path_factory):
    broker = Broker(tmp_path_factory.mktemp("native-bad"), name="strata-native-bad",
                    args=["--auto-create-topics", "false", "--max-request-bytes", str(MAX_FRAME)])
    broker.start()
    shared = SimpleNamespace(broker=broker, conn=None, topic=unique_topic("native-bad"))
    with nw.connect(broker) as conn:
        conn.create_topic(shared.topic, 1, {"max.message.bytes": TOPIC_MAX_MESSAGE_BYTES})
    yield shared
    if shared.conn is not None:
        shared.conn.close()
    code = broker.close()
    assert code in (None, 0), f"broker exited with {code} on SIGTERM\n{broker.log_tail()}"


@pytest.fixture
def bad(bad_input_module, request):
    """The shared broker and ONE connection every bad-input test uses (replaced only if an
    earlier test broke it — that test has failed already)."""
    track_broker(request.node, bad_input_module.broker)
    assert bad_input_module.broker.is_running(), "the shared broker died in an earlier test"
    if bad_input_module.conn is None or bad_input_module.conn.closed is not None:
        if bad_input_module.conn is not None:
            bad_input_module.conn.close()
        bad_input_module.conn = nw.connect(bad_input_module.broker)
    return bad_input_module


def good_batch(*values: bytes) -> bytes:
    return nw.encode_batch([WireRecord(b"k", v, [("h", b"1")]) for v in values])


def corrupt(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0xFF
    return bytes(b)


def produce_header(topic: str, **extra) -> dict:
    return {"topic": topic, "partition": 0, "acks": -1, **extra}


BAD_CASES = [
    # (id, kind the request carries, expected code, builder(topic, high watermark) -> bytes)
    ("length-over-max-frame", 2, "FRAME_TOO_LARGE",
     lambda t, hw: nw.raw_prefix(MAX_FRAME + 8, 2, 1, 2) + b"{}"),
    ("length-huge", 7, "FRAME_TOO_LARGE",
     lambda t, hw: nw.raw_prefix(0xFFFFFFF0, 7, 1, 2) + b"{}"),
    ("frame-really-over-max", 7, "FRAME_TOO_LARGE",
     lambda t, hw: nw.encode_frame(7, produce_header(t), b"\x00" * (MAX_FRAME + 4096))),
    ("length-shorter-than-prefix", 1, "MALFORMED_FRAME",
     lambda t, hw: struct.pack(">IHH", 4, 1, 1)),
    ("header-len-past-frame-end", 1, "MALFORMED_FRAME",
     lambda t, hw: nw.raw_prefix(8 + 2, 1, 1, 1000) + b"{}"),
    ("header-over-1MiB", 1, "MALFORMED_FRAME",
     lambda t, hw: nw.encode_frame(1, b'{"client":"' + b"x" * (1 << 20) + b'"}')),
    ("frame-cut-short", 1, "MALFORMED_FRAME",
     lambda t, hw: nw.encode_frame(1, {"client": "cut short"})[:-4]),
    ("header-not-json", 2, "MALFORMED_FRAME",
     lambda t, hw: nw.encode_frame(2, b"this is not json")),
    ("header-not-utf8", 2, "MALFORMED_FRAME",
     lambda t, hw: nw.encode_frame(2, b'{"topics":["\xff\xfe"]}')),
    ("header-not-an-object", 2, "MALFORMED_FRAME",
     lambda t, hw: nw.encode_frame(2, b"[1,2,3]")),
    ("header-missing-field", 7, "MALFORMED_FRAME",
     lambda t, hw: nw.encode_frame(7, {"partition": 0, "acks": -1}, good_batch(b"no topic"))),
    ("header-wrong-type", 8, "MALFORMED_FRAME",
     lambda t, hw: nw.encode_frame(8, {"topic": t, "partition": "zero", "offset": 0})),
    ("unknown-kind", 999, "UNKNOWN_MESSAGE",
     lambda t, hw: nw.encode_frame(999, {})),
    ("unsupported-version-99", 1, "UNSUPPORTED_VERSION",
     lambda t, hw: nw.encode_frame(1, {}, version=99)),
    ("unsupported-version-0", 2, "UNSUPPORTED_VERSION",
     lambda t, hw: nw.encode_frame(2, {}, version=0)),
    ("batch-bad-crc", 7, "CORRUPT_RECORDS",
     lambda t, hw: nw.encode_frame(7, produce_header(t), corrupt(good_batch(b"bad crc"), 70))),
    ("batch-cut-short", 7, "CORRUPT_RECORDS",
     lambda t, hw: nw.encode_frame(7, produce_header(t), good_batch(b"cut short")[:-3])),
    ("payload-not-a-batch", 7, "CORRUPT_RECORDS",
     lambda t, hw: nw.encode_frame(7, produce_header(t), b"this is not a record batch at all!" * 3)),
    ("batch-over-topic-limit", 7, "RECORDS_TOO_LARGE",
     lambda t, hw: nw.encode_frame(7, produce_header(t), good_batch(b"z" * (2 * TOPIC_MAX_MESSAGE_BYTES)))),
    ("bad-acks", 7, "INVALID_REQUEST",
     lambda t, hw: nw.encode_frame(7, produce_header(t, acks=2), good_batch(b"acks 2"))),
    ("negative-offset", 8, "INVALID_REQUEST",
     lambda t, hw: nw.encode_frame(8, {"topic": t, "partition": 0, "offset": -5})),
    ("offset-past-end", 8, "OFFSET_OUT_OF_RANGE",
     lambda t, hw: nw.encode_frame(8, {"topic": t, "partition": 0, "offset": hw + 10})),
    ("unknown-topic", 7, "UNKNOWN_TOPIC",
     lambda t, hw: nw.encode_frame(7, produce_header(t + "-missing"), good_batch(b"nowhere"))),
    ("unknown-partition", 7, "UNKNOWN_PARTITION",
     lambda t, hw: nw.encode_frame(7, produce_header(t, partition=7), good_batch(b"nowhere"))),
]


# Errors in reading the frame itself (its lengths): the broker may not have read the kind,
# so the answer's kind may be 0x8000 instead of the request's kind | 0x8000. The spec says
# neither way for these; every other error must echo the request's kind.
FRAME_LEVEL = {"length-over-max-frame", "length-huge", "frame-really-over-max",
               "length-shorter-than-prefix", "header-len-past-frame-end", "header-over-1MiB",
               "frame-cut-short"}


def assert_still_serving(shared, hw_before: int, what: str) -> None:
    """After ``what``: the same connection serves hello and metadata, another connection is
    served, nothing was stored, and the next record gets the next offset."""
    broker, conn, topic = shared.broker, shared.conn, shared.topic
    assert broker.is_running(), f"broker died after {what}\n{broker.log_tail()}"
    assert conn.closed is None, f"the broker closed the connection after {what}: {conn.closed}"
    assert conn.hello()["protocol"] == 1, f"hello on the same connection after {what}"
    assert topic in names_in_metadata(conn.metadata([topic])), f"metadata on the same connection after {what}"
    with nw.connect(broker) as other:
        assert other.hello()["protocol"] == 1, f"a new connection after {what}"
    assert conn.high_watermark(topic, 0) == hw_before, f"{what} stored something"
    sentinel = f"sentinel-{uuid.uuid4().hex}".encode()
    assert conn.produce(topic, 0, good_batch(sentinel)) == hw_before, (
        f"the record after {what} did not get offset {hw_before}: something was stored")


@pytest.mark.parametrize("name,kind,code,build", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_gets_error_on_its_stream_and_connection_survives(bad, name, kind, code, build):
    conn = bad.conn
    hw = conn.high_watermark(bad.topic, 0)
    sid = conn.send_raw(build(bad.topic, hw), end=True)
    frame = conn.read_frame(sid, timeout=30)
    allowed = {kind | RESPONSE_BIT} | ({RESPONSE_BIT} if name in FRAME_LEVEL else set())
    assert frame.kind in allowed, (
        f"{name}: response kind {frame.kind:#06x}, expected {' or '.join(f'{k:#06x}' for k in sorted(allowed))}")
    err = frame.error
    assert err is not None, f"{name}: expected error {code}, got {frame!r}"
    assert err.get("code") == code, f"{name}: expected {code}, got {err}"
    assert isinstance(err.get("message"), str) and err["message"], f"{name}: error without a message: {err}"
    if code == "UNSUPPORTED_VERSION":
        lo, hi = conn.hello()["versions"][nw.NAMES[kind]]
        assert re.search(rf"\b{lo}\b", err["message"]) and re.search(rf"\b{hi}\b", err["message"]), (
            f"{name}: the message should give the range [{lo}, {hi}]: {err['message']!r}")
    assert conn.wait_stream_end(sid, timeout=10) in ("fin", "reset")
    assert_still_serving(bad, hw, name)


def test_hello_reports_max_request_bytes(bad):
    assert bad.conn.hello()["max_frame_bytes"] == MAX_FRAME


def test_stream_reset_mid_request_dies_alone(bad):
    conn, topic = bad.conn, bad.topic
    hw = conn.high_watermark(topic, 0)
    frame = nw.encode_frame(7, produce_header(topic), good_batch(b"half", b"a", b"frame"))
    sid = conn.open_stream(frame[:len(frame) // 2])
    assert conn.hello()["protocol"] == 1, "a hello while half a request is pending"
    conn.reset(sid, code=7)
    assert_still_serving(bad, hw, "a stream reset half way through a produce")


def test_pending_requests_do_not_delay_others(broker):
    with nw.connect(broker) as conn:
        topic = create(conn, "native-independent")
        hello = nw.encode_frame(1, {"client": "slow writer"})
        half = conn.open_stream(hello[:7])  # an incomplete request, no FIN yet
        poll = conn.open_stream(nw.encode_frame(8, {"topic": topic, "partition": 0, "offset": 0,
                                                    "max_wait_ms": 20000}), end=True)
        t0 = time.monotonic()
        for _ in range(5):
            assert conn.hello()["protocol"] == 1
        assert time.monotonic() - t0 < 5, "hellos were held up by pending requests on other streams"

        t1 = time.monotonic()
        assert conn.produce_records(topic, 0, [WireRecord(b"k", b"wake up")]) == 0
        woke = conn.read_frame(poll, timeout=25)
        assert woke.error is None, woke
        assert [r.value for r in nw.decode_records(woke.payload)] == [b"wake up"]
        assert time.monotonic() - t1 < 15, "the long poll did not answer when the record arrived"

        conn.send(half, hello[7:], end=True)
        late = conn.read_frame(half, timeout=10)
        assert late.kind == KINDS["hello"] | RESPONSE_BIT and late.header["protocol"] == 1, late


# ----------------------------------------------------------------------- subscribe


def test_subscribe_pushes_records_in_order(broker):
    with nw.connect(broker) as conn:
        topic = create(conn, "native-sub")
        assert conn.produce_records(topic, 0, nw.records_of([b"v0", b"v1", b"v2"])) == 0
        sub = conn.subscribe(topic, 0, 0)
        first = sub.read_records(3, timeout=30)
        assert [(r.offset, r.value) for r in first] == [(0, b"v0"), (1, b"v1"), (2, b"v2")]

        expected, late = [], None
        for i in range(5):
            values = [f"v{3 + 2 * i}".encode(), f"v{4 + 2 * i}".encode()]
            assert conn.produce_records(topic, 0, nw.records_of(values)) == 3 + 2 * i
            expected += values
            if i == 0:  # offset 4 is inside the batch at 3..4: record 3 must be skipped
                late = conn.subscribe(topic, 0, 4)
        more = sub.read_records(10, timeout=30)
        assert [r.offset for r in more] == list(range(3, 13)), [r.offset for r in more]
        assert [r.value for r in more] == expected
        from_four = late.read_records(9, timeout=30)
        assert [r.offset for r in from_four] == list(range(4, 13)), [r.offset for r in from_four]
        for frame in sub.frames + late.frames:
            h = frame.header
            assert h["log_start"] == 0 and h["high_watermark"] >= 3, h
            assert frame.payload, "subscribe pushed a frame without records"
        sub.close()
        late.close()

        missing = conn.subscribe(topic + "-missing", 0, 0)
        with pytest.raises(nw.NativeError) as info:
            missing.next_frame(timeout=10)
        assert info.value.code == "UNKNOWN_TOPIC", info.value
        assert conn.wait_stream_end(missing.stream_id, 10) in ("fin", "reset"), "an error ends the stream"
        assert conn.hello()["protocol"] == 1, "the connection after subscriptions ended"


# ----------------------------------------------------------------------- idempotence


def test_idempotent_retry_is_stored_once(broker):
    with nw.connect(broker) as conn:
        topic = create(conn, "native-idem")
        pid, epoch = conn.init_producer_id()
        assert pid >= 0 and epoch >= 0, (pid, epoch)
        first = nw.encode_batch(nw.records_of([b"a", b"b", b"c"]), producer_id=pid,
                                producer_epoch=epoch, base_sequence=0)
        assert conn.produce(topic, 0, first) == 0
        assert conn.high_watermark(topic, 0) == 3
        assert conn.produce(topic, 0, first) == 0, "a retried batch must get its first base_offset"
        assert conn.high_watermark(topic, 0) == 3, "the retried batch was stored again"

    with nw.connect(broker) as conn:  # the retry after a lost answer comes on a new connection
        assert conn.produce(topic, 0, first) == 0
        second = nw.encode_batch(nw.records_of([b"d", b"e"]), producer_id=pid, producer_epoch=epoch,
                                 base_sequence=3)
        assert conn.produce(topic, 0, second) == 3
        gap = nw.encode_batch(nw.records_of([b"gap"]), producer_id=pid, producer_epoch=epoch,
                              base_sequence=10)
        with pytest.raises(nw.NativeError) as info:
            conn.produce(topic, 0, gap)
        assert info.value.code == "OUT_OF_ORDER_SEQUENCE", info.value
        assert conn.high_watermark(topic, 0) == 5
        assert [(r.offset, r.value) for r in conn.fetch_all(topic, 0)] == [
            (0, b"a"), (1, b"b"), (2, b"c"), (3, b"d"), (4, b"e")]
