"""W1-py through the framework integrations: the same transaction (insert a todo, complete
it) sent by Django (``transaction.atomic()`` and a cursor, through bemi_pg.django's execute
wrapper) and by SQLAlchemy (``engine.begin()`` and ``text()``, through
``bemi_pg.sqlalchemy.register``), with and without the statement's SQL in the context.
The plain variant's table is written by the same code with no context and, for SQLAlchemy,
an engine bemi is not registered on: what the app costs without bemi.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

import bemi_pg
import bemi_pg.sqlalchemy
from bench import server

Transaction = Callable[[int], None]

INSERT = ("INSERT INTO todo (task, owner, priority, payload) VALUES (%s, %s, %s, repeat('p', 100)) "
          "RETURNING id")
UPDATE = "UPDATE todo SET is_completed = true WHERE id = %s"
INSERT_NAMED = ("INSERT INTO todo (task, owner, priority, payload) VALUES (:task, :owner, :priority, "
                "repeat('p', 100)) RETURNING id")
UPDATE_NAMED = "UPDATE todo SET is_completed = true WHERE id = :id"


def request_context(user_id: int) -> dict[str, Any]:
    return {"user_id": user_id, "endpoint": "/todo", "method": "POST"}


def _ambient(user_id: int, tracked: bool) -> Any:
    return bemi_pg.context(request_context(user_id)) if tracked else nullcontext()


def _configure_django(dsn: str, schemas: list[str]) -> None:
    """One Django database alias per schema (the alias is the schema's name)."""
    import django
    from django.conf import settings

    if settings.configured:
        return
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    databases = {
        schema: {
            "ENGINE": "django.db.backends.postgresql", "NAME": params["dbname"], "USER": params["user"],
            "HOST": params["host"], "PORT": params["port"],
            "OPTIONS": {"options": server.pg_options(schema, "off")},
        } for schema in schemas
    }
    settings.configure(DATABASES={"default": databases[schemas[0]], **databases},
                       INSTALLED_APPS=["bemi_pg.django"], USE_TZ=True, BEMI_CONTEXT_SQL=True)
    django.setup()


@contextmanager
def django(dsn: str, schema: str, *, tracked: bool, sql: bool) -> Iterator[Transaction]:
    """A transaction function on the schema's table, sent by Django."""
    _configure_django(dsn, ["v_plain", "v_bemi"])
    from django.conf import settings
    from django.db import connections, transaction

    settings.BEMI_CONTEXT_SQL = sql
    connection = connections[schema]

    def run(user_id: int) -> None:
        with _ambient(user_id, tracked), transaction.atomic(using=schema), connection.cursor() as cursor:
            cursor.execute(INSERT, [f"task of {user_id}", f"user {user_id}", user_id % 5])
            cursor.execute(UPDATE, [cursor.fetchone()[0]])

    try:
        yield run
    finally:
        connection.close()


@contextmanager
def sqlalchemy(dsn: str, schema: str, *, tracked: bool, sql: bool) -> Iterator[Transaction]:
    """A transaction function on the schema's table, sent by SQLAlchemy (bemi registered
    on the engine only when ``tracked``)."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    url = URL.create("postgresql+psycopg", username=str(params["user"]), host=str(params["host"]),
                     port=int(str(params["port"])), database=str(params["dbname"]))
    engine = create_engine(url, pool_size=1, connect_args={"options": server.pg_options(schema, "off")})
    if tracked:
        bemi_pg.sqlalchemy.register(engine, sql=sql)
    insert, update = text(INSERT_NAMED), text(UPDATE_NAMED)

    def run(user_id: int) -> None:
        with _ambient(user_id, tracked), engine.begin() as conn:
            todo_id = conn.execute(insert, {"task": f"task of {user_id}", "owner": f"user {user_id}",
                                            "priority": user_id % 5}).scalar_one()
            conn.execute(update, {"id": todo_id})

    try:
        yield run
    finally:
        engine.dispose()
