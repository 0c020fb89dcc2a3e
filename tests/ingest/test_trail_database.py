"""A trail kept in a database of its own: bemi-pg install --trail-only prepares it, and
bemi-pg worker --trail-dsn streams the source's slot into it, exactly once across kill -9 of
the worker and an immediate stop of the server; bemi-pg changes --trail-dsn reads it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import bemi_pg
from tests.fixtures.database import conninfo
from tests.helpers.commands import cli

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "stress"))
import scenarios  # noqa: E402


def trail_rows(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(
            'SELECT database, schema, "table", primary_key, operation, before, after, context, problem '
            "FROM bemi.changes ORDER BY id").fetchall()


def test_the_worker_stores_another_databases_changes_exactly(dsn: str, trail: str) -> None:
    """Types that exist only in the source (an enum, a domain) keep their JSON; keys, column
    rules and contexts come from the source; the source keeps no trail of its own."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as admin:
        admin.execute("CREATE TYPE mood AS ENUM ('ok', 'sad'); CREATE DOMAIN score AS integer CHECK (VALUE >= 0)")
        admin.execute("CREATE TABLE t (id int PRIMARY KEY, m mood, s score, n numeric, c char(3)[], "
                      "j jsonb, at timestamptz, secret text)")
        admin.execute("SELECT bemi.track('t', mask_columns => ARRAY['secret'])")
        with psycopg.connect(dsn) as conn:
            with bemi_pg.with_context(conn, {"user_id": 7}):
                conn.execute("INSERT INTO t VALUES (1, 'ok', 3, 1.50, '{\"ab \",cde}', '{\"k\": [1]}', "
                             "'2026-11-27 10:00+00', 'hunter2')")
                conn.execute("UPDATE t SET m = 'sad', s = 4")
        expected = admin.execute("SELECT to_jsonb(t) - 'secret' || '{\"secret\": \"[masked]\"}' AS row FROM t").fetchone()
        source = admin.execute("SELECT current_database() AS name").fetchone()
    done = cli("--dsn", dsn, "worker", "--drain", "--trail-dsn", trail)
    assert done.returncode == 0, done.stderr
    rows = trail_rows(trail)
    assert [(r["database"], r["schema"], r["table"], r["primary_key"], r["operation"], r["context"], r["problem"])
            for r in rows] == [(source["name"], "public", "t", "1", op, {"user_id": 7}, None)  # type: ignore[index]
                               for op in ("CREATE", "UPDATE")]
    assert rows[1]["after"] == expected["row"]  # type: ignore[index]
    assert rows[1]["before"]["m"] == "ok" and rows[1]["before"]["s"] == 3
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM bemi.changes").fetchone() == (0,)
    listed = cli("--dsn", dsn, "changes", "--trail-dsn", trail, "--json")
    assert [json.loads(line)["operation"] for line in listed.stdout.splitlines()] == ["CREATE", "UPDATE"]


@pytest.mark.crash
def test_exactly_once_across_kill_9_and_an_immediate_server_stop(
        dsn: str, trail: str, postgresql_proc: Any) -> None:
    scenarios.prepare(dsn)

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "bemi_pg.cli", "--dsn", dsn, "worker", "--trail-dsn", trail,
                                 "--batch", "40", "--interval", "0.05"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stored() -> int:
        with psycopg.connect(trail) as conn:
            return int(conn.execute("SELECT count(*) FROM bemi.changes").fetchone()[0])  # type: ignore[index]

    with scenarios.Writers(dsn, 2, pause=0.01, sizes=(1, 3, 90)) as load:
        for pause in (0.4, 0.7, 0.3):
            process = start()
            time.sleep(pause)
            process.kill()
            process.communicate()
        process = start()
        before = stored()
        assert scenarios.wait_for(lambda: stored() > before), "the restarted worker stored nothing"
        scenarios.crash_server(str(postgresql_proc.datadir))
        scenarios.start_server(str(postgresql_proc.datadir), str(postgresql_proc.logfile))
        load.join()
        end = scenarios.mark_end(dsn)
        assert scenarios.wait_for(lambda: scenarios.caught_up(trail, end), seconds=600), "no drain into the trail"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate()
        assert process.returncode == 0, err
    tally = scenarios.tally(dsn, "trail database", 4, load, trail_dsn=trail)
    assert tally.made > 0
    assert (tally.found, tally.missing, tally.duplicated) == (tally.made, 0, 0), tally


def test_a_trail_database_without_bemi_is_refused(dsn: str, postgresql_proc: Any) -> None:
    done = cli("--dsn", dsn, "worker", "--drain", "--trail-dsn", conninfo(postgresql_proc, "postgres"))
    assert done.returncode == 1
    assert "has no bemi 1.1: prepare it with bemi-pg install --trail-only" in done.stderr
