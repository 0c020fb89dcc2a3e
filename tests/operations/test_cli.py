"""The bemi-pg command line, run as a real process against a real server."""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

import bemi_pg
from tests.helpers.trail import set_replica_identity

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
    assert "ingested " in out and "stopped after 6 changes" in out  # in as many batches as the worker met


def test_status_reports_slot_and_tracked_tables(dsn: str, conn: psycopg.Connection[Any],
                                                admin: psycopg.Connection[Any]) -> None:
    bemi_pg.seed_example(conn)
    result = run(dsn, "status")
    assert result.returncode == 0, result.stderr
    slot = admin.execute("SELECT bemi.slot_name() AS name").fetchone()["name"]  # type: ignore[index]
    assert "public.todo" in result.stdout and f"{slot} (pgoutput, idle" in result.stdout


def test_status_warns_clearly_without_the_slot(dsn: str, admin: psycopg.Connection[Any]) -> None:
    slot = admin.execute("SELECT bemi.slot_name() AS name").fetchone()["name"]  # type: ignore[index]
    admin.execute("SELECT bemi.drop_slot()")
    result = run(dsn, "status")
    assert result.returncode == 2
    assert result.stderr.startswith(f"warning: the replication slot {slot} does not exist")
    as_json = run(dsn, "status", "--json")
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 2 and report["slot"] is None and report["slot_name"] == slot
    assert report["warnings"][0].startswith(f"the replication slot {slot} does not exist")


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
    # Not fitted to a terminal's width (COLUMNS, which pytest-xdist's workers have set).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "COLUMNS"}
    result = subprocess.run([*BEMI_PG, "demo"], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    rows = [line.split("|") for line in result.stdout.splitlines() if "| todo " in line]
    assert [(r[0].strip(), r[2].strip()) for r in rows] == [
        ("26", "CREATE"), ("27", "CREATE"), ("28", "CREATE"), ("26", "UPDATE"), ("27", "DELETE"),
    ]
    assert '"endpoint": "/todo/complete"' in result.stdout
    # The README shows these very rows, as the demo prints them (without committed_at).
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    shown = [line for line in readme.split("```")[1].splitlines() if "| todo " in line]
    printed = [" | ".join(cell.strip() for cell in line.split("|")[:6]) for line in result.stdout.splitlines()
               if "| todo " in line]
    assert [" | ".join(cell.strip() for cell in line.split("|")) for line in shown] == printed


def test_options_go_before_or_after_the_subcommand(dsn: str, conn: psycopg.Connection[Any],
                                                   admin: psycopg.Connection[Any]) -> None:
    bemi_pg.seed_example(conn)
    admin.execute("SELECT bemi.ingest()")
    before = subprocess.run([*BEMI_PG, "-q", "--dsn", "dbname=nowhere", "changes", "--dsn", dsn, "--json"],
                            capture_output=True, text=True, timeout=120)
    after = subprocess.run([*BEMI_PG, "changes", "--json", "-q", "--dsn", dsn], capture_output=True, text=True,
                           timeout=120)
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr
    assert before.stdout == after.stdout and len(after.stdout.splitlines()) == 5
    version = subprocess.run([*BEMI_PG, "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout == f"bemi-pg {bemi_pg.__version__} (installs bemi 1.2)\n"


def test_status_json_shows_the_worker_problems_and_identities(dsn: str, conn: psycopg.Connection[Any],
                                                              admin: psycopg.Connection[Any]) -> None:
    bemi_pg.seed_example(conn)
    admin.execute("SELECT bemi.ingest()")
    set_replica_identity(admin, "todo", "DEFAULT")
    admin.execute("INSERT INTO bemi.changes (schema, \"table\", operation, committed_at, transaction_id, position, "
                  "ordinal, problem) VALUES ('public', 'todo', 'CREATE', now(), 1, '0/1', 1, 'bad value')")
    slot = admin.execute("SELECT bemi.slot_name() AS name").fetchone()["name"]  # type: ignore[index]
    # A real reader of the slot: pg_recvlogical streams it, as the worker does.
    bindir = subprocess.check_output(["pg_config", "--bindir"], text=True).strip()
    reader = subprocess.Popen([os.path.join(bindir, "pg_recvlogical"), "-d", dsn, "--slot", slot, "--start",
                               "-o", "proto_version=1", "-o", "publication_names=bemi", "-f", "/dev/null"])
    try:
        wait_for(lambda: admin.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                                       [slot]).fetchone()["active"])  # type: ignore[index]
        result = run(dsn, "status", "--json")
        text = run(dsn, "status")
        started = admin.execute("SELECT backend_start FROM pg_stat_activity WHERE pid = (SELECT active_pid FROM "
                                "pg_replication_slots WHERE slot_name = %s)", [slot]).fetchone()["backend_start"]  # type: ignore[index]
    finally:
        reader.terminate()
        reader.wait()
    assert result.returncode == 2, result.stderr
    report = json.loads(result.stdout)
    [worker] = report["workers"]
    assert worker["connected_since"] == started.isoformat() and worker["streaming"] and worker["state"] == "streaming"
    assert report["wal_level"] == "logical" and report["slot"]["name"] == slot and report["slot"]["active"]
    assert report["problems"] == 1
    assert report["not_full_identity"] == ["public.todo (default)"]
    assert report["slot"]["retained_bytes"] >= 0 and report["tracked"] == ["public.todo"]
    assert f"streaming since {started.isoformat()}" in text.stdout
    assert "warning: tracked tables without REPLICA IDENTITY FULL" in text.stderr
    assert "warning: 1 stored changes have a problem" in text.stderr


def test_changes_relative_times_json_limit_and_width(dsn: str, conn: psycopg.Connection[Any],
                                                     admin: psycopg.Connection[Any]) -> None:
    bemi_pg.seed_example(conn)
    admin.execute("SELECT bemi.ingest()")
    admin.execute("UPDATE bemi.changes SET committed_at = committed_at - interval '3 days' WHERE id = "
                  "(SELECT min(id) FROM bemi.changes)")
    recent = run(dsn, "changes", "--since", "1h", "--json")
    assert recent.returncode == 0 and len(recent.stdout.splitlines()) == 4
    assert len(run(dsn, "changes", "--since", "4d", "--json").stdout.splitlines()) == 5
    assert len(run(dsn, "changes", "--until", "2d", "--json").stdout.splitlines()) == 1

    first = json.loads(run(dsn, "changes", "--until", "2d", "--json").stdout)
    assert {"id", "schema", "table", "transaction_id", "committed_at", "queued_at", "context"} <= first.keys()
    assert first["schema"] == "public" and isinstance(first["transaction_id"], int)
    assert datetime.fromisoformat(first["committed_at"]).tzinfo is not None

    for bad in ("[1, 2]", '"user"', "7"):
        refused = run(dsn, "changes", "--context", bad)
        assert refused.returncode == 1 and refused.stderr.startswith("error: --context must be a JSON object")

    cut = run(dsn, "changes", "--limit", "2")
    assert cut.returncode == 0 and cut.stdout.splitlines()[-1] == "(2 rows)"
    assert cut.stderr.startswith("note: showing the newest 2 matching changes")
    assert run(dsn, "changes", "--limit", "5").stderr == ""

    narrow = subprocess.run([*BEMI_PG, "--dsn", dsn, "changes"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "90"})
    lines = narrow.stdout.splitlines()
    assert max(len(line) for line in lines) <= 90 and any("…" in line for line in lines)
    assert lines[0].split("|")[0].strip() == "primary_key" and lines[-1] == "(5 rows)"
