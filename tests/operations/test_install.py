"""bemi-pg install, --check and uninstall, run as real processes, as the role managed platforms
give their users (not a superuser, REPLICATION, owns the database); automatic tracking of new
tables; two databases of one cluster at once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import bemi_pg
from tests.fixtures.database import NewDatabase, as_superuser
from tests.helpers.trail import ingest

BEMI_PG = [sys.executable, "-m", "bemi_pg.cli"]


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """bemi-pg with --dsn after the subcommand, as users type it."""
    return subprocess.run([*BEMI_PG, *args, "--dsn", dsn], capture_output=True, text=True, timeout=300)


def rows(dsn: str, query: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        cursor = conn.execute(query, params or None)
        return cursor.fetchall() if cursor.description else []


def check_lines(output: str) -> dict[str, tuple[str, str]]:
    """bemi-pg install --check's lines, as {name: (ok or MISSING, detail)}."""
    found = {}
    for line in output.splitlines():
        status, rest = line[:8].strip(), line[9:]
        found[rest[:15].strip()] = (status, rest[16:])
    return found


def leftovers(dsn: str) -> dict[str, Any]:
    """What bemi could leave behind in a database outside its schema."""
    return rows(dsn, """
      SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database()) AS slots,
             (SELECT count(*) FROM pg_publication) AS publications,
             (SELECT count(*) FROM pg_event_trigger) AS event_triggers,
             (SELECT count(*) FROM pg_trigger WHERE tgname = 'bemi_context') AS triggers,
             (SELECT count(*) FROM pg_namespace WHERE nspname = 'bemi') AS schemas,
             (SELECT count(*) FROM pg_extension WHERE extname = 'bemi') AS extensions""")[0]


NOTHING_LEFT = {"slots": 0, "publications": 0, "event_triggers": 0, "triggers": 0, "schemas": 0, "extensions": 0}


def test_check_reports_what_the_role_may_do_and_changes_nothing(new_database: NewDatabase,
                                                                postgresql_proc: Any) -> None:
    dsn = new_database(as_owner=True)
    result = cli(dsn, "install", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    found = check_lines(result.stdout)
    with psycopg.connect(dsn) as conn:
        server = conn.execute("SHOW server_version").fetchone()
    assert server and found["server"] == ("ok", f"PostgreSQL {server[0]}")
    assert found["wal_level"] == ("ok", "logical")
    assert found["replication"][0] == "ok" and "may create and read replication slots" in found["replication"][1]
    assert found["free slots"][0] == "ok" and "of max_replication_slots 20" in found["free slots"][1]
    assert found["create schema"][0] == "ok"
    assert found["event triggers"] == ("ok", "not allowed for this role (superuser only): call bemi.track() after "
                                             "each CREATE TABLE")
    assert found["bemi"] == ("ok", "not installed; bemi-pg install installs 1.2")
    assert leftovers(dsn) == NOTHING_LEFT

    superuser = check_lines(cli(as_superuser(dsn, postgresql_proc), "install", "--check").stdout)
    assert superuser["event triggers"][1].startswith("allowed")
    assert leftovers(dsn) == NOTHING_LEFT


def test_install_refuses_naming_the_missing_privilege(new_database: NewDatabase, postgresql_proc: Any) -> None:
    dsn = new_database(as_owner=True)
    role = psycopg.conninfo.conninfo_to_dict(dsn)["user"]
    admin = as_superuser(dsn, postgresql_proc)
    rows(admin, f'ALTER ROLE "{role}" NOREPLICATION')
    result = cli(dsn, "install")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot install: role {role} lacks REPLICATION (ALTER ROLE {role} "
                                    "REPLICATION; RDS: GRANT rds_replication TO")
    check = cli(dsn, "install", "--check")
    assert check.returncode == 1 and check_lines(check.stdout)["replication"][0] == "MISSING"

    # Another role with REPLICATION but no CREATE on the database.
    rows(admin, f'ALTER ROLE "{role}" REPLICATION')
    rows(admin, f'REVOKE CREATE ON DATABASE "{psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]}" FROM PUBLIC')
    rows(admin, f'ALTER DATABASE "{psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]}" OWNER TO CURRENT_USER')
    result = cli(dsn, "install")
    assert result.returncode == 1 and "may not create schemas" in result.stderr and "GRANT CREATE ON DATABASE" in result.stderr
    assert leftovers(dsn) == NOTHING_LEFT


def test_plain_install_and_full_use_as_the_owner_role(new_database: NewDatabase) -> None:
    dsn = new_database(as_owner=True)
    result = cli(dsn, "install")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("install: installed bemi 1.2 as plain SQL in schema bemi")
    again = cli(dsn, "-q", "install")
    assert again.returncode == 0 and again.stdout == ""

    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as admin:
        slot = admin.execute("SELECT bemi.create_slot(), bemi.slot_name() AS name").fetchone()
        assert slot is not None and slot["name"].startswith("bemi_")
        with psycopg.connect(dsn) as conn:
            bemi_pg.seed_example(conn)
        assert ingest(admin) == 5
        stored = admin.execute('SELECT primary_key, operation, context ->> \'endpoint\' AS endpoint '
                               'FROM bemi.changes ORDER BY id').fetchall()
        travelled = admin.execute("SELECT bemi.row_at('todo', '26', bemi.ingested_until()) AS now_26, "
                                  "bemi.row_at('todo', '27', bemi.ingested_until()) AS now_27").fetchone()
    assert travelled == {"now_26": {"id": 26, "task": "Sleep", "is_completed": True}, "now_27": None}
    assert [tuple(r.values()) for r in stored] == [
        ("26", "CREATE", "/todo"), ("27", "CREATE", "/todo"), ("28", "CREATE", "/todo"),
        ("26", "UPDATE", "/todo/complete"), ("27", "DELETE", "/todo/27")]
    status = cli(dsn, "status")
    assert status.returncode == 0, status.stderr
    assert f"{slot['name']} (pgoutput, idle" in status.stdout


def test_uninstall_restores_the_tables_and_keeps_the_trail(new_database: NewDatabase) -> None:
    dsn = new_database(as_owner=True)
    assert cli(dsn, "install").returncode == 0
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as admin:
        admin.execute("CREATE TABLE keyed (a int NOT NULL, b int NOT NULL, note text)")
        admin.execute("CREATE UNIQUE INDEX keyed_ab ON keyed (a, b)")
        admin.execute("ALTER TABLE keyed REPLICA IDENTITY USING INDEX keyed_ab")
        admin.execute("SELECT bemi.create_slot()")
        admin.execute("SELECT bemi.track('keyed')")
        with psycopg.connect(dsn) as conn:
            bemi_pg.seed_example(conn)
            with bemi_pg.with_context(conn, {"job": "import"}):
                conn.execute("INSERT INTO keyed VALUES (1, 2, 'x')")
        ingest(admin)
        trail = admin.execute('SELECT id, "table", operation, after, context FROM bemi.changes ORDER BY id').fetchall()
    assert len(trail) == 6

    result = cli(dsn, "uninstall", "--yes")
    assert result.returncode == 0, result.stderr
    assert "the trail is kept in bemi_trail.changes" in result.stdout
    assert leftovers(dsn) == NOTHING_LEFT
    assert rows(dsn, "SELECT relname, relreplident FROM pg_class WHERE relname IN ('todo', 'keyed') ORDER BY 1") == [
        {"relname": "keyed", "relreplident": "i"}, {"relname": "todo", "relreplident": "d"}]
    assert rows(dsn, "SELECT indexrelid::regclass::text AS ix FROM pg_index WHERE indisreplident") == [{"ix": "keyed_ab"}]
    assert rows(dsn, 'SELECT id, "table", operation, after, context FROM bemi_trail.changes ORDER BY id') == trail
    # Installing again starts afresh beside the kept trail.
    assert cli(dsn, "install").returncode == 0
    assert rows(dsn, "SELECT count(*) AS n FROM bemi.changes") == [{"n": 0}]


def test_uninstall_refuses_while_a_reader_holds_the_slot(new_database: NewDatabase) -> None:
    dsn = new_database(as_owner=True)
    assert cli(dsn, "install").returncode == 0
    slot = rows(dsn, "SELECT bemi.create_slot(), bemi.slot_name() AS name")[0]["name"]
    # The server's own pg_recvlogical, else the machine's: the servers of make test-versions come
    # without one, and it speaks every version's replication protocol.
    recvlogical = os.path.join(subprocess.check_output(["pg_config", "--bindir"], text=True).strip(), "pg_recvlogical")
    if not os.path.exists(recvlogical):
        recvlogical = shutil.which("pg_recvlogical") or recvlogical
    reader = subprocess.Popen([recvlogical, "-d", dsn, "--slot", slot, "--start",
                               "-o", "proto_version=1", "-o", "publication_names=bemi", "-f", "/dev/null"])
    try:
        while not rows(dsn, "SELECT active FROM pg_replication_slots WHERE slot_name = %s", slot)[0]["active"]:
            assert reader.poll() is None, "pg_recvlogical stopped"
            time.sleep(0.1)
        result = cli(dsn, "uninstall", "--yes")
    finally:
        reader.terminate()
        reader.wait()
    assert result.returncode == 1
    assert result.stderr.startswith("error: bemi: process ") and "is reading the slot of this database" in result.stderr
    assert leftovers(dsn) == {**NOTHING_LEFT, "slots": 1, "publications": 1, "schemas": 1}


def test_uninstall_of_the_extension_with_drop_trail_leaves_nothing(new_database: NewDatabase) -> None:
    dsn = new_database()
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("CREATE EXTENSION bemi")
        admin.execute("SELECT bemi.create_slot()")
        admin.execute("CREATE TABLE t (id int PRIMARY KEY)")
        admin.execute("SELECT bemi.track_all('public', auto => true)")
        admin.execute("INSERT INTO t VALUES (1)")
    refused = cli(dsn, "install")
    assert refused.returncode == 1 and "bemi is installed as an extension (version 1.2)" in refused.stderr
    result = cli(dsn, "uninstall", "--drop-trail", "--yes")
    assert result.returncode == 0, result.stderr
    assert leftovers(dsn) == NOTHING_LEFT
    assert rows(dsn, "SELECT count(*) AS n FROM pg_namespace WHERE nspname = 'bemi_trail'") == [{"n": 0}]
    assert rows(dsn, "SELECT relreplident FROM pg_class WHERE relname = 't'") == [{"relreplident": "d"}]


def test_uninstall_of_the_extension_keeps_the_trail_out_of_drop_extension(new_database: NewDatabase) -> None:
    """The SQL route: bemi.uninstall() then DROP EXTENSION (no CASCADE) and DROP SCHEMA."""
    dsn = new_database()
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as admin:
        admin.execute("CREATE EXTENSION bemi")
        admin.execute("SELECT bemi.create_slot()")
        with psycopg.connect(dsn) as conn:
            bemi_pg.seed_example(conn)
        ingest(admin)
        assert admin.execute("SELECT bemi.uninstall() AS kept").fetchone() == {
            "kept": "the trail is kept in bemi_trail.changes"}
        admin.execute("DROP EXTENSION bemi")
        admin.execute("DROP SCHEMA bemi")
        assert admin.execute("SELECT count(*) AS n FROM bemi_trail.changes").fetchone() == {"n": 5}
    assert leftovers(dsn) == NOTHING_LEFT


def test_install_finds_a_leftover_slot_and_says_what_to_do(new_database: NewDatabase, postgresql_proc: Any) -> None:
    dsn = new_database(as_owner=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        oid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]  # type: ignore[index]
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [f"bemi_{oid}"])
    result = cli(dsn, "install")
    assert result.returncode == 1
    assert f"a replication slot bemi_{oid} is left over from an earlier bemi install" in result.stderr
    assert f"SELECT pg_drop_replication_slot('bemi_{oid}')" in result.stderr
    assert check_lines(cli(dsn, "install", "--check").stdout)["leftover slot"][0] == "MISSING"
    rows(dsn, "SELECT pg_drop_replication_slot(%s)", f"bemi_{oid}")
    # An empty schema bemi (DROP EXTENSION leaves one) is used; one with objects is refused.
    rows(dsn, "CREATE SCHEMA bemi")
    rows(dsn, "CREATE TABLE bemi.mine (a int)")
    taken = cli(dsn, "install")
    assert taken.returncode == 1 and "schema bemi exists and holds objects" in taken.stderr
    rows(dsn, "DROP TABLE bemi.mine")
    assert cli(dsn, "install").returncode == 0


def test_create_extension_after_a_drop_without_uninstall_warns_of_the_leftover_slot(
        new_database: NewDatabase) -> None:
    dsn = new_database()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION bemi")
        conn.execute("SELECT bemi.create_slot()")
        conn.execute("DROP EXTENSION bemi CASCADE")
        warnings: list[str] = []
        conn.add_notice_handler(lambda d: warnings.append(f"{d.severity}: {d.message_primary} ({d.message_hint})"))
        conn.execute("CREATE EXTENSION bemi")
    assert any(w.startswith("WARNING: bemi: the slot") and "pg_drop_replication_slot" in w for w in warnings), warnings


def test_new_tables_and_partitions_are_tracked_in_their_creating_transaction(new_database: NewDatabase,
                                                                             postgresql_proc: Any) -> None:
    """A superuser installs bemi; the tables are created by the database's owner, who may not
    track (the event trigger tracks for it)."""
    dsn = new_database(as_owner=True)
    with psycopg.connect(as_superuser(dsn, postgresql_proc), autocommit=True, row_factory=dict_row) as admin:
        admin.execute("CREATE EXTENSION bemi")
        admin.execute("SELECT bemi.create_slot()")
        admin.execute("SELECT bemi.track_all('public', auto => true)")
        with psycopg.connect(dsn, autocommit=True) as owner:
            owner.execute("CREATE SCHEMA other")
            owner.execute("CREATE TABLE other.events (id int, at date NOT NULL) PARTITION BY RANGE (at)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                owner.execute("SELECT bemi.track('other.events')")
        admin.execute("SELECT bemi.track('other.events')")
        with psycopg.connect(dsn) as conn:
            with bemi_pg.with_context(conn, {"step": "new table"}):
                conn.execute("CREATE TABLE fresh (id int PRIMARY KEY, note text)")
                conn.execute("INSERT INTO fresh VALUES (1, 'born tracked')")
            with bemi_pg.with_context(conn, {"step": "new partition"}):
                conn.execute("CREATE TABLE other.events_2026 PARTITION OF other.events "
                             "FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
                conn.execute("INSERT INTO other.events_2026 VALUES (1, '2026-11-27')")
            with bemi_pg.with_context(conn, {"step": "attached partition"}):
                conn.execute("CREATE TABLE other.events_2027 (id int, at date NOT NULL)")
                conn.execute("ALTER TABLE other.events ATTACH PARTITION other.events_2027 "
                             "FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')")
                conn.execute("INSERT INTO other.events_2027 VALUES (2, '2027-01-02')")
            with conn.transaction():
                conn.execute("CREATE TABLE other.elsewhere (id int)")  # not an auto-tracked schema
        admin.execute("SELECT bemi.track_all('public', auto => false)")
        admin.execute("CREATE TABLE later (id int)")
        ingest(admin)
        stored = admin.execute('SELECT schema, "table", after, context ->> \'step\' AS step FROM bemi.changes '
                               "ORDER BY id").fetchall()
        identities = admin.execute(
            "SELECT c.oid::regclass::text AS relation, c.relreplident AS identity, "
            "EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = 'bemi_context') AS trigger "
            "FROM pg_class c WHERE c.relname IN ('fresh', 'events_2026', 'events_2027', 'elsewhere', 'later') "
            "ORDER BY 1").fetchall()
    assert stored == [
        {"schema": "public", "table": "fresh", "after": {"id": 1, "note": "born tracked"}, "step": "new table"},
        {"schema": "other", "table": "events", "after": {"id": 1, "at": "2026-11-27"}, "step": "new partition"},
        {"schema": "other", "table": "events", "after": {"id": 2, "at": "2027-01-02"}, "step": "attached partition"},
    ]
    assert identities == [
        {"relation": "fresh", "identity": "f", "trigger": True},
        {"relation": "later", "identity": "d", "trigger": False},
        {"relation": "other.elsewhere", "identity": "d", "trigger": False},
        {"relation": "other.events_2026", "identity": "f", "trigger": True},
        {"relation": "other.events_2027", "identity": "f", "trigger": True},
    ]


def test_auto_tracking_without_the_event_trigger_says_why(new_database: NewDatabase) -> None:
    dsn = new_database(as_owner=True)
    assert cli(dsn, "install").returncode == 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as raised:
            conn.execute("SELECT bemi.track_all('public', auto => true)")
        assert str(raised.value).startswith('bemi: tables created later in schema "public" cannot be tracked '
                                            "automatically: the event trigger bemi_track_new_tables is missing")
        assert conn.execute("SELECT count(*) FROM bemi.track_all('public')").fetchone() == (0,)


def test_two_databases_of_one_cluster_ingest_at_once(new_database: NewDatabase) -> None:
    dsns = [new_database(), new_database()]
    for dsn in dsns:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("CREATE EXTENSION bemi")
            admin.execute("SELECT bemi.create_slot()")
        with psycopg.connect(dsn) as conn:
            bemi_pg.seed_example(conn)
            with bemi_pg.with_context(conn, {"database": conn.info.dbname}):
                conn.execute("INSERT INTO todo (task) VALUES (current_database())")
    counts: dict[str, int] = {}

    def run(dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as admin:
            counts[dsn] = ingest(admin, batch=2)

    threads = [threading.Thread(target=run, args=(dsn,)) for dsn in dsns]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert list(counts.values()) == [6, 6]
    for dsn in dsns:
        name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
        last = rows(dsn, "SELECT database, after ->> 'task' AS task, context ->> 'database' AS context "
                         "FROM bemi.changes ORDER BY id DESC LIMIT 1")
        assert last == [{"database": name, "task": name, "context": name}]
    slots = rows(dsns[0], "SELECT slot_name, database FROM pg_replication_slots WHERE slot_name LIKE 'bemi%' "
                          "ORDER BY database")
    assert len(slots) == 2 and slots[0]["slot_name"] != slots[1]["slot_name"]
