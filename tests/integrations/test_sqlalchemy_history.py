"""bemi_pg.sqlalchemy.Change and as_of with the SQLAlchemy app of the tests (sqlalchemy_app)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session

import bemi_pg
from bemi_pg.sqlalchemy import Change, as_of
from tests.helpers import sqlalchemy_app
from tests.helpers.history import moment
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
