"""Time travel by transaction (exact where commit times are equal) and a row's versions as a
list, following key moves (docs/time-travel.md), from SQL and Python."""

from __future__ import annotations

from typing import Any

import psycopg

import bemi_pg
from tests.helpers.history import fails, rows
from tests.helpers.trail import ingest


def todo(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL)")
    admin.execute("SELECT bemi.track('todo')")


def xid_of(admin: psycopg.Connection[Any], query: str) -> int:
    row = admin.execute(query + " RETURNING pg_current_xact_id()::text::bigint AS x").fetchone()
    assert row is not None
    return row["x"]  # type: ignore[no-any-return]


def test_transactions_committed_at_the_same_time(admin: psycopg.Connection[Any]) -> None:
    """Two transactions with one commit time (as with 4 writers, 6 in 19,000 commits): a
    timestamp cannot tell them apart, a transaction can."""
    todo(admin)
    first = xid_of(admin, "INSERT INTO todo VALUES (1, 'a')")
    second = xid_of(admin, "UPDATE todo SET task = 'b' WHERE id = 1")
    third = xid_of(admin, "INSERT INTO todo VALUES (2, 'c')")
    ingest(admin)
    # Make the commit times equal, as they can be.
    admin.execute("UPDATE bemi.changes SET committed_at = (SELECT min(committed_at) FROM bemi.changes)")
    at = admin.execute("SELECT min(committed_at) AS t FROM bemi.changes").fetchone()["t"]  # type: ignore[index]
    assert admin.execute("SELECT bemi.row_at('todo', '1', %s) AS r", [at]).fetchone()["r"]["task"] == "b"  # type: ignore[index]
    by = [admin.execute("SELECT bemi.row_at_transaction('todo', '1', %s) AS r", [x]).fetchone()["r"]  # type: ignore[index]
          for x in (first, second, third)]
    assert by == [{"id": 1, "task": "a"}, {"id": 1, "task": "b"}, {"id": 1, "task": "b"}]
    assert [rows(admin, "SELECT * FROM bemi.table_at_transaction(NULL::todo, %s)", [x]) for x in (first, second, third)] == [
        [{"id": 1, "task": "a"}], [{"id": 1, "task": "b"}], [{"id": 1, "task": "b"}, {"id": 2, "task": "c"}]]
    assert bemi_pg.row_at_transaction(admin, "todo", 1, first) == {"id": 1, "task": "a"}
    assert bemi_pg.table_at_transaction(admin, "todo", first) == [{"id": 1, "task": "a"}]
    with fails("22023", "no changes of transaction 1 in the trail"):
        admin.execute("SELECT bemi.row_at_transaction('todo', '1', 1)")


def test_a_rows_versions_follow_its_key_moves(admin: psycopg.Connection[Any]) -> None:
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (9, 'earlier row')")
    admin.execute("DELETE FROM todo WHERE id = 9")
    admin.execute("INSERT INTO todo VALUES (9, 'a')")
    admin.execute("UPDATE todo SET task = 'b'")
    admin.execute("UPDATE todo SET id = 10")
    admin.execute("UPDATE todo SET task = 'c'")
    admin.execute("UPDATE todo SET id = 11")
    admin.execute("DELETE FROM todo")
    ingest(admin)
    times = [r["committed_at"] for r in admin.execute("SELECT committed_at FROM bemi.changes ORDER BY id")]
    expected = [
        {"valid_from": times[2], "valid_to": times[3], "primary_key": "9", "image": {"id": 9, "task": "a"}},
        {"valid_from": times[3], "valid_to": times[4], "primary_key": "9", "image": {"id": 9, "task": "b"}},
        {"valid_from": times[4], "valid_to": times[5], "primary_key": "10", "image": {"id": 10, "task": "b"}},
        {"valid_from": times[5], "valid_to": times[6], "primary_key": "10", "image": {"id": 10, "task": "c"}},
        {"valid_from": times[6], "valid_to": times[7], "primary_key": "11", "image": {"id": 11, "task": "c"}},
    ]
    for key in ("9", "10", "11", "0011"):
        found = admin.execute("SELECT valid_from, valid_to, primary_key, image FROM bemi.row_versions('todo', %s)", [key]).fetchall()
        assert found == expected, key
    assert [v["image"]["task"] for v in bemi_pg.row_versions(admin, "todo", 10)] == ["a", "b", "b", "c", "c"]


def test_a_row_from_before_tracking_has_a_first_version_without_a_start(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL)")
    admin.execute("INSERT INTO todo VALUES (1, 'before')")
    admin.execute("SELECT bemi.track('todo')")
    admin.execute("UPDATE todo SET task = 'after'")
    ingest(admin)
    found = admin.execute("SELECT valid_from, valid_to IS NULL AS open, image FROM bemi.row_versions('todo', '1')").fetchall()
    assert [(f["valid_from"] is None, f["open"], f["image"]["task"]) for f in found] == [(True, False, "before"), (False, True, "after")]
