"""How an Engine's or AsyncEngine's writes carry the ambient context (``bemi_pg.context``).

    engine = create_engine("postgresql+psycopg://...")
    bemi_pg.sqlalchemy.register(engine)
    with bemi_pg.context({"user_id": 7}):
        with Session(engine) as session, session.begin():
            session.add(Todo(task="Sleep"))

Whenever a ``bemi_pg.context`` is active, each write goes out with the context as a trailing
``/*Bemi ... Bemi*/`` comment, which the extension's context trigger reads (Session and Core,
``session.begin()`` blocks, savepoints, ``AUTOCOMMIT``, sync and async): no extra statement,
no extra round trip. ``register(engine, sql=True)`` (the default) adds the write's own text,
normalized by pglast so no value leaks, under the key ``"SQL"``. Reads are sent as they are.
Needs the psycopg (3) dialect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

if TYPE_CHECKING:  # sqlalchemy.ext.asyncio needs greenlet, which sync-only apps may not have
    from sqlalchemy.ext.asyncio import AsyncEngine

from bemi_pg.comment import carry

def register(engine: Engine | AsyncEngine, *, sql: bool = True) -> None:
    """Makes every write of the engine carry the ambient context (idempotent; registering
    again replaces the ``sql`` choice). ``sql``: add the normalized statement under "SQL"."""
    target = _sync_engine(engine)
    if target.dialect.driver != "psycopg":
        raise TypeError(f"bemi: the SQLAlchemy integration needs the psycopg dialect, not {target.dialect.driver!r}")
    unregister(engine)
    event.listen(target, "before_cursor_execute", _with_sql if sql else _without_sql, retval=True)


def unregister(engine: Engine | AsyncEngine) -> None:
    """Undoes ``register``."""
    target = _sync_engine(engine)
    for listener in (_with_sql, _without_sql):
        if event.contains(target, "before_cursor_execute", listener):
            event.remove(target, "before_cursor_execute", listener)


def _sync_engine(engine: Engine | AsyncEngine) -> Engine:
    return engine if isinstance(engine, Engine) else engine.sync_engine


def _with_sql(
    conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> tuple[str, Any]:
    return carry(statement, bound=parameters is not None, include_sql=True), parameters


def _without_sql(
    conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> tuple[str, Any]:
    return carry(statement, bound=parameters is not None, include_sql=False), parameters

