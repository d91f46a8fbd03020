"""A small client for Strata's native protocol (QUIC, ALPN ``strata/1``), for the tests.

Written from ``proto/README.md`` alone — it is the proof that the specification is enough
to write a client — on top of ``aioquic``'s asyncio API and Python's ``json``:

* ``encode_frame`` / ``FrameParser``: the frame layout (u32 length, u16 kind, u16 version,
  u32 header length, JSON header, payload), big-endian;
* ``encode_batch`` / ``decode_records``: Kafka RecordBatch v2 payloads (encoding reuses
  ``kafka_wire``; decoding handles the gzip, snappy, lz4 and zstd codecs, because the
  broker may recompress what it stores);
* ``NativeClient``: one QUIC connection, one bidirectional stream per request. It owns an
  event loop on a background thread so tests call it synchronously; every call is bounded
  by a timeout. Besides the typed requests it can send raw bytes on a stream, reset or stop
  a stream half way, and run a ``subscribe``.

Errors: a response whose header holds ``error`` raises ``NativeError`` (``code``,
``message``) from the typed helpers; ``request_raw`` returns the frame as is. A connection
the broker closes raises ``ConnectionClosed`` (with the QUIC error code: TLS alerts are
``0x100 + alert``), a stream the broker resets raises ``StreamReset``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
import struct
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

import kafka_wire as kw
from kafka_wire import WireRecord

ALPN = "strata/1"
RESPONSE_BIT = 0x8000
PREFIX = struct.Struct(">IHHI")  # length, kind, version, header_len
MAX_HEADER_BYTES = 1 << 20
DEFAULT_TIMEOUT = 20.0

KINDS = {
    "hello": 1,
    "metadata": 2,
    "create_topic": 3,
    "delete_topic": 4,
    "describe_topic": 5,
    "alter_topic": 6,
    "produce": 7,
    "fetch": 8,
    "subscribe": 9,
    "list_offsets": 10,
    "init_producer_id": 11,
    "join_group": 12,
    "sync_group": 13,
    "heartbeat": 14,
    "leave_group": 15,
    "commit_offsets": 16,
    "fetch_offsets": 17,
    "list_groups": 18,
    "describe_group": 19,
    "delete_group": 20,
}
NAMES = {v: k for k, v in KINDS.items()}

# TLS alerts travel as QUIC CRYPTO_ERROR codes 0x100..0x1ff (RFC 9001 §4.8).
CRYPTO_ERROR_MIN, CRYPTO_ERROR_MAX = 0x100, 0x1FF


# --------------------------------------------------------------------------- errors


class NativeError(Exception):
    """The broker answered with ``{"error": {"code", "message"}}``."""

    def __init__(self, kind: int, code: str, message: str):
        super().__init__(f"{NAMES.get(kind & ~RESPONSE_BIT, kind)}: {code}: {message}")
        self.kind, self.code, self.message = kind, code, message


class ConnectionClosed(Exception):
    """The QUIC connection ended (``error_code``/``reason`` from CONNECTION_CLOSE, if any)."""

    def __init__(self, what: str, error_code: int | None = None, reason: str = ""):
        detail = "" if error_code is None else f" (error code {error_code:#x}: {reason!r})"
        super().__init__(f"{what}{detail}")
        self.error_code, self.reason = error_code, reason

    @property
    def is_tls_alert(self) -> bool:
        return self.error_code is not None and CRYPTO_ERROR_MIN <= self.error_code <= CRYPTO_ERROR_MAX


class HandshakeFailed(ConnectionClosed):
    pass


class StreamReset(Exception):
    def __init__(self, stream_id: int, error_code: int):
        super().__init__(f"the broker reset stream {stream_id} with code {error_code}")
        self.stream_id, self.error_code = stream_id, error_code


class StreamEnded(Exception):
    """The broker finished the stream (FIN) without (the rest of) a frame."""


# --------------------------------------------------------------------------- frames


@dataclass
class Frame:
    kind: int
    version: int
    header_bytes: bytes
    payload: bytes = b""

    @property
    def header(self) -> Any:
        """The header as JSON (raises if the broker sent something that is not JSON)."""
        return json.loads(self.header_bytes.decode("utf-8"))

    @property
    def error(self) -> dict | None:
        h = self.header
        return h.get("error") if isinstance(h, dict) else None

    def __repr__(self) -> str:
        return (f"Frame(kind={self.kind:#06x}, version={self.version}, "
                f"header={self.header_bytes[:300]!r}, payload={len(self.payload)} bytes)")


def encode_frame(kind: int, header: dict | bytes | str = b"{}", payload: bytes = b"",
                 version: int = 1) -> bytes:
    """One frame; ``header`` is a dict (JSON-encoded), or raw bytes sent as they are."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":")).encode()
    elif isinstance(header, str):
        header = header.encode()
    return PREFIX.pack(8 + len(header) + len(payload), kind, version, len(header)) + header + payload


def raw_prefix(length: int, kind: int, version: int, header_len: int) -> bytes:
    """The 12 fixed bytes with arbitrary (possibly inconsistent) values, for bad-input tests."""
    return PREFIX.pack(length, kind, version, header_len)


def try_parse_frame(buf: bytearray, max_frame: int = 256 << 20) -> Frame | None:
    """Take one complete frame off the front of ``buf``; None if it is not complete yet."""
    if len(buf) < 4:
        return None
    (length,) = struct.unpack_from(">I", buf, 0)
    if length < 8 or length > max_frame:
        raise AssertionError(f"broker sent a frame with length {length}")
    if len(buf) < 4 + length:
        return None
    _, kind, version, header_len = PREFIX.unpack_from(buf, 0)
    if header_len > length - 8:
        raise AssertionError(f"broker sent header_len {header_len} in a frame of length {length}")
    header = bytes(buf[12:12 + header_len])
    payload = bytes(buf[12 + header_len:4 + length])
    del buf[:4 + length]
    return Frame(kind, version, header, payload)


# -------------------------------------------------------------------- record batches


@dataclass
class Record:
    """A record read back from a fetch/subscribe payload."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()

    def content(self) -> tuple:
        return (self.key, self.value, self.headers, self.timestamp)


def wire_content(rec: WireRecord, base_timestamp: int) -> tuple:
    """What a WireRecord must read back as (same shape as ``Record.content()``)."""
    ts = rec.timestamp if rec.timestamp is not None else base_timestamp
    return (rec.key, rec.value, tuple(rec.headers), ts)


def _records_body(records: list[WireRecord], base_timestamp: int) -> bytes:
    body = bytearray()
    for delta, rec in enumerate(records):
        ts = rec.timestamp if rec.timestamp is not None else base_timestamp
        r = bytearray(b"\x00")
        r += kw.zigzag_varint(ts - base_timestamp)
        r += kw.zigzag_varint(delta)
        r += kw._varbytes(rec.key)
        r += kw._varbytes(rec.value)
        r += kw.zigzag_varint(len(rec.headers))
        for hk, hv in rec.headers:
            r += kw._varbytes(hk.encode())
            r += kw._varbytes(hv)
        body += kw.zigzag_varint(len(r)) + r
    return bytes(body)


CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def encode_batch(records: list[WireRecord], *, compression: str = "none",
                 base_timestamp: int | None = None, producer_id: int = -1,
                 producer_epoch: int = -1, base_sequence: int = -1) -> bytes:
    """A RecordBatch v2 with a correct CRC-32C, uncompressed (``kafka_wire``'s encoder) or
    compressed with gzip or zstd."""
    if base_timestamp is None:
        base_timestamp = min((r.timestamp for r in records if r.timestamp is not None),
                             default=int(time.time() * 1000))
    if compression == "none":
        return kw.encode_record_batch(records, base_timestamp, producer_id=producer_id,
                                      producer_epoch=producer_epoch, base_sequence=base_sequence)
    body = _records_body(records, base_timestamp)
    if compression == "gzip":
        body = gzip.compress(body)
    elif compression == "zstd":
        import zstandard

        body = zstandard.ZstdCompressor().compress(body)
    else:
        raise ValueError(f"encode_batch: compression {compression!r} not supported")
    stamps = [r.timestamp if r.timestamp is not None else base_timestamp for r in records]
    after_crc = struct.pack(">hiqqqhii", CODECS[compression], len(records) - 1, base_timestamp,
                            max(stamps), producer_id, producer_epoch, base_sequence,
                            len(records)) + body
    crc = kw.crc32c(after_crc)
    return struct.pack(">qiibI", 0, 4 + 1 + 4 + len(after_crc), -1, 2, crc) + after_crc


def _snappy_decompress(data: bytes) -> bytes:
    import snappy

    xerial = b"\x82SNAPPY\x00"
    if not data.startswith(xerial):
        return snappy.uncompress(data)
    out, pos = bytearray(), 16  # magic(8) + version(4) + compatible version(4)
    while pos < len(data):
        (n,) = struct.unpack_from(">i", data, pos)
        out += snappy.uncompress(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    return bytes(out)


def _decompress(codec: int, data: bytes) -> bytes:
    if codec == 0:
        return data
    if codec == 1:
        return gzip.decompress(data)
    if codec == 2:
        return _snappy_decompress(data)
    if codec == 3:
        import lz4.frame

        return lz4.frame.decompress(data)
    if codec == 4:
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    raise AssertionError(f"batch with unknown compression codec {codec}")


def _read_varbytes(buf: bytes, pos: int) -> tuple[bytes | None, int]:
    n, pos = kw.read_zigzag_varint(buf, pos)
    if n < 0:
        return None, pos
    return bytes(buf[pos:pos + n]), pos + n


def decode_records(payload: bytes, min_offset: int = 0) -> list[Record]:
    """Every record of the concatenated batches in ``payload`` at or past ``min_offset``.

    Checks each batch's magic and CRC-32C; skips control batches; a truncated trailing
    batch fails the test (the broker returns batches whole).
    """
    out: list[Record] = []
    pos = 0
    while pos < len(payload):
        assert pos + 61 <= len(payload), f"{len(payload) - pos} trailing bytes after the batches"
        base_offset, length = struct.unpack_from(">qi", payload, pos)
        end = pos + 12 + length
        assert end <= len(payload), f"batch at {base_offset} is cut: {length} > {len(payload) - pos - 12}"
        raw = payload[pos:end]
        assert raw[16] == 2, f"batch at offset {base_offset} has magic {raw[16]}"
        (crc,) = struct.unpack_from(">I", raw, kw.BATCH_CRC_OFFSET)
        assert kw.crc32c(raw[kw.BATCH_ATTRIBUTES_OFFSET:]) == crc, f"batch at {base_offset}: bad CRC"
        attributes, _last_delta, base_ts, max_ts = struct.unpack_from(">hiqq", raw, 21)
        (count,) = struct.unpack_from(">i", raw, 57)
        pos = end
        if attributes & 0x20:  # control batch (transaction markers)
            continue
        body = _decompress(attributes & 0x07, raw[61:])
        log_append = bool(attributes & 0x08)
        rpos = 0
        for _ in range(count):
            rlen, rpos = kw.read_zigzag_varint(body, rpos)
            rend = rpos + rlen
            rpos += 1  # record attributes
            ts_delta, rpos = kw.read_zigzag_varint(body, rpos)
            off_delta, rpos = kw.read_zigzag_varint(body, rpos)
            key, rpos = _read_varbytes(body, rpos)
            value, rpos = _read_varbytes(body, rpos)
            nh, rpos = kw.read_zigzag_varint(body, rpos)
            headers = []
            for _ in range(nh):
                hk, rpos = _read_varbytes(body, rpos)
                hv, rpos = _read_varbytes(body, rpos)
                headers.append((hk.decode(), hv))
            assert rpos == rend, f"record at {base_offset + off_delta}: length {rlen} does not match"
            offset = base_offset + off_delta
            if offset >= min_offset:
                out.append(Record(offset, max_ts if log_append else base_ts + ts_delta, key, value,
                                  tuple(headers)))
        assert rpos == len(body), f"batch at {base_offset}: {len(body) - rpos} bytes after {count} records"
    return out


# --------------------------------------------------------------------------- client


class _StreamState:
    def __init__(self) -> None:
        self.buf = bytearray()
        self.fin = False
        self.reset_code: int | None = None
        self.stop_code: int | None = None
        self.changed = asyncio.Event()


class _Protocol(QuicConnectionProtocol):
    """Keeps, per stream, the bytes received and whether the broker finished or reset it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.streams: dict[int, _StreamState] = {}
        self.terminated: events.ConnectionTerminated | None = None
        self.alpn: str | None = None

    def state(self, stream_id: int) -> _StreamState:
        st = self.streams.get(stream_id)
        if st is None:
            st = self.streams[stream_id] = _StreamState()
        return st

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            st = self.state(event.stream_id)
            st.buf += event.data
            st.fin = st.fin or event.end_stream
            st.changed.set()
        elif isinstance(event, events.StreamReset):
            st = self.state(event.stream_id)
            st.reset_code = event.error_code
            st.changed.set()
        elif isinstance(event, events.StopSendingReceived):
            st = self.state(event.stream_id)
            st.stop_code = event.error_code
            st.changed.set()
        elif isinstance(event, events.HandshakeCompleted):
            self.alpn = event.alpn_protocol
        elif isinstance(event, events.ConnectionTerminated):
            self.terminated = event
            for st in self.streams.values():
                st.changed.set()


@dataclass
class FetchResult:
    header: dict
    records: list[Record]
    payload: bytes

    @property
    def high_watermark(self) -> int:
        return self.header["high_watermark"]

    @property
    def log_start(self) -> int:
        return self.header["log_start"]


class NativeClient:
    """One QUIC connection to a broker; every method is synchronous and bounded.

    ``ca``: PEM file the server certificate must chain to (the broker's
    ``<data-dir>/tls/ca.pem``); ``server_name`` is checked against its SANs. ``cert``/``key``
    present a client certificate (mutual TLS).
    """

    def __init__(self, host: str, port: int, *, ca: str | Path | None,
                 server_name: str | None = "localhost", cert: str | Path | None = None,
                 key: str | Path | None = None, alpn: str = ALPN,
                 timeout: float = DEFAULT_TIMEOUT, verify: bool = True):
        self.addr = (host, port)
        self.timeout = timeout
        self._proto: _Protocol | None = None
        self._transport = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"quic-client-{host}:{port}")
        self._thread.start()
        config = QuicConfiguration(is_client=True, alpn_protocols=[alpn], server_name=server_name,
                                   max_data=64 << 20, max_stream_data=16 << 20, idle_timeout=60.0)
        if ca is not None:
            config.load_verify_locations(cafile=str(ca))
        if not verify:
            config.verify_mode = ssl.CERT_NONE
        if cert is not None:
            config.load_cert_chain(str(cert), str(key) if key is not None else None)
        try:
            self._run(self._connect(config), timeout)
        except BaseException:
            self._stop_loop()
            raise

    # -- plumbing ------------------------------------------------------------------------

    def _run(self, coro, timeout: float | None = None):
        timeout = self.timeout if timeout is None else timeout
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout + 2.0)  # the coroutines bound themselves; this is a backstop
        except FutureTimeout:
            fut.cancel()
            raise TimeoutError(f"QUIC client call did not finish within {timeout:.1f}s") from None

    async def _connect(self, config: QuicConfiguration) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.addr
        local = ("::1", 0) if ":" in host else ("127.0.0.1", 0)
        quic = QuicConnection(configuration=config)
        self._transport, self._proto = await loop.create_datagram_endpoint(
            lambda: _Protocol(quic), local_addr=local)
        self._proto.connect((host, port))
        try:
            await asyncio.wait_for(self._proto.wait_connected(), self.timeout)
        except ConnectionError:
            t = self._proto.terminated
            raise HandshakeFailed(f"QUIC handshake with {host}:{port} failed",
                                  t.error_code if t else None, t.reason_phrase if t else "") from None
        except asyncio.TimeoutError:
            raise HandshakeFailed(f"no QUIC handshake with {host}:{port} within {self.timeout}s") from None

    def _stop_loop(self) -> None:
        if self._transport is not None:
            self._loop.call_soon_threadsafe(self._transport.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def close(self) -> None:
        if self._proto is None:
            return

        async def shut():
            self._proto.close()
            try:
                await asyncio.wait_for(self._proto.wait_closed(), 3)
            except asyncio.TimeoutError:
                pass

        try:
            self._run(shut(), 5)
        finally:
            self._proto = None
            self._stop_loop()

    def __enter__(self) -> "NativeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def alpn(self) -> str | None:
        return self._proto.alpn

    @property
    def closed(self) -> ConnectionClosed | None:
        """None while the connection is up; why it ended otherwise."""
        if self._proto is None:
            return ConnectionClosed("closed by the client")
        t = self._proto.terminated
        return None if t is None else ConnectionClosed("connection closed", t.error_code, t.reason_phrase)

    def _check_open(self) -> None:
        t = self._proto.terminated
        if t is not None:
            raise ConnectionClosed("the connection is closed", t.error_code, t.reason_phrase)

    # -- streams -------------------------------------------------------------------------

    def open_stream(self, data: bytes = b"", end: bool = False) -> int:
        """Open a bidirectional stream, write ``data`` (FIN if ``end``); returns its id."""

        async def go():
            self._check_open()
            quic = self._proto._quic
            sid = quic.get_next_available_stream_id()
            self._proto.state(sid)
            quic.send_stream_data(sid, data, end_stream=end)
            self._proto.transmit()
            return sid

        return self._run(go())

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        async def go():
            self._check_open()
            self._proto._quic.send_stream_data(stream_id, data, end_stream=end)
            self._proto.transmit()

        self._run(go())

    def reset(self, stream_id: int, code: int = 0, stop_reading: bool = True) -> None:
        """Abandon a request: RESET_STREAM our side and (by default) STOP_SENDING theirs."""

        async def go():
            self._check_open()
            quic = self._proto._quic
            quic.reset_stream(stream_id, code)
            if stop_reading:
                try:
                    quic.stop_stream(stream_id, code)
                except ValueError:  # the broker already finished its side
                    pass
            self._proto.transmit()

        self._run(go())

    def read_frame(self, stream_id: int, timeout: float | None = None) -> Frame:
        """The next frame the broker sends on ``stream_id``."""
        timeout = self.timeout if timeout is None else timeout

        async def go():
            st = self._proto.state(stream_id)
            deadline = time.monotonic() + timeout
            while True:
                frame = try_parse_frame(st.buf)
                if frame is not None:
                    return frame
                if st.reset_code is not None:
                    raise StreamReset(stream_id, st.reset_code)
                if st.fin:
                    raise StreamEnded(f"stream {stream_id} finished with {len(st.buf)} bytes of an "
                                      f"incomplete frame: {bytes(st.buf[:60])!r}")
                self._check_open()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no complete frame on stream {stream_id} within {timeout:.1f}s "
                                       f"({len(st.buf)} bytes buffered)")
                st.changed.clear()
                try:
                    await asyncio.wait_for(st.changed.wait(), remaining)
                except asyncio.TimeoutError:
                    pass

        return self._run(go(), timeout)

    def wait_stream_end(self, stream_id: int, timeout: float | None = None) -> str:
        """Wait until the broker finishes ('fin') or resets ('reset') its side; fails on extra
        bytes after the frames already read."""
        timeout = self.timeout if timeout is None else timeout

        async def go():
            st = self._proto.state(stream_id)
            deadline = time.monotonic() + timeout
            while True:
                if st.buf:
                    raise AssertionError(f"stream {stream_id}: {len(st.buf)} unexpected bytes after "
                                         f"the response: {bytes(st.buf[:60])!r}")
                if st.fin:
                    return "fin"
                if st.reset_code is not None:
                    return "reset"
                self._check_open()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"stream {stream_id} not finished within {timeout:.1f}s")
                st.changed.clear()
                try:
                    await asyncio.wait_for(st.changed.wait(), remaining)
                except asyncio.TimeoutError:
                    pass

        return self._run(go(), timeout)

    # -- requests ------------------------------------------------------------------------

    def send_raw(self, data: bytes, end: bool = True) -> int:
        """Send arbitrary bytes as a request on a new stream; returns the stream id."""
        return self.open_stream(data, end=end)

    def request_raw(self, kind: int, header: dict | bytes | str = b"{}", payload: bytes = b"",
                    version: int = 1, timeout: float | None = None) -> Frame:
        """One request, one response frame, returned as is (errors included). Checks the
        response kind and that the broker then finishes the stream."""
        sid = self.open_stream(encode_frame(kind, header, payload, version), end=True)
        frame = self.read_frame(sid, timeout)
        assert frame.kind == kind | RESPONSE_BIT, (
            f"response kind {frame.kind:#06x} to a request of kind {kind}: {frame!r}")
        assert self.wait_stream_end(sid, timeout) == "fin", f"stream {sid} reset after its answer"
        return frame

    def call(self, name: str, header: dict | None = None, payload: bytes = b"",
             timeout: float | None = None) -> Frame:
        """A request by message name; raises NativeError if the broker answers with an error."""
        frame = self.request_raw(KINDS[name], header if header is not None else {}, payload,
                                 timeout=timeout)
        err = frame.error
        if err is not None:
            raise NativeError(frame.kind, err.get("code"), err.get("message"))
        return frame

    # -- typed helpers -------------------------------------------------------------------

    def hello(self, client: str | None = "strata-tests") -> dict:
        return self.call("hello", {} if client is None else {"client": client}).header

    def metadata(self, topics: list[str] | None = None) -> dict:
        return self.call("metadata", {} if topics is None else {"topics": topics}).header

    def create_topic(self, name: str, partitions: int = 1, configs: dict | None = None,
                     validate_only: bool = False) -> dict:
        h: dict = {"name": name, "partitions": partitions}
        if configs:
            h["configs"] = {k: str(v) for k, v in configs.items()}
        if validate_only:
            h["validate_only"] = True
        return self.call("create_topic", h).header

    def delete_topic(self, name: str) -> dict:
        return self.call("delete_topic", {"name": name}).header

    def describe_topic(self, name: str) -> dict:
        return self.call("describe_topic", {"name": name}).header

    def alter_topic(self, name: str, set: dict | None = None, delete: list[str] | None = None,
                    partitions: int | None = None) -> dict:
        h: dict = {"name": name}
        if set:
            h["set"] = {k: str(v) for k, v in set.items()}
        if delete:
            h["delete"] = list(delete)
        if partitions is not None:
            h["partitions"] = partitions
        return self.call("alter_topic", h).header

    def produce(self, topic: str, partition: int, batches: bytes, acks: int = -1,
                timeout_ms: int | None = None, timeout: float | None = None) -> int:
        """Send batches (already encoded); returns ``base_offset``."""
        h: dict = {"topic": topic, "partition": partition, "acks": acks}
        if timeout_ms is not None:
            h["timeout_ms"] = timeout_ms
        return self.call("produce", h, batches, timeout=timeout).header["base_offset"]

    def produce_records(self, topic: str, partition: int, records: list[WireRecord],
                        acks: int = -1, compression: str = "none", **batch_kw) -> int:
        return self.produce(topic, partition, encode_batch(records, compression=compression, **batch_kw),
                            acks=acks)

    def fetch(self, topic: str, partition: int, offset: int, max_bytes: int | None = None,
              max_wait_ms: int | None = None, timeout: float | None = None) -> FetchResult:
        h: dict = {"topic": topic, "partition": partition, "offset": offset}
        if max_bytes is not None:
            h["max_bytes"] = max_bytes
        if max_wait_ms is not None:
            h["max_wait_ms"] = max_wait_ms
        frame = self.call("fetch", h, timeout=timeout)
        return FetchResult(frame.header, decode_records(frame.payload, offset), frame.payload)

    def fetch_all(self, topic: str, partition: int, start: int = 0,
                  timeout: float | None = None) -> list[Record]:
        """Every record from ``start`` to the high watermark, fetching as often as needed."""
        out: list[Record] = []
        offset = start
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            res = self.fetch(topic, partition, offset)
            out += res.records
            if res.records:
                offset = res.records[-1].offset + 1
            if offset >= res.high_watermark:
                return out
            assert time.monotonic() < deadline, (
                f"fetch_all {topic}/{partition}: at offset {offset} of {res.high_watermark} after "
                f"{timeout or self.timeout}s")

    def list_offsets(self, topic: str, partition: int, spec: str,
                     timestamp_ms: int | None = None) -> dict:
        h: dict = {"topic": topic, "partition": partition, "spec": spec}
        if timestamp_ms is not None:
            h["timestamp_ms"] = timestamp_ms
        return self.call("list_offsets", h).header

    def high_watermark(self, topic: str, partition: int) -> int:
        return self.list_offsets(topic, partition, "latest")["offset"]

    def init_producer_id(self) -> tuple[int, int]:
        h = self.call("init_producer_id", {}).header
        return h["producer_id"], h["producer_epoch"]

    def subscribe(self, topic: str, partition: int, offset: int,
                  max_bytes: int | None = None) -> "Subscription":
        h: dict = {"topic": topic, "partition": partition, "offset": offset}
        if max_bytes is not None:
            h["max_bytes"] = max_bytes
        sid = self.open_stream(encode_frame(KINDS["subscribe"], h), end=True)
        return Subscription(self, sid, offset)


@dataclass
class Subscription:
    """A running ``subscribe``: frames pushed by the broker on one stream."""

    client: NativeClient
    stream_id: int
    next_offset: int
    frames: list[Frame] = field(default_factory=list)

    def next_frame(self, timeout: float | None = None) -> Frame:
        frame = self.client.read_frame(self.stream_id, timeout)
        assert frame.kind == KINDS["subscribe"] | RESPONSE_BIT, f"subscribe pushed {frame!r}"
        err = frame.error
        if err is not None:
            raise NativeError(frame.kind, err.get("code"), err.get("message"))
        self.frames.append(frame)
        return frame

    def read_records(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> list[Record]:
        """Read pushed frames until ``count`` records past the start have arrived."""
        out: list[Record] = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"subscription delivered {len(out)} of {count} records in {timeout}s")
            frame = self.next_frame(remaining)
            records = decode_records(frame.payload, self.next_offset)
            assert frame.payload, f"the broker pushed an empty frame: {frame!r}"
            if records:
                self.next_offset = records[-1].offset + 1
            out += records
        return out

    def close(self) -> None:
        self.client.reset(self.stream_id)


def connect(broker, **options) -> NativeClient:
    """A client for a harness ``Broker``, trusting its generated CA."""
    options.setdefault("ca", broker.data_dir / "tls" / "ca.pem")
    return NativeClient("127.0.0.1", broker.quic_port, **options)


def records_of(values: Iterable[bytes], key: bytes | None = b"k", timestamp: int | None = None,
               headers: list[tuple[str, bytes | None]] | None = None) -> list[WireRecord]:
    return [WireRecord(key, v, list(headers or []), timestamp) for v in values]
