"""The bemi-pg command line, run as a real process against a real server."""

import os
import signal
import subprocess
import sys
import time
from typing import Any

import psycopg

import bemi_pg

BEMI_PG = [sys.executable, "-m", "bemi_pg.cli"]


def run(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BEMI_PG, "--dsn", dsn, *args], capture_output=True, text=True, timeout=120)


def wait_for(predicate: Any, attempts: int = 600) -> None:
    for _ in range(attempts):
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def count(admin: psycopg.Connection[Any]) -> int:
    row = admin.execute("SELECT count(*) AS n FROM bemi.changes").fetchone()
    assert row is not None
    return int(row["n"])


def test_worker_ingests_and_stops_cleanly_on_sigterm(dsn: str, conn: psycopg.Connection[Any],
                                                      admin: psycopg.Connection[Any]) -> None:
    bemi_pg.seed_example(conn)
    worker = subprocess.Popen([*BEMI_PG, "--dsn", dsn, "worker", "--interval", "0.1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: count(admin) == 5)
    with bemi_pg.with_context(conn, {"user_id": 1}):
        conn.execute("INSERT INTO todo (task) VALUES ('later')")
    wait_for(lambda: count(admin) == 6)
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert "ingested 5 changes" in out and "stopped after 6 changes" in out


def test_status_reports_slot_and_tracked_tables(dsn: str, conn: psycopg.Connection[Any],
                                                admin: psycopg.Connection[Any]) -> None:
    bemi_pg.seed_example(conn)
    result = run(dsn, "status")
    assert result.returncode == 0, result.stderr
    assert "public.todo" in result.stdout and "bemi (idle" in result.stdout


def test_status_fails_clearly_without_the_slot(dsn: str, admin: psycopg.Connection[Any]) -> None:
    admin.execute("SELECT bemi.drop_slot()")
    result = run(dsn, "status")
    assert result.returncode == 1
    assert result.stderr.startswith("error: the replication slot bemi does not exist")


def test_changes_prints_the_trail_with_filters(dsn: str, conn: psycopg.Connection[Any],
                                               admin: psycopg.Connection[Any]) -> None:
    bemi_pg.seed_example(conn)
    admin.execute("SELECT bemi.ingest()")
    result = run(dsn, "changes", "--table", "todo", "--key", "26")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split("|")[0].strip() == "primary_key"
    assert [line.split("|")[2].strip() for line in lines[2:-1]] == ["CREATE", "UPDATE"]
    assert lines[-1] == "(2 rows)"
    by_context = run(dsn, "changes", "--context", '{"method": "DELETE"}', "--json")
    assert by_context.stdout.count('"operation": "DELETE"') == 1 and len(by_context.stdout.splitlines()) == 1
    bad = run(dsn, "changes", "--context", "{not json")
    assert bad.returncode == 1 and bad.stderr.startswith("error: --context is not JSON")


def test_demo_prints_the_example_trail() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    result = subprocess.run([*BEMI_PG, "demo"], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    rows = [line.split("|") for line in result.stdout.splitlines() if "| todo " in line]
    assert [(r[0].strip(), r[2].strip()) for r in rows] == [
        ("26", "CREATE"), ("27", "CREATE"), ("28", "CREATE"), ("26", "UPDATE"), ("27", "DELETE"),
    ]
    assert '"endpoint": "/todo/complete"' in result.stdout
