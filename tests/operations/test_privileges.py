"""Privileges and tamper resistance: the roles of docs/security.md (created by running the
document's own SQL block), each boundary tested from each role; pinned search_path against
planted look-alikes; no forged context. (pgspot runs in make test as make lint.)"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import bemi_pg
from tests.helpers.trail import changes, ingest

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("bemi_app", "bemi_worker", "bemi_ingest", "bemi_reader")


def documented_grants() -> str:
    """The SQL block of docs/security.md, as a user would run it."""
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sql\n(.*?)```", text, re.DOTALL)
    assert len(blocks) == 1
    return blocks[0]


def as_role(dsn: str, role: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, user=role, autocommit=True, row_factory=dict_row)


@pytest.fixture
def roles(dsn: str, admin: psycopg.Connection[Any]) -> Iterator[None]:
    """The documented roles, a tracked table owned by the administrator that the application
    may write, and some ingested history."""
    admin.execute("DROP ROLE IF EXISTS " + ", ".join(ROLES))
    admin.execute(documented_grants())
    admin.execute("CREATE TABLE t (id int PRIMARY KEY, v text); SELECT bemi.track('t')")
    admin.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON t TO bemi_app")
    admin.execute("INSERT INTO t VALUES (1, 'history')")
    ingest(admin)
    yield
    for role in ROLES:
        admin.execute(f"DROP OWNED BY {role}")
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s) AND datname = current_database()",
        [list(ROLES)])
    admin.execute("DROP ROLE " + ", ".join(ROLES))


def refused(conn: psycopg.Connection[Any], statement: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)


ADMINISTRATION = [
    "SELECT bemi.track('t')", "SELECT bemi.untrack('t')", "SELECT bemi.track_all()",
    "DROP TRIGGER bemi_context ON t", "ALTER TABLE t DISABLE TRIGGER bemi_context",
    "SELECT bemi.create_slot()", "SELECT bemi.drop_slot()",
    "SELECT pg_create_logical_replication_slot('mine', 'test_decoding')",
    "SELECT * FROM bemi.wal", "SELECT * FROM bemi.peek(10)",
    "SELECT * FROM pg_logical_slot_peek_changes('bemi', NULL, NULL)",
    "INSERT INTO bemi.changes (schema, \"table\", operation, committed_at, transaction_id, position, ordinal) "
    "VALUES ('public', 't', 'CREATE', now(), 1, '0/1', 1)",
    "UPDATE bemi.changes SET context = '{\"forged\": true}'", "DELETE FROM bemi.changes", "TRUNCATE bemi.changes",
    "UPDATE bemi.progress SET lsn = '0/0'", "DELETE FROM bemi.progress",
]
# What only the streaming worker may do: stage changes and store them.
STREAMING = [
    "SELECT bemi.store('0/0')",
    "INSERT INTO bemi.staged (seq, relation, operation, position, ordinal, transaction_id, committed_at) "
    "VALUES (1, 1, 'I', '0/1', 1, 1, now())",
    "INSERT INTO bemi.staged_relations VALUES (1, 1, 'public', 't', '{id}', '{23}', '{-1}', '{t}')",
]
# What the REPLICATION attribute allows anyway (the streaming worker has it).
REPLICATION = [
    "SELECT pg_create_logical_replication_slot('mine', 'test_decoding')",
    "SELECT * FROM pg_logical_slot_peek_changes('bemi', NULL, NULL)",
]


def assert_history_intact(admin: psycopg.Connection[Any]) -> None:
    assert changes(admin, "primary_key", "operation", "context") == [
        {"primary_key": "1", "operation": "CREATE", "context": {}}]
    assert [r["relation"] for r in admin.execute("SELECT relation::text FROM bemi.tracked")] == ["t"]
    assert admin.execute("SELECT count(*) AS n FROM pg_trigger WHERE tgname = 'bemi_context' AND tgenabled = 'A'"
                         ).fetchone() == {"n": 1}


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bemi_pg.cli", "--dsn", dsn, *args], capture_output=True, text=True)


def test_application_role(dsn: str, admin: psycopg.Connection[Any], roles: None) -> None:
    with as_role(dsn, "bemi_app") as app:
        for statement in [*ADMINISTRATION, *STREAMING, "SELECT * FROM bemi.changes", "SELECT bemi.ingest()"]:
            refused(app, statement)
        with app.transaction():
            bemi_pg.set_context(app, {"user_id": 7})
            app.execute("INSERT INTO t VALUES (2, 'app')")
    assert_history_intact(admin)
    assert ingest(admin) == 1
    assert changes(admin, "primary_key", "context")[-1] == {"primary_key": "2", "context": {"user_id": 7}}


def test_streaming_worker_role(dsn: str, admin: psycopg.Connection[Any], roles: None) -> None:
    admin.execute("INSERT INTO t VALUES (2, 'pending')")
    with as_role(dsn, "bemi_worker") as worker:
        for statement in [*(s for s in ADMINISTRATION if s not in REPLICATION), "SELECT bemi.ingest()",
                          "SELECT * FROM t", "INSERT INTO t VALUES (3, 'worker')"]:
            refused(worker, statement)
    done = cli(f"{dsn} user=bemi_worker", "worker", "--drain")
    assert done.returncode == 0, done.stderr
    assert "worker: streaming slot" in done.stdout and "drained 1 changes" in done.stdout
    assert changes(admin, "primary_key")[-1] == {"primary_key": "2"}
    status = cli(f"{dsn} user=bemi_worker", "status")
    assert status.returncode == 0, status.stderr
    assert re.search(r"problem changes +0", status.stdout), status.stdout


def test_sql_path_worker_role(dsn: str, admin: psycopg.Connection[Any], roles: None) -> None:
    admin.execute("INSERT INTO t VALUES (2, 'pending')")
    with as_role(dsn, "bemi_ingest") as worker:
        for statement in [*ADMINISTRATION, *STREAMING, "SELECT * FROM bemi.changes", "SELECT * FROM t"]:
            refused(worker, statement)
        assert worker.execute("SELECT bemi.ingest() AS n").fetchone() == {"n": 1}
    admin.execute("INSERT INTO t VALUES (3, 'pending')")
    done = cli(f"{dsn} user=bemi_ingest", "worker", "--drain")
    assert done.returncode == 0, done.stderr
    assert 'role "bemi_ingest" lacks the REPLICATION attribute, so ingesting through SQL' in done.stdout
    assert "drained 1 changes" in done.stdout
    assert [r["primary_key"] for r in changes(admin, "primary_key")] == ["1", "2", "3"]


def test_reader_role(dsn: str, admin: psycopg.Connection[Any], roles: None) -> None:
    with as_role(dsn, "bemi_reader") as reader:
        for statement in [*ADMINISTRATION, *STREAMING, "SELECT bemi.ingest()", "SELECT * FROM t"]:
            refused(reader, statement)
        assert reader.execute("SELECT primary_key FROM bemi.changes").fetchall() == [{"primary_key": "1"}]
    assert_history_intact(admin)


def test_no_forged_context_on_another_sessions_changes(dsn: str, admin: psycopg.Connection[Any], roles: None) -> None:
    """While a victim's transaction is open, the application emits bemi messages of every kind
    it can: the victim's changes keep the victim's context."""
    with psycopg.connect(dsn) as victim, as_role(dsn, "bemi_app") as app:
        with bemi_pg.with_context(victim, {"user_id": 1}):
            victim.execute("INSERT INTO t VALUES (10, 'victim')")
            app.execute("""SELECT pg_logical_emit_message(false, 'bemi', '{"user_id": 666}')""")
            with app.transaction():
                app.execute("""SELECT pg_logical_emit_message(true, 'bemi', '{"user_id": 666}')""")
                app.execute("SELECT set_config('bemi.context', '{\"user_id\": 666}', true)")
            victim.execute("UPDATE t SET v = 'victim 2' WHERE id = 10")
    assert ingest(admin) == 2
    assert changes(admin, "primary_key", "context")[1:] == [{"primary_key": "10", "context": {"user_id": 1}}] * 2


# SECURITY DEFINER functions meant for every role; any other must be revoked from PUBLIC.
FOR_EVERYONE = {
    # Time travel's checks of a moment: tell any caller only when tracking began, the horizon
    # and how far the trail is ingested (bemi.tracking, bemi.retention and bemi.progress stay
    # unreadable; bemi.check_trail runs with its caller's rights).
    "bemi.history_of(regclass,timestamp with time zone)",
    "bemi.retained_from()",
    "bemi.ingested_until(name)",
    # Revert's list of a table's ignored columns (bemi.track's ignore_columns), for any caller
    # that may revert; it tells only those column names.
    "bemi.ignored_columns(regclass)",
    # The same for masked columns (mask_columns), so that time travel of a table without a key
    # compares rows without them; and the table a change was made in (an OID), so that a
    # revert matches tables by identity, never by a name reused since.
    "bemi.masked_columns(regclass)",
    "bemi.changed_relation(text,text,timestamp with time zone)",
    # The coverage record's checks (docs/time-travel.md#coverage), for time travel and revert
    # by any caller: whether a table has writes not yet ingested, where its coverage begins,
    # whether changes belong to a transaction stored in part; and an exact (time, WAL position)
    # mark. Each tells a yes or no, a time or a position, never a value.
    "bemi.pending_writes(regclass,integer)",
    "bemi.covered_from(name,oid,text,text)",
    "bemi.check_stored(regclass,bigint[])",
    "bemi.wal_mark()",
    # Time travel by WAL position: whether a gap in capture holds a position (its cause).
    "bemi.position_gap(pg_lsn)",
    # Where the trail is stored (a trail database's system identifier and name): every worker
    # refuses to store into a second trail, whatever its grants, and bemi-pg status says where.
    "bemi.trail_stored_in(name)",
}


def test_security_definer_functions_pin_search_path_and_are_not_public(admin: psycopg.Connection[Any]) -> None:
    """Every function of the extension that runs with the owner's rights, found in the
    catalog (not a list kept by hand): pinned search_path, not executable by PUBLIC."""
    definers = admin.execute("""
      SELECT p.oid::regprocedure::text AS name, p.proconfig,
        EXISTS (SELECT FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) AS a
                WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE') AS public
      FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
      JOIN pg_extension e ON e.oid = d.refobjid WHERE e.extname = 'bemi' AND p.prosecdef""").fetchall()
    assert {"bemi.store", "bemi.ingest"} <= {f["name"].partition("(")[0] for f in definers}
    for function in definers:
        assert "search_path=pg_catalog, pg_temp" in (function["proconfig"] or []), function["name"]
        assert not function["public"] or function["name"] in FOR_EVERYONE, function["name"]
    # docs/security.md lists each with why it must run as the owner, and no other.
    text = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    table = text[text.index("## search_path"):].split("\n\n## ")[0]
    listed = set(re.findall(r"`(bemi\.[a-z_0-9]+)\(", table)) - {"bemi.check_trail"}
    assert listed == {f["name"].partition("(")[0] for f in definers}


# Look-alikes of every pg_catalog operator and simple function on the types bemi handles,
# in public and in a schema put before pg_catalog; each one raises if it is ever called.
PLANT = """
CREATE SCHEMA evil;
GRANT USAGE ON SCHEMA evil TO PUBLIC;
DO $plant$
DECLARE
  simple regtype[] := '{text,integer,bigint,smallint,numeric,pg_lsn,jsonb,name,oid,boolean,regclass,"char",xid}';
  o record;
  target text;
  n integer := 0;
BEGIN
  FOR o IN
    SELECT 'op' AS kind, oprname AS name, ARRAY[oprleft, oprright]::regtype[] AS args, oprresult::regtype AS result
    FROM pg_operator WHERE oprnamespace = 'pg_catalog'::regnamespace AND oprleft <> 0
      AND oprleft = ANY(simple) AND oprright = ANY(simple) AND oprresult = ANY(simple)
    UNION ALL
    SELECT 'fn', proname, proargtypes::regtype[], prorettype::regtype
    FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace AND prokind = 'f' AND NOT proretset
      AND provariadic = 0 AND pronargs > 0 AND prorettype = ANY(simple)
      AND proargtypes::regtype[] <@ simple AND proname !~ '^(pg_|_)|(in|out|recv|send)$'
  LOOP
    FOREACH target IN ARRAY ARRAY['evil', 'public'] LOOP
      n := n + 1;
      EXECUTE format('CREATE FUNCTION %I.%I(%s) RETURNS %s LANGUAGE plpgsql AS %L', target,
        CASE o.kind WHEN 'fn' THEN o.name ELSE 'tripwire_' || n END, array_to_string(o.args, ', '), o.result,
        format('BEGIN RAISE EXCEPTION USING MESSAGE = %L; END', format('planted %s %s(%s) was called', target, o.name, o.args)));
      IF o.kind = 'op' THEN
        EXECUTE format('CREATE OPERATOR %I.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = %I.%I)',
          target, o.name, o.args[1], o.args[2], target, 'tripwire_' || n);
      END IF;
    END LOOP;
  END LOOP;
END
$plant$;
"""
HOSTILE_PATH = "SET search_path = evil, pg_catalog, public"


def test_planted_lookalikes_are_never_called(dsn: str, admin: psycopg.Connection[Any], roles: None) -> None:
    admin.execute(PLANT)
    planted = admin.execute("SELECT count(*) AS n FROM pg_proc WHERE pronamespace = 'evil'::regnamespace").fetchone()
    assert planted is not None and planted["n"] > 500
    admin.execute("CREATE TABLE u (id int PRIMARY KEY); GRANT INSERT, UPDATE ON u TO bemi_app")
    with psycopg.connect(dsn, autocommit=True) as owner:  # the administrator, with the hostile path
        owner.execute(HOSTILE_PATH)
        owner.execute("SELECT bemi.track('u'), bemi.untrack('u'), bemi.track('u')")
    with as_role(dsn, "bemi_app") as app:
        app.execute(HOSTILE_PATH)
        with bemi_pg.with_context(app, {"user_id": 5}):
            app.execute("INSERT INTO u VALUES (1)")
            bemi_pg.set_context(app, {"user_id": 6})
            app.execute("UPDATE u SET id = 2")
        app.execute('UPDATE u SET id = 3 /*Bemi {"user_id": 8} Bemi*/')
    with as_role(dsn, "bemi_ingest") as worker:
        worker.execute(HOSTILE_PATH)
        assert worker.execute("SELECT bemi.ingest() AS n").fetchone() == {"n": 3}
    assert changes(admin, "table", "context")[1:] == [
        {"table": "u", "context": {"user_id": c}} for c in (5, 6, 8)]
    with as_role(dsn, "bemi_app") as app, bemi_pg.with_context(app, {"user_id": 9}):
        app.execute("UPDATE u SET id = 4")
    hostile = "options='-c search_path=evil,pg_catalog,public'"
    done = cli(f"{dsn} user=bemi_worker {hostile}", "worker", "--drain")  # the streaming worker, likewise
    assert done.returncode == 0, done.stderr
    assert changes(admin, "table", "context")[-1] == {"table": "u", "context": {"user_id": 9}}

