"""Filling and reading the trail: bemi.ingest() until the slot is drained, the worker into a
trail database, the rows of bemi.changes."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
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


# Settings a session or a database may have, each of which once changed what ingest stored
# (or stopped it): ingest pins what it needs on both paths (docs/ingest.md).
HOSTILE_SETTINGS = {"array_nulls": "off", "xmloption": "document", "DateStyle": "SQL, DMY",
                    "IntervalStyle": "sql_standard", "extra_float_digits": "-15", "search_path": "nowhere",
                    "TimeZone": "Pacific/Chatham", "bytea_output": "escape", "lc_monetary": "C", "lock_timeout": "1"}


@contextlib.contextmanager
def database_settings(admin: psycopg.Connection[Any], settings: dict[str, str]) -> Iterator[None]:
    """The database's settings (ALTER DATABASE ... SET), for the sessions opened meanwhile."""
    row = admin.execute("SELECT current_database()").fetchone()
    assert row is not None
    database = row["current_database"] if isinstance(row, dict) else row[0]
    for name, value in settings.items():
        admin.execute(f"ALTER DATABASE \"{database}\" SET {name} = '{value}'")
    try:
        yield
    finally:
        for name in settings:
            admin.execute(f'ALTER DATABASE "{database}" RESET {name}')


def drain(dsn: str, trail: str) -> None:
    """Stores everything written to dsn so far into the trail database (bemi-pg worker
    --drain --trail-dsn, in this process)."""
    run_worker(Options(dsn, drain=True, interval=0.05, trail_dsn=trail), threading.Event(), lambda _: None)


def set_replica_identity(admin: psycopg.Connection[Any], table: str, identity: str) -> None:
    """ALTER TABLE ... REPLICA IDENTITY on a tracked table, as where bemi was installed without a
    superuser: there no event trigger refuses it (elsewhere bemi_remember_keys does). admin is
    an autocommit superuser connection."""
    admin.execute("ALTER EVENT TRIGGER bemi_remember_keys DISABLE")
    try:
        admin.execute(f"ALTER TABLE {table} REPLICA IDENTITY {identity}")
    finally:
        admin.execute("ALTER EVENT TRIGGER bemi_remember_keys ENABLE")
