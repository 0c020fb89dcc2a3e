"""Time travel: a row or a whole table as it was at a commit time, read from the trail.

    bemi_pg.row_at(conn, "todo", 26, at)          # {"id": 26, "task": "Sleep", ...} or None
    bemi_pg.table_at(conn, "todo", at)            # [{"id": 26, ...}, ...], typed values

Thin wrappers over ``bemi.row_at`` and ``bemi.table_at`` (docs/time-travel.md): a moment
before tracking began, or past what has been ingested, raises ``psycopg.errors.InvalidParameterValue``.
With ``trail=``, a connection to the database that holds the trail (bemi-pg worker
--trail-dsn), the trail is read there and the table in ``conn`` (bemi_pg.trail).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import Jsonb

from bemi_pg.trail import Steps, row_steps, run, run_async, table_steps

Table = str | tuple[str, str]
"""A table: a name as SQL reads it ("todo", "public.todo", '"User"'), or (schema, table)."""

Key = str | int | Sequence[Any]
"""A primary key: its value (text as in bemi.changes.primary_key), or the values of a composite key."""

Moment = datetime | str


def relation(table: Table) -> sql.Composable:
    """The table as a regclass literal the server resolves (and quotes) itself."""
    name = sql.Identifier(*table).as_string(None) if isinstance(table, tuple) else table
    return sql.SQL("{}::regclass").format(sql.Literal(name))


def key_sql(primary_key: Key) -> tuple[sql.Composable, Any]:
    """The key in the text form of bemi.changes.primary_key: composite keys as the server's JSON text."""
    if isinstance(primary_key, (str, int)):
        return sql.SQL("%s::text"), str(primary_key)
    return sql.SQL("(%s::jsonb)::text"), Jsonb(list(primary_key))


def row_query(table: Table, primary_key: Key, at: Moment) -> tuple[sql.SQL | sql.Composed, list[Any]]:
    key, value = key_sql(primary_key)
    return sql.SQL("SELECT bemi.row_at({}, {}, %s::timestamptz)").format(relation(table), key), [value, at]


def row_trail_steps(table: Table, primary_key: Key, at: Moment) -> Steps[dict[str, Any] | None]:
    key, value = key_sql(primary_key)
    return row_steps(relation(table), key, value, at)


def table_query(row_type: str, at: Moment) -> tuple[sql.SQL | sql.Composed, list[Any]]:
    return sql.SQL("SELECT * FROM bemi.table_at(NULL::{}, %s::timestamptz)").format(sql.SQL(row_type)), [at]


ROW_TYPE = "SELECT {}::text AS name"


def row_at(conn: psycopg.Connection[Any], table: Table, primary_key: Key, at: Moment, *,
           trail: psycopg.Connection[Any] | None = None) -> dict[str, Any] | None:
    """The row as it was after every transaction committed at or before ``at`` (JSON values,
    like ``bemi.changes.after``), or None when it did not exist then."""
    if trail is not None:
        return run(row_trail_steps(table, primary_key, at), conn, trail)
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(*row_query(table, primary_key, at)).fetchone()
    return row[0] if row else None


async def row_at_async(
    conn: psycopg.AsyncConnection[Any], table: Table, primary_key: Key, at: Moment, *,
    trail: psycopg.AsyncConnection[Any] | None = None,
) -> dict[str, Any] | None:
    """``row_at`` for an ``AsyncConnection``."""
    if trail is not None:
        return await run_async(row_trail_steps(table, primary_key, at), conn, trail)
    async with conn.cursor(row_factory=tuple_row) as cur:
        row = await (await cur.execute(*row_query(table, primary_key, at))).fetchone()
    return row[0] if row else None


def table_at(conn: psycopg.Connection[Any], table: Table, at: Moment, *,
             trail: psycopg.Connection[Any] | None = None) -> list[dict[str, Any]]:
    """Every row of the table as of ``at``, as dicts of typed values."""
    if trail is not None:
        return run(table_steps(relation(table), at, dict_row), conn, trail)
    with conn.cursor(row_factory=dict_row) as cur:
        name = cur.execute(sql.SQL(ROW_TYPE).format(relation(table))).fetchone()
        assert name is not None
        return cur.execute(*table_query(name["name"], at)).fetchall()


async def table_at_async(conn: psycopg.AsyncConnection[Any], table: Table, at: Moment, *,
                         trail: psycopg.AsyncConnection[Any] | None = None) -> list[dict[str, Any]]:
    """``table_at`` for an ``AsyncConnection``."""
    if trail is not None:
        return await run_async(table_steps(relation(table), at, dict_row), conn, trail)
    async with conn.cursor(row_factory=dict_row) as cur:
        name = await (await cur.execute(sql.SQL(ROW_TYPE).format(relation(table)))).fetchone()
        assert name is not None
        return await (await cur.execute(*table_query(name["name"], at))).fetchall()
