"""Replaying the trail reproduces the table (hypothesis).

Random tables (odd column names, a useful mix of types, with or without a primary key) get
random INSERT/UPDATE/DELETE workloads spread over transactions, some statements inside
savepoints that are rolled back, each with its own context, an inherited one or none. After
ingest, replaying bemi.changes in id order onto an empty copy of the table (INSERT from after,
UPDATE/DELETE of one row located by before) must give the table exactly, and every change must
carry the context its statement ran with.
"""

from __future__ import annotations

import itertools
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

import bemi_pg
from tests.helpers.replay import ENUM_LABELS, differences, run_statement, tables, workloads
from tests.helpers.trail import changes, ingest


def replay(admin: psycopg.Connection[Any], table_name: str, copy: sql.Identifier) -> list[dict[str, Any]]:
    """Applies the trail of one table to its copy, in id order, inside the server (the JSON
    never passes through Python numbers); returns the trail."""
    trail = [r for r in changes(admin, "id", "table", "operation", "before", "after", "context") if r["table"] == table_name]
    image = sql.SQL("jsonb_populate_record(NULL::{copy}, (SELECT c.{side} FROM bemi.changes AS c WHERE c.id = {id}))")
    names = column_list(admin, copy)
    for change in trail:
        before, after = (image.format(copy=copy, side=sql.Identifier(side), id=change["id"]) for side in ("before", "after"))
        locate = sql.SQL(
            "ctid = (SELECT r.ctid FROM {copy} AS r WHERE to_jsonb(r.*) = to_jsonb({before}) LIMIT 1)"
        ).format(copy=copy, before=before)
        statement = {
            "CREATE": sql.SQL("INSERT INTO {copy} SELECT * FROM {after}").format(copy=copy, after=after),
            "UPDATE": sql.SQL("UPDATE {copy} SET ({names}) = (SELECT * FROM {after}) WHERE {locate}").format(
                copy=copy, names=names, after=after, locate=locate),
            "DELETE": sql.SQL("DELETE FROM {copy} WHERE {locate}").format(copy=copy, locate=locate),
        }[change["operation"]]
        assert admin.execute(statement).rowcount == 1, change
    return trail


def column_list(admin: psycopg.Connection[Any], table: sql.Identifier) -> sql.Composable:
    """The table's column names, in order, quoted."""
    names = admin.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        [table.as_string(admin)],
    ).fetchall()
    return sql.SQL(", ").join(sql.Identifier(r["attname"]) for r in names)


def test_replaying_the_trail_reproduces_the_table(dsn: str, admin: psycopg.Connection[Any]) -> None:
    """One database for the test, a fresh table (and copy) per example; the model tracks the
    context each committed statement ran with (set, inherited, cleared, reset by COMMIT,
    restored by a rolled-back savepoint) and how many rows it changed."""
    admin.execute("CREATE TYPE colour AS ENUM ({})".format(", ".join("'" + x.replace("'", "''") + "'" for x in ENUM_LABELS)))
    admin.execute("SET timezone = 'UTC'")
    counter = itertools.count()

    @settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        columns, has_key = data.draw(tables())
        statements = data.draw(workloads(columns))
        n = next(counter)
        table_name, copy_name = f'Tab "{n}" [x]:y', f"copy_{n}"
        table, copy = sql.Identifier(table_name), sql.Identifier(copy_name)
        definition = sql.SQL(", ").join(
            sql.SQL("{} {}{}").format(sql.Identifier(c.name), sql.SQL(c.type),
                                      sql.SQL(" PRIMARY KEY" if has_key and i == 0 else ""))
            for i, c in enumerate(columns)
        )
        admin.execute(sql.SQL("CREATE TABLE {} ({})").format(table, definition))
        admin.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(copy, table))
        admin.execute("SELECT bemi.track(%s::regclass)", [table.as_string(admin)])

        expected_contexts: list[dict[str, Any]] = []
        with psycopg.connect(dsn) as conn:
            current: dict[str, Any] | None = None
            for key, statement in enumerate(statements, start=1):
                if statement["commit_before"]:
                    conn.commit()
                    current = None
                if statement["rolled_back"]:
                    conn.execute("SELECT 1")  # so that the block below is a savepoint
                    with conn.transaction(force_rollback=True):
                        bemi_pg.set_context(conn, statement["context"])
                        run_statement(conn, table, columns, statement, key if has_key else 0)
                    continue
                if statement["set_context"]:
                    bemi_pg.set_context(conn, statement["context"])
                    current = statement["context"]
                changed = run_statement(conn, table, columns, statement, key if has_key else 0)
                expected_contexts += [current or {}] * changed
            conn.commit()

        ingest(admin)
        trail = replay(admin, table_name, copy)
        assert [c["context"] for c in trail] == expected_contexts
        names = {c.name for c in columns}
        for change in trail:
            for side in ("before", "after"):
                assert change[side] == {} or set(change[side]) == names, (side, change)
        assert differences(admin, table, copy) == []

    check()
