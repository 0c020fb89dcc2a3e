"""bemi_pg.sqlalchemy: Session and Core, sync and async, transactions and autocommit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

import bemi_pg
import bemi_pg.sqlalchemy
from tests.helpers import sqlalchemy_app
from tests.helpers.sqlalchemy_app import Todo
from tests.helpers.trail import changes, ingest

USER = {"user_id": 7, "endpoint": "/todo"}


@pytest.fixture
def engine(dsn: str) -> Iterator[Engine]:
    created = sqlalchemy_app.engine(dsn)
    yield created
    created.dispose()


def trail(admin: psycopg.Connection[Any]) -> list[tuple[str, str, dict[str, Any]]]:
    ingest(admin)
    return [(r["operation"], r["primary_key"], r["context"]) for r in changes(admin, "operation", "primary_key", "context")]


def test_session_begin_blocks(engine: Engine, admin: psycopg.Connection[Any]) -> None:
    with bemi_pg.context(USER), Session(engine) as session:
        with session.begin():
            session.add_all([Todo(id=1, task="Sleep"), Todo(id=2, task="Eat")])
        with session.begin():
            session.get_one(Todo, 1).is_completed = True
            session.delete(session.get_one(Todo, 2))
    assert trail(admin) == [("CREATE", "1", USER), ("CREATE", "2", USER), ("UPDATE", "1", USER), ("DELETE", "2", USER)]


def test_core_in_autocommit(engine: Engine, admin: psycopg.Connection[Any]) -> None:
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    # Quotes, a star-slash and a percent sign in the context must survive the comment form.
    odd = {"user_id": 8, "note": "it's 100% */ done /*"}
    with bemi_pg.context(odd), autocommit.connect() as conn:
        conn.execute(insert(Todo).values(id=1, task="Sleep"))
        conn.execute(update(Todo).where(Todo.id == 1).values(task="Nap %s"))
        conn.execute(text("DELETE FROM todo WHERE id = :id"), {"id": 1})
    assert trail(admin) == [("CREATE", "1", odd), ("UPDATE", "1", odd), ("DELETE", "1", odd)]


def test_a_transaction_opened_in_a_context_has_it_from_its_first_statement(engine: Engine,
                                                                            admin: psycopg.Connection[Any]) -> None:
    with engine.connect() as conn:
        with bemi_pg.context(USER):
            assert conn.execute(select(Todo)).all() == []
            # The transaction began with the context (BEGIN; CALL bemi.use_context): reads see it.
            assert conn.execute(text("SELECT bemi.context()")).scalar() == USER
            conn.execute(insert(Todo).values(id=1, task="Sleep"))
            conn.commit()
        # The next transaction of the same connection, out of the context, has none.
        assert conn.execute(text("SELECT bemi.context()")).scalar() is None
        conn.execute(insert(Todo).values(id=2, task="Eat"))
        conn.commit()
    assert trail(admin) == [("CREATE", "1", USER), ("CREATE", "2", {})]


def test_the_context_follows_the_code_inside_one_transaction(engine: Engine, admin: psycopg.Connection[Any]) -> None:
    with Session(engine) as session, session.begin():
        with bemi_pg.context(USER):
            session.add(Todo(id=1, task="Sleep"))
            session.flush()
            with bemi_pg.context(step="inner"):
                session.add(Todo(id=2, task="Eat"))
                session.flush()
        session.add(Todo(id=3, task="Repeat"))
    assert trail(admin) == [("CREATE", "1", USER), ("CREATE", "2", {**USER, "step": "inner"}), ("CREATE", "3", {})]


def test_a_rolled_back_savepoint_does_not_lose_the_context(engine: Engine, admin: psycopg.Connection[Any]) -> None:
    with Session(engine) as session, session.begin():
        session.add(Todo(id=1, task="Sleep"))
        session.flush()
        with bemi_pg.context(USER):
            savepoint = session.begin_nested()
            session.add(Todo(id=2, task="Eat"))
            session.flush()
            savepoint.rollback()
            session.add(Todo(id=3, task="Repeat"))
            session.flush()
    assert trail(admin) == [("CREATE", "1", {}), ("CREATE", "3", USER)]


def test_async_session_and_core(engine: Engine, dsn: str, admin: psycopg.Connection[Any]) -> None:
    async def work() -> None:
        aengine = sqlalchemy_app.async_engine(dsn)
        async with bemi_pg.context(USER):
            async with AsyncSession(aengine) as session, session.begin():
                session.add(Todo(id=1, task="Sleep"))
            async with aengine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
                await conn.execute(update(Todo).values(is_completed=True))
            async with aengine.begin() as conn:
                await conn.execute(delete(Todo))
        await aengine.dispose()

    asyncio.run(work())
    assert trail(admin) == [("CREATE", "1", USER), ("UPDATE", "1", USER), ("DELETE", "1", USER)]


def test_writes_without_a_context_carry_none(engine: Engine, admin: psycopg.Connection[Any]) -> None:
    with engine.begin() as conn:
        conn.execute(insert(Todo).values(id=1, task="Sleep"))
        assert conn.execute(text("SELECT bemi.context()")).scalar() is None
    assert trail(admin) == [("CREATE", "1", {})]


def test_unregister(engine: Engine, admin: psycopg.Connection[Any]) -> None:
    bemi_pg.sqlalchemy.unregister(engine)
    with bemi_pg.context(USER), engine.begin() as conn:
        conn.execute(insert(Todo).values(id=1, task="Sleep"))
    bemi_pg.sqlalchemy.register(engine, sql=False)
    bemi_pg.sqlalchemy.register(engine, sql=False)
    with bemi_pg.context(USER), engine.begin() as conn:
        conn.execute(insert(Todo).values(id=2, task="Eat"))
    assert trail(admin) == [("CREATE", "1", {}), ("CREATE", "2", USER)]
