"""The /*Bemi {...} Bemi*/ comment that Bemi's ORM packages append: the context trigger's
fallback when a transaction has no set_context."""

from typing import Any

import psycopg
import pytest

from tests.helpers.trail import changes, ingest


Notices = list[tuple[str | None, str | None, str]]


@pytest.fixture
def todo(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text)")
    admin.execute("SELECT bemi.track('todo')")


@pytest.fixture
def notices(conn: psycopg.Connection[Any]) -> Notices:
    """The (severity, sqlstate, message) of each notice the connection receives."""
    received: Notices = []
    conn.add_notice_handler(
        lambda d: received.append((d.severity_nonlocalized, d.sqlstate, d.message_primary or "")))
    return received


def contexts(admin: psycopg.Connection[Any]) -> list[tuple[str, dict[str, Any]]]:
    ingest(admin)
    return [(row["primary_key"], row["context"]) for row in changes(admin, "primary_key", "context")]


@pytest.mark.usefixtures("todo")
def test_each_statement_carries_its_own_comment(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> None:
    conn.autocommit = True
    conn.execute("""INSERT INTO todo VALUES (1, 'Sleep') /*Bemi {"user_id": 7, "via": "prisma"} Bemi*/""")
    with conn.transaction():
        conn.execute("""INSERT INTO todo VALUES (2, 'Eat') /*Bemi {"user_id": 8} Bemi*/;""")
        conn.execute("INSERT INTO todo VALUES (3, 'Repeat')")
        conn.execute("UPDATE todo SET task = 'Nap' WHERE id = 1\n/*Bemi {\"user_id\": 9} Bemi*/\n")
    assert contexts(admin) == [
        ("1", {"user_id": 7, "via": "prisma"}), ("2", {"user_id": 8}), ("3", {}), ("1", {"user_id": 9}),
    ]


@pytest.mark.usefixtures("todo")
def test_set_context_wins_over_the_comment(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("SELECT bemi.set_context('{\"user_id\": 1}')")
        conn.execute("""INSERT INTO todo VALUES (1, 'Sleep') /*Bemi {"user_id": 2} Bemi*/""")
    assert contexts(admin) == [("1", {"user_id": 1})]


@pytest.mark.usefixtures("todo")
def test_the_comment_is_read_once_per_statement(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> None:
    conn.autocommit = True
    conn.execute("""INSERT INTO todo SELECT g, 'task' FROM generate_series(1, 50) g /*Bemi {"job": "import"} Bemi*/""")
    messages = admin.execute("SELECT count(*) AS n FROM bemi.wal WHERE data ->> 'action' = 'M'").fetchone()
    assert messages == {"n": 1}
    assert {context["job"] for _, context in contexts(admin)} == {"import"}
    assert len(changes(admin, "id")) == 50


@pytest.mark.usefixtures("todo")
def test_data_cannot_pose_as_a_comment(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> None:
    conn.autocommit = True
    # Client-side binding puts values into the statement text, as Django's default cursor does.
    cursor = psycopg.ClientCursor(conn)
    cursor.execute("INSERT INTO todo VALUES (1, %s)", ['/*Bemi {"user_id": 0} Bemi*/'])
    cursor.execute("INSERT INTO todo VALUES (2, 'x') /*Bemi {\"user_id\": 5} Bemi*/ -- %s", ["/*Bemi {} Bemi*/"])
    assert contexts(admin) == [("1", {}), ("2", {})]


@pytest.mark.usefixtures("todo")
@pytest.mark.parametrize(
    ("comment", "sqlstate", "message"),
    [
        ("/*Bemi {user_id: 7} Bemi*/", "22P02", "that is not JSON"),
        ("/*Bemi [1, 2] Bemi*/", "22023", "that is a JSON array, not an object"),
        ("/*Bemi*/", "22P02", "that is not JSON"),
        ('/*Bemi {"name": "' + "x" * 300 + '"} Bemi*/', "22023", "over the limit of 256 bytes"),
    ],
)
def test_a_bad_comment_is_a_warning_never_an_error(
    conn: psycopg.Connection[Any], admin: psycopg.Connection[Any], notices: Notices,
    comment: str, sqlstate: str, message: str,
) -> None:
    conn.autocommit = True
    conn.execute("SET bemi.max_context_bytes = 256")
    conn.execute(f"INSERT INTO todo VALUES (1, 'Sleep') {comment}")
    assert [(severity, code) for severity, code, _ in notices] == [("WARNING", sqlstate)]
    assert notices[0][2].startswith("bemi: ignoring") and message in notices[0][2]
    assert contexts(admin) == [("1", {})]


@pytest.mark.usefixtures("todo")
def test_a_comment_at_the_limit_is_kept(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> None:
    conn.autocommit = True
    conn.execute("SET bemi.max_context_bytes = 64")
    context = '{"name": "' + "x" * 52 + '"}'
    assert len(context) == 64
    conn.execute(f"INSERT INTO todo VALUES (1, 'Sleep') /*Bemi {context} Bemi*/")
    assert contexts(admin) == [("1", {"name": "x" * 52})]
