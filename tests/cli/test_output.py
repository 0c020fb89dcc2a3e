"""What bemi-pg prints and how it ends: pure JSON under --json (errors too), numbers exactly as
stored, one syntax for table names, no traceback on Ctrl-C or a closed pipe, and prune and
uninstall that ask first and keep their archives private."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

import bemi_pg
from tests.helpers.commands import BEMI_PG, run
from tests.helpers.trail import ingest

BIG = "12345678901234567890.123456789"


def lines_of_json(text: str) -> list[Any]:
    return [json.loads(line, parse_float=Decimal) for line in text.splitlines()]


def wait_for(predicate: Any) -> None:
    while not predicate():
        time.sleep(0.05)


def test_numbers_are_printed_and_read_exactly(dsn: str, admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE prices (id int PRIMARY KEY, amount numeric, small numeric(6, 2), ratio float8); "
                  "SELECT bemi.track('prices')")
    admin.execute(f"INSERT INTO prices VALUES (1, {BIG}, 10.50, 0.1)")
    ingest(admin)
    listed = run(dsn, "changes", "--table", "prices", "--json")
    assert listed.returncode == 0, listed.stderr
    assert f'"amount": {BIG}' in listed.stdout and '"small": 10.50' in listed.stdout
    [row] = lines_of_json(listed.stdout)
    assert row["after"]["amount"] == Decimal(BIG) and str(row["after"]["small"]) == "10.50"
    # Time travel gives typed rows: numeric stays exact there too.
    until = admin.execute("SELECT bemi.ingested_until()::text AS at").fetchone()["at"]  # type: ignore[index]
    travelled = run(dsn, "changes", "--table", "prices", "--at", until, "--json")
    assert travelled.returncode == 0, travelled.stderr
    assert f'"amount": {BIG}' in travelled.stdout and '"small": 10.50' in travelled.stdout
    # And in Python: Decimal, never float.
    with psycopg.connect(dsn) as conn:
        as_of = bemi_pg.row_at(conn, "prices", 1, until)
    assert as_of is not None and as_of["amount"] == Decimal(BIG) and isinstance(as_of["small"], Decimal)


def test_one_table_name_syntax_with_and_without_at(dsn: str, admin: psycopg.Connection[Any]) -> None:
    admin.execute('CREATE SCHEMA "My Schema"; CREATE TABLE "My Schema"."Todo Items" (id int PRIMARY KEY, task text); '
                  "CREATE TABLE todo (id int PRIMARY KEY, task text); "
                  """SELECT bemi.track('"My Schema"."Todo Items"'); SELECT bemi.track('todo')""")
    admin.execute("""INSERT INTO "My Schema"."Todo Items" VALUES (1, 'quoted'); INSERT INTO todo VALUES (1, 'plain')""")
    ingest(admin)
    until = admin.execute("SELECT bemi.ingested_until()::text AS at").fetchone()["at"]  # type: ignore[index]
    for name in ('"My Schema"."Todo Items"', ' "My Schema" . "Todo Items" '):
        listed = run(dsn, "changes", "--table", name, "--json")
        travelled = run(dsn, "changes", "--table", name, "--at", until, "--json")
        assert listed.returncode == travelled.returncode == 0, listed.stderr + travelled.stderr
        assert [r["after"]["task"] for r in lines_of_json(listed.stdout)] == ["quoted"]
        assert [r["task"] for r in lines_of_json(travelled.stdout)] == ["quoted"]
    # Unquoted names fold to lower case, as SQL folds them, with and without --at.
    for name in ("TODO", "public.Todo"):
        assert [r["after"]["task"] for r in lines_of_json(run(dsn, "changes", "--table", name, "--json").stdout)] \
            == ["plain"]
        assert [r["task"] for r in lines_of_json(run(dsn, "changes", "--table", name, "--at", until, "--json").stdout)] \
            == ["plain"]
    for bad in ("My Schema.Todo Items", 'a.b.c', 'todo.', '"unclosed'):
        refused = run(dsn, "changes", "--table", bad)
        assert refused.returncode == 1 and refused.stderr.startswith("error: --table must name a table as SQL does")


def test_json_output_is_json_only_errors_included(dsn: str, conn: psycopg.Connection[Any],
                                                  admin: psycopg.Connection[Any]) -> None:
    bemi_pg.seed_example(conn)
    ingest(admin)
    reverted = run(dsn, "revert", "--change", "4", "5", "--json")
    assert reverted.returncode == 0, reverted.stderr
    assert [(r["change_id"], r["action"]) for r in lines_of_json(reverted.stdout)] == [(4, "updated"), (5, "inserted")]
    assert reverted.stderr.startswith("revert: committed")
    dry = run(dsn, "revert", "--transaction", "1", "--json", "--dry-run")
    assert dry.returncode == 1
    assert json.loads(dry.stdout) == {"error": dry.stderr.removeprefix("error: ").strip(), "sqlstate": "22023"}
    bad = run(dsn, "changes", "--json", "--context", "{not json")
    assert bad.returncode == 1 and json.loads(bad.stdout)["sqlstate"] is None
    assert json.loads(bad.stdout)["error"].startswith("--context is not JSON")


def test_a_closed_pipe_ends_it_quietly(dsn: str, admin: psycopg.Connection[Any], tmp_path: Path) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY, v text); SELECT bemi.track('t'); "
                  "INSERT INTO t SELECT i, repeat('x', 100) FROM generate_series(1, 3000) i")
    ingest(admin)
    errors = tmp_path / "stderr"
    command = " ".join(f"'{a}'" for a in [*BEMI_PG, "--dsn", dsn, "changes", "--limit", "5000"])
    piped = subprocess.run(["bash", "-c", f"{command} 2>{errors} | head -1; echo ${{PIPESTATUS[0]}}"],
                           capture_output=True, text=True)
    first, status = piped.stdout.splitlines()
    assert first.split("|")[0].strip() == "primary_key"
    assert errors.read_text() == "" and status == "141"  # as a process ended by SIGPIPE


def test_ctrl_c_ends_it_quietly_with_130(dsn: str, admin: psycopg.Connection[Any]) -> None:
    with psycopg.connect(dsn) as locker:
        locker.execute("LOCK TABLE bemi.progress IN ACCESS EXCLUSIVE MODE")
        waiting = subprocess.Popen([*BEMI_PG, "--dsn", dsn, "status", "--timeout", "600"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: admin.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'bemi-pg' "
                                       "AND wait_event_type = 'Lock'").fetchone()["n"] == 1)  # type: ignore[index]
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate()
    assert waiting.returncode == 130
    assert out == "" and "Traceback" not in err and "KeyboardInterrupt" not in err


def old_partitions(admin: psycopg.Connection[Any]) -> list[str]:
    """Two-second partitions, the oldest holding one change ingest has gone past."""
    admin.execute("SET bemi.partition_interval = '2 seconds'")
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t'); INSERT INTO t VALUES (1)")
    ingest(admin)
    time.sleep(4.5)  # the partition's end passes: it is older than 1s, and ingest has gone past it
    admin.execute("INSERT INTO t VALUES (2)")
    ingest(admin)
    return [r["p"] for r in admin.execute("SELECT partition::text AS p FROM bemi.partitions ORDER BY from_at")]


def test_prune_lists_asks_and_archives_privately(dsn: str, admin: psycopg.Connection[Any], tmp_path: Path) -> None:
    before = old_partitions(admin)
    archive = tmp_path / "archives" / "bemi"
    dry = run(dsn, "prune", "--older-than", "1s", "--archive-dir", str(archive), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"prune: would drop {before[0]}" in dry.stdout and "dry run" in dry.stdout
    assert not archive.exists() and old_partitions_now(admin) == before
    unasked = run(dsn, "prune", "--older-than", "1s", "--archive-dir", str(archive))
    assert unasked.returncode == 1 and "pass --yes" in unasked.stderr
    assert old_partitions_now(admin) == before and not archive.exists()
    done = run(dsn, "prune", "--older-than", "1s", "--archive-dir", str(archive), "--yes")
    assert done.returncode == 0, done.stderr
    assert before[0] not in old_partitions_now(admin)
    files = sorted(archive.iterdir())
    assert {f.suffix for f in files} == {".copy", ".json"} and len(files) % 2 == 0
    assert stat.S_IMODE(archive.stat().st_mode) == 0o700
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}


def old_partitions_now(admin: psycopg.Connection[Any]) -> list[str]:
    return [r["p"] for r in admin.execute("SELECT partition::text AS p FROM bemi.partitions ORDER BY from_at")]


def test_uninstall_asks_first(dsn: str, admin: psycopg.Connection[Any]) -> None:
    refused = run(dsn, "uninstall")
    assert refused.returncode == 1 and "no terminal to ask on, pass --yes" in refused.stderr
    assert admin.execute("SELECT count(*) AS n FROM pg_extension WHERE extname = 'bemi'").fetchone() == {"n": 1}
    assert run(dsn, "uninstall", "--yes").returncode == 0
    assert admin.execute("SELECT count(*) AS n FROM pg_extension WHERE extname = 'bemi'").fetchone() == {"n": 0}
