"""How the framework integrations carry the ambient context (``bemi_pg.context``) on the
statements of a psycopg connection: once per transaction where they can, else on each write.

A statement that opens a transaction (the connection is not in autocommit mode and has none
open) while a context is active goes out after ``BEGIN; CALL bemi.use_context('...')``, sent
in the round trip psycopg would spend on its own ``BEGIN``. The statements of that transaction
then go out as they are: their text does not change from one request to the next, so psycopg's
query cache and prepared statements keep working, and the server checks the context once per
transaction instead of reading a comment on every write. A write whose context is not the one
its transaction was given (a nested ``bemi_pg.context``, a savepoint rolled back) first sends
``CALL bemi.use_context`` in a round trip of its own.

Each write carries the context as a trailing comment instead (bemi_pg.comment) when the context
holds the write's own text ("SQL", different for every statement), in autocommit mode, and in
a transaction the integration did not open (the server takes a comment only when no context
was set in the transaction).

What a transaction was given is remembered per connection from its first statement. A
transaction begun and ended behind the integration's back (raw psycopg on the same connection,
between two of its statements) would leave that record behind, and a write of the next one
could then go out without its context; never with another transaction's, which the server
refuses by its mark.
"""

from __future__ import annotations

import weakref
from typing import Any

import psycopg
from psycopg import pq

from bemi_pg.comment import carry, is_write
from bemi_pg.context import current_context, dump_context
from bemi_pg.transaction import Opening, begin_command

# The context each connection's open transaction was given by route(): its JSON, or _UNKNOWN
# after a savepoint was rolled back (which may have taken a context set inside it). A
# connection not here opened its transaction without a context, or without route().
_UNKNOWN = object()
_given: weakref.WeakKeyDictionary[psycopg.BaseConnection[Any], object] = weakref.WeakKeyDictionary()

def route(conn: psycopg.BaseConnection[Any], sql: str, *, bound: bool, include_sql: bool) -> tuple[str, Opening | None]:
    """The statement to send for ``sql`` on ``conn``, and what must be sent before it (None:
    nothing). ``bound``: the statement is sent with parameters; ``include_sql``: the context
    holds the write's normalized text."""
    status = conn.pgconn.transaction_status
    if include_sql or conn.autocommit or status == pq.TransactionStatus.INERROR:
        return carry(sql, bound=bound, include_sql=include_sql), None
    values = current_context()
    payload = dump_context(values) if values else None
    if status == pq.TransactionStatus.IDLE:
        if payload is None:
            _given.pop(conn, None)
            return sql, None
        _given[conn] = payload
        opening = begin_command(conn)
        return sql, Opening(opening, b"ROLLBACK; " + opening, payload)
    given = _given.get(conn)
    if given is None:
        return carry(sql, bound=bound, include_sql=False), None
    if given == payload or not is_write(sql):
        return sql, None
    _given[conn] = payload
    return sql, Opening(b"", None, payload)


def forget(conn: psycopg.BaseConnection[Any]) -> None:
    """After a savepoint of ``conn``'s transaction was rolled back: the next write sets its
    context again."""
    if conn in _given:
        _given[conn] = _UNKNOWN
