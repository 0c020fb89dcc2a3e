"""How a Django connection's writes carry the ambient context (``bemi_pg.context``).

An execute wrapper sees each statement before it is sent. A write made inside a context goes
out with the context as a trailing ``/*Bemi {...} Bemi*/`` comment, which the extension's
context trigger reads: in Django's default autocommit mode, inside ``atomic()`` and under
``ATOMIC_REQUESTS`` alike. The context travels inside the statement itself: no extra
statement, no extra round trip, no session state; within a transaction the trigger emits it
only when it changes.

``BEMI_CONTEXT_SQL`` (default True) adds the write's own text, normalized by pglast (every
literal and parameter a placeholder, so no value leaks), under the key ``"SQL"``.
Reads are sent as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db.backends.base.base import BaseDatabaseWrapper

from bemi_pg.comment import carry


class ContextWrapper:
    """The execute wrapper of one Django connection."""

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
    ) -> Any:
        include_sql: bool = getattr(settings, "BEMI_CONTEXT_SQL", True)
        return execute(carry(sql, bound=params is not None, include_sql=include_sql), params, many, context)


def install(connection: BaseDatabaseWrapper) -> None:
    """Adds the wrapper to a PostgreSQL connection, once (reconnects keep the first)."""
    if connection.vendor != "postgresql":
        return
    if not any(isinstance(wrapper, ContextWrapper) for wrapper in connection.execute_wrappers):
        # First in the list is outermost: later wrappers (query logging) see what is sent.
        connection.execute_wrappers.insert(0, ContextWrapper())
