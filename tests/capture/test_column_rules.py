"""Column rules: ignored columns (an UPDATE of only those is not stored), masked columns (never
in the trail), on partitions and after ALTER TABLE; and bemi.erase for erasure requests."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.helpers.trail import changes, ingest


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
