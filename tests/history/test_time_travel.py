"""Time travel: bemi.row_at, bemi.table_at and bemi.diff, one test per rule of docs/time-travel.md.

Moments are read from the server's clock between transactions; the trail is ingested before
it is asked (a moment past what is ingested is an error, tested here too).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tests.helpers.history import fails, moment, rows
from tests.helpers.trail import ingest


def row_at(admin: psycopg.Connection[Any], table: str, key: str, at: Any) -> Any:
    row = admin.execute("SELECT bemi.row_at(%s::regclass, %s, %s) AS r", [table, key, at]).fetchone()
    assert row is not None
    return row["r"]


def table_at(admin: psycopg.Connection[Any], table: str, at: Any) -> list[dict[str, Any]]:
    return rows(admin, f"SELECT * FROM bemi.table_at(NULL::{table}, %s)", [at])


def todo(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL, done boolean NOT NULL DEFAULT false)")
    admin.execute("SELECT bemi.track('todo')")


def test_a_row_through_its_history(admin: psycopg.Connection[Any]) -> None:
    todo(admin)
    t0 = moment(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'Sleep')")
    t1 = moment(admin)
    admin.execute("UPDATE todo SET done = true WHERE id = 1")
    t2 = moment(admin)
    admin.execute("DELETE FROM todo WHERE id = 1")
    t3 = moment(admin)
    ingest(admin)
    assert [row_at(admin, "todo", "1", t) for t in (t0, t1, t2, t3)] == [
        None, {"id": 1, "task": "Sleep", "done": False}, {"id": 1, "task": "Sleep", "done": True}, None]
    assert [table_at(admin, "todo", t) for t in (t0, t1, t2, t3)] == [
        [], [{"id": 1, "task": "Sleep", "done": False}], [{"id": 1, "task": "Sleep", "done": True}], []]


def test_time_is_commit_time_and_ties_go_by_id(admin: psycopg.Connection[Any]) -> None:
    """Changes of one transaction share its commit time: at that moment the row is as the
    transaction left it, whatever the order of its statements."""
    todo(admin)
    with admin.transaction():
        admin.execute("INSERT INTO todo VALUES (1, 'a')")
        admin.execute("UPDATE todo SET task = 'b' WHERE id = 1")
        admin.execute("UPDATE todo SET task = 'c' WHERE id = 1")
    ingest(admin)
    committed = admin.execute("SELECT DISTINCT committed_at FROM bemi.changes").fetchall()
    assert len(committed) == 1
    at = committed[0]["committed_at"]
    assert row_at(admin, "todo", "1", at) == {"id": 1, "task": "c", "done": False}
    assert row_at(admin, "todo", "1", at - timedelta(microseconds=1)) is None


def test_a_moment_before_tracking_is_an_error(admin: psycopg.Connection[Any]) -> None:
    before = moment(admin)
    todo(admin)
    ingest(admin)
    with fails("22023", "was not tracked yet", "tracking began at"):
        row_at(admin, "todo", "1", before)
    with fails("22023", "was not tracked yet"):
        table_at(admin, "todo", before)


def test_a_moment_past_what_is_ingested_is_an_error(admin: psycopg.Connection[Any]) -> None:
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'a')")
    ingest(admin)
    admin.execute("UPDATE todo SET task = 'b'")
    later = moment(admin)
    with fails("22023", "the trail is not ingested up to"):
        row_at(admin, "todo", "1", later)
    with fails("22023", "the trail is not ingested up to"):
        table_at(admin, "todo", later)
    ingest(admin)
    assert row_at(admin, "todo", "1", later) == {"id": 1, "task": "b", "done": False}


def test_untracked_tables_and_bad_arguments_are_errors(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE plain (id int PRIMARY KEY)")
    admin.execute("CREATE VIEW plain_view AS SELECT * FROM plain")
    todo(admin)
    now = moment(admin)
    ingest(admin)
    with fails("22023", "is not tracked"):
        row_at(admin, "plain", "1", now)
    with fails("22023", "needs the row type of a table"):
        rows(admin, "SELECT * FROM bemi.table_at(NULL::plain_view, %s)", [now])
    with fails("22023", "must not be NULL"):
        row_at(admin, "todo", "1", None)
    with fails("22023", "the primary key must not be NULL"):
        admin.execute("SELECT bemi.row_at('todo', NULL, %s)", [now])


def test_a_changed_primary_key_is_followed(admin: psycopg.Connection[Any]) -> None:
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'a')")
    t1 = moment(admin)
    admin.execute("UPDATE todo SET id = 2 WHERE id = 1")
    t2 = moment(admin)
    admin.execute("UPDATE todo SET id = 1 WHERE id = 2")
    t3 = moment(admin)
    ingest(admin)
    assert [(row_at(admin, "todo", "1", t), row_at(admin, "todo", "2", t)) for t in (t1, t2, t3)] == [
        ({"id": 1, "task": "a", "done": False}, None),
        (None, {"id": 2, "task": "a", "done": False}),
        ({"id": 1, "task": "a", "done": False}, None),
    ]
    assert [table_at(admin, "todo", t) for t in (t1, t2, t3)] == [
        [{"id": 1, "task": "a", "done": False}], [{"id": 2, "task": "a", "done": False}],
        [{"id": 1, "task": "a", "done": False}]]


def test_rows_from_before_tracking(admin: psycopg.Connection[Any]) -> None:
    """A row the trail never saw created is as the first later change found it, or as it is now."""
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text)")
    admin.execute("INSERT INTO todo VALUES (1, 'old'), (2, 'kept'), (3, 'moved')")
    admin.execute("SELECT bemi.track('todo')")
    t1 = moment(admin)
    admin.execute("UPDATE todo SET task = 'new' WHERE id = 1")
    admin.execute("UPDATE todo SET id = 30 WHERE id = 3")
    ingest(admin)
    assert row_at(admin, "todo", "1", t1) == {"id": 1, "task": "old"}
    assert row_at(admin, "todo", "2", t1) == {"id": 2, "task": "kept"}
    assert row_at(admin, "todo", "3", t1) == {"id": 3, "task": "moved"}
    assert row_at(admin, "todo", "30", t1) is None
    assert table_at(admin, "todo", t1) == [{"id": 1, "task": "old"}, {"id": 2, "task": "kept"}, {"id": 3, "task": "moved"}]


def test_a_renamed_table_is_refused(admin: psycopg.Connection[Any]) -> None:
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'a')")
    at = moment(admin)
    admin.execute("ALTER TABLE todo RENAME TO task")
    admin.execute("UPDATE task SET done = true")
    ingest(admin)
    with fails("0A000", "public.task was renamed since tracking began", "public.todo"):
        row_at(admin, "task", "1", at)


def test_composite_keys_and_odd_names(admin: psycopg.Connection[Any]) -> None:
    admin.execute("""CREATE TABLE "user" ("Org" text, "it's" int, note text, PRIMARY KEY ("Org", "it's"))""")
    admin.execute("""SELECT bemi.track('"user"')""")
    admin.execute("""INSERT INTO "user" VALUES ('a b', 1, 'x')""")
    t1 = moment(admin)
    admin.execute("""UPDATE "user" SET note = 'y'""")
    ingest(admin)
    key = admin.execute("SELECT primary_key FROM bemi.changes LIMIT 1").fetchone()["primary_key"]  # type: ignore[index]
    assert json.loads(key) == ["a b", 1]
    assert row_at(admin, '"user"', key, t1) == {"Org": "a b", "it's": 1, "note": "x"}
    assert table_at(admin, '"user"', t1) == [{"Org": "a b", "it's": 1, "note": "x"}]


def test_a_table_at_a_moment_in_pages(admin: psycopg.Connection[Any]) -> None:
    """bemi.table_page_at walks table_at in key order, a page after another, whatever the key's
    names and types; a row changed since comes as it was, in its place by its key then."""
    admin.execute("""CREATE TABLE "page's" ("Org" text, "n°" numeric, note text, PRIMARY KEY ("Org", "n°"))""")
    admin.execute("""SELECT bemi.track('"page''s"')""")
    admin.execute("""INSERT INTO "page's" SELECT 'org ' || (i % 3), i / 3, 'v' || i FROM generate_series(0, 29) AS i""")
    t1 = moment(admin)
    admin.execute("""UPDATE "page's" SET "n°" = "n°" + 100 WHERE "n°" < 2""")  # keys move to the end
    admin.execute("""DELETE FROM "page's" WHERE note IN ('v7', 'v8')""")
    admin.execute("""INSERT INTO "page's" VALUES ('org 0', 4.5, 'new')""")  # between two keys of then
    ingest(admin)
    whole = rows(admin, 'SELECT * FROM bemi.table_at(NULL::"page\'s", %s) AS t ORDER BY t."Org", t."n°"', [t1])
    assert len(whole) == 30
    pages, after = [], None
    while True:
        page = rows(admin, """SELECT * FROM bemi.table_page_at(NULL::"page's", %s, %s, 7)""", [t1, after])
        pages.append(page)
        if len(page) < 7:
            break
        after = Jsonb({k: str(page[-1][k]) for k in ("Org", "n°")})  # a numeric as its text
    assert [len(p) for p in pages] == [7, 7, 7, 7, 2]
    assert [r for p in pages for r in p] == whole
    with fails("22023", "a page holds at least one row"):
        rows(admin, """SELECT * FROM bemi.table_page_at(NULL::"page's", %s, NULL, 0)""", [t1])
    admin.execute("CREATE TABLE log (line text)")
    admin.execute("SELECT bemi.track('log')")
    with fails("0A000", "has no primary key to page by"):
        rows(admin, "SELECT * FROM bemi.table_page_at(NULL::log, now(), NULL, 10)")


def test_tables_without_a_key(admin: psycopg.Connection[Any]) -> None:
    """Rows are a multiset: duplicates stay duplicates."""
    admin.execute("CREATE TABLE log (line text, n int)")
    admin.execute("SELECT bemi.track('log')")
    admin.execute("INSERT INTO log VALUES ('a', 1), ('a', 1), ('b', 2)")
    t1 = moment(admin)
    admin.execute("UPDATE log SET n = 3 WHERE line = 'b'")
    admin.execute("DELETE FROM log WHERE ctid = (SELECT min(ctid) FROM log WHERE line = 'a')")
    admin.execute("INSERT INTO log VALUES ('c', 4)")
    ingest(admin)
    assert table_at(admin, "log", t1) == [{"line": "a", "n": 1}, {"line": "a", "n": 1}, {"line": "b", "n": 2}]
    with fails("22023", "has no primary key"):
        row_at(admin, "log", "1", t1)


def test_columns_added_and_dropped_since(admin: psycopg.Connection[Any]) -> None:
    """Rows come back in today's shape: a column added later is NULL, a dropped one is gone."""
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text, gone text)")
    admin.execute("SELECT bemi.track('todo')")
    admin.execute("INSERT INTO todo VALUES (1, 'a', 'x'), (2, 'b', 'y'), (3, 'c', 'z')")
    t1 = moment(admin)
    admin.execute("UPDATE todo SET task = 'B' WHERE id = 2")
    admin.execute("ALTER TABLE todo DROP COLUMN gone, ADD COLUMN added int NOT NULL DEFAULT 7")
    admin.execute("UPDATE todo SET task = 'A' WHERE id = 1")
    ingest(admin)
    # Row 1 as the update after the ALTER found it, row 2 as the one before it, row 3 as it is.
    assert table_at(admin, "todo", t1) == [
        {"id": 1, "task": "a", "added": 7}, {"id": 2, "task": "b", "added": None}, {"id": 3, "task": "c", "added": 7}]
    # row_at gives the image as it was stored.
    assert row_at(admin, "todo", "2", t1) == {"id": 2, "task": "b", "gone": "y"}


def test_truncate_hides_what_it_removed(admin: psycopg.Connection[Any]) -> None:
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'a')")
    t1 = moment(admin)
    admin.execute("TRUNCATE todo")
    t2 = moment(admin)
    ingest(admin)
    truncate_id = admin.execute("SELECT id FROM bemi.changes WHERE operation = 'TRUNCATE'").fetchone()["id"]  # type: ignore[index]
    assert row_at(admin, "todo", "1", t1) == {"id": 1, "task": "a", "done": False}  # it has a change before
    assert row_at(admin, "todo", "1", t2) is None
    assert table_at(admin, "todo", t2) == []
    with fails("0A000", "was truncated after", str(truncate_id)):
        table_at(admin, "todo", t1)


def test_incomplete_images_are_refused(admin: psycopg.Connection[Any]) -> None:
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'a'), (2, 'b')")
    t1 = moment(admin)
    admin.execute("UPDATE todo SET task = task || '!'")
    t2 = moment(admin)
    ingest(admin)
    bad = admin.execute("UPDATE bemi.changes SET problem = '22P02: invalid input' "
                        "WHERE operation = 'UPDATE' AND primary_key = '2' RETURNING id").fetchone()["id"]  # type: ignore[index]
    assert row_at(admin, "todo", "1", t2) == {"id": 1, "task": "a!", "done": False}
    assert row_at(admin, "todo", "2", t1) == {"id": 2, "task": "b", "done": False}  # from its CREATE
    with fails("22000", "incomplete row images", str(bad)):
        row_at(admin, "todo", "2", t2)
    with fails("22000", str(bad)):
        table_at(admin, "todo", t1)
    admin.execute("UPDATE bemi.changes SET problem = NULL, partial = true WHERE id = %s", [bad])
    with fails("22000", str(bad)):
        row_at(admin, "todo", "2", t2)


def test_typed_rows_round_trip(admin: psycopg.Connection[Any]) -> None:
    """Types whose JSON is not their text (timestamps, numerics, arrays, json) come back equal."""
    admin.execute("CREATE TABLE t (id timestamptz PRIMARY KEY, n numeric, f float8, a int[], j json, b bytea)")
    admin.execute("SELECT bemi.track('t')")
    admin.execute("INSERT INTO t VALUES ('2026-01-02 03:04:05.678+02', 'NaN', 'Infinity', '{1,NULL}', '{\"b\": 1, \"a\": [2]}', '\\x00ff')")
    admin.execute("CREATE TABLE snapshot AS SELECT * FROM t")
    t1 = moment(admin)
    admin.execute("UPDATE t SET n = 1, f = 2, a = '{}', j = 'null', b = ''")
    ingest(admin)
    admin.execute("SET timezone = 'Asia/Kolkata'")
    differences = admin.execute(
        "SELECT count(*) AS n FROM (SELECT to_jsonb(x) FROM bemi.table_at(NULL::t, %s) x "
        "EXCEPT SELECT to_jsonb(s) FROM snapshot s) d", [t1]).fetchone()
    assert differences == {"n": 0}
    key = admin.execute("SELECT primary_key FROM bemi.changes LIMIT 1").fetchone()["primary_key"]  # type: ignore[index]
    assert row_at(admin, "t", key, t1)["n"] == "NaN"


def test_diff(admin: psycopg.Connection[Any]) -> None:
    diff = admin.execute(
        """SELECT bemi.diff('{"a": 1, "b": [1], "gone": true}', '{"a": 1, "b": [2], "new": null}') AS d""").fetchone()
    assert diff == {"d": {"b": [[1], [2]], "gone": [True, None], "new": [None, None]}}
    assert admin.execute("SELECT bemi.diff('{}', '{}') AS d").fetchone() == {"d": {}}


def test_row_at_reads_one_index_entry(admin: psycopg.Connection[Any]) -> None:
    """row_at's lookups use the (schema, table, primary_key, ...) index, not a scan of the trail."""
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'a')")
    ingest(admin)
    admin.execute(
        "INSERT INTO bemi.changes (schema, \"table\", primary_key, operation, before, after, committed_at, "
        "transaction_id, position, ordinal) SELECT 'public', 'todo', (i % 1000)::text, 'UPDATE', '{}', '{}', "
        "now() - interval '1 day' + i * interval '1 ms', i, ('0/' || to_hex(i))::pg_lsn, 1 FROM generate_series(1, 20000) i")
    admin.execute("ANALYZE bemi.changes")
    plan = admin.execute(
        "EXPLAIN (FORMAT JSON) SELECT * FROM bemi.row_event(NULL, 'public', 'todo', '1', now(), true)").fetchone()
    scans = list(plan_nodes(plan["QUERY PLAN"][0]["Plan"]))  # type: ignore[index]
    keyed = [n for n in scans if "primary_key =" in n.get("Index Cond", "")]
    assert keyed and all(n["Node Type"] in ("Index Scan", "Index Only Scan") for n in keyed)
    assert not [n for n in scans if n["Node Type"] == "Seq Scan"]


def plan_nodes(node: dict[str, Any]) -> Any:
    """Every node of an EXPLAIN (FORMAT JSON) plan."""
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)
