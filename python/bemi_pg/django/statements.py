"""How a Django connection's writes carry the ambient context (``bemi_pg.context``).

An execute wrapper sees each statement before it is sent:

- in a transaction (``atomic()``, ``ATOMIC_REQUESTS``), one ``bemi.set_context`` goes out
  before the transaction's first write, not per statement, and only again when the ambient
  context changes or a savepoint is rolled back;
- in Django's default autocommit mode each write is its own transaction, so there is no
  transaction to hold a set_context: the write is sent with a trailing ``/*Bemi {...} Bemi*/``
  comment, which the extension's context trigger reads. The context travels inside the
  statement itself: no extra statement, no extra round trip, no session state;
- reads are sent as they are, and never open a transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from django.db.backends.base.base import BaseDatabaseWrapper

from bemi_pg.context import SET_CONTEXT, StatementCarrier


class ContextWrapper:
    """The execute wrapper of one Django connection."""

    def __init__(self) -> None:
        self.carrier = StatementCarrier()

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
    ) -> Any:
        raw = context["connection"].connection
        if isinstance(raw, psycopg.Connection):
            sql = self.carrier.prepare(raw, sql, lambda payload: raw.execute(SET_CONTEXT, [payload]))
        return execute(sql, params, many, context)


def install(connection: BaseDatabaseWrapper) -> None:
    """Adds the wrapper to a PostgreSQL connection, once (reconnects keep the first)."""
    if connection.vendor != "postgresql":
        return
    if not any(isinstance(wrapper, ContextWrapper) for wrapper in connection.execute_wrappers):
        # First in the list is outermost: later wrappers (query logging) see what is sent.
        connection.execute_wrappers.insert(0, ContextWrapper())
