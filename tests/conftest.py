"""Real PostgreSQL for every test: one server (wal_level=logical) per session, a fresh
database with the extension and the "bemi" slot per test, dropped afterwards."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import settings
from psycopg.rows import dict_row
from pytest_postgresql import factories

BINDIR = subprocess.check_output(["pg_config", "--bindir"], text=True).strip()

# No example database: tests run as an unprivileged user from a read-only checkout.
settings.register_profile("bemi", database=None, deadline=None)
settings.load_profile("bemi")

postgresql_proc = factories.postgresql_proc(
    executable=os.path.join(BINDIR, "pg_ctl"),
    postgres_options=(
        "-c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20 "
        "-c fsync=off -c full_page_writes=off -c max_connections=200 -c timezone=UTC"
    ),
)


def conninfo(proc: Any, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(host=proc.host, port=proc.port, user=proc.user, dbname=dbname)


@pytest.fixture
def dsn(postgresql_proc: Any) -> Iterator[str]:
    """A fresh database with the extension installed and the slot created."""
    name = f"bemi_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(conninfo(postgresql_proc, "postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = conninfo(postgresql_proc, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION bemi")
        conn.execute("SELECT bemi.create_slot()")
    yield url
    with psycopg.connect(conninfo(postgresql_proc, "postgres"), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        )
        admin.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s", [name]
        )
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An application connection (transactions as psycopg opens them)."""
    with psycopg.connect(dsn) as connection:
        yield connection


@pytest.fixture
def admin(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection for DDL, ingest and assertions."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as connection:
        yield connection


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
