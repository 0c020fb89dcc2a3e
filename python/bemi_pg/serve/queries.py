"""The SQL of the pages: a few queries each, on the trail's indexes (bemi.index_partition):
newest first by id (the primary key of each partition), one row's history by
(schema, table, primary_key) and previous_key, a transaction by transaction_id, a context by
the GIN index (@>). Names from a request are bound parameters or quoted identifiers
(psycopg.sql), never text spliced into SQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from bemi_pg.serve.auth import Connections, Viewer

PAGE = 50
GROUP_PAGE = 500
TAIL_BATCH = 100
STATEMENT_TIMEOUT = "30s"
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "TRUNCATE")
MOVES = 20  # key moves a timeline follows at most

Conn = psycopg.Connection[dict[str, Any]]

CHANGE = sql.SQL(
    'c.id, c.committed_at, c.schema, c."table", c.primary_key, c.previous_key, c.operation, c.context, '
    "c.transaction_id, c.problem, c.partial, bemi.diff(c.before, c.after) AS diff")
FULL_CHANGE = sql.SQL("{}, c.before, c.after").format(CHANGE)


@contextmanager
def transaction(connections: Connections, viewer: Viewer, *, read_only: bool = True, rolled_back: bool = False,
                time_zone: str | None = None) -> Iterator[Conn]:
    """A transaction on one of the viewer's connections, with the viewer's role (token
    viewers: SET LOCAL ROLE), read-only unless asked, a statement timeout and the viewer's
    time zone (times typed into the filters are read in it); rolled_back: always rolled back."""
    with connections.borrow() as conn, conn.transaction(force_rollback=rolled_back):
        conn.execute(
            "SELECT pg_catalog.set_config('transaction_read_only', %s, true), "
            "pg_catalog.set_config('statement_timeout', %s, true), "
            "pg_catalog.set_config('TimeZone', coalesce(%s, 'UTC'), true)",
            ["on" if read_only else "off", STATEMENT_TIMEOUT, time_zone or None])
        if viewer.role:
            conn.execute("SELECT pg_catalog.set_config('role', %s, true)", [viewer.role])
        yield conn


def context_candidates(key: str, value: str) -> list[Jsonb]:
    """{key: value} as the context may hold it: the text, and the JSON value it reads as (7,
    true, null, an object) when it is one."""
    found = [Jsonb({key: value})]
    try:
        parsed = json.loads(value)
    except ValueError:
        return found
    if not isinstance(parsed, str):
        found.append(Jsonb({key: parsed}))
    return found


def context_condition(pairs: Sequence[tuple[str, str]]) -> tuple[sql.Composable, list[Any]]:
    """The changes whose context holds every key/value pair (each through the GIN index)."""
    parts: list[sql.Composable] = []
    params: list[Any] = []
    for key, value in pairs:
        candidates = context_candidates(key, value)
        parts.append(sql.SQL("({})").format(sql.SQL(" OR ").join([sql.SQL("c.context @> %s")] * len(candidates))))
        params.extend(candidates)
    return sql.SQL(" AND ").join(parts), params


@dataclass
class Filters:
    """The filters of the recent changes page, from its URL."""

    schema: str = ""
    table: str = ""
    key: str = ""
    operation: str = ""
    since: str = ""
    until: str = ""
    transaction: int | None = None
    context: list[tuple[str, str]] = field(default_factory=list)

    def where(self) -> tuple[list[sql.Composable], list[Any]]:
        conditions: list[sql.Composable] = []
        params: list[Any] = []

        def add(condition: str, *values: Any) -> None:
            conditions.append(sql.SQL(condition))
            params.extend(values)

        if self.schema:
            add("c.schema = %s", self.schema)
        if self.table:
            add('c."table" = %s', self.table)
        if self.key:
            add("c.primary_key = %s", self.key)
        if self.operation:
            add("c.operation = %s", self.operation)
        if self.since:
            add("c.committed_at >= %s::timestamptz", self.since)
        if self.until:
            add("c.committed_at < %s::timestamptz", self.until)
        if self.transaction is not None:
            add("c.transaction_id = %s", self.transaction)
        if self.context:
            condition, values = context_condition(self.context)
            conditions.append(condition)
            params.extend(values)
        return conditions, params


@dataclass
class Page:
    """Changes newest first, with the cursors of the pages next to it (None: no such page)."""

    changes: list[dict[str, Any]]
    older: int | None
    newer: int | None


def recent(conn: Conn, filters: Filters, before: int | None = None, after: int | None = None) -> Page:
    """One page of changes, newest first: those older than before, or newer than after."""
    limit = PAGE
    conditions, params = filters.where()
    if before is not None:
        conditions.append(sql.SQL("c.id < %s"))
        params.append(before)
    if after is not None:
        conditions.append(sql.SQL("c.id > %s"))
        params.append(after)
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
    order = sql.SQL("ASC" if after is not None else "DESC")
    rows = conn.execute(sql.SQL("SELECT {} FROM bemi.changes AS c{} ORDER BY c.id {} LIMIT %s").format(
        CHANGE, where, order), [*params, limit + 1]).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    if after is not None:
        rows.reverse()
    older = rows[-1]["id"] if rows and (more or after is not None) else None
    newer = rows[0]["id"] if rows and (before is not None or (after is not None and more)) else None
    return Page(rows, older, newer)


def tail(conn: Conn, after: int) -> list[dict[str, Any]]:
    """The changes stored since id after, oldest first."""
    return conn.execute(sql.SQL("SELECT {} FROM bemi.changes AS c WHERE c.id > %s ORDER BY c.id LIMIT %s").format(CHANGE),
                        [after, TAIL_BATCH]).fetchall()


def newest_id(conn: Conn) -> int:
    row = conn.execute("SELECT c.id FROM bemi.changes AS c ORDER BY c.id DESC LIMIT 1").fetchone()
    return int(row["id"]) if row else 0


def change(conn: Conn, change_id: int) -> dict[str, Any] | None:
    return conn.execute(sql.SQL("SELECT {} FROM bemi.changes AS c WHERE c.id = %s").format(FULL_CHANGE),
                        [change_id]).fetchone()


def timeline(conn: Conn, schema: str, table: str, key: str) -> list[dict[str, Any]]:
    """Every version of the row with this key, oldest first, following its key when an UPDATE
    moved it: back to the key it came from (the changes before the move), on to the key it went
    to (the changes after). At most MOVES moves are followed."""
    found: dict[int, dict[str, Any]] = {}
    todo: list[tuple[str, tuple[datetime, int] | None, tuple[datetime, int] | None]] = [(key, None, None)]
    done: set[tuple[str, Any, Any]] = set()
    while todo and len(done) <= MOVES:
        segment = todo.pop()
        if segment in done:
            continue
        done.add(segment)
        at_key, since, until = segment
        conditions = [sql.SQL('c.schema = %s AND c."table" = %s AND (c.primary_key = %s OR c.previous_key = %s)')]
        params: list[Any] = [schema, table, at_key, at_key]
        if since is not None:
            conditions.append(sql.SQL("(c.committed_at, c.id) > (%s, %s)"))
            params.extend(since)
        if until is not None:
            conditions.append(sql.SQL("(c.committed_at, c.id) < (%s, %s)"))
            params.extend(until)
        rows = conn.execute(sql.SQL("SELECT {} FROM bemi.changes AS c WHERE {} ORDER BY c.committed_at, c.id").format(
            FULL_CHANGE, sql.SQL(" AND ").join(conditions)), params).fetchall()
        for row in rows:
            found[row["id"]] = row
            moment = (row["committed_at"], row["id"])
            if row["primary_key"] == at_key and row["previous_key"] not in (None, at_key):
                todo.append((row["previous_key"], since, moment))  # moved here from previous_key
            elif row["previous_key"] == at_key and row["primary_key"] != at_key:
                todo.append((row["primary_key"], moment, until))  # moved away to primary_key
    return sorted(found.values(), key=lambda r: (r["committed_at"], r["id"]))


def relation_name(schema: str, table: str) -> str:
    """The table's name as SQL reads it (quoted identifiers), for a regclass parameter."""
    return sql.Identifier(schema, table).as_string(None)


def row_at(conn: Conn, schema: str, table: str, key: str, at: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT bemi.row_at(%s::regclass, %s, %s::timestamptz) AS image",
                       [relation_name(schema, table), key, at]).fetchone()
    return row["image"] if row else None


def moment(conn: Conn, at: str | None) -> datetime:
    """A moment typed into a page, read in the viewer's time zone; when empty, the newest the
    trail answers for: every commit up to it is stored (bemi.ingested_until), or now."""
    row = conn.execute("SELECT coalesce(%s::timestamptz, least(pg_catalog.now(), bemi.ingested_until()), pg_catalog.now()) AS at",
                       [at or None]).fetchone()
    assert row is not None
    return row["at"]  # type: ignore[no-any-return]


@dataclass
class Group:
    """Changes of one table in a transaction or a request."""

    schema: str
    table: str
    changes: list[dict[str, Any]]


def grouped(rows: list[dict[str, Any]]) -> list[Group]:
    groups: dict[tuple[str, str], Group] = {}
    for row in rows:
        name = (row["schema"], row["table"])
        groups.setdefault(name, Group(*name, [])).changes.append(row)
    return list(groups.values())


def group_page(conn: Conn, condition: sql.Composable, params: list[Any], after: int | None) -> tuple[list[dict[str, Any]], int | None]:
    """Changes matching a condition in commit order, a page after id after; the next page's cursor."""
    rows = conn.execute(sql.SQL("SELECT {} FROM bemi.changes AS c WHERE {} AND c.id > %s ORDER BY c.id LIMIT %s").format(
        CHANGE, condition), [*params, after or 0, GROUP_PAGE + 1]).fetchall()
    more = len(rows) > GROUP_PAGE
    rows = rows[:GROUP_PAGE]
    return rows, rows[-1]["id"] if more else None


def transaction_changes(conn: Conn, xid: int, after: int | None) -> tuple[list[dict[str, Any]], int | None]:
    return group_page(conn, sql.SQL("c.transaction_id = %s"), [xid], after)


def context_changes(conn: Conn, pairs: list[tuple[str, str]], after: int | None) -> tuple[list[dict[str, Any]], int | None]:
    condition, params = context_condition(pairs)
    return group_page(conn, condition, params, after)


def tracked(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute('SELECT t.schema, t."table" FROM bemi.tracked AS t ORDER BY 1, 2').fetchall()


@dataclass
class TableAt:
    columns: list[str]
    keys: list[str]
    rows: list[dict[str, Any]]
    next_key: dict[str, Any] | None


def table_at(conn: Conn, schema: str, table: str, at: datetime, after: dict[str, Any] | None) -> TableAt:
    """A page of the table as it was at a moment, in primary key order, after the row with the
    key values of after."""
    name = sql.Identifier(schema, table)
    relation = relation_name(schema, table)
    columns = [r["name"] for r in conn.execute(
        "SELECT a.attname::text AS name FROM pg_catalog.pg_attribute AS a WHERE a.attrelid = %s::regclass "
        "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum", [relation])]
    keys = [r["name"] for r in conn.execute(
        "SELECT a.attname::text AS name FROM pg_catalog.pg_index AS i "
        "JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) "
        "WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY pg_catalog.array_position(i.indkey, a.attnum)",
        [relation])]
    if keys:  # one page of the key's order, read along its index (bemi.table_page_at)
        query = sql.SQL("SELECT pg_catalog.to_jsonb(t.*) AS image FROM bemi.table_page_at(NULL::{}, %s, %s, %s) AS t").format(name)
        params: list[Any] = [at, Jsonb(after) if after else None, PAGE + 1]
    else:
        query = sql.SQL("SELECT pg_catalog.to_jsonb(t.*) AS image FROM bemi.table_at(NULL::{}, %s) AS t LIMIT %s").format(name)
        params = [at, PAGE + 1]
    rows = [r["image"] for r in conn.execute(query, params)]
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    next_key = {k: rows[-1][k] for k in keys} if more and keys else None
    return TableAt(columns, keys, rows, next_key)


# Revert: which changes, the plan (a preview, rolled back), and the revert itself.

@dataclass(frozen=True)
class Selection:
    """The changes a revert undoes: some ids, one transaction or a context's changes, up to
    the newest id the preview showed (through), so what is confirmed is what was previewed."""

    change_ids: tuple[int, ...] = ()
    transaction: int | None = None
    context: tuple[tuple[str, str], ...] = ()
    through: int | None = None


def selected_ids(conn: Conn, selection: Selection) -> list[int]:
    through = selection.through if selection.through is not None else 2 ** 63 - 1
    if selection.change_ids:
        return sorted(i for i in selection.change_ids if i <= through)
    if selection.transaction is not None:
        row = conn.execute("SELECT ARRAY(SELECT i FROM pg_catalog.unnest(bemi.transaction_changes(%s)) AS i "
                           "WHERE i <= %s ORDER BY i) AS ids", [selection.transaction, through]).fetchone()
        return list(row["ids"]) if row else []
    condition, params = context_condition(list(selection.context))
    row = conn.execute(sql.SQL("SELECT ARRAY(SELECT c.id FROM bemi.changes AS c WHERE {} AND c.id <= %s "
                               "ORDER BY c.id) AS ids").format(condition), [*params, through]).fetchone()
    return list(row["ids"]) if row else []


@dataclass
class Planned:
    """One row of a revert preview: what the revert would do, the values it would write and, for
    a row changed since the changes (a conflict), what is there now."""

    change_id: int
    schema: str
    table: str
    primary_key: str | None
    action: str
    conflict: bool
    values: dict[str, Any] | None
    now: dict[str, Any] | None
    columns: list[str] | None


def preview(conn: Conn, ids: list[int]) -> list[Planned]:
    """The plan of reverting the changes, run (with its row locks) in a savepoint rolled back:
    each row's verdict when conflicts are skipped, and the values it gets when they are
    overwritten."""
    plans = {}
    for on_conflict in ("skip", "overwrite"):
        with conn.transaction(force_rollback=True):
            plans[on_conflict] = conn.execute("SELECT p.steps, p.results FROM bemi.revert_plan('bemi.changes', %s, %s) AS p",
                                              [ids, on_conflict]).fetchone()
    assert plans["skip"] is not None and plans["overwrite"] is not None
    steps = {step["last_id"]: step for step in plans["overwrite"]["steps"]}
    planned = []
    for change_id, schema, table, key, verdict in plans["skip"]["results"]:
        step = steps.get(change_id)
        overwrite = next((r[4] for r in plans["overwrite"]["results"] if r[0] == change_id), verdict)
        planned.append(Planned(
            change_id=change_id, schema=schema, table=table, primary_key=key,
            action=overwrite if verdict == "skipped" else verdict, conflict=verdict == "skipped",
            values=step["target"] if step else None, now=step.get("at") if step else None,
            columns=step.get("columns") if step else None))
    return planned


def revert(conn: Conn, ids: list[int], on_conflict: str, context: dict[str, Any]) -> list[dict[str, Any]]:
    """Reverts the changes in the caller's transaction, with a context naming who did it."""
    conn.execute("SELECT bemi.set_context(%s)", [Jsonb(context)])
    return conn.execute("SELECT * FROM bemi.revert(%s::bigint[], %s)", [ids, on_conflict]).fetchall()
