"""Time travel and revert where the trail is kept in a database of its own (bemi-pg worker
--trail-dsn, docs/trail-database.md): the parts of bemi.row_at, table_at and revert that read
the trail run on the trail's connection, the parts that read and write the tables on the
source's, and their answers pass between them.

    bemi_pg.row_at(conn, "todo", 26, at, trail=trail_conn)
    bemi_pg.table_at(conn, "todo", at, trail=trail_conn)
    bemi_pg.revert(conn, transaction_id=1234, trail=trail_conn)

Each is written as steps (bemi_pg.steps), some for the trail's connection. The trail's rows
that table_from and revert_from read are copied (binary COPY, streamed) into a temporary
table of the source's transaction (ROWS).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.rows import RowFactory

from bemi_pg.steps import Copy, Query, Steps

# The columns of bemi.changes that table_from and revert_from read, and their types.
COLUMNS = {"id": "bigint", "committed_at": "timestamptz", "schema": "text", "table": "text", "operation": "text",
           "primary_key": "text", "previous_key": "text", "before": "jsonb", "after": "jsonb", "problem": "text",
           "partial": "boolean"}
ROWS = "pg_temp.bemi_trail_rows"
COLUMN_LIST = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
CREATE_ROWS = sql.SQL("CREATE TEMPORARY TABLE bemi_trail_rows ({}) ON COMMIT DROP").format(
    sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind)) for name, kind in COLUMNS.items()))
DROP_ROWS = sql.SQL("DROP TABLE " + ROWS)
ROWS_COLUMNS = sql.SQL("{} ({})").format(sql.SQL(ROWS), COLUMN_LIST)

# Where the table is: what the trail needs to know of it (bemi.history_of, plus the source
# database's name: a trail database may hold the trails of several), the moment as the source
# reads it (so that "now" is one time), and the table's row type. JSON crosses as text, read
# by json here: the connections may load jsonb their own way (Django's loads it as text).
HISTORY = """SELECT (bemi.history_of(r.relation, m.at) || jsonb_build_object('database', current_database()))::text,
  m.at, r.relation::text FROM (SELECT {} AS relation) AS r, (SELECT %s::timestamptz AS at) AS m"""


def history(relation: sql.Composable, at: datetime | str) -> Steps[tuple[str, datetime, str]]:
    """The table's history_of (with the source database), the moment, and the row type's name."""
    (found, moment, row_type), = yield Query(sql.SQL(HISTORY).format(relation), [at])
    return found, moment, row_type


def row_steps(relation: sql.Composable, key: sql.Composable, value: Any, at: datetime | str) -> Steps[Any]:
    """bemi.row_at: the key read with the table's types and row_from on the source,
    row_history on the trail."""
    found, moment, _ = yield from history(relation, at)
    (canonical, form), = yield Query(sql.SQL("SELECT bemi.trail_key({0}, {1}), bemi.key_form({0})::text").format(relation, key),
                                     [value])
    (event,), = yield Query(sql.SQL("SELECT bemi.row_history(%s::jsonb || %s::jsonb, %s, %s)::text"),
                            [found, form, canonical, moment], on_trail=True)
    (row,), = yield Query(sql.SQL("SELECT bemi.row_from({}, %s, %s, %s::jsonb)::text").format(relation),
                          [canonical, moment, event])
    return None if row is None else json.loads(row)


def copy_table_history(relation: sql.Composable, at: datetime | str) -> Steps[tuple[datetime, str]]:
    """table_history's rows copied from the trail into ROWS, in the source's transaction, for
    table_from (TABLE_FROM); returns the moment and the table's row type."""
    found, moment, row_type = yield from history(relation, at)
    # table_from's check for writes not in the trail, made before ROWS is created: it reads the
    # slot up to the WAL flushed, and the catalog WAL of ROWS, this transaction's and flushed at
    # its commit, would keep a read past it waiting (seconds on an idle server). The answer is
    # kept for the rest of the statement's snapshot, so table_from does not read again.
    yield Query(sql.SQL("SELECT bemi.check_pending({})").format(relation), [])
    yield Query(CREATE_ROWS, [])
    yield Copy(sql.SQL("SELECT {} FROM bemi.table_history(%s::jsonb, %s)").format(COLUMN_LIST), [found, moment],
               ROWS_COLUMNS)
    return moment, row_type


# The table as of the moment, once copy_table_history has run: formatted with the row type,
# and given the moment. Then DROP_ROWS.
TABLE_FROM = "SELECT * FROM bemi.table_from(NULL::{}, %s, '" + ROWS + "')"


def table_steps(relation: sql.Composable, at: datetime | str, rows: RowFactory[Any]) -> Steps[list[Any]]:
    """bemi.table_at: table_history's rows copied from the trail, table_from on the source."""
    moment, row_type = yield from copy_table_history(relation, at)
    table: list[Any] = yield Query(sql.SQL(TABLE_FROM.format(row_type)), [moment], rows=rows)
    yield Query(DROP_ROWS, [])
    return table


def revert_steps(chosen: Any, on_conflict: str, rows: RowFactory[Any]) -> Steps[list[Any]]:
    """bemi.revert (and revert_transaction(s), revert_context): the changes chosen (a
    bemi_pg.revert.Choice) on the trail, of the source database only, copied to the source,
    reverted there by revert_from."""
    (database, since), = yield Query(sql.SQL("SELECT current_database(), %s::timestamptz"), [chosen.since])
    change_ids = chosen.change_ids
    if change_ids is None:
        if chosen.transaction_id is not None:
            query = Query(sql.SQL("SELECT bemi.transaction_changes(%s, %s)"), [chosen.transaction_id, database], on_trail=True)
        elif chosen.transaction_range is not None:
            query = Query(sql.SQL("SELECT bemi.transactions_changes(%s, %s, %s)"), [*chosen.transaction_range, database],
                          on_trail=True)
        else:
            query = Query(sql.SQL("SELECT bemi.context_changes(%s::jsonb, %s, %s, %s)"),
                          [json.dumps(chosen.context), since, database, chosen.match_all], on_trail=True)
        (change_ids,), = yield query
    # None of a transaction the trail holds only in part (bemi.check_stored raises ZB002).
    yield Query(sql.SQL("SELECT bemi.check_stored('bemi.changes', %s::bigint[])"), [change_ids], on_trail=True)
    yield Query(CREATE_ROWS, [])
    yield Copy(sql.SQL("SELECT {} FROM bemi.changes WHERE id = ANY (%s::bigint[]) AND database = %s").format(COLUMN_LIST),
               [change_ids, database], ROWS_COLUMNS)
    done: list[Any] = yield Query(sql.SQL("SELECT * FROM bemi.revert_from({}, %s::bigint[], %s)").format(sql.Literal(ROWS)),
                                  [change_ids, on_conflict], rows=rows)
    yield Query(DROP_ROWS, [])
    return done
