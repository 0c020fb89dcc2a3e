"""The trail for SQLAlchemy: a mapped ``Change`` class and time travel (``as_of``).

    from bemi_pg.sqlalchemy import Change, as_of
    session.scalars(select(Change).where(Change.table == "todo").order_by(Change.id))
    as_of(session, Todo, 26, at)      # the Todo as it was at ``at`` (transient), or None
    as_of(session, Todo, 26, at, trail=trail_session)   # the trail in a database of its own

``Change`` lives in its own metadata (schema ``bemi``), so ``create_all`` of an application's
metadata never touches the trail. Re-exported by ``bemi_pg.sqlalchemy``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from sqlalchemy import BigInteger, String, Text, inspect, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from bemi_pg.timetravel import Key, row_at

__all__ = ["Change", "as_of"]

M = TypeVar("M")


class TrailBase(DeclarativeBase):
    pass


class Change(TrailBase):
    """One row of bemi.changes (read it; write it only through bemi's functions)."""

    __tablename__ = "changes"
    __table_args__ = {"schema": "bemi"}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    database: Mapped[str] = mapped_column(Text)
    schema: Mapped[str] = mapped_column(Text)
    table: Mapped[str] = mapped_column(Text)
    primary_key: Mapped[str | None] = mapped_column(Text)
    operation: Mapped[str] = mapped_column(Text)
    before: Mapped[dict[str, Any]] = mapped_column(JSONB)
    after: Mapped[dict[str, Any]] = mapped_column(JSONB)
    context: Mapped[dict[str, Any]] = mapped_column(JSONB)
    committed_at: Mapped[datetime]
    queued_at: Mapped[datetime]
    transaction_id: Mapped[int] = mapped_column(BigInteger)
    position: Mapped[str] = mapped_column(String)
    ordinal: Mapped[int]
    problem: Mapped[str | None] = mapped_column(Text)
    partial: Mapped[bool]
    previous_key: Mapped[str | None] = mapped_column(Text)

    def __repr__(self) -> str:
        return f"<Change {self.id} {self.operation} {self.schema}.{self.table} {self.primary_key}>"

    def diff(self) -> dict[str, tuple[Any, Any]]:
        """The columns that differ between before and after: {column: (before, after)}."""
        keys = list(self.before) + [key for key in self.after if key not in self.before]
        return {k: (self.before.get(k), self.after.get(k)) for k in keys if self.before.get(k) != self.after.get(k)}


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
    if isinstance(primary_key, (str, int)):
        key_sql, key = "CAST(:key AS text)", str(primary_key)
    else:  # the server's JSON text of the values, as in bemi.changes.primary_key
        key_sql, key = "CAST(CAST(:key AS jsonb) AS text)", json.dumps(list(primary_key))
    row = session.execute(
        text(f"SELECT r.* FROM bemi.row_at(CAST(:table AS regclass), {key_sql}, :at) AS j(image), "
             f"jsonb_populate_record(NULL::{name}, j.image) AS r WHERE j.image IS NOT NULL"),
        {"table": name, "key": key, "at": at},
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
