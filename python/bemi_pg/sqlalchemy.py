"""SQLAlchemy integration: the writes of an Engine or AsyncEngine carry the ambient context.

    engine = create_engine("postgresql+psycopg://...")
    bemi_pg.sqlalchemy.register(engine)
    with bemi_pg.context({"user_id": 7}):
        with Session(engine) as session, session.begin():
            session.add(Todo(task="Sleep"))

Whenever a ``bemi_pg.context`` is active, a transaction that writes begins its writing with
``bemi.set_context`` (Session and Core, ``session.begin()`` blocks, sync and async); a write
on an ``AUTOCOMMIT`` connection carries the context as a trailing ``/*Bemi ... Bemi*/``
comment instead. Read-only transactions send nothing more. Needs the psycopg (3) dialect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

if TYPE_CHECKING:  # sqlalchemy.ext.asyncio needs greenlet, which sync-only apps may not have
    from sqlalchemy.ext.asyncio import AsyncEngine

from bemi_pg.context import SET_CONTEXT, StatementCarrier

__all__ = ["register", "unregister"]


def register(engine: Engine | AsyncEngine) -> None:
    """Makes every write of the engine carry the ambient context (idempotent)."""
    target = _sync_engine(engine)
    if target.dialect.driver != "psycopg":
        raise TypeError(f"bemi: the SQLAlchemy integration needs the psycopg dialect, not {target.dialect.driver!r}")
    if not event.contains(target, "before_cursor_execute", _carry_context):
        event.listen(target, "before_cursor_execute", _carry_context, retval=True)


def unregister(engine: Engine | AsyncEngine) -> None:
    """Undoes ``register``."""
    target = _sync_engine(engine)
    if event.contains(target, "before_cursor_execute", _carry_context):
        event.remove(target, "before_cursor_execute", _carry_context)


def _sync_engine(engine: Engine | AsyncEngine) -> Engine:
    return engine if isinstance(engine, Engine) else engine.sync_engine


def _carry_context(
    conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> tuple[str, Any]:
    # The carrier lives with the DBAPI connection, so it follows it through the pool.
    carrier = conn.info.get("bemi")
    if carrier is None:
        carrier = conn.info["bemi"] = StatementCarrier()
    driver = conn.connection.driver_connection
    if not isinstance(driver, psycopg.BaseConnection):
        return statement, parameters
    # The same cursor runs the statement right after, so set_context costs no new cursor.
    statement = carrier.prepare(driver, statement, lambda payload: cursor.execute(SET_CONTEXT, [payload]))
    return statement, parameters
