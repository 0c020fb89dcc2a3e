"""Bad input: contexts that are not objects, not JSON or too big; table names that need
quoting or are hostile; values and column names that stress the decoder; and a fuzz of the
decode path. Each error is clear (a "bemi: " message with a SQLSTATE) and changes nothing."""

from __future__ import annotations

import datetime
import json
import math
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.types.json import Jsonb

import bemi_pg
from tests.helpers.context import setters
from tests.helpers.trail import changes, ingest

OUTER = {"user_id": 7}


def context_after_failed_call(conn: psycopg.Connection[Any], call: str, params: list[Any],
                              sqlstate: str, message: str) -> Any:
    """Calls `call` inside a transaction that already has a context; checks the error;
    returns the context in effect afterwards."""
    with bemi_pg.with_context(conn, OUTER):
        with pytest.raises(psycopg.Error, match=message) as failure, conn.transaction():
            conn.execute(call, params)
        assert failure.value.sqlstate == sqlstate
        return conn.execute("SELECT bemi.context()").fetchone()[0]  # type: ignore[index]


@setters
@pytest.mark.parametrize("value, kind", [
    ('"a string"', "string"), ("[1, 2]", "array"), ("42", "number"), ("true", "boolean"), ("null", "null"),
    ('["a:b"]', "array"),
])
def test_a_context_not_an_object_is_refused(conn: psycopg.Connection[Any], setter: str, value: str, kind: str) -> None:
    assert context_after_failed_call(conn, setter, [value], "22023",
                                     f"^bemi: context must be a JSON object, not {kind}") == OUTER


# What the json type lets through but jsonb (so the trail) cannot hold is refused too.
@setters
@pytest.mark.parametrize("text, sqlstate", [
    ('{"user_id": ', "22P02"), ("{'a': 1}", "22P02"), ('{"a": "\\u0000"}', "22P05"), ('{"a": "\\ud800"}', "22P02"),
    ('{"a": 1e1000000}', "22003"),
])
def test_a_context_not_valid_jsonb_is_refused(conn: psycopg.Connection[Any], setter: str, text: str,
                                               sqlstate: str) -> None:
    assert context_after_failed_call(conn, setter, [text], sqlstate, "(?i)json|numeric") == OUTER


@setters
def test_an_oversize_context_is_refused_and_the_limit_is_a_setting(conn: psycopg.Connection[Any], setter: str) -> None:
    big = json.dumps({"blob": "x" * 70_000})
    assert context_after_failed_call(conn, setter, [big], "22023",
                                     r"^bemi: context is \d+ bytes, over the limit of 65536 bytes") == OUTER
    with bemi_pg.with_context(conn, OUTER):
        conn.execute("SET LOCAL bemi.max_context_bytes = 100000")
        conn.execute(setter, [big])
        assert conn.execute("SELECT bemi.context()").fetchone() == (json.loads(big),)
        conn.execute("SET LOCAL bemi.max_context_bytes = 20")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="over the limit of 20 bytes"), conn.transaction():
            conn.execute(setter, ['{"user_id": 7, "e": "mail"}'])


def test_deeply_nested_and_unicode_contexts_round_trip(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> None:
    nested: Any = "bottom"
    for depth in range(500):
        nested = {f"level{depth}": nested} if depth % 2 else [nested, None]
    context = {"nested": nested, "text": "quote' \" */ \\ \n ünïcödé 🐘", "": ""}
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t')")
    with bemi_pg.with_context(conn, context):
        conn.execute("INSERT INTO t VALUES (1)")
    assert ingest(admin) == 1
    assert changes(admin, "context") == [{"context": context}]


def test_python_client_rejects_unserialisable_contexts_before_sending(conn: psycopg.Connection[Any]) -> None:
    for bad in ({"at": datetime.datetime.now()}, {"ids": {1, 2}}, {"x": math.nan}, {"o": object()}, ["not", "a", "map"]):
        with pytest.raises(TypeError, match="^bemi: context"):
            with bemi_pg.with_context(conn, bad):  # type: ignore[arg-type]
                pass
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # not even BEGIN was sent
    with conn.transaction():
        bemi_pg.set_context(conn, OUTER)
        with pytest.raises(TypeError, match="^bemi: context is not JSON-serialisable"):
            bemi_pg.set_context(conn, {"id": uuid.uuid4()})
        assert conn.execute("SELECT bemi.context()").fetchone() == (OUTER,)


def test_python_client_reports_closed_and_broken_connections(dsn: str, admin: psycopg.Connection[Any]) -> None:
    closed = psycopg.connect(dsn)
    closed.close()
    with pytest.raises(psycopg.InterfaceError, match="closed"):
        with bemi_pg.with_context(closed, OUTER):
            pass
    with psycopg.connect(dsn) as broken:
        admin.execute("SELECT pg_terminate_backend(%s)", [broken.info.backend_pid])
        with pytest.raises(psycopg.OperationalError):
            with bemi_pg.with_context(broken, OUTER):
                pass
        assert broken.broken
        with pytest.raises(psycopg.InterfaceError, match="closed or broken"):
            bemi_pg.set_context(broken, OUTER)


# ---------------------------------------------------------------------------------------
# Names given to track().

def tracked(admin: psycopg.Connection[Any]) -> list[str]:
    return [r["relation"] for r in admin.execute("SELECT relation::text FROM bemi.tracked ORDER BY 1")]


def test_track_refuses_views_and_missing_tables_and_changes_nothing(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE x (id int PRIMARY KEY); CREATE VIEW v AS SELECT * FROM x")
    for name, sqlstate, message in [("v", "42809", r"^bemi: public\.v is not a table"),
                                    ("missing", "42P01", 'relation "missing" does not exist'),
                                    ("x; DROP TABLE x", "42602", "invalid name syntax")]:
        with pytest.raises(psycopg.Error, match=message) as failure:
            admin.execute("SELECT bemi.track(%s)", [name])
        assert failure.value.sqlstate == sqlstate
    assert tracked(admin) == []
    assert admin.execute("SELECT count(*) AS n FROM pg_trigger WHERE tgname = 'bemi_context'").fetchone() == {"n": 0}
    assert admin.execute("SELECT to_regclass('x') IS NOT NULL AS kept").fetchone() == {"kept": True}


@pytest.mark.parametrize("table", ["My Table", '"; DROP TABLE x; --', "ünï Tab\"le"])
def test_track_names_that_need_quoting(admin: psycopg.Connection[Any], conn: psycopg.Connection[Any], table: str) -> None:
    admin.execute("CREATE TABLE x (id int PRIMARY KEY)")
    admin.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text)").format(sql.Identifier(table)))
    admin.execute("SELECT bemi.track(%s)", [sql.Identifier(table).as_string(admin)])
    with bemi_pg.with_context(conn, OUTER):
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'a')").format(sql.Identifier(table)))
    assert ingest(admin) == 1
    assert changes(admin, "table", "after", "context") == [{"table": table, "after": {"id": 1, "v": "a"}, "context": OUTER}]
    assert admin.execute("SELECT to_regclass('x') IS NOT NULL AS kept").fetchone() == {"kept": True}


# ---------------------------------------------------------------------------------------
# Values and column names that stress the decoder: what goes in comes back identical.

HOSTILE_COLUMNS = ['quo"te', "star*/", "back\\slash", "new\nline", "ünï", "sp ace", "UPPER", "a]:b", "x[text]:'y'"]
HOSTILE_TEXT = ["it's", 'say "hi"', "*/ --", "back\\slash\\", "new\nline\ttab", "ünïcödé 🐘", "", " ",
                "x" * 100_000, "null", "NULL", "B'01'", "[text]:'v'", "old-key: a[int]:1"]


def test_hostile_values_and_column_names_round_trip(admin: psycopg.Connection[Any]) -> None:
    columns = sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in HOSTILE_COLUMNS)
    admin.execute(sql.SQL("CREATE TABLE h (id int PRIMARY KEY, {}, tags text[], nums int[])").format(columns))
    admin.execute("SELECT bemi.track('h')")
    insert = sql.SQL("INSERT INTO h VALUES ({})").format(sql.SQL(", ").join(sql.Placeholder() * (len(HOSTILE_COLUMNS) + 3)))
    for key, value in enumerate(HOSTILE_TEXT):
        admin.execute(insert, [key, *([value] * len(HOSTILE_COLUMNS)), [None, value, None], [None, None]])
    admin.execute("UPDATE h SET tags = '{}' WHERE id % 2 = 0")
    admin.execute("DELETE FROM h WHERE id % 3 = 0")
    assert ingest(admin) == len(HOSTILE_TEXT) + len(range(0, len(HOSTILE_TEXT), 2)) + len(range(0, len(HOSTILE_TEXT), 3))
    assert_trail_replays(admin, "h")


def assert_trail_replays(admin: psycopg.Connection[Any], table: str) -> None:
    """Replaying the table's trail gives its rows exactly as to_jsonb() gives them, and every
    stored image populates a record of the table."""
    replayed: dict[str, Any] = {}
    for change in admin.execute('SELECT * FROM bemi.changes WHERE "table" = %s ORDER BY id', [table]):
        if change["operation"] == "DELETE":
            assert replayed.pop(change["primary_key"]) == change["before"]
        else:
            assert replayed.get(change["primary_key"], {}) == change["before"]
            replayed[change["primary_key"]] = change["after"]
    rows = admin.execute(sql.SQL("SELECT id::text, to_jsonb(t) AS row FROM {} t").format(sql.Identifier(table)))
    assert replayed == {r["id"]: r["row"] for r in rows}
    mismatched = admin.execute(sql.SQL(
        "SELECT count(*) AS n FROM bemi.changes c JOIN {} t ON c.primary_key = t.id::text "
        "WHERE c.\"table\" = %s AND c.operation <> 'DELETE' AND c.id = (SELECT max(id) FROM bemi.changes d "
        "WHERE d.\"table\" = c.\"table\" AND d.primary_key = c.primary_key) "
        "AND jsonb_populate_record(NULL::{}, c.after)::text IS DISTINCT FROM t::text").format(
            sql.Identifier(table), sql.Identifier(table)), [table]).fetchone()
    assert mismatched == {"n": 0}


# The fuzz: random tables (names, types) and random rows through insert, update and delete.
SAFE_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | SAFE_TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(SAFE_TEXT, inner, max_size=3),
                    max_leaves=8)
TYPES: dict[str, st.SearchStrategy[Any]] = {
    "text": SAFE_TEXT,
    "integer": st.integers(-2**31, 2**31 - 1),
    "bigint": st.integers(-2**63, 2**63 - 1),
    "numeric": st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-10**9, max_value=10**9),
    "double precision": st.floats(allow_nan=False, allow_infinity=False),
    "boolean": st.booleans(),
    # A jsonb JSON null and an SQL NULL are both null in to_jsonb(row): the trail cannot tell
    # them apart, so the fuzz leaves the jsonb null out (an SQL NULL is drawn for every type).
    "jsonb": JSON.filter(lambda value: value is not None).map(Jsonb),
    "text[]": st.lists(st.none() | SAFE_TEXT, max_size=4),
    "integer[]": st.lists(st.none() | st.integers(-1000, 1000), max_size=4),
    "timestamptz": st.datetimes(timezones=st.just(datetime.timezone.utc),
                                min_value=datetime.datetime(1900, 1, 1), max_value=datetime.datetime(2200, 1, 1)),
    "date": st.dates(min_value=datetime.date(1, 1, 1), max_value=datetime.date(9999, 12, 31)),
    "bytea": st.binary(max_size=20),
}
COLUMN_NAME = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=12)


@st.composite
def random_tables(draw: Any) -> tuple[dict[str, str], list[list[Any]]]:
    names = draw(st.lists(COLUMN_NAME.filter(lambda n: n.lower() != "id"), min_size=1, max_size=5,
                          unique_by=str.lower))
    columns = {name: draw(st.sampled_from(sorted(TYPES))) for name in names}
    rows = draw(st.lists(st.tuples(*(st.none() | TYPES[t] for t in columns.values())).map(list), min_size=1, max_size=4))
    return columns, rows


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(table=random_tables())
def test_fuzz_decode_path_round_trips(admin: psycopg.Connection[Any], table: tuple[dict[str, str], list[list[Any]]]) -> None:
    columns, rows = table
    name = f"fuzz_{uuid.uuid4().hex[:8]}"
    definition = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in columns.items())
    admin.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, {})").format(sql.Identifier(name), definition))
    admin.execute("SELECT bemi.track(%s)", [name])
    insert = sql.SQL("INSERT INTO {} VALUES ({})").format(
        sql.Identifier(name), sql.SQL(", ").join(sql.Placeholder() * (len(columns) + 1)))
    for key, row in enumerate(rows):
        admin.execute(insert, [key, *row])
    first = sql.Identifier(next(iter(columns)))
    admin.execute(sql.SQL("UPDATE {} SET {} = NULL WHERE id = 0").format(sql.Identifier(name), first))
    admin.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier(name)), [len(rows) - 1])
    assert ingest(admin) == len(rows) + 2
    assert_trail_replays(admin, name)


def test_fuzz_strategies_cover_json_numbers() -> None:
    """The fuzz's numeric values survive JSON the way the trail stores them."""
    assert json.loads(json.dumps(float(Decimal("1.5")))) == 1.5
