"""Databases made for one test, owned by the superuser or by a role shaped like a managed
platform's admin role, for the install and upgrade tests (import the fixture from here)."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from bemi_pg.ingest.worker import Options
from bemi_pg.ingest.worker import run as run_worker
from conftest import conninfo

NewDatabase = Callable[..., str]

# The shape of a managed platform's admin role: not a superuser, has REPLICATION, owns the database.
OWNER_ROLE = "LOGIN REPLICATION"


@pytest.fixture
def new_database(postgresql_proc: Any) -> Iterator[NewDatabase]:
    """Makes databases, owned by the superuser or (as_owner=True) by a role of OWNER_ROLE's
    shape, returning a DSN that connects as that owner; drops them, their slots and the role."""
    made: list[str] = []
    role = f"owner_{uuid.uuid4().hex[:8]}"
    admin_dsn = conninfo(postgresql_proc, "postgres")
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" {OWNER_ROLE}')

    def make(as_owner: bool = False) -> str:
        name = f"bemi_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"' + (f' OWNER "{role}"' if as_owner else ""))
        made.append(name)
        url = conninfo(postgresql_proc, name)
        return psycopg.conninfo.make_conninfo(url, user=role) if as_owner else url

    yield make
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        for name in made:
            admin.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s",
                          [name])
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.execute(f'DROP ROLE "{role}"')


def as_superuser(dsn: str, proc: Any) -> str:
    """The same database, connected as the superuser."""
    return psycopg.conninfo.make_conninfo(dsn, user=proc.user)


@pytest.fixture
def old_install(new_database: NewDatabase) -> str:
    """A database with bemi 1.0 and its slot "bemi" (import new_database with it)."""
    url = new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION bemi VERSION '1.0'")
        conn.execute("SELECT bemi.create_slot()")
    return url


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """bemi-pg, run as a command."""
    return subprocess.run([sys.executable, "-m", "bemi_pg.cli", *args], capture_output=True, text=True)


@pytest.fixture
def trail(new_database: NewDatabase) -> str:
    """An empty database prepared to hold a trail (import new_database with it)."""
    url = new_database()
    done = cli("install", "--trail-only", "--dsn", url)
    assert done.returncode == 0, done.stderr
    assert "to hold a trail" in done.stdout
    return url


def drain(dsn: str, trail: str) -> None:
    """Stores everything written to dsn so far into the trail database (bemi-pg worker
    --drain --trail-dsn, in this process)."""
    run_worker(Options(dsn, drain=True, interval=0.05, trail_dsn=trail), threading.Event(), lambda _: None)
