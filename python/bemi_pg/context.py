"""The ambient context: who, where and how, for whatever code runs now (a request, a job).

``bemi_pg.context({...})`` is a context manager and a decorator backed by a
``contextvars.ContextVar``, so it is correct under threads and asyncio. Framework
integrations read it and carry it on the writes a connection sends (``carry``): each write
goes out with a trailing ``/*Bemi {...} Bemi*/`` comment, which the extension's context
trigger reads, in a transaction and in autocommit mode alike. No extra statement, no extra
round trip, nothing session-level that could leak to the next user of the connection; the
trigger emits a context only when it differs from the one the transaction last emitted.
With ``include_sql`` the comment also holds the write's own text, normalized by pglast
(``bemi_pg.normalize``), under the key ``"SQL"``.

Reads are never touched, and writes made outside any context carry nothing.
"""

from __future__ import annotations

import functools
import inspect
import re
import uuid
from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, TypeVar, cast

from bemi_pg.client import Context, dump_context
from bemi_pg.normalize import normalized

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


def request_id(header: str | None) -> str:
    """The id of a request: its X-Request-ID header when it has one (at most 200 characters),
    else a new UUID."""
    return header[:200] if header else str(uuid.uuid4())


# Statements that may write: the ones the context must ride on. A WITH query counts when it
# holds a data-modifying statement; everything else (SELECT, SHOW, SAVEPOINT, ...) is a read.
_WRITE = re.compile(r"\s*(?:INSERT|UPDATE|DELETE|MERGE|TRUNCATE|COPY|CALL|DO)\b", re.IGNORECASE)
_WITH = re.compile(r"\s*WITH\b", re.IGNORECASE)
_MODIFYING = re.compile(r"\b(?:INSERT|UPDATE|DELETE|MERGE)\b", re.IGNORECASE)


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


def carry(sql: str, *, bound: bool, include_sql: bool) -> str:
    """The statement to send for ``sql``: a write made inside a context gets the context as a
    trailing comment (with its normalized text under "SQL" when ``include_sql``); anything
    else is sent as it is. ``bound``: the statement is sent with parameters."""
    values = _current.get()
    if not values or not is_write(sql):
        return sql
    if include_sql and (text := normalized(sql, bound)) is not None:
        values = {**values, "SQL": text}
    return with_comment(sql, dump_context(values) or "{}")
