"""bemi_pg.with_context and set_context on real psycopg connections, sync and async."""

import asyncio
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import pq

import bemi_pg
from tests.helpers.trail import changes, ingest


@pytest.fixture
def todo(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text)")
    admin.execute("SELECT bemi.track('todo')")


def contexts(admin: psycopg.Connection[Any]) -> list[tuple[str, Any]]:
    ingest(admin)
    return [(r["primary_key"], r["context"]) for r in changes(admin, "primary_key", "context")]


def test_nested_blocks_merge_and_restore(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any],
                                         todo: None) -> None:
    with bemi_pg.with_context(conn, {"user_id": 7, "endpoint": "/a"}):
        conn.execute("INSERT INTO todo VALUES (1, 'x')")
        with bemi_pg.with_context(conn, {"endpoint": "/b", "step": 2}):
            conn.execute("INSERT INTO todo VALUES (2, 'x')")
        conn.execute("INSERT INTO todo VALUES (3, 'x')")
    assert conn.info.transaction_status == pq.TransactionStatus.IDLE
    assert contexts(admin) == [
        ("1", {"user_id": 7, "endpoint": "/a"}),
        ("2", {"user_id": 7, "endpoint": "/b", "step": 2}),
        ("3", {"user_id": 7, "endpoint": "/a"}),
    ]


def test_inner_block_rolled_back_leaves_outer_context(conn: psycopg.Connection[Any],
                                                      admin: psycopg.Connection[Any], todo: None) -> None:
    with bemi_pg.with_context(conn, {"user_id": 1}):
        with pytest.raises(psycopg.errors.UniqueViolation):
            with bemi_pg.with_context(conn, {"user_id": 2}):
                conn.execute("INSERT INTO todo VALUES (1, 'x')")
                conn.execute("INSERT INTO todo VALUES (1, 'again')")
        conn.execute("INSERT INTO todo VALUES (2, 'x')")
    assert contexts(admin) == [("2", {"user_id": 1})]


def test_savepoint_inside_a_transaction_the_caller_owns(conn: psycopg.Connection[Any],
                                                        admin: psycopg.Connection[Any], todo: None) -> None:
    with conn.transaction():
        conn.execute("INSERT INTO todo VALUES (1, 'no context')")
        with bemi_pg.with_context(conn, {"job": "import"}):
            conn.execute("INSERT INTO todo VALUES (2, 'x')")
    assert contexts(admin) == [("1", {}), ("2", {"job": "import"})]


def test_error_rolls_back_and_nothing_is_captured(conn: psycopg.Connection[Any],
                                                  admin: psycopg.Connection[Any], todo: None) -> None:
    with pytest.raises(ZeroDivisionError):
        with bemi_pg.with_context(conn, {"user_id": 1}):
            conn.execute("INSERT INTO todo VALUES (1, 'x')")
            raise ZeroDivisionError
    assert conn.execute("SELECT count(*) FROM todo").fetchone() == (0,)
    assert contexts(admin) == []


def test_set_context_in_a_transaction_the_caller_owns(conn: psycopg.Connection[Any],
                                                      admin: psycopg.Connection[Any], todo: None) -> None:
    with conn.transaction():
        bemi_pg.set_context(conn, {"job": "nightly"})
        conn.execute("INSERT INTO todo VALUES (1, 'x')")
        bemi_pg.set_context(conn, None)
        conn.execute("INSERT INTO todo VALUES (2, 'x')")
    assert contexts(admin) == [("1", {"job": "nightly"}), ("2", {})]


def test_async_with_context(dsn: str, admin: psycopg.Connection[Any], todo: None) -> None:
    async def write(user: int) -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            async with bemi_pg.with_context(aconn, {"user_id": user}):
                await aconn.execute("INSERT INTO todo VALUES (%s, 'x')", [user])
                await asyncio.sleep(0.01)
                async with bemi_pg.with_context(aconn, {"nested": True}):
                    await aconn.execute("UPDATE todo SET task = 'y' WHERE id = %s", [user])

    async def main() -> None:
        await asyncio.gather(*(write(user) for user in range(1, 6)))

    asyncio.run(main())
    ingest(admin)
    rows = changes(admin, "primary_key", "operation", "context")
    assert len(rows) == 10
    for row in rows:
        user = int(row["primary_key"])
        expected = {"user_id": user} if row["operation"] == "CREATE" else {"user_id": user, "nested": True}
        assert row["context"] == expected


@pytest.mark.parametrize("context", ["user 7", ["a"], 7, {"when": object()}, {"x": float("nan")}])
def test_bad_context_raises_type_error_before_sending(conn: psycopg.Connection[Any], context: Any) -> None:
    with pytest.raises(TypeError, match="bemi: context"):
        with bemi_pg.with_context(conn, context):
            pass
    assert conn.info.transaction_status == pq.TransactionStatus.IDLE


def test_a_context_the_server_refuses_leaves_the_connection_as_it_was(dsn: str, conn: psycopg.Connection[Any],
                                                                      admin: psycopg.Connection[Any],
                                                                      todo: None) -> None:
    big = {"blob": "x" * 70_000}  # over bemi.max_context_bytes: refused with 22023
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        with bemi_pg.with_context(conn, big):
            pass
    assert (conn.autocommit, conn.info.transaction_status) == (False, pq.TransactionStatus.IDLE)
    with bemi_pg.with_context(conn, {"user_id": 1}):
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            with bemi_pg.with_context(conn, big):
                pass
        conn.execute("INSERT INTO todo VALUES (1, 'x')")  # the outer block goes on, with its context
    assert contexts(admin) == [("1", {"user_id": 1})]

    async def refused() -> tuple[bool, pq.TransactionStatus]:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                async with bemi_pg.with_context(aconn, big):
                    pass
            return aconn.autocommit, aconn.info.transaction_status

    assert asyncio.run(refused()) == (False, pq.TransactionStatus.IDLE)


def test_set_context_outside_a_transaction_is_refused(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.ProgrammingError, match="needs an open transaction"):
            bemi_pg.set_context(conn, {"a": 1})


def test_closed_connection_is_reported(dsn: str) -> None:
    conn = psycopg.connect(dsn)
    conn.close()
    with pytest.raises(psycopg.InterfaceError, match="closed"):
        with bemi_pg.with_context(conn, {"a": 1}):
            pass


# Keys and values with quotes, backslashes, comment and placeholder characters, any Unicode
# but NUL (jsonb refuses \u0000: the next test).
_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
_VALUES = st.one_of(_TEXT, st.integers(), st.booleans(), st.none(), st.lists(_TEXT, max_size=3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(context=st.dictionaries(_TEXT, _VALUES, min_size=1, max_size=4),
       conforming=st.sampled_from(["on", "off"]))
def test_with_context_quotes_any_context_whatever_standard_conforming_strings_says(
        conn: psycopg.Connection[Any], context: dict[str, Any], conforming: str) -> None:
    """with_context writes the context into its CALL as a literal (not a bound parameter): the
    server reads back exactly the context, sync and async, with backslashes read as escapes or not."""
    conn.execute(f"SET standard_conforming_strings = {conforming}")
    conn.commit()
    with bemi_pg.with_context(conn, context):
        assert conn.execute("SELECT bemi.context()").fetchone()[0] == context
        with bemi_pg.with_context(conn, {"inner": "\\'"}):
            assert conn.execute("SELECT bemi.context()").fetchone()[0] == {**context, "inner": "\\'"}
        assert conn.execute("SELECT bemi.context()").fetchone()[0] == context

    async def read_back() -> Any:
        async with await psycopg.AsyncConnection.connect(conn.info.dsn, password=conn.info.password) as aconn:
            await aconn.execute(f"SET standard_conforming_strings = {conforming}")
            async with bemi_pg.with_context(aconn, context):
                return (await (await aconn.execute("SELECT bemi.context()")).fetchone())[0]  # type: ignore[index]

    assert asyncio.run(read_back()) == context


def test_a_context_holding_nul_is_refused_by_the_server(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.UntranslatableCharacter):
        with bemi_pg.with_context(conn, {"name": "a\x00b"}):
            pass
    assert conn.info.transaction_status == pq.TransactionStatus.IDLE
