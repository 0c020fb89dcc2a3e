"""Change reversion: undo the net effect of changes, in the caller's transaction.

    bemi_pg.revert(conn, transaction_id=1234)                   # one transaction
    bemi_pg.revert(conn, context={"request_id": "r-42"})        # one request
    bemi_pg.revert(conn, change_ids=[5, 6], on_conflict="skip") # some changes
    bemi_pg.revert(conn, transaction_range=(1234, 1240))        # transactions 1234..1240 in commit order
    bemi_pg.revert_preview(conn, change_ids=[5, 6])             # what it would write, not written

Thin wrappers over ``bemi.revert``, ``bemi.revert_transaction``, ``bemi.revert_transactions``,
``bemi.revert_context`` and ``bemi.revert_preview`` (docs/time-travel.md). The empty context
matches every change: refused unless ``match_all=True``. The writes run as the connection's role, carry the current context plus
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


@dataclass(frozen=True)
class Previewed:
    """One row a revert would deal with, and the values it would write (None: no write, or a delete)."""

    change_id: int
    schema: str
    table: str
    primary_key: str | None
    action: str
    new_values: dict[str, Any] | None


@dataclass(frozen=True)
class Choice:
    """The changes to revert: exactly one of change_ids, transaction_id, transaction_range (the
    first and last transaction, in commit order) or context (since, match_all only with it)."""

    change_ids: list[int] | None = None
    transaction_id: int | None = None
    transaction_range: tuple[int, int] | None = None
    context: dict[str, Any] | None = None
    since: datetime | str | None = None
    match_all: bool = False

    def check(self) -> None:
        chosen = [name for name in ("change_ids", "transaction_id", "transaction_range", "context")
                  if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise TypeError("bemi: revert needs exactly one of change_ids, transaction_id, transaction_range or context, "
                            f"not {chosen or 'none'}")
        if (self.since is not None or self.match_all) and self.context is None:
            raise TypeError("bemi: since and match_all go with context")


def choice(change_ids: Iterable[int] | None, transaction_id: int | None, context: Mapping[str, Any] | None,
           since: datetime | str | None, transaction_range: tuple[int, int] | None = None, match_all: bool = False) -> Choice:
    """The changes chosen, checked."""
    chosen = Choice(None if change_ids is None else list(change_ids), transaction_id,
                    None if transaction_range is None else (transaction_range[0], transaction_range[1]),
                    None if context is None else dict(context), since, match_all)
    chosen.check()
    return chosen


def revert_steps(chosen: Choice, on_conflict: OnConflict, trail: bool) -> Steps[list[Reverted]]:
    """The revert of the chosen changes (checked before any step), or (trail) its steps on a
    trail in a database of its own."""
    chosen.check()
    if trail:
        return trail_database.revert_steps(chosen, on_conflict, class_row(Reverted))
    return _revert_here(chosen, on_conflict)


def _revert_here(chosen: Choice, on_conflict: OnConflict) -> Steps[list[Reverted]]:
    params: list[Any]
    if chosen.change_ids is not None:
        query, params = sql.SQL("SELECT * FROM bemi.revert(%s::bigint[], %s)"), [chosen.change_ids, on_conflict]
    elif chosen.transaction_id is not None:
        query, params = sql.SQL("SELECT * FROM bemi.revert_transaction(%s, %s)"), [chosen.transaction_id, on_conflict]
    elif chosen.transaction_range is not None:
        query, params = (sql.SQL("SELECT * FROM bemi.revert_transactions(%s, %s, %s)"),
                         [*chosen.transaction_range, on_conflict])
    else:
        query, params = (sql.SQL("SELECT * FROM bemi.revert_context(%s, %s::timestamptz, %s, %s)"),
                         [Jsonb(chosen.context or {}), chosen.since, on_conflict, chosen.match_all])
    done: list[Reverted] = yield Query(query, params, rows=class_row(Reverted))
    return done


def revert(
    conn: psycopg.Connection[Any], *, change_ids: Iterable[int] | None = None, transaction_id: int | None = None,
    context: Mapping[str, Any] | None = None, since: datetime | str | None = None, on_conflict: OnConflict = "error",
    trail: psycopg.Connection[Any] | None = None, transaction_range: tuple[int, int] | None = None,
    match_all: bool = False,
) -> list[Reverted]:
    """Undoes the net effect of the chosen changes on each row; returns what it did per row.

    A row changed since raises ``psycopg.errors.ObjectNotInPrerequisiteState`` naming it
    (``on_conflict="error"``), or is left alone (``"skip"``) or reverted anyway (``"overwrite"``).
    """
    chosen = choice(change_ids, transaction_id, context, since, transaction_range, match_all)
    return run(revert_steps(chosen, on_conflict, trail is not None), conn, trail)


async def revert_async(
    conn: psycopg.AsyncConnection[Any], *, change_ids: Iterable[int] | None = None, transaction_id: int | None = None,
    context: Mapping[str, Any] | None = None, since: datetime | str | None = None, on_conflict: OnConflict = "error",
    trail: psycopg.AsyncConnection[Any] | None = None, transaction_range: tuple[int, int] | None = None,
    match_all: bool = False,
) -> list[Reverted]:
    """``revert`` for an ``AsyncConnection``."""
    chosen = choice(change_ids, transaction_id, context, since, transaction_range, match_all)
    return await run_async(revert_steps(chosen, on_conflict, trail is not None), conn, trail)


def revert_preview(conn: psycopg.Connection[Any], change_ids: Iterable[int],
                   on_conflict: OnConflict = "error") -> list[Previewed]:
    """What ``revert(conn, change_ids=...)`` would do to each row and the values it would write
    (bemi.revert_preview), without writing; the rows stay locked until the transaction ends."""
    with conn.cursor(row_factory=class_row(Previewed)) as cur:
        return cur.execute("SELECT * FROM bemi.revert_preview(%s::bigint[], %s)", [list(change_ids), on_conflict]).fetchall()
