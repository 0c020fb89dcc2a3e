"""The transaction context: a transaction (or savepoint) that carries the application context.

``with_context`` opens a transaction (a savepoint inside one) and sets the context in the
same round trip: ``BEGIN; CALL bemi.use_context('...')`` goes out as one simple-protocol
query, the context a quoted literal. A transaction with a context therefore costs the round
trips of one without. Simple-protocol queries are never prepared, so the per-request context
cannot fill psycopg's prepared-statement cache, and PgBouncer in transaction mode sees an
ordinary transaction. They go out the way psycopg sends its own BEGIN and COMMIT
(``conn.wait`` on its ``execute`` generator, under the connection's lock), not through a
cursor, which cost about 10 µs of client CPU per block (bench/client_cost.py). The literal's
quotes are doubled, and one holding a backslash is an E'' literal with its backslashes doubled
too: it reads the same whatever standard_conforming_strings says. The JSON is ASCII (the
encoder escapes everything else), so it reads the same in every client encoding. On a
connection not in autocommit mode (where psycopg would first send a BEGIN of its own), the
block runs with ``autocommit`` on, which its BEGIN ... COMMIT makes one transaction all the
same, and switches it back when the transaction is over.

``use_context`` is set_context without the planner (docs/benchmarks.md). An extension older
than it (1.0, 1.1) fails the first block of a connection, which is then done again with
``SELECT bemi.set_context`` in one more round trip; the connection is sent set_context from
then on. ``set_context``, for a transaction the caller already owns, sends
``SELECT bemi.set_context($1)`` with a bound parameter (a failed CALL there would abort the
caller's transaction).
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, NamedTuple, TypeVar, overload

import psycopg
from psycopg import generators, pq, sql

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


_SAVEPOINTS = itertools.count(1)

# Connections whose extension predates bemi.use_context (1.0, 1.1): they are sent set_context.
_without_use_context: weakref.WeakSet[psycopg.BaseConnection[Any]] = weakref.WeakSet()


def _set_context_command(conn: psycopg.BaseConnection[Any], payload: str | None) -> bytes:
    if payload is None:
        literal = b"NULL"
    elif "\\" in payload:
        literal = b"E'" + payload.replace("\\", "\\\\").replace("'", "''").encode() + b"'"
    else:
        literal = b"'" + payload.replace("'", "''").encode() + b"'"
    if conn in _without_use_context:
        return b"SELECT bemi.set_context(" + literal + b"::jsonb)"
    return b"CALL bemi.use_context(" + literal + b")"


class Opening(NamedTuple):
    """What opens a transaction or savepoint (or nothing: b"") and sets a context in the same
    simple-protocol query, and what undoes that opening (None: nothing can) when the extension
    predates bemi.use_context (1.0, 1.1)."""

    opening: bytes
    undo: bytes | None
    payload: str | None

    def first(self, conn: psycopg.BaseConnection[Any]) -> bytes:
        command = _set_context_command(conn, self.payload)
        return self.opening + b"; " + command if self.opening else command

    def again(self, conn: psycopg.BaseConnection[Any], error: psycopg.errors.UndefinedFunction) -> bytes:
        """After ``first`` found no bemi.use_context: the same with set_context, the failed
        opening undone first, in one round trip; the connection is sent set_context from now
        on. Any other missing function is the caller's error."""
        if conn in _without_use_context or self.undo is None:
            raise error
        _without_use_context.add(conn)
        return self.undo + b"; " + _set_context_command(conn, self.payload)


def open_with_context(conn: psycopg.Connection[Any], opening: Opening) -> None:
    try:
        _send(conn, opening.first(conn))
    except psycopg.errors.UndefinedFunction as error:
        _send(conn, opening.again(conn, error))


async def open_with_context_async(conn: psycopg.AsyncConnection[Any], opening: Opening) -> None:
    try:
        await _send_async(conn, opening.first(conn))
    except psycopg.errors.UndefinedFunction as error:
        await _send_async(conn, opening.again(conn, error))


def begin_command(conn: psycopg.BaseConnection[Any]) -> bytes:
    """BEGIN with the connection's transaction characteristics, as conn.transaction() sends it."""
    parts = ["BEGIN"]
    if conn.isolation_level is not None:
        parts.append("ISOLATION LEVEL " + conn.isolation_level.name.replace("_", " "))
    if conn.read_only is not None:
        parts.append("READ ONLY" if conn.read_only else "READ WRITE")
    if conn.deferrable is not None:
        parts.append("DEFERRABLE" if conn.deferrable else "NOT DEFERRABLE")
    return " ".join(parts).encode()


def _raise_first_error(conn: psycopg.BaseConnection[Any], results: list[pq.abc.PGresult]) -> None:
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)


def _send(conn: psycopg.Connection[Any], command: bytes) -> None:
    """Runs one simple-protocol query (statements separated by ;), raising its first error."""
    with conn.lock:
        conn.pgconn.send_query(command)
        _raise_first_error(conn, conn.wait(generators.execute(conn.pgconn)))


async def _send_async(conn: psycopg.AsyncConnection[Any], command: bytes) -> None:
    async with conn.lock:
        conn.pgconn.send_query(command)
        _raise_first_error(conn, await conn.wait(generators.execute(conn.pgconn)))


def _is_ours(error: BaseException | None) -> bool:
    """psycopg.Rollback() without a transaction means "roll back the innermost block": this one."""
    return isinstance(error, psycopg.Rollback) and error.transaction is None


class _Block:
    """One with_context block: what it sends to enter and to leave, each one simple-protocol
    query, written once for the sync and async blocks below, which only send it. A transaction
    when none is open, else a savepoint; the context set on the way in."""

    def __init__(self, conn: psycopg.BaseConnection[Any], context: Context) -> None:
        self.merged, self.outer, self.payload = _merged(conn, context)
        _check_open(conn)
        self.conn = conn
        # A non-autocommit connection would send its own BEGIN first: run the block in autocommit
        # mode, which BEGIN ... COMMIT makes one transaction all the same, and switch back after.
        self.manual = not conn.autocommit and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
        self.savepoint: bytes | None = None
        self.opened = False  # whether there is a transaction or savepoint of this block to end
        self.token: Token[dict[int, dict[str, Any]]] | None = None

    def entering(self) -> Opening:
        conn = self.conn
        status = conn.pgconn.transaction_status
        # In a failed transaction the SAVEPOINT fails too: nothing of this block to roll back.
        self.opened = status != pq.TransactionStatus.INERROR
        if status == pq.TransactionStatus.IDLE:
            opening = begin_command(conn)
        else:
            self.savepoint = sql.Identifier(f"bemi_{next(_SAVEPOINTS)}").as_bytes(conn)
            opening = b"SAVEPOINT " + self.savepoint
        undo = b"ROLLBACK; " + opening if self.savepoint is None else b"ROLLBACK TO SAVEPOINT " + self.savepoint
        return Opening(opening, undo, self.payload)

    def activate(self) -> None:
        """Makes this block's context the one nested blocks merge into."""
        self.token = _active.set({**_active.get({}), id(self.conn): self.merged})

    def deactivate(self) -> None:
        assert self.token is not None
        _active.reset(self.token)

    def leaving(self, error: BaseException | None) -> bytes | None:
        """Ends the block: commits it, or (error, also one of entering: a context the server
        refused) rolls it back. None: the transaction's COMMIT or ROLLBACK, sent by psycopg
        itself (as its own transactions do), or nothing at all when there is nothing to end or
        the connection can no longer be used."""
        if self.savepoint is None or not self._can_end(error):
            return None
        release = b"RELEASE SAVEPOINT " + self.savepoint
        if error is not None:
            return b"ROLLBACK TO SAVEPOINT " + self.savepoint + b"; " + release
        # A released savepoint keeps the inner context: the outer one is put back in the same
        # round trip. A rolled-back one takes its context with it.
        return release if self.outer is None else release + b"; " + _set_context_command(self.conn, dump_context(self.outer))

    def ends_transaction(self, error: BaseException | None) -> bool:
        """Whether leaving needs psycopg's own COMMIT or ROLLBACK."""
        return self.savepoint is None and self._can_end(error)

    def _can_end(self, error: BaseException | None) -> bool:
        return self.opened and (error is None or not (self.conn.closed or self.conn.broken))

    def restores_autocommit(self) -> bool:
        conn = self.conn
        return self.manual and not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE


class _SyncBlock(_Block):
    conn: psycopg.Connection[Any]

    def __enter__(self) -> psycopg.Connection[Any]:
        conn = self.conn
        if self.manual:
            conn.autocommit = True
        try:
            open_with_context(conn, self.entering())
        except BaseException as error:
            self._end(error)
            raise
        self.activate()
        return conn

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> bool:
        self.deactivate()
        self._end(error)
        return _is_ours(error)

    def _end(self, error: BaseException | None) -> None:
        conn = self.conn
        try:
            command = self.leaving(error)
            if command is not None:
                _send(conn, command)
            elif self.ends_transaction(error):
                conn.commit() if error is None else conn.rollback()
        finally:
            self._restore()

    def _restore(self) -> None:
        if self.restores_autocommit():
            self.conn.autocommit = False


class _AsyncBlock(_Block):
    conn: psycopg.AsyncConnection[Any]

    async def __aenter__(self) -> psycopg.AsyncConnection[Any]:
        conn = self.conn
        if self.manual:
            await conn.set_autocommit(True)
        try:
            await open_with_context_async(conn, self.entering())
        except BaseException as error:
            await self._end(error)
            raise
        self.activate()
        return conn

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> bool:
        self.deactivate()
        await self._end(error)
        return _is_ours(error)

    async def _end(self, error: BaseException | None) -> None:
        conn = self.conn
        try:
            command = self.leaving(error)
            if command is not None:
                await _send_async(conn, command)
            elif self.ends_transaction(error):
                await (conn.commit() if error is None else conn.rollback())
        finally:
            await self._restore()

    async def _restore(self) -> None:
        if self.restores_autocommit():
            await self.conn.set_autocommit(False)


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
        return _AsyncBlock(conn, context)
    if isinstance(conn, psycopg.Connection):
        return _SyncBlock(conn, context)
    raise TypeError(f"bemi: with_context needs a psycopg connection, not {type(conn).__name__}")
