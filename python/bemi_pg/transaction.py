"""The transaction context: a transaction (or savepoint) that carries the application context.

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
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import psycopg
from psycopg import pq, sql

from bemi_pg.context import Context, dump_context

Row = TypeVar("Row")

SET_CONTEXT = "SELECT bemi.set_context(%s::jsonb)"

# The context each connection's current transaction carries, for nesting: {id(conn): context}.
_active: ContextVar[dict[int, dict[str, Any]]] = ContextVar("bemi_active_contexts")


def _check_open(conn: psycopg.BaseConnection[Any]) -> None:
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


# A with_context block written once, as the steps it asks of its connection (psycopg's
# transaction.py writes its transactions the same way); the sync and async wrappers below only
# carry each step out.

@dataclass(frozen=True)
class _Send:
    """A simple-protocol query; None: the transaction's COMMIT (commit) or ROLLBACK, sent by
    psycopg itself."""

    command: bytes | None
    commit: bool = True


@dataclass(frozen=True)
class _Autocommit:
    """Switches the connection's autocommit mode."""

    on: bool


_Step = _Send | _Autocommit


class _WithContext:
    """One with_context block: the steps that enter it, leave it, and put the connection's
    autocommit mode back."""

    def __init__(self, conn: psycopg.BaseConnection[Any], context: Context) -> None:
        self.conn = conn
        self.merged, self.outer, self.payload = _merged(conn, context)
        _check_open(conn)
        # A non-autocommit connection would send its own BEGIN first: run the block in autocommit
        # mode, which BEGIN ... COMMIT makes one transaction all the same, and switch back after.
        self.manual = not conn.autocommit and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
        self.block: _Block | None = None

    def enter(self) -> Iterator[_Step]:
        if self.manual:
            yield _Autocommit(True)
        self.block = _block(self.conn, self.payload, self.outer)
        yield _Send(self.block.enter)

    def exit(self, error: BaseException | None) -> Iterator[_Step]:
        """Commits the block, or (error) rolls it back when the connection can still be used."""
        assert self.block is not None
        if error is None:
            yield _Send(self.block.commit, commit=True)
        elif not (self.conn.closed or self.conn.broken):
            yield _Send(self.block.rollback, commit=False)

    def restore(self) -> Iterator[_Step]:
        conn = self.conn
        if self.manual and not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE:
            yield _Autocommit(False)


def _carry_out(cursor: psycopg.Cursor[Any], steps: Iterator[_Step]) -> None:
    for step in steps:
        if isinstance(step, _Autocommit):
            cursor.connection.autocommit = step.on
        elif step.command is not None:
            cursor.execute(step.command, prepare=False)
        elif step.commit:
            cursor.connection.commit()
        else:
            cursor.connection.rollback()


async def _carry_out_async(cursor: psycopg.AsyncCursor[Any], steps: Iterator[_Step]) -> None:
    for step in steps:
        if isinstance(step, _Autocommit):
            await cursor.connection.set_autocommit(step.on)
        elif step.command is not None:
            await cursor.execute(step.command, prepare=False)
        elif step.commit:
            await cursor.connection.commit()
        else:
            await cursor.connection.rollback()


@contextmanager
def _sync_with_context(conn: psycopg.Connection[Row], context: Context) -> Iterator[psycopg.Connection[Row]]:
    block = _WithContext(conn, context)
    cursor = conn.cursor()
    try:
        _carry_out(cursor, block.enter())
        try:
            with _activate(conn, block.merged):
                yield conn
        except BaseException as error:
            _carry_out(cursor, block.exit(error))
            if not _is_ours(error):
                raise
        else:
            _carry_out(cursor, block.exit(None))
    finally:
        _carry_out(cursor, block.restore())


@asynccontextmanager
async def _async_with_context(
    conn: psycopg.AsyncConnection[Row], context: Context
) -> AsyncIterator[psycopg.AsyncConnection[Row]]:
    block = _WithContext(conn, context)
    cursor = conn.cursor()
    try:
        await _carry_out_async(cursor, block.enter())
        try:
            with _activate(conn, block.merged):
                yield conn
        except BaseException as error:
            await _carry_out_async(cursor, block.exit(error))
            if not _is_ours(error):
                raise
        else:
            await _carry_out_async(cursor, block.exit(None))
    finally:
        await _carry_out_async(cursor, block.restore())


@overload
def with_context(
    conn: psycopg.AsyncConnection[Row], context: Context
) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Row]]: ...
@overload
def with_context(conn: psycopg.Connection[Row], context: Context) -> AbstractContextManager[psycopg.Connection[Row]]: ...
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
