"""What each integration really sends, read on the wire (tests/helpers/wire.py): a transaction with a
context costs the round trips of the same transaction without one; the context rides with
BEGIN (with_context, and Django's and SQLAlchemy's transactions) or inside each write (with
the statement's SQL, or in autocommit mode), never in a statement of its own; the statement's
SQL in the context is normalized; a request id can be added."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from django.db import connection, connections, transaction
from django.test import Client, override_settings
from fastapi import FastAPI, Request
from psycopg import pq
from psycopg.rows import dict_row
from sqlalchemy import insert, text, update
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

import bemi_pg
from bemi_pg.comment import is_write
from bemi_pg.starlette import BemiFastAPIMiddleware
from tests.helpers import sqlalchemy_app
from tests.helpers.sqlalchemy_app import Todo
from tests.helpers.trail import changes, ingest
from tests.helpers.wire import Wire
from tests.integrations.django_project.todos.models import Todo as DjangoTodo


ALICE = {"user_id": 1, "endpoint": "/alice"}
INSERT = "INSERT INTO todo (id, task) VALUES (%s, 'task')"
UPDATE = "UPDATE todo SET is_completed = true WHERE id = %s"


@pytest.fixture(scope="session")
def wire(postgresql_proc: Any) -> Iterator[Wire]:
    recorder = Wire(postgresql_proc.host, postgresql_proc.port)
    yield recorder
    recorder.close()


def via(dsn: str, port: int) -> str:
    """The same database, reached through the recorder (or any proxy) on ``port``."""
    return psycopg.conninfo.make_conninfo(dsn, host="127.0.0.1", port=port)


@pytest.fixture
def todo(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL, is_completed boolean NOT NULL DEFAULT false)")
    admin.execute("SELECT bemi.track('todo')")


def trail(admin: psycopg.Connection[Any]) -> list[tuple[str, str, dict[str, Any]]]:
    ingest(admin)
    return [(r["operation"], r["primary_key"], r["context"]) for r in changes(admin, "operation", "primary_key", "context")]


def statements(trips: list[list[str]]) -> list[str]:
    return [statement for trip in trips for statement in trip]


def opening(trip: list[str]) -> str:
    """A round trip's first statement, savepoint names left out: "BEGIN", "SAVEPOINT", ..."""
    return re.sub(r' "bemi_[0-9]+"', "", trip[0].split(";")[0])


def request(conn: psycopg.Connection[Any], todo_id: int) -> None:
    conn.execute(INSERT, [todo_id])
    conn.execute(UPDATE, [todo_id])


# ---------------------------------------------------------------------------------------
# bemi_pg.with_context

@pytest.mark.usefixtures("todo")
@pytest.mark.parametrize("autocommit", [True, False])
def test_with_context_sends_the_context_with_begin(dsn: str, wire: Wire, admin: psycopg.Connection[Any],
                                                   autocommit: bool) -> None:
    with psycopg.connect(via(dsn, wire.port), autocommit=autocommit) as conn:
        wire.clear()
        with conn.transaction():
            request(conn, 1)
        plain = wire.trips()
        wire.clear()
        with bemi_pg.with_context(conn, ALICE):
            request(conn, 2)
        tracked = wire.trips()
        assert conn.autocommit is autocommit
    assert len(plain) == len(tracked) == 4
    assert plain[0] == ["BEGIN"] and plain[-1] == tracked[-1] == ["COMMIT"]
    assert tracked[0] == ["""BEGIN; CALL bemi.use_context('{"user_id":1,"endpoint":"/alice"}')"""]
    assert tracked[1:3] == plain[1:3]
    assert trail(admin) == [("CREATE", "1", {}), ("UPDATE", "1", {}), ("CREATE", "2", ALICE), ("UPDATE", "2", ALICE)]


@pytest.mark.usefixtures("todo")
def test_nested_blocks_enter_and_leave_in_one_round_trip_each(dsn: str, wire: Wire,
                                                              admin: psycopg.Connection[Any]) -> None:
    with psycopg.connect(via(dsn, wire.port), autocommit=True) as conn:
        wire.clear()
        with bemi_pg.with_context(conn, ALICE):
            conn.execute(INSERT, [1])
            with bemi_pg.with_context(conn, {"step": 2}):
                conn.execute(INSERT, [2])
            with pytest.raises(psycopg.errors.UniqueViolation):
                with bemi_pg.with_context(conn, {"step": 3}):
                    conn.execute(INSERT, [2])
            conn.execute(INSERT, [3])
        trips = wire.trips()
    control = [opening(trip) for trip in trips if "INSERT" not in trip[0]]
    assert control == ["BEGIN", "SAVEPOINT", "RELEASE SAVEPOINT", "SAVEPOINT", "ROLLBACK TO SAVEPOINT", "COMMIT"]
    assert len(trips) == 10  # the six above and four INSERTs: nothing else
    # The released savepoint put the outer context back in the same round trip.
    assert trips[4][0].endswith("""; CALL bemi.use_context('{"user_id":1,"endpoint":"/alice"}')""")
    assert trail(admin) == [("CREATE", "1", ALICE), ("CREATE", "2", {**ALICE, "step": 2}), ("CREATE", "3", ALICE)]


@pytest.mark.usefixtures("todo")
def test_async_with_context_sends_the_context_with_begin(dsn: str, wire: Wire,
                                                         admin: psycopg.Connection[Any]) -> None:
    async def work() -> list[list[str]]:
        async with await psycopg.AsyncConnection.connect(via(dsn, wire.port)) as conn:
            wire.clear()
            async with bemi_pg.with_context(conn, ALICE):
                await conn.execute(INSERT, [1])
                async with bemi_pg.with_context(conn, {"step": 2}):
                    await conn.execute(UPDATE, [1])
            assert not conn.autocommit
            return wire.trips()

    trips = asyncio.run(work())
    assert [opening(trip) for trip in trips] == [
        "BEGIN", "INSERT INTO todo (id, task) VALUES ($1, 'task')", "SAVEPOINT",
        "UPDATE todo SET is_completed = true WHERE id = $1", "RELEASE SAVEPOINT", "COMMIT"]
    assert trail(admin) == [("CREATE", "1", ALICE), ("UPDATE", "1", {**ALICE, "step": 2})]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_extension_before_use_context_is_sent_set_context(old_install: str, wire: Wire, mode: str) -> None:
    """bemi 1.0 and 1.1 have no bemi.use_context: the first block of a connection finds it
    missing and is done again with set_context in one more round trip; later blocks, nested
    ones too, send set_context at once."""
    with psycopg.connect(old_install, autocommit=True, row_factory=dict_row) as admin:
        admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL)")
        admin.execute("SELECT bemi.track('todo')")

        async def blocks() -> None:
            async with await psycopg.AsyncConnection.connect(via(old_install, wire.port)) as conn:
                for first in (1, 3):
                    async with bemi_pg.with_context(conn, ALICE):
                        await conn.execute(INSERT, [first])
                        async with bemi_pg.with_context(conn, {"step": 2}):
                            await conn.execute(INSERT, [first + 1])

        wire.clear()
        if mode == "async":
            asyncio.run(blocks())
        else:
            with psycopg.connect(via(old_install, wire.port)) as conn:
                for first in (1, 3):
                    with bemi_pg.with_context(conn, ALICE):
                        conn.execute(INSERT, [first])
                        with bemi_pg.with_context(conn, {"step": 2}):
                            conn.execute(INSERT, [first + 1])
        trips = wire.trips()
        assert [opening(trip) for trip in trips if "INSERT" not in trip[0]] == [
            "BEGIN", "ROLLBACK", "SAVEPOINT", "RELEASE SAVEPOINT", "COMMIT",
            "BEGIN", "SAVEPOINT", "RELEASE SAVEPOINT", "COMMIT"]
        assert [statement for statement in statements(trips) if "use_context" in statement] == [
            """BEGIN; CALL bemi.use_context('{"user_id":1,"endpoint":"/alice"}')"""]
        step = {**ALICE, "step": 2}
        assert trail(admin) == [("CREATE", "1", ALICE), ("CREATE", "2", step), ("CREATE", "3", ALICE),
                                ("CREATE", "4", step)]


def test_an_extension_before_use_context_under_sqlalchemy(old_install: str, wire: Wire) -> None:
    """The integrations' transactions fall back the same way: the first one of a connection is
    begun again with set_context, later ones send set_context with BEGIN."""
    with psycopg.connect(old_install, autocommit=True, row_factory=dict_row) as admin:
        engine = sqlalchemy_app.engine(via(old_install, wire.port), pool_size=1, max_overflow=0)
        wire.clear()
        for first in (1, 2):
            with bemi_pg.context(ALICE), engine.begin() as conn:
                conn.execute(insert(Todo).values(id=first, task="task"))
        engine.dispose()
        begun = [trip[0] for trip in wire.trips() if "bemi." in trip[0]]
        set_context = """SELECT bemi.set_context('{"user_id":1,"endpoint":"/alice"}'::jsonb)"""
        assert begun == ["""BEGIN; CALL bemi.use_context('{"user_id":1,"endpoint":"/alice"}')""",
                         "ROLLBACK; BEGIN; " + set_context, "BEGIN; " + set_context]
        assert trail(admin) == [("CREATE", "1", ALICE), ("CREATE", "2", ALICE)]


def test_an_extension_before_use_context_in_a_transaction_the_caller_owns(old_install: str) -> None:
    """The first block of the connection is a savepoint: the failed CALL is rolled back to it,
    the caller's transaction goes on."""
    with psycopg.connect(old_install, autocommit=True, row_factory=dict_row) as admin:
        admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL)")
        admin.execute("SELECT bemi.track('todo')")
        with psycopg.connect(old_install) as conn, conn.transaction():
            conn.execute(INSERT, [1])
            with bemi_pg.with_context(conn, ALICE):
                conn.execute(INSERT, [2])
        assert trail(admin) == [("CREATE", "1", {}), ("CREATE", "2", ALICE)]


@pytest.mark.usefixtures("todo")
def test_rollback_ends_the_block_like_conn_transaction(dsn: str, admin: psycopg.Connection[Any]) -> None:
    with psycopg.connect(dsn) as conn:
        with bemi_pg.with_context(conn, ALICE):
            conn.execute(INSERT, [1])
            with bemi_pg.with_context(conn, {"step": 2}):
                conn.execute(INSERT, [2])
                raise psycopg.Rollback()  # the inner block only
            conn.execute(INSERT, [3])
        with bemi_pg.with_context(conn, ALICE):
            conn.execute(INSERT, [4])
            raise psycopg.Rollback()
        assert (conn.autocommit, conn.info.transaction_status) == (False, pq.TransactionStatus.IDLE)
    assert trail(admin) == [("CREATE", "1", ALICE), ("CREATE", "3", ALICE)]


@pytest.mark.usefixtures("todo")
def test_read_only_transaction_with_a_context_stays_read_only(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.read_only = True
        with bemi_pg.with_context(conn, ALICE):
            assert conn.execute("SELECT count(*), bemi.context() FROM todo").fetchone() == (0, ALICE)
            assert conn.execute("SELECT pg_current_xact_id_if_assigned()").fetchone() == (None,)
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute(INSERT, [1])


# ---------------------------------------------------------------------------------------
# PgBouncer in transaction mode, server-side prepared statements

@pytest.mark.usefixtures("todo")
@pytest.mark.parametrize("autocommit", [True, False])
def test_with_context_behind_pgbouncer(dsn: str, pgbouncer: int, admin: psycopg.Connection[Any],  # noqa: F811
                                       autocommit: bool) -> None:
    bouncer = Wire("127.0.0.1", pgbouncer)
    try:
        with psycopg.connect(via(dsn, bouncer.port), autocommit=autocommit, prepare_threshold=None) as alice, \
                psycopg.connect(via(dsn, bouncer.port), autocommit=autocommit, prepare_threshold=None) as bob:
            for todo_id in range(1, 7, 2):  # alternate on PgBouncer's one server connection
                with bemi_pg.with_context(alice, ALICE):
                    request(alice, todo_id)
                with bob.transaction():
                    request(bob, todo_id + 1)
        assert [len(session.trips) for session in bouncer.sessions] == [12, 12]
    finally:
        bouncer.close()
    expected = []
    for todo_id in range(1, 7, 2):
        expected += [("CREATE", str(todo_id), ALICE), ("UPDATE", str(todo_id), ALICE),
                     ("CREATE", str(todo_id + 1), {}), ("UPDATE", str(todo_id + 1), {})]
    assert trail(admin) == expected


def test_sqlalchemy_behind_pgbouncer_with_sql(dsn: str, pgbouncer: int, admin: psycopg.Connection[Any]) -> None:  # noqa: F811
    sqlalchemy_app.engine(dsn).dispose()
    engine = sqlalchemy_app.engine(via(dsn, pgbouncer), sql=True, poolclass=NullPool,
                                   connect_args={"prepare_threshold": None})
    with bemi_pg.context(ALICE), Session(engine) as session, session.begin():
        session.add(Todo(id=1, task="Sleep"))
    with engine.begin() as conn:
        conn.execute(insert(Todo).values(id=2, task="Eat"))
    engine.dispose()
    rows = trail(admin)
    assert [(op, key) for op, key, _ in rows] == [("CREATE", "1"), ("CREATE", "2")]
    assert rows[0][2] == {**ALICE, "SQL": "INSERT INTO todo (id, task, is_completed) VALUES ($1::INTEGER, $2::VARCHAR, $3)"}
    assert rows[1][2] == {}


@pytest.mark.parametrize("sql", [False, True])
def test_prepared_writes_keep_their_contexts(dsn: str, wire: Wire, admin: psycopg.Connection[Any], sql: bool) -> None:
    """With every statement prepared server-side (prepare_threshold=0): without the statement's
    SQL in the context, the context goes with each transaction's BEGIN and the writes' text
    never changes, so each is prepared once (two statements); with it, each write text, its
    comment included, is its own prepared statement. Either way contexts stay exact."""
    sqlalchemy_app.engine(dsn).dispose()
    engine = sqlalchemy_app.engine(via(dsn, wire.port), sql=sql, pool_size=1, max_overflow=0,
                                   connect_args={"prepare_threshold": 0})
    users = [{"user_id": n} for n in (1, 2, 1, 2, 3, 1)]
    for todo_id, user in enumerate(users, start=1):
        with bemi_pg.context(user), engine.begin() as conn:
            conn.execute(insert(Todo).values(id=todo_id, task="task"))
            conn.execute(update(Todo).where(Todo.id == todo_id).values(is_completed=True))
    with engine.connect() as conn:
        prepared = conn.execute(text("SELECT count(*) FILTER (WHERE right(statement, 6) = 'Bemi*/'), count(*) "
                                     "FROM pg_prepared_statements WHERE statement ~ '^(INSERT|UPDATE)'")).one()
    engine.dispose()
    assert tuple(prepared) == ((6, 6) if sql else (0, 2))  # INSERT and UPDATE, for each context or once
    rows = trail(admin)
    assert [(key, {k: v for k, v in context.items() if k != "SQL"}) for _, key, context in rows] == [
        (str(todo_id), user) for todo_id, user in enumerate(users, start=1) for _ in range(2)]


# ---------------------------------------------------------------------------------------
# SQLAlchemy and Django: the context inside each write, the statement's SQL normalized

def session_work(engine: Any, wire: Wire, first: int, inner: dict[str, Any] | None = None) -> list[list[str]]:
    """The round trips of one Session transaction: an INSERT, an UPDATE (in ``inner``'s context
    when given), a text UPDATE."""
    wire.clear()
    with Session(engine) as session, session.begin():
        session.add(Todo(id=first, task="secret task"))
        session.flush()
        with bemi_pg.context(inner) if inner else contextlib.nullcontext():
            session.get_one(Todo, first).is_completed = True
            session.flush()
        session.execute(text(f"UPDATE todo SET task = 'secret {first}' WHERE id = {first}"))
    return wire.trips()


def test_sqlalchemy_transaction_without_sql_sends_the_context_with_begin(dsn: str, wire: Wire,
                                                                         admin: psycopg.Connection[Any]) -> None:
    sqlalchemy_app.engine(dsn).dispose()
    engine = sqlalchemy_app.engine(via(dsn, wire.port), sql=False)
    plain = session_work(engine, wire, 1, {"step": "inner"})
    with bemi_pg.context(ALICE):
        tracked = session_work(engine, wire, 2, {"step": "inner"})
    engine.dispose()
    # The context goes with BEGIN, where psycopg would send BEGIN alone; only the change of
    # context inside the transaction costs a round trip of its own. No write carries a comment.
    assert plain[0] == ["BEGIN"]
    assert tracked[0] == ["""BEGIN; CALL bemi.use_context('{"user_id":1,"endpoint":"/alice"}')"""]
    calls = [trip for trip in tracked if "use_context" in trip[0]]
    assert len(calls) == 3 and len(tracked) == len(plain) + 2  # the inner context, then ALICE's again
    assert not any("Bemi*/" in statement for statement in statements(tracked))
    assert [(op, key, context) for op, key, context in trail(admin) if key == "2"] == [
        ("CREATE", "2", ALICE), ("UPDATE", "2", {**ALICE, "step": "inner"}), ("UPDATE", "2", ALICE)]


def test_sqlalchemy_transaction_costs_no_round_trip(dsn: str, wire: Wire, admin: psycopg.Connection[Any]) -> None:
    sqlalchemy_app.engine(dsn).dispose()
    engine = sqlalchemy_app.engine(via(dsn, wire.port), sql=True)
    plain = session_work(engine, wire, 1)
    with bemi_pg.context(ALICE):
        tracked = session_work(engine, wire, 2)
    engine.dispose()
    assert len(tracked) == len(plain)
    assert not any("set_context" in statement for statement in statements(tracked))
    writes = [statement for statement in statements(tracked) if is_write(statement)]
    assert len(writes) == 3 and all(statement.endswith(" Bemi*/") for statement in writes)
    rows = trail(admin)
    assert [context for _, key, context in rows if key == "1"] == [{}, {}, {}]
    assert [context for _, key, context in rows if key == "2"] == [
        {**ALICE, "SQL": "INSERT INTO todo (id, task, is_completed) VALUES ($1::INTEGER, $2::VARCHAR, $3)"},
        {**ALICE, "SQL": "UPDATE todo SET is_completed=$1 WHERE todo.id = $2::INTEGER"},
        {**ALICE, "SQL": "UPDATE todo SET task = $1 WHERE id = $2"},
    ]
    assert "secret" not in str(rows)


@pytest.fixture
def wired_project(project: dict[str, Any], wire: Wire) -> dict[str, Any]:  # noqa: F811
    """The Django project of tests/integrations/test_django.py, its connections through the recorder."""
    project.update(HOST="127.0.0.1", PORT=wire.port)
    connections.close_all()
    return project


def plain_request_trips(wire: Wire) -> list[list[str]]:
    """The round trips of the Django view's request without bemi's middleware (no context);
    its rows are deleted after."""
    with override_settings(MIDDLEWARE=[]):
        wire.clear()
        assert Client().post("/todo/work/atomic").status_code == 200
        plain = wire.trips()
    DjangoTodo.objects.all().delete()
    return plain


def test_django_request_costs_no_round_trip(wired_project: dict[str, Any], wire: Wire,
                                            admin: psycopg.Connection[Any]) -> None:
    plain = plain_request_trips(wire)
    wire.clear()
    with override_settings(BEMI_CONTEXT_SQL=True):
        assert Client().post("/todo/work/atomic", headers={"X-User-Id": "7"}).status_code == 200
    tracked = wire.trips()
    assert len(tracked) == len(plain)
    assert not any("set_context" in statement for statement in statements(tracked))
    writes = [statement for statement in statements(tracked) if is_write(statement)]
    assert writes and all(statement.endswith(" Bemi*/") for statement in writes)
    request_context = {"user_id": 7, "endpoint": "/todo/work/atomic", "method": "POST"}
    rows = [row for row in trail(admin) if row[2]]
    assert [(op, key, context.pop("SQL")) for op, key, context in rows] == [
        ("CREATE", "1", 'INSERT INTO "todos_todo" ("id", "task", "is_completed") VALUES ($1, $2, $3)'),
        ("CREATE", "2", 'INSERT INTO "todos_todo" ("id", "task", "is_completed") VALUES ($1, $2, $3)'),
        ("UPDATE", "1", 'UPDATE "todos_todo" SET "task" = $1, "is_completed" = $2 WHERE "todos_todo"."id" = $3'),
        ("DELETE", "2", 'DELETE FROM "todos_todo" WHERE "todos_todo"."id" IN ($1)'),
    ]
    assert all(context == request_context for _, _, context in rows)


def test_django_transaction_without_sql_sends_the_context_with_begin(wired_project: dict[str, Any], wire: Wire,
                                                                     admin: psycopg.Connection[Any]) -> None:
    plain = plain_request_trips(wire)
    wire.clear()
    assert Client().post("/todo/work/atomic", headers={"X-User-Id": "7"}).status_code == 200
    tracked = wire.trips()
    request_context = {"user_id": 7, "endpoint": "/todo/work/atomic", "method": "POST"}
    assert len(tracked) == len(plain)
    begun = [trip[0] for trip in tracked if trip[0].startswith("BEGIN")]
    assert begun == ["BEGIN; CALL bemi.use_context('" + json.dumps(request_context, separators=(",", ":")) + "')"]
    assert not any("Bemi*/" in statement or "set_context" in statement for statement in statements(tracked))
    assert [row for row in trail(admin) if row[2]] == [
        (op, key, request_context) for op, key in (("CREATE", "1"), ("CREATE", "2"), ("UPDATE", "1"), ("DELETE", "2"))]


@pytest.mark.usefixtures("project")
@override_settings(BEMI_CONTEXT_SQL=True)
def test_django_sql_never_holds_values(admin: psycopg.Connection[Any]) -> None:
    with bemi_pg.context(ALICE):
        DjangoTodo.objects.create(id=1, task="secret 1")
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("UPDATE todos_todo SET task = 'secret 2', is_completed = true WHERE id = 1")
            cursor.execute("UPDATE todos_todo SET task = %s WHERE id = %s AND task NOT LIKE '%%x%%'", ["secret 3", 1])
    with override_settings(BEMI_CONTEXT_SQL=False), bemi_pg.context(ALICE):
        DjangoTodo.objects.filter(id=1).update(task="secret 4")
    assert [context.get("SQL") for _, _, context in trail(admin)] == [
        'INSERT INTO "todos_todo" ("id", "task", "is_completed") VALUES ($1, $2, $3)',
        "UPDATE todos_todo SET task = $1, is_completed = $2 WHERE id = $3",
        "UPDATE todos_todo SET task = $1 WHERE id = $2 AND task NOT LIKE $3",
        None,
    ]
    assert "secret" not in str([context for _, _, context in trail(admin)])


# ---------------------------------------------------------------------------------------
# Request ids, for reverting one request

def is_uuid(value: str) -> bool:
    return str(uuid.UUID(value)) == value


@pytest.mark.usefixtures("project")
def test_django_request_id(admin: psycopg.Connection[Any]) -> None:
    assert Client().post("/todo/1", headers={"X-User-Id": "1"}).status_code == 200
    with override_settings(BEMI_REQUEST_ID=True):
        assert Client().post("/todo/2", headers={"X-User-Id": "2", "X-Request-ID": "req-2"}).status_code == 200
        assert Client().post("/todo/3", headers={"X-User-Id": "3"}).status_code == 200
    contexts = [context for _, _, context in trail(admin)]
    assert contexts[0] == {"user_id": 1, "endpoint": "/todo/1", "method": "POST"}
    assert contexts[1] == {"request_id": "req-2", "user_id": 2, "endpoint": "/todo/2", "method": "POST"}
    assert is_uuid(contexts[2].pop("request_id"))
    assert contexts[2] == {"user_id": 3, "endpoint": "/todo/3", "method": "POST"}


def test_starlette_request_id_and_reverting_one_request(dsn: str, admin: psycopg.Connection[Any]) -> None:
    engine = sqlalchemy_app.engine(dsn)
    app = FastAPI()
    app.add_middleware(BemiFastAPIMiddleware, request_id=True,
                       set_context=lambda request: {"endpoint": request.url.path})

    @app.post("/todo/{todo_id}")
    def create(todo_id: int, request: Request) -> dict[str, int]:
        with Session(engine) as session, session.begin():
            session.add(Todo(id=todo_id, task="task"))
        return {"id": todo_id}

    async def requests() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            (await http.post("/todo/1", headers={"x-request-id": "req-1"})).raise_for_status()
            (await http.post("/todo/2")).raise_for_status()

    asyncio.run(requests())
    contexts = [context for _, _, context in trail(admin)]
    assert contexts[0] == {"request_id": "req-1", "endpoint": "/todo/1"}
    assert is_uuid(contexts[1]["request_id"]) and contexts[1]["endpoint"] == "/todo/2"
    # Reverting the first request removes its row, and only that.
    admin.execute("""SELECT * FROM bemi.revert_context('{"request_id": "req-1"}')""")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM todo")).scalars().all() == [2]
    engine.dispose()
