"""A broker frozen (SIGSTOP) *inside* a catalog transaction must not stall the cluster.

Regression test for a CI flake of ``test_cluster.py::test_sigstop_fenced_and_rejoins``
("workload while a broker is frozen: 100 more acknowledged records", nothing acknowledged for
60 s, "5000 queued", no client error). A flush commit updates its partitions' rows in the
catalog's ``partitions`` table and so holds their row locks until it commits. When the SIGSTOP
lands in that window (~1-2 % of freezes), PostgreSQL keeps the frozen session idle in its
transaction, with the locks, for as long as the process is stopped. The brokers that take
over block in their claim (an UPDATE of those rows) inside their heartbeat tick, so they stop
heartbeating and renewing their own lease: past it they refuse every append, the other one
then tries to claim their partitions and blocks as well, and the whole cluster acknowledges
nothing until the frozen broker is thawed.

The random freeze of the original test hits that window rarely; this test makes it land there
every time: it holds the row locks of the victim's partitions from a separate session until
the victim's flush commit is blocked on them (inside its transaction), freezes the victim, and
releases them: the victim's UPDATE completes and its session is left idle in the transaction,
holding the lock, exactly as in the flake.
"""

from __future__ import annotations

import subprocess
import time
import urllib.parse
from pathlib import Path

from harness import wait_until
from test_cluster import (LEASE_S, REJOIN_BOUND_S, TAKEOVER_BOUND_S, cluster,  # noqa: F401
                          fresh_cluster, start_workload, verify_exactly_once, wait_ownership)


def _sessions(postgres, db: str) -> list[tuple[int, str, str, str]]:
    """(pid, state, wait event type, query) of the sessions on ``db`` but this one."""
    out = postgres.psql(
        "SELECT pid || '|' || coalesce(state, '') || '|' || coalesce(wait_event_type, '') || '|' "
        "|| left(regexp_replace(query, '\\s+', ' ', 'g'), 80) "
        f"FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()", db=db)
    rows = []
    for line in out.splitlines():
        if line:
            pid, state, wait, query = line.split("|", 3)
            rows.append((int(pid), state, wait, query.strip()))
    return rows


def _stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


def test_sigstop_inside_a_catalog_transaction(cluster, postgres):
    db = urllib.parse.urlparse(cluster.catalog).path.lstrip("/")
    topic, own = fresh_cluster(cluster, 3, prefix="sigstoptx")
    load, reader = start_workload(cluster, topic)
    load.wait_acks(300, "workload warm-up")

    victim = cluster.brokers[1]
    rest = [b for b in cluster.brokers if b is not victim]
    victim_id = cluster.node_id(victim)

    # Hold the victim's partition rows until its flush commit waits for one of them.
    holder = subprocess.Popen(
        ["psql", "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "postgres", "-d", db,
         "-q", "-v", "ON_ERROR_STOP=1"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        holder.stdin.write("BEGIN;\nSELECT partition_id FROM partitions "
                           f"WHERE owner = '{victim_id}' FOR UPDATE;\n")
        holder.stdin.flush()

        def victim_commit_blocked():
            return [s for s in _sessions(postgres, db)
                    if s[2] == "Lock" and s[3].startswith("UPDATE partitions SET high_watermark")]

        blocked = wait_until(victim_commit_blocked, 15,
                             f"{victim.name}'s flush commit to wait for its partition rows",
                             interval=0.05)
        cluster.freeze(victim)
        wait_until(lambda: _stopped(victim.pid), 5, f"{victim.name} to be stopped")
    finally:
        holder.communicate("ROLLBACK;\n\\q\n", timeout=30)
    frozen_at = time.monotonic()
    pid = blocked[0][0]
    try:
        # Its UPDATE went through once the rows were released; frozen, it is now idle in its
        # transaction (or already ended by the catalog's idle-in-transaction timeout).
        wait_until(lambda: all(s[1] == "idle in transaction"
                               for s in _sessions(postgres, db) if s[0] == pid),
                   5, f"the frozen {victim.name}'s session to be idle in its transaction")
        print(f"{victim.name} frozen inside a flush commit holding a partition row lock")

        own = wait_ownership(cluster, topic, rest, TAKEOVER_BOUND_S + 10,
                             f"the other two brokers to drop the frozen {victim.name} and own "
                             f"all partitions")
        print(f"taken over after {time.monotonic() - frozen_at:.1f}s: {own.counts()}")
        remaining = LEASE_S + 3 - (time.monotonic() - frozen_at)
        if remaining > 0:
            time.sleep(remaining)
        try:
            load.wait_acks(100, "workload while a broker is frozen inside a transaction")
            # Past the takers' own lease too: a broker stuck in its claim renews it no more.
            time.sleep(LEASE_S)
            load.wait_acks(300, "workload a lease later, the broker still frozen")
        finally:
            print("catalog sessions:\n" + "\n".join(map(str, _sessions(postgres, db))))
    finally:
        cluster.thaw(victim)

    own = wait_ownership(cluster, topic, cluster.brokers, REJOIN_BOUND_S,
                         f"the thawed {victim.name} to rejoin and own partitions",
                         condition=lambda o: bool(o.owned_by(victim)))
    print(f"{victim.name} rejoined: {own.counts()}")
    load.wait_acks(300, "workload after the rejoin")
    verify_exactly_once(cluster, topic, load, reader, min_acked=700)
