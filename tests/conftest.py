"""pytest fixtures for the Strata end-to-end suite.

Fixtures:

* ``make_broker`` – factory for `Broker` objects (see ``harness.py``) in the
  test's tmp dir; every broker it made is stopped at teardown and must exit 0
  on SIGTERM (a broker that crashed during the test fails the teardown).
* ``broker`` – one started broker with the defaults: SQLite catalog and
  ``file://`` object store under its data dir.
* ``postgres`` (session) – a throwaway PostgreSQL 15 cluster; each broker that
  uses it gets a fresh database.
* ``moto_server`` (session) / ``moto`` – an S3 endpoint and a fresh bucket per test.
* ``pg_s3_broker`` – a started broker with a PostgreSQL catalog and S3 objects.
* ``each_broker`` – parametrized over the two broker flavours above.
* ``store_broker`` – a factory parametrized over the object store (local directory, moto S3).

On a test failure the tail of every broker log it used is attached to the report.
A watchdog (``STRATA_TEST_TIMEOUT``, default 900 s) dumps all thread stacks and
interrupts the run if a single test hangs, so CI never waits forever.

The broker binary is ``$STRATA_BIN`` (default ``target/release/strata``); if it is
missing, every broker test *fails* with a message saying so — nothing is skipped.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading

import pytest

from harness import STRATA_BIN, Broker, MotoServer, PostgresServer, tail, track_broker

TEST_TIMEOUT = float(os.environ.get("STRATA_TEST_TIMEOUT", "900"))


def pytest_configure(config):
    # kafka-python 3.x loads its protocol schemas with deprecated importlib APIs.
    config.addinivalue_line("filterwarnings", "ignore:(read|open)_text is deprecated:DeprecationWarning")


def pytest_report_header(config):
    state = "present" if STRATA_BIN.is_file() else "MISSING: broker tests will fail"
    return f"strata binary: {STRATA_BIN} ({state})"


# ------------------------------------------------------------------ hang watchdog


def _on_hang(nodeid: str) -> None:
    sys.__stderr__.write(f"\n*** {nodeid} ran longer than {TEST_TIMEOUT:.0f}s: "
                         "dumping stacks and interrupting the run ***\n")
    faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
    # A real SIGINT aimed at the main thread also interrupts a blocking system call.
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    timer = threading.Timer(TEST_TIMEOUT, _on_hang, args=(item.nodeid,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


# -------------------------------------------------------- broker logs on failure


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for broker in item.__dict__.get("strata_brokers", []):
            for path in broker.log_paths[-2:]:
                report.sections.append((f"{broker.name} log {path}", tail(path, 150)))


# ----------------------------------------------------------------------- brokers


@pytest.fixture
def make_broker(request, tmp_path):
    """``make_broker(name=None, *, start=True, catalog=None, objects=None, args=(), env=None,
    start_args=(), start_env=None) -> Broker``."""
    made: list[Broker] = []

    def make(name: str | None = None, *, start: bool = True, catalog: str | None = None,
             objects: str | None = None, args=(), env=None, start_args=(), start_env=None) -> Broker:
        name = name or f"strata{len(made) + 1}"
        broker = Broker(tmp_path / name, name=name, catalog=catalog, objects=objects,
                        args=args, env=env)
        made.append(broker)
        track_broker(request.node, broker)
        if start:
            broker.start(start_args, start_env)
        return broker

    yield make

    problems = []
    for broker in made:
        try:
            code = broker.close()
        except AssertionError as exc:
            problems.append(str(exc))
            continue
        if code not in (None, 0):
            problems.append(f"{broker.name} exited with code {code} (expected 0 on SIGTERM)\n"
                            f"{broker.log_tail()}")
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def broker(make_broker) -> Broker:
    """A running broker: SQLite catalog, file:// objects, all other flags default."""
    return make_broker("strata")


@pytest.fixture(scope="session")
def postgres():
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto_server.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto(moto_server):
    """A fresh, empty bucket on the session's moto server (an `S3Bucket`)."""
    return moto_server.new_bucket()


@pytest.fixture
def pg_s3_broker(make_broker, postgres, moto) -> Broker:
    """A running broker with a PostgreSQL catalog (fresh database) and S3 (moto) objects."""
    broker = make_broker("strata-pg-s3", start=False, catalog=postgres.fresh_database(),
                         objects=moto.objects_url, env=moto.env)
    broker.s3 = moto
    return broker.start()


@pytest.fixture(params=["file", "s3"])
def store_broker(request, make_broker):
    """Runs the test once per object store: ``store_broker(args=(), env=None) -> Broker``
    starts a broker with a SQLite catalog and the local-directory store, or a fresh moto
    bucket; ``segment_objects(broker)`` (harness) lists its segment objects either way."""
    def make(args=(), env=None) -> Broker:
        if request.param == "file":
            return make_broker(args=args, env=env)
        bucket = request.getfixturevalue("moto")
        broker = make_broker(start=False, objects=bucket.objects_url,
                             env={**bucket.env, **(env or {})}, args=args)
        broker.s3 = bucket
        return broker.start()
    return make


@pytest.fixture(params=["sqlite-file", "postgres-s3"])
def each_broker(request) -> Broker:
    """Runs the test once per broker flavour."""
    return request.getfixturevalue("broker" if request.param == "sqlite-file" else "pg_s3_broker")
