"""Setting the application context of a transaction: the client's only job in a request path.

``with_context`` opens a transaction (a savepoint inside one) and sets the context in the
same round trip: ``BEGIN; SELECT bemi.set_context('...'::jsonb)`` goes out as one
simple-protocol query, the context quoted client-side by psycopg (``sql.Literal``), never
spliced into SQL text by hand. A transaction with a context therefore costs the round trips
of one without. Simple-protocol queries are never prepared, so the per-request context
cannot fill psycopg's prepared-statement cache, and PgBouncer in transaction mode sees an
ordinary transaction. On a connection not in autocommit mode (where psycopg would first send
a BEGIN of its own), the block runs with ``autocommit`` on, which its BEGIN ... COMMIT makes
one transaction all the same, and switches it back when the transaction is over.
``set_context``, for a transaction the caller already owns, sends
``SELECT bemi.set_context($1)`` with a bound parameter.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq, sql

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


_SAVEPOINTS = itertools.count(1)


@dataclass(frozen=True)
class _Block:
    """How one with_context block starts and ends, each one simple-protocol query: a savepoint's
    own commands, or None for the transaction's COMMIT and ROLLBACK (sent by psycopg itself,
    as its own transactions do)."""

    enter: bytes
    commit: bytes | None
    rollback: bytes | None


def _set_context_literal(conn: psycopg.BaseConnection[Any], payload: str | None) -> bytes:
    # The fixed text is bytes already; only the context goes through psycopg's quoting.
    return b"SELECT bemi.set_context(" + sql.Literal(payload).as_bytes(conn) + b"::jsonb)"


def _begin(conn: psycopg.BaseConnection[Any]) -> bytes:
    """BEGIN with the connection's transaction characteristics, as conn.transaction() sends it."""
    parts = ["BEGIN"]
    if conn.isolation_level is not None:
        parts.append("ISOLATION LEVEL " + conn.isolation_level.name.replace("_", " "))
    if conn.read_only is not None:
        parts.append("READ ONLY" if conn.read_only else "READ WRITE")
    if conn.deferrable is not None:
        parts.append("DEFERRABLE" if conn.deferrable else "NOT DEFERRABLE")
    return " ".join(parts).encode()


def _block(conn: psycopg.BaseConnection[Any], payload: str | None, outer: dict[str, Any] | None) -> _Block:
    """A transaction when none is open, else a savepoint; the context set on the way in."""
    set_it = _set_context_literal(conn, payload)
    if conn.pgconn.transaction_status == pq.TransactionStatus.IDLE:
        return _Block(_begin(conn) + b"; " + set_it, None, None)
    name = sql.Identifier(f"bemi_{next(_SAVEPOINTS)}").as_bytes(conn)
    release = b"RELEASE SAVEPOINT " + name
    # A released savepoint keeps the inner context: the outer one is put back in the same
    # round trip. A rolled-back one takes its set_context with it.
    commit = release if outer is None else release + b"; " + _set_context_literal(conn, dump_context(outer))
    return _Block(b"SAVEPOINT " + name + b"; " + set_it, commit,
                  b"ROLLBACK TO SAVEPOINT " + name + b"; RELEASE SAVEPOINT " + name)


def _is_ours(error: BaseException) -> bool:
    """psycopg.Rollback() without a transaction means "roll back the innermost block": this one."""
    return isinstance(error, psycopg.Rollback) and error.transaction is None


@contextmanager
def _sync_with_context(conn: psycopg.Connection[Any], context: Context) -> Iterator[psycopg.Connection[Any]]:
    merged, outer, payload = _merged(conn, context)
    _check_open(conn)
    # A non-autocommit connection would send its own BEGIN first: run the block in autocommit
    # mode, which BEGIN ... COMMIT makes one transaction all the same, and switch back after.
    manual = not conn.autocommit and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
    if manual:
        conn.autocommit = True
    try:
        block = _block(conn, payload, outer)
        cursor = conn.cursor()
        cursor.execute(block.enter, prepare=False)
        try:
            with _activate(conn, merged):
                yield conn
        except BaseException as error:
            if not (conn.closed or conn.broken):
                _end(cursor, block.rollback, commit=False)
            if not _is_ours(error):
                raise
        else:
            _end(cursor, block.commit, commit=True)
    finally:
        if manual and not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE:
            conn.autocommit = False


def _end(cursor: psycopg.Cursor[Any], command: bytes | None, commit: bool) -> None:
    if command is not None:
        cursor.execute(command, prepare=False)
    elif commit:
        cursor.connection.commit()
    else:
        cursor.connection.rollback()


async def _end_async(cursor: psycopg.AsyncCursor[Any], command: bytes | None, commit: bool) -> None:
    if command is not None:
        await cursor.execute(command, prepare=False)
    elif commit:
        await cursor.connection.commit()
    else:
        await cursor.connection.rollback()


@asynccontextmanager
async def _async_with_context(
    conn: psycopg.AsyncConnection[Any], context: Context
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    merged, outer, payload = _merged(conn, context)
    _check_open(conn)
    manual = not conn.autocommit and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
    if manual:
        await conn.set_autocommit(True)
    try:
        block = _block(conn, payload, outer)
        cursor = conn.cursor()
        await cursor.execute(block.enter, prepare=False)
        try:
            with _activate(conn, merged):
                yield conn
        except BaseException as error:
            if not (conn.closed or conn.broken):
                await _end_async(cursor, block.rollback, commit=False)
            if not _is_ours(error):
                raise
        else:
            await _end_async(cursor, block.commit, commit=True)
    finally:
        if manual and not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE:
            await conn.set_autocommit(False)


def with_context(conn: Any, context: Context) -> Any:
    """A transaction (a savepoint when one is open) that carries ``context``.

    ``with bemi_pg.with_context(conn, {...}):`` on a ``psycopg.Connection``,
    ``async with bemi_pg.with_context(aconn, {...}):`` on a ``psycopg.AsyncConnection``.
    Nested blocks merge their context into the outer one and restore it on exit. As with
    ``conn.transaction()``, an exception rolls the block back, and ``raise psycopg.Rollback()``
    rolls it back without propagating; do not call ``conn.commit()`` inside the block.
    """
    if isinstance(conn, psycopg.AsyncConnection):
        return _async_with_context(conn, context)
    if isinstance(conn, psycopg.Connection):
        return _sync_with_context(conn, context)
    raise TypeError(f"bemi: with_context needs a psycopg connection, not {type(conn).__name__}")
