"""From 1.0 to 1.1 with changes pending: ALTER EXTENSION bemi UPDATE keeps the 1.0
test_decoding slot; the first 1.1 ingest (or bemi.create_slot()) creates the pgoutput slot,
drains the old one into the trail and drops it. Nothing is lost, nothing is stored twice."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import bemi_pg
from tests.helpers.trail import changes, ingest


def write(conn: psycopg.Connection[Any], step: str, keys: range) -> list[tuple[str, str, dict[str, str]]]:
    with bemi_pg.with_context(conn, {"step": step}):
        for key in keys:
            conn.execute("INSERT INTO todo VALUES (%s, %s)", [key, step])
        conn.execute("UPDATE todo SET task = task || '!' WHERE id = %s", [keys[0]])
    return [(str(k), "CREATE", {"step": step}) for k in keys] + [(str(keys[0]), "UPDATE", {"step": step})]


def slots(admin: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    return [(r["slot_name"], r["plugin"]) for r in admin.execute(
        "SELECT slot_name, plugin FROM pg_replication_slots WHERE database = current_database() ORDER BY 1")]


@pytest.mark.parametrize("move", ["first ingest", "create_slot"])
def test_upgrade_with_pending_changes_moves_to_the_pgoutput_slot(old_install: str, move: str) -> None:
    with psycopg.connect(old_install, autocommit=True, row_factory=dict_row) as admin, \
            psycopg.connect(old_install) as conn:
        admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text); SELECT bemi.track('todo')")
        made = write(conn, "stored by 1.0", range(1, 4))
        assert admin.execute("SELECT bemi.ingest() AS n").fetchone() == {"n": 4}
        made += write(conn, "pending at the upgrade", range(4, 7))
        admin.execute("ALTER EXTENSION bemi UPDATE")
        assert admin.execute("SELECT extversion FROM pg_extension WHERE extname = 'bemi'").fetchone() == {"extversion": "1.2"}
        made += write(conn, "after the upgrade", range(7, 10))
        assert slots(admin) == [("bemi", "test_decoding")]
        if move == "create_slot":
            admin.execute("SELECT bemi.create_slot()")
        else:
            assert admin.execute("SELECT bemi.ingest() AS n").fetchone() == {"n": 8}
        slot = admin.execute("SELECT bemi.slot_name() AS s").fetchone()["s"]  # type: ignore[index]
        assert slots(admin) == [(slot, "pgoutput")]
        made += write(conn, "on the 1.1 slot", range(10, 13))
        ingest(admin)
        rows = changes(admin, "primary_key", "operation", "context", "position", "ordinal")
        assert [(r["primary_key"], r["operation"], r["context"]) for r in rows] == made
        assert len({(r["position"], r["ordinal"]) for r in rows}) == len(made)
        assert admin.execute("SELECT slot_name FROM bemi.progress").fetchall() == [{"slot_name": slot}]
