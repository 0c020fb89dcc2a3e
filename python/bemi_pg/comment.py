"""The ambient context carried on the writes a connection sends, as a statement comment.

Framework integrations pass each statement through ``carry``: a write made inside a
``bemi_pg.context`` goes out with a trailing ``/*Bemi {...} Bemi*/`` comment, which the
extension's context trigger reads, in a transaction and in autocommit mode alike. No extra
statement, no extra round trip, nothing session-level that could leak to the next user of the
connection; the trigger emits a context only when it differs from the one the transaction
last emitted. With ``include_sql`` the comment also holds the write's own text, normalized by
pglast (``bemi_pg.normalize``), under the key ``"SQL"``.

Reads are never touched, and writes made outside any context carry nothing.
"""

from __future__ import annotations

import re

from bemi_pg.context import current_context, dump_context
from bemi_pg.normalize import normalized

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
    values = current_context()
    if not values or not is_write(sql):
        return sql
    if include_sql and (text := normalized(sql, bound)) is not None:
        values = {**values, "SQL": text}
    return with_comment(sql, dump_context(values) or "{}")
