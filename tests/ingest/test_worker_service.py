"""bemi-pg worker run like a database service (issue 19): it never delays a server shutdown
(pg_ctl stop -m fast and -m smart: idle, in the middle of a large transaction, with its trail
database down) and reconnects by itself afterwards, storing every change once; a second
worker waits for the first; it serves Prometheus metrics and logs with timestamps (text or
JSON); SIGHUP does not stop it; it gives up on what retrying cannot fix.

The servers that are stopped here are the tests' own (tests/helpers/server.py), not the
session's; the worker is the real command, its output written to files."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import bemi_pg
from tests.helpers.commands import BEMI_PG
from tests.helpers.server import Server, free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "stress"))
from scenarios import wait_for  # noqa: E402


class Worker:
    """``bemi-pg --dsn DSN worker ARGS`` running, its stdout and stderr in files."""

    def __init__(self, directory: Path, dsn: str, *args: str, name: str = "worker") -> None:
        self.out, self.err = directory / f"{name}.out", directory / f"{name}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen([*BEMI_PG, "--dsn", dsn, "worker", *args], stdout=out, stderr=err)

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        if self.running():
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait()

    def kill(self) -> None:
        if self.running():
            self.process.kill()
            self.process.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A server of this test's own, stopped at the end whatever state it is in."""
    directory = tmp_path / "s1"
    directory.mkdir()
    own = Server(directory)
    own.start()
    yield own
    own.stop("immediate")


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Worker]]:
    """Workers a test starts; any still running at the end are killed."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.kill()


def tracked_table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text); SELECT bemi.track('t')")


def write(dsn: str, keys: range) -> None:
    """One transaction per key, each with a context."""
    with psycopg.connect(dsn) as conn:
        for key in keys:
            with bemi_pg.with_context(conn, {"key": key}):
                conn.execute("INSERT INTO t VALUES (%s, 'v')", [key])


def stored(trail: str) -> int:
    with psycopg.connect(trail) as conn:
        return int(conn.execute("SELECT count(*) FROM bemi.changes").fetchone()[0])  # type: ignore[index]


def assert_each_once(trail: str, keys: range) -> None:
    """Every key written is in the trail once: nothing lost, nothing doubled."""
    with psycopg.connect(trail) as conn:
        found = conn.execute("SELECT primary_key::int, count(*) FROM bemi.changes GROUP BY 1 ORDER BY 1").fetchall()
    assert [k for k, _ in found] == list(keys)
    assert {n for _, n in found} == {1}


def stops(server: Server, mode: str) -> None:
    done = server.stop(mode)
    assert done.returncode == 0, (done.stdout, done.stderr)


# ---------------------------------------------------------------------------------------
# Shutdowns and restarts.

@pytest.mark.crash
def test_fast_and_smart_stops_while_idle(server: Server, tmp_path: Path, workers: list[Worker]) -> None:
    """A caught-up worker lets the server stop at once (fast) or as soon as it has noticed
    (smart), then reconnects when it is back, and stores what was written in between."""
    dsn = server.new_database()
    tracked_table(dsn)
    write(dsn, range(0, 20))
    worker = Worker(tmp_path, dsn, "--interval", "0.2")
    workers.append(worker)
    assert wait_for(lambda: stored(dsn) == 20 and "caught up" in worker.stdout())
    written = 20
    for mode in ("fast", "smart", "fast"):
        stops(server, mode)
        server.start()
        write(dsn, range(written, written + 20))
        written += 20
        assert wait_for(lambda: stored(dsn) == written), (worker.stdout(), worker.stderr())
        assert worker.running()
    assert worker.stop() == 0, worker.stderr()
    assert_each_once(dsn, range(written))
    assert worker.stdout().count("worker: connected again after") == 3, worker.stdout()
    assert "the server is shutting down" in worker.stderr()  # how the smart stop was noticed


@pytest.mark.crash
@pytest.mark.slow
def test_fast_stop_in_the_middle_of_a_large_transaction(server: Server, tmp_path: Path,
                                                        workers: list[Worker]) -> None:
    """200,000 rows in one transaction, stored in parts: the server is stopped after some
    parts; the worker resumes after the restart with the part it had not stored."""
    dsn = server.new_database()
    tracked_table(dsn)
    worker = Worker(tmp_path, dsn, "--batch", "5000", "--interval", "0.2")
    workers.append(worker)
    with psycopg.connect(dsn) as conn:
        with bemi_pg.with_context(conn, {"job": "import"}):
            conn.execute("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 200000) g")

    def part_stored() -> int:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT part_stored FROM bemi.progress").fetchone()
        return int(row[0]) if row else 0

    assert wait_for(lambda: part_stored() > 0, seconds=300)
    stops(server, "fast")
    server.start()
    mid = part_stored()
    assert 0 < mid < 200000  # stopped in the middle of it
    write(dsn, range(200001, 200002))
    assert wait_for(lambda: stored(dsn) == 200001, seconds=600), (worker.stdout(), worker.stderr())
    assert worker.stop() == 0, worker.stderr()
    assert_each_once(dsn, range(1, 200002))
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM bemi.changes WHERE context = '{\"job\": \"import\"}'").fetchone() \
            == (200000,)


@pytest.mark.crash
def test_fast_stops_while_the_trail_database_is_down(server: Server, tmp_path: Path, workers: list[Worker]) -> None:
    """The source's server stops (fast) while the worker streams into its trail database; then
    the trail database's server stops, then the source's again (fast, then smart): each stop
    completes, and with both back the worker stores what was written meanwhile."""
    (tmp_path / "s2").mkdir()
    trail_server = Server(tmp_path / "s2")
    trail_server.start()
    try:
        dsn, trail = server.new_database(), trail_server.new_database(bemi=False)
        done = subprocess.run([*BEMI_PG, "install", "--trail-only", "--dsn", trail], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        tracked_table(dsn)
        write(dsn, range(0, 10))
        worker = Worker(tmp_path, dsn, "--trail-dsn", trail, "--interval", "0.2")
        workers.append(worker)
        assert wait_for(lambda: stored(trail) == 10 and "caught up" in worker.stdout())
        stops(server, "fast")
        server.start()
        write(dsn, range(10, 15))
        assert wait_for(lambda: stored(trail) == 15), (worker.stdout(), worker.stderr())
        stops(trail_server, "fast")
        write(dsn, range(15, 20))  # the source keeps working
        assert wait_for(lambda: "retrying in" in worker.stderr())
        stops(server, "fast")
        server.start()
        write(dsn, range(20, 30))
        stops(server, "smart")
        server.start()
        trail_server.start()
        assert wait_for(lambda: stored(trail) == 30), (worker.stdout(), worker.stderr())
        assert worker.stop() == 0, worker.stderr()
        assert_each_once(trail, range(30))
    finally:
        trail_server.stop("immediate")


# ---------------------------------------------------------------------------------------
# A second worker.

def application_names(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return sorted(r[0] for r in conn.execute(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE 'bemi-pg worker (%'"))


def second_pid(dsn: str) -> int:
    """The session of the worker waiting for the lock."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'bemi-pg worker (waiting)'").fetchone()
    assert row is not None
    return int(row[0])


def test_a_second_worker_waits_for_the_first(dsn: str, tmp_path: Path, workers: list[Worker]) -> None:
    """The second worker waits (its state, and the first one's, in pg_stat_activity) and takes
    over when the first stops; with --no-wait it exits as before."""
    tracked_table(dsn)
    write(dsn, range(0, 5))
    first = Worker(tmp_path, dsn, "--interval", "0.1", name="first")
    workers.append(first)
    assert wait_for(lambda: stored(dsn) == 5 and application_names(dsn) == ["bemi-pg worker (streaming)"])
    second = Worker(tmp_path, dsn, "--interval", "0.1", name="second")
    workers.append(second)
    assert wait_for(lambda: "holds this database's lock; waiting for it" in second.stdout())
    assert application_names(dsn) == ["bemi-pg worker (streaming)", "bemi-pg worker (waiting)"]
    shown = subprocess.run([*BEMI_PG, "--dsn", dsn, "status", "--json"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    states = {w["pid"]: w["state"] for w in json.loads(shown.stdout)["workers"]}
    assert second_pid(dsn) in states and states[second_pid(dsn)] == "waiting", states
    assert sorted(states.values()) == ["streaming", "streaming", "waiting"]  # the first: its stream and its lock
    text = subprocess.run([*BEMI_PG, "--dsn", dsn, "status"], capture_output=True, text=True)
    line = next(line for line in text.stdout.splitlines() if line.startswith("worker "))
    assert "waiting since " in line and f"pid {second_pid(dsn)}, bemi-pg worker (waiting)" in line, line
    refused = subprocess.run([*BEMI_PG, "--dsn", dsn, "worker", "--no-wait"], capture_output=True, text=True)
    assert refused.returncode == 1
    assert refused.stderr == "error: another bemi-pg worker is already ingesting this database; not starting a second\n"
    write(dsn, range(5, 10))
    assert wait_for(lambda: stored(dsn) == 10)
    assert first.stop() == 0, first.stderr()
    write(dsn, range(10, 15))
    assert wait_for(lambda: stored(dsn) == 15), (second.stdout(), second.stderr())
    assert "took the lock after waiting" in second.stdout()
    assert wait_for(lambda: application_names(dsn) == ["bemi-pg worker (streaming)"])
    assert second.stop() == 0, second.stderr()
    assert_each_once(dsn, range(15))


# ---------------------------------------------------------------------------------------
# A slot invalidated: max_slot_wal_keep_size exceeded.

def gaps(dsn: str) -> list[tuple[str, Any, bool]]:
    with psycopg.connect(dsn) as conn:
        return [(cause, from_lsn, is_open) for cause, from_lsn, is_open in
                conn.execute("SELECT cause, from_lsn::text, open FROM bemi.coverage_report()")]


def test_a_slot_invalidated_by_max_slot_wal_keep_size(server: Server, tmp_path: Path) -> None:
    """The slot loses the WAL it needed (WAL written past max_slot_wal_keep_size, a checkpoint):
    the worker records an open 'slot lost' gap from what the trail holds and exits 3; status
    reports it; bemi.drop_slot() and bemi.create_slot() resume capture and close the gap."""
    dsn = server.new_database()
    tracked_table(dsn)
    write(dsn, range(0, 3))
    done = subprocess.run([*BEMI_PG, "--dsn", dsn, "worker", "--drain"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with psycopg.connect(dsn, autocommit=True) as conn:
        stored_to = conn.execute("SELECT lsn::text FROM bemi.progress").fetchone()[0]  # type: ignore[index]
        conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        conn.execute("SELECT pg_reload_conf()")
        write(dsn, range(3, 5))  # lost with the WAL
        conn.execute("CREATE TABLE filler (v text)")
        while conn.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name = bemi.slot_name()"
                           ).fetchone() != ("lost",):
            conn.execute("INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 1000)")
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
    done = subprocess.run([*BEMI_PG, "--dsn", dsn, "worker", "--drain"], capture_output=True, text=True)
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "was invalidated (the WAL it needed is gone)" in done.stderr and stored_to in done.stderr, done.stderr
    assert gaps(dsn) == [("slot lost", stored_to, True)]
    shown = subprocess.run([*BEMI_PG, "--dsn", dsn, "status", "--json"], capture_output=True, text=True)
    assert shown.returncode == 2, shown.stdout + shown.stderr
    report = json.loads(shown.stdout)
    assert [(g["cause"], g["from_lsn"], g["open"]) for g in report["gaps"]] == [("slot lost", stored_to, True)]
    assert report["slot"]["wal_status"] == "lost"
    assert any(w.startswith("capture has an open gap (slot lost") for w in report["warnings"]), report["warnings"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT bemi.drop_slot()")
        start = conn.execute("SELECT bemi.create_slot()::text").fetchone()[0]  # type: ignore[index]
    write(dsn, range(5, 7))
    done = subprocess.run([*BEMI_PG, "--dsn", dsn, "worker", "--drain"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT to_lsn::text, open FROM bemi.coverage_report()").fetchall() == [(start, False)]
        assert [k for (k,) in conn.execute("SELECT primary_key::int FROM bemi.changes ORDER BY id")] == [0, 1, 2, 5, 6]


# ---------------------------------------------------------------------------------------
# Metrics, logs, signals.

def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_metrics_json_logs_and_sighup(dsn: str, tmp_path: Path, workers: list[Worker]) -> None:
    tracked_table(dsn)
    port = free_port()
    worker = Worker(tmp_path, dsn, "--interval", "0.1", "--metrics-port", str(port), "--log-format", "json")
    workers.append(worker)
    write(dsn, range(0, 30))
    with psycopg.connect(dsn) as conn:  # a transaction of 70 changes, and an untracked write
        conn.execute("INSERT INTO t SELECT g, 'v' FROM generate_series(30, 99) g")
        conn.execute("CREATE TABLE untracked (id int); INSERT INTO untracked VALUES (1)")
    assert wait_for(lambda: stored(dsn) == 100)
    assert wait_for(lambda: scrape(port).get('bemi_worker_state{bemi_worker_state="streaming"}') == 1.0)
    metrics = scrape(port)
    with psycopg.connect(dsn) as conn:
        newest = conn.execute("SELECT extract(epoch FROM max(committed_at))::float8 FROM bemi.changes").fetchone()[0]  # type: ignore[index]
    assert metrics["bemi_worker_changes_stored_total"] == stored(dsn) == 100
    assert metrics["bemi_worker_batches_stored_total"] >= 2
    assert metrics["bemi_worker_last_stored_commit_timestamp_seconds"] == pytest.approx(newest, abs=1e-3)
    assert metrics["bemi_worker_lag_seconds"] == 0  # caught up
    assert 0 <= metrics["bemi_worker_lag_bytes"] < 1024 * 1024
    assert metrics["bemi_worker_reconnects_total"] == 0
    assert metrics['bemi_worker_errors_total{kind="transient"}'] == 0
    worker.process.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "SIGHUP" in worker.stdout())
    write(dsn, range(100, 101))
    assert wait_for(lambda: scrape(port)["bemi_worker_changes_stored_total"] == 101)
    assert worker.running()
    assert worker.stop() == 0, worker.stderr()
    lines = [json.loads(line) for line in worker.stdout().splitlines()]
    assert all({"ts", "level", "msg"} <= line.keys() and line["level"] == "info" for line in lines), lines
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"]) for line in lines)
    streaming = next(line for line in lines if line["msg"].startswith("worker: streaming slot"))
    assert streaming["slot"].startswith("bemi_") and streaming["database"]
    assert lines[-1]["total"] == 101 and lines[-1]["msg"].startswith("worker: stopped after 101 changes")
    assert worker.stderr() == ""


def test_text_logs_carry_a_timestamp_and_a_level(dsn: str) -> None:
    tracked_table(dsn)
    write(dsn, range(0, 3))
    done = subprocess.run([*BEMI_PG, "--dsn", dsn, "worker", "--drain"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO ", line) for line in lines), lines
    assert lines[-1].split(" ", 2)[2].startswith("worker: drained 3 changes")


# ---------------------------------------------------------------------------------------
# Retrying, or giving up.

def test_retries_a_server_that_is_not_up_with_a_growing_backoff(server: Server, tmp_path: Path,
                                                                workers: list[Worker]) -> None:
    """Connection refused is retried (0.5 s, 1 s, 2 s, ... up to 10 s), and the worker streams
    once the server is up."""
    dsn = server.new_database()
    tracked_table(dsn)
    write(dsn, range(3))
    stops(server, "fast")
    worker = Worker(tmp_path, dsn, "--interval", "0.2")
    workers.append(worker)
    assert wait_for(lambda: "retrying in 2.0 s (attempt 3)" in worker.stderr())
    server.start()
    assert wait_for(lambda: stored(dsn) == 3), (worker.stdout(), worker.stderr())
    assert worker.stop() == 0
    backoffs = re.findall(r"retrying in ([0-9.]+) s", worker.stderr())
    assert backoffs[:3] == ["0.5", "1.0", "2.0"], worker.stderr()
    assert all(re.match(r"\d{4}-\d\d-\d\dT\S+ WARNING ", line) for line in worker.stderr().splitlines())


@pytest.mark.parametrize("change, message", [
    ({"host": "no-such-host.invalid"}, "failed to resolve host 'no-such-host.invalid'"),
    ({"user": "no_such_role"}, 'role "no_such_role" does not exist'),
])
def test_gives_up_at_once_on_what_retrying_cannot_fix(dsn: str, change: dict[str, str], message: str) -> None:
    """A mistyped host or role: one error line, exit status 1, no retries."""
    done = subprocess.run([*BEMI_PG, "--dsn", psycopg.conninfo.make_conninfo(dsn, **change), "worker"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and message in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "retrying" not in done.stderr, done.stderr


# ---------------------------------------------------------------------------------------
# Every install route, as the least-privileged roles the docs name.

def test_the_worker_runs_on_a_plain_install_as_its_owner(new_database: Any) -> None:
    """bemi-pg install (no CREATE EXTENSION, no pg_extension row) by the database's owner, a
    managed platform's admin role (no superuser); then bemi-pg worker as that role."""
    dsn = new_database(as_owner=True)
    done = subprocess.run([*BEMI_PG, "install", "--dsn", dsn], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'bemi'").fetchone() == (0,)
        conn.execute("SELECT bemi.create_slot()")
    tracked_table(dsn)
    write(dsn, range(4))
    done = subprocess.run([*BEMI_PG, "--dsn", dsn, "worker", "--drain"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "worker: drained 4 changes" in done.stdout
    assert_each_once(dsn, range(4))


def documented_trail_grants() -> tuple[str, str]:
    """The worker role's grants from docs/trail-database.md: what runs in the source, and what
    runs in the trail database."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "trail-database.md").read_text()
    source = re.search(r"^psql \"\$SOURCE\" <<'SQL'\n(.*?)^SQL$", doc, re.S | re.M)
    trail = re.search(r"^psql \"\$TRAIL\" <<'SQL'\n(.*?)^SQL$", doc, re.S | re.M)
    assert source and trail and "CREATE ROLE bemi_worker" in source[1]
    return source[1], trail[1]


def test_a_trail_database_with_exactly_the_documented_grants(dsn: str, trail: str) -> None:
    role = f"w_{uuid.uuid4().hex[:8]}"
    source_sql, trail_sql = (part.replace("bemi_worker", role) for part in documented_trail_grants())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(source_sql)
    try:
        with psycopg.connect(trail, autocommit=True) as conn:
            conn.execute(trail_sql)
        tracked_table(dsn)
        write(dsn, range(6))
        as_role = [psycopg.conninfo.make_conninfo(url, user=role) for url in (dsn, trail)]
        done = subprocess.run([*BEMI_PG, "--dsn", as_role[0], "worker", "--drain", "--trail-dsn", as_role[1]],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "worker: drained 6 changes" in done.stdout
        assert_each_once(trail, range(6))
        with psycopg.connect(trail, autocommit=True) as conn:  # a grant missing: named, before any work
            conn.execute(f"REVOKE SELECT ON bemi.progress FROM {role}")
        done = subprocess.run([*BEMI_PG, "--dsn", as_role[0], "worker", "--drain", "--trail-dsn", as_role[1]],
                              capture_output=True, text=True)
        assert done.returncode == 1
        assert done.stderr.startswith(f'error: role "{role}" may not store into the trail database') \
            and "SELECT on bemi.progress" in done.stderr, done.stderr
    finally:
        for url in (trail, dsn):
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"DROP OWNED BY {role}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")


def test_gives_up_with_one_json_line_under_log_format_json(dsn: str) -> None:
    done = subprocess.run([*BEMI_PG, "--dsn", psycopg.conninfo.make_conninfo(dsn, user="no_such_role"), "worker",
                           "--log-format", "json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    logged = json.loads(line)
    assert logged["level"] == "error" and 'role "no_such_role" does not exist' in logged["msg"], logged
