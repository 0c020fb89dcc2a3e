"""The ambient context: who, where and how, for whatever code runs now (a request, a job).

``bemi_pg.context({...})`` is a context manager and a decorator backed by a
``contextvars.ContextVar``, so it is correct under threads and asyncio. Framework
integrations read it and carry it on the writes a connection sends (``StatementCarrier``):

- in a transaction, one ``SELECT bemi.set_context(...)`` before its first write (and again
  only when the ambient context changes or a savepoint rollback may have undone it);
- outside any transaction (autocommit), a trailing ``/*Bemi {...} Bemi*/`` comment on the
  write itself, which the extension's context trigger reads: no extra statement, no extra
  round trip, and nothing session-level that could leak to the next user of the connection.

Reads are never touched.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, TypeVar, cast

import psycopg
from psycopg import pq

from bemi_pg.client import Context, dump_context

F = TypeVar("F", bound=Callable[..., Any])

_current: ContextVar[dict[str, Any] | None] = ContextVar("bemi_context", default=None)


class context:
    """Sets the ambient context for a block or a function, merged over any outer one.

        with bemi_pg.context({"worker": "mailer"}):
            ...
        @bemi_pg.context(job="nightly-import")
        def run() -> None: ...

    Works with ``with``, ``async with`` and on sync and async functions.
    """

    def __init__(self, values: Context | None = None, /, **more: Any) -> None:
        self._values: dict[str, Any] = {**(values or {}), **more}
        dump_context(self._values)
        self._tokens: list[Token[dict[str, Any] | None]] = []

    def __enter__(self) -> dict[str, Any]:
        merged = {**(_current.get() or {}), **self._values}
        self._tokens.append(_current.set(merged))
        return merged

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        _current.reset(self._tokens.pop())

    async def __aenter__(self) -> dict[str, Any]:
        return self.__enter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(kind, error, tb)

    def __call__(self, function: F) -> F:
        """Decorates a function: each call runs in its own copy of this context."""
        values = self._values
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with context(values):
                    return await function(*args, **kwargs)

            return cast(F, run_async)

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            with context(values):
                return function(*args, **kwargs)

        return cast(F, run)


def current_context() -> dict[str, Any] | None:
    """The ambient context in effect now, or None outside any ``bemi_pg.context`` block."""
    return _current.get()


def current_payload() -> str | None:
    """The ambient context as the JSON text bemi.set_context takes; None when there is none."""
    values = _current.get()
    return dump_context(values) if values else None


SET_CONTEXT = "SELECT bemi.set_context(%s::jsonb)"

# Statements that may write: the ones the context must ride on. A WITH query counts when it
# holds a data-modifying statement; everything else (SELECT, SHOW, SAVEPOINT, ...) is a read.
_WRITE = re.compile(r"\s*(?:INSERT|UPDATE|DELETE|MERGE|TRUNCATE|COPY|CALL|DO)\b", re.IGNORECASE)
_WITH = re.compile(r"\s*WITH\b", re.IGNORECASE)
_MODIFYING = re.compile(r"\b(?:INSERT|UPDATE|DELETE|MERGE)\b", re.IGNORECASE)
_ROLLBACK = re.compile(r"\s*ROLLBACK\b", re.IGNORECASE)


def is_write(sql: str) -> bool:
    """Whether a statement may change rows, judged by its first keyword."""
    return bool(_WRITE.match(sql) or (_WITH.match(sql) and _MODIFYING.search(sql)))


def with_comment(sql: str, payload: str) -> str:
    """The statement with its context as a trailing ``/*Bemi {...} Bemi*/`` comment.

    ``*`` and ``%`` (only ever inside JSON strings) are sent as \\u escapes, so the JSON can
    neither close the comment nor be read as a driver placeholder; it parses back the same.
    The comment starts on a new line, so a trailing ``--`` comment cannot swallow it.
    """
    escaped = payload.replace("*", "\\u002a").replace("%", "\\u0025")
    return f"{sql}\n/*Bemi {escaped} Bemi*/"


class StatementCarrier:
    """Carries the ambient context on the writes of one psycopg connection.

    Integrations call ``prepare`` with each statement just before it is sent; it returns the
    statement to send and calls ``send_context(payload)`` first when the open transaction
    needs a ``bemi.set_context``. What was set is remembered per transaction: a connection
    seen idle has no transaction open, so nothing set earlier is in effect any more.
    """

    def __init__(self) -> None:
        self._sent: str | None = None
        self._known = True

    def prepare(
        self, conn: psycopg.BaseConnection[Any], sql: str, send_context: Callable[[str | None], object]
    ) -> str:
        idle = conn.info.transaction_status == pq.TransactionStatus.IDLE
        if idle:
            self._sent, self._known = None, True
        if not is_write(sql):
            if _ROLLBACK.match(sql):
                # ROLLBACK TO SAVEPOINT undoes a set_context made since the savepoint.
                self._known = False
            return sql
        payload = current_payload()
        if idle and conn.autocommit:
            return sql if payload is None else with_comment(sql, payload)
        if payload != self._sent or not self._known:
            send_context(payload)
            self._sent, self._known = payload, True
        return sql
