"""How an Engine's or AsyncEngine's statements carry the ambient context (``bemi_pg.context``).

    engine = create_engine("postgresql+psycopg://...")
    bemi_pg.sqlalchemy.register(engine)
    with bemi_pg.context({"user_id": 7}):
        with Session(engine) as session, session.begin():
            session.add(Todo(task="Sleep"))

Whenever a ``bemi_pg.context`` is active (bemi_pg.carrier): a transaction's first statement
goes out after ``BEGIN; CALL bemi.use_context('...')``, in the round trip psycopg would spend on
its own ``BEGIN``, and the transaction's statements go out as they are (so they are still
prepared after five runs). With ``register(engine, sql=True)`` (the default), which adds each
write's own text, normalized by pglast so no value leaks, under the key ``"SQL"``, and under
``AUTOCOMMIT``, each write carries the context as a trailing ``/*Bemi ... Bemi*/`` comment
instead, which the extension's context trigger reads. Session and Core, ``session.begin()``
blocks, savepoints, sync and async: no extra statement, no extra round trip. Reads are sent as
they are. Needs the psycopg (3) dialect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import event, util
from sqlalchemy.engine import Connection, Engine

if TYPE_CHECKING:  # sqlalchemy.ext.asyncio needs greenlet, which sync-only apps may not have
    from sqlalchemy.ext.asyncio import AsyncEngine

from bemi_pg import carrier
from bemi_pg.transaction import open_with_context, open_with_context_async

# sqlalchemy.util.await_only, renamed await_ in 2.1.
_await: Any = getattr(util, "await_", None) or util.await_only

def register(engine: Engine | AsyncEngine, *, sql: bool = True) -> None:
    """Makes every write of the engine carry the ambient context (idempotent; registering
    again replaces the ``sql`` choice). ``sql``: add the normalized statement under "SQL"."""
    target = _sync_engine(engine)
    if target.dialect.driver != "psycopg":
        raise TypeError(f"bemi: the SQLAlchemy integration needs the psycopg dialect, not {target.dialect.driver!r}")
    unregister(engine)
    event.listen(target, "before_cursor_execute", _with_sql if sql else _without_sql, retval=True)
    event.listen(target, "rollback_savepoint", _forget)


def unregister(engine: Engine | AsyncEngine) -> None:
    """Undoes ``register``."""
    target = _sync_engine(engine)
    for name, listener in (("before_cursor_execute", _with_sql), ("before_cursor_execute", _without_sql),
                           ("rollback_savepoint", _forget)):
        if event.contains(target, name, listener):
            event.remove(target, name, listener)


def _sync_engine(engine: Engine | AsyncEngine) -> Engine:
    return engine if isinstance(engine, Engine) else engine.sync_engine


def _route(conn: Connection, statement: str, parameters: Any, include_sql: bool) -> tuple[str, Any]:
    driver = conn.connection.driver_connection
    statement, opening = carrier.route(driver, statement, bound=parameters is not None, include_sql=include_sql)
    if opening is not None:
        if isinstance(driver, psycopg.AsyncConnection):
            _await(open_with_context_async(driver, opening))
        else:
            open_with_context(driver, opening)
    return statement, parameters


def _with_sql(
    conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> tuple[str, Any]:
    return _route(conn, statement, parameters, include_sql=True)


def _without_sql(
    conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> tuple[str, Any]:
    return _route(conn, statement, parameters, include_sql=False)


def _forget(conn: Connection, name: str, context: Any) -> None:
    carrier.forget(conn.connection.driver_connection)
