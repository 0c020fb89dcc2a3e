"""Time travel and revert where the trail is kept in a database of its own: bemi_pg's helpers
with trail=, bemi-pg changes --at and bemi-pg revert with --trail-dsn. The trail database is
filled by the real worker (bemi-pg worker --drain --trail-dsn)."""

from __future__ import annotations

import asyncio
import datetime
import json
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import bemi_pg
from tests.helpers.commands import cli
from tests.helpers.history import fails, moment
from tests.helpers.trail import drain


@pytest.fixture
def story(dsn: str, trail: str) -> dict[str, Any]:
    """todo, tracked with a row from before tracking, changed by three transactions (one moves
    a key, one deletes), each with a context; stored into the trail database."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as admin:
        admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text, done boolean NOT NULL DEFAULT false)")
        admin.execute("INSERT INTO todo VALUES (1, 'old', false)")
        admin.execute("SELECT bemi.track('todo')")
        start = moment(admin)
        with psycopg.connect(dsn) as conn:
            with bemi_pg.with_context(conn, {"request": "a"}):
                conn.execute("INSERT INTO todo VALUES (2, 'write', false), (3, 'read', false)")
            first = moment(admin)
            with bemi_pg.with_context(conn, {"request": "b"}):
                conn.execute("UPDATE todo SET done = true WHERE id = 2")
                conn.execute("UPDATE todo SET id = 30 WHERE id = 3")
            second = moment(admin)
            with bemi_pg.with_context(conn, {"request": "c"}):
                conn.execute("DELETE FROM todo WHERE id = 1")
        third = moment(admin)
    drain(dsn, trail)
    return {"start": start, "first": first, "second": second, "third": third}


def by_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: r["id"])


def test_row_at_and_table_at_read_the_trail_database(dsn: str, trail: str, story: dict[str, Any]) -> None:
    with psycopg.connect(dsn) as conn, psycopg.connect(trail) as trail_conn:
        assert conn.execute("SELECT count(*) FROM bemi.changes").fetchone() == (0,)  # nothing local to read

        def row(key: int, at: datetime.datetime) -> Any:
            return bemi_pg.row_at(conn, "todo", key, at, trail=trail_conn)

        # Unchanged before its first change (its before image), created, moved, deleted.
        assert row(1, story["start"]) == {"id": 1, "task": "old", "done": False}
        assert row(2, story["start"]) is None
        assert row(2, story["first"]) == {"id": 2, "task": "write", "done": False}
        assert row(2, story["second"]) == {"id": 2, "task": "write", "done": True}
        assert (row(3, story["second"]), row(30, story["second"])) == (None, {"id": 30, "task": "read", "done": False})
        assert (row(1, story["second"]), row(1, story["third"])) == ({"id": 1, "task": "old", "done": False}, None)
        # Never changed since: read from the table as it is now.
        assert row(30, story["third"]) == {"id": 30, "task": "read", "done": False}
        assert by_id(bemi_pg.table_at(conn, "todo", story["first"], trail=trail_conn)) == [
            {"id": 1, "task": "old", "done": False}, {"id": 2, "task": "write", "done": False},
            {"id": 3, "task": "read", "done": False}]
        assert by_id(bemi_pg.table_at(conn, "todo", story["third"], trail=trail_conn)) == [
            {"id": 2, "task": "write", "done": True}, {"id": 30, "task": "read", "done": False}]
        # Nothing is left behind in either database, and the source's transaction is its own.
        assert conn.execute("SELECT to_regclass('pg_temp.bemi_trail_rows')").fetchone() == (None,)
        conn.rollback()

        # The checks of each side, with their SQLSTATEs: tracking (source), storing (trail).
        with fails("22023", "was not tracked yet"):
            row(1, story["start"] - datetime.timedelta(days=1))
        conn.rollback()
        with fails("22023", "the trail is not ingested up to"):
            bemi_pg.table_at(conn, "todo", story["third"] + datetime.timedelta(days=1), trail=trail_conn)
        conn.rollback()
        with fails("22023", "is not tracked"):
            conn.execute("CREATE TABLE untracked (id int PRIMARY KEY)")
            bemi_pg.row_at(conn, "untracked", 1, story["third"], trail=trail_conn)


def test_revert_reads_the_trail_database(dsn: str, trail: str, story: dict[str, Any]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(trail, autocommit=True) as trail_conn:
        # On an autocommit connection the revert is its own transaction.
        done = bemi_pg.revert(conn, context={"request": "b"}, trail=trail_conn)
        assert sorted((r.primary_key, r.action) for r in done) == [("2", "updated"), ("3", "updated")]
        assert conn.execute("SELECT id, done FROM todo ORDER BY id").fetchall() == [(2, False), (3, False)]
        # The revert's own changes reach the trail like any other, with the reverted ids.
        drain(dsn, trail)
        reverted = trail_conn.execute("SELECT context -> 'bemi_revert' -> 'change_ids' FROM bemi.changes "
                                      "WHERE context ? 'bemi_revert' LIMIT 1").fetchone()
        assert reverted is not None and sorted(reverted[0]) == sorted(
            r[0] for r in trail_conn.execute("SELECT id FROM bemi.changes WHERE context = '{\"request\": \"b\"}'"))
        deleted = trail_conn.execute("SELECT transaction_id FROM bemi.changes WHERE operation = 'DELETE' "
                                     "AND primary_key = '1' AND context = '{\"request\": \"c\"}'").fetchone()
        assert deleted is not None
        assert [r.action for r in bemi_pg.revert(conn, transaction_id=deleted[0], trail=trail_conn)] == ["inserted"]
        assert conn.execute("SELECT id, task FROM todo ORDER BY id").fetchall() == [(1, "old"), (2, "write"), (3, "read")]

        # A conflict (the row changed since) changes nothing; skip leaves it alone.
        first = [r[0] for r in trail_conn.execute("SELECT id FROM bemi.changes WHERE context = '{\"request\": \"a\"}'")]
        conn.execute("UPDATE todo SET task = 'mine' WHERE id = 2")
        with fails("55000", "rows changed since"):
            bemi_pg.revert(conn, change_ids=first, trail=trail_conn)
        assert conn.execute("SELECT count(*) FROM todo").fetchone() == (3,)
        assert [(r.primary_key, r.action) for r in bemi_pg.revert(conn, change_ids=first, on_conflict="skip",
                                                                  trail=trail_conn)] == [("2", "skipped"), ("3", "deleted")]

        # Changes of another database in the same trail database are not this database's to revert.
        trail_conn.execute("INSERT INTO bemi.changes (database, schema, \"table\", primary_key, operation, after, "
                           "committed_at, transaction_id, position, ordinal) "
                           "VALUES ('elsewhere', 'public', 'todo', '2', 'CREATE', '{\"id\": 2}', now(), 1, '0/1', 0) "
                           "RETURNING id")
        other = trail_conn.execute("SELECT id FROM bemi.changes WHERE database = 'elsewhere'").fetchone()
        assert other is not None
        with fails("22023", f"no changes with ids {{{other[0]}}}"):
            bemi_pg.revert(conn, change_ids=[other[0]], trail=trail_conn)
        assert conn.execute("SELECT to_regclass('pg_temp.bemi_trail_rows')").fetchone() == (None,)


def test_a_revert_is_part_of_the_callers_transaction(dsn: str, trail: str, story: dict[str, Any]) -> None:
    with psycopg.connect(dsn) as conn, psycopg.connect(trail) as trail_conn:
        bemi_pg.revert(conn, context={"request": "c"}, trail=trail_conn)
        assert conn.execute("SELECT count(*) FROM todo").fetchone() == (3,)
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM todo").fetchone() == (2,)


def test_async_twins_read_the_trail_database(dsn: str, trail: str, story: dict[str, Any]) -> None:
    async def main() -> tuple[Any, ...]:
        async with await psycopg.AsyncConnection.connect(dsn) as conn, \
                await psycopg.AsyncConnection.connect(trail) as trail_conn:
            row = await bemi_pg.row_at_async(conn, "todo", 2, story["first"], trail=trail_conn)
            table = await bemi_pg.table_at_async(conn, "todo", story["first"], trail=trail_conn)
            done = await bemi_pg.revert_async(conn, context={"request": "c"}, trail=trail_conn)
            await conn.commit()
            return row, len(table), [(r.primary_key, r.action) for r in done]

    assert asyncio.run(main()) == ({"id": 2, "task": "write", "done": False}, 3, [("1", "inserted")])


def test_the_command_line_reads_the_trail_database(dsn: str, trail: str, story: dict[str, Any]) -> None:
    at = story["first"].isoformat()
    row = cli("--dsn", dsn, "changes", "--trail-dsn", trail, "--at", at, "--table", "todo", "--key", "2", "--json")
    assert row.returncode == 0, row.stderr
    assert json.loads(row.stdout) == {"id": 2, "task": "write", "done": False}
    table = cli("--dsn", dsn, "changes", "--trail-dsn", trail, "--at", at, "--table", "todo", "--json")
    assert sorted(json.loads(line)["id"] for line in table.stdout.splitlines()) == [1, 2, 3]
    dry = cli("--dsn", dsn, "revert", "--trail-dsn", trail, "--context", '{"request": "c"}', "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert [json.loads(line)["action"] for line in dry.stdout.splitlines()] == ["inserted"]  # JSON only
    assert dry.stderr == "revert: dry run, rolled back: nothing was changed\n"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM todo").fetchone() == (2,)  # a dry run rolls back


def test_the_trail_parts_refuse_null(dsn: str, trail: str, story: dict[str, Any]) -> None:
    with psycopg.connect(trail) as trail_conn:
        for query in ("SELECT bemi.row_history(NULL, '1', now())", "SELECT * FROM bemi.table_history(NULL, now())",
                      "SELECT bemi.check_trail('{}', NULL)"):
            with fails("22023", "must not be NULL"):
                trail_conn.execute(query)
            trail_conn.rollback()


def test_a_role_with_the_documented_privileges_only(dsn: str, trail: str, story: dict[str, Any]) -> None:
    """docs/trail-database.md: SELECT on bemi.changes in the trail database; in the source,
    what the SQL functions need (here SELECT on the table) and TEMP, which everyone has."""
    role = "trail_reader_" + psycopg.conninfo.conninfo_to_dict(trail)["dbname"][-8:]  # type: ignore[index]
    with psycopg.connect(dsn, autocommit=True) as admin, psycopg.connect(trail, autocommit=True) as trail_admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        try:
            admin.execute(f"GRANT SELECT ON todo TO {role}")
            trail_admin.execute(f"GRANT SELECT ON bemi.changes TO {role}")
            with psycopg.connect(psycopg.conninfo.make_conninfo(dsn, user=role)) as conn, \
                    psycopg.connect(psycopg.conninfo.make_conninfo(trail, user=role)) as trail_conn:
                assert bemi_pg.row_at(conn, "todo", 2, story["first"], trail=trail_conn) == {
                    "id": 2, "task": "write", "done": False}
                assert len(bemi_pg.table_at(conn, "todo", story["first"], trail=trail_conn)) == 3
                conn.rollback()
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for table todo"):
                    # a revert writes as its caller, who may only read todo
                    bemi_pg.revert(conn, context={"request": "c"}, trail=trail_conn)
        finally:
            trail_admin.execute(f"REVOKE ALL ON bemi.changes FROM {role}")
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")
