"""Faults, with real processes: the worker killed with kill -9, the server stopped with
pg_ctl stop -m immediate, a second worker, the slot gone, tables changed under pending WAL.
Each scenario counts the changes made against the rows in bemi.changes. make stress runs
the same scenarios (stress/scenarios.py) at full size."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers.trail import changes, ingest


sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "stress"))
import scenarios  # noqa: E402


def assert_exact(tally: scenarios.Tally) -> None:
    assert tally.made > 0
    assert (tally.found, tally.missing, tally.duplicated) == (tally.made, 0, 0), tally


@pytest.mark.crash
def test_worker_killed_with_sigkill_under_load(dsn: str) -> None:
    assert_exact(scenarios.worker_kills(dsn, kills=3, writers=2, pause=0.02))


@pytest.mark.crash
def test_server_stopped_immediately_mid_ingest_under_load(dsn: str, postgresql_proc: Any) -> None:
    assert_exact(scenarios.server_crashes(
        dsn, str(postgresql_proc.datadir), str(postgresql_proc.logfile), crashes=1, writers=2, pause=0.02))


def test_second_worker_with_no_wait_exits_with_a_clear_message(dsn: str) -> None:
    """(Without --no-wait, a second worker waits: tests/ingest/test_worker_service.py.)"""
    scenarios.prepare(dsn)
    with scenarios.running_worker(dsn), scenarios.Writers(dsn, 2, transactions=40) as load:
        second = scenarios.start_worker(dsn, "--no-wait")
        _, err = second.communicate()
        assert second.returncode == 1
        assert err.startswith("error: another bemi-pg worker is already ingesting")
    scenarios.drain(dsn)
    assert_exact(scenarios.tally(dsn, "two workers", 1, load))


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bemi_pg.cli", "--dsn", dsn, *args],
                          capture_output=True, text=True)


def test_missing_slot_is_reported_by_ingest_status_and_worker(dsn: str, admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t'); INSERT INTO t VALUES (1)")
    admin.execute("SELECT bemi.drop_slot()")
    with pytest.raises(psycopg.errors.UndefinedObject, match='^bemi: the replication slot "bemi_[0-9]+" does not exist'):
        admin.execute("SELECT bemi.ingest()")
    status = cli(dsn, "status")
    assert status.returncode == 2
    assert re.search("warning: the replication slot bemi_[0-9]+ does not exist", status.stderr)
    worker = cli(dsn, "worker")
    assert worker.returncode == 1
    assert re.search('error: .*the replication slot "?bemi_[0-9]+"? does not exist', worker.stderr)
    assert changes(admin) == []


def test_status_warns_when_retained_wal_passes_the_threshold(dsn: str, admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t')")
    for key in (1, 2):  # two segment switches with a change between: over 16 MB retained
        admin.execute("INSERT INTO t VALUES (%s)", [key])
        admin.execute("SELECT pg_switch_wal()")
    warned = cli(dsn, "status", "--max-retained-mb", "1")
    assert warned.returncode == 2
    assert "warning: the slot retains" in warned.stderr
    relaxed = cli(dsn, "status", "--max-retained-mb", "1024")
    assert relaxed.returncode == 0, relaxed.stderr
    assert "retained WAL" in relaxed.stdout
    assert ingest(admin) == 2


COLUMN_DDL = {  # the DDL, a change after it, that change's row
    "add column": ("ALTER TABLE t ADD COLUMN extra int DEFAULT 5", "INSERT INTO t VALUES (3, 'd', 3)",
                   {"id": 3, "v": "d", "n": 3, "extra": 5}),
    "drop column": ("ALTER TABLE t DROP COLUMN v", "INSERT INTO t VALUES (3, 3)", {"id": 3, "n": 3}),
    "rename column": ("ALTER TABLE t RENAME COLUMN v TO w", "INSERT INTO t VALUES (3, 'd', 3)",
                      {"id": 3, "w": "d", "n": 3}),
    "type change": ("ALTER TABLE t ALTER COLUMN n TYPE text", "INSERT INTO t VALUES (3, 'd', 'x')",
                    {"id": 3, "v": "d", "n": "x"}),
}


@pytest.mark.parametrize("ddl", COLUMN_DDL)
def test_column_ddl_while_changes_are_pending(ddl: str, admin: psycopg.Connection[Any]) -> None:
    """Changes made before the DDL keep the columns and types they were made with (the WAL is
    decoded with the catalog of its time); the change after it has the new shape."""
    statement, insert, after = COLUMN_DDL[ddl]
    admin.execute("CREATE TABLE t (id int PRIMARY KEY, v text, n int); SELECT bemi.track('t')")
    admin.execute("INSERT INTO t VALUES (1, 'a', 1), (2, 'b', 2)")
    admin.execute("UPDATE t SET v = 'c' WHERE id = 1")
    admin.execute("DELETE FROM t WHERE id = 2")
    admin.execute(statement)
    admin.execute(insert)
    assert ingest(admin) == 5
    rows = [(r["operation"], r["before"], r["after"]) for r in changes(admin, "operation", "before", "after")]
    a1, b2 = {"id": 1, "v": "a", "n": 1}, {"id": 2, "v": "b", "n": 2}
    assert rows == [("CREATE", {}, a1), ("CREATE", {}, b2), ("UPDATE", a1, {**a1, "v": "c"}), ("DELETE", b2, {}),
                    ("CREATE", {}, after)]
