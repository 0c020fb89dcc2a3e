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
from tests.helpers.trail import ingest

CATALOG = r"""
WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = 'bemi')
SELECT line FROM (
  SELECT 'function ' || p.oid::regprocedure || ' owner ' || p.proowner::regrole || ' acl ' || coalesce(p.proacl::text, '-')
         || ' comment ' || coalesce(obj_description(p.oid, 'pg_proc'), '-') || E'\n' || pg_get_functiondef(p.oid)
  FROM pg_proc p WHERE p.pronamespace = (SELECT oid FROM ns)
  UNION ALL
  SELECT format('relation %s kind %s persistence %s identity %s owner %s acl %s options %s comment %s',
                c.relname, c.relkind, c.relpersistence, c.relreplident, c.relowner::regrole, coalesce(c.relacl::text, '-'),
                coalesce(c.reloptions::text, '-'), coalesce(obj_description(c.oid, 'pg_class'), '-'))
  FROM pg_class c WHERE c.relnamespace = (SELECT oid FROM ns)
  UNION ALL
  SELECT format('column %s.%s %s %s notnull %s default %s identity %s generated %s acl %s comment %s',
                c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                coalesce(pg_get_expr(d.adbin, d.adrelid), '-'), a.attidentity, a.attgenerated, coalesce(a.attacl::text, '-'),
                coalesce(col_description(c.oid, a.attnum), '-'))
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  WHERE c.relnamespace = (SELECT oid FROM ns) AND a.attnum > 0
  UNION ALL
  SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
  WHERE c.relnamespace = (SELECT oid FROM ns)
  UNION ALL
  SELECT format('constraint %s %s %s', co.conrelid::regclass, co.conname, pg_get_constraintdef(co.oid))
  FROM pg_constraint co WHERE co.connamespace = (SELECT oid FROM ns)
  UNION ALL
  SELECT format('view %s %s', c.relname, pg_get_viewdef(c.oid)) FROM pg_class c
  WHERE c.relnamespace = (SELECT oid FROM ns) AND c.relkind IN ('v', 'm')
  UNION ALL
  SELECT 'trigger ' || pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  WHERE c.relnamespace = (SELECT oid FROM ns) AND NOT t.tgisinternal
  UNION ALL
  SELECT format('sequence %s %s %s %s %s %s', s.seqrelid::regclass, s.seqtypid::regtype, s.seqstart, s.seqincrement,
                s.seqmax, s.seqcycle)
  FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid WHERE c.relnamespace = (SELECT oid FROM ns)
  UNION ALL
  SELECT format('type %s %s %s', t.typname, t.typtype,
                (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid))
  FROM pg_type t WHERE t.typnamespace = (SELECT oid FROM ns)
  UNION ALL
  SELECT format('event trigger %s %s %s %s %s', e.evtname, e.evtevent, e.evtfoid::regprocedure, e.evtenabled, e.evttags)
  FROM pg_event_trigger e
  UNION ALL
  SELECT format('publication %s %s %s %s %s %s %s', p.pubname, p.puballtables, p.pubinsert, p.pubupdate, p.pubdelete,
                p.pubtruncate, p.pubviaroot)
  FROM pg_publication p
  UNION ALL
  SELECT format('schema %s owner %s acl %s', n.nspname, n.nspowner::regrole, n.nspacl) FROM pg_namespace n
  WHERE n.oid = (SELECT oid FROM ns)
  UNION ALL
  SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_depend d
  JOIN pg_extension x ON x.oid = d.refobjid AND x.extname = 'bemi'
  WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
  UNION ALL
  SELECT 'configuration ' || c.oid::regclass || ' ' || coalesce(x.extcondition[k.i], '-')
  FROM pg_extension x CROSS JOIN LATERAL generate_subscripts(x.extconfig, 1) AS k(i)
  JOIN pg_class c ON c.oid = x.extconfig[k.i]
  WHERE x.extname = 'bemi'
) AS dump(line)
ORDER BY line COLLATE "C"
"""


def catalog(dsn: str) -> list[str]:
    """The catalog dump of schema bemi (see the module docstring), one object per line."""
    with psycopg.connect(dsn) as conn:
        return [row[0] for row in conn.execute(CATALOG)]


def test_extension_update_equals_a_fresh_create(new_database: NewDatabase) -> None:
    fresh, updated = new_database(), new_database()
    with psycopg.connect(fresh, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION bemi")
    with psycopg.connect(updated, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION bemi VERSION '1.0'")
        conn.execute("ALTER EXTENSION bemi UPDATE")
        assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'bemi'").fetchone() == ("1.1",)
    dump = catalog(fresh)
    assert any(line.startswith("event trigger bemi_track_new_tables") for line in dump)
    assert any(line.startswith("member function bemi.uninstall(boolean)") for line in dump)
    assert catalog(updated) == dump


def test_plain_upgrade_equals_a_fresh_plain_install(new_database: NewDatabase) -> None:
    fresh, updated = new_database(as_owner=True), new_database(as_owner=True)
    with psycopg.connect(fresh, autocommit=True) as conn:
        assert install.install(conn) == (None, "1.1")
    with psycopg.connect(updated, autocommit=True) as conn:
        assert install.install(conn, target="1.0") == (None, "1.0")
        assert install.installed(conn) == install.Installed("plain", "1.0")
        assert install.install(conn) == ("1.0", "1.1")
        assert install.install(conn) == ("1.1", "1.1")
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
        assert install.install(conn) == ("1.0", "1.1")
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
