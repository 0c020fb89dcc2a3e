"""BemiFastAPIMiddleware on a FastAPI app, driven through httpx: every write a request makes
carries that request's context, also under concurrent requests and on pooled connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI, Request
from sqlalchemy import Engine, delete, insert, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from bemi_pg.starlette import BemiFastAPIMiddleware
from tests.helpers import sqlalchemy_app
from tests.helpers.sqlalchemy_app import Todo
from tests.helpers.trail import changes, ingest

CONCURRENT = 12


def request_context(request: Request) -> dict[str, Any]:
    return {"user_id": int(request.headers["x-user-id"]), "endpoint": request.url.path, "method": request.method}


def make_app(engine: Engine, aengine: AsyncEngine) -> FastAPI:
    """A todo API: async endpoints on an AsyncEngine, a sync one (run in a thread) on an Engine."""
    app = FastAPI()
    app.add_middleware(BemiFastAPIMiddleware, set_context=request_context)
    arrived = {"count": 0, "all": asyncio.Event()}

    @app.post("/todo/{todo_id}")
    async def create(todo_id: int, task: str) -> dict[str, int]:
        async with AsyncSession(aengine) as session, session.begin():
            session.add(Todo(id=todo_id, task=task))
        return {"id": todo_id}

    @app.put("/todo/{todo_id}/complete")
    async def complete(todo_id: int) -> dict[str, int]:
        async with aengine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
            await conn.execute(update(Todo).where(Todo.id == todo_id).values(is_completed=True))
        return {"id": todo_id}

    @app.delete("/todo/{todo_id}")
    def remove(todo_id: int) -> dict[str, int]:
        with Session(engine) as session, session.begin():
            session.execute(delete(Todo).where(Todo.id == todo_id))
        return {"id": todo_id}

    @app.post("/crowd/{todo_id}")
    async def crowd(todo_id: int) -> dict[str, int]:
        # Every request waits for all the others before writing, so they truly overlap.
        arrived["count"] += 1
        if arrived["count"] == CONCURRENT:
            arrived["all"].set()
        await arrived["all"].wait()
        async with aengine.begin() as conn:
            await conn.execute(insert(Todo).values(id=todo_id, task=f"user {todo_id}"))
            await asyncio.sleep(0)
            await conn.execute(update(Todo).where(Todo.id == todo_id).values(is_completed=True))
        return {"id": todo_id}

    return app


@pytest.fixture
def engines(dsn: str) -> Iterator[tuple[Engine, AsyncEngine]]:
    engine = sqlalchemy_app.engine(dsn, pool_size=1, max_overflow=0)
    aengine = sqlalchemy_app.async_engine(dsn, pool_size=4, max_overflow=0)
    yield engine, aengine
    asyncio.run(aengine.dispose())
    engine.dispose()


@asynccontextmanager
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        yield http


def rows(admin: psycopg.Connection[Any]) -> list[tuple[str, str, dict[str, Any]]]:
    ingest(admin)
    return [(r["operation"], r["primary_key"], r["context"]) for r in changes(admin, "operation", "primary_key", "context")]


def test_each_write_carries_its_request(engines: tuple[Engine, AsyncEngine], admin: psycopg.Connection[Any]) -> None:
    engine, aengine = engines

    async def requests() -> None:
        async with client(make_app(engine, aengine)) as http:
            for todo_id, task in [(26, "Sleep"), (27, "Eat")]:
                (await http.post(f"/todo/{todo_id}", params={"task": task}, headers={"x-user-id": "187234"})).raise_for_status()
            (await http.put("/todo/26/complete", headers={"x-user-id": "187234"})).raise_for_status()
            (await http.delete("/todo/27", headers={"x-user-id": "5"})).raise_for_status()

    asyncio.run(requests())
    assert rows(admin) == [
        ("CREATE", "26", {"user_id": 187234, "endpoint": "/todo/26", "method": "POST"}),
        ("CREATE", "27", {"user_id": 187234, "endpoint": "/todo/27", "method": "POST"}),
        ("UPDATE", "26", {"user_id": 187234, "endpoint": "/todo/26/complete", "method": "PUT"}),
        ("DELETE", "27", {"user_id": 5, "endpoint": "/todo/27", "method": "DELETE"}),
    ]


def test_concurrent_requests_never_swap_contexts(
    engines: tuple[Engine, AsyncEngine], admin: psycopg.Connection[Any]
) -> None:
    engine, aengine = engines

    async def requests() -> None:
        async with client(make_app(engine, aengine)) as http:
            responses = await asyncio.gather(
                *(http.post(f"/crowd/{user}", headers={"x-user-id": str(user)}) for user in range(1, CONCURRENT + 1))
            )
        assert [r.status_code for r in responses] == [200] * CONCURRENT

    asyncio.run(requests())
    trail = rows(admin)
    assert len(trail) == 2 * CONCURRENT
    assert all(context["user_id"] == int(key) for _, key, context in trail)
    assert {context["endpoint"] for _, _, context in trail} == {f"/crowd/{u}" for u in range(1, CONCURRENT + 1)}


def test_a_pooled_connection_carries_no_context_after_a_request(
    engines: tuple[Engine, AsyncEngine], admin: psycopg.Connection[Any]
) -> None:
    engine, aengine = engines

    async def request() -> None:
        async with client(make_app(engine, aengine)) as http:
            (await http.delete("/todo/1", headers={"x-user-id": "9"})).raise_for_status()

    with engine.begin() as conn:
        conn.execute(insert(Todo).values(id=1, task="Sleep"))
    asyncio.run(request())
    # The pool has one connection: the request's. Reused outside any request, it has no context.
    with engine.begin() as conn:
        assert conn.execute(text("SELECT bemi.context()")).scalar() is None
        conn.execute(insert(Todo).values(id=2, task="Eat"))
        assert conn.execute(text("SELECT bemi.context()")).scalar() is None
    assert rows(admin) == [
        ("CREATE", "1", {}), ("DELETE", "1", {"user_id": 9, "endpoint": "/todo/1", "method": "DELETE"}), ("CREATE", "2", {}),
    ]
