"""Time travel and revert against snapshots (hypothesis).

Random tables (odd names, a mix of types, with or without a primary key, some rows from before
tracking) get random workloads over several transactions, in which rows' primary keys change
too; after each commit the test records
the server's clock and a snapshot of the table. Then, once ingested:

- ``bemi.table_at`` at every recorded moment equals the snapshot taken then;
- reverting every transaction after one of the moments, newest first, restores that
  moment's snapshot exactly.

The same trail, copied into a trail database of its own, must give bemi_pg's helpers with
``trail=`` the same tables; half of the reverts are made through it.
"""

from __future__ import annotations

import itertools
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

import bemi_pg
from bemi_pg.steps import pipe
from tests.helpers.history import moment
from tests.helpers.replay import ENUM_LABELS, differences, run_statement, tables, workloads
from tests.helpers.trail import ingest


def copy_trail(admin: psycopg.Connection[Any], trail: psycopg.Connection[Any], table_name: str) -> None:
    """Copies a table's changes, and how far the trail is stored, into the trail database."""
    span = admin.execute('SELECT min(committed_at) AS first, max(committed_at) AS last FROM bemi.changes '
                         'WHERE "table" = %s', [table_name]).fetchone()
    assert span is not None
    trail.execute("SELECT bemi.create_partitions(%s, %s)", [span["first"], span["last"]])  # type: ignore[call-overload]
    trail.execute("DELETE FROM bemi.progress")
    pipe(admin, sql.SQL('SELECT * FROM bemi.changes WHERE "table" = %s'), [table_name], trail, sql.SQL("bemi.changes"))
    pipe(admin, sql.SQL("SELECT * FROM bemi.progress"), None, trail, sql.SQL("bemi.progress"))


def as_text(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(map(repr, rows))


@pytest.mark.slow
def test_table_at_and_revert_agree_with_snapshots(dsn: str, admin: psycopg.Connection[Any], trail: str) -> None:
    trail_conn = psycopg.connect(trail, autocommit=True)
    admin.execute("CREATE TYPE colour AS ENUM ({})".format(", ".join("'" + x.replace("'", "''") + "'" for x in ENUM_LABELS)))
    counter = itertools.count()

    @settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        columns, has_key = data.draw(tables())
        statements = data.draw(workloads(columns))
        before_tracking = data.draw(st.integers(0, 3))
        # After some statements, a row's primary key changes too (keyed tables): time travel
        # and revert must follow the row to its new key.
        key_moves = data.draw(st.lists(st.booleans(), min_size=len(statements), max_size=len(statements))) if has_key else []
        n = next(counter)
        table_name = f'T "{n}" [x]'
        table = sql.Identifier(table_name)
        definition = sql.SQL(", ").join(
            sql.SQL("{} {}{}").format(sql.Identifier(c.name), sql.SQL(c.type),
                                      sql.SQL(" PRIMARY KEY" if has_key and i == 0 else ""))
            for i, c in enumerate(columns)
        )
        admin.execute(sql.SQL("CREATE TABLE {} ({})").format(table, definition))
        snapshots: list[tuple[Any, sql.Identifier]] = []

        def snapshot() -> None:
            copy = sql.Identifier(f"snap_{n}_{len(snapshots)}")
            admin.execute(sql.SQL("CREATE TABLE {} AS SELECT * FROM {}").format(copy, table))
            snapshots.append((moment(admin), copy))

        with psycopg.connect(dsn) as conn:
            key = 1000
            for statement in statements[:before_tracking]:
                key += 1
                run_statement(conn, table, columns, statement, key if has_key else 0)
            conn.commit()
            admin.execute("SELECT bemi.track(%s::regclass)", [table.as_string(admin)])
            snapshot()
            for index, statement in enumerate(statements[before_tracking:], start=before_tracking):
                key += 1
                if statement["commit_before"]:
                    conn.commit()
                    snapshot()
                if statement["rolled_back"]:
                    conn.execute("SELECT 1")
                    with conn.transaction(force_rollback=True):
                        run_statement(conn, table, columns, statement, key if has_key else 0)
                    continue
                run_statement(conn, table, columns, statement, key if has_key else 0)
                if key_moves and key_moves[index]:
                    key += 1
                    # A literal, not a parameter: column names may hold a '%'.
                    conn.execute(sql.SQL("UPDATE {} SET {} = {} WHERE ctid = (SELECT min(ctid) FROM {})").format(
                        table, sql.Identifier(columns[0].name), sql.Literal(key), table))
            conn.commit()
            snapshot()
        ingest(admin)
        copy_trail(admin, trail_conn, table_name)

        name = table.as_string(admin)
        for at, copy in snapshots:
            travelled = sql.SQL("bemi.table_at(NULL::{}, {})").format(table, sql.Literal(at))
            assert differences(admin, travelled, copy) == [], at
            assert as_text(bemi_pg.table_at(admin, name, at, trail=trail_conn)) == as_text(bemi_pg.table_at(admin, name, at))

        # Often the first moment: then every transaction since tracking began is reverted.
        at, copy = snapshots[data.draw(st.just(0) | st.integers(0, len(snapshots) - 1))]
        later = admin.execute(
            "SELECT transaction_id FROM bemi.changes WHERE schema = 'public' AND \"table\" = %s AND committed_at > %s "
            "GROUP BY transaction_id ORDER BY max(committed_at) DESC, max(id) DESC",
            [table_name, at]).fetchall()
        through_trail = data.draw(st.booleans())
        for row in later:
            if through_trail:
                bemi_pg.revert(admin, transaction_id=row["transaction_id"], trail=trail_conn)
            else:
                admin.execute("SELECT * FROM bemi.revert_transaction(%s)", [row["transaction_id"]])
        assert differences(admin, table, copy) == []

    with trail_conn:
        check()
