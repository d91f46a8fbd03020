"""Hand-rolled Kafka wire encoding for tests that must send what no client would.

Only the pieces the tests need, written from the Kafka protocol spec with
``struct.pack``: request framing (header v1 and v2), ApiVersions v0, Produce
v3..v8, Fetch v4..v11, InitProducerId v0..v4, RecordBatch v2 (magic 2) — optionally
carrying an idempotent producer's id, epoch and base sequence — with a pure-Python CRC32C
(Castagnoli, reflected polynomial 0x82F63B78) so no extra package is needed.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

# ------------------------------------------------------------------------- errors

NONE = 0
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
UNSUPPORTED_VERSION = 35
INVALID_REQUEST = 42
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47
INVALID_RECORD = 87

API_PRODUCE = 0
API_FETCH = 1
API_METADATA = 3
API_VERSIONS = 18
API_INIT_PRODUCER_ID = 22

# ------------------------------------------------------------------------- crc32c


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283, "crc32c check value"

# ------------------------------------------------------------------------ varints


def zigzag_varint(n: int) -> bytes:
    """Kafka record fields use zigzag-encoded signed varints (varint and varlong alike)."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_zigzag_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
    return (result >> 1) ^ -(result & 1), pos


def _varbytes(data: bytes | None) -> bytes:
    return zigzag_varint(-1) if data is None else zigzag_varint(len(data)) + data


# -------------------------------------------------------------------- RecordBatch


@dataclass
class WireRecord:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    timestamp: int | None = None  # absolute ms; None = the batch base timestamp


def encode_record_batch(records: list[WireRecord], base_timestamp: int | None = None,
                        base_offset: int = 0, producer_id: int = -1, producer_epoch: int = -1,
                        base_sequence: int = -1) -> bytes:
    """An uncompressed RecordBatch v2 (magic 2) with a correct CRC32C.

    The producer fields default to "not idempotent" (-1); an idempotent producer's batch
    sets all three (``base_sequence`` numbers the first record; the rest follow).
    """
    assert records
    if base_timestamp is None:
        base_timestamp = int(time.time() * 1000)
    stamps = [r.timestamp if r.timestamp is not None else base_timestamp for r in records]
    body = bytearray()
    for delta, (rec, ts) in enumerate(zip(records, stamps)):
        r = bytearray()
        r += b"\x00"  # attributes
        r += zigzag_varint(ts - base_timestamp)
        r += zigzag_varint(delta)
        r += _varbytes(rec.key)
        r += _varbytes(rec.value)
        r += zigzag_varint(len(rec.headers))
        for hk, hv in rec.headers:
            r += _varbytes(hk.encode())
            r += _varbytes(hv)
        body += zigzag_varint(len(r)) + r
    # Everything the CRC covers: attributes .. end of records.
    after_crc = struct.pack(
        ">hiqqqhii",
        0,                      # attributes: no compression, CreateTime, not transactional
        len(records) - 1,       # lastOffsetDelta
        base_timestamp,         # baseTimestamp
        max(stamps),            # maxTimestamp
        producer_id,            # producerId
        producer_epoch,         # producerEpoch
        base_sequence,          # baseSequence
        len(records),           # record count
    ) + bytes(body)
    crc = crc32c(after_crc)
    # batchLength counts from partitionLeaderEpoch to the end.
    batch_length = 4 + 1 + 4 + len(after_crc)
    return struct.pack(">qiibI", base_offset, batch_length, -1, 2, crc) + after_crc


BATCH_CRC_OFFSET = 17  # baseOffset(8) + batchLength(4) + partitionLeaderEpoch(4) + magic(1)
BATCH_ATTRIBUTES_OFFSET = 21


@dataclass
class BatchInfo:
    base_offset: int
    last_offset: int
    attributes: int
    record_count: int
    crc_ok: bool
    raw: bytes
    producer_id: int = -1
    producer_epoch: int = -1
    base_sequence: int = -1


def decode_batches(data: bytes) -> list[BatchInfo]:
    """Split a Fetch ``records`` blob into batches; a truncated trailing batch is dropped."""
    out = []
    pos = 0
    while pos + 12 <= len(data):
        base_offset, length = struct.unpack_from(">qi", data, pos)
        end = pos + 12 + length
        if length < 49 or end > len(data):
            break
        raw = data[pos:end]
        magic = raw[16]
        if magic != 2:
            raise AssertionError(f"batch at offset {base_offset} has magic {magic}, expected 2")
        (crc,) = struct.unpack_from(">I", raw, BATCH_CRC_OFFSET)
        attributes, last_delta = struct.unpack_from(">hi", raw, BATCH_ATTRIBUTES_OFFSET)
        producer_id, producer_epoch, base_sequence, count = struct.unpack_from(">qhii", raw, 43)
        out.append(BatchInfo(base_offset, base_offset + last_delta, attributes, count,
                             crc32c(raw[BATCH_ATTRIBUTES_OFFSET:]) == crc, raw,
                             producer_id, producer_epoch, base_sequence))
        pos = end
    return out


# ----------------------------------------------------------------- encode helpers


def i8(v): return struct.pack(">b", v)
def i16(v): return struct.pack(">h", v)
def i32(v): return struct.pack(">i", v)
def i64(v): return struct.pack(">q", v)


def string(s: str | None) -> bytes:
    if s is None:
        return i16(-1)
    b = s.encode()
    return i16(len(b)) + b


def nbytes(b: bytes | None) -> bytes:
    return i32(-1) if b is None else i32(len(b)) + b


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def compact_string(s: str) -> bytes:
    b = s.encode()
    return uvarint(len(b) + 1) + b


def compact_nullable_string(s: str | None) -> bytes:
    return uvarint(0) if s is None else compact_string(s)


def request_header(api_key: int, version: int, correlation_id: int, client_id: str = "strata-tests",
                   flexible: bool = False) -> bytes:
    """Request header v1 (or v2 when ``flexible``: v1 followed by empty tagged fields)."""
    h = i16(api_key) + i16(version) + i32(correlation_id) + string(client_id)
    return h + (b"\x00" if flexible else b"")


def frame(payload: bytes) -> bytes:
    return i32(len(payload)) + payload


class Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def _unpack(self, fmt: str):
        (v,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def i8(self): return self._unpack(">b")
    def i16(self): return self._unpack(">h")
    def i32(self): return self._unpack(">i")
    def i64(self): return self._unpack(">q")

    def string(self) -> str | None:
        n = self.i16()
        if n < 0:
            return None
        s = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return s

    def nbytes(self) -> bytes | None:
        n = self.i32()
        if n < 0:
            return None
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def array(self, item):
        n = self.i32()
        return [] if n < 0 else [item() for _ in range(n)]

    def remaining(self) -> int:
        return len(self.data) - self.pos


# ------------------------------------------------------------------ requests/responses


def produce_body(version: int, topics: dict[str, dict[int, bytes]], acks: int = -1,
                 timeout_ms: int = 10000) -> bytes:
    """Produce request body, v3..v8 (all share one non-flexible layout)."""
    assert 3 <= version <= 8, version
    body = string(None) + i16(acks) + i32(timeout_ms) + i32(len(topics))
    for name, parts in topics.items():
        body += string(name) + i32(len(parts))
        for index, records in parts.items():
            body += i32(index) + nbytes(records)
    return body


@dataclass
class PartitionProduceResult:
    topic: str
    partition: int
    error_code: int
    base_offset: int
    error_message: str | None = None


def parse_produce_response(version: int, payload: bytes) -> list[PartitionProduceResult]:
    """Parse a Produce v3..v8 response body (after the correlation id)."""
    r = Reader(payload)
    out = []
    for _ in range(r.i32()):
        topic = r.string()
        for _ in range(r.i32()):
            index, error, base = r.i32(), r.i16(), r.i64()
            r.i64()  # log_append_time_ms (v2+)
            if version >= 5:
                r.i64()  # log_start_offset
            message = None
            if version >= 8:
                r.array(lambda: (r.i32(), r.string()))  # record_errors
                message = r.string()
            out.append(PartitionProduceResult(topic, index, error, base, message))
    r.i32()  # throttle_time_ms
    return out


def parse_api_versions_v0(payload: bytes) -> tuple[int, dict[int, tuple[int, int]]]:
    """ApiVersions v0 response body -> (error_code, {api_key: (min, max)})."""
    r = Reader(payload)
    error = r.i16()
    versions = {}
    for key, lo, hi in r.array(lambda: (r.i16(), r.i16(), r.i16())):
        versions[key] = (lo, hi)
    return error, versions


def fetch_body(version: int, topic: str, partition: int, offset: int,
               partition_max_bytes: int = 8 << 20, max_wait_ms: int = 200) -> bytes:
    """Fetch request body, v4..v11 (non-flexible), sessionless, one partition."""
    assert 4 <= version <= 11, version
    body = i32(-1) + i32(max_wait_ms) + i32(1) + i32(64 << 20) + i8(0)
    if version >= 7:
        body += i32(0) + i32(-1)  # session_id, session_epoch (-1: no session)
    body += i32(1) + string(topic) + i32(1) + i32(partition)
    if version >= 9:
        body += i32(-1)  # current_leader_epoch
    body += i64(offset)
    if version >= 5:
        body += i64(-1)  # log_start_offset (consumers send -1)
    body += i32(partition_max_bytes)
    if version >= 7:
        body += i32(0)  # forgotten_topics_data
    if version >= 11:
        body += string("")  # rack_id
    return body


def metadata_body(version: int, topics: list[str], allow_auto_create: bool = True) -> bytes:
    """Metadata request body, v1..v8 (non-flexible)."""
    assert 1 <= version <= 8, version
    body = i32(len(topics)) + b"".join(string(t) for t in topics)
    if version >= 4:
        body += i8(1 if allow_auto_create else 0)
    if version >= 8:
        body += i8(0) + i8(0)  # include cluster / topic authorized operations
    return body


def init_producer_id_body(version: int, transactional_id: str | None = None,
                          transaction_timeout_ms: int = 60000, producer_id: int = -1,
                          producer_epoch: int = -1) -> bytes:
    """InitProducerId request body, v0..v4 (v2+ flexible; v3+ carry the current id/epoch)."""
    assert 0 <= version <= 4, version
    if version < 2:
        return string(transactional_id) + i32(transaction_timeout_ms)
    body = compact_nullable_string(transactional_id) + i32(transaction_timeout_ms)
    if version >= 3:
        body += i64(producer_id) + i16(producer_epoch)
    return body + b"\x00"  # no tagged fields


@dataclass
class InitProducerIdResult:
    error_code: int
    producer_id: int
    producer_epoch: int


def parse_init_producer_id_response(payload: bytes) -> InitProducerIdResult:
    """InitProducerId v0..v4 response body (after the header): the fields all versions share."""
    r = Reader(payload)
    r.i32()  # throttle_time_ms
    return InitProducerIdResult(r.i16(), r.i64(), r.i16())


@dataclass
class FetchPartition:
    partition: int
    error_code: int
    high_watermark: int
    records: bytes | None


def parse_fetch_response(version: int, payload: bytes) -> tuple[int, list[FetchPartition]]:
    """-> (top-level error code (0 before v7), partitions)."""
    r = Reader(payload)
    r.i32()  # throttle_time_ms
    top_error = 0
    if version >= 7:
        top_error = r.i16()
        r.i32()  # session_id
    out = []
    for _ in range(r.i32()):
        r.string()
        for _ in range(r.i32()):
            index, error, hw = r.i32(), r.i16(), r.i64()
            r.i64()  # last_stable_offset
            if version >= 5:
                r.i64()  # log_start_offset
            r.array(lambda: (r.i64(), r.i64()))  # aborted_transactions
            if version >= 11:
                r.i32()  # preferred_read_replica
            out.append(FetchPartition(index, error, hw, r.nbytes()))
    return top_error, out


# ---------------------------------------------------------------------- connection


class ConnectionClosed(Exception):
    pass


class KafkaConnection:
    """A blocking socket speaking length-prefixed Kafka frames, every read bounded."""

    def __init__(self, bootstrap: str, timeout: float = 10.0):
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.timeout = timeout
        self._corr = 0

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_request(self, api_key: int, version: int, body: bytes, flexible_header: bool = False) -> int:
        self._corr += 1
        self.send_raw(frame(request_header(api_key, version, self._corr, flexible=flexible_header) + body))
        return self._corr

    def _recv_exact(self, n: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete response within {self.timeout}s")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(n - len(buf))
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise ConnectionClosed(str(exc)) from exc
            except socket.timeout as exc:
                raise TimeoutError(f"no complete response within {self.timeout}s") from exc
            if not chunk:
                raise ConnectionClosed("peer closed the connection")
            buf += chunk
        return bytes(buf)

    def recv_frame(self, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout or self.timeout)
        (n,) = struct.unpack(">i", self._recv_exact(4, deadline))
        assert 0 <= n < 64 << 20, f"broker sent a frame length of {n}"
        return self._recv_exact(n, deadline)

    def recv_response(self, correlation_id: int, timeout: float | None = None,
                      flexible_header: bool = False) -> bytes:
        """Next response; checks its correlation id and returns the body after the header."""
        payload = self.recv_frame(timeout)
        (corr,) = struct.unpack_from(">i", payload, 0)
        assert corr == correlation_id, f"correlation id {corr}, expected {correlation_id}"
        return payload[5:] if flexible_header else payload[4:]

    def closed_by_peer(self, timeout: float) -> bool:
        """True if the broker closes the connection (EOF or reset) within ``timeout``;
        any bytes it sends first are discarded."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return True
            except socket.timeout:
                return False
            if not chunk:
                return True

    # -- conveniences ----------------------------------------------------------------

    def api_versions(self) -> dict[int, tuple[int, int]]:
        corr = self.send_request(API_VERSIONS, 0, b"")
        error, versions = parse_api_versions_v0(self.recv_response(corr))
        assert error == NONE, f"ApiVersions v0 returned error {error}"
        return versions

    def produce(self, version: int, topics: dict[str, dict[int, bytes]], acks: int = -1,
                timeout: float | None = None) -> list[PartitionProduceResult]:
        corr = self.send_request(API_PRODUCE, version, produce_body(version, topics, acks))
        return parse_produce_response(version, self.recv_response(corr, timeout))

    def init_producer_id(self, version: int, transactional_id: str | None = None,
                         producer_id: int = -1, producer_epoch: int = -1,
                         timeout: float | None = None) -> InitProducerIdResult:
        flexible = version >= 2
        corr = self.send_request(API_INIT_PRODUCER_ID, version,
                                 init_producer_id_body(version, transactional_id,
                                                       producer_id=producer_id,
                                                       producer_epoch=producer_epoch),
                                 flexible_header=flexible)
        return parse_init_producer_id_response(
            self.recv_response(corr, timeout, flexible_header=flexible))

    def fetch(self, version: int, topic: str, partition: int, offset: int,
              timeout: float | None = None) -> tuple[int, list[FetchPartition]]:
        corr = self.send_request(API_FETCH, version, fetch_body(version, topic, partition, offset))
        return parse_fetch_response(version, self.recv_response(corr, timeout))


def pick_version(versions: dict[int, tuple[int, int]], api_key: int, lo: int, hi: int) -> int:
    """Highest version in [lo, hi] the broker advertises for ``api_key``."""
    assert api_key in versions, f"broker does not advertise api key {api_key}: {versions}"
    bmin, bmax = versions[api_key]
    v = min(hi, bmax)
    assert v >= lo and v >= bmin, (
        f"broker advertises api {api_key} versions {bmin}..{bmax}; tests need one in {lo}..{hi}")
    return v
