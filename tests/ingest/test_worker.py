"""bemi-pg worker as a real process: streaming the slot over the replication protocol (or
through bemi.ingest() where the role may not stream), what --drain prints, the errors it
fails fast on and the ones it rides out, and a clean stop on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import bemi_pg
from bemi_pg.ingest import writer
from bemi_pg.ingest.stream import ReplicationStream, parse_lsn
from bemi_pg.ingest.worker import Options
from bemi_pg.ingest.worker import _connect as worker_connect
from bemi_pg.ingest.worker import run as run_worker
from tests.helpers.example import SEED
from tests.helpers.trail import changes, set_replica_identity

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "stress"))
from scenarios import wait_for  # noqa: E402


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bemi_pg.cli", "--dsn", dsn, *args], capture_output=True, text=True)


def start(dsn: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bemi_pg.cli", "--dsn", dsn, "worker", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def drain(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = cli(dsn, "worker", "--drain", *args)
    assert done.returncode == 0, done.stderr
    return done


def slot(admin: psycopg.Connection[Any]) -> dict[str, Any]:
    row = admin.execute(
        "SELECT s.active, s.confirmed_flush_lsn, p.lsn, p.part_of, p.part_stored, p.caught_up_at, p.committed_at "
        "FROM pg_replication_slots s JOIN bemi.progress p USING (slot_name) WHERE s.slot_name = bemi.slot_name()"
    ).fetchone()
    assert row is not None
    return row  # type: ignore[no-any-return]


@pytest.fixture
def role(admin: psycopg.Connection[Any], postgresql_proc: Any) -> Iterator[str]:
    """A login role of its own (roles are cluster-wide), dropped afterwards."""
    name = f"w_{uuid.uuid4().hex[:8]}"
    admin.execute(f"CREATE ROLE {name} LOGIN")
    yield name
    admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'")
    admin.execute(f"DROP OWNED BY {name}")
    admin.execute(f"DROP ROLE {name}")


def test_seed_example_through_the_streaming_worker(dsn: str, conn: psycopg.Connection[Any],
                                                   admin: psycopg.Connection[Any]) -> None:
    bemi_pg.seed_example(conn)
    done = drain(dsn)
    assert re.search(r"worker: streaming slot bemi_\d+ of \S+ from [0-9A-F]+/[0-9A-F]+", done.stdout, re.M)
    assert re.search(r"worker: drained 5 changes in [0-9.]+ s \([0-9,]+/s\)$", done.stdout, re.M), done.stdout
    rows = changes(admin, "primary_key", "table", "operation", "before", "after", "context")
    assert [tuple(r.values()) for r in rows] == SEED
    state = slot(admin)
    assert not state["active"]
    assert state["confirmed_flush_lsn"] == state["lsn"]  # confirmed exactly what is stored
    assert "drained 0 changes" in drain(dsn).stdout  # nothing twice
    assert len(changes(admin)) == 5


def test_values_copy_truncate_partitions_and_unchanged_toast(dsn: str, admin: psycopg.Connection[Any]) -> None:
    """Each kind of message pgoutput sends, stored as the rows were committed."""
    admin.execute("""
      CREATE TABLE a (id int PRIMARY KEY, big text, n numeric, arr char(3)[], tags text[], j jsonb, b bytea,
                      at timestamptz, f float8);
      CREATE TABLE b (id int PRIMARY KEY, v text);
      CREATE TABLE p (id int, k int, v text, PRIMARY KEY (id, k)) PARTITION BY RANGE (k);
      CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10);
      CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (10) TO (20);
      SELECT bemi.track('a'), bemi.track('b'), bemi.track('p');
    """)
    big = "".join(uuid.uuid4().hex for _ in range(400))  # 12.8 kB of noise: stored out of line (TOAST)
    expected: list[tuple[Any, ...]] = []
    with admin.transaction():
        bemi_pg.set_context(admin, {"step": "insert"})
        row = admin.execute(
            "INSERT INTO a VALUES (1, %s, 1.50, '{\"ab \",cde}', %s, '{\"k\": [1, \"x\\\\y\"]}', '\\x00ff', "
            "'2024-02-29 12:00:00.123456+01', 0.1) RETURNING to_jsonb(a.*) AS r",
            [big, ['tab\there', 'quote"', 'back\\slash', 'new\nline', None, '{}', 'NULL', '']]).fetchone()
        expected.append(("a", "CREATE", {}, row["r"], {"step": "insert"}))  # type: ignore[index]
        bemi_pg.set_context(admin, {"step": "update"})
        after = admin.execute("UPDATE a SET n = 2 RETURNING to_jsonb(a.*) AS r").fetchone()["r"]  # type: ignore[index]
        expected.append(("a", "UPDATE", row["r"], after, {"step": "update"}))  # type: ignore[index]
    assert after["big"] == big
    with admin.cursor().copy("COPY b FROM STDIN") as copy:
        for key in (1, 2, 3):
            copy.write_row((key, f"copied {key}"))
    expected += [("b", "CREATE", {}, {"id": key, "v": f"copied {key}"}, {}) for key in (1, 2, 3)]
    admin.execute("INSERT INTO p VALUES (1, 5, 'low'), (2, 15, 'high')")
    expected += [("p", "CREATE", {}, {"id": 1, "k": 5, "v": "low"}, {}), ("p", "CREATE", {}, {"id": 2, "k": 15, "v": "high"}, {})]
    admin.execute("TRUNCATE a, b")
    expected += [("a", "TRUNCATE", {}, {}, {}), ("b", "TRUNCATE", {}, {}, {})]

    drain(dsn)
    rows = changes(admin, "table", "operation", "before", "after", "context", "position", "ordinal", "problem")
    assert [(r["table"], r["operation"], r["before"], r["after"], r["context"]) for r in rows] == expected
    assert all(r["problem"] is None for r in rows)
    copied, truncated = rows[2:5], rows[7:9]
    for group in (copied, truncated):  # one WAL record each: one position, ordinals 1, 2, ...
        assert {r["position"] for r in group} == {group[0]["position"]}
        assert [r["ordinal"] for r in group] == list(range(1, len(group) + 1))


def test_old_images_that_hold_only_the_key(dsn: str, admin: psycopg.Connection[Any]) -> None:
    """Replica identity changed after track: an UPDATE sends no old tuple (the key stands as
    before, partial) and an unchanged TOASTed value it cannot fill is left out (partial)."""
    admin.execute("CREATE TABLE k (id int PRIMARY KEY, n int, big text); SELECT bemi.track('k')")
    set_replica_identity(admin, "k", "DEFAULT")
    big = "".join(uuid.uuid4().hex for _ in range(400))
    admin.execute("INSERT INTO k VALUES (1, 1, %s)", [big])
    admin.execute("UPDATE k SET n = 2")
    admin.execute("DELETE FROM k")
    drain(dsn)
    rows = changes(admin, "operation", "before", "after", "partial", "problem")
    assert rows == [
        {"operation": "CREATE", "before": {}, "after": {"id": 1, "n": 1, "big": big}, "partial": False, "problem": None},
        {"operation": "UPDATE", "before": {"id": 1}, "after": {"id": 1, "n": 2}, "partial": True, "problem": None},
        {"operation": "DELETE", "before": {"id": 1}, "after": {}, "partial": True, "problem": None},
    ]


def test_huge_transaction_is_stored_in_parts(dsn: str, admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY, v text); SELECT bemi.track('t')")
    with admin.transaction():
        bemi_pg.set_context(admin, {"job": "import"})
        admin.execute("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 5500) g")
    admin.execute("INSERT INTO t VALUES (0, 'after')")
    done = drain(dsn, "--batch", "1000")
    assert "drained 5501 changes" in done.stdout
    rows = admin.execute("SELECT primary_key, context FROM bemi.changes ORDER BY id").fetchall()
    assert [r["primary_key"] for r in rows] == [str(k) for k in range(1, 5501)] + ["0"]
    assert all(r["context"] == {"job": "import"} for r in rows[:-1])
    state = slot(admin)
    assert (state["part_of"], state["part_stored"]) == (None, 0)


def test_idle_worker_keeps_the_trail_current(dsn: str, admin: psycopg.Connection[Any]) -> None:
    """While nothing happens, the worker records that the trail is complete up to now, and
    the backlog it reports is what is really pending."""
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t'); INSERT INTO t VALUES (1)")
    worker = start(dsn, "--interval", "0.1")
    try:
        assert wait_for(lambda: slot(admin)["caught_up_at"] is not None)
        first = slot(admin)["caught_up_at"]
        assert wait_for(lambda: slot(admin)["caught_up_at"] > first)  # and keeps doing so
        state = slot(admin)
        pending = admin.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s) AS n", [state["lsn"]]).fetchone()
        assert pending["n"] < 1024 * 1024  # type: ignore[index]
        stored_at = admin.execute("SELECT committed_at FROM bemi.changes").fetchone()["committed_at"]  # type: ignore[index]
        assert admin.execute("SELECT bemi.ingested_until() AS t").fetchone()["t"] > stored_at  # type: ignore[index]
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate()
    assert worker.returncode == 0, err
    assert re.search(r"caught up: total 1, pending WAL \d+", out, re.M), out


def test_a_drain_records_the_trail_complete_up_to_its_start(dsn: str, admin: psycopg.Connection[Any]) -> None:
    """After worker --drain, time travel can ask for any moment before the drain began."""
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t'); INSERT INTO t VALUES (1)")
    before = admin.execute("SELECT clock_timestamp() AS t").fetchone()["t"]  # type: ignore[index]
    drain(dsn)
    assert slot(admin)["caught_up_at"] >= before > slot(admin)["committed_at"]
    assert admin.execute("SELECT bemi.row_at('t', '1', %s) AS r", [before]).fetchone()["r"] == {"id": 1}  # type: ignore[index]


def test_the_worker_vacuums_its_stage(dsn: str, admin: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every store leaves its staged rows dead: a worker that may (here, as the stage's owner)
    vacuums the stage every VACUUM_EVERY rows, without waiting for autovacuum."""
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t')")
    for n in range(30):
        admin.execute("INSERT INTO t SELECT g FROM generate_series(%s::int, %s::int) g", [n * 100, n * 100 + 99])
    monkeypatch.setattr(writer, "VACUUM_EVERY", 500)
    run_worker(Options(dsn, drain=True, batch=100, interval=0.05), threading.Event(), lambda _: None)
    assert admin.execute("SELECT count(*) AS n FROM bemi.changes").fetchone()["n"] == 3000  # type: ignore[index]
    vacuumed = admin.execute("SELECT vacuum_count AS n FROM pg_stat_user_tables "
                             "WHERE relid = 'bemi.staged'::regclass").fetchone()["n"]  # type: ignore[index]
    assert vacuumed >= 3  # 3,000 rows stored, one vacuum every 500 (the two connections' last batches wait)


def test_connections_carry_tcp_keepalives_unless_the_dsn_sets_them(dsn: str) -> None:
    """A server that vanishes without closing the connection is noticed in about a minute."""
    def settings(conn: psycopg.Connection[Any]) -> dict[str, str]:
        return {o.keyword.decode(): (o.val or b"").decode() for o in conn.pgconn.info if o.keyword.startswith(b"keepalives")}

    expected = {"keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10", "keepalives_count": "3"}
    with worker_connect(dsn) as conn:
        assert settings(conn) == expected
    with worker_connect(psycopg.conninfo.make_conninfo(dsn, keepalives_idle=5)) as conn:
        assert settings(conn) == {**expected, "keepalives_idle": "5"}
    with psycopg.connect(dsn, autocommit=True) as admin:
        name = admin.execute("SELECT bemi.slot_name()").fetchone()[0]  # type: ignore[index]
        lsn = admin.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                            [name]).fetchone()[0]  # type: ignore[index]
    stream = ReplicationStream(dsn, name, parse_lsn(lsn))
    try:
        assert settings(stream.conn) == expected
    finally:
        stream.close()


def test_sigterm_stops_cleanly_and_confirms_what_is_stored(dsn: str, admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t')")
    worker = start(dsn, "--interval", "0.2")
    for key in range(50):
        admin.execute("INSERT INTO t VALUES (%s)", [key])
    assert wait_for(lambda: len(changes(admin)) == 50)
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate()
    assert worker.returncode == 0, err
    assert re.search(r"worker: stopped after 50 changes in", out, re.M), out
    state = slot(admin)
    assert not state["active"] and state["confirmed_flush_lsn"] == state["lsn"]
    admin.execute("INSERT INTO t VALUES (50)")
    assert "drained 1 changes" in drain(dsn).stdout
    assert [r["primary_key"] for r in changes(admin, "primary_key")] == [str(k) for k in range(51)]


WAITING = """SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"""


@pytest.mark.parametrize("path", [[], ["--sql"]], ids=["streaming", "sql"])
def test_sigterm_is_honoured_while_the_server_is_busy_and_nothing_is_lost_or_doubled(
        dsn: str, admin: psycopg.Connection[Any], path: list[str]) -> None:
    """SIGTERM stops the worker whatever the server is doing (a 1,000-table TRUNCATE once kept
    it for minutes): what it was staging or storing is rolled back, and the next run stores it,
    once. Here the server is busy because every store waits for a lock held by another session."""
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY)")
    admin.execute("SELECT bemi.track('t'); SELECT bemi.track('u')")
    admin.execute("INSERT INTO t SELECT generate_series(1, 3000)")  # a transaction stored in parts
    admin.execute("INSERT INTO u VALUES (1)")
    admin.execute("TRUNCATE t, u")
    with psycopg.connect(dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtext('bemi.ingest'))")  # what bemi.store takes
        worker = start(dsn, "--batch", "1000", *path)
        try:
            assert wait_for(lambda: admin.execute(WAITING).fetchone()["n"] > 0)  # type: ignore[index]
            worker.send_signal(signal.SIGTERM)
            out, err = worker.communicate(timeout=300)
        finally:
            if worker.poll() is None:
                worker.kill()
        assert worker.returncode == 0, err
        assert re.search(r"^\S+ INFO worker: stopped after 0 changes in", out, re.M), out
        assert changes(admin) == []
        # Nothing half staged is left behind for the next store.
        assert admin.execute("SELECT (SELECT count(*) FROM bemi.staged) + (SELECT count(*) FROM bemi.staged_relations)"
                             " AS n").fetchone() == {"n": 0}
    drain(dsn)
    assert [(r["table"], r["primary_key"], r["operation"]) for r in changes(admin, "table", "primary_key", "operation")] \
        == [("t", str(k), "CREATE") for k in range(1, 3001)] + [("u", "1", "CREATE"), ("t", None, "TRUNCATE"),
                                                                 ("u", None, "TRUNCATE")]


# ---------------------------------------------------------------------------------------
# Failing fast: what retrying cannot fix is an error at once, exit status 1.

def fails(dsn: str, message: str, *args: str) -> None:
    done = cli(dsn, "worker", *args)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.startswith("error: ") and message in done.stderr, done.stderr
    assert "ingesting" not in done.stdout and "streaming" not in done.stdout


def test_fails_fast_on_bad_options(dsn: str) -> None:
    fails(dsn, "--batch must be a positive number", "--batch", "0")
    fails(dsn, "--interval a positive number of seconds", "--interval", "-1")


def test_fails_fast_on_a_missing_database(dsn: str) -> None:
    fails(psycopg.conninfo.make_conninfo(dsn, dbname="no_such_database"), 'database "no_such_database" does not exist')


def test_fails_fast_on_an_unknown_role(dsn: str) -> None:
    fails(psycopg.conninfo.make_conninfo(dsn, user="no_such_role"), 'role "no_such_role" does not exist')


def test_fails_fast_without_the_extension(dsn: str, admin: psycopg.Connection[Any]) -> None:
    admin.execute("SELECT bemi.drop_slot()")
    admin.execute("DROP EXTENSION bemi CASCADE")
    fails(dsn, "the bemi extension is not installed in database")


def test_fails_fast_without_the_slot(dsn: str, admin: psycopg.Connection[Any]) -> None:
    # A slot dropped behind bemi's back (as a failover before 17 loses it): the trail records
    # an open gap from what it holds, the worker exits 3; a new slot ends the gap.
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t'); INSERT INTO t VALUES (1)")
    name = admin.execute("SELECT bemi.slot_name() AS n").fetchone()["n"]  # type: ignore[index]
    stored = admin.execute("SELECT lsn FROM bemi.progress").fetchone()["lsn"]  # type: ignore[index]
    admin.execute("SELECT pg_drop_replication_slot(%s)", [name])
    for args in ([], ["--sql"]):
        done = cli(dsn, "worker", *args)
        assert done.returncode == 3, (done.stdout, done.stderr)
        assert f'error: the replication slot "{name}" does not exist: changes after {stored}' in done.stderr
    assert changes(admin) == []
    gaps = admin.execute("SELECT cause, from_lsn, to_lsn FROM bemi.gaps WHERE slot_name = %s", [name]).fetchall()
    assert gaps == [{"cause": "slot lost", "from_lsn": stored, "to_lsn": None}]  # one, however often it is found
    start = admin.execute("SELECT bemi.create_slot() AS s").fetchone()["s"]  # type: ignore[index]
    assert admin.execute("SELECT to_lsn FROM bemi.gaps").fetchall() == [{"to_lsn": start}]


def test_fails_fast_without_privileges(dsn: str, role: str) -> None:
    fails(f"{dsn} user={role}", f'role "{role}" may not call bemi.ingest() nor stream')
    fails(f"{dsn} user={role}", f'role "{role}" may not call bemi.ingest(): see docs/security.md', "--sql")


def test_without_replication_the_sql_path_is_used(dsn: str, conn: psycopg.Connection[Any],
                                                  admin: psycopg.Connection[Any], role: str) -> None:
    admin.execute(f"GRANT EXECUTE ON FUNCTION bemi.ingest(integer) TO {role}")
    bemi_pg.seed_example(conn)
    done = drain(f"{dsn} user={role}")
    assert f'worker: role "{role}" lacks the REPLICATION attribute, so ingesting through SQL (bemi.ingest)' in done.stdout
    assert "drained 5 changes" in done.stdout
    assert [tuple(r.values()) for r in changes(admin, "primary_key", "table", "operation", "before", "after",
                                                "context")] == SEED


def test_sql_path_on_request(dsn: str, conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> None:
    bemi_pg.seed_example(conn)
    done = drain(dsn, "--sql")
    assert "through bemi.ingest" in done.stdout and "drained 5 changes" in done.stdout
    assert len(changes(admin)) == 5


def test_stops_with_an_error_when_storing_is_refused_midway(dsn: str, admin: psycopg.Connection[Any],
                                                            role: str) -> None:
    """A privilege taken away while the worker streams cannot be retried away: it exits 1 and
    says why, and confirms nothing it did not store."""
    admin.execute(f"ALTER ROLE {role} REPLICATION")
    admin.execute(f"GRANT EXECUTE ON FUNCTION bemi.store TO {role}; "
                  f"GRANT INSERT ON bemi.staged, bemi.staged_relations TO {role}; GRANT SELECT ON bemi.progress TO {role}")
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t'); INSERT INTO t VALUES (1)")
    worker = start(f"{dsn} user={role}", "--interval", "0.1")
    assert wait_for(lambda: len(changes(admin)) == 1)
    admin.execute(f"REVOKE EXECUTE ON FUNCTION bemi.store FROM {role}")
    admin.execute("INSERT INTO t VALUES (2)")
    out, err = worker.communicate()
    assert worker.returncode == 1, (out, err)
    assert err.startswith("error: permission denied for function store"), err
    assert [r["primary_key"] for r in changes(admin, "primary_key")] == ["1"]
    state = slot(admin)
    assert state["confirmed_flush_lsn"] <= state["lsn"]
    assert "drained 1 changes" in drain(dsn).stdout  # the administrator's worker picks it up


def test_waits_while_the_slot_is_in_use(dsn: str, admin: psycopg.Connection[Any]) -> None:
    """A slot held by another reader (say a worker just killed whose server process has not
    noticed yet) is a transient error: the worker retries, then streams."""
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t'); INSERT INTO t VALUES (1)")
    name = admin.execute("SELECT bemi.slot_name() AS n").fetchone()["n"]  # type: ignore[index]
    holder = ReplicationStream(dsn, name, 0)
    worker = start(dsn, "--drain")
    assert worker.stderr is not None
    line = worker.stderr.readline()
    assert " WARNING " in line and "is active for PID" in line and "retrying in" in line, line
    holder.close()
    out, err = worker.communicate()
    assert worker.returncode == 0, err
    assert "drained 1 changes" in out
    assert len(changes(admin)) == 1
