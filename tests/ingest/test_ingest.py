"""Batches: an ingest is not spent on the rows the previous ingest stored, which sit in the
WAL between the changes made before and after it."""

from typing import Any

import psycopg

import bemi_pg


def test_each_batch_brings_the_changes_made_since(conn: psycopg.Connection[Any],
                                                  admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text)")
    admin.execute("SELECT bemi.track('todo')")
    counts = []
    for batch in range(3):
        with bemi_pg.with_context(conn, {"batch": batch}):
            conn.execute("INSERT INTO todo SELECT i, 'x' FROM generate_series(%s::int, %s::int) i",
                         [batch * 100, batch * 100 + 99])
        counts.append(admin.execute("SELECT bemi.ingest(100) AS n").fetchone()["n"])  # type: ignore[index]
    assert counts == [100, 100, 100]
    rows = admin.execute("SELECT context ->> 'batch' AS batch, count(*) AS n FROM bemi.changes GROUP BY 1 ORDER BY 1")
    assert [(r["batch"], r["n"]) for r in rows] == [("0", 100), ("1", 100), ("2", 100)]
