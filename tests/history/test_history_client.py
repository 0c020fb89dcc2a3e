"""bemi_pg.row_at, table_at and revert (and their async twins) on real connections."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import psycopg
import pytest

import bemi_pg
from tests.helpers.history import moment
from tests.helpers.trail import ingest


@pytest.fixture
def history(admin: psycopg.Connection[Any]) -> dict[str, Any]:
    """Schema "My App" with table "Todo" (composite key) changed by two transactions."""
    admin.execute('CREATE SCHEMA "My App"')
    admin.execute('CREATE TABLE "My App"."Todo" (list text, n int, due date, PRIMARY KEY (list, n))')
    admin.execute("""SELECT bemi.track('"My App"."Todo"')""")
    admin.execute("""INSERT INTO "My App"."Todo" VALUES ('home', 1, '2026-01-01'), ('work', 2, NULL)""")
    at = moment(admin)
    admin.execute("""UPDATE "My App"."Todo" SET due = '2026-02-02' WHERE n = 1""")
    ingest(admin)
    xid = admin.execute("SELECT max(transaction_id) AS x FROM bemi.changes").fetchone()["x"]  # type: ignore[index]
    return {"at": at, "xid": xid}


def test_row_at_and_table_at(conn: psycopg.Connection[Any], history: dict[str, Any]) -> None:
    at = history["at"]
    assert bemi_pg.row_at(conn, ("My App", "Todo"), ["home", 1], at) == {"list": "home", "n": 1, "due": "2026-01-01"}
    assert bemi_pg.row_at(conn, '"My App"."Todo"', ("nowhere", 3), at) is None
    assert sorted(bemi_pg.table_at(conn, ("My App", "Todo"), at), key=lambda r: r["n"]) == [
        {"list": "home", "n": 1, "due": datetime.date(2026, 1, 1)}, {"list": "work", "n": 2, "due": None}]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="bemi: the trail is not ingested up to"):
        bemi_pg.table_at(conn, ("My App", "Todo"), datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1))


def test_revert(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any], history: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="exactly one of"):
        bemi_pg.revert(conn, transaction_id=1, change_ids=[1])
    with conn.transaction():
        done = bemi_pg.revert(conn, transaction_id=history["xid"])
    assert done == [bemi_pg.Reverted(change_id=done[0].change_id, schema="My App", table="Todo",
                                     primary_key='["home", 1]', action="updated")]
    assert admin.execute("""SELECT due FROM "My App"."Todo" WHERE n = 1""").fetchone() == {"due": datetime.date(2026, 1, 1)}
    # Reverted already: nothing to do. Changed since: a conflict.
    assert [r.action for r in bemi_pg.revert(conn, change_ids=[done[0].change_id])] == ["unchanged"]
    conn.commit()  # the revert locked the row until the end of the transaction
    admin.execute("""UPDATE "My App"."Todo" SET due = NULL WHERE n = 1""")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="rows changed since"):
        bemi_pg.revert(conn, change_ids=[done[0].change_id])
    conn.rollback()
    assert [r.action for r in bemi_pg.revert(conn, change_ids=[done[0].change_id], on_conflict="skip")] == ["skipped"]


def test_async_twins(dsn: str, admin: psycopg.Connection[Any], history: dict[str, Any]) -> None:
    async def main() -> tuple[Any, ...]:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            row = await bemi_pg.row_at_async(aconn, ("My App", "Todo"), ["home", 1], history["at"])
            table = await bemi_pg.table_at_async(aconn, ("My App", "Todo"), history["at"])
            async with aconn.transaction():
                done = await bemi_pg.revert_async(aconn, context={}, since=history["at"], match_all=True)
            return row, len(table), [r.action for r in done]

    assert asyncio.run(main()) == ({"list": "home", "n": 1, "due": "2026-01-01"}, 2, ["updated"])
