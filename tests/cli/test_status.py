"""bemi-pg status for monitoring: what it reports, that it reads no trail rows (the plans of its
queries on a large trail), that a lock cannot make it hang, that a trail database is read where
it is, and that the monitoring role of docs/monitoring.md can run it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

import bemi_pg
from bemi_pg.cli import status
from tests.fixtures.database import BINDIR
from tests.helpers.commands import BEMI_PG, run
from tests.helpers.trail import ingest

ROOT = Path(__file__).resolve().parents[2]


def report(done: subprocess.CompletedProcess[str], code: int = 0) -> dict[str, Any]:
    assert done.returncode == code, done.stdout + done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_the_report(dsn: str, conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> None:
    bemi_pg.seed_example(conn)
    ingest(admin)
    got = report(run(dsn, "status", "--json"))
    progress = admin.execute("SELECT lsn::text, bemi.ingested_until() AS until, ingested_at FROM bemi.progress").fetchone()
    slot = admin.execute("SELECT slot_name, restart_lsn::text, confirmed_flush_lsn::text FROM pg_replication_slots "
                         "WHERE slot_name = bemi.slot_name()").fetchone()
    assert progress is not None and slot is not None
    server_time = datetime.fromisoformat(got["server_time"])
    assert server_time.tzinfo is not None and server_time >= progress["until"]
    assert got["slot"]["name"] == slot["slot_name"] and got["slot"]["active"] is False
    assert (got["slot"]["restart_lsn"], got["slot"]["confirmed_flush_lsn"]) == (slot["restart_lsn"],
                                                                               slot["confirmed_flush_lsn"])
    assert got["slot"]["wal_status"] == "reserved" and got["slot"]["retained_bytes"] >= 0
    assert isinstance(got["lag"]["bytes"], int) and got["lag"]["bytes"] == got["pending"]["wal_bytes"] >= 0
    assert 0 <= got["lag"]["seconds"] <= (server_time - progress["until"]).total_seconds()
    assert got["ingested_lsn"] == progress["lsn"] and datetime.fromisoformat(got["ingested_until"]) == progress["until"]
    assert datetime.fromisoformat(got["last_ingested_at"]) == progress["ingested_at"]
    assert got["problems"] == 0 and got["workers"] == [] and got["tracked"] == ["public.todo"]
    assert got["warnings"] == [] and got["trail_database"] == got["database"]


def test_pending_changes_show_as_lag(dsn: str, conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> None:
    bemi_pg.seed_example(conn)
    ingest(admin)
    caught_up = report(run(dsn, "status", "--json"))
    admin.execute("INSERT INTO todo (task) SELECT 'task ' || i FROM generate_series(1, 2000) i")
    behind = report(run(dsn, "status", "--json", "--max-lag", "0.000001"), code=2)
    assert behind["lag"]["bytes"] > caught_up["lag"]["bytes"] + 100_000  # 2,000 rows of WAL not yet read
    assert behind["lag"]["seconds"] > 0 and any("behind" in w for w in behind["warnings"])


def explain(admin: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> str:
    with admin.cursor() as cur:  # a query without placeholders goes as it is
        rows = cur.execute(f"EXPLAIN {query}", params if "%(" in query else None).fetchall()
    return "\n".join(r["QUERY PLAN"] for r in rows)


@pytest.mark.slow
def test_it_reads_no_rows_of_a_large_trail(dsn: str, admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t'); INSERT INTO t VALUES (0)")
    ingest(admin)
    # 300,000 stored changes, three of them with a problem, in the partition ingest made.
    admin.execute("""INSERT INTO bemi.changes (schema, "table", primary_key, operation, after, committed_at,
                       transaction_id, position, ordinal, problem)
                     SELECT 'public', 't', i::text, 'CREATE', jsonb_build_object('id', i), now(), i, '0/1', i,
                            CASE WHEN i % 100000 = 0 THEN 'bad value' END
                     FROM generate_series(1, 300000) i""")
    admin.execute("ANALYZE bemi.changes")
    slot = {"slot": admin.execute("SELECT bemi.slot_name() AS s").fetchone()["s"]}  # type: ignore[index]
    plans = {name: explain(admin, query, slot) for name, query in
             [("progress", status.PROGRESS), ("estimate", status.ESTIMATE), ("problems", status.PROBLEMS),
              ("workers", status.WORKERS), ("slot", status.SLOT), ("not full", status.NOT_FULL)]}
    # No sequential scan of the trail's rows: the partition ingest made for the period ahead is
    # empty (no pages), and a scan of it reads nothing; the full one is read by its index only.
    full = admin.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                         "WHERE i.inhparent = 'bemi.changes'::regclass ORDER BY c.relpages DESC LIMIT 1").fetchone()
    assert full is not None and f"Index Only Scan using {full['relname']}_id_idx on {full['relname']}" in plans["problems"]
    for name, plan in plans.items():
        scanned = [s for s in re.findall(r"Seq Scan on (\S+)", plan) if s.startswith("changes")]
        pages = {s: admin.execute("SELECT relpages FROM pg_class WHERE oid = ('bemi.' || %s)::regclass",
                                  [s]).fetchone()["relpages"] for s in scanned}  # type: ignore[index]
        assert all(n == 0 for n in pages.values()), f"{name} reads the trail ({pages}):\n{plan}"
    got = report(run(dsn, "status", "--json"), code=2)
    assert got["problems"] == 3 and got["changes_estimate"] >= 250_000
    assert got["warnings"] == ["3 stored changes have a problem (SELECT id, problem FROM bemi.changes WHERE "
                               "problem IS NOT NULL)"]


def test_a_lock_cannot_make_it_hang(dsn: str, admin: psycopg.Connection[Any]) -> None:
    with psycopg.connect(dsn) as locker:
        locker.execute("LOCK TABLE bemi.progress IN ACCESS EXCLUSIVE MODE")
        blocked = run(dsn, "status", "--json", "--timeout", "1")  # returns while the lock is still held
    got = report(blocked, code=1)
    assert got["sqlstate"] == "55P03" and "lock timeout" in got["error"]
    assert report(run(dsn, "status", "--json"))["slot"] is not None  # and works once the lock is gone


def test_a_trail_database_is_read_where_it_is(dsn: str, trail: str, admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t'); INSERT INTO t VALUES (1)")
    assert run(dsn, "worker", "--drain", "--trail-dsn", trail).returncode == 0
    local = report(run(dsn, "status", "--json"), code=2)  # the source's own trail never got anything
    assert local["ingested_until"] is None
    assert local["warnings"][0].startswith(f"the slot has confirmed up to {local['slot']['confirmed_flush_lsn']}, "
                                           "past what this trail holds")
    got = report(subprocess.run([*BEMI_PG, "--dsn", dsn, "status", "--json"], capture_output=True, text=True,
                                env={**os.environ, "BEMI_TRAIL_DSN": trail}))
    with psycopg.connect(trail) as trail_conn:
        until = trail_conn.execute("SELECT max(bemi.ingested_until(slot_name)) FROM bemi.progress").fetchone()
    assert until is not None and datetime.fromisoformat(got["ingested_until"]) == until[0]
    assert got["trail_database"] != got["database"] and got["tracked"] == ["public.t"] and got["slot"] is not None
    with psycopg.connect(trail) as trail_conn:
        place = trail_conn.execute("SELECT system_identifier, current_database() FROM pg_control_system()").fetchone()
    assert place is not None
    assert {k: got["trail_stored_in"][k] for k in ("system_identifier", "database", "read_here")} == {
        "system_identifier": place[0], "database": place[1], "read_here": True}
    assert local["trail_stored_in"]["read_here"] is False
    assert local["warnings"][-1].startswith(f"the trail is stored in the trail database {place[1]} ")


def documented_monitoring_role() -> str:
    """The SQL block of docs/monitoring.md, as a user would run it."""
    blocks = re.findall(r"```sql\n(.*?)```", (ROOT / "docs" / "monitoring.md").read_text(encoding="utf-8"),
                        re.DOTALL)
    assert len(blocks) == 1
    return blocks[0]


@pytest.fixture
def monitor(dsn: str, admin: psycopg.Connection[Any]) -> Iterator[str]:
    """The monitoring role of docs/monitoring.md, made by its block (run twice: it runs again)."""
    admin.execute(documented_monitoring_role())
    admin.execute(documented_monitoring_role())
    yield "bemi_monitor"
    admin.execute("DROP OWNED BY bemi_monitor")
    admin.execute("DROP ROLE bemi_monitor")


def test_the_monitoring_role_runs_it(dsn: str, conn: psycopg.Connection[Any], admin: psycopg.Connection[Any],
                                     monitor: str) -> None:
    bemi_pg.seed_example(conn)
    ingest(admin)
    admin.execute("UPDATE bemi.changes SET problem = 'bad value' WHERE id = 1")
    as_monitor = psycopg.conninfo.make_conninfo(dsn, user=monitor)
    with psycopg.connect(as_monitor) as watcher:  # it reads no values
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            watcher.execute("SELECT after FROM bemi.changes")
    # A worker's stream, named as bemi-pg worker names its connections.
    slot = admin.execute("SELECT bemi.slot_name() AS s").fetchone()["s"]  # type: ignore[index]
    reader = subprocess.Popen([os.path.join(BINDIR, "pg_recvlogical"), "-d",
                               psycopg.conninfo.make_conninfo(dsn, application_name="bemi-pg worker"),
                               "--slot", slot, "--start", "-o", "proto_version=1", "-o", "publication_names=bemi",
                               "-f", "/dev/null"])
    try:
        while not admin.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                                [slot]).fetchone()["active"]:  # type: ignore[index]
            time.sleep(0.05)
        got = report(run(as_monitor, "status", "--json"), code=2)
    finally:
        reader.terminate()
        reader.wait()
    assert got["problems"] == 1 and got["warnings"][0].startswith("1 stored changes have a problem")
    assert got["tracked"] == ["public.todo"] and got["ingested_until"] is not None and got["slot"]["active"]
    [worker] = got["workers"]
    assert worker["application_name"] == "bemi-pg worker" and worker["state"] == "streaming"
    assert worker["replication_state"] == "streaming"
