"""Pools and proxies: a context never outlives its transaction, so the next borrower of a
connection (psycopg_pool, SQLAlchemy's pool, a PgBouncer server connection) has none."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from sqlalchemy import insert, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

import bemi_pg
from tests.helpers import sqlalchemy_app
from tests.helpers.sqlalchemy_app import Todo
from tests.helpers.trail import changes, ingest

ALICE = {"user_id": 1, "endpoint": "/alice"}
INSERT = "INSERT INTO todo (id, task) VALUES (%s, 'task')"


@pytest.fixture
def todo(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL, is_completed boolean NOT NULL DEFAULT false)")
    admin.execute("SELECT bemi.track('todo')")


def contexts(admin: psycopg.Connection[Any]) -> list[tuple[str, dict[str, Any]]]:
    ingest(admin)
    return [(r["primary_key"], r["context"]) for r in changes(admin, "primary_key", "context")]


def borrow_and_write(conn: psycopg.Connection[Any], todo_id: int) -> tuple[int, Any]:
    """Writes without a context; returns the server process and the context in effect."""
    with conn.transaction():
        conn.execute(INSERT, [todo_id])
        row = conn.execute("SELECT pg_backend_pid(), bemi.context()").fetchone()
    assert row is not None
    return row[0], row[1]


@pytest.mark.usefixtures("todo")
def test_psycopg_pool(dsn: str, admin: psycopg.Connection[Any]) -> None:
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        with pool.connection() as conn, bemi_pg.with_context(conn, ALICE):
            conn.execute(INSERT, [1])
            first = conn.execute("SELECT pg_backend_pid()").fetchone()
        with pool.connection() as conn:
            assert (first[0] if first else None, None) == borrow_and_write(conn, 2)
    assert contexts(admin) == [("1", ALICE), ("2", {})]


@pytest.mark.usefixtures("todo")
def test_psycopg_async_pool(dsn: str, admin: psycopg.Connection[Any]) -> None:
    async def work() -> list[Any]:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=1) as pool:
            async with pool.connection() as conn, bemi_pg.with_context(conn, ALICE):
                await conn.execute(INSERT, [1])
            async with pool.connection() as conn:
                await conn.execute(INSERT, [2])
                cursor = await conn.execute("SELECT bemi.context()")
                return list(await cursor.fetchall())

    assert asyncio.run(work()) == [(None,)]
    assert contexts(admin) == [("1", ALICE), ("2", {})]


def test_sqlalchemy_pool(dsn: str, admin: psycopg.Connection[Any]) -> None:
    engine = sqlalchemy_app.engine(dsn, pool_size=1, max_overflow=0)
    with bemi_pg.context(ALICE), Session(engine) as session, session.begin():
        session.add(Todo(id=1, task="Sleep"))
    with engine.connect() as conn:
        conn.execute(insert(Todo).values(id=2, task="Eat"))
        assert conn.execute(text("SELECT bemi.context()")).scalar() is None
        conn.commit()
    engine.dispose()
    assert contexts(admin) == [("1", ALICE), ("2", {})]


def through(dsn: str, port: int) -> str:
    """The same database, reached through PgBouncer (no server-side prepared statements)."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    return psycopg.conninfo.make_conninfo(host="127.0.0.1", port=port, user=params["user"], dbname=params["dbname"])


@pytest.mark.usefixtures("todo")
def test_pgbouncer_transaction_pooling(dsn: str, pgbouncer: int, admin: psycopg.Connection[Any]) -> None:
    bouncer = through(dsn, pgbouncer)
    with psycopg.connect(bouncer, prepare_threshold=None) as alice, \
            psycopg.connect(bouncer, prepare_threshold=None) as bob:
        with bemi_pg.with_context(alice, ALICE):
            alice.execute(INSERT, [1])
            alice_pid = alice.execute("SELECT pg_backend_pid()").fetchone()
        # Bob's transaction runs on the very server connection Alice's just used.
        assert borrow_and_write(bob, 2) == (alice_pid[0] if alice_pid else None, None)
        alice.autocommit = True
        alice.execute("INSERT INTO todo (id, task) VALUES (3, 'task') /*Bemi {\"user_id\": 1} Bemi*/")
        assert borrow_and_write(bob, 4)[1] is None
    assert contexts(admin) == [("1", ALICE), ("2", {}), ("3", {"user_id": 1}), ("4", {})]


def test_pgbouncer_with_sqlalchemy(dsn: str, pgbouncer: int, admin: psycopg.Connection[Any]) -> None:
    sqlalchemy_app.engine(dsn).dispose()
    engine = sqlalchemy_app.engine(
        through(dsn, pgbouncer), poolclass=NullPool, connect_args={"prepare_threshold": None}
    )
    with bemi_pg.context(ALICE):
        with Session(engine) as session, session.begin():
            session.add(Todo(id=1, task="Sleep"))
        with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(insert(Todo).values(id=2, task="Eat"))
    with engine.begin() as conn:
        conn.execute(insert(Todo).values(id=3, task="Repeat"))
    engine.dispose()
    assert contexts(admin) == [("1", ALICE), ("2", ALICE), ("3", {})]

