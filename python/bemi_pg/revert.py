"""Change reversion: undo the net effect of changes, in the caller's transaction.

    bemi_pg.revert(conn, transaction_id=1234)                   # one transaction
    bemi_pg.revert(conn, context={"request_id": "r-42"})        # one request
    bemi_pg.revert(conn, change_ids=[5, 6], on_conflict="skip") # some changes

Thin wrappers over ``bemi.revert``, ``bemi.revert_transaction`` and ``bemi.revert_context``
(docs/time-travel.md). The writes run as the connection's role, carry the current context plus
``{"bemi_revert": {"change_ids": [...]}}``, and commit or roll back with the caller's
transaction (on an autocommit connection the revert is its own transaction). With ``trail=``,
a connection to the database that holds the trail (bemi-pg worker --trail-dsn), the changes
are read there, only those of ``conn``'s database (bemi_pg.trail_database). Written once, as
steps (bemi_pg.steps), for sync and async connections alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from bemi_pg import trail_database
from bemi_pg.steps import Query, Steps, run, run_async

OnConflict = Literal["error", "skip", "overwrite"]


@dataclass(frozen=True)
class Reverted:
    """One row a revert dealt with: the newest of its changes, the row, and what was done
    (``inserted``, ``updated``, ``deleted``, ``skipped`` or ``unchanged``)."""

    change_id: int
    schema: str
    table: str
    primary_key: str | None
    action: str


def check_choice(change_ids: Iterable[int] | None, transaction_id: int | None, context: Mapping[str, Any] | None,
                 since: datetime | str | None) -> None:
    """Exactly one of change_ids, transaction_id or context; since only with context."""
    chosen = [name for name, value in (("change_ids", change_ids), ("transaction_id", transaction_id),
                                       ("context", context)) if value is not None]
    if len(chosen) != 1:
        raise TypeError(f"bemi: revert needs exactly one of change_ids, transaction_id or context, not {chosen or 'none'}")
    if since is not None and context is None:
        raise TypeError("bemi: since goes with context")


def revert_steps(
    change_ids: Iterable[int] | None, transaction_id: int | None, context: Mapping[str, Any] | None,
    since: datetime | str | None, on_conflict: OnConflict, trail: bool,
) -> Steps[list[Reverted]]:
    """The revert of exactly one of change_ids, transaction_id or context (checked now, before
    any step), or (trail) its steps on a trail in a database of its own."""
    check_choice(change_ids, transaction_id, context, since)
    if trail:
        return trail_database.revert_steps(None if change_ids is None else list(change_ids), transaction_id,
                                           None if context is None else dict(context), since, on_conflict,
                                           class_row(Reverted))
    return _revert_here(change_ids, transaction_id, context, since, on_conflict)


def _revert_here(
    change_ids: Iterable[int] | None, transaction_id: int | None, context: Mapping[str, Any] | None,
    since: datetime | str | None, on_conflict: OnConflict,
) -> Steps[list[Reverted]]:
    params: list[Any]
    if change_ids is not None:
        query, params = sql.SQL("SELECT * FROM bemi.revert(%s::bigint[], %s)"), [list(change_ids), on_conflict]
    elif transaction_id is not None:
        query, params = sql.SQL("SELECT * FROM bemi.revert_transaction(%s, %s)"), [transaction_id, on_conflict]
    else:
        query, params = (sql.SQL("SELECT * FROM bemi.revert_context(%s, %s::timestamptz, %s)"),
                         [Jsonb(dict(context or {})), since, on_conflict])
    done: list[Reverted] = yield Query(query, params, rows=class_row(Reverted))
    return done


def revert(
    conn: psycopg.Connection[Any], *, change_ids: Iterable[int] | None = None, transaction_id: int | None = None,
    context: Mapping[str, Any] | None = None, since: datetime | str | None = None, on_conflict: OnConflict = "error",
    trail: psycopg.Connection[Any] | None = None,
) -> list[Reverted]:
    """Undoes the net effect of the chosen changes on each row; returns what it did per row.

    A row changed since raises ``psycopg.errors.ObjectNotInPrerequisiteState`` naming it
    (``on_conflict="error"``), or is left alone (``"skip"``) or reverted anyway (``"overwrite"``).
    """
    return run(revert_steps(change_ids, transaction_id, context, since, on_conflict, trail is not None), conn, trail)


async def revert_async(
    conn: psycopg.AsyncConnection[Any], *, change_ids: Iterable[int] | None = None, transaction_id: int | None = None,
    context: Mapping[str, Any] | None = None, since: datetime | str | None = None, on_conflict: OnConflict = "error",
    trail: psycopg.AsyncConnection[Any] | None = None,
) -> list[Reverted]:
    """``revert`` for an ``AsyncConnection``."""
    return await run_async(revert_steps(change_ids, transaction_id, context, since, on_conflict, trail is not None),
                           conn, trail)
