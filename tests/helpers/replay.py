"""Random tables and workloads for the property tests (hypothesis): tables with odd column
names and a useful mix of types, INSERT/UPDATE/DELETE workloads over transactions with
savepoints and contexts, and the comparison of a table with its copy."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from hypothesis import strategies as st
from psycopg import sql

ENUM_LABELS = ["red", "it's", "with space", "Ünï", "a,b"]
SYSTEM_COLUMNS = {"tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"}

def texts(max_size: int) -> st.SearchStrategy[str]:
    """Text PostgreSQL can hold (no NUL)."""
    return st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=max_size)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.floats(allow_nan=False, allow_infinity=False)
    | texts(8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts(5), inner, max_size=3),
    max_leaves=6,
)

# SQL type -> strategy of Python values psycopg sends (cast to the type in the statement).
TYPES: dict[str, st.SearchStrategy[Any]] = {
    "integer": st.integers(-(2**31), 2**31 - 1),
    "bigint": st.integers(-(2**63), 2**63 - 1),
    "numeric": st.decimals(allow_nan=False, allow_infinity=False).map(str)
    | st.sampled_from(["NaN", "Infinity", "-Infinity"]),
    "double precision": st.floats().map(repr).map(lambda f: f.replace("inf", "Infinity").replace("nan", "NaN")),
    "real": st.floats(width=32).map(repr).map(lambda f: f.replace("inf", "Infinity").replace("nan", "NaN")),
    "boolean": st.booleans(),
    "text": texts(30),
    "jsonb": json_values.map(json.dumps),
    "integer[]": st.lists(st.none() | st.integers(-(2**31), 2**31 - 1), max_size=4).map(
        lambda xs: "{" + ",".join("NULL" if x is None else str(x) for x in xs) + "}"
    ),
    "text[]": st.lists(st.none() | texts(6), max_size=4).map(
        lambda xs: "{" + ",".join("NULL" if x is None else json.dumps(x, ensure_ascii=False) for x in xs) + "}"
    ),
    "timestamp with time zone": st.datetimes(timezones=st.timezones()),
    "timestamp without time zone": st.datetimes(),
    "date": st.dates(),
    "uuid": st.uuids(),
    "bytea": st.binary(max_size=16),
    "colour": st.sampled_from(ENUM_LABELS),
}

column_names = st.text(
    st.sampled_from('abcXYZ _"[]:.,\'-1ü日') | st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_categories=("Cs",)),
    min_size=1, max_size=10,
).filter(lambda n: n not in SYSTEM_COLUMNS and len(n.encode()) <= 63)


@dataclass
class Column:
    name: str
    type: str


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[Column], bool]:
    """Columns (the first is the key when there is one) and whether there is a primary key."""
    names = draw(st.lists(column_names, min_size=1, max_size=6, unique=True))
    columns = [Column(n, draw(st.sampled_from(sorted(TYPES)))) for n in names]
    has_key = draw(st.booleans())
    if has_key:
        columns[0].type = "integer"
    return columns, has_key


contexts = st.none() | st.dictionaries(st.sampled_from(["user_id", "endpoint", "it's", "ü"]),
                                       st.integers(0, 9) | texts(5), min_size=1, max_size=3)


@st.composite
def workloads(draw: st.DrawFn, columns: list[Column]) -> list[dict[str, Any]]:
    """Statements: what they do, the context they set (or keep), and how they are committed."""
    statements = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["insert", "insert", "insert", "update", "update_all", "delete"]))
        changed = draw(st.lists(st.sampled_from(columns), min_size=1, unique_by=lambda c: c.name))
        statements.append({
            "kind": kind,
            "row": draw(st.integers(0, 50)),
            "values": {c.name: draw(st.none() | TYPES[c.type]) for c in (columns if kind == "insert" else changed)},
            "set_context": draw(st.booleans()),
            "context": draw(contexts),
            "commit_before": draw(st.booleans()),
            "rolled_back": draw(st.integers(0, 5)) == 0,
        })
    return statements


def typed(columns: list[Column], values: dict[str, Any]) -> dict[str, sql.Composable]:
    """Each value as a literal cast to its column's type. Literals, not parameters: a % in a
    column name would otherwise be taken for a placeholder."""
    types = {c.name: c.type for c in columns}
    return {n: sql.SQL("({})::{}").format(sql.Literal(v), sql.SQL(types[n])) for n, v in values.items()}


def run_statement(conn: psycopg.Connection[Any], table: sql.Identifier, columns: list[Column],
                  statement: dict[str, Any], next_key: int) -> int:
    """Runs one statement; returns how many rows it changed."""
    count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
    offset = statement["row"] % max(count[0] if count else 1, 1)
    one_row = sql.SQL("ctid = (SELECT ctid FROM {} ORDER BY ctid OFFSET {} LIMIT 1)").format(table, offset)
    if statement["kind"] == "insert":
        values = typed(columns, {**statement["values"], columns[0].name: next_key} if next_key else statement["values"])
        query = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            table, sql.SQL(", ").join(map(sql.Identifier, values)), sql.SQL(", ").join(values.values()))
    elif statement["kind"] == "delete":
        query = sql.SQL("DELETE FROM {} WHERE {}").format(table, one_row)
    else:
        # Keys stay as they are, so they stay unique.
        values = typed(columns, {n: v for n, v in statement["values"].items() if not (next_key and n == columns[0].name)})
        if not values:
            return 0
        setter = sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(n), v) for n, v in values.items())
        where = sql.SQL("true") if statement["kind"] == "update_all" else one_row
        query = sql.SQL("UPDATE {} SET {} WHERE {}").format(table, setter, where)
    return conn.execute(query).rowcount


def differences(admin: psycopg.Connection[Any], table: sql.Composable, copy: sql.Composable) -> list[Any]:
    """Rows (as to_jsonb) in one table and not the other, counting duplicates; compared in SQL,
    where numbers keep every digit."""
    query = sql.SQL(
        "(SELECT to_jsonb(t.*) FROM {table} AS t EXCEPT ALL SELECT to_jsonb(c.*) FROM {copy} AS c) UNION ALL "
        "(SELECT to_jsonb(c.*) FROM {copy} AS c EXCEPT ALL SELECT to_jsonb(t.*) FROM {table} AS t)"
    ).format(table=table, copy=copy)
    return admin.execute(query).fetchall()
