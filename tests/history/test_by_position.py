"""Time travel by WAL position (docs/time-travel.md): right after the transaction of the
change at a position (bemi.changes.position) committed, exact where commit times are equal;
a position no stored change has is refused (in a gap: ZB001; past what is stored or no
change's: 22023), from SQL and Python."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

import bemi_pg
from tests.helpers.history import fails, rows
from tests.helpers.trail import ingest


def positions(admin: psycopg.Connection[Any]) -> list[tuple[str, int, int]]:
    """(position, transaction id, change id) of every change of the trail, in commit order."""
    return [(r["position"], r["transaction_id"], r["id"])
            for r in admin.execute("SELECT position::text, transaction_id, id FROM bemi.changes ORDER BY id")]


def by_id(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(found, key=lambda row: row["id"])


def test_positions_of_transactions_committed_at_the_same_time(dsn: str, admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL); SELECT bemi.track('todo')")
    admin.execute("INSERT INTO todo VALUES (1, 'a'), (3, 'x')")
    admin.execute("UPDATE todo SET task = 'b' WHERE id = 1")
    admin.execute("INSERT INTO todo VALUES (2, 'c')")
    ingest(admin)
    admin.execute("UPDATE bemi.changes SET committed_at = (SELECT min(committed_at) FROM bemi.changes)")
    (first, first_xid, _), (second_row, _, last_of_first), (second, _, _), (third, third_xid, third_id) = positions(admin)

    # Each change's position names its transaction, whichever of its changes it is.
    moments = [admin.execute("SELECT * FROM bemi.position_moment(%s)", [p]).fetchone() for p in (first, second_row, third)]
    assert [(m["through"], m["transaction_id"]) for m in moments] == [  # type: ignore[index]
        (last_of_first, first_xid), (last_of_first, first_xid), (third_id, third_xid)]
    assert admin.execute("SELECT (bemi.position_moment(%s)).at = (bemi.transaction_moment(%s)).at AS same",
                         [third, third_xid]).fetchone() == {"same": True}

    assert [admin.execute("SELECT bemi.row_at_position('todo', '1', %s) AS r", [p]).fetchone()["r"]  # type: ignore[index]
            for p in (first, second, third)] == [{"id": 1, "task": "a"}, {"id": 1, "task": "b"}, {"id": 1, "task": "b"}]
    assert [rows(admin, "SELECT * FROM bemi.table_at_position(NULL::todo, %s)", [p]) for p in (first, second, third)] == [
        [{"id": 1, "task": "a"}, {"id": 3, "task": "x"}], [{"id": 1, "task": "b"}, {"id": 3, "task": "x"}],
        [{"id": 1, "task": "b"}, {"id": 2, "task": "c"}, {"id": 3, "task": "x"}]]

    assert bemi_pg.row_at_position(admin, "todo", 1, first) == {"id": 1, "task": "a"}
    assert by_id(bemi_pg.table_at_position(admin, "todo", second)) == [{"id": 1, "task": "b"}, {"id": 3, "task": "x"}]

    async def twins() -> tuple[Any, ...]:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            return (await bemi_pg.row_at_position_async(aconn, "todo", "0001", first),
                    by_id(await bemi_pg.table_at_position_async(aconn, "todo", first)),
                    await bemi_pg.row_at_transaction_async(aconn, "todo", 2, third_xid),
                    by_id(await bemi_pg.table_at_transaction_async(aconn, "todo", first_xid)))

    assert asyncio.run(twins()) == ({"id": 1, "task": "a"}, [{"id": 1, "task": "a"}, {"id": 3, "task": "x"}],
                                    {"id": 2, "task": "c"}, [{"id": 1, "task": "a"}, {"id": 3, "task": "x"}])


def test_a_position_no_stored_change_has_is_refused(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY, v text); SELECT bemi.track('t')")
    admin.execute("INSERT INTO t VALUES (1, 'a')")
    admin.execute("UPDATE t SET v = 'b'")
    ingest(admin)
    (first, _, _), (second, _, _) = positions(admin)
    # Between two changes: the trail keeps no commit positions, so it cannot tell which commits came before.
    between = admin.execute("SELECT (%s::pg_lsn + 1)::text AS p", [first]).fetchone()["p"]  # type: ignore[index]
    with fails("22023", f"holds no change at position {between}"):
        admin.execute("SELECT bemi.row_at_position('t', '1', %s)", [between])
    # Written, not ingested yet.
    admin.execute("UPDATE t SET v = 'pending'")
    pending = admin.execute("SELECT pg_current_wal_lsn()::text AS p").fetchone()["p"]  # type: ignore[index]
    with fails("22023", f"holds no change at position {pending} (its newest change is at {second})"):
        admin.execute("SELECT * FROM bemi.table_at_position(NULL::t, %s)", [pending])
    ingest(admin)
    # A write in a gap in capture: refused as the gap, never placed among the stored changes.
    admin.execute("SELECT bemi.drop_slot()")
    lost = admin.execute("UPDATE t SET v = 'in the gap' RETURNING pg_current_wal_insert_lsn()::text AS p").fetchone()["p"]  # type: ignore[index]
    admin.execute("SELECT bemi.create_slot()")
    admin.execute("UPDATE t SET v = 'after'")
    ingest(admin)
    with fails("ZB001", f"may lack the change at position {lost}", "slot dropped"):
        admin.execute("SELECT bemi.row_at_position('t', '1', %s)", [lost])
    with fails("ZB001", "in a gap"):
        bemi_pg.table_at_position(admin, "t", lost)
    # A stored change before the gap: its moment is before the gap, refused by the coverage check.
    with fails("ZB001", "may lack changes after"):
        admin.execute("SELECT bemi.row_at_position('t', '1', %s)", [second])
    after = positions(admin)[-1][0]
    assert bemi_pg.row_at_position(admin, "t", 1, after) == {"id": 1, "v": "after"}
    with fails("22023", "must not be NULL"):
        admin.execute("SELECT * FROM bemi.position_moment(NULL)")
