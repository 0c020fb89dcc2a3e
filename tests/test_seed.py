"""The example every user reads first (DESIGN.md), through bemi_pg.with_context."""

from typing import Any

import psycopg

import bemi_pg
from conftest import changes, ingest

SEED = [
    ("26", "todo", "CREATE", {}, {"id": 26, "task": "Sleep", "is_completed": False},
     {"user_id": 187234, "endpoint": "/todo", "method": "POST"}),
    ("27", "todo", "CREATE", {}, {"id": 27, "task": "Eat", "is_completed": False},
     {"user_id": 187234, "endpoint": "/todo", "method": "POST"}),
    ("28", "todo", "CREATE", {}, {"id": 28, "task": "Repeat", "is_completed": False},
     {"user_id": 187234, "endpoint": "/todo", "method": "POST"}),
    ("26", "todo", "UPDATE", {"id": 26, "task": "Sleep", "is_completed": False},
     {"id": 26, "task": "Sleep", "is_completed": True},
     {"user_id": 187234, "endpoint": "/todo/complete", "method": "PUT"}),
    ("27", "todo", "DELETE", {"id": 27, "task": "Eat", "is_completed": False}, {},
     {"user_id": 187234, "endpoint": "/todo/27", "method": "DELETE"}),
]


def test_seed_example(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> None:
    bemi_pg.seed_example(conn)
    assert ingest(admin) == 5
    rows = changes(admin, "primary_key", "table", "operation", "before", "after", "context")
    assert [tuple(r.values()) for r in rows] == SEED
