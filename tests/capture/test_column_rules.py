"""Column rules: ignored columns (an UPDATE of only those is not stored), masked columns (never
in the trail), on partitions and after ALTER TABLE; and bemi.erase for erasure requests."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from bemi_pg.ingest.worker import Options
from bemi_pg.ingest.worker import run as run_worker
from tests.helpers.trail import changes, drain, ingest


def images(admin: psycopg.Connection[Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(r["operation"], r["before"], r["after"]) for r in changes(admin, "operation", "before", "after")]


def test_an_update_of_only_ignored_columns_is_not_stored(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY, v text, views int, updated_at int)")
    admin.execute("SELECT bemi.track('t', ignore_columns => ARRAY['views', 'updated_at'])")
    admin.execute("INSERT INTO t VALUES (1, 'a', 0, 0)")
    admin.execute("UPDATE t SET views = views + 1, updated_at = 1")  # not stored
    admin.execute("UPDATE t SET v = 'b', updated_at = 2")  # stored, ignored columns included
    ingest(admin)
    assert images(admin) == [
        ("CREATE", {}, {"id": 1, "v": "a", "views": 0, "updated_at": 0}),
        ("UPDATE", {"id": 1, "v": "a", "views": 1, "updated_at": 1}, {"id": 1, "v": "b", "views": 1, "updated_at": 2}),
    ]


def test_masked_columns_never_reach_the_trail_on_partitions_and_after_alter_table(
        admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE p (id int, region text, ssn text, PRIMARY KEY (id, region)) PARTITION BY LIST (region)")
    admin.execute("CREATE TABLE p_eu PARTITION OF p FOR VALUES IN ('eu')")
    admin.execute("SELECT bemi.track('p', mask_columns => ARRAY['ssn'])")
    admin.execute("INSERT INTO p VALUES (1, 'eu', '123-45-6789')")
    admin.execute("ALTER TABLE p ADD COLUMN note text")
    admin.execute("UPDATE p SET ssn = '987-65-4321', note = 'moved'")
    admin.execute("DELETE FROM p")
    ingest(admin)
    assert images(admin) == [
        ("CREATE", {}, {"id": 1, "region": "eu", "ssn": "[masked]"}),
        ("UPDATE", {"id": 1, "region": "eu", "ssn": "[masked]", "note": None},
         {"id": 1, "region": "eu", "ssn": "[masked]", "note": "moved"}),
        ("DELETE", {"id": 1, "region": "eu", "ssn": "[masked]", "note": "moved"}, {}),
    ]
    stored = admin.execute("SELECT count(*) AS n FROM bemi.changes WHERE before::text LIKE '%45%' OR after::text LIKE '%45%'")
    assert stored.fetchone() == {"n": 0}


def test_masked_columns_stay_masked_in_changes_that_cannot_be_converted(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY, doc json, secret text)")
    admin.execute("SELECT bemi.track('t', mask_columns => ARRAY['secret'])")
    admin.execute("""INSERT INTO t VALUES (1, '{"a": "\\u0000"}', 'hunter2')""")
    ingest(admin)
    row = changes(admin, "after", "problem")[0]
    assert row["problem"] is not None and row["after"]["secret"] == "[masked]"


# Masking holds whoever stores: bemi.ingest(), the streaming worker, and the worker storing into
# a trail database (which gets the rules from the source, bemi.describe_relation).
PATHS = ["sql", "worker", "trail database"]


def store(path: str, dsn: str, admin: psycopg.Connection[Any], trail: str) -> AbstractContextManager[Any]:
    """Stores what is pending by path; gives a connection to where the trail is."""
    if path == "sql":
        ingest(admin)
    else:
        drain(dsn, trail if path == "trail database" else dsn)
    if path == "trail database":
        return psycopg.connect(trail, autocommit=True, row_factory=dict_row)
    return nullcontext(admin)


@pytest.mark.parametrize("path", PATHS)
def test_masking_holds_across_untrack_and_renames_with_changes_pending(
        path: str, dsn: str, admin: psycopg.Connection[Any], trail: str) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY, ssn text, pin text)")
    admin.execute("SELECT bemi.track('t', mask_columns => ARRAY['ssn', 'pin'])")
    admin.execute("INSERT INTO t VALUES (1, 'ssn-before-rename', 'pin-1')")
    admin.execute("ALTER TABLE t RENAME COLUMN ssn TO social")
    admin.execute("INSERT INTO t VALUES (2, 'ssn-after-rename', 'pin-2')")
    admin.execute("SELECT bemi.track('t')")  # tracking again keeps the rules, renamed columns too
    admin.execute("INSERT INTO t VALUES (3, 'ssn-tracked-again', 'pin-3')")
    admin.execute("SELECT bemi.untrack('t')")  # with all three changes still in the slot
    with store(path, dsn, admin, trail) as where:
        rows = [r["after"] for r in changes(where, "after")]
        assert rows == [{"id": 1, "ssn": "[masked]", "pin": "[masked]"},
                        {"id": 2, "social": "[masked]", "pin": "[masked]"},
                        {"id": 3, "social": "[masked]", "pin": "[masked]"}]
        leaked = where.execute("SELECT count(*) AS n FROM bemi.changes WHERE after::text ~ 'ssn-|pin-'").fetchone()
        assert leaked == {"n": 0}
    # Once ingest has gone past the untrack, its rules are no longer needed.
    if path != "trail database":
        assert admin.execute("SELECT count(*) AS n FROM bemi.untracked").fetchone() == {"n": 0}


@pytest.mark.parametrize("path", PATHS)
def test_an_update_of_only_a_masked_column_is_stored_when_other_columns_are_ignored(
        path: str, dsn: str, admin: psycopg.Connection[Any], trail: str) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY, secret text, seen int)")
    admin.execute("SELECT bemi.track('t', ignore_columns => ARRAY['seen'], mask_columns => ARRAY['secret'])")
    admin.execute("INSERT INTO t VALUES (1, 'a', 0)")
    admin.execute("UPDATE t SET secret = 'b'")  # stored: a change, though both images read [masked]
    admin.execute("UPDATE t SET seen = 1")  # not stored: ignored
    with store(path, dsn, admin, trail) as where:
        assert [(r["operation"], r["after"]) for r in changes(where, "operation", "after")] == [
            ("CREATE", {"id": 1, "secret": "[masked]", "seen": 0}),
            ("UPDATE", {"id": 1, "secret": "[masked]", "seen": 0})]


def test_values_of_a_type_dropped_with_changes_pending_are_stored_as_text_and_marked(
        admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE DOMAIN small AS int CHECK (VALUE < 100)")
    admin.execute("CREATE TABLE t (id int PRIMARY KEY, n small, keep int)")
    admin.execute("SELECT bemi.track('t')")
    admin.execute("INSERT INTO t VALUES (1, 5, 6)")
    admin.execute("DROP DOMAIN small CASCADE")  # drops the column n, with the INSERT pending
    admin.execute("INSERT INTO t VALUES (2, 7)")
    ingest(admin)
    first, second = changes(admin, "after", "problem")
    assert first["after"] == {"id": 1, "n": "5", "keep": 6}
    assert first["problem"] == "bemi: the type of n no longer exists: stored as text"
    assert second == {"after": {"id": 2, "keep": 7}, "problem": None}


@pytest.mark.parametrize("path", ["sql", "worker"])
def test_values_of_a_type_whose_attributes_changed_with_changes_pending_are_stored_as_text_and_marked(
        path: str, dsn: str, admin: psycopg.Connection[Any]) -> None:
    """The WAL holds a composite value's attributes in order, without names: read after a
    swap of the names, (1,2) came out as {"x": 2, "y": 1}. Written before the ALTER TYPE, it is
    kept as the text it was written as, marked; so is an array of the type, or a composite
    holding it; written after, it is read with the names it has."""
    admin.execute("CREATE TYPE pair AS (x int, y int)")
    admin.execute("CREATE TYPE outer_pair AS (p pair, label text)")
    admin.execute("CREATE TYPE mood AS ENUM ('calm')")
    admin.execute("CREATE TABLE t (id int PRIMARY KEY, p pair, ps pair[], o outer_pair, n int, m mood)")
    admin.execute("SELECT bemi.track('t')")
    admin.execute("INSERT INTO t VALUES (1, '(1,2)', ARRAY['(3,4)']::pair[], '(\"(5,6)\",a)', 7, 'calm')")
    # Changes of a type that leave its attributes as they were: its values are read as ever.
    admin.execute("ALTER TYPE mood ADD VALUE 'glad'")
    admin.execute("ALTER TYPE pair OWNER TO CURRENT_USER")
    admin.execute("ALTER TYPE pair RENAME ATTRIBUTE x TO tmp")
    admin.execute("ALTER TYPE pair RENAME ATTRIBUTE y TO x")
    admin.execute("ALTER TYPE pair RENAME ATTRIBUTE tmp TO y")
    admin.execute("INSERT INTO t VALUES (2, '(1,2)', NULL, NULL, 8, 'glad')")
    if path == "sql":
        ingest(admin)
    else:
        run_worker(Options(dsn, drain=True, interval=0.05), threading.Event(), lambda _: None)
    first, second = changes(admin, "after", "problem")
    assert first["after"] == {"id": 1, "p": "(1,2)", "ps": '{"(3,4)"}', "o": '("(5,6)",a)', "n": 7, "m": "calm"}
    assert first["problem"] == "bemi: the type of p, ps, o changed its attributes since: stored as text"
    assert second["after"]["p"] == {"y": 1, "x": 2} and second["problem"] is None


def test_rules_are_checked(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    with pytest.raises(psycopg.errors.UndefinedColumn, match=r'^bemi: (public\.)?t has no column nope'):
        admin.execute("SELECT bemi.track('t', ignore_columns => ARRAY['nope'])")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"^bemi: the primary key of (public\.)?t cannot be masked"):
        admin.execute("SELECT bemi.track('t', mask_columns => ARRAY['id'])")


def test_tracking_again_keeps_the_rules_unless_given(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY, v text, secret text)")
    admin.execute("SELECT bemi.track('t', mask_columns => ARRAY['secret'])")
    admin.execute("SELECT bemi.track('t')")
    assert admin.execute("SELECT mask_columns FROM bemi.tracking").fetchone() == {"mask_columns": ["secret"]}
    admin.execute("SELECT bemi.track('t', mask_columns => '{}')")
    assert admin.execute("SELECT mask_columns FROM bemi.tracking").fetchone() == {"mask_columns": []}


def test_erase_masks_every_stored_change_of_one_row_and_records_the_request(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE people (id int PRIMARY KEY, name text, email text)")
    admin.execute("SELECT bemi.track('people')")
    admin.execute("INSERT INTO people VALUES (1, 'Ann', 'ann@example.com'), (2, 'Bob', 'bob@example.com')")
    admin.execute("UPDATE people SET email = 'ann@new.example' WHERE id = 1")
    ingest(admin)
    erased = admin.execute("SELECT bemi.erase('people', '1') AS n").fetchone()
    assert erased == {"n": 2}
    assert images(admin) == [
        ("CREATE", {}, {"id": 1, "name": "[erased]", "email": "[erased]"}),
        ("CREATE", {}, {"id": 2, "name": "Bob", "email": "bob@example.com"}),
        ("UPDATE", {"id": 1, "name": "[erased]", "email": "[erased]"}, {"id": 1, "name": "[erased]", "email": "[erased]"}),
    ]
    admin.execute("SELECT bemi.erase('people', '2', ARRAY['email'])")
    assert changes(admin, "after")[1]["after"] == {"id": 2, "name": "Bob", "email": "[erased]"}
    log = admin.execute("SELECT schema, \"table\", primary_key, columns, erased_by = current_user AS by_me, changes "
                        "FROM bemi.erasures ORDER BY erased_at").fetchall()
    assert log == [
        {"schema": "public", "table": "people", "primary_key": "1", "columns": ["name", "email"], "by_me": True, "changes": 2},
        {"schema": "public", "table": "people", "primary_key": "2", "columns": ["email"], "by_me": True, "changes": 1},
    ]
    assert "ann@" not in str(admin.execute("SELECT * FROM bemi.erasures").fetchall())
