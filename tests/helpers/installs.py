"""bemi installed every way a database can come to have 1.2, each with a trail holding changes
and more changes pending in its slot: for the catalog and the pg_dump tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

import bemi_pg
from bemi_pg import install
from tests.helpers.trail import ingest

# What the trail holds after use(): the example's five changes, then two pending ones.
STORED, PENDING = 5, 2


def stores(dsn: str, version: str | None) -> bool:
    """Whether bemi.ingest() of this version runs on the server. 1.1's fails on PostgreSQL 14
    (its time_at reads an interval literal 14 cannot, fixed in 1.2): there a 1.1 install is
    updated with all its changes still in the slot."""
    with psycopg.connect(dsn) as conn:
        return not (version == "1.1" and conn.info.server_version < 150000)


def use(dsn: str, store: bool = True) -> None:
    """Tracks the example's table, stores its five changes (unless store is false) and leaves
    two more pending."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT bemi.create_slot()")
        with psycopg.connect(dsn) as conn:
            bemi_pg.seed_example(conn)
        if store:
            assert ingest(admin) == STORED
        with psycopg.connect(dsn) as conn:
            with bemi_pg.with_context(conn, {"endpoint": "/pending"}):
                conn.execute("UPDATE todo SET task = task || '!' WHERE id = 26")
                conn.execute("INSERT INTO todo (task) VALUES ('pending')")


def catch_up(dsn: str) -> None:
    """Stores what is pending (draining a 1.0 slot on the way: bemi.create_slot() does that),
    and makes the partitions of this period and the next, as every install has them then."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        if admin.execute("SELECT NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = bemi.slot_name())"
                         ).fetchone() == (True,):
            admin.execute("SELECT bemi.create_slot()")
        ingest(admin)
        assert admin.execute("SELECT count(*) FROM bemi.changes").fetchone() == (STORED + PENDING,)
        admin.execute("SELECT bemi.create_partitions(now(), now() + bemi.partition_interval())")


def extension(dsn: str, version: str | None = None) -> None:
    """CREATE EXTENSION bemi (of version, then used and updated to the latest)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION bemi" + (f" VERSION '{version}'" if version else ""))
    use(dsn, stores(dsn, version))
    if version:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ALTER EXTENSION bemi UPDATE")
            assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'bemi'").fetchone() == ("1.2",)
            drains = conn.execute("SELECT to_regprocedure('bemi.drain_1_0()') IS NOT NULL").fetchone() == (True,)
        # Only an install with an undrained 1.0 slot keeps what drains it, until it is drained.
        assert drains == (version == "1.0")


def plain(dsn: str, version: str | None = None) -> None:
    """bemi-pg install (of version, then used and upgraded to the latest)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert install.install(conn, target=version) == (None, version or "1.2")
    use(dsn, stores(dsn, version))
    if version:
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert install.install(conn) == (version, "1.2")


Install = Callable[[str], None]

# Every way to 1.2, by name: (how, whether the database is made as the owner role).
WAYS: dict[str, tuple[Install, bool]] = {
    "fresh": (extension, False),
    "from 1.0": (lambda dsn: extension(dsn, "1.0"), False),
    "from 1.1": (lambda dsn: extension(dsn, "1.1"), False),
    "plain": (plain, True),
    "plain from 1.0": (lambda dsn: plain(dsn, "1.0"), True),
    "plain from 1.1": (lambda dsn: plain(dsn, "1.1"), True),
}


def trail(dsn: str) -> list[dict[str, Any]]:
    """Every stored change, every column."""
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM bemi.changes ORDER BY id").fetchall()
