"""Changes still pending when a tracked table is renamed, dropped or untracked are kept,
under the name they were made with; changes made after untrack are not captured."""

from typing import Any

import psycopg

import bemi_pg
from tests.helpers.trail import changes, ingest


def write(conn: psycopg.Connection[Any], sql: str, user: int) -> None:
    with bemi_pg.with_context(conn, {"user_id": user}):
        conn.execute(sql)


def trail(admin: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    ingest(admin)
    return [tuple(r.values()) for r in changes(admin, "table", "operation", "primary_key", "after", "context")]


def test_renamed_table_keeps_pending_changes(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text)")
    admin.execute("SELECT bemi.track('todo')")
    write(conn, "INSERT INTO todo VALUES (1, 'a')", 1)
    admin.execute("ALTER TABLE todo RENAME TO task")
    write(conn, "INSERT INTO task VALUES (2, 'b')", 2)
    assert trail(admin) == [
        ("todo", "CREATE", "1", {"id": 1, "task": "a"}, {"user_id": 1}),
        ("task", "CREATE", "2", {"id": 2, "task": "b"}, {"user_id": 2}),
    ]


def test_dropped_table_keeps_pending_changes(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> None:
    admin.execute('CREATE TABLE "Old Todo" (id int PRIMARY KEY, task text)')
    admin.execute("""SELECT bemi.track('"Old Todo"')""")
    write(conn, """INSERT INTO "Old Todo" VALUES (1, 'a')""", 1)
    write(conn, """DELETE FROM "Old Todo" """, 2)
    admin.execute('DROP TABLE "Old Todo"')
    assert trail(admin) == [
        ("Old Todo", "CREATE", "1", {"id": 1, "task": "a"}, {"user_id": 1}),
        ("Old Todo", "DELETE", "1", {}, {"user_id": 2}),
    ]


def test_untrack_keeps_earlier_changes_and_stops_capture(conn: psycopg.Connection[Any],
                                                         admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text)")
    admin.execute("SELECT bemi.track('todo')")
    write(conn, "INSERT INTO todo VALUES (1, 'a')", 1)
    admin.execute("SELECT bemi.untrack('todo')")
    write(conn, "INSERT INTO todo VALUES (2, 'b')", 2)
    assert trail(admin) == [("todo", "CREATE", "1", {"id": 1, "task": "a"}, {"user_id": 1})]
    admin.execute("SELECT bemi.track('todo')")
    write(conn, "INSERT INTO todo VALUES (3, 'c')", 3)
    assert trail(admin)[-1] == ("todo", "CREATE", "3", {"id": 3, "task": "c"}, {"user_id": 3})
