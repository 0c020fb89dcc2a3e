"""Time travel and revert for SQLAlchemy models, on bemi.row_at, bemi.table_at and bemi.revert.

    from bemi_pg.sqlalchemy import as_of, table_as_of, revert
    as_of(session, Todo, 26, at)      # the Todo as it was at ``at`` (transient), or None
    as_of(session, Todo, 26, at, trail=trail_session)   # the trail in a database of its own
    table_as_of(session, Todo, at)    # every Todo as of ``at``, transient instances
    versions(session, Todo, 26)       # [{"valid_from", "valid_to", ..., "instance": Todo}, ...], oldest first
    revert(session, transaction_id=1234)   # in the session's transaction (bemi_pg.revert)

Re-exported by ``bemi_pg.sqlalchemy``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session

from bemi_pg.revert import OnConflict, Reverted
from bemi_pg.revert import revert as revert_changes
from bemi_pg.timetravel import VERSIONS_AS_ROWS, Key, key_text, row_at, table_at, version_of

M = TypeVar("M")


def table_name(session: Session, model: type[Any]) -> str:
    """The model's table as SQL names it, quoted by the dialect."""
    table = inspect(model).local_table
    return ".".join(session.get_bind().dialect.identifier_preparer.quote(part)
                    for part in (table.schema, table.name) if part)


def table_as_of(session: Session, model: type[M], at: datetime, trail: Session | None = None) -> list[M]:
    """Every row of ``model``'s table as it was after every transaction committed at or before
    ``at`` (bemi.table_at), as transient instances. trail: as for ``as_of``."""
    rows = table_at(driver(session), table_name(session, model), at, trail=None if trail is None else driver(trail))
    return [instance(model, row) for row in rows]


def revert(session: Session, *, change_ids: Iterable[int] | None = None, transaction_id: int | None = None,
           context: Mapping[str, Any] | None = None, since: datetime | str | None = None,
           on_conflict: OnConflict = "error", trail: Session | None = None,
           transaction_range: tuple[int, int] | None = None, match_all: bool = False) -> list[Reverted]:
    """bemi_pg.revert in the session's transaction (commit or roll back the session); what it
    did per row. Flush pending changes first: the revert sees what the database holds."""
    session.flush()
    return revert_changes(driver(session), change_ids=change_ids, transaction_id=transaction_id, context=context,
                          since=since, on_conflict=on_conflict, trail=None if trail is None else driver(trail),
                          transaction_range=transaction_range, match_all=match_all)


def as_of(session: Session, model: type[M], primary_key: Key, at: datetime, trail: Session | None = None) -> M | None:
    """The row of ``model`` with this primary key as it was after every transaction committed
    at or before ``at``, as a transient instance (not in the session), or None when it did not
    exist then. Composite keys: a sequence of values in key order. trail: a session of the
    database that holds the trail, when it is not the model's (postgresql+psycopg)."""
    name = table_name(session, model)
    if trail is not None:
        image = row_at(driver(session), name, primary_key, at, trail=driver(trail))
        found = None if image is None else session.execute(
            text(f"SELECT r.* FROM jsonb_populate_record(NULL::{name}, CAST(:image AS jsonb)) AS r"),
            {"image": json.dumps(image)}).mappings().first()
        return None if found is None else instance(model, found)
    row = session.execute(
        text(f"SELECT r.* FROM bemi.row_at(CAST(:table AS regclass), CAST(:key AS text), :at) AS j(image), "
             f"jsonb_populate_record(NULL::{name}, j.image) AS r WHERE j.image IS NOT NULL"),
        {"table": name, "key": key_text(primary_key), "at": at},
    ).mappings().first()
    return None if row is None else instance(model, row)


def versions(session: Session, model: type[M], primary_key: Key) -> list[dict[str, Any]]:
    """Every version of the row of ``model`` with this primary key, oldest first, following its
    key moves (bemi.row_versions): dicts with valid_from, valid_to, change_id, transaction_id and
    primary_key as the SQL gives them, and "instance": the row then, a transient instance."""
    name = table_name(session, model)
    found = session.execute(
        text(VERSIONS_AS_ROWS.format(relation="CAST(:table AS regclass)", key="CAST(:key AS text)", table=name)),
        {"table": name, "key": key_text(primary_key)}).mappings()
    return [version_of(row, instance(model, row)) for row in found]


def driver(session: Session) -> psycopg.Connection[Any]:
    """The psycopg connection under a session."""
    conn = session.connection().connection.driver_connection
    if not isinstance(conn, psycopg.Connection):
        raise TypeError(f"bemi: a trail database needs the postgresql+psycopg dialect, not {type(conn).__name__}")
    return conn


def instance(model: type[M], row: Any) -> M:
    """A transient instance of the model from a row of its table (a mapping by column name)."""
    return model(**{prop.key: row[prop.columns[0].name] for prop in inspect(model).column_attrs
                    if prop.columns[0].name in row})
