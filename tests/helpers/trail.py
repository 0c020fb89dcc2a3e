"""Filling and reading the trail: bemi.ingest() until the slot is drained, the worker into a
trail database, the rows of bemi.changes."""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from bemi_pg.ingest.worker import Options
from bemi_pg.ingest.worker import run as run_worker


def ingest(admin: psycopg.Connection[Any], batch: int = 10000) -> int:
    """Drains the slot into bemi.changes; returns how many changes were stored."""
    total = 0
    while True:
        row = admin.execute("SELECT bemi.ingest(%s) AS n", [batch]).fetchone()
        assert row is not None
        n = row["n"] if isinstance(row, dict) else row[0]
        total += n
        if n == 0 and not pending(admin):
            return total


def pending(admin: psycopg.Connection[Any]) -> bool:
    """Whether the slot still holds entries of tracked tables."""
    row = admin.execute("SELECT count(*) AS n FROM bemi.wal WHERE data ->> 'action' NOT IN ('B', 'C')").fetchone()
    assert row is not None
    return bool(row["n"] if isinstance(row, dict) else row[0])


def changes(admin: psycopg.Connection[Any], *columns: str) -> list[dict[str, Any]]:
    """The rows of bemi.changes in id order, with the given columns (all by default)."""
    select = ", ".join(f'"{c}"' for c in columns) if columns else "*"
    return admin.execute(f"SELECT {select} FROM bemi.changes ORDER BY id").fetchall()  # type: ignore[return-value]


def drain(dsn: str, trail: str) -> None:
    """Stores everything written to dsn so far into the trail database (bemi-pg worker
    --drain --trail-dsn, in this process)."""
    run_worker(Options(dsn, drain=True, interval=0.05, trail_dsn=trail), threading.Event(), lambda _: None)
