"""Failover with a real standby on this machine (docs/ingest.md, "Gaps and failover"): the
primary crashes while the worker streams under load, the standby is promoted.

- PostgreSQL 15 (the machine's server): a logical slot does not survive a promotion. The
  worker, given both hosts, finds the slot gone on the new primary, records the gap in the
  trail and exits 3; bemi-pg status says so; bemi.create_slot() resumes capture.
- PostgreSQL 17 (tools/pg-versions 17): bemi.create_slot() makes a failover slot, kept in step
  on the standby; the worker continues on the new primary with nothing lost, nothing doubled.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.helpers.commands import run, start
from tests.helpers.replication import Pair, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.crash]

SETUP = """
CREATE TABLE t (id int PRIMARY KEY, v text);
SELECT bemi.track('t');
"""


def bindir(major: int) -> str:
    if major == 15:
        return subprocess.check_output(["pg_config", "--bindir"], text=True).strip()
    done = subprocess.run(["bash", "tools/pg-versions", "--bindir", str(major)], capture_output=True, text=True)
    assert done.returncode == 0, f"run tools/pg-versions {major} first: {done.stderr}"
    return done.stdout.strip()


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    major = request.param
    made = Pair(bindir(major), major)
    try:
        with made.primary.connect() as conn:
            conn.execute("CREATE DATABASE app")
        with made.primary.connect("app") as conn:
            conn.execute("CREATE EXTENSION bemi")
            conn.execute("SELECT bemi.create_slot()")
            conn.execute(SETUP)
        made.make_standby()
        yield made
    finally:
        made.close()


class Writer(threading.Thread):
    """One row per transaction, on whichever server is the primary; remembers what was acknowledged."""

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dsn, self.acked, self.stop, self.next = dsn, [], threading.Event(), 1

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=2) as conn:
                    while not self.stop.is_set():
                        conn.execute("INSERT INTO t VALUES (%s, 'x') ON CONFLICT DO NOTHING", [self.next])
                        self.acked.append(self.next)
                        self.next += 1
            except psycopg.Error:
                self.stop.wait(0.1)  # the primary is down: try the other host


def trail_ids(conn: psycopg.Connection[Any]) -> list[int]:
    return [int(k) for (k,) in conn.execute("SELECT primary_key FROM bemi.changes WHERE operation = 'CREATE' ORDER BY id")]


def stored(conn: psycopg.Connection[Any]) -> int:
    return int(conn.execute("SELECT count(*) FROM bemi.changes").fetchone()[0])  # type: ignore[index]


def crash_and_promote(pair: Pair, writer: Writer) -> None:
    with pair.primary.connect("app") as conn:
        assert wait_for(lambda: stored(conn) > 500, seconds=120)
    pair.primary.stop("immediate")
    pair.standby.promote()
    with pair.standby.connect("app") as conn:
        count = len(writer.acked)
        assert wait_for(lambda: len(writer.acked) > count + 300, seconds=120)  # writes go on, on the new primary


@pytest.mark.parametrize("pair", [15], indirect=True)
def test_slot_lost_at_promotion_is_a_recorded_gap(pair: Pair) -> None:
    dsn = pair.both("app")
    worker = start(dsn, "--interval", "0.1")
    writer = Writer(dsn)
    writer.start()
    try:
        crash_and_promote(pair, writer)
        assert wait_for(lambda: worker.poll() is not None, seconds=120)
        out, err = worker.communicate()
        assert worker.returncode == 3, (out, err)
        assert "does not exist: changes after" in err
    finally:
        writer.stop.set()
        writer.join()
        if worker.poll() is None:
            worker.kill()
    with pair.standby.connect("app") as conn:
        progress = conn.execute("SELECT lsn FROM bemi.progress").fetchone()[0]  # type: ignore[index]
        gap = conn.execute("SELECT cause, from_lsn, open FROM bemi.coverage_report()").fetchall()
        assert gap == [("slot lost", progress, True)]
        in_trail = trail_ids(conn)
        assert len(in_trail) == len(set(in_trail))  # nothing twice
        on_new_primary = {i for (i,) in conn.execute("SELECT id FROM t")}
        assert set(in_trail) < on_new_primary  # the rows written after the trail's end are the gap
        status = run(pair.standby.conninfo("app"), "status")
        assert "capture has an open gap (slot lost" in status.stderr
        # A new slot resumes capture and ends the gap; time travel refuses moments before it.
        conn.execute("SELECT bemi.create_slot()")
        conn.execute("INSERT INTO t VALUES (0, 'after')")
        assert conn.execute("SELECT open FROM bemi.coverage_report()").fetchall() == [(False,)]
        before = conn.execute("SELECT max(committed_at) FROM bemi.changes").fetchone()[0]  # type: ignore[index]
    done = run(pair.standby.conninfo("app"), "worker", "--drain")
    assert done.returncode == 0, done.stderr
    with pair.standby.connect("app") as conn:
        assert trail_ids(conn)[-1] == 0
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("SELECT bemi.row_at('t', '1', %s)", [before])
        assert refused.value.sqlstate == "ZB001"


@pytest.mark.parametrize("pair", [17], indirect=True)
def test_failover_slot_continues_with_nothing_lost_or_doubled(pair: Pair) -> None:
    dsn = pair.both("app")
    with pair.primary.connect("app") as conn:
        assert conn.execute("SELECT failover FROM pg_replication_slots WHERE slot_type = 'logical'").fetchone() == (True,)
    worker = start(dsn, "--interval", "0.1")
    writer = Writer(dsn)
    writer.start()
    try:
        with pair.standby.connect("app") as conn:  # the slot is synced before the primary goes
            assert wait_for(lambda: conn.execute(
                "SELECT coalesce(bool_and(synced AND NOT temporary), false) FROM pg_replication_slots "
                "WHERE slot_type = 'logical'").fetchone() == (True,), seconds=120)
        crash_and_promote(pair, writer)
    finally:
        writer.stop.set()
        writer.join()
    try:
        with pair.standby.connect("app") as conn:
            on_new_primary = sorted(i for (i,) in conn.execute("SELECT id FROM t"))
            assert wait_for(lambda: stored(conn) >= len(on_new_primary), seconds=120), worker.poll()
            in_trail = trail_ids(conn)
            assert worker.poll() is None  # still streaming, on the new primary
            assert sorted(in_trail) == on_new_primary  # nothing lost, nothing doubled
            assert conn.execute("SELECT count(*) FROM bemi.coverage_report()").fetchone() == (0,)
            assert len(on_new_primary) > 800  # 500 stored before the crash, 300 written after
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait()
