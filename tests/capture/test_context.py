"""Context semantics in the server: transaction-local, emitted once per statement and only on
change, nothing written without context, read-only transactions stay read-only."""

from typing import Any

import psycopg
import pytest

from tests.helpers.trail import changes, ingest


def messages(admin: psycopg.Connection[Any]) -> list[str]:
    """The context messages pending in the slot, in order."""
    rows = admin.execute("SELECT data ->> 'content' AS content FROM bemi.wal WHERE data ->> 'action' = 'M'")
    return [r["content"] for r in rows]


@pytest.fixture
def todo(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE todo (id bigserial PRIMARY KEY, task text)")
    admin.execute("SELECT bemi.track('todo')")


def test_context_is_transaction_local(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("""SELECT bemi.set_context('{"user_id": 1}')""")
        assert conn.execute("SELECT bemi.context()").fetchone() == ({"user_id": 1},)
    assert conn.execute("SELECT bemi.context()").fetchone() == (None,)


def test_ten_thousand_row_insert_emits_one_message(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any],
                                                    todo: None) -> None:
    values = ", ".join(f"('t{i}')" for i in range(10_000))
    with conn.transaction():
        conn.execute("""SELECT bemi.set_context('{"job": "import"}')""")
        conn.execute(f"INSERT INTO todo (task) VALUES {values}")
    assert messages(admin) == ['{"job": "import"}']
    assert ingest(admin) == 10_000
    assert {r["context"]["job"] for r in changes(admin, "context")} == {"import"}


def test_same_context_is_emitted_once_per_transaction(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any],
                                                      todo: None) -> None:
    with conn.transaction():
        conn.execute("""SELECT bemi.set_context('{"a": 1}')""")
        conn.execute("INSERT INTO todo (task) VALUES ('x')")
        conn.execute("UPDATE todo SET task = 'y'")
        conn.execute("""SELECT bemi.set_context('{"a": 2}')""")
        conn.execute("DELETE FROM todo")
        conn.execute("""SELECT bemi.set_context(NULL)""")
        conn.execute("INSERT INTO todo (task) VALUES ('z')")
    assert messages(admin) == ['{"a": 1}', '{"a": 2}', "{}"]
    ingest(admin)
    assert [(r["operation"], r["context"]) for r in changes(admin, "operation", "context")] == [
        ("CREATE", {"a": 1}), ("UPDATE", {"a": 1}), ("DELETE", {"a": 2}), ("CREATE", {}),
    ]


def test_statements_without_context_write_no_message(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any],
                                                     todo: None) -> None:
    with conn.transaction():
        conn.execute("INSERT INTO todo (task) VALUES ('x')")
    assert messages(admin) == []
    ingest(admin)
    assert [r["context"] for r in changes(admin, "context")] == [{}]


def test_read_only_transaction_stays_read_only(conn: psycopg.Connection[Any], todo: None) -> None:
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute("""SELECT bemi.set_context('{"a": 1}')""")
        conn.execute("SELECT * FROM todo").fetchall()
        row = conn.execute("SELECT pg_current_xact_id_if_assigned()").fetchone()
    assert row == (None,)
