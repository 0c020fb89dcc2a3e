"""How a Django connection's statements carry the ambient context (``bemi_pg.context``).

An execute wrapper sees each statement before it is sent (bemi_pg.carrier). Inside
``atomic()`` (and under ``ATOMIC_REQUESTS``) the transaction's first statement goes out after
``BEGIN; CALL bemi.use_context('...')`` in the round trip psycopg would spend on its own
``BEGIN``, and the transaction's statements go out as they are. In Django's default autocommit
mode, and when the context holds each write's own text, a write made inside a context carries
it as a trailing ``/*Bemi {...} Bemi*/`` comment, which the extension's context trigger reads.
Either way: no extra statement, no extra round trip, no session state.

``BEMI_CONTEXT_SQL`` (default True) adds the write's own text, normalized by pglast (every
literal and parameter a placeholder, so no value leaks), under the key ``"SQL"``.
Reads are sent as they are. Needs psycopg 3 (Django's ``postgresql`` backend with it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from django.conf import settings
from django.db.backends.base.base import BaseDatabaseWrapper

from bemi_pg import carrier
from bemi_pg.comment import carry
from bemi_pg.transaction import open_with_context


class ContextWrapper:
    """The execute wrapper of one Django connection."""

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
    ) -> Any:
        include_sql: bool = getattr(settings, "BEMI_CONTEXT_SQL", True)
        conn = context["connection"].connection
        if not isinstance(conn, psycopg.Connection):  # psycopg2
            return execute(carry(sql, bound=params is not None, include_sql=include_sql), params, many, context)
        if sql.startswith("ROLLBACK TO SAVEPOINT"):
            carrier.forget(conn)
        sql, opening = carrier.route(conn, sql, bound=params is not None, include_sql=include_sql)
        if opening is not None:
            open_with_context(conn, opening)
        return execute(sql, params, many, context)


def install(connection: BaseDatabaseWrapper) -> None:
    """Adds the wrapper to a PostgreSQL connection, once (reconnects keep the first)."""
    if connection.vendor != "postgresql":
        return
    if not any(isinstance(wrapper, ContextWrapper) for wrapper in connection.execute_wrappers):
        # First in the list is outermost: later wrappers (query logging) see what is sent.
        connection.execute_wrappers.insert(0, ContextWrapper())
