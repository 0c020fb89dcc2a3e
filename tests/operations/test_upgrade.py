"""Upgrades: an upgraded install equals a fresh one, and keeps the trail and pending changes.

Both routes are compared: the extension (CREATE EXTENSION bemi VERSION '1.0'; ALTER EXTENSION
bemi UPDATE against CREATE EXTENSION bemi), and the plain install (bemi-pg install over a 1.0
plain install against a fresh one). The comparison is a catalog dump of schema bemi: functions
with their definitions, settings, security and privileges; tables, columns, indexes,
constraints, triggers, views, sequences, types; the event trigger and the publication; for the
extension, its member objects and configuration tables.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import bemi_pg
from bemi_pg import install
from tests.fixtures.database import NewDatabase
from tests.helpers.catalog import snapshot
from tests.helpers.trail import ingest


def catalog(dsn: str) -> list[str]:
    """The catalog snapshot of what bemi installed, one object per line (tests/helpers/catalog.py)."""
    return snapshot(dsn)


def test_extension_update_equals_a_fresh_create(new_database: NewDatabase) -> None:
    fresh, updated = new_database(), new_database()
    with psycopg.connect(fresh, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION bemi")
    with psycopg.connect(updated, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION bemi VERSION '1.0'")
        conn.execute("ALTER EXTENSION bemi UPDATE")
        assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'bemi'").fetchone() == ("1.2",)
    dump = catalog(fresh)
    assert any(line.startswith("event trigger bemi_track_new_tables") for line in dump)
    assert any(line.startswith("member function bemi.uninstall(boolean)") for line in dump)
    assert catalog(updated) == dump


def test_plain_upgrade_equals_a_fresh_plain_install(new_database: NewDatabase) -> None:
    fresh, updated = new_database(as_owner=True), new_database(as_owner=True)
    with psycopg.connect(fresh, autocommit=True) as conn:
        assert install.install(conn) == (None, "1.2")
    with psycopg.connect(updated, autocommit=True) as conn:
        assert install.install(conn, target="1.0") == (None, "1.0")
        assert install.installed(conn) == install.Installed("plain", "1.0")
        assert install.install(conn) == ("1.0", "1.2")
        assert install.install(conn) == ("1.2", "1.2")
    assert catalog(updated) == catalog(fresh)


def test_plain_install_has_the_objects_of_the_extension(new_database: NewDatabase) -> None:
    """Installed by the same non-superuser role, plain and extension differ only in what makes
    one an extension (members, configuration tables) and the plain install's version table."""
    plain, extension = new_database(as_owner=True), new_database(as_owner=True)
    with psycopg.connect(plain, autocommit=True) as conn:
        install.install(conn)
    with psycopg.connect(extension, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION bemi")

    def objects(dsn: str) -> list[str]:
        return [line for line in catalog(dsn) if not line.startswith(("member ", "configuration "))
                and "plain_install" not in line]

    assert objects(plain) == objects(extension)


def trail(dsn: str) -> list[dict[str, Any]]:
    """The 1.0 columns of every stored change."""
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(
            'SELECT id, schema, "table", primary_key, operation, before, after, context, committed_at, '
            "transaction_id, position, ordinal FROM bemi.changes ORDER BY id").fetchall()


def use_1_0(dsn: str) -> tuple[list[dict[str, Any]], int]:
    """Tracks the example's table under 1.0, stores its changes, and leaves more pending.
    Returns the stored trail and how many changes are pending."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as admin:
        admin.execute("SELECT bemi.create_slot()")
        with psycopg.connect(dsn) as conn:
            bemi_pg.seed_example(conn)
        assert ingest(admin) == 5
        with psycopg.connect(dsn) as conn:
            with bemi_pg.with_context(conn, {"user_id": 9, "endpoint": "/pending"}):
                conn.execute("UPDATE todo SET task = task || '!'")
                conn.execute("INSERT INTO todo (task) VALUES ('pending')")
    return trail(dsn), 3


def assert_kept(dsn: str, stored: list[dict[str, Any]], pending: int) -> None:
    """The trail is as it was, and the pending changes arrive after the upgrade, with context."""
    assert trail(dsn) == stored
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as admin:
        admin.execute("SELECT bemi.create_slot()")  # 1.1's slot; drains the 1.0 one
        ingest(admin)
        after = trail(dsn)
    assert after[: len(stored)] == stored
    added = after[len(stored):]
    assert [(c["operation"], c["context"]["endpoint"]) for c in added] == (
        [("UPDATE", "/pending")] * 2 + [("CREATE", "/pending")])
    assert len(added) == pending


def test_extension_update_keeps_the_trail_and_pending_changes(new_database: NewDatabase) -> None:
    dsn = new_database()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION bemi VERSION '1.0'")
    stored, pending = use_1_0(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER EXTENSION bemi UPDATE")
    assert_kept(dsn, stored, pending)


def test_plain_upgrade_keeps_the_trail_and_pending_changes(new_database: NewDatabase) -> None:
    dsn = new_database(as_owner=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        install.install(conn, target="1.0")
    stored, pending = use_1_0(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert install.install(conn) == ("1.0", "1.2")
    assert_kept(dsn, stored, pending)


def test_a_failed_upgrade_changes_nothing(new_database: NewDatabase) -> None:
    """One transaction: an update script that fails half-way leaves the older install whole."""
    dsn = new_database(as_owner=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        install.install(conn, target="1.0")
        before = catalog(dsn)
        # Something the 1.1 script creates exists already, so it fails after its first statements.
        conn.execute("CREATE FUNCTION bemi.slot_name() RETURNS name LANGUAGE sql RETURN 'taken'")
        with pytest.raises(psycopg.errors.DuplicateFunction):
            install.install(conn)
        conn.execute("DROP FUNCTION bemi.slot_name()")
        assert install.installed(conn) == install.Installed("plain", "1.0")
    assert catalog(dsn) == before
