"""The two readers of the slot give the same trail: random tables, column types and
workloads; the trail from the streaming worker and the trail from bemi.ingest() over the
very same WAL are identical, and both equal to_jsonb of each row as it was committed.

Both read identical WAL: a copy of the slot is made before the workload; the worker reads
the slot, then the slot is replaced by the copy and bemi.ingest() reads that."""

from __future__ import annotations

import datetime
import decimal
import itertools
import random
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.types.json import Jsonb

import bemi_pg
from bemi_pg.ingest import worker
from tests.helpers.trail import HOSTILE_SETTINGS, database_settings, ingest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "stress"))
from scenarios import wait_for  # noqa: E402

CHARACTERS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")  # what text can hold
TEXT = st.text(CHARACTERS, max_size=20)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**9, 10**9) | TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6)

# Column types and the values a workload writes into them (None is NULL).
TYPES: dict[str, st.SearchStrategy[Any]] = {
    # Noise that compresses too little to stay in the row: stored out of line (TOAST), so an
    # UPDATE that leaves it alone sends it as "unchanged".
    "text ": st.binary(min_size=3000, max_size=4000).map(bytes.hex),
    "integer": st.integers(-2**31, 2**31 - 1),
    "bigint": st.integers(-2**63, 2**63 - 1),
    "numeric": st.decimals(min_value=-10**12, max_value=10**12, places=4, allow_nan=False),
    "double precision": st.floats(allow_nan=False, allow_infinity=False),
    "boolean": st.booleans(),
    "text": TEXT,
    "character varying(12)": st.text(CHARACTERS, max_size=12),
    "timestamp with time zone": st.datetimes(datetime.datetime(1900, 1, 1), datetime.datetime(2100, 1, 1),
                                             timezones=st.just(datetime.timezone.utc)),
    "date": st.dates(datetime.date(1, 1, 1), datetime.date(9999, 12, 31)),
    "interval": st.timedeltas(datetime.timedelta(days=-10**5), datetime.timedelta(days=10**5)),
    "uuid": st.uuids(),
    "bytea": st.binary(max_size=16),
    "jsonb": JSON.map(Jsonb),
    "text[]": st.lists(st.none() | TEXT, max_size=4),
    "integer[]": st.lists(st.none() | st.integers(-2**31, 2**31 - 1), max_size=4),
    "character(3)[]": st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=0x24F), max_size=3), max_size=3),
}


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]  # types of the columns after "id" (keys of TYPES)
    keyed: bool  # has a primary key (else primary_key is NULL)
    partitioned: bool  # two partitions by id (changes are reported under the parent)


def values(table: Table) -> st.SearchStrategy[list[Any]]:
    return st.tuples(*(st.none() | TYPES[t] for t in table.columns)).map(list)


def assignments(table: Table) -> st.SearchStrategy[dict[int, Any]]:
    """New values for some of the columns (the others keep theirs)."""
    return st.dictionaries(st.integers(0, len(table.columns) - 1), st.none(), min_size=1).flatmap(
        lambda chosen: st.fixed_dictionaries({i: st.none() | TYPES[table.columns[i]] for i in chosen}))


TABLE = st.builds(Table, st.lists(st.sampled_from(sorted(TYPES)), min_size=1, max_size=4).map(tuple), st.booleans(),
                  st.booleans())


@st.composite
def workloads(draw: st.DrawFn) -> tuple[list[Table], list[tuple[dict[str, Any] | None, list[tuple[Any, ...]]]]]:
    """Tables, and transactions (a context or None, then statements on the tables)."""
    tables = draw(st.lists(TABLE, min_size=1, max_size=2))
    live: list[set[int]] = [set() for _ in tables]
    keys = itertools.count(1)
    transactions = []
    for _ in range(draw(st.integers(1, 6))):
        context = draw(st.none() | st.fixed_dictionaries({"user_id": st.integers(1, 9), "note": TEXT}))
        statements: list[tuple[Any, ...]] = []
        for _ in range(draw(st.integers(1, 4))):
            t = draw(st.integers(0, len(tables) - 1))
            kind = draw(st.sampled_from(["insert", "insert", "update", "delete", "truncate"] if live[t] else ["insert"]))
            if kind == "insert":
                key = next(keys)
                live[t].add(key)
                statements.append(("insert", t, key, draw(values(tables[t]))))
            elif kind == "update":
                statements.append(("update", t, draw(st.sampled_from(sorted(live[t]))), draw(assignments(tables[t]))))
            elif kind == "delete":
                key = draw(st.sampled_from(sorted(live[t])))
                live[t].discard(key)
                statements.append(("delete", t, key, None))
            else:
                live[t].clear()
                statements.append(("truncate", t, None, None))
        transactions.append((context, statements))
    return tables, transactions


counter = itertools.count()
TRAIL = ("schema, \"table\", primary_key, operation, before, after, context, committed_at, transaction_id, "
         "position, ordinal, problem, partial")


def run_workload(conn: psycopg.Connection[Any], names: list[str], tables: list[Table],
                 transactions: list[tuple[dict[str, Any] | None, list[tuple[Any, ...]]]]) -> list[tuple[Any, ...]]:
    """Makes the changes; returns what the trail must say: (table, primary key, operation,
    before, after, context), with to_jsonb of each row as the statement left it."""
    expected: list[tuple[Any, ...]] = []
    for context, statements in transactions:
        with conn.transaction():
            if context is not None:
                bemi_pg.set_context(conn, context)
            for kind, t, key, row in statements:
                name, table = sql.Identifier(names[t]), tables[t]
                pk = str(key) if table.keyed else None
                columns = [sql.Identifier(f"c{i}") for i in range(len(table.columns))]
                if kind == "insert":
                    query = sql.SQL("INSERT INTO {} (id, {}) VALUES (%s, {}) RETURNING to_jsonb({}.*)").format(
                        name, sql.SQL(", ").join(columns), sql.SQL(", ").join(sql.Placeholder() * len(columns)), name)
                    after = conn.execute(query, [key, *row]).fetchone()[0]  # type: ignore[index]
                    expected.append((names[t], pk, "CREATE", {}, after, context or {}))
                elif kind == "update":
                    before = conn.execute(sql.SQL("SELECT to_jsonb({}.*) FROM {} WHERE id = %s").format(name, name),
                                          [key]).fetchone()[0]  # type: ignore[index]
                    query = sql.SQL("UPDATE {} SET {} WHERE id = %s RETURNING to_jsonb({}.*)").format(
                        name, sql.SQL(", ").join(sql.SQL("{} = %s").format(columns[i]) for i in row), name)
                    after = conn.execute(query, [*row.values(), key]).fetchone()[0]  # type: ignore[index]
                    expected.append((names[t], pk, "UPDATE", before, after, context or {}))
                elif kind == "delete":
                    before = conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s RETURNING to_jsonb({}.*)").format(
                        name, name), [key]).fetchone()[0]  # type: ignore[index]
                    expected.append((names[t], pk, "DELETE", before, {}, context or {}))
                else:
                    conn.execute(sql.SQL("TRUNCATE {}").format(name))
                    expected.append((names[t], None, "TRUNCATE", {}, {}, context or {}))
    return expected


def trail(conn: psycopg.Connection[Any], since: int) -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT {TRAIL} FROM bemi.changes WHERE id > %s ORDER BY id", [since]).fetchall()


def replace_slot_with(conn: psycopg.Connection[Any], copy: str) -> None:
    """The slot becomes the copy made before the workload, and progress goes back with it."""
    slot = conn.execute("SELECT bemi.slot_name()").fetchone()[0]  # type: ignore[index]
    assert wait_for(lambda: not conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                                             [slot]).fetchone()[0])  # type: ignore[index]
    conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
    conn.execute("SELECT pg_copy_logical_replication_slot(%s, %s)", [copy, slot])
    conn.execute("SELECT pg_drop_replication_slot(%s)", [copy])
    conn.execute("UPDATE bemi.progress p SET lsn = s.confirmed_flush_lsn, part_of = NULL, part_stored = 0 "
                 "FROM pg_replication_slots s WHERE s.slot_name = p.slot_name AND p.slot_name = %s", [slot])


@pytest.mark.slow
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(workload=workloads())
def test_worker_and_sql_path_store_the_same_trail(dsn: str, workload: Any) -> None:
    same_trail_both_ways(dsn, workload)


# What the database may set for every session, ingest's included: the settings that once
# changed what ingest stored, and timeouts that would stop the worker's own sessions.
DATABASE_SETTINGS = {**HOSTILE_SETTINGS, "statement_timeout": "1", "idle_in_transaction_session_timeout": "1"}


@pytest.mark.slow
@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(workload=workloads())
def test_worker_and_sql_path_store_the_same_trail_whatever_the_database_settings(dsn: str, workload: Any) -> None:
    same_trail_both_ways(dsn, workload, DATABASE_SETTINGS)


def same_trail_both_ways(dsn: str, workload: Any, database: dict[str, str] | None = None) -> None:
    """The workload's trail, through the worker and through bemi.ingest(): identical, and what
    was committed. With ``database``, both read the slot in sessions of a database with those
    settings (the workload itself is written and checked in a session of its own settings)."""
    tables, transactions = workload
    n = next(counter)
    names = [f"d{n}_{i}" for i in range(len(tables))]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET intervalstyle = postgres")
        for name, table in zip(names, tables):
            columns = "".join(f", c{i} {t}" for i, t in enumerate(table.columns))
            conn.execute(f"CREATE TABLE {name} (id integer{' PRIMARY KEY' if table.keyed else ''}{columns})"
                         + (" PARTITION BY RANGE (id)" if table.partitioned else ""))
            if table.partitioned:
                conn.execute(f"CREATE TABLE {name}_low PARTITION OF {name} FOR VALUES FROM (MINVALUE) TO (5)")
                conn.execute(f"CREATE TABLE {name}_high PARTITION OF {name} FOR VALUES FROM (5) TO (MAXVALUE)")
            conn.execute("SELECT bemi.track(%s)", [name])
        since = conn.execute("SELECT coalesce(max(id), 0) FROM bemi.changes").fetchone()[0]  # type: ignore[index]
        copy = f"diff_{n}"  # both readers start where the trail ends
        conn.execute("SELECT pg_replication_slot_advance(slot_name, lsn) FROM bemi.progress "
                     "WHERE slot_name = bemi.slot_name()")
        conn.execute("SELECT pg_copy_logical_replication_slot(bemi.slot_name(), %s)", [copy])

        expected = run_workload(conn, names, tables, transactions)

        with database_settings(conn, database or {}):
            totals = worker.run(worker.Options(dsn, drain=True), threading.Event(), lambda _: None)
        streamed = trail(conn, since)
        assert totals.changes == len(streamed)
        conn.execute("DELETE FROM bemi.changes WHERE id > %s", [since])
        replace_slot_with(conn, copy)
        # bemi.ingest() is one statement of its caller's: the caller's statement_timeout applies, so
        # the session starts without one (a SET would itself run under the database's 1 ms, whose
        # timer, firing just after it, cancelled the next statement on a loaded machine).
        with database_settings(conn, database or {}), \
                psycopg.connect(dsn, autocommit=True, options="-c statement_timeout=0") as session:
            ingest(session)
        through_sql = trail(conn, since)

    assert streamed == through_sql
    assert [(r[1], r[2], r[3], r[4], r[5], r[6]) for r in streamed] == expected
    assert all(r[11] is None and r[12] is False for r in streamed)  # no problem, nothing partial


@pytest.mark.parametrize("database", [None, DATABASE_SETTINGS], ids=["default settings", "hostile database settings"])
def test_hard_cases_explicitly(dsn: str, database: dict[str, str] | None) -> None:
    """Cases the property test may not draw: text forms that are easy to get wrong (and that
    settings change), an unchanged out-of-line value, a partitioned table truncated."""
    big = random.Random(8).randbytes(3000).hex()  # stored out of line
    at = datetime.datetime(2024, 2, 29, 13, 14, 15, 123456, tzinfo=datetime.timezone.utc)
    same_trail_both_ways(
        dsn, ([Table(("numeric", "double precision", "text", "character(3)[]", "text "), True, False),
               Table(("text",), False, True),
               Table(("timestamp with time zone", "date", "interval", "bytea", "text[]"), True, False)],
              [(None, [("insert", 0, 1, [decimal.Decimal("1.50"), 0.1, 'a\\"\tb\n', ["ab", None, "x\""], big]),
                       ("update", 0, 1, {0: decimal.Decimal("-0.000"), 1: 1e300, 2: "", 3: []})]),
               ({"user_id": 1, "note": ""}, [("insert", 1, 2, ["low"]), ("insert", 1, 7, ["high"]),
                                             ("update", 1, 7, {0: None}), ("truncate", 1, None, None)]),
               ({"user_id": 2, "note": "José €"},
                [("insert", 2, 3, [at, at.date(), datetime.timedelta(days=-1, seconds=-7384), b"\x00\xff",
                                   [None, "NULL", "x"]])])]),
        database)
