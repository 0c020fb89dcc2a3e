"""Setting the application context of a transaction: the client's only job in a request path.

``with_context`` opens a transaction (a savepoint inside one) and runs
``SELECT bemi.set_context($1)`` in it: one statement per transaction, the context always a
bound parameter. (Pipelining it with ``BEGIN`` saves that round trip in theory, but psycopg's
pipeline mode costs more than the round trip it saves: see docs/benchmarks.md.)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import Any

import psycopg
from psycopg import pq

Context = Mapping[str, Any]

SET_CONTEXT = "SELECT bemi.set_context(%s::jsonb)"

# The context each connection's current transaction carries, for nesting: {id(conn): context}.
_active: ContextVar[dict[int, dict[str, Any]]] = ContextVar("bemi_active_contexts")


def dump_context(context: Context | None) -> str | None:
    """The JSON text of a context, checked before anything is sent.

    Raises TypeError for anything that is not a mapping of JSON-serialisable values.
    """
    if context is None:
        return None
    if not isinstance(context, Mapping):
        raise TypeError(f"bemi: context must be a mapping (a JSON object), not {type(context).__name__}")
    try:
        return json.dumps(dict(context), allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise TypeError(f"bemi: context is not JSON-serialisable: {error}") from error


def _check_open(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    if conn.closed or conn.broken:
        raise psycopg.InterfaceError("bemi: the connection is closed or broken")


def _check_in_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    _check_open(conn)
    if conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE:
        raise psycopg.ProgrammingError(
            "bemi: set_context needs an open transaction (the context is transaction-local); "
            "use bemi_pg.with_context(conn, ...) or conn.transaction()"
        )


def set_context(conn: psycopg.Connection[Any], context: Context | None) -> None:
    """Sets the context of the transaction the caller owns (NULL clears it)."""
    payload = dump_context(context)
    _check_in_transaction(conn)
    conn.execute(SET_CONTEXT, [payload])


async def set_context_async(conn: psycopg.AsyncConnection[Any], context: Context | None) -> None:
    """``set_context`` for an ``AsyncConnection``."""
    payload = dump_context(context)
    _check_in_transaction(conn)
    await conn.execute(SET_CONTEXT, [payload])


def _merged(conn: object, context: Context) -> tuple[dict[str, Any], dict[str, Any] | None, str | None]:
    """The context a nested block sets (outer keys, inner keys winning), the outer one, and the
    JSON to send (checked, so a bad context raises TypeError before anything is sent)."""
    if not isinstance(context, Mapping):
        dump_context(context)  # raises the TypeError that says what is wrong
    outer = _active.get({}).get(id(conn))
    merged = {**(outer or {}), **context}
    return merged, outer, dump_context(merged)


@contextmanager
def _activate(conn: object, context: dict[str, Any]) -> Iterator[None]:
    token = _active.set({**_active.get({}), id(conn): context})
    try:
        yield
    finally:
        _active.reset(token)


@contextmanager
def _sync_with_context(conn: psycopg.Connection[Any], context: Context) -> Iterator[psycopg.Connection[Any]]:
    merged, outer, payload = _merged(conn, context)
    _check_open(conn)
    with conn.transaction():
        conn.execute(SET_CONTEXT, [payload])
        with _activate(conn, merged):
            yield conn
        if outer is not None:  # a released savepoint keeps the inner context: put the outer one back
            conn.execute(SET_CONTEXT, [dump_context(outer)])


@asynccontextmanager
async def _async_with_context(
    conn: psycopg.AsyncConnection[Any], context: Context
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    merged, outer, payload = _merged(conn, context)
    _check_open(conn)
    async with conn.transaction():
        await conn.execute(SET_CONTEXT, [payload])
        with _activate(conn, merged):
            yield conn
        if outer is not None:
            await conn.execute(SET_CONTEXT, [dump_context(outer)])


def with_context(conn: Any, context: Context) -> Any:
    """A transaction (a savepoint when one is open) that carries ``context``.

    ``with bemi_pg.with_context(conn, {...}):`` on a ``psycopg.Connection``,
    ``async with bemi_pg.with_context(aconn, {...}):`` on a ``psycopg.AsyncConnection``.
    Nested blocks merge their context into the outer one and restore it on exit.
    """
    if isinstance(conn, psycopg.AsyncConnection):
        return _async_with_context(conn, context)
    if isinstance(conn, psycopg.Connection):
        return _sync_with_context(conn, context)
    raise TypeError(f"bemi: with_context needs a psycopg connection, not {type(conn).__name__}")
