"""bemi-pg changes --at and bemi-pg revert, run as a real process against a real server."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from tests.helpers.commands import run
from tests.helpers.history import moment
from tests.helpers.trail import ingest


def test_changes_at(dsn: str, admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text)")
    admin.execute("SELECT bemi.track('todo')")
    admin.execute("INSERT INTO todo VALUES (1, 'Sleep'), (2, 'Eat')")
    at = moment(admin).isoformat()
    admin.execute("UPDATE todo SET task = 'Nap' WHERE id = 1")
    ingest(admin)

    table = run(dsn, "changes", "--at", at, "--table", "todo")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["id", "|", "task"] and lines[-1] == "(2 rows)"
    assert sorted(line.split()[0] + line.split()[2] for line in lines[2:4]) == ["1Sleep", "2Eat"]

    row = run(dsn, "changes", "--at", at, "--table", "public.todo", "--key", "1", "--json")
    assert json.loads(row.stdout) == {"id": 1, "task": "Sleep"}
    missing = run(dsn, "changes", "--at", at, "--table", "todo", "--key", "3")
    assert missing.returncode == 0 and missing.stdout.strip() == f"(no row with primary key 3 at {at})"
    too_early = run(dsn, "changes", "--at", "2000-01-01", "--table", "todo")
    assert too_early.returncode == 1 and too_early.stderr.startswith("error: bemi: public.todo was not tracked yet")


def test_revert_dry_run_then_for_real(dsn: str, admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text)")
    admin.execute("SELECT bemi.track('todo')")
    with admin.transaction():
        admin.execute("SELECT bemi.set_context('{\"request_id\": \"r-1\"}')")
        admin.execute("INSERT INTO todo VALUES (1, 'Sleep')")
    ingest(admin)
    xid = admin.execute("SELECT transaction_id FROM bemi.changes").fetchone()["transaction_id"]  # type: ignore[index]

    dry = run(dsn, "revert", "--transaction", str(xid), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert [json.loads(line) for line in dry.stdout.splitlines()] == [  # JSON only: the summary is on stderr
        {"change_id": 1, "schema": "public", "table": "todo", "primary_key": "1", "action": "deleted"}]
    assert dry.stderr == "revert: dry run, rolled back: nothing was changed\n"
    assert admin.execute("SELECT count(*) AS n FROM todo").fetchone() == {"n": 1}

    done = run(dsn, "revert", "--context", '{"request_id": "r-1"}', "--since", "1h")
    assert done.returncode == 0, done.stderr
    assert "deleted" in done.stdout and done.stdout.splitlines()[-1] == "revert: committed (1 rows written)"
    assert admin.execute("SELECT count(*) AS n FROM todo").fetchone() == {"n": 0}

    bad = run(dsn, "revert", "--context", "[1]")
    assert bad.returncode == 1 and bad.stderr.startswith("error: --context must be a JSON object")
