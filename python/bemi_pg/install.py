"""bemi without CREATE EXTENSION: the plain install ``bemi-pg install`` runs on managed PostgreSQL.

The objects are the extension's own, from the scripts this package ships (scripts.py): a fresh
install runs the newest standalone script (``bemi--1.2.sql``, built from sql/src/), an older
plain install runs the update scripts it lacks, in order, all in one transaction. The versions a plain install went
through are recorded in ``bemi.plain_install``; ``installed()`` tells a plain install from the
extension. What CREATE EXTENSION does around a script is done here: the schema is created and
``search_path`` is set to it; what only CREATE EXTENSION can run (the ``\\echo`` guard,
``pg_extension_config_dump``) is left out (scripts.plain_statements).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from bemi_pg import scripts

VERSION_TABLE = sql.SQL("bemi.plain_install")
# The oldest server bemi runs on (server_version_num): pgoutput sends logical messages, which carry
# each change's context, from 14 on. CREATE EXTENSION checks the same (sql/bemi--0.sql).
MINIMUM_SERVER = 140000
TRAIL_SCHEMA = "bemi_trail"


class InstallError(Exception):
    """Installing, upgrading or uninstalling cannot go ahead; the message says why and what to do."""


@dataclass(frozen=True)
class Installed:
    kind: str  # "extension" or "plain"
    version: str


@dataclass(frozen=True)
class Check:
    """One line of ``bemi-pg install --check``: ``ok`` False means install would be refused."""

    name: str
    ok: bool
    detail: str


def _rows(conn: psycopg.Connection[Any], query: str | sql.Composed, params: Any = None) -> list[tuple[Any, ...]]:
    return conn.cursor(row_factory=tuple_row).execute(query, params).fetchall()


def _value(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    return _rows(conn, query, params)[0][0]


def installed(conn: psycopg.Connection[Any]) -> Installed | None:
    """How bemi is installed in this database, if at all."""
    version = _value(conn, "SELECT (SELECT extversion FROM pg_extension WHERE extname = %s)", [scripts.EXTENSION])
    if version is not None:
        return Installed("extension", version)
    if _value(conn, "SELECT to_regclass('bemi.plain_install') IS NOT NULL"):
        versions = [r[0] for r in _rows(conn, sql.SQL("SELECT version FROM {}").format(VERSION_TABLE))]
        return Installed("plain", max(versions, key=scripts.version_key))
    return None


# ---------------------------------------------------------------------------------------
# What the server and the role allow: bemi-pg install --check, and the refusals of install.

ROLE = """
SELECT r.rolname, r.rolsuper,
       r.rolsuper OR r.rolreplication
         OR pg_has_role(r.oid, (SELECT oid FROM pg_roles WHERE rolname = 'rds_replication'), 'MEMBER') AS replication,
       has_database_privilege(current_database(), 'CREATE') AS may_create_schema,
       current_database() AS database
FROM pg_roles r WHERE r.rolname = current_user
"""

# The slots this database's bemi uses or used: per database from 1.1 on, "bemi" in 1.0.
OWN_SLOTS = """
SELECT slot_name, active, pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)) AS retained
FROM pg_replication_slots
WHERE database = current_database()
  AND slot_name IN ('bemi', 'bemi_' || (SELECT oid FROM pg_database WHERE datname = current_database()))
"""


def may_create_event_triggers(conn: psycopg.Connection[Any]) -> bool:
    """Tries to create an event trigger in a transaction that is rolled back: stock PostgreSQL
    allows superusers only, but managed platforms widen that (rds_superuser, supautils)."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("CREATE FUNCTION pg_temp.bemi_check() RETURNS event_trigger LANGUAGE plpgsql "
                         "AS 'BEGIN END'")
            conn.execute("CREATE EVENT TRIGGER bemi_check ON ddl_command_end EXECUTE FUNCTION pg_temp.bemi_check()")
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


def leftover_slot_advice(name: str, active: bool, retained: str) -> str:
    state = "in use by a running process" if active else "not in use"
    return (f"a replication slot {name} is left over from an earlier bemi install ({state}, retaining {retained} "
            f"of WAL); its pending changes cannot be read without that install. Drop it with "
            f"SELECT pg_drop_replication_slot('{name}') (stop any bemi-pg worker first), then install again")


def checks(conn: psycopg.Connection[Any]) -> list[Check]:
    """What the server and the current role allow, without changing anything."""
    name, superuser, replication, may_create_schema, database = _rows(conn, ROLE)[0]
    wal_level = _value(conn, "SELECT current_setting('wal_level')")
    slots_max = int(_value(conn, "SELECT current_setting('max_replication_slots')"))
    slots_used = int(_value(conn, "SELECT count(*) FROM pg_replication_slots"))
    senders_max = int(_value(conn, "SELECT current_setting('max_wal_senders')"))
    senders_used = int(_value(conn, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'"))
    own_slots = _rows(conn, OWN_SLOTS)
    current = installed(conn)
    latest = scripts.latest_version()
    server = conn.info.server_version
    found = [
        Check("server", server >= MINIMUM_SERVER,
              f"PostgreSQL {_value(conn, 'SHOW server_version')}" + ("" if server >= MINIMUM_SERVER else
              ": bemi needs PostgreSQL 14 or newer (pgoutput sends the logical messages that carry each "
              "change's context from 14 on; upgrade the server)")),
        Check("wal_level", wal_level == "logical",
              f"{wal_level}" + ("" if wal_level == "logical" else
                                " (needs logical: ALTER SYSTEM SET wal_level = logical and a restart; "
                                "managed platforms: docs/managed-postgres.md)")),
        Check("replication", bool(replication),
              f"role {name} " + ("may create and read replication slots" if replication else
                                 f"lacks REPLICATION (ALTER ROLE {name} REPLICATION; RDS: GRANT rds_replication TO {name})")),
        Check("free slots", slots_used < slots_max or bool(current and own_slots),
              f"{slots_max - slots_used} of max_replication_slots {slots_max}"
              + (f" (bemi's slot {own_slots[0][0]} exists)" if current and own_slots else "")),
        Check("wal senders", True, f"{senders_max - senders_used} of max_wal_senders {senders_max} free "
                                   "(bemi-pg worker streams over one; bemi.ingest() needs none)"),
        Check("create schema", bool(may_create_schema) or current is not None,
              f"role {name} " + ("may" if may_create_schema else "may not") + f" create schemas in database {database}"
              + ("" if may_create_schema else f" (GRANT CREATE ON DATABASE {database} TO {name})")),
    ]
    events = may_create_event_triggers(conn)
    found.append(Check("event triggers", True,
                       "allowed: bemi.track_all(schema, auto => true) can track tables created later" if events else
                       "not allowed for this role (superuser only): call bemi.track() after each CREATE TABLE"))
    if current is None:
        found.append(Check("bemi", True, f"not installed; bemi-pg install installs {latest}"))
        for slot in own_slots:
            found.append(Check("leftover slot", False, leftover_slot_advice(*slot)))
    elif current.kind == "extension":
        found.append(Check("bemi", True, f"extension {current.version} (upgrade with ALTER EXTENSION bemi UPDATE)"))
    else:
        todo = "up to date" if current.version == latest else f"bemi-pg install upgrades it to {latest}"
        found.append(Check("bemi", True, f"plain install {current.version} ({todo})"))
    if superuser:
        found.append(Check("superuser", True, f"role {name} is a superuser: CREATE EXTENSION bemi works where the "
                                              "extension files are installed (make install)"))
    return found


# ---------------------------------------------------------------------------------------
# install: fresh, or the update scripts an older plain install lacks, in one transaction.

# Whether a schema holds anything (relations, functions, types).
SCHEMA_IN_USE = """
SELECT coalesce((SELECT EXISTS (SELECT FROM pg_class WHERE relnamespace = n.oid)
                     OR EXISTS (SELECT FROM pg_proc WHERE pronamespace = n.oid)
                     OR EXISTS (SELECT FROM pg_type WHERE typnamespace = n.oid)
                 FROM pg_namespace n WHERE n.nspname = %s), false)
"""


def refusals(conn: psycopg.Connection[Any], current: Installed | None, trail_only: bool = False) -> list[str]:
    """Why install must not go ahead (empty: it may). A trail-only database has no slot: its
    installer needs no REPLICATION."""
    found = checks(conn)
    needed = ("server", "create schema", "leftover slot") if trail_only else (
        "server", "replication", "create schema", "leftover slot")
    reasons = [c.detail for c in found if not c.ok and c.name in needed]
    if current is not None and current.kind == "extension":
        reasons.append(f"bemi is installed as an extension (version {current.version}) in this database: "
                       "upgrade it with ALTER EXTENSION bemi UPDATE, not bemi-pg install")
    if current is None and _value(conn, SCHEMA_IN_USE, [scripts.SCHEMA]):
        reasons.append("schema bemi exists and holds objects, but no bemi install (no bemi.plain_install): "
                       "rename or drop it first")
    if current is not None and current.kind == "plain":
        owner = _value(conn, "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = %s", [scripts.SCHEMA])
        if not _value(conn, "SELECT pg_has_role(%s::regrole, 'USAGE')", [owner]):
            reasons.append(f"bemi was installed by role {owner}: upgrade it as {owner}")
    return reasons


def install(conn: psycopg.Connection[Any], notice: Callable[[str], None] = lambda _: None,
            target: str | None = None, trail_only: bool = False) -> tuple[str | None, str]:
    """Installs bemi as plain SQL, or upgrades an older plain install, in one transaction, to
    target (default: the latest version the package ships).

    Returns (the version before, the version now). Raises InstallError, changing nothing, when
    a privilege is missing or bemi is installed as an extension. trail_only: a database that
    only holds a trail the worker writes from another database (bemi-pg worker --trail-dsn)."""
    current = installed(conn)
    if reasons := refusals(conn, current, trail_only):
        raise InstallError("; ".join(reasons))
    before = current.version if current else None
    try:
        path = scripts.install_path(before, target)
    except ValueError as error:
        raise InstallError(str(error)) from error
    if not path:
        return before, before or ""
    conn.add_notice_handler(lambda d: notice(f"{(d.severity or '').lower()}: {d.message_primary}"
                                             + (f" ({d.message_hint})" if d.message_hint else "")))
    with conn.transaction():
        if current is None:
            # An empty schema bemi (DROP EXTENSION leaves it) is used as it is.
            if not _value(conn, "SELECT to_regnamespace(%s) IS NOT NULL", [scripts.SCHEMA]):
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(scripts.SCHEMA)))
            conn.execute(sql.SQL("CREATE TABLE {} (version text PRIMARY KEY, "
                                 "installed_at timestamptz NOT NULL DEFAULT now())").format(VERSION_TABLE))
            conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
                VERSION_TABLE, sql.Literal("The versions this plain install (bemi-pg install) went through.")))
        # As CREATE EXTENSION runs a script: with search_path set to the extension's schema.
        conn.execute("SELECT set_config('search_path', %s, true)", [scripts.SCHEMA])
        for name in path:
            for statement in scripts.plain_statements(name):
                conn.execute(statement)
            conn.execute(sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(VERSION_TABLE),
                         [name.split("--")[-1]])
    return before, path[-1].split("--")[-1]


# ---------------------------------------------------------------------------------------
# uninstall: bemi.uninstall() (slot, publication, triggers, replica identity, the trail),
# then the extension or the plain install itself.

def uninstall(conn: psycopg.Connection[Any], drop_trail: bool = False) -> str:
    """Removes bemi from this database in one transaction; returns what became of the trail."""
    current = installed(conn)
    if current is None:
        raise InstallError("bemi is not installed in this database")
    with conn.transaction():
        if _value(conn, "SELECT to_regprocedure('bemi.uninstall(boolean)') IS NULL"):
            raise InstallError(f"bemi {current.version} has no bemi.uninstall(): upgrade first "
                               "(bemi-pg install, or ALTER EXTENSION bemi UPDATE)")
        kept = _value(conn, "SELECT bemi.uninstall(%s)", [drop_trail])
        if current.kind == "extension":
            conn.execute("DROP EXTENSION bemi")
            # CREATE EXTENSION made the schema, but it is no member: it goes if nothing else is in it.
            try:
                with conn.transaction():
                    conn.execute("DROP SCHEMA bemi")
            except psycopg.errors.DependentObjectsStillExist:
                kept += "; schema bemi is kept: it holds objects bemi did not create"
        else:
            conn.execute("DROP SCHEMA bemi CASCADE")
    return str(kept)
