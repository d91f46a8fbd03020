"""A lossy UDP relay: a bad network between a QUIC client and the broker.

``LossyRelay`` listens on a free loopback UDP port and forwards every datagram to the
target (the broker's QUIC port) and the answers back, from one upstream socket per client
address so the broker sees one peer per client. In both directions it drops a fraction of
the datagrams and delays another fraction (so later datagrams overtake them: reordering).
Decisions come from a seeded ``random.Random``, so a run is reproducible up to the timing
of the peers.

Counters per direction (``up`` = client to broker, ``down`` = broker to client):
``received``, ``forwarded``, ``dropped``, ``delayed`` and ``reordered`` (datagrams sent
after one that arrived later in the same direction — what the peer sees as reordering).
Tests assert on them so "it worked through loss" cannot mean "no loss happened".

One thread, ``selectors`` and a heap of delayed sends; every wait is bounded.
"""

from __future__ import annotations

import heapq
import itertools
import random
import selectors
import socket
import threading
import time
from dataclasses import dataclass

from harness import free_udp_port


@dataclass
class DirectionStats:
    received: int = 0
    forwarded: int = 0
    dropped: int = 0
    delayed: int = 0
    reordered: int = 0
    highest_sent: int = -1  # arrival number of the latest-arrived datagram sent so far


class LossyRelay:
    def __init__(self, target: tuple[str, int], *, drop: float = 0.03, delay: float = 0.03,
                 delay_range: tuple[float, float] = (0.005, 0.040), seed: int = 1,
                 host: str = "127.0.0.1"):
        assert 0 <= drop + delay < 1
        self.target = target
        self.drop, self.delay, self.delay_range = drop, delay, delay_range
        self.seed = seed
        self.rng = random.Random(seed)
        self.host = host
        self.port = free_udp_port()
        self.stats = {"up": DirectionStats(), "down": DirectionStats()}
        self._lock = threading.Lock()
        self._listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._listen.bind((host, self.port))
        self._listen.setblocking(False)
        self._upstream: dict[tuple, socket.socket] = {}   # client address -> upstream socket
        self._client_of: dict[socket.socket, tuple] = {}  # upstream socket -> client address
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listen, selectors.EVENT_READ, "up")
        self._pending: list = []  # heap of (due, tiebreak, direction, arrival no, socket, data, addr)
        self._tiebreak = itertools.count()
        self._arrivals = {"up": itertools.count(), "down": itertools.count()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"udp-relay-{self.port}")
        self.error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "LossyRelay":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the UDP relay thread did not stop"
        for sock in [self._listen, *self._upstream.values()]:
            sock.close()
        self._sel.close()
        if self.error is not None:
            raise AssertionError(f"the UDP relay failed: {self.error!r}") from self.error

    def __enter__(self) -> "LossyRelay":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def snapshot(self) -> dict[str, DirectionStats]:
        with self._lock:
            return {d: DirectionStats(**vars(s)) for d, s in self.stats.items()}

    def summary(self) -> str:
        return ", ".join(
            f"{d}: {s.received} in, {s.forwarded} out, {s.dropped} dropped, {s.delayed} delayed, "
            f"{s.reordered} reordered" for d, s in self.snapshot().items()) + f" (seed {self.seed})"

    # -- the loop ----------------------------------------------------------------------

    def _upstream_for(self, client: tuple) -> socket.socket:
        sock = self._upstream.get(client)
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((self.host, 0))
            sock.setblocking(False)
            self._upstream[client] = sock
            self._client_of[sock] = client
            self._sel.register(sock, selectors.EVENT_READ, "down")
        return sock

    def _send(self, direction: str, arrival: int, sock: socket.socket, data: bytes, addr) -> None:
        try:
            sock.sendto(data, addr)
        except (BlockingIOError, ConnectionRefusedError):
            pass  # like a loss; counted as forwarded all the same
        with self._lock:
            st = self.stats[direction]
            st.forwarded += 1
            if arrival < st.highest_sent:
                st.reordered += 1
            st.highest_sent = max(st.highest_sent, arrival)

    def _handle(self, direction: str, sock: socket.socket) -> None:
        for _ in range(256):  # drain what is ready, bounded
            try:
                data, src = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:  # ICMP from a closed port: ignore
                continue
            if direction == "up":
                out_sock, dest = self._upstream_for(src), self.target
            else:
                out_sock, dest = self._listen, self._client_of[sock]
            arrival = next(self._arrivals[direction])
            roll = self.rng.random()
            with self._lock:
                st = self.stats[direction]
                st.received += 1
                if roll < self.drop:
                    st.dropped += 1
                    continue
                delayed = roll < self.drop + self.delay
                if delayed:
                    st.delayed += 1
            if delayed:
                due = time.monotonic() + self.rng.uniform(*self.delay_range)
                heapq.heappush(self._pending, (due, next(self._tiebreak), direction, arrival,
                                               out_sock, data, dest))
            else:
                self._send(direction, arrival, out_sock, data, dest)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                while self._pending and self._pending[0][0] <= now:
                    _, _, direction, arrival, sock, data, dest = heapq.heappop(self._pending)
                    self._send(direction, arrival, sock, data, dest)
                wait = 0.05
                if self._pending:
                    wait = max(0.0, min(wait, self._pending[0][0] - now))
                for key, _ in self._sel.select(wait):
                    self._handle(key.data, key.fileobj)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
