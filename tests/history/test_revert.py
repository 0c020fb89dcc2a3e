"""Revert: bemi.revert, bemi.revert_transaction and bemi.revert_context, one test per rule of
docs/time-travel.md, each asserting the table contents and the rows of the trail."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import bemi_pg
from tests.helpers.history import fails, rows
from tests.helpers.trail import changes, ingest


def todo(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL, done boolean NOT NULL DEFAULT false)")
    admin.execute("SELECT bemi.track('todo')")


def last_transaction(admin: psycopg.Connection[Any]) -> int:
    """The transaction id of the newest change in the trail (ingested first)."""
    ingest(admin)
    row = admin.execute("SELECT transaction_id FROM bemi.changes ORDER BY id DESC LIMIT 1").fetchone()
    assert row is not None
    return int(row["transaction_id"])


def revert_transaction(admin: psycopg.Connection[Any], xid: int, on_conflict: str = "error") -> list[tuple[str, str]]:
    """Reverts one transaction; returns (primary key, action) of each row, in key order."""
    done = admin.execute("SELECT * FROM bemi.revert_transaction(%s, %s)", [xid, on_conflict]).fetchall()
    return sorted((r["primary_key"], r["action"]) for r in done)


def table(admin: psycopg.Connection[Any], name: str = "todo") -> list[dict[str, Any]]:
    return rows(admin, f"SELECT * FROM {name}")


def test_several_updates_of_one_row_in_one_transaction(admin: psycopg.Connection[Any]) -> None:
    """Net effect: the first before comes back, in one write (the peer's #110)."""
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'a')")
    with admin.transaction():
        admin.execute("UPDATE todo SET task = 'b' WHERE id = 1")
        admin.execute("UPDATE todo SET task = 'c', done = true WHERE id = 1")
        admin.execute("UPDATE todo SET task = 'd' WHERE id = 1")
    xid = last_transaction(admin)
    assert revert_transaction(admin, xid) == [("1", "updated")]
    assert table(admin) == [{"id": 1, "task": "a", "done": False}]
    ingest(admin)
    revert = changes(admin, "operation", "before", "after")[-1]
    assert revert == {"operation": "UPDATE", "before": {"id": 1, "task": "d", "done": True},
                      "after": {"id": 1, "task": "a", "done": False}}


def test_created_rows_deleted_deleted_rows_back_updated_rows_set_back(admin: psycopg.Connection[Any]) -> None:
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'keep'), (2, 'gone'), (3, 'edit')")
    with admin.transaction():
        admin.execute("INSERT INTO todo VALUES (4, 'new')")
        admin.execute("DELETE FROM todo WHERE id = 2")
        admin.execute("UPDATE todo SET done = true WHERE id = 3")
    xid = last_transaction(admin)
    assert revert_transaction(admin, xid) == [("2", "inserted"), ("3", "updated"), ("4", "deleted")]
    assert table(admin) == [{"id": 1, "task": "keep", "done": False}, {"id": 2, "task": "gone", "done": False},
                            {"id": 3, "task": "edit", "done": False}]


def test_created_then_deleted_in_the_set_is_left_alone(admin: psycopg.Connection[Any]) -> None:
    todo(admin)
    with admin.transaction():
        admin.execute("INSERT INTO todo VALUES (1, 'brief')")
        admin.execute("DELETE FROM todo WHERE id = 1")
    xid = last_transaction(admin)
    assert revert_transaction(admin, xid) == [("1", "unchanged")]
    assert table(admin) == []


def test_a_primary_key_changed_inside_the_set_is_followed(admin: psycopg.Connection[Any]) -> None:
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'a')")
    with admin.transaction():
        admin.execute("UPDATE todo SET id = 2 WHERE id = 1")
        admin.execute("UPDATE todo SET id = 3, task = 'b' WHERE id = 2")
    xid = last_transaction(admin)
    assert revert_transaction(admin, xid) == [("1", "updated")]
    assert table(admin) == [{"id": 1, "task": "a", "done": False}]


def conflict_setup(admin: psycopg.Connection[Any]) -> int:
    """Rows 1 and 2 updated by one transaction, then row 2 edited again by someone else."""
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'a'), (2, 'b')")
    admin.execute("UPDATE todo SET task = task || '!'")
    xid = last_transaction(admin)
    admin.execute("UPDATE todo SET done = true WHERE id = 2")
    return xid


def test_a_conflict_is_an_error_and_nothing_changes(admin: psycopg.Connection[Any]) -> None:
    xid = conflict_setup(admin)
    ids = [r["id"] for r in admin.execute("SELECT id FROM bemi.changes WHERE primary_key = '2' AND operation = 'UPDATE'")]
    with fails("55000", "1 rows changed since, nothing was reverted", f"public.todo 2 (changes {ids[0]})"):
        revert_transaction(admin, xid)
    assert table(admin) == [{"id": 1, "task": "a!", "done": False}, {"id": 2, "task": "b!", "done": True}]


def test_a_conflict_is_skipped(admin: psycopg.Connection[Any]) -> None:
    xid = conflict_setup(admin)
    assert revert_transaction(admin, xid, "skip") == [("1", "updated"), ("2", "skipped")]
    assert table(admin) == [{"id": 1, "task": "a", "done": False}, {"id": 2, "task": "b!", "done": True}]


def test_a_conflict_is_overwritten(admin: psycopg.Connection[Any]) -> None:
    xid = conflict_setup(admin)
    assert revert_transaction(admin, xid, "overwrite") == [("1", "updated"), ("2", "updated")]
    assert table(admin) == [{"id": 1, "task": "a", "done": False}, {"id": 2, "task": "b", "done": False}]


def test_conflicts_on_missing_and_new_rows(admin: psycopg.Connection[Any]) -> None:
    """A re-insert conflicts with a row that took the key; a delete with a row already gone is done."""
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'a')")
    with admin.transaction():
        admin.execute("DELETE FROM todo WHERE id = 1")
        admin.execute("INSERT INTO todo VALUES (2, 'b')")
    xid = last_transaction(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'other')")
    admin.execute("DELETE FROM todo WHERE id = 2")
    with fails("55000", "public.todo 1"):
        revert_transaction(admin, xid)
    assert revert_transaction(admin, xid, "skip") == [("1", "skipped"), ("2", "unchanged")]
    assert revert_transaction(admin, xid, "overwrite") == [("1", "updated"), ("2", "unchanged")]
    assert table(admin) == [{"id": 1, "task": "a", "done": False}]


def family(admin: psycopg.Connection[Any], on_delete: str = "", deferrable: str = "") -> None:
    admin.execute("CREATE TABLE parent (id int PRIMARY KEY, name text)")
    admin.execute(f"CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent {on_delete} {deferrable})")
    admin.execute("CREATE TABLE grandchild (id int PRIMARY KEY, child_id int REFERENCES child ON DELETE CASCADE)")
    admin.execute("SELECT bemi.track_all()")


def test_foreign_keys_parents_first_children_first(admin: psycopg.Connection[Any]) -> None:
    family(admin)
    with admin.transaction():  # children inserted last, so the revert must delete them first
        admin.execute("INSERT INTO parent VALUES (1, 'p')")
        admin.execute("INSERT INTO child VALUES (10, 1)")
        admin.execute("INSERT INTO grandchild VALUES (100, 10)")
    created = last_transaction(admin)
    assert revert_transaction(admin, created) == [("1", "deleted"), ("10", "deleted"), ("100", "deleted")]
    assert table(admin, "parent") == table(admin, "child") == []
    admin.execute("INSERT INTO parent VALUES (2, 'q')")
    admin.execute("INSERT INTO child VALUES (20, 2)")
    with admin.transaction():  # children deleted first, so the revert must insert the parent first
        admin.execute("DELETE FROM child")
        admin.execute("DELETE FROM parent")
    deleted = last_transaction(admin)
    assert revert_transaction(admin, deleted) == [("2", "inserted"), ("20", "inserted")]
    assert table(admin, "child") == [{"id": 20, "parent_id": 2}]


def test_on_delete_cascade_chains(admin: psycopg.Connection[Any]) -> None:
    """The cascade's deletes are changes of the same transaction: all come back, parents first."""
    family(admin, on_delete="ON DELETE CASCADE")
    admin.execute("INSERT INTO parent VALUES (1, 'p')")
    admin.execute("INSERT INTO child VALUES (10, 1), (11, 1)")
    admin.execute("INSERT INTO grandchild VALUES (100, 10), (101, 11)")
    admin.execute("DELETE FROM parent WHERE id = 1")
    xid = last_transaction(admin)
    assert len(revert_transaction(admin, xid)) == 5
    assert table(admin, "grandchild") == [{"id": 100, "child_id": 10}, {"id": 101, "child_id": 11}]
    # And back: reverting the inserts deletes the parent; the cascade takes the rest first or not, the result is one.
    ingest(admin)
    revert_xid = last_transaction(admin)
    assert {a for _, a in revert_transaction(admin, revert_xid)} <= {"deleted", "unchanged"}
    assert table(admin, "parent") == table(admin, "child") == table(admin, "grandchild") == []


def test_self_referencing_table(admin: psycopg.Connection[Any]) -> None:
    """A tree deleted by a cascade comes back root first, though the trail holds it root first too."""
    admin.execute("CREATE TABLE node (id int PRIMARY KEY, parent int REFERENCES node ON DELETE CASCADE)")
    admin.execute("SELECT bemi.track('node')")
    admin.execute("INSERT INTO node VALUES (1, NULL), (2, 1), (3, 2), (4, 3), (5, 1)")
    admin.execute("DELETE FROM node WHERE id = 1")
    xid = last_transaction(admin)
    assert [a for _, a in revert_transaction(admin, xid)] == ["inserted"] * 5
    assert table(admin, "node") == [{"id": i, "parent": p} for i, p in [(1, None), (2, 1), (3, 2), (4, 3), (5, 1)]]


def test_deferrable_constraints_are_honoured(admin: psycopg.Connection[Any]) -> None:
    family(admin, deferrable="DEFERRABLE INITIALLY DEFERRED")
    with admin.transaction():  # legal only because the check waits for the commit
        admin.execute("INSERT INTO child VALUES (10, 1)")
        admin.execute("INSERT INTO parent VALUES (1, 'p')")
    xid = last_transaction(admin)
    with admin.transaction():
        assert revert_transaction(admin, xid) == [("1", "deleted"), ("10", "deleted")]
    assert table(admin, "child") == table(admin, "parent") == []


def test_columns_that_changed_shape(admin: psycopg.Connection[Any]) -> None:
    """Added since: default (or NULL); dropped since: ignored; generated: skipped; identity
    GENERATED ALWAYS: written with OVERRIDING SYSTEM VALUE."""
    admin.execute("CREATE TABLE item (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, price int, "
                  "doubled int GENERATED ALWAYS AS (price * 2) STORED, gone text)")
    admin.execute("SELECT bemi.track('item')")
    admin.execute("INSERT INTO item (price, gone) VALUES (10, 'x'), (20, 'y')")
    with admin.transaction():
        admin.execute("DELETE FROM item WHERE price = 10")
        admin.execute("UPDATE item SET price = 21")
    xid = last_transaction(admin)
    admin.execute("ALTER TABLE item DROP COLUMN gone, ADD COLUMN note text DEFAULT 'n/a', ADD COLUMN extra int")
    assert revert_transaction(admin, xid) == [("1", "inserted"), ("2", "updated")]
    assert table(admin, "item") == [{"id": 1, "price": 10, "doubled": 20, "note": "n/a", "extra": None},
                                    {"id": 2, "price": 20, "doubled": 40, "note": "n/a", "extra": None}]


def test_the_revert_is_tracked_and_can_be_reverted(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> None:
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'a')")
    admin.execute("UPDATE todo SET task = 'b'")
    xid = last_transaction(admin)
    reverted = [r["id"] for r in admin.execute("SELECT id FROM bemi.changes WHERE transaction_id = %s", [xid])]
    with bemi_pg.with_context(conn, {"user_id": 7}):
        conn.execute("SELECT * FROM bemi.revert_transaction(%s)", [xid])
        assert conn.execute("SELECT bemi.context()").fetchone() == ({"user_id": 7},)  # the caller's again
        conn.execute("INSERT INTO todo VALUES (2, 'after')")
    ingest(admin)
    trail = changes(admin, "primary_key", "operation", "after", "context")[-2:]
    assert trail == [
        {"primary_key": "1", "operation": "UPDATE", "after": {"id": 1, "task": "a", "done": False},
         "context": {"user_id": 7, "bemi_revert": {"change_ids": reverted}}},
        {"primary_key": "2", "operation": "CREATE", "after": {"id": 2, "task": "after", "done": False},
         "context": {"user_id": 7}},
    ]
    revert_of_revert = admin.execute("SELECT id FROM bemi.changes WHERE context ? 'bemi_revert'").fetchone()
    assert revert_of_revert is not None
    admin.execute("SELECT * FROM bemi.revert(ARRAY[%s]::bigint[])", [revert_of_revert["id"]])
    assert table(admin) == [{"id": 1, "task": "b", "done": False}, {"id": 2, "task": "after", "done": False}]


def test_revert_context_since(admin: psycopg.Connection[Any], conn: psycopg.Connection[Any]) -> None:
    """Rolling back one request: every change whose context contains its request id."""
    todo(admin)
    for request, task in (("r1", "a"), ("r2", "b"), ("r1", "c")):
        with bemi_pg.with_context(conn, {"request_id": request}):
            conn.execute("INSERT INTO todo VALUES (%s, %s)", [ord(task), task])
    ingest(admin)
    since = admin.execute("SELECT committed_at FROM bemi.changes WHERE after ->> 'task' = 'c'").fetchone()["committed_at"]  # type: ignore[index]
    done = admin.execute("""SELECT * FROM bemi.revert_context('{"request_id": "r1"}', %s)""", [since]).fetchall()
    assert [(r["primary_key"], r["action"]) for r in done] == [("99", "deleted")]
    admin.execute("""SELECT * FROM bemi.revert_context('{"request_id": "r1"}')""")
    assert table(admin) == [{"id": 98, "task": "b", "done": False}]
    with fails("22023", "must be a JSON object"):
        admin.execute("SELECT * FROM bemi.revert_context('[1]')")
    with fails("22023", "no changes with context"):
        admin.execute("""SELECT * FROM bemi.revert_context('{"request_id": "none"}')""")


def test_truncate_in_the_set_is_an_error(admin: psycopg.Connection[Any]) -> None:
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'a')")
    admin.execute("TRUNCATE todo")
    xid = last_transaction(admin)
    truncate = admin.execute("SELECT id FROM bemi.changes WHERE operation = 'TRUNCATE'").fetchone()["id"]  # type: ignore[index]
    with pytest.raises(psycopg.errors.FeatureNotSupported) as caught:
        revert_transaction(admin, xid)
    assert f"changes {{{truncate}}} are TRUNCATEs" in str(caught.value)
    assert caught.value.diag.message_hint and "not write the rows it removes to the WAL" in caught.value.diag.message_hint


def test_bad_arguments(admin: psycopg.Connection[Any]) -> None:
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'a')")
    ingest(admin)
    with fails("22023", "on_conflict must be"):
        admin.execute("SELECT * FROM bemi.revert(ARRAY[1]::bigint[], 'later')")
    with fails("22023", "no changes with ids {404}"):
        admin.execute("SELECT * FROM bemi.revert(ARRAY[1, 404]::bigint[])")
    with fails("22023", "no changes of transaction 1"):
        admin.execute("SELECT * FROM bemi.revert_transaction(1)")
    with fails("22023", "must not be NULL"):
        admin.execute("SELECT * FROM bemi.revert(NULL)")
    assert admin.execute("SELECT * FROM bemi.revert('{}')").fetchall() == []
    admin.execute("UPDATE bemi.changes SET problem = 'x'")
    with fails("22000", "incomplete row images"):
        admin.execute("SELECT * FROM bemi.revert(ARRAY[1]::bigint[])")


def test_tables_without_a_key(admin: psycopg.Connection[Any]) -> None:
    """Rows are matched by value; each of two equal rows is reverted once."""
    admin.execute("CREATE TABLE log (line text, n int)")
    admin.execute("SELECT bemi.track('log')")
    admin.execute("INSERT INTO log VALUES ('a', 1), ('a', 1), ('b', 2)")
    with admin.transaction():
        admin.execute("UPDATE log SET n = 5 WHERE line = 'a'")
        admin.execute("DELETE FROM log WHERE line = 'b'")
    xid = last_transaction(admin)
    assert sorted(a for _, a in revert_transaction(admin, xid)) == ["inserted", "updated", "updated"]
    assert table(admin, "log") == [{"line": "a", "n": 1}, {"line": "a", "n": 1}, {"line": "b", "n": 2}]


def test_equal_rows_changed_twice_in_one_transaction(admin: psycopg.Connection[Any]) -> None:
    """Found by the property test: equal rows of a table without a key, each updated twice."""
    admin.execute('CREATE TABLE log ("0" bigint)')
    admin.execute("INSERT INTO log VALUES (NULL)")
    admin.execute("SELECT bemi.track('log')")
    with admin.transaction():
        admin.execute("INSERT INTO log VALUES (NULL)")
        admin.execute('UPDATE log SET "0" = 0')
        admin.execute('UPDATE log SET "0" = NULL')
    xid = last_transaction(admin)
    assert sorted(a for _, a in revert_transaction(admin, xid)) == ["deleted", "unchanged"]
    assert table(admin, "log") == [{"0": None}]


def test_masked_ignored_and_erased_columns(admin: psycopg.Connection[Any]) -> None:
    """Masked and erased values are unknown to the trail: never written back, NULL when time
    travelling. Ignored columns may be stale in the trail: never written back (a later value the
    trail never saw stays), never a conflict."""
    admin.execute("CREATE TABLE people (id int PRIMARY KEY, name text, secret text, seen_at int)")
    admin.execute("INSERT INTO people VALUES (1, 'a', 's1', 0)")
    admin.execute("SELECT bemi.track('people', ignore_columns => ARRAY['seen_at'], mask_columns => ARRAY['secret'])")
    at = admin.execute("SELECT clock_timestamp() AS t").fetchone()["t"]  # type: ignore[index]
    admin.execute("UPDATE people SET name = 'b', secret = 's2', seen_at = 1")
    xid = last_transaction(admin)
    admin.execute("UPDATE people SET seen_at = 2")  # not stored
    admin.execute("SELECT bemi.ingest()")  # (pending, it would be refused: 55000)
    assert rows(admin, "SELECT * FROM bemi.table_at(NULL::people, %s)", [at]) == [
        {"id": 1, "name": "a", "secret": None, "seen_at": 0}]
    assert revert_transaction(admin, xid) == [("1", "updated")]
    assert table(admin, "people") == [{"id": 1, "name": "a", "secret": "s2", "seen_at": 2}]
    admin.execute("SELECT bemi.erase('people', '1', ARRAY['name'])")
    admin.execute("SELECT bemi.ingest()")  # the revert's writes
    assert rows(admin, "SELECT * FROM bemi.table_at(NULL::people, %s)", [at]) == [
        {"id": 1, "name": None, "secret": None, "seen_at": 0}]


def test_partitioned_tables(admin: psycopg.Connection[Any]) -> None:
    """Changes of partitions are the parent's: time travel and revert go through it, even
    for a row that moved to another partition."""
    admin.execute("CREATE TABLE event (id int, region text, note text, PRIMARY KEY (id, region)) PARTITION BY LIST (region)")
    admin.execute("CREATE TABLE event_eu PARTITION OF event FOR VALUES IN ('eu')")
    admin.execute("CREATE TABLE event_us PARTITION OF event FOR VALUES IN ('us')")
    admin.execute("SELECT bemi.track('event')")
    admin.execute("INSERT INTO event VALUES (1, 'eu', 'a'), (2, 'us', 'b')")
    at = admin.execute("SELECT clock_timestamp() AS t").fetchone()["t"]  # type: ignore[index]
    with admin.transaction():
        admin.execute("UPDATE event SET region = 'us' WHERE id = 1")  # moves the row to event_us
        admin.execute("DELETE FROM event WHERE id = 2")
    xid = last_transaction(admin)
    before = [{"id": 1, "region": "eu", "note": "a"}, {"id": 2, "region": "us", "note": "b"}]
    assert rows(admin, "SELECT * FROM bemi.table_at(NULL::event, %s)", [at]) == before
    # The move between partitions is in the WAL as a DELETE and an INSERT: reverted as such.
    assert sorted(a for _, a in revert_transaction(admin, xid)) == ["deleted", "inserted", "inserted"]
    assert rows(admin, "SELECT tableoid::regclass::text AS p, * FROM event") == [
        {"p": "event_eu", "id": 1, "region": "eu", "note": "a"}, {"p": "event_us", "id": 2, "region": "us", "note": "b"}]


def test_a_revert_locks_its_rows_until_it_ends(dsn: str, admin: psycopg.Connection[Any]) -> None:
    """Checked rows stay as checked: a concurrent writer waits for the reverting transaction."""
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'a')")
    admin.execute("UPDATE todo SET task = 'b'")
    xid = last_transaction(admin)
    with psycopg.connect(dsn) as reverter, psycopg.connect(dsn, autocommit=True) as writer:
        reverter.execute("SELECT * FROM bemi.revert_transaction(%s)", [xid])
        writer.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            writer.execute("UPDATE todo SET task = 'c' WHERE id = 1")
        reverter.commit()
        writer.execute("UPDATE todo SET done = true WHERE id = 1")
    assert table(admin) == [{"id": 1, "task": "a", "done": True}]


def test_user_triggers_fire_and_the_caller_needs_the_privileges(dsn: str, admin: psycopg.Connection[Any]) -> None:
    """A revert writes as its caller: the caller's triggers fire, and a role that may not update
    the table may not revert its changes."""
    todo(admin)
    admin.execute("ALTER TABLE todo ADD COLUMN touched int NOT NULL DEFAULT 0")
    admin.execute("CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$ BEGIN NEW.touched := OLD.touched + 1; RETURN NEW; END $$")
    admin.execute("CREATE TRIGGER touch BEFORE UPDATE ON todo FOR EACH ROW EXECUTE FUNCTION touch()")
    admin.execute("INSERT INTO todo VALUES (1, 'a')")
    admin.execute("UPDATE todo SET task = 'b'")
    xid = last_transaction(admin)
    admin.execute("CREATE ROLE reader LOGIN")
    admin.execute("GRANT SELECT ON todo, bemi.changes TO reader")
    with psycopg.connect(dsn, user="reader", autocommit=True) as reader:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("SELECT * FROM bemi.revert_transaction(%s)", [xid])
    assert table(admin) == [{"id": 1, "task": "b", "done": False, "touched": 1}]
    admin.execute("GRANT UPDATE ON todo TO reader")
    with psycopg.connect(dsn, user="reader", autocommit=True) as reader:
        reader.execute("SELECT * FROM bemi.revert_transaction(%s)", [xid])
    assert table(admin) == [{"id": 1, "task": "a", "done": False, "touched": 2}]
