"""The trail as a mapped class: ``Change``, one row of bemi.changes.

    from bemi_pg.sqlalchemy import Change
    session.scalars(select(Change).where(Change.table == "todo").order_by(Change.id))

``Change`` lives in its own metadata (schema ``bemi``), so ``create_all`` of an application's
metadata never touches the trail. Re-exported by ``bemi_pg.sqlalchemy``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


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
