"""KIP-814 on the wire: a static group leader that restarts into a stable group keeps the
assignment instead of causing a rebalance.

No client available here speaks JoinGroup v9 (librdkafka stops at v5; the Java client would
need Maven Central), so this test speaks it itself, in Kafka's flexible encoding:

* a static member (``group.instance.id``) joins with JoinGroup v9, leads generation 1 and
  hands itself an assignment with SyncGroup v5;
* the same instance joins again with an empty member id, as a restarted process does: the
  answer is immediate, names it leader under a new member id, carries every member's
  metadata and ``skip_assignment = true``, and the generation is still 1;
* its SyncGroup for generation 1 returns the assignment it had, and the old member id is
  fenced (its heartbeat gets UNKNOWN_MEMBER_ID).
"""
from __future__ import annotations

import kafka_wire as kw
from kafka_clients import create_topic, unique_topic

JOIN_GROUP, SYNC_GROUP, HEARTBEAT = 11, 14, 12


def cstr(s: str | None) -> bytes:
    return kw.compact_nullable_string(s)


def cbytes(b: bytes) -> bytes:
    return kw.uvarint(len(b) + 1) + b


class Flex:
    """Reads Kafka's flexible (compact) encodings."""

    def __init__(self, data: bytes):
        self.r = kw.Reader(data)

    def uvarint(self) -> int:
        shift = result = 0
        while True:
            b = self.r.i8() & 0xFF
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def raw(self, n: int) -> bytes:
        return bytes(self.r.i8() & 0xFF for _ in range(n))

    def string(self) -> str | None:
        n = self.uvarint() - 1
        return None if n < 0 else self.raw(n).decode()

    def bytes(self) -> bytes:
        return self.raw(self.uvarint() - 1)

    def tags(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()
            self.raw(self.uvarint())


def join_v9(conn, group: str, member_id: str, instance: str, metadata: bytes) -> dict:
    body = (cstr(group) + kw.i32(10_000) + kw.i32(30_000) + cstr(member_id) + cstr(instance)
            + cstr("consumer") + kw.uvarint(2) + cstr("range") + cbytes(metadata) + b"\x00"
            + cstr(None) + b"\x00")
    corr = conn.send_request(JOIN_GROUP, 9, body, flexible_header=True)
    f = Flex(conn.recv_response(corr, 30, flexible_header=True))
    f.r.i32()  # throttle
    out = {"error": f.r.i16(), "generation": f.r.i32(), "protocol_type": f.string(),
           "protocol": f.string(), "leader": f.string(), "skip_assignment": f.r.i8() != 0,
           "member_id": f.string(), "members": []}
    for _ in range(f.uvarint() - 1):
        out["members"].append((f.string(), f.string(), f.bytes()))
        f.tags()
    return out


def sync_v5(conn, group: str, generation: int, member_id: str, instance: str,
            assignments: list[tuple[str, bytes]]) -> tuple[int, bytes]:
    body = (cstr(group) + kw.i32(generation) + cstr(member_id) + cstr(instance)
            + cstr("consumer") + cstr("range") + kw.uvarint(len(assignments) + 1)
            + b"".join(cstr(m) + cbytes(a) + b"\x00" for m, a in assignments) + b"\x00")
    corr = conn.send_request(SYNC_GROUP, 5, body, flexible_header=True)
    f = Flex(conn.recv_response(corr, 30, flexible_header=True))
    f.r.i32()
    error = f.r.i16()
    f.string()
    f.string()
    return error, f.bytes()


def heartbeat_v4(conn, group: str, generation: int, member_id: str, instance: str) -> int:
    body = cstr(group) + kw.i32(generation) + cstr(member_id) + cstr(instance) + b"\x00"
    corr = conn.send_request(HEARTBEAT, 4, body, flexible_header=True)
    f = Flex(conn.recv_response(corr, 30, flexible_header=True))
    f.r.i32()
    return f.r.i16()


def test_static_leader_rejoins_without_a_rebalance(broker):
    topic = unique_topic("kip814")
    create_topic(broker.bootstrap, topic, 2)
    group, instance = f"kip814-{topic}", "consumer-host-1"
    metadata = b"\x00\x00" + kw.i32(1) + kw.string(topic) + kw.nbytes(None)
    assignment = b"assignment-of-generation-1"
    with kw.KafkaConnection(broker.bootstrap) as conn:
        first = join_v9(conn, group, "", instance, metadata)
        assert first["error"] == 0, first
        assert first["generation"] == 1 and first["leader"] == first["member_id"], first
        assert not first["skip_assignment"]
        error, got = sync_v5(conn, group, 1, first["member_id"], instance,
                             [(first["member_id"], assignment)])
        assert (error, got) == (0, assignment)

        back = join_v9(conn, group, "", instance, metadata)
        assert back["error"] == 0, back
        assert back["generation"] == 1, f"a returning static leader must not start a rebalance: {back}"
        assert back["leader"] == back["member_id"] != first["member_id"], back
        assert back["skip_assignment"], back
        assert [(m, i) for m, i, _ in back["members"]] == [(back["member_id"], instance)], back
        assert back["members"][0][2] == metadata

        error, got = sync_v5(conn, group, 1, back["member_id"], instance, [])
        assert (error, got) == (0, assignment), "the assignment stands"
        assert heartbeat_v4(conn, group, 1, back["member_id"], instance) == 0
        assert heartbeat_v4(conn, group, 1, first["member_id"], instance) != 0, "old id fenced"
