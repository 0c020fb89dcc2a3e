"""Context semantics in the server: transaction-local, emitted once per statement and only on
change, nothing written without context, read-only transactions stay read-only."""

from typing import Any

import psycopg
import pytest

from tests.helpers.context import setters
from tests.helpers.trail import changes, ingest


def messages(admin: psycopg.Connection[Any]) -> list[str]:
    """The context messages pending in the slot, in order."""
    rows = admin.execute("SELECT data ->> 'content' AS content FROM bemi.wal WHERE data ->> 'action' = 'M'")
    return [r["content"] for r in rows]


@pytest.fixture
def todo(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE todo (id bigserial PRIMARY KEY, task text)")
    admin.execute("SELECT bemi.track('todo')")


@setters
def test_context_is_transaction_local(conn: psycopg.Connection[Any], setter: str) -> None:
    with conn.transaction():
        conn.execute(setter, ['{"user_id": 1}'])
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


@setters
def test_same_context_is_emitted_once_per_transaction(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any],
                                                      todo: None, setter: str) -> None:
    with conn.transaction():
        conn.execute(setter, ['{"a": 1}'])
        conn.execute("INSERT INTO todo (task) VALUES ('x')")
        conn.execute("UPDATE todo SET task = 'y'")
        # After a write, a new context is emitted at once (a write whose trigger is disabled
        # must not carry the one before), and the next write does not emit it again.
        conn.execute(setter, ['{"a": 2}'])
        conn.execute("DELETE FROM todo")
        conn.execute(setter, [None])
        conn.execute("INSERT INTO todo (task) VALUES ('z')")
        conn.execute(setter, ['{"a": 3}'])
        conn.execute("INSERT INTO todo (task) VALUES ('w')")
        conn.execute(setter, ["{}"])
        conn.execute("INSERT INTO todo (task) VALUES ('v')")
    assert messages(admin) == ['{"a": 1}', '{"a": 2}', "{}", '{"a": 3}', "{}"]
    ingest(admin)
    assert [(r["operation"], r["context"]) for r in changes(admin, "operation", "context")] == [
        ("CREATE", {"a": 1}), ("UPDATE", {"a": 1}), ("DELETE", {"a": 2}), ("CREATE", {}), ("CREATE", {"a": 3}),
        ("CREATE", {}),
    ]


@setters
@pytest.mark.parametrize("cleared", [None, "{}"])
def test_a_cleared_context_writes_no_message(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any],
                                             todo: None, setter: str, cleared: str | None) -> None:
    with conn.transaction():
        conn.execute(setter, ['{"a": 1}'])
        conn.execute(setter, [cleared])
        assert conn.execute("SELECT bemi.context()").fetchone() == (None,)
        conn.execute("INSERT INTO todo (task) VALUES ('x')")
    assert messages(admin) == []
    ingest(admin)
    assert [r["context"] for r in changes(admin, "context")] == [{}]


def test_statements_without_context_write_no_message(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any],
                                                     todo: None) -> None:
    with conn.transaction():
        conn.execute("INSERT INTO todo (task) VALUES ('x')")
    assert messages(admin) == []
    ingest(admin)
    assert [r["context"] for r in changes(admin, "context")] == [{}]


@setters
def test_read_only_transaction_stays_read_only(conn: psycopg.Connection[Any], todo: None, setter: str) -> None:
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute(setter, ['{"a": 1}'])
        assert conn.execute("SELECT count(*), bemi.context() FROM todo").fetchone() == (0, {"a": 1})
        row = conn.execute("SELECT pg_current_xact_id_if_assigned()").fetchone()
    assert row == (None,)
