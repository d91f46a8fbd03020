"""A plain-HTTP client of the broker's REST front end, as REST-proxy users write one.

``Rest`` wraps a ``requests`` session (never through an HTTP(S)_PROXY: everything is on
loopback) with the content types of the Confluent REST Proxy documentation.
``stream_produce`` sends newline-delimited v3 records with ``Transfer-Encoding: chunked`` on
a raw socket while a second thread reads the newline-delimited results as they come, as a
high-rate producer would; ``scripts/rest_bench.py`` uses it too.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
from typing import Iterable

import requests

V2 = "application/vnd.kafka.v2+json"
JSON_V2 = "application/vnd.kafka.json.v2+json"
BINARY_V2 = "application/vnd.kafka.binary.v2+json"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


class Rest:
    """Requests against one broker's ``--http-addr``."""

    def __init__(self, base_url: str, timeout: float = 40.0):
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies, no netrc

    def request(self, method: str, path: str, *, json_body=None, data: bytes | None = None,
                content_type: str | None = None, accept: str | None = None,
                params: dict | None = None) -> requests.Response:
        headers = {}
        if json_body is not None:
            data = json.dumps(json_body).encode()
            content_type = content_type or V2
        if content_type:
            headers["Content-Type"] = content_type
        if accept:
            headers["Accept"] = accept
        return self.session.request(method, self.base + path, data=data, headers=headers,
                                    params=params, timeout=self.timeout)

    # -- v2 produce ----------------------------------------------------------------

    def produce_json(self, topic: str, records: list[dict], partition: int | None = None):
        path = f"/topics/{topic}" + (f"/partitions/{partition}" if partition is not None else "")
        return self.request("POST", path, json_body={"records": records}, content_type=JSON_V2)

    def produce_binary(self, topic: str, records: list[dict], partition: int | None = None):
        path = f"/topics/{topic}" + (f"/partitions/{partition}" if partition is not None else "")
        return self.request("POST", path, json_body={"records": records}, content_type=BINARY_V2)

    # -- consumer instances ------------------------------------------------------------

    def create_consumer(self, group: str, name: str, fmt: str = "json",
                        reset: str = "earliest", auto_commit: str = "false") -> str:
        r = self.request("POST", f"/consumers/{group}", json_body={
            "name": name, "format": fmt, "auto.offset.reset": reset,
            "auto.commit.enable": auto_commit})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["instance_id"] == name
        assert body["base_uri"].endswith(f"/consumers/{group}/instances/{name}")
        return f"/consumers/{group}/instances/{name}"

    def poll(self, instance: str, accept: str = JSON_V2, timeout_ms: int = 1000) -> list[dict]:
        r = self.request("GET", instance + "/records", accept=accept,
                         params={"timeout": timeout_ms})
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == accept
        return r.json()

    def consume_all(self, instance: str, count: int, accept: str = JSON_V2,
                    polls: int = 60) -> list[dict]:
        """Poll until ``count`` records arrived (each poll a bounded long poll)."""
        out: list[dict] = []
        for _ in range(polls):
            out += self.poll(instance, accept)
            if len(out) >= count:
                return out
        raise AssertionError(f"read {len(out)} of {count} records in {polls} polls")


def stream_produce(port: int, path: str, lines: Iterable[bytes], chunk_bytes: int = 64 << 10,
                   timeout: float = 120) -> list[dict]:
    """POST newline-delimited records with ``Transfer-Encoding: chunked`` and read the results.

    A writer thread sends the body in chunks of about ``chunk_bytes`` while this thread reads
    the streamed answer, so neither side waits for the other. Returns one dict per result
    line, in order.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    failure: list[BaseException] = []

    def write():
        try:
            sock.sendall(head)
            pending: list[bytes] = []
            size = 0
            for line in lines:
                pending.append(line if line.endswith(b"\n") else line + b"\n")
                size += len(pending[-1])
                if size >= chunk_bytes:
                    data = b"".join(pending)
                    sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
                    pending, size = [], 0
            if pending:
                data = b"".join(pending)
                sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
            sock.sendall(b"0\r\n\r\n")
        except BaseException as exc:  # reported by the reader
            failure.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200, f"streamed produce answered {response.status}: {response.read()!r}"
        # Read in blocks, not lines: a line at a time through the chunked decoder is slow
        # enough to be what a benchmark measures.
        results = []
        tail = b""
        while True:
            block = response.read1(1 << 20)
            if not block:
                break
            lines = (tail + block).split(b"\n")
            tail = lines.pop()
            results.extend(json.loads(line) for line in lines if line.strip())
        if tail.strip():
            results.append(json.loads(tail))
        writer.join(timeout)
        assert not failure, f"sending the stream failed: {failure[0]!r}"
        return results
    finally:
        sock.close()
