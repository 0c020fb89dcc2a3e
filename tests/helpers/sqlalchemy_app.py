"""The SQLAlchemy model and engines the SQLAlchemy, FastAPI and pool tests share."""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import URL, Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import bemi_pg.sqlalchemy


class Base(DeclarativeBase):
    pass


class Todo(Base):
    __tablename__ = "todo"

    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str]
    is_completed: Mapped[bool] = mapped_column(default=False)


def url(dsn: str) -> URL:
    """The SQLAlchemy URL (psycopg 3 dialect) of a libpq connection string."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    return URL.create(
        "postgresql+psycopg", username=str(params["user"]), host=str(params["host"]),
        port=int(str(params["port"])), database=str(params["dbname"]),
    )


def engine(dsn: str, *, sql: bool = False, **options: Any) -> Engine:
    """A registered engine whose database has the tracked table "todo". The tests that check
    contexts exactly register without the statement's SQL (``sql``, on by default in
    ``register``); tests/integrations/test_round_trips.py covers it."""
    created = create_engine(url(dsn), **options)
    Base.metadata.create_all(created)
    with created.begin() as conn:
        conn.exec_driver_sql("SELECT bemi.track('todo')")
    bemi_pg.sqlalchemy.register(created, sql=sql)
    return created


def async_engine(dsn: str, *, sql: bool = False, **options: Any) -> AsyncEngine:
    """A registered AsyncEngine over the same database (create the table with ``engine``)."""
    created = create_async_engine(url(dsn), **options)
    bemi_pg.sqlalchemy.register(created, sql=sql)
    return created
