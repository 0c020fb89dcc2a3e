"""Time travel for SQLAlchemy models (``as_of``), on bemi.row_at.

    from bemi_pg.sqlalchemy import as_of
    as_of(session, Todo, 26, at)      # the Todo as it was at ``at`` (transient), or None
    as_of(session, Todo, 26, at, trail=trail_session)   # the trail in a database of its own

Re-exported by ``bemi_pg.sqlalchemy``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session

from bemi_pg.timetravel import Key, key_text, row_at

M = TypeVar("M")


def as_of(session: Session, model: type[M], primary_key: Key, at: datetime, trail: Session | None = None) -> M | None:
    """The row of ``model`` with this primary key as it was after every transaction committed
    at or before ``at``, as a transient instance (not in the session), or None when it did not
    exist then. Composite keys: a sequence of values in key order. trail: a session of the
    database that holds the trail, when it is not the model's (postgresql+psycopg)."""
    mapper = inspect(model)
    table = mapper.local_table
    name = ".".join(session.get_bind().dialect.identifier_preparer.quote(part)
                    for part in (table.schema, table.name) if part)
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
