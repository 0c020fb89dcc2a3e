"""Keys are compared as values of the table's key types (docs/time-travel.md, "Keys"): any
spelling the key's types read names the row, from SQL, Python and SQLAlchemy; a key with the
wrong number of parts is an error, never a silent miss or the live row."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from sqlalchemy import DateTime, Numeric, Text, Uuid, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import bemi_pg
from bemi_pg.sqlalchemy import as_of
from tests.helpers.history import fails, moment
from tests.helpers.sqlalchemy_app import url
from tests.helpers.trail import ingest

U = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"


def row_at(admin: psycopg.Connection[Any], table: str, key: str, at: Any) -> Any:
    row = admin.execute("SELECT bemi.row_at(%s::regclass, %s, %s) AS r", [table, key, at]).fetchone()
    assert row is not None
    return row["r"]


def history(admin: psycopg.Connection[Any]) -> datetime:
    """Tables keyed by a timestamp, a UUID, a number, an int, text and a composite key: each
    row changed after the returned moment (so the live row is not the answer then)."""
    admin.execute("SET timezone = 'Europe/Paris'")
    admin.execute("CREATE TABLE by_time (at timestamptz PRIMARY KEY, v text)")
    admin.execute("CREATE TABLE by_uuid (id uuid PRIMARY KEY, v text)")
    admin.execute("CREATE TABLE by_number (id numeric PRIMARY KEY, v text)")
    admin.execute("CREATE TABLE by_int (id int PRIMARY KEY, v text)")
    admin.execute("CREATE TABLE by_pair (org text, n int, v text, PRIMARY KEY (org, n))")
    admin.execute("CREATE TABLE by_mix (at timestamptz, amount numeric, id uuid, v text, PRIMARY KEY (at, amount, id))")
    for table in ("by_time", "by_uuid", "by_number", "by_int", "by_pair", "by_mix"):
        admin.execute("SELECT bemi.track(%s)", [table])
    admin.execute("INSERT INTO by_time VALUES ('2020-01-01 00:00+00', 'old')")
    admin.execute("INSERT INTO by_uuid VALUES (%s, 'old')", [U])
    admin.execute("INSERT INTO by_number VALUES (1.0, 'old')")
    admin.execute("INSERT INTO by_int VALUES (7, 'old')")
    admin.execute("INSERT INTO by_pair VALUES ('acme', 7, 'old')")
    admin.execute("INSERT INTO by_mix VALUES ('2020-01-01 00:00+00', 2.50, %s, 'old')", [U])
    at = moment(admin)
    for table in ("by_time", "by_uuid", "by_number", "by_int", "by_pair", "by_mix"):
        admin.execute(f"UPDATE {table} SET v = 'new'")
    ingest(admin)
    return at


def test_any_spelling_of_a_key_names_its_row(admin: psycopg.Connection[Any]) -> None:
    at = history(admin)
    spellings = {
        "by_time": ["2020-01-01 00:00+00", "2020-01-01T00:00:00+00:00", "2020-01-01 01:00:00+01", "Jan 1 2020 00:00 UTC"],
        "by_uuid": [U, U.upper(), "{" + U + "}", U.replace("-", "")],
        "by_number": ["1", "1.0", "1.000", "1e0"],
        "by_int": ["7", "007", " 7", "+7"],
        "by_pair": ['["acme", 7]', '["acme",7]', '["acme", "7"]', '[ "acme" , 7.0 ]'.replace("7.0", "7")],
        "by_mix": [f'["2020-01-01 00:00+00", 2.5, "{U}"]', f'["2020-01-01T01:00:00+01:00", "2.50", "{U.upper()}"]'],
    }
    for table, keys in spellings.items():
        for key in keys:
            found = row_at(admin, table, key, at)
            assert found is not None and found["v"] == "old", (table, key, found)


def test_a_key_with_the_wrong_number_of_parts_is_an_error(admin: psycopg.Connection[Any]) -> None:
    at = history(admin)
    for key in ("acme", '["acme"]', '["acme", 7, 8]', '{"org": "acme"}', "[acme, 7]"):
        with fails("22023", "has 2 columns (org, n)"):
            row_at(admin, "by_pair", key, at)
    with fails("22023", "is not a primary key of public.by_int"):
        row_at(admin, "by_int", "seven", at)
    with fails("22023", "is not a primary key of public.by_uuid"):
        row_at(admin, "by_uuid", "nope", at)
    with fails("22023", "a key has no NULL values"):
        row_at(admin, "by_pair", '["acme", null]', at)


def test_numbers_of_another_scale_are_the_same_key(admin: psycopg.Connection[Any]) -> None:
    """The trail writes a numeric key as it was stored ('1.0'); it is found by value, through
    a delete and a re-insert under another scale."""
    at = history(admin)
    admin.execute("DELETE FROM by_number")
    admin.execute("INSERT INTO by_number VALUES (1.00, 'again')")
    after = moment(admin)
    admin.execute("UPDATE by_number SET v = 'now'")
    ingest(admin)
    for key in ("1", "1.0", "1.00"):
        assert row_at(admin, "by_number", key, at)["v"] == "old"
        assert row_at(admin, "by_number", key, after) == {"id": 1.00, "v": "again"}


def test_python_keys_of_any_type(dsn: str, admin: psycopg.Connection[Any]) -> None:
    at = history(admin)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table, key in (
            ("by_time", datetime(2020, 1, 1, tzinfo=timezone.utc)),
            ("by_uuid", uuid.UUID(U)),
            ("by_number", Decimal("1")),
            ("by_number", Decimal("1.000")),
            ("by_int", 7),
            ("by_pair", ("acme", 7)),
            ("by_mix", (datetime(2020, 1, 1, tzinfo=timezone.utc), Decimal("2.5"), uuid.UUID(U))),
        ):
            found = bemi_pg.row_at(conn, table, key, at)
            assert found is not None and found["v"] == "old", (table, key)


class Base(DeclarativeBase):
    pass


class ByMix(Base):
    __tablename__ = "by_mix"
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    amount: Mapped[Decimal] = mapped_column(Numeric, primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    v: Mapped[str] = mapped_column(Text)


class ByUuid(Base):
    __tablename__ = "by_uuid"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    v: Mapped[str] = mapped_column(Text)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_sqlalchemy_keys_of_any_type(dsn: str, admin: psycopg.Connection[Any]) -> None:
    at = history(admin)
    engine = create_engine(url(dsn))
    try:
        with Session(engine) as session:
            mixed = as_of(session, ByMix, (datetime(2020, 1, 1, tzinfo=timezone.utc), Decimal("2.50"), uuid.UUID(U)), at)
            assert mixed is not None and mixed.v == "old"
            one = as_of(session, ByUuid, uuid.UUID(U), at)
            assert one is not None and one.v == "old" and one.id == uuid.UUID(U)
    finally:
        engine.dispose()
