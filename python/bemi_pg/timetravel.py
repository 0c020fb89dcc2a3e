"""Time travel: a row or a whole table as it was at a commit time, read from the trail.

    bemi_pg.row_at(conn, "todo", 26, at)          # {"id": 26, "task": "Sleep", ...} or None
    bemi_pg.table_at(conn, "todo", at)            # [{"id": 26, ...}, ...], typed values
    bemi_pg.row_at_transaction(conn, "todo", 26, 1234)   # right after transaction 1234 committed
    bemi_pg.table_at_transaction(conn, "todo", 1234)
    bemi_pg.row_at_position(conn, "todo", 26, "0/1A2B3C")   # right after the transaction of the change there
    bemi_pg.table_at_position(conn, "todo", "0/1A2B3C")
    bemi_pg.row_versions(conn, "todo", 26)        # [{"valid_from", "valid_to", "image", ...}, ...]

Thin wrappers over ``bemi.row_at`` and ``bemi.table_at`` (docs/time-travel.md): a moment
before tracking began, or past what has been ingested, raises ``psycopg.errors.InvalidParameterValue``.
With ``trail=``, a connection to the database that holds the trail (bemi-pg worker
--trail-dsn), the trail is read there and the table in ``conn`` (bemi_pg.trail_database).
Each is written once, as steps (bemi_pg.steps), for sync and async connections alike.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date, datetime, time
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row, tuple_row

from bemi_pg import trail_database
from bemi_pg.steps import Query, Steps, run, run_async

Table = str | tuple[str, str]
"""A table: a name as SQL reads it ("todo", "public.todo", '"User"'), or (schema, table)."""

Key = Any
"""A primary key: its value (str, int, Decimal, UUID, date, datetime, ...), or a sequence (tuple)
of the values of a composite key in key order. The server reads it with the key columns' types
(bemi.trail_key), so any spelling its types accept names the same row."""

Moment = datetime | str


def relation(table: Table) -> sql.Composable:
    """The table as a regclass literal the server resolves (and quotes) itself."""
    name = sql.Identifier(*table).as_string(None) if isinstance(table, tuple) else table
    return sql.SQL("{}::regclass").format(sql.Literal(name))


def key_value(value: Any) -> Any:
    """One key value as JSON can carry it: numbers and strings as they are, anything else
    (Decimal, UUID, dates, times) as its text, which the column's type reads back exactly."""
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def key_text(primary_key: Key) -> str:
    """The key as bemi.row_at takes it: one value as text, a composite key as a JSON array."""
    if isinstance(primary_key, Sequence) and not isinstance(primary_key, (str, bytes)):
        return json.dumps([key_value(v) for v in primary_key])
    value = key_value(primary_key)
    return value if isinstance(value, str) else json.dumps(value)


def key_sql(primary_key: Key) -> tuple[sql.Composable, Any]:
    """The key as a text parameter of bemi.row_at (bemi.trail_key reads it with the key's types)."""
    return sql.SQL("%s::text"), key_text(primary_key)


def row_steps(table: Table, primary_key: Key, at: Moment, trail: bool) -> Steps[dict[str, Any] | None]:
    """bemi.row_at, or (trail) its steps on a trail in a database of its own."""
    key, value = key_sql(primary_key)
    if trail:
        found: dict[str, Any] | None = yield from trail_database.row_steps(relation(table), key, value, at)
        return found
    rows = yield Query(sql.SQL("SELECT bemi.row_at({}, {}, %s::timestamptz)").format(relation(table), key), [value, at])
    return rows[0][0] if rows else None


ROW_TYPE = "SELECT {}::text AS name"


def table_steps(table: Table, at: Moment, trail: bool) -> Steps[list[dict[str, Any]]]:
    """bemi.table_at, or (trail) its steps on a trail in a database of its own."""
    if trail:
        return (yield from trail_database.table_steps(relation(table), at, dict_row))
    (name,), = yield Query(sql.SQL(ROW_TYPE).format(relation(table)), None)
    rows: list[dict[str, Any]] = yield Query(
        sql.SQL("SELECT * FROM bemi.table_at(NULL::{}, %s::timestamptz)").format(sql.SQL(name)), [at], rows=dict_row)
    return rows


def row_at(conn: psycopg.Connection[Any], table: Table, primary_key: Key, at: Moment, *,
           trail: psycopg.Connection[Any] | None = None) -> dict[str, Any] | None:
    """The row as it was after every transaction committed at or before ``at`` (JSON values,
    like ``bemi.changes.after``), or None when it did not exist then."""
    return run(row_steps(table, primary_key, at, trail is not None), conn, trail)


async def row_at_async(
    conn: psycopg.AsyncConnection[Any], table: Table, primary_key: Key, at: Moment, *,
    trail: psycopg.AsyncConnection[Any] | None = None,
) -> dict[str, Any] | None:
    """``row_at`` for an ``AsyncConnection``."""
    return await run_async(row_steps(table, primary_key, at, trail is not None), conn, trail)


def table_at(conn: psycopg.Connection[Any], table: Table, at: Moment, *,
             trail: psycopg.Connection[Any] | None = None) -> list[dict[str, Any]]:
    """Every row of the table as of ``at``, as dicts of typed values."""
    return run(table_steps(table, at, trail is not None), conn, trail)


async def table_at_async(conn: psycopg.AsyncConnection[Any], table: Table, at: Moment, *,
                         trail: psycopg.AsyncConnection[Any] | None = None) -> list[dict[str, Any]]:
    """``table_at`` for an ``AsyncConnection``."""
    return await run_async(table_steps(table, at, trail is not None), conn, trail)


# Time travel to the moment right after a transaction committed (by its transaction id), or
# right after the transaction of the change at a WAL position (bemi.changes.position): the SQL
# type each takes its moment as.
BY = {"transaction": "bigint", "position": "pg_lsn"}


def row_by_steps(table: Table, primary_key: Key, by: str, moment: int | str) -> Steps[dict[str, Any] | None]:
    """bemi.row_at_transaction or bemi.row_at_position (by)."""
    key, value = key_sql(primary_key)
    (row,), = yield Query(sql.SQL("SELECT bemi.{}({}, {}, %s::{})").format(
        sql.Identifier(f"row_at_{by}"), relation(table), key, sql.SQL(BY[by])), [value, moment])
    return row  # type: ignore[no-any-return]


def table_by_steps(table: Table, by: str, moment: int | str) -> Steps[list[dict[str, Any]]]:
    """bemi.table_at_transaction or bemi.table_at_position (by)."""
    (name,), = yield Query(sql.SQL(ROW_TYPE).format(relation(table)), None)
    rows: list[dict[str, Any]] = yield Query(sql.SQL("SELECT * FROM bemi.{}(NULL::{}, %s::{})").format(
        sql.Identifier(f"table_at_{by}"), sql.SQL(name), sql.SQL(BY[by])), [moment], rows=dict_row)
    return rows


def row_at_transaction(conn: psycopg.Connection[Any], table: Table, primary_key: Key, transaction_id: int) -> dict[str, Any] | None:
    """The row as it was right after a transaction (bemi.changes.transaction_id) committed:
    exact where several transactions share a commit time (bemi.row_at_transaction)."""
    return run(row_by_steps(table, primary_key, "transaction", transaction_id), conn)


async def row_at_transaction_async(conn: psycopg.AsyncConnection[Any], table: Table, primary_key: Key,
                                   transaction_id: int) -> dict[str, Any] | None:
    """``row_at_transaction`` for an ``AsyncConnection``."""
    return await run_async(row_by_steps(table, primary_key, "transaction", transaction_id), conn)


def table_at_transaction(conn: psycopg.Connection[Any], table: Table, transaction_id: int) -> list[dict[str, Any]]:
    """Every row of the table as it was right after a transaction committed, as dicts of typed values."""
    return run(table_by_steps(table, "transaction", transaction_id), conn)


async def table_at_transaction_async(conn: psycopg.AsyncConnection[Any], table: Table, transaction_id: int) -> list[dict[str, Any]]:
    """``table_at_transaction`` for an ``AsyncConnection``."""
    return await run_async(table_by_steps(table, "transaction", transaction_id), conn)


def row_at_position(conn: psycopg.Connection[Any], table: Table, primary_key: Key, position: str) -> dict[str, Any] | None:
    """The row as it was right after the transaction of the change at a WAL position
    (bemi.changes.position, e.g. "0/1A2B3C") committed (bemi.row_at_position)."""
    return run(row_by_steps(table, primary_key, "position", position), conn)


async def row_at_position_async(conn: psycopg.AsyncConnection[Any], table: Table, primary_key: Key,
                                position: str) -> dict[str, Any] | None:
    """``row_at_position`` for an ``AsyncConnection``."""
    return await run_async(row_by_steps(table, primary_key, "position", position), conn)


def table_at_position(conn: psycopg.Connection[Any], table: Table, position: str) -> list[dict[str, Any]]:
    """Every row of the table as it was right after the transaction of the change at a WAL
    position committed, as dicts of typed values (bemi.table_at_position)."""
    return run(table_by_steps(table, "position", position), conn)


async def table_at_position_async(conn: psycopg.AsyncConnection[Any], table: Table, position: str) -> list[dict[str, Any]]:
    """``table_at_position`` for an ``AsyncConnection``."""
    return await run_async(table_by_steps(table, "position", position), conn)


# A row's versions (bemi.row_versions) with each image as a row of the table's type, in order:
# for the framework helpers, which make instances of the rows. {key} is the key's placeholder;
# the versions' own columns carry a "bemi_" prefix, to stay apart from the table's.
VERSIONS_AS_ROWS = (
    "SELECT v.valid_from AS bemi_valid_from, v.valid_to AS bemi_valid_to, v.change_id AS bemi_change_id, "
    "v.transaction_id AS bemi_transaction_id, v.primary_key AS bemi_primary_key, r.* "
    "FROM bemi.row_versions({relation}, {key}) WITH ORDINALITY AS v(valid_from, valid_to, change_id, transaction_id, "
    "primary_key, image, n), jsonb_populate_record(NULL::{table}, bemi.known_values(v.image)) AS r ORDER BY v.n")
VERSION_COLUMNS = ("valid_from", "valid_to", "change_id", "transaction_id", "primary_key")


def version_of(row: Any, instance: Any) -> dict[str, Any]:
    """One version for a framework helper: valid_from, valid_to, change_id, transaction_id and
    primary_key as bemi.row_versions gives them (row: by the names of VERSIONS_AS_ROWS), and the
    row as an instance of the model."""
    return {**{name: row[f"bemi_{name}"] for name in VERSION_COLUMNS}, "instance": instance}


def row_versions(conn: psycopg.Connection[Any], table: Table, primary_key: Key) -> list[dict[str, Any]]:
    """Every version of the row, oldest first, following its key moves (bemi.row_versions):
    dicts with valid_from, valid_to, change_id, transaction_id, primary_key and image."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql.SQL("SELECT * FROM bemi.row_versions({}, %s::text)").format(relation(table)),
                           [key_text(primary_key)]).fetchall()
