"""Process harness for the Strata end-to-end tests.

Everything here manages real processes: the `strata serve` broker under test, a
throwaway PostgreSQL 15 cluster and a `moto_server` S3 endpoint. The pytest
fixtures in ``conftest.py`` are thin wrappers around these classes.

Rules this module follows:

* every wait is bounded and polls a condition (`wait_until`); sleeps are only
  used as the poll interval, never as synchronisation;
* processes we start are tied to the test run (``PR_SET_PDEATHSIG`` through
  ``setpriv``) so an aborted pytest does not leave brokers behind;
* broker stdout/stderr go to one log file per start, so a failing test can show
  the tail of exactly the run that misbehaved.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

REPO = Path(__file__).resolve().parent.parent
STRATA_BIN = Path(os.environ.get("STRATA_BIN", REPO / "target" / "release" / "strata"))

STARTUP_TIMEOUT = float(os.environ.get("STRATA_TEST_STARTUP_TIMEOUT", "60"))
SHUTDOWN_TIMEOUT = float(os.environ.get("STRATA_TEST_SHUTDOWN_TIMEOUT", "60"))


class TimeoutExpired(AssertionError):
    """A bounded wait ran out. Subclasses AssertionError so pytest shows it as a failure."""


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    interval: float = 0.05,
    on_timeout: Callable[[], str] | None = None,
):
    """Poll ``predicate`` until it returns a truthy value and return that value.

    Raises TimeoutExpired naming ``what`` (plus ``on_timeout()`` for context) when
    ``timeout`` seconds pass first. Exceptions from the predicate propagate.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = ""
            if on_timeout is not None:
                try:
                    extra = "\n" + on_timeout()
                except Exception as exc:  # context is best effort
                    extra = f"\n(could not collect context: {exc!r})"
            raise TimeoutExpired(f"timed out after {timeout:.1f}s waiting for {what}{extra}")
        time.sleep(interval)


# --------------------------------------------------------------------------- ports

_handed_out: set[int] = set()
_port_lock = threading.Lock()


def _free_port(kind: int) -> int:
    with _port_lock:
        for _ in range(200):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("could not find a free port")


def free_port() -> int:
    """A loopback TCP port that is free now and not handed out before in this run."""
    return _free_port(socket.SOCK_STREAM)


def free_udp_port() -> int:
    """A loopback UDP port (for the broker's QUIC listener)."""
    return _free_port(socket.SOCK_DGRAM)


# ----------------------------------------------------------------------- processes

_SETPRIV = shutil.which("setpriv")


def die_with_us(cmd: list[str]) -> list[str]:
    """Prefix ``cmd`` so the kernel SIGKILLs it if the test run dies (PR_SET_PDEATHSIG).

    Done with util-linux ``setpriv`` (which then execs the command, keeping the pid)
    rather than a ``preexec_fn``: forking with a preexec_fn is unsafe while other
    threads (librdkafka's) hold locks. The signal is tied to the spawning *thread*,
    so processes are started from the pytest main thread only.
    """
    return [_SETPRIV, "--pdeathsig", "KILL", "--"] + cmd if _SETPRIV else cmd


# Everything the tests talk to is on loopback: never go through an HTTP(S)_PROXY.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url``; returns (status, body). HTTP error statuses are returned, not raised."""
    try:
        with _opener.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def http_request(method: str, url: str, body: bytes | None = None, timeout: float = 10.0,
                 headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    # An explicit content type: urllib's default (form-urlencoded) makes moto's Flask eat the body.
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/octet-stream", **(headers or {})})
    try:
        with _opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def tail(path: Path, lines: int = 80) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log file at {path})"
    return "\n".join(text.splitlines()[-lines:])


# ------------------------------------------------------------------------- metrics

_SAMPLE_RE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"(?:\{(?P<labels>.*)\})?"
    r"\s+(?P<value>\S+)(?:\s+\S+)?\s*$"
)
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def _unescape_label(value: str) -> str:
    return value.replace(r"\"", '"').replace(r"\n", "\n").replace("\\\\", "\\")


@dataclass
class Metrics:
    """A parsed Prometheus text exposition: a list of (name, labels, value)."""

    samples: list[tuple[str, dict[str, str], float]]
    text: str

    @classmethod
    def parse(cls, text: str) -> "Metrics":
        samples = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = _SAMPLE_RE.match(line)
            if not m:
                raise AssertionError(f"unparseable /metrics line: {line!r}")
            labels = {}
            if m.group("labels"):
                pos, raw = 0, m.group("labels")
                while pos < len(raw):
                    lm = _LABEL_RE.match(raw, pos)
                    if not lm:
                        raise AssertionError(f"unparseable labels in /metrics line: {line!r}")
                    labels[lm.group(1)] = _unescape_label(lm.group(2))
                    pos = lm.end()
            samples.append((m.group("name"), labels, float(m.group("value"))))
        return cls(samples, text)

    def find(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [
            (lbl, val)
            for n, lbl, val in self.samples
            if n == name and all(lbl.get(k) == v for k, v in labels.items())
        ]

    def has(self, name: str, **labels: str) -> bool:
        return bool(self.find(name, **labels))

    def value(self, name: str, **labels: str) -> float:
        """Sum of every sample of ``name`` whose labels include ``labels`` (0 if none)."""
        return sum(val for _, val in self.find(name, **labels))


# -------------------------------------------------------------------------- broker


def require_binary() -> Path:
    """Fail (not skip) the calling test when the broker binary is missing."""
    import pytest

    if not STRATA_BIN.is_file() or not os.access(STRATA_BIN, os.X_OK):
        pytest.fail(
            f"strata binary not found or not executable at {STRATA_BIN}. "
            "Build it with `cargo build --release` or point STRATA_BIN at it.",
            pytrace=False,
        )
    return STRATA_BIN


class Broker:
    """One `strata serve` process and its data dir, restartable on the same ports.

    The ports are chosen once, so clients configured with ``bootstrap`` reconnect
    to the restarted broker by themselves (the crash tests rely on that).
    """

    def __init__(
        self,
        root: Path,
        *,
        name: str = "strata",
        catalog: str | None = None,
        objects: str | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ):
        self.name = name
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.root / "data"
        self.catalog = catalog
        self.objects = objects
        self.base_args = list(args)
        self.base_env = dict(env or {})
        self.kafka_port = free_port()
        self.http_port = free_port()
        self.quic_port = free_udp_port()
        self.s3: "S3Bucket | None" = None  # set when --objects points at the moto bucket
        self.proc: subprocess.Popen | None = None
        self.log_paths: list[Path] = []
        self.exit_codes: list[int] = []
        self._last_extra_args: list[str] = []
        self._last_extra_env: dict[str, str] = {}

    # -- addresses ----------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def objects_dir(self) -> Path:
        """The default file:// object store directory (unused with --objects s3://)."""
        return self.data_dir / "objects"

    @property
    def wal_dir(self) -> Path:
        return self.data_dir / "wal"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    @property
    def log_path(self) -> Path | None:
        return self.log_paths[-1] if self.log_paths else None

    # -- lifecycle ------------------------------------------------------------------

    def command(self, extra_args: Sequence[str] = ()) -> list[str]:
        cmd = [
            str(STRATA_BIN),
            "serve",
            "--data-dir", str(self.data_dir),
            "--kafka-addr", self.bootstrap,
            "--http-addr", f"127.0.0.1:{self.http_port}",
        ]
        if self.catalog:
            cmd += ["--catalog", self.catalog]
        if self.objects:
            cmd += ["--objects", self.objects]
        return cmd + self.base_args + list(extra_args)

    def environment(self, extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
        # Never leak the developer's STRATA_* or AWS_* settings into the broker.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("STRATA_") and not k.startswith("AWS_")
        }
        env.setdefault("RUST_LOG", "info")
        env["RUST_BACKTRACE"] = "1"
        # Not part of the flags under test; keeps parallel brokers off the shared
        # default UDP port 9093. Unknown STRATA_* variables are ignored by clap.
        env["STRATA_QUIC_ADDR"] = f"127.0.0.1:{self.quic_port}"
        env["AWS_EC2_METADATA_DISABLED"] = "true"
        for var in ("NO_PROXY", "no_proxy"):  # moto and postgres are on loopback
            env[var] = ",".join(filter(None, [env.get(var), "127.0.0.1", "localhost"]))
        env.update(self.base_env)
        env.update(extra_env or {})
        return env

    def start(
        self,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        timeout: float = STARTUP_TIMEOUT,
    ) -> "Broker":
        """Start the broker and wait until GET /healthz answers 200."""
        require_binary()
        assert not self.is_running(), f"{self.name} is already running"
        self._last_extra_args = list(extra_args)
        self._last_extra_env = dict(env or {})
        log_path = self.root / f"{self.name}.{len(self.log_paths) + 1}.log"
        self.log_paths.append(log_path)
        cmd = self.command(extra_args)
        with open(log_path, "wb") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(
                die_with_us(cmd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(env),
                cwd=self.root,
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        def ready():
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                if self.proc is not None:  # reported here; teardown need not repeat it
                    self.exit_codes.append(code)
                    self.proc = None
                raise AssertionError(
                    f"{self.name} exited with code {code} before becoming ready\n{self.log_tail()}"
                )
            try:
                status, _ = http_get(self.http_url + "/healthz", timeout=1.0)
            except OSError:
                return False
            return status == 200

        wait_until(ready, timeout, f"{self.name} /healthz to return 200", interval=0.1,
                   on_timeout=self.log_tail)

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = SHUTDOWN_TIMEOUT, expect_code: int | None = 0) -> int:
        """SIGTERM, wait (bounded) and assert the exit code (0 by default)."""
        assert self.proc is not None, f"{self.name} was never started"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(
                    f"{self.name} did not exit within {timeout}s of SIGTERM (killed it)\n{self.log_tail()}"
                )
        code = self.proc.returncode
        self.exit_codes.append(code)
        self.proc = None
        if expect_code is not None:
            assert code == expect_code, (
                f"{self.name} exited with {code} after SIGTERM, expected {expect_code}\n{self.log_tail()}"
            )
        return code

    def kill9(self) -> None:
        """SIGKILL the broker and reap it."""
        assert self.is_running(), f"{self.name} is not running (exit code {self.proc and self.proc.returncode})"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.exit_codes.append(self.proc.returncode)
        self.proc = None

    def restart(self, timeout: float = STARTUP_TIMEOUT) -> "Broker":
        """Clean restart (SIGTERM, assert exit 0, start) with the previous extra args/env."""
        self.stop()
        return self.start(self._last_extra_args, self._last_extra_env, timeout)

    def crash_restart(self, timeout: float = STARTUP_TIMEOUT) -> "Broker":
        """kill -9 and start again on the same data dir with the previous extra args/env."""
        self.kill9()
        return self.start(self._last_extra_args, self._last_extra_env, timeout)

    def close(self) -> int | None:
        """Fixture teardown: stop a still running broker; returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            code = self.proc.returncode
            self.proc = None
            return code
        return self.stop(expect_code=None)

    # -- observation -------------------------------------------------------------------

    def healthz(self) -> int:
        return http_get(self.http_url + "/healthz")[0]

    def metrics(self) -> Metrics:
        status, body = http_get(self.http_url + "/metrics", timeout=10)
        assert status == 200, f"GET /metrics returned {status}: {body[:500]!r}"
        return Metrics.parse(body.decode())

    def log_text(self, run: int = -1) -> str:
        """The log of one start (default: the latest)."""
        if not self.log_paths:
            return ""
        return self.log_paths[run].read_text(errors="replace")

    def log_tail(self, lines: int = 80) -> str:
        if not self.log_paths:
            return f"({self.name}: never started)"
        return f"--- tail of {self.log_paths[-1]} ---\n{tail(self.log_paths[-1], lines)}"

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        return int(m.group(1)) * 1024 if m else 0


def track_broker(node, broker: Broker) -> None:
    """Attach ``broker`` to a pytest item so conftest shows its log tail if the test fails."""
    brokers = node.__dict__.setdefault("strata_brokers", [])
    if broker not in brokers:
        brokers.append(broker)


# ------------------------------------------------------------------------ postgres


def _runas_postgres() -> list[str]:
    """Prefix for commands PostgreSQL insists on not running as root."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class PostgresServer:
    """A throwaway PostgreSQL cluster on a free loopback port (trust auth)."""

    def __init__(self):
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="strata-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self._dbs = 0
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
        self.base.chmod(0o700)

    def _run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            _runas_postgres() + args,
            cwd=self.base, capture_output=True, text=True, timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                f"{tail(self.log, 40)}"
            )
        return proc

    def start(self) -> "PostgresServer":
        for tool in ("initdb", "pg_ctl", "psql"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} not on PATH: install PostgreSQL 15 (scripts/test.sh does)")
        self._run(["initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres",
                   "-E", "UTF8", "--no-sync"])
        opts = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._run(["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts,
                   "-w", "-t", "60", "start"], timeout=90)
        return self

    def psql(self, sql: str, db: str = "postgres", timeout: float = 30) -> str:
        proc = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db,
             "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
            capture_output=True, text=True, timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed: {proc.stderr}")
        return proc.stdout

    def url(self, db: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def fresh_database(self) -> str:
        """Create an empty database and return its catalog URL.

        One per test: a broker that died in an earlier test would otherwise still
        be registered (with a live lease) in the catalog the next test uses.
        """
        self._dbs += 1
        name = f"strata_{os.getpid()}_{self._dbs}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"],
                          timeout=90)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


# ---------------------------------------------------------------------------- moto


@dataclass
class S3Bucket:
    """A fresh bucket on the moto server plus what a broker needs to use it."""

    endpoint: str
    bucket: str
    prefix: str = "strata"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def objects_url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def list_keys(self, prefix: str | None = None) -> list[tuple[str, int]]:
        """(key, size) of every object under ``prefix`` (default: the broker prefix)."""
        prefix = self.prefix if prefix is None else prefix
        keys: list[tuple[str, int]] = []
        token = None
        ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            url = f"{self.endpoint}/{self.bucket}?" + urllib.parse.urlencode(query)
            status, body = http_request("GET", url)
            assert status == 200, f"S3 list {url} -> {status}: {body[:300]!r}"
            root = ET.fromstring(body)
            for item in root.iter(f"{ns}Contents"):
                keys.append((item.findtext(f"{ns}Key"), int(item.findtext(f"{ns}Size"))))
            if root.findtext(f"{ns}IsTruncated") != "true":
                return keys
            token = root.findtext(f"{ns}NextContinuationToken")



class MotoServer:
    """`moto_server -H 127.0.0.1 -p PORT` for the session."""

    def __init__(self, log_path: Path):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "MotoServer":
        exe = shutil.which("moto_server")
        cmd = [exe] if exe else [sys.executable, "-m", "moto.server"]
        cmd += ["-H", "127.0.0.1", "-p", str(self.port)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(die_with_us(cmd), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}\n{tail(self.log_path)}")
            try:
                return http_get(self.endpoint + "/", timeout=1.0)[0] == 200
            except OSError:
                return False

        wait_until(up, timeout, "moto_server to answer", interval=0.1,
                   on_timeout=lambda: tail(self.log_path))
        return self

    def new_bucket(self) -> S3Bucket:
        name = f"strata-test-{uuid.uuid4().hex[:12]}"
        status, body = http_request("PUT", f"{self.endpoint}/{name}")
        assert status == 200, f"creating bucket {name} -> {status}: {body[:300]!r}"
        env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        return S3Bucket(self.endpoint, name, env=env)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def segment_objects(broker: "Broker") -> set[str]:
    """The names of the broker's segment objects, in its local directory or its S3 bucket."""
    if broker.s3 is not None:
        return {key.rsplit("/", 1)[-1] for key, _ in broker.s3.list_keys()
                if key.endswith(".seg")}
    return {p.name for p in broker.objects_dir.rglob("*.seg")}


def files_under(root: Path, pattern: str = "*") -> list[Path]:
    """Regular files under ``root`` matching ``pattern``, sorted by path."""
    if not root.exists():
        return []
    return sorted(p for p in root.rglob(pattern) if p.is_file())

