"""The example every user reads first (DESIGN.md), through bemi_pg.with_context."""

from typing import Any

import psycopg

import bemi_pg
from tests.helpers.example import SEED
from tests.helpers.trail import changes, ingest


def test_seed_example(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> None:
    bemi_pg.seed_example(conn)
    assert ingest(admin) == 5
    rows = changes(admin, "primary_key", "table", "operation", "before", "after", "context")
    assert [tuple(r.values()) for r in rows] == SEED
