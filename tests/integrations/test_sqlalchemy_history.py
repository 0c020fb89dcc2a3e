"""bemi_pg.sqlalchemy.Change and as_of with the SQLAlchemy app of the tests (sqlalchemy_app)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from sqlalchemy import DateTime, Engine, Numeric, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import bemi_pg
from bemi_pg.sqlalchemy import Change, as_of, versions
from tests.helpers import sqlalchemy_app
from tests.helpers.history import TYPED_KEYS, moment
from tests.helpers.sqlalchemy_app import Todo
from tests.helpers.trail import drain, ingest


@pytest.fixture
def engine(dsn: str) -> Iterator[Engine]:
    created = sqlalchemy_app.engine(dsn)
    yield created
    created.dispose()


def test_change_and_as_of(engine: Engine, admin: psycopg.Connection[Any]) -> None:
    before = moment(admin)
    with bemi_pg.context({"user_id": 7}), Session(engine) as session, session.begin():
        session.add(Todo(id=1, task="Sleep"))
    at = moment(admin)
    with Session(engine) as session, session.begin():
        session.get_one(Todo, 1).is_completed = True
    ingest(admin)

    with Session(engine) as session:
        trail = session.scalars(select(Change).where(Change.table == "todo").order_by(Change.id)).all()
        assert [(c.operation, c.primary_key, c.context) for c in trail] == [("CREATE", "1", {"user_id": 7}), ("UPDATE", "1", {})]
        assert trail[1].diff() == {"is_completed": (False, True)}
        assert not trail[1].problem and not trail[1].partial

        current = session.get_one(Todo, 1)
        then = as_of(session, Todo, 1, at)
        assert then is not None and then is not current
        assert (then.id, then.task, then.is_completed, current.is_completed) == (1, "Sleep", False, True)
        assert then not in session
        assert as_of(session, Todo, 1, before) is None
        assert as_of(session, Todo, 2, at) is None


def test_as_of_with_a_trail_database(engine: Engine, dsn: str, trail: str, admin: psycopg.Connection[Any]) -> None:
    with Session(engine) as session, session.begin():
        session.add(Todo(id=1, task="Sleep"))
    at = moment(admin)
    with Session(engine) as session, session.begin():
        session.get_one(Todo, 1).task = "Nap"
    drain(dsn, trail)
    trail_engine = create_engine(sqlalchemy_app.url(trail))
    try:
        with Session(engine) as session, Session(trail_engine) as trail_session:
            then = as_of(session, Todo, 1, at, trail=trail_session)
            assert then is not None and (then.id, then.task, then.is_completed) == (1, "Sleep", False)
            assert as_of(session, Todo, 2, at, trail=trail_session) is None
            assert session.get_one(Todo, 1).task == "Nap"  # transient: the session's row is as it is
    finally:
        trail_engine.dispose()


class Keyed(DeclarativeBase):
    pass


class ByUuid(Keyed):
    __tablename__ = "by_uuid"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    v: Mapped[str]


class ByDecimal(Keyed):
    __tablename__ = "by_decimal"
    id: Mapped[Decimal] = mapped_column(Numeric(10, 2), primary_key=True)
    v: Mapped[str]


class ByMoment(Keyed):
    __tablename__ = "by_moment"
    id: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    v: Mapped[str]


class ByDay(Keyed):
    __tablename__ = "by_day"
    id: Mapped[date] = mapped_column(primary_key=True)
    v: Mapped[str]


KEYS = list(zip((ByUuid, ByDecimal, ByMoment, ByDay), TYPED_KEYS))


@pytest.mark.parametrize(("model", "key"), KEYS, ids=[model.__name__ for model, _ in KEYS])
def test_typed_keys_as_of_and_versions(engine: Engine, admin: psycopg.Connection[Any], model: Any, key: Any) -> None:
    Keyed.metadata.create_all(engine, tables=[model.__table__])
    admin.execute("SELECT bemi.track(%s)", [model.__tablename__])
    before = moment(admin)
    with Session(engine) as session, session.begin():
        session.add(model(id=key, v="first"))
    at = moment(admin)
    with Session(engine) as session, session.begin():
        session.get_one(model, key).v = "second"
    ingest(admin)
    until = admin.execute("SELECT bemi.ingested_until() AS u").fetchone()["u"]  # type: ignore[index]

    with Session(engine) as session:
        then = as_of(session, model, key, at)
        assert then is not None and (then.id, then.v) == (key, "first") and then not in session
        assert as_of(session, model, key, until).v == "second"  # type: ignore[union-attr]
        assert as_of(session, model, key, before) is None
        found = versions(session, model, key)
    assert [(v["instance"].id, v["instance"].v, v["valid_to"] is None) for v in found] == [
        (key, "first", False), (key, "second", True)]
    assert found[0]["valid_to"] == found[1]["valid_from"] > at
    trail_key = admin.execute("SELECT DISTINCT primary_key FROM bemi.changes").fetchall()
    assert [{"primary_key": v["primary_key"]} for v in found] == trail_key * 2
