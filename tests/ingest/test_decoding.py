"""The decoder, case by case: what lands in bemi.changes is exactly what was committed.

The strongest check (DESIGN.md, "Values"): right after each write, capture to_jsonb(t.*) and
the row's text; after ingest, "after" (and "before") must equal the captured JSON, and
jsonb_populate_record(NULL::t, after) must print as the captured row.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

import bemi_pg
from tests.helpers.trail import changes, ingest

Row = dict[str, Any]

# Session settings of the writer and of the ingest connection, unlike the defaults the
# captured to_jsonb() uses: the trail must not depend on who wrote or who ingested.
ODD_SESSION = (
    "-c timezone=Asia/Kolkata -c datestyle=SQL,DMY -c intervalstyle=sql_standard "
    "-c bytea_output=escape -c extra_float_digits=-3"
)


@pytest.fixture
def worker(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An ingesting connection with odd display settings."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row, options=ODD_SESSION) as connection:
        yield connection


@pytest.fixture
def writer(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An application connection with odd display settings."""
    with psycopg.connect(dsn, options=ODD_SESSION) as connection:
        yield connection


def create(admin: psycopg.Connection[Any], table: str, definition: str) -> sql.Composed:
    """Creates and tracks a table; returns its quoted name."""
    name = sql.Identifier(table)
    admin.execute(sql.SQL("CREATE TABLE {} ({})").format(name, sql.SQL(definition)))  # type: ignore[arg-type]
    admin.execute("SELECT bemi.track(%s::regclass)", [name.as_string(admin)])
    return sql.SQL("{}").format(name)


def capture(admin: psycopg.Connection[Any], table: sql.Composable, key: str = "id") -> dict[Any, Row]:
    """Each row's to_jsonb() and text, as committed now, by key (UTC, default display settings)."""
    admin.execute("SET timezone = 'UTC'")
    query = sql.SQL("SELECT t.{key} AS key, to_jsonb(t.*) AS json, t::text AS text FROM {table} AS t").format(
        key=sql.Identifier(key), table=table
    )
    return {r["key"]: r for r in admin.execute(query)}


def populated(admin: psycopg.Connection[Any], table: sql.Composable, side: str) -> list[str | None]:
    """jsonb_populate_record(NULL::table, side)::text of every change, in id order."""
    admin.execute("SET timezone = 'UTC'")
    query = sql.SQL(
        "SELECT CASE WHEN c.{side} = '{{}}' THEN NULL ELSE jsonb_populate_record(NULL::{table}, c.{side})::text END AS r "
        "FROM bemi.changes AS c ORDER BY c.id"
    ).format(side=sql.Identifier(side), table=table)
    return [r["r"] for r in admin.execute(query)]


def trail(admin: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """The trail as (table, operation, primary_key, before, after, context) tuples."""
    return [tuple(r.values()) for r in changes(admin, "table", "operation", "primary_key", "before", "after", "context")]


# ---------------------------------------------------------------------------------------------
# Values: every row of every type round-trips through INSERT, UPDATE and DELETE.
# ---------------------------------------------------------------------------------------------

VALUES: dict[str, list[str | None]] = {
    "smallint": ["-32768", "0", "32767"],
    "integer": ["-2147483648", "2147483647"],
    "bigint": ["-9223372036854775808", "9223372036854775807"],
    "numeric": ["0", "-1.50", "123456789012345678901234567890.000000000001", "1e-20", "NaN", "Infinity", "-Infinity"],
    "numeric(10,2)": ["3.10", "-99999999.99"],
    # -0 is left out: jsonb numbers (so to_jsonb() too) have no negative zero, and -0 = 0.
    "double precision": ["0", "0.1", "1.1", "1e308", "5e-324", "Infinity", "-Infinity", "NaN"],
    "real": ["1.1", "3.4028235e+38", "1e-45", "Infinity", "NaN"],
    "boolean": ["true", "false"],
    "text": [
        "it's", "''", "back\\slash\\", "two\nlines\r\n", "tab\there", "ünïcödé ✓ 日本 🐘", "", "null",
        "unchanged-toast-datum", " x[text]:'y' ", '"quoted"', "B'01'", "a\\x00b",
    ],
    "character varying(20)": ["it's", "trailing  "],
    "character(5)": ["ab", "é"],
    "json": ['{"a": 1, "b": [true, null, 2.5]}', '"it\'s \\"q\\""', "[]", '{"k": "line\\nbreak"}'],
    "jsonb": ['{"a": {"b": [1, "two", false]}, "kk": 1.50}', '"it\'s"', "[1, 2]", "{}", "0"],
    "integer[]": ["{1,NULL,3}", "{}", "{{1,2},{3,4}}", "{NULL}"],
    "text[]": ['{"a,b","c\\"d","it\'s",NULL,"NULL","","x y","{}"}', "{}"],
    "numeric[]": ["{1.5,NaN,Infinity}"],
    "boolean[]": ["{t,NULL,f}"],
    "jsonb[]": ['{"{\\"a\\": 1}",NULL}'],
    "timestamp without time zone": [
        "2024-02-29 13:14:15.123456", "infinity", "-infinity", "0044-03-15 12:00:00 BC", "2000-01-01 00:00:00",
    ],
    "timestamp with time zone": ["2024-02-29 13:14:15.123456+05:30", "infinity", "1999-12-31 23:59:59.999999-08"],
    "date": ["2024-02-29", "infinity", "0044-03-15 BC"],
    "time without time zone": ["13:14:15.5", "24:00:00"],
    "interval": ["1 year 2 mons 3 days 04:05:06.7", "-1 day", "00:00:00"],
    "uuid": ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"],
    "bytea": ["\\x00ff27", "\\x", "it's", "\\x5c"],
    "mood": ["happy", "it's ok", "with space", "Ünï"],
    '"Mood Two"': ["x"],
    "mood[]": ["{happy,NULL}"],
    "pair": ['(1,"a b")', "(,)"],
    "positive": ["7"],
    "inet": ["192.168.0.1/24", "::1"],
    "bit(4)": ["0101"],
    "bit varying": ["", "1"],
    "money": ["12.34"],
    '"char"': ["x"],
    "point": ["(1.5,2)"],
}

TYPES = """
CREATE TYPE mood AS ENUM ('happy', 'it''s ok', 'with space', 'Ünï');
CREATE TYPE "Mood Two" AS ENUM ('x');
CREATE TYPE pair AS (n integer, s text);
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
"""


@pytest.mark.parametrize("sql_type", list(VALUES))
def test_values_round_trip(
    sql_type: str, admin: psycopg.Connection[Any], writer: psycopg.Connection[Any], worker: psycopg.Connection[Any]
) -> None:
    """Every value (and NULL) of each type: after == to_jsonb(row) and populates back to the row,
    for CREATE, UPDATE and DELETE, with nulls present in before and after."""
    admin.execute(TYPES)
    table = create(admin, "v", f"id integer PRIMARY KEY, x {sql_type}, n integer NOT NULL DEFAULT 0")
    literals = [*VALUES[sql_type], None]
    with writer.transaction():
        for i, literal in enumerate(literals):
            writer.execute(sql.SQL("INSERT INTO v (id, x) VALUES (%s, %s::{})").format(sql.SQL(sql_type)), [i, literal])
    inserted = capture(admin, table)
    with writer.transaction():
        writer.execute("UPDATE v SET n = n + 1")
    updated = capture(admin, table)
    with writer.transaction():
        writer.execute("DELETE FROM v")

    assert ingest(worker) == 3 * len(literals)
    keys = range(len(literals))
    expected = (
        [("v", "CREATE", str(k), {}, inserted[k]["json"], {}) for k in keys]
        + [("v", "UPDATE", str(k), inserted[k]["json"], updated[k]["json"], {}) for k in keys]
        + [("v", "DELETE", str(k), updated[k]["json"], {}, {}) for k in keys]
    )
    assert sorted(trail(admin), key=lambda r: (r[1], int(r[2]))) == sorted(expected, key=lambda r: (r[1], int(r[2])))
    operations = [r[1] for r in trail(admin)]
    assert operations == ["CREATE"] * len(literals) + ["UPDATE"] * len(literals) + ["DELETE"] * len(literals)

    rows = changes(admin, "primary_key", "operation")
    after_texts = populated(admin, table, "after")
    before_texts = populated(admin, table, "before")
    for row, after_text, before_text in zip(rows, after_texts, before_texts, strict=True):
        k = int(row["primary_key"])
        if row["operation"] == "CREATE":
            assert (before_text, after_text) == (None, inserted[k]["text"])
        elif row["operation"] == "UPDATE":
            assert (before_text, after_text) == (inserted[k]["text"], updated[k]["text"])
        else:
            assert (before_text, after_text) == (updated[k]["text"], None)


# ---------------------------------------------------------------------------------------------
# Names that need quoting.
# ---------------------------------------------------------------------------------------------

ODD_NAMES = ["Some Col", "CamelCase", "[x]", "a:b", 'q"uote', "select", "ünï", "x[integer]:1", "a]:b", "1st"]


def test_quoted_names(admin: psycopg.Connection[Any], conn: psycopg.Connection[Any]) -> None:
    """Tables and columns whose names need quoting come back with their real names."""
    admin.execute('CREATE SCHEMA "Odd Schema"')
    table_name = 'My "Table" [x]:y'
    table = sql.Identifier("Odd Schema", table_name)
    columns = sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in ODD_NAMES)
    admin.execute(sql.SQL("CREATE TABLE {} (id integer PRIMARY KEY, {})").format(table, columns))
    admin.execute("SELECT bemi.track(%s::regclass)", [table.as_string(admin)])
    values = {c: f"{c} = 'v'" for c in ODD_NAMES}
    with bemi_pg.with_context(conn, {"step": "insert"}):
        conn.execute(
            sql.SQL("INSERT INTO {} (id, {}) VALUES (1, {})").format(
                table,
                sql.SQL(", ").join(map(sql.Identifier, values)),
                sql.SQL(", ").join(map(sql.Literal, values.values())),
            )
        )
    with bemi_pg.with_context(conn, {"step": "update"}):
        conn.execute(sql.SQL("UPDATE {} SET {} = NULL").format(table, sql.Identifier("a:b")))
    with bemi_pg.with_context(conn, {"step": "delete"}):
        conn.execute(sql.SQL("DELETE FROM {}").format(table))

    assert ingest(admin) == 3
    full = {"id": 1, **values}
    nulled = {**full, "a:b": None}
    rows = changes(admin, "schema", "table", "operation", "primary_key", "before", "after", "context")
    assert [tuple(r.values()) for r in rows] == [
        ("Odd Schema", table_name, "CREATE", "1", {}, full, {"step": "insert"}),
        ("Odd Schema", table_name, "UPDATE", "1", full, nulled, {"step": "update"}),
        ("Odd Schema", table_name, "DELETE", "1", nulled, {}, {"step": "delete"}),
    ]


# ---------------------------------------------------------------------------------------------
# Unchanged TOASTed values.
# ---------------------------------------------------------------------------------------------


def test_unchanged_toast_is_filled_from_the_old_image(admin: psycopg.Connection[Any], conn: psycopg.Connection[Any]) -> None:
    """An UPDATE of another column of a row whose big values are TOASTed (out of line,
    uncompressible) carries the full values in after, not a placeholder."""
    create(admin, "doc", "id integer PRIMARY KEY, body text, data jsonb, title text, note text")
    admin.execute("ALTER TABLE doc ALTER COLUMN body SET STORAGE EXTERNAL")
    with conn.transaction():
        conn.execute(
            "INSERT INTO doc SELECT 1, string_agg(md5(i::text), '' ORDER BY i), "
            "jsonb_build_object('k', string_agg(md5((-i)::text), ' ' ORDER BY i)), 'old', NULL "
            "FROM generate_series(1, 20000) AS i"
        )
    inserted = capture(admin, sql.SQL("doc"))
    toast = admin.execute("SELECT reltoastrelid::regclass::text AS t FROM pg_class WHERE oid = 'doc'::regclass").fetchone()
    assert toast is not None
    assert admin.execute(sql.SQL("SELECT count(*) > 100 AS toasted FROM {}").format(sql.SQL(toast["t"]))).fetchone() == {
        "toasted": True
    }
    with conn.transaction():
        conn.execute("UPDATE doc SET title = 'new'")
    updated = capture(admin, sql.SQL("doc"))
    with conn.transaction():
        conn.execute("DELETE FROM doc")

    assert ingest(admin) == 3
    assert len(updated[1]["json"]["body"]) == 640000
    assert trail(admin) == [
        ("doc", "CREATE", "1", {}, inserted[1]["json"], {}),
        ("doc", "UPDATE", "1", inserted[1]["json"], updated[1]["json"], {}),
        ("doc", "DELETE", "1", updated[1]["json"], {}, {}),
    ]


# ---------------------------------------------------------------------------------------------
# Primary keys: single (as text), composite (a JSON array text), none (NULL).
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("definition", "values", "primary_key"),
    [
        ("a integer PRIMARY KEY", "1", "1"),
        ("a text PRIMARY KEY", "'it''s \"k\"'", 'it\'s "k"'),
        ("a integer, b text, PRIMARY KEY (b, a)", "1, 'x'", '["x", 1]'),
        ('"K 1" integer, "K:2" text, PRIMARY KEY ("K 1", "K:2")', "1, 'a'", '[1, "a"]'),
        ("a uuid, b date, PRIMARY KEY (a, b)", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-01-02'",
         '["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "2024-01-02"]'),
        ("a integer, b text", "1, 'x'", None),
    ],
)
def test_primary_key(
    definition: str, values: str, primary_key: str | None, admin: psycopg.Connection[Any], conn: psycopg.Connection[Any]
) -> None:
    """primary_key is the key's value for CREATE, UPDATE and DELETE alike (NULL without a key)."""
    create(admin, "k", f"note text, {definition}")
    with conn.transaction():
        conn.execute(f"INSERT INTO k VALUES ('x', {values})")
        conn.execute("UPDATE k SET note = 'y'")
        conn.execute("DELETE FROM k")
    assert ingest(admin) == 3
    rows = changes(admin, "operation", "primary_key")
    assert [tuple(r.values()) for r in rows] == [
        ("CREATE", primary_key), ("UPDATE", primary_key), ("DELETE", primary_key)
    ]


# ---------------------------------------------------------------------------------------------
# TRUNCATE.
# ---------------------------------------------------------------------------------------------


def test_truncate_several_tables_and_cascade(admin: psycopg.Connection[Any], conn: psycopg.Connection[Any]) -> None:
    """One TRUNCATE of several tables gives one change per tracked table; CASCADE reaches the
    referencing tables; untracked tables in the same statement are left out."""
    create(admin, "a", "id integer PRIMARY KEY")
    create(admin, "b", "id integer PRIMARY KEY")
    admin.execute("CREATE TABLE untracked (id integer)")
    create(admin, "parent", "id integer PRIMARY KEY")
    create(admin, "child", "id integer PRIMARY KEY, parent_id integer REFERENCES parent")
    with bemi_pg.with_context(conn, {"op": "several"}):
        conn.execute("TRUNCATE a, untracked, b")
    with bemi_pg.with_context(conn, {"op": "cascade"}):
        conn.execute("TRUNCATE parent CASCADE")
    assert ingest(admin) == 4
    rows = changes(admin, "table", "operation", "primary_key", "before", "after", "context")
    assert [tuple(r.values()) for r in rows[:2]] == [
        ("a", "TRUNCATE", None, {}, {}, {"op": "several"}),
        ("b", "TRUNCATE", None, {}, {}, {"op": "several"}),
    ]
    assert sorted(tuple(r.values()) for r in rows[2:]) == [
        ("child", "TRUNCATE", None, {}, {}, {"op": "cascade"}),
        ("parent", "TRUNCATE", None, {}, {}, {"op": "cascade"}),
    ]


# ---------------------------------------------------------------------------------------------
# Partitioned tables.
# ---------------------------------------------------------------------------------------------


def test_partitions_are_reported_under_the_parent(admin: psycopg.Connection[Any], conn: psycopg.Connection[Any]) -> None:
    """Rows written via the parent and directly into a partition (whose columns sit in another
    order) appear under the parent's name, with the parent's key; so does a row moving
    between partitions and a TRUNCATE of the parent."""
    admin.execute(
        "CREATE TABLE measure (region text, id integer, value numeric, PRIMARY KEY (region, id)) PARTITION BY LIST (region);"
        "CREATE TABLE measure_eu PARTITION OF measure FOR VALUES IN ('eu');"
        "CREATE TABLE measure_us (value numeric, id integer, region text NOT NULL);"
        "ALTER TABLE measure_us ADD PRIMARY KEY (region, id);"
        "ALTER TABLE measure ATTACH PARTITION measure_us FOR VALUES IN ('us');"
        "SELECT bemi.track('measure')"
    )
    with bemi_pg.with_context(conn, {"via": "parent"}):
        conn.execute("INSERT INTO measure VALUES ('eu', 1, 1.5), ('us', 2, 2.5)")
    with bemi_pg.with_context(conn, {"via": "partition"}):
        conn.execute("INSERT INTO measure_us (region, id, value) VALUES ('us', 3, 3.5)")
        conn.execute("UPDATE measure_eu SET value = 0")
    with bemi_pg.with_context(conn, {"via": "move"}):
        conn.execute("UPDATE measure SET region = 'us' WHERE id = 1")
    with bemi_pg.with_context(conn, {"via": "truncate"}):
        conn.execute("TRUNCATE measure")

    assert ingest(admin) == 7
    eu1 = {"region": "eu", "id": 1, "value": 1.5}
    assert trail(admin) == [
        ("measure", "CREATE", '["eu", 1]', {}, eu1, {"via": "parent"}),
        ("measure", "CREATE", '["us", 2]', {}, {"region": "us", "id": 2, "value": 2.5}, {"via": "parent"}),
        ("measure", "CREATE", '["us", 3]', {}, {"region": "us", "id": 3, "value": 3.5}, {"via": "partition"}),
        ("measure", "UPDATE", '["eu", 1]', eu1, {**eu1, "value": 0}, {"via": "partition"}),
        ("measure", "DELETE", '["eu", 1]', {**eu1, "value": 0}, {}, {"via": "move"}),
        ("measure", "CREATE", '["us", 1]', {}, {"region": "us", "id": 1, "value": 0}, {"via": "move"}),
        ("measure", "TRUNCATE", None, {}, {}, {"via": "truncate"}),
    ]


# ---------------------------------------------------------------------------------------------
# Contexts.
# ---------------------------------------------------------------------------------------------


def test_each_statement_gets_its_own_context(admin: psycopg.Connection[Any], conn: psycopg.Connection[Any]) -> None:
    """Several contexts in one transaction, a statement on another tracked table between, a
    context cleared with set_context(NULL), and statements without any context."""
    create(admin, "t", "id integer PRIMARY KEY")
    create(admin, "u", "id integer PRIMARY KEY")
    with conn.transaction():
        conn.execute("INSERT INTO t VALUES (1)")
        bemi_pg.set_context(conn, {"n": 1})
        conn.execute("INSERT INTO t VALUES (2), (3)")
        conn.execute("INSERT INTO u VALUES (2)")
        bemi_pg.set_context(conn, {"n": 2, "s": "it's \"q\"\n"})
        conn.execute("INSERT INTO t VALUES (4)")
        bemi_pg.set_context(conn, {"n": 1})
        conn.execute("INSERT INTO u VALUES (5)")
        bemi_pg.set_context(conn, None)
        conn.execute("INSERT INTO t VALUES (6)")
        bemi_pg.set_context(conn, {"n": 3})
        conn.execute("INSERT INTO u VALUES (7)")
    with conn.transaction():
        conn.execute("INSERT INTO t VALUES (8)")
    assert ingest(admin) == 9
    rows = changes(admin, "table", "primary_key", "context")
    assert [tuple(r.values()) for r in rows] == [
        ("t", "1", {}),
        ("t", "2", {"n": 1}),
        ("t", "3", {"n": 1}),
        ("u", "2", {"n": 1}),
        ("t", "4", {"n": 2, "s": "it's \"q\"\n"}),
        ("u", "5", {"n": 1}),
        ("t", "6", {}),
        ("u", "7", {"n": 3}),
        ("t", "8", {}),
    ]


def test_rolled_back_savepoints_leave_no_trace(admin: psycopg.Connection[Any], conn: psycopg.Connection[Any]) -> None:
    """Neither the changes nor the context of a rolled-back savepoint appear, and its context
    does not leak onto later statements; a released savepoint's changes stay."""
    create(admin, "t", "id integer PRIMARY KEY")
    with conn.transaction():
        bemi_pg.set_context(conn, {"outer": True})
        with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
            bemi_pg.set_context(conn, {"inner": "lost"})
            conn.execute("INSERT INTO t VALUES (1)")
            conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("INSERT INTO t VALUES (2)")
        with conn.transaction():
            bemi_pg.set_context(conn, {"inner": "kept"})
            conn.execute("INSERT INTO t VALUES (3)")
        conn.execute("INSERT INTO t VALUES (4)")
        with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
            conn.execute("INSERT INTO t VALUES (5)")
            bemi_pg.set_context(conn, {"inner": "lost again"})
            conn.execute("INSERT INTO t VALUES (2)")
        conn.execute("INSERT INTO t VALUES (6)")
    with conn.transaction():
        conn.execute("SAVEPOINT s")
        bemi_pg.set_context(conn, {"inner": "lost"})
        conn.execute("INSERT INTO t VALUES (7)")
        conn.execute("ROLLBACK TO SAVEPOINT s")
        conn.execute("INSERT INTO t VALUES (8)")
    assert ingest(admin) == 5
    rows = changes(admin, "primary_key", "context")
    assert [tuple(r.values()) for r in rows] == [
        ("2", {"outer": True}),
        ("3", {"inner": "kept"}),
        ("4", {"inner": "kept"}),
        ("6", {"inner": "kept"}),
        ("8", {}),
    ]


# ---------------------------------------------------------------------------------------------
# Schema changes between changes.
# ---------------------------------------------------------------------------------------------


def test_columns_as_they_were(admin: psycopg.Connection[Any], conn: psycopg.Connection[Any]) -> None:
    """ADD, DROP and RENAME COLUMN between changes (in other transactions and in the same one):
    each change has the columns, names and types it had at the time."""
    create(admin, "t", "id integer PRIMARY KEY, a text, b integer")
    with conn.transaction():
        conn.execute("INSERT INTO t VALUES (1, 'x', 1), (2, 'y', 2)")
    admin.execute("ALTER TABLE t ADD COLUMN c jsonb DEFAULT '[1]'")
    with conn.transaction():
        conn.execute("UPDATE t SET b = 10 WHERE id = 1")
    admin.execute("ALTER TABLE t DROP COLUMN a")
    with conn.transaction():
        conn.execute("INSERT INTO t VALUES (3, 3, '{\"k\": 3}')")
        conn.execute("ALTER TABLE t RENAME COLUMN b TO \"B b\"")
        conn.execute("DELETE FROM t WHERE id = 2")
        conn.execute("ALTER TABLE t ALTER COLUMN c TYPE text")
        conn.execute("UPDATE t SET c = 'text' WHERE id = 3")
    assert ingest(admin) == 6
    assert [(r[1], r[3], r[4]) for r in trail(admin)] == [
        ("CREATE", {}, {"id": 1, "a": "x", "b": 1}),
        ("CREATE", {}, {"id": 2, "a": "y", "b": 2}),
        ("UPDATE", {"id": 1, "a": "x", "b": 1, "c": [1]}, {"id": 1, "a": "x", "b": 10, "c": [1]}),
        ("CREATE", {}, {"id": 3, "b": 3, "c": {"k": 3}}),
        ("DELETE", {"id": 2, "B b": 2, "c": [1]}, {}),
        ("UPDATE", {"id": 3, "B b": 3, "c": '{"k": 3}'}, {"id": 3, "B b": 3, "c": "text"}),
    ]


def test_deleted_nulls_before_a_new_column(admin: psycopg.Connection[Any], conn: psycopg.Connection[Any]) -> None:
    """test_decoding leaves NULLs out of a deleted row's image: before still has them (leading,
    inner and trailing ones), but not a column added after the DELETE."""
    create(admin, "t", "id integer PRIMARY KEY, a text, b integer, c text")
    with conn.transaction():
        conn.execute("INSERT INTO t VALUES (1, NULL, NULL, NULL), (2, NULL, 2, NULL), (3, 'x', NULL, 'z')")
        conn.execute("DELETE FROM t")
    admin.execute("ALTER TABLE t ADD COLUMN d text")
    with conn.transaction():
        conn.execute("INSERT INTO t VALUES (4, NULL, NULL, NULL, NULL)")
        conn.execute("DELETE FROM t")
    assert ingest(admin) == 8
    deleted = [r["before"] for r in changes(admin, "operation", "before") if r["operation"] == "DELETE"]
    assert deleted == [
        {"id": 1, "a": None, "b": None, "c": None},
        {"id": 2, "a": None, "b": 2, "c": None},
        {"id": 3, "a": "x", "b": None, "c": "z"},
        {"id": 4, "a": None, "b": None, "c": None, "d": None},
    ]


# ---------------------------------------------------------------------------------------------
# Many rows per statement.
# ---------------------------------------------------------------------------------------------


def test_copy_and_multi_row_insert_keep_every_row(admin: psycopg.Connection[Any], conn: psycopg.Connection[Any]) -> None:
    """COPY (one WAL record for many rows) and multi-row INSERT: every row is kept once, in
    order, even when ingest runs in small batches."""
    create(admin, "t", "id integer PRIMARY KEY, s text")
    with conn.transaction():
        bemi_pg.set_context(conn, {"op": "copy"})
        with conn.cursor().copy("COPY t (id, s) FROM STDIN") as copy:
            for i in range(1, 301):
                copy.write_row((i, f"row {i}\twith\\tab"))
    with bemi_pg.with_context(conn, {"op": "insert"}):
        conn.execute("INSERT INTO t SELECT i, 'r' || i FROM generate_series(301, 500) AS i")
    shared = admin.execute(
        "SELECT count(*) AS n FROM (SELECT 1 FROM bemi.wal WHERE data ->> 'action' = 'I' GROUP BY lsn HAVING count(*) > 1) AS s"
    ).fetchone()
    assert shared is not None and shared["n"] > 0
    assert ingest(admin, batch=7) == 500
    assert ingest(admin) == 0
    rows = changes(admin, "primary_key", "after", "context")
    assert [r["primary_key"] for r in rows] == [str(i) for i in range(1, 501)]
    assert rows[0]["after"] == {"id": 1, "s": "row 1\twith\\tab"}
    assert {r["context"]["op"] for r in rows[:300]} == {"copy"}
    assert {r["context"]["op"] for r in rows[300:]} == {"insert"}
