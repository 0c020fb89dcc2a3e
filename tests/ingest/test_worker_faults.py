"""Exactly once under faults, with the streaming worker as a real process: kill -9 at random
moments (mid-batch, in the middle of a huge transaction stored in parts, after a batch is
committed but before the server heard about it) and an immediate server stop; afterwards
every change made is in bemi.changes once (the writers' ledger is the ground truth, see
stress/scenarios.py)."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import bemi_pg
from tests.helpers.commands import start

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "stress"))
import scenarios  # noqa: E402

# Every test here kills the worker with kill -9 or stops the server immediately.
pytestmark = pytest.mark.crash

PROGRESS = """
SELECT p.lsn, p.part_of, p.part_stored, s.confirmed_flush_lsn, s.active
FROM bemi.progress p JOIN pg_replication_slots s USING (slot_name) WHERE p.slot_name = bemi.slot_name()
"""


def progress(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        row = conn.execute(PROGRESS).fetchone()
    assert row is not None
    return row


def assert_exact(tally: scenarios.Tally) -> None:
    assert tally.made > 0
    assert (tally.found, tally.missing, tally.duplicated) == (tally.made, 0, 0), tally


@contextmanager
def worker(dsn: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A streaming worker; one just killed may hold its lock a moment longer, so retry while it does."""
    process = start(dsn, *args)
    while scenarios.wait_for(lambda: process.poll() is not None, seconds=0.3):
        _, err = process.communicate()
        assert "already ingesting" in err, err
        process = start(dsn, *args)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate()
            assert process.returncode == 0, err


def kill(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.communicate()


def drain_with_worker(dsn: str) -> None:
    end = scenarios.mark_end(dsn)
    with worker(dsn, "--batch", "50", "--interval", "0.1"):
        assert scenarios.wait_for(lambda: scenarios.caught_up(dsn, end), seconds=600), "the worker did not drain"


def test_kill_9_at_random_moments_under_load(dsn: str) -> None:
    """Small batches (50 changes) and transactions of up to 120 changes: kills land mid-batch
    and between the parts of a transaction."""
    rng = random.Random(8)
    scenarios.prepare(dsn)
    with scenarios.Writers(dsn, 2, pause=0.01, sizes=(1, 2, 5, 120)) as load:
        for _ in range(4):
            with worker(dsn, "--batch", "50", "--interval", "0.05") as process:
                time.sleep(rng.uniform(0.1, 0.6))
                kill(process)
    drain_with_worker(dsn)
    assert_exact(scenarios.tally(dsn, "kill -9 streaming worker", 4, load))


def test_kill_9_in_the_middle_of_a_huge_transaction(dsn: str) -> None:
    """A 20,000-row transaction stored in parts of 1,000: killed after some parts, twice; the
    restart skips exactly the stored part."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE big (id int PRIMARY KEY, v text); SELECT bemi.track('big')")
        with conn.transaction():
            bemi_pg.set_context(conn, {"job": "import"})
            conn.execute("INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
    killed_at = []
    for at_least in (3000, 9000):
        with worker(dsn, "--batch", "1000", "--interval", "0.1") as process:
            assert scenarios.wait_for(lambda: progress(dsn)["part_stored"] >= at_least)
            kill(process)
        state = progress(dsn)
        assert state["part_of"] is not None and 0 < state["part_stored"] < 20000
        killed_at.append(state["part_stored"])
    assert killed_at[0] < killed_at[1]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO big VALUES (0, 'after')")
    drain_with_worker(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        keys = [int(k) for (k,) in conn.execute("SELECT primary_key FROM bemi.changes ORDER BY id")]
        contexts = conn.execute("SELECT count(*) FROM bemi.changes WHERE context = '{\"job\": \"import\"}'").fetchone()
    assert keys == [*range(1, 20001), 0]  # all of them, once, in order
    assert contexts == (20000,)
    state = progress(dsn)
    assert (state["part_of"], state["part_stored"]) == (None, 0)


def test_kill_9_after_a_commit_before_the_feedback(dsn: str) -> None:
    """The worker frozen (SIGSTOP) at a moment when a batch is committed but the server has
    not been told (progress ahead of the slot's confirmed position), then killed: the
    restart starts from the progress row, not from the slot's position."""
    scenarios.prepare(dsn)
    hits = 0
    with scenarios.Writers(dsn, 2, pause=0.005) as load:
        for _ in range(100):
            if hits == 2:
                break
            with worker(dsn, "--batch", "20", "--interval", "0.05") as process:
                time.sleep(0.3)
                for _ in range(200):
                    process.send_signal(signal.SIGSTOP)
                    time.sleep(0.02)  # let the server take in any feedback already sent
                    state = progress(dsn)
                    if state["lsn"] > state["confirmed_flush_lsn"]:
                        hits += 1
                        kill(process)
                        break
                    process.send_signal(signal.SIGCONT)
                    time.sleep(0.01)
    assert hits == 2, "never caught the worker between a commit and its feedback"
    drain_with_worker(dsn)
    assert_exact(scenarios.tally(dsn, "kill -9 between commit and feedback", hits, load))


def test_server_stopped_immediately_while_streaming(dsn: str, postgresql_proc: Any) -> None:
    """pg_ctl stop -m immediate while the worker streams and writers write, twice; the worker
    rides out the restart (retrying) and then stores everything, once."""
    scenarios.prepare(dsn)
    with worker(dsn, "--batch", "50", "--interval", "0.05") as process, \
            scenarios.Writers(dsn, 2, pause=0.01, sizes=(1, 3, 80)) as load:
        for _ in range(2):
            before = stored(dsn)
            assert scenarios.wait_for(lambda: stored(dsn) >= before + 300), "the worker stored too little"
            scenarios.crash_server(str(postgresql_proc.datadir))
            scenarios.start_server(str(postgresql_proc.datadir), str(postgresql_proc.logfile))
        load.join()
        end = scenarios.mark_end(dsn)
        assert scenarios.wait_for(lambda: scenarios.caught_up(dsn, end), seconds=600), "no drain after the restarts"
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate()
        assert process.returncode == 0, err
        assert "retrying in" in err
    assert_exact(scenarios.tally(dsn, "immediate stop while streaming", 2, load))
    # The total it reports spans its reconnects: all it stored, but for the batches committed
    # just as the server died that it never heard back about (at most two in flight of 50).
    match = re.search(r"stopped after (\d+) changes", out)
    assert match and stored(dsn) - 2 * 2 * 50 <= int(match.group(1)) <= stored(dsn), out


def stored(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute("SELECT count(*) FROM bemi.changes").fetchone()[0])  # type: ignore[index]
