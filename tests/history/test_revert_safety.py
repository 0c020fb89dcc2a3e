"""A revert never writes wrong data (issue 20): a match-everything filter is refused unless
asked for, a table is matched by identity (renames followed, a new table of the same name never
touched), a preview shows the values each row would get, a range of transactions is reverted in
one call; from SQL, Python, Django's queryset and SQLAlchemy."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sqlalchemy import Text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import bemi_pg
import bemi_pg.sqlalchemy
from tests.helpers.history import fails, moment, rows
from tests.helpers.sqlalchemy_app import url
from tests.helpers.trail import ingest


def todo(admin: psycopg.Connection[Any], name: str = "todo") -> None:
    admin.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, task text NOT NULL)")
    admin.execute("SELECT bemi.track(%s)", [name])


def xid_of(admin: psycopg.Connection[Any], query: str) -> int:
    row = admin.execute(query + " RETURNING pg_current_xact_id()::text::bigint AS x").fetchone()
    assert row is not None
    return row["x"]  # type: ignore[no-any-return]


def test_the_empty_context_is_refused_unless_asked_for(dsn: str, admin: psycopg.Connection[Any]) -> None:
    todo(admin)
    with bemi_pg.context({"request_id": "r1"}), psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO todo VALUES (1, 'a')")
    admin.execute("INSERT INTO todo VALUES (2, 'b')")
    ingest(admin)
    with fails("22023", "the empty context matches every change"):
        admin.execute("SELECT * FROM bemi.revert_context('{}')")
    with fails("22023", "the empty context matches every change"):
        bemi_pg.revert(admin, context={})
    assert rows(admin, "SELECT * FROM todo") == [{"id": 1, "task": "a"}, {"id": 2, "task": "b"}]
    with admin.transaction(force_rollback=True):
        done = admin.execute("SELECT action FROM bemi.revert_context('{}', match_all => true)").fetchall()
        assert [r["action"] for r in done] == ["deleted", "deleted"]
        assert rows(admin, "SELECT * FROM todo") == []
    with admin.transaction(force_rollback=True):
        assert [r.action for r in bemi_pg.revert(admin, context={}, match_all=True)] == ["deleted", "deleted"]


def test_a_new_table_of_the_same_name_is_never_written(admin: psycopg.Connection[Any]) -> None:
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'old')")
    admin.execute("DROP TABLE todo")
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (2, 'new')")
    ingest(admin)
    old = admin.execute("SELECT min(id) AS i FROM bemi.changes").fetchone()["i"]  # type: ignore[index]
    with fails("22023", f"change {old} is of the table public.todo, which does not exist any more"):
        admin.execute("SELECT * FROM bemi.revert(ARRAY[%s]::bigint[])", [old])
    assert rows(admin, "SELECT * FROM todo") == [{"id": 2, "task": "new"}]
    # The new table's own changes revert as usual.
    new = admin.execute("SELECT max(id) AS i FROM bemi.changes").fetchone()["i"]  # type: ignore[index]
    assert [r["action"] for r in admin.execute("SELECT action FROM bemi.revert(ARRAY[%s]::bigint[])", [new])] == ["deleted"]


def test_a_renamed_table_is_followed(admin: psycopg.Connection[Any]) -> None:
    todo(admin)
    xid = xid_of(admin, "INSERT INTO todo VALUES (1, 'a')")
    admin.execute("ALTER TABLE todo RENAME TO task")
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL)")
    admin.execute("INSERT INTO todo VALUES (1, 'other')")
    ingest(admin)
    assert [r["action"] for r in admin.execute("SELECT action FROM bemi.revert_transaction(%s)", [xid])] == ["deleted"]
    assert rows(admin, "SELECT * FROM task") == []
    assert rows(admin, "SELECT * FROM todo") == [{"id": 1, "task": "other"}]


def test_the_preview_shows_the_values_and_writes_nothing(admin: psycopg.Connection[Any]) -> None:
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'a'), (2, 'b')")
    with admin.transaction():
        admin.execute("UPDATE todo SET task = 'A' WHERE id = 1")
        admin.execute("DELETE FROM todo WHERE id = 2")
        admin.execute("INSERT INTO todo VALUES (3, 'c')")
    ingest(admin)
    ids = [r["id"] for r in admin.execute("SELECT id FROM bemi.changes WHERE operation <> 'CREATE' OR primary_key = '3'")]
    preview = rows(admin, "SELECT primary_key, action, new_values FROM bemi.revert_preview(%s::bigint[])", [ids])
    assert preview == [{"primary_key": "1", "action": "updated", "new_values": {"task": "a"}},
                       {"primary_key": "2", "action": "inserted", "new_values": {"id": 2, "task": "b"}},
                       {"primary_key": "3", "action": "deleted", "new_values": None}]
    assert rows(admin, "SELECT * FROM todo") == [{"id": 1, "task": "A"}, {"id": 3, "task": "c"}]
    assert [(p.primary_key, p.new_values) for p in bemi_pg.revert_preview(admin, ids)][0] == ("1", {"task": "a"})


def test_a_range_of_transactions_in_one_call(admin: psycopg.Connection[Any]) -> None:
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'a')")
    first = xid_of(admin, "UPDATE todo SET task = 'b' WHERE id = 1")
    admin.execute("INSERT INTO todo VALUES (2, 'x')")  # between: reverted too
    last = xid_of(admin, "UPDATE todo SET task = 'c' WHERE id = 1")
    admin.execute("INSERT INTO todo VALUES (3, 'after')")  # after: kept
    ingest(admin)
    with fails("22023", f"transaction {last} committed after transaction {first}"):
        admin.execute("SELECT * FROM bemi.revert_transactions(%s, %s)", [last, first])
    with admin.transaction(force_rollback=True):
        done = rows(admin, "SELECT primary_key, action FROM bemi.revert_transactions(%s, %s)", [first, last])
        assert done == [{"primary_key": "1", "action": "updated"}, {"primary_key": "2", "action": "deleted"}]
        assert rows(admin, "SELECT * FROM todo") == [{"id": 1, "task": "a"}, {"id": 3, "task": "after"}]
    done_py = bemi_pg.revert(admin, transaction_range=(first, last))
    assert sorted(r.action for r in done_py) == ["deleted", "updated"]
    assert rows(admin, "SELECT * FROM todo") == [{"id": 1, "task": "a"}, {"id": 3, "task": "after"}]


class Base(DeclarativeBase):
    pass


class Todo(Base):
    __tablename__ = "todo"
    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str] = mapped_column(Text)


def test_sqlalchemy_whole_table_as_of_and_revert(dsn: str, admin: psycopg.Connection[Any]) -> None:
    from sqlalchemy import create_engine

    todo(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'a'), (2, 'b')")
    at = moment(admin)
    xid = xid_of(admin, "UPDATE todo SET task = 'B' WHERE id = 2")
    ingest(admin)
    engine = create_engine(url(dsn))
    try:
        with Session(engine) as session:
            then = bemi_pg.sqlalchemy.table_as_of(session, Todo, at)
            assert sorted((t.id, t.task) for t in then) == [(1, "a"), (2, "b")]
        with Session(engine) as session, session.begin():
            done = bemi_pg.sqlalchemy.revert(session, transaction_id=xid)
            assert [(r.primary_key, r.action) for r in done] == [("2", "updated")]
        with Session(engine) as session, session.begin():
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                bemi_pg.sqlalchemy.revert(session, context={})
    finally:
        engine.dispose()
    assert rows(admin, "SELECT * FROM todo") == [{"id": 1, "task": "a"}, {"id": 2, "task": "b"}]


def test_masked_columns_of_a_table_without_a_key(admin: psycopg.Connection[Any]) -> None:
    """The trail holds "[masked]" where the table holds the value (of any type): no false
    55000, no cast error; rows still in the table keep their values."""
    admin.execute("CREATE TABLE logs (msg text, secret int)")
    admin.execute("SELECT bemi.track('logs', mask_columns => ARRAY['secret'])")
    admin.execute("INSERT INTO logs VALUES ('a', 1), ('keep', 2)")
    at = moment(admin)
    admin.execute("UPDATE logs SET msg = 'b' WHERE msg = 'a'")
    ingest(admin)
    assert rows(admin, "SELECT * FROM bemi.table_at(NULL::logs, %s)", [at]) == [
        {"msg": "a", "secret": None}, {"msg": "keep", "secret": 2}]
    update = admin.execute("SELECT id FROM bemi.changes WHERE operation = 'UPDATE'").fetchone()["id"]  # type: ignore[index]
    assert [r["action"] for r in admin.execute("SELECT action FROM bemi.revert(ARRAY[%s]::bigint[])", [update])] == ["updated"]
    assert rows(admin, "SELECT * FROM logs") == [{"msg": "a", "secret": 1}, {"msg": "keep", "secret": 2}]


def test_a_retyped_column_is_a_bemi_error(admin: psycopg.Connection[Any]) -> None:
    todo(admin)
    admin.execute("INSERT INTO todo VALUES (1, 'abc')")
    at = moment(admin)
    admin.execute("UPDATE todo SET task = 'defg'")
    ingest(admin)
    admin.execute("ALTER TABLE todo ALTER COLUMN task TYPE int USING length(task)")
    with fails("22000", "a value in the trail does not fit public.todo", '"abc"'):
        admin.execute("SELECT * FROM bemi.table_at(NULL::todo, %s)", [at])
    update = admin.execute("SELECT id FROM bemi.changes WHERE operation = 'UPDATE'").fetchone()["id"]  # type: ignore[index]
    for query in ("SELECT * FROM bemi.revert(ARRAY[%s]::bigint[])", "SELECT * FROM bemi.revert_preview(ARRAY[%s]::bigint[])"):
        with fails("22000", "a value in the trail does not fit"):
            admin.execute(query, [update])
    # The stored values are still there, as JSON.
    assert admin.execute("SELECT bemi.row_at('todo', '1', %s) AS r", [at]).fetchone()["r"] == {"id": 1, "task": "abc"}  # type: ignore[index]
