"""Who is trusted (docs/security.md), tried as hostile roles would: a table owner's code never
runs with bemi's rights, no role can stop ingest, a context belongs to one transaction and one
statement, and ingest stores the same values whatever the session or database that runs it.
What ingest does is checked on both paths: bemi.ingest() and the streaming worker."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from tests.helpers.context import setters
from tests.helpers.trail import HOSTILE_SETTINGS, changes, ingest


Store = Callable[..., None]


@pytest.fixture(params=["sql", "worker"])
def store(request: pytest.FixtureRequest, dsn: str, admin: psycopg.Connection[Any]) -> Store:
    """Ingests what is pending, through bemi.ingest() (in the session given, else as the
    administrator) or through the streaming worker."""
    def run(session: psycopg.Connection[Any] | None = None) -> None:
        if request.param == "sql":
            ingest(session or admin)
        else:
            done = subprocess.run([sys.executable, "-m", "bemi_pg.cli", "--dsn", dsn, "worker", "--drain"],
                                  capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
    return run


@pytest.fixture
def role(admin: psycopg.Connection[Any]) -> Iterator[str]:
    """A login role that owns a schema of its own: a table owner, trusted with nothing else."""
    name = f"owner_{uuid.uuid4().hex[:8]}"
    admin.execute(f"CREATE ROLE {name} LOGIN")
    admin.execute(f"CREATE SCHEMA {name} AUTHORIZATION {name}")
    yield name
    admin.execute(f"DROP SCHEMA {name} CASCADE")
    admin.execute(f"DROP OWNED BY {name}")
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s AND datname = current_database()",
        [name])
    admin.execute(f"DROP ROLE {name}")


def as_role(dsn: str, role: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, user=role, autocommit=True, row_factory=dict_row)


def attributes(admin: psycopg.Connection[Any], role: str) -> dict[str, Any]:
    row = admin.execute("SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication FROM pg_roles WHERE rolname = %s",
                        [role]).fetchone()
    assert row is not None
    return row


# Code a table owner attaches to the types of its columns. Each function, when it runs as a
# superuser, makes its owner one and says so in a table anyone may write.
ATTACK = """
CREATE TABLE {s}.calls (fn text, run_as text);
GRANT INSERT ON {s}.calls TO PUBLIC;
CREATE FUNCTION {s}.escalate(fn text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO {s}.calls VALUES (fn, current_user);
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    EXECUTE 'ALTER ROLE {s} SUPERUSER CREATEROLE CREATEDB REPLICATION';
    UPDATE bemi.changes SET context = '{{"forged": true}}';
  END IF;
END $$;
CREATE FUNCTION {s}.checked(int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM {s}.escalate('domain check'); RETURN true; END $$;
CREATE DOMAIN {s}.d AS int CHECK ({s}.checked(VALUE));
CREATE DOMAIN {s}.dd AS {s}.d;
CREATE TYPE {s}.e AS ENUM ('a', 'b');
CREATE FUNCTION {s}.e_json({s}.e) RETURNS json LANGUAGE plpgsql AS $$
BEGIN PERFORM {s}.escalate('cast to json'); RETURN to_json($1::text); END $$;
CREATE CAST ({s}.e AS json) WITH FUNCTION {s}.e_json({s}.e);
CREATE FUNCTION {s}.e_jsonb({s}.e) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN PERFORM {s}.escalate('cast to jsonb'); RETURN to_jsonb($1::text); END $$;
CREATE CAST ({s}.e AS jsonb) WITH FUNCTION {s}.e_jsonb({s}.e);
CREATE TYPE {s}.pair AS (x {s}.d, y int);
CREATE TYPE {s}.plain AS (x int, y text);
CREATE FUNCTION {s}.plain_json({s}.plain) RETURNS json LANGUAGE plpgsql AS $$
BEGIN PERFORM {s}.escalate('composite cast'); RETURN to_json($1::text); END $$;
CREATE CAST ({s}.plain AS json) WITH FUNCTION {s}.plain_json({s}.plain);
CREATE TYPE {s}.fr AS RANGE (subtype = float8);
CREATE TABLE {s}.t (id int PRIMARY KEY, v {s}.d, vv {s}.dd, e {s}.e, p {s}.pair, q {s}.plain, a {s}.d[],
  ps {s}.pair[], es {s}.e[], r {s}.fr);
"""


def test_a_table_owners_code_never_runs_with_bemis_rights(dsn: str, admin: psycopg.Connection[Any], role: str,
                                                           store: Store) -> None:
    with as_role(dsn, role) as owner:
        owner.execute(ATTACK.format(s=role))
    admin.execute("SELECT bemi.track(%s)", [f"{role}.t"])
    with as_role(dsn, role) as owner:
        owner.execute(f"""INSERT INTO {role}.t VALUES (1, 5, 6, 'a', '(1,2)', '(3,x)', '{{1,2}}', '{{"(4,5)"}}',
                          '{{a,b}}', '[1.5,2.5)')""")
        owner.execute(f"UPDATE {role}.t SET v = 7")
    store()
    assert attributes(admin, role) == {"rolsuper": False, "rolcreaterole": False, "rolcreatedb": False,
                                       "rolreplication": False}
    # The domain checks ran when the owner wrote the rows, as the owner; never since.
    calls = admin.execute(f"SELECT fn, run_as FROM {role}.calls").fetchall()
    assert {c["run_as"] for c in calls} == {role}
    assert {c["fn"] for c in calls} == {"domain check"}
    rows = changes(admin, "operation", "after", "context", "problem")
    expected = {"id": 1, "v": 5, "vv": 6, "e": "a", "p": "(1,2)", "q": "(3,x)", "a": [1, 2], "ps": ["(4,5)"],
                "es": ["a", "b"], "r": "[1.5,2.5)"}
    assert rows == [
        {"operation": "CREATE", "after": expected, "context": {}, "problem": None},
        {"operation": "UPDATE", "after": {**expected, "v": 7}, "context": {}, "problem": None},
    ]
    # The contract holds: the JSON reads back into the table's own row type.
    same = admin.execute(f"SELECT jsonb_populate_record(NULL::{role}.t, after) = t AS same "
                         f"FROM bemi.changes c, {role}.t t WHERE c.operation = 'UPDATE'").fetchone()
    assert same == {"same": True}


def test_a_hostile_bemi_message_is_stored_marked_and_ingest_goes_on(dsn: str, admin: psycopg.Connection[Any],
                                                                    role: str, store: Store) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t')")
    admin.execute(f"GRANT SELECT, INSERT ON t TO {role}")
    with as_role(dsn, role) as hostile:
        for content in ("'\\xc3'::bytea", "'\\x7b2261223a22ff227d'::bytea", "'\\x00'::bytea", "'not json'"):
            with hostile.transaction():
                hostile.execute(f"SELECT pg_logical_emit_message(true, 'bemi', {content})")
                hostile.execute("INSERT INTO t VALUES ((SELECT coalesce(max(id), 0) + 1 FROM t))")
            hostile.execute(f"SELECT pg_logical_emit_message(false, 'bemi', {content})")
    with as_role(dsn, role) as hostile, hostile.transaction():
        hostile.execute("SELECT bemi.set_context('{\"after\": true}')")
        hostile.execute("INSERT INTO t VALUES (10)")
    store()
    assert [r["context"] for r in changes(admin, "context")] == [
        {"invalid_context": "\\xc3"}, {"invalid_context": "\\x7b2261223a22ff227d"}, {"invalid_context": "\\x00"},
        {"invalid_context": "not json"}, {"after": True}]
    assert admin.execute("SELECT count(*) AS n FROM bemi.wal").fetchone() == {"n": 0}


def contexts(admin: psycopg.Connection[Any]) -> dict[str, Any]:
    """The stored context of each row of t, by its key."""
    ingest(admin)
    return {r["primary_key"]: r["context"] for r in changes(admin, "primary_key", "context")}


@setters
def test_a_context_set_at_session_level_is_never_taken(dsn: str, admin: psycopg.Connection[Any], setter: str) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t')")
    with psycopg.connect(dsn, autocommit=True) as session:
        # What a pooled server connection may carry from another client's session.
        session.execute("SET bemi.context = '{\"user\": \"previous client\"}'")
        # Even with the mark of an earlier transaction of this session.
        with session.transaction():
            mark = session.execute("SELECT bemi.transaction_mark()").fetchone()
        assert mark is not None
        session.execute("SELECT set_config('bemi.context', %s, false)", [mark[0] + '{"user": "previous client"}'])
        session.execute("SELECT set_config('bemi.emitted', %s, false)", [mark[0] + '{"user": "mine"}'])
        session.execute("INSERT INTO t VALUES (1)")
        assert session.execute("SELECT bemi.context()").fetchone() == (None,)
        with session.transaction():
            session.execute(setter, ['{"user": "mine"}'])
            session.execute("INSERT INTO t VALUES (2)")
            assert session.execute("SELECT bemi.context()").fetchone() == ({"user": "mine"},)
        session.execute("INSERT INTO t VALUES (3)")
        # Outside a transaction block, the call is a transaction of its own: its context ends with it.
        session.execute(setter, ['{"user": "gone"}'])
        session.execute("INSERT INTO t VALUES (4)")
    assert contexts(admin) == {"1": {}, "2": {"user": "mine"}, "3": {}, "4": {}}


def test_a_comment_context_belongs_to_its_own_statement(dsn: str, admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t')")
    with psycopg.connect(dsn, autocommit=True) as conn:
        # One query string, two statements: neither can be told which comment is its own.
        conn.execute('INSERT INTO t VALUES (1); INSERT INTO t VALUES (2) /*Bemi {"x": 1} Bemi*/')
        conn.execute('INSERT INTO t VALUES (3) /*Bemi {"x": 3} Bemi*/; INSERT INTO t VALUES (4)')
        # Behind --, a comment is no comment.
        conn.execute('INSERT INTO t VALUES (5) -- /*Bemi {"x": 5} Bemi*/')
        conn.execute('INSERT INTO t VALUES (6) /*Bemi {"x": 6} Bemi*/')
        # A prepared statement keeps its comment, and an ORM's server-side prepared one too.
        conn.execute('PREPARE ins (int) AS INSERT INTO t VALUES ($1) /*Bemi {"x": "prepared"} Bemi*/')
        conn.execute("EXECUTE ins(7)")
        conn.execute('PREPARE "Odd Name" AS INSERT INTO t VALUES (8) /*Bemi {"x": "quoted"} Bemi*/')
        conn.execute('execute "Odd Name"')
        conn.execute('INSERT INTO t VALUES (%s) /*Bemi {"x": "server-side"} Bemi*/', [9], prepare=True)
    assert contexts(admin) == {"1": {}, "2": {}, "3": {}, "4": {}, "5": {}, "6": {"x": 6}, "7": {"x": "prepared"},
                               "8": {"x": "quoted"}, "9": {"x": "server-side"}}


@pytest.mark.parametrize("body", ['{"x": "\\u0000"}', '{"x": 1e1000000}', '{"x": ', '[1]', '{"a": 1}}'])
def test_a_malformed_comment_never_fails_the_statement(admin: psycopg.Connection[Any], body: str) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t')")
    admin.execute(f"INSERT INTO t VALUES (1) /*Bemi {body} Bemi*/")
    assert admin.execute("SELECT count(*) AS n FROM t").fetchone() == {"n": 1}
    assert contexts(admin) == {"1": {}}


@setters
def test_disabled_triggers_and_replica_mode_never_leave_a_stale_context(dsn: str, admin: psycopg.Connection[Any],
                                                                        setter: str) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t')")
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            conn.execute(setter, ['{"who": "A"}'])
            conn.execute("INSERT INTO t VALUES (1)")
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute(setter, ['{"who": "B"}'])
            conn.execute("INSERT INTO t VALUES (2)")
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute('INSERT INTO t VALUES (3) /*Bemi {"who": "C"} Bemi*/')
        with conn.transaction():
            conn.execute(setter, ['{"who": "D"}'])
            conn.execute("INSERT INTO t VALUES (4)")
            conn.execute("ALTER TABLE t DISABLE TRIGGER bemi_context")
            conn.execute(setter, ['{"who": "E"}'])
            conn.execute("INSERT INTO t VALUES (5)")
            conn.execute(setter, [None])
            conn.execute("INSERT INTO t VALUES (6)")
    assert contexts(admin) == {"1": {"who": "A"}, "2": {"who": "B"}, "3": {"who": "C"}, "4": {"who": "D"},
                               "5": {"who": "E"}, "6": {}}


def test_whether_the_trail_holds_a_tables_changes_is_told_only_to_its_readers(
        dsn: str, admin: psycopg.Connection[Any], role: str) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t')")
    admin.execute("INSERT INTO t VALUES (1)")
    ingest(admin)
    admin.execute("ALTER TABLE t RENAME TO renamed")
    history = admin.execute("SELECT bemi.history_of('renamed', now()) AS h").fetchone()
    assert history is not None
    check = "SELECT bemi.check_trail(%s, now())"
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="renamed since tracking began"):
        admin.execute(check, [Jsonb(history["h"])])
    with as_role(dsn, role) as stranger, pytest.raises(psycopg.errors.InsufficientPrivilege):
        stranger.execute(check, [Jsonb(history["h"])])
    admin.execute(f"GRANT SELECT ON bemi.changes TO {role}")
    with as_role(dsn, role) as reader, pytest.raises(psycopg.errors.FeatureNotSupported):
        reader.execute(check, [Jsonb(history["h"])])


# Settings a session or a database may have, each of which once changed what ingest stored.
SETTINGS = HOSTILE_SETTINGS


def test_ingest_stores_the_same_values_whatever_the_settings(dsn: str, admin: psycopg.Connection[Any],
                                                            store: Store) -> None:
    admin.execute("""CREATE TABLE t (id int PRIMARY KEY, a text[], x xml, at timestamptz, d date, i interval,
                     f float8, b bytea, r regclass, ty regtype, m money)""")
    admin.execute("SELECT bemi.track('t')")
    admin.execute("""INSERT INTO t VALUES (1, '{NULL,"NULL",x}', 'some <b>text</b>', '2024-02-29 13:14:15.123456+00',
                     '2024-02-29', '-1 day -02:03:04', 0.1, '\\x00ff', 't', 'int4', 12.5)""")
    expected = {"id": 1, "a": [None, "NULL", "x"], "x": "some <b>text</b>", "at": "2024-02-29T13:14:15.123456+00:00",
                "d": "2024-02-29", "i": "-1 days -02:03:04", "f": 0.1, "b": "\\x00ff", "r": "public.t", "ty": "integer",
                "m": "$12.50"}
    database = admin.execute("SELECT current_database() AS d").fetchone()
    assert database is not None
    for name, value in SETTINGS.items():
        admin.execute(f"ALTER DATABASE \"{database['d']}\" SET {name} = '{value}'")
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as session:
        for name, value in SETTINGS.items():
            session.execute(f"SET {name} = '{value}'")
        store(session)
    for name in SETTINGS:
        admin.execute(f'ALTER DATABASE "{database["d"]}" RESET {name}')
    assert [r["after"] for r in changes(admin, "after")] == [expected]



# ---------------------------------------------------------------------------------------
# Encodings: whoever ingests, from whatever client encoding, into whatever database encoding.

def stored_text(admin: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """context, after and problem of each stored change, read as the bytes the database holds
    (an SQL_ASCII database's bytes need not be UTF-8: those that are not come back as
    surrogates, str.encode("utf-8", "surrogateescape") gives them back)."""
    rows = admin.execute("""SELECT convert_to(context::text, e) AS context, convert_to(after::text, e) AS after, problem
                            FROM bemi.changes, (SELECT CASE getdatabaseencoding() WHEN 'SQL_ASCII' THEN 'SQL_ASCII'
                                                ELSE 'UTF8' END AS e) AS e ORDER BY id""").fetchall()
    return [{"context": json.loads(r["context"].decode("utf-8", "surrogateescape")),
             "after": json.loads(r["after"].decode("utf-8", "surrogateescape")), "problem": r["problem"]} for r in rows]


@pytest.mark.parametrize("path", ["sql", "sql from a LATIN1 session", "worker"])
@pytest.mark.parametrize("encoding", ["LATIN1", "SQL_ASCII"])
def test_ingest_stores_the_same_values_in_every_database_encoding(new_database: Any, encoding: str,
                                                                  path: str) -> None:
    dsn = new_database(bemi=True, encoding=encoding)
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row, client_encoding="UTF8") as admin:
        admin.execute("CREATE TABLE t (id int PRIMARY KEY, v text, a text[]); SELECT bemi.track('t')")
        with admin.transaction():
            admin.execute("""SELECT bemi.set_context('{"user": "José"}')""")
            admin.execute("INSERT INTO t VALUES (1, 'café', ARRAY['café', 'x', NULL])")
        expected = [{"context": {"user": "José"}, "after": {"id": 1, "v": "café", "a": ["café", "x", None]},
                     "problem": None}]
        if encoding == "SQL_ASCII":  # any bytes are text here: a LATIN1 é, from a client that sends it so
            with admin.transaction():
                admin.execute("""SELECT bemi.set_context(E'{"user": "Jos\\xe9"}')""")
                admin.execute("INSERT INTO t VALUES (2, E'caf\\xe9', ARRAY[E'caf\\xe9'])")
            expected.append({"context": {"user": "Jos\udce9"}, "after": {"id": 2, "v": "caf\udce9", "a": ["caf\udce9"]},
                             "problem": None})
        if path == "worker":
            done = subprocess.run([sys.executable, "-m", "bemi_pg.cli", "--dsn", dsn, "worker", "--drain"],
                                  capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
        else:
            with psycopg.connect(dsn, autocommit=True, row_factory=dict_row,
                                 client_encoding="LATIN1" if "LATIN1" in path else "UTF8") as session:
                ingest(session)
        assert stored_text(admin) == expected
        assert admin.execute("SELECT count(*) AS n FROM bemi.wal").fetchone() == {"n": 0}


def test_ingest_from_a_latin1_session_stores_what_the_application_wrote(dsn: str, admin: psycopg.Connection[Any]) -> None:
    """A session whose client encoding cannot hold what was written (€ is not LATIN1) still
    ingests it exactly: decoding never goes through the caller's client encoding."""
    admin.execute("CREATE TABLE t (id int PRIMARY KEY, v text); SELECT bemi.track('t')")
    with admin.transaction():
        admin.execute("SELECT bemi.set_context(%s)", [Jsonb({"user": "José Müller"})])
        admin.execute("INSERT INTO t VALUES (1, 'café à 3 €')")
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row, client_encoding="LATIN1") as session:
        ingest(session)
    assert changes(admin, "context", "after", "problem") == [
        {"context": {"user": "José Müller"}, "after": {"id": 1, "v": "café à 3 €"}, "problem": None}]
