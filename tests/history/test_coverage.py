"""The trail knows what it covers (docs/time-travel.md, "Coverage"): gaps in capture are
recorded (bemi.gaps, bemi.coverage, bemi.coverage_report), bemi.ingested_until() is never
later than what is stored, and time travel and revert refuse, with their own SQLSTATEs, what
depends on a gap (ZB001), on a transaction stored only in part (ZB002) or on writes not yet
ingested (55000), instead of answering wrong."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import bemi_pg
from tests.helpers.commands import run, start
from tests.helpers.trail import ingest

GAP, PART, PENDING = "ZB001", "ZB002", "55000"


def now(admin: psycopg.Connection[Any]) -> Any:
    return admin.execute("SELECT clock_timestamp() AS t").fetchone()["t"]  # type: ignore[index]


def refusal(admin: psycopg.Connection[Any], query: str, params: list[Any]) -> str | None:
    """The SQLSTATE a query is refused with (None: it answered)."""
    try:
        admin.execute(query, params).fetchall()
    except psycopg.Error as error:
        return error.sqlstate
    return None


def row_at(admin: psycopg.Connection[Any], table: str, key: str, at: Any) -> Any:
    return admin.execute("SELECT bemi.row_at(%s, %s, %s) AS r", [table, key, at]).fetchone()["r"]  # type: ignore[index]


def gaps(admin: psycopg.Connection[Any]) -> list[tuple[str, bool]]:
    return [(r["cause"], r["open"]) for r in admin.execute("SELECT cause, open FROM bemi.coverage_report()")]


# ---------------------------------------------------------------------------------------
# ingested_until() is exact.

def test_ingested_until_is_never_later_than_the_trail(dsn: str, admin: psycopg.Connection[Any]) -> None:
    """Writers commit asynchronously (synchronous_commit = off) while ingests run: every claim
    of ingested_until() must hold, i.e. no change committed at or before it may arrive later.
    (1.1 claimed the time each ingest started, then read only the WAL flushed by then.)"""
    admin.execute("CREATE TABLE k (id int PRIMARY KEY, v int); SELECT bemi.track('k')")
    admin.execute("INSERT INTO k SELECT g, 0 FROM generate_series(1, 4) g")
    ingest(admin)
    stop = threading.Event()

    def write(key: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET synchronous_commit = off")
            value = 0
            while not stop.is_set():  # a few hundred commits a second: ingest keeps up
                value += 1
                conn.execute("UPDATE k SET v = %s WHERE id = %s", [value, key])
                time.sleep(0.003)

    writers = [threading.Thread(target=write, args=(key,)) for key in range(1, 5)]
    for thread in writers:
        thread.start()
    claims: list[tuple[Any, int]] = []
    try:
        while len(claims) < 40:
            admin.execute("SELECT bemi.ingest(100000)")
            row = admin.execute("SELECT u, (SELECT count(*) FROM bemi.changes WHERE committed_at <= u) AS n "
                                "FROM bemi.ingested_until() AS u").fetchone()
            assert row is not None
            if row["u"] is not None:
                claims.append((row["u"], row["n"]))
    finally:
        stop.set()
        for thread in writers:
            thread.join()
    ingest(admin)
    contradicted = [(u, n, later) for u, n in claims
                    if (later := admin.execute("SELECT count(*) AS n FROM bemi.changes WHERE committed_at <= %s",
                                               [u]).fetchone()["n"]) != n]  # type: ignore[index]
    assert len({u for u, _ in claims}) > 10  # the claims moved on
    assert contradicted == []


def test_a_transaction_stored_in_parts_is_not_claimed(dsn: str, admin: psycopg.Connection[Any]) -> None:
    """A worker stopped cleanly in the middle of a huge transaction: ingested_until() stays
    before it, time travel refuses what it touched (55000), revert refuses its changes (ZB002),
    status reports it; once the rest is stored, all of it answers."""
    admin.execute("CREATE TABLE big (id int PRIMARY KEY, v text); SELECT bemi.track('big')")
    admin.execute("INSERT INTO big SELECT g, 'old' FROM generate_series(1, 20000) g")
    before = now(admin)
    ingest(admin)  # claims past `before`
    admin.execute("UPDATE big SET v = 'new'")
    process = start(dsn, "--batch", "500", "--interval", "0.1")
    try:
        deadline = time.monotonic() + 120
        while admin.execute("SELECT part_stored FROM bemi.progress").fetchone()["part_stored"] < 2000:  # type: ignore[index]
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        assert process.wait() == 0
    finally:
        if process.poll() is None:
            process.kill()
    state = admin.execute("SELECT part_of, part_stored, part_transaction FROM bemi.progress").fetchone()
    assert state is not None and state["part_of"] is not None and 0 < state["part_stored"] < 20000
    stored = admin.execute("SELECT count(*) AS n, min(committed_at) AS at FROM bemi.changes WHERE after ->> 'v' = 'new'").fetchone()
    assert stored is not None and 0 < stored["n"] < 20000
    until = admin.execute("SELECT bemi.ingested_until() AS u").fetchone()["u"]  # type: ignore[index]
    assert until < stored["at"]  # the part-stored commit is after the claim
    assert refusal(admin, "SELECT count(*) FROM bemi.table_at(NULL::big, %s)", [before]) == PENDING
    assert refusal(admin, "SELECT * FROM bemi.revert_transaction(%s)", [state["part_transaction"]]) == PART
    assert ("transaction stored in part", True) in gaps(admin)
    ingest(admin)
    assert admin.execute("SELECT count(*) AS n FROM bemi.table_at(NULL::big, %s) WHERE v = 'old'",
                         [before]).fetchone()["n"] == 20000  # type: ignore[index]
    with admin.transaction():
        assert len(admin.execute("SELECT * FROM bemi.revert_transaction(%s)", [state["part_transaction"]]).fetchall()) == 20000
    assert gaps(admin) == []


# ---------------------------------------------------------------------------------------
# Gaps: recorded, shown, refused.

def test_tracking_before_the_slot_is_a_gap(new_database: Any) -> None:
    """README's old order (track, then create_slot) loses the writes in between: the moments
    up to the slot are refused (they were answered from the live table, wrongly)."""
    with psycopg.connect(new_database(), autocommit=True, row_factory=dict_row) as admin:
        admin.execute("CREATE EXTENSION bemi")
        admin.execute("CREATE TABLE t (id int PRIMARY KEY, v text); SELECT bemi.track('t')")
        admin.execute("INSERT INTO t VALUES (1, 'lost')")
        lost_at = now(admin)
        admin.execute("SELECT bemi.create_slot()")
        admin.execute("UPDATE t SET v = 'kept'")
        ingest(admin)
        assert refusal(admin, "SELECT bemi.row_at('t', '1', %s)", [lost_at]) == GAP
        assert refusal(admin, "SELECT * FROM bemi.table_at(NULL::t, %s)", [lost_at]) == GAP
        assert row_at(admin, "t", "1", admin.execute("SELECT bemi.ingested_until() AS u").fetchone()["u"]) == {  # type: ignore[index]
            "id": 1, "v": "kept"}
        coverage = admin.execute("SELECT covered_from, gaps -> 0 ->> 'cause' AS cause FROM bemi.coverage").fetchone()
        assert coverage is not None and coverage["cause"] == "tracked before the slot" and coverage["covered_from"] > lost_at


def test_a_dropped_and_recreated_slot_is_a_gap(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY, v text); SELECT bemi.track('t')")
    admin.execute("INSERT INTO t VALUES (1, 'a')")
    ingest(admin)
    old = admin.execute("SELECT bemi.ingested_until() AS u").fetchone()["u"]  # type: ignore[index]
    assert row_at(admin, "t", "1", old) == {"id": 1, "v": "a"}
    admin.execute("SELECT bemi.drop_slot()")
    assert gaps(admin) == [("slot dropped", True)]
    admin.execute("UPDATE t SET v = 'in the gap'")
    admin.execute("SELECT bemi.create_slot()")
    admin.execute("UPDATE t SET v = 'after'")
    ingest(admin)
    assert gaps(admin) == [("slot dropped", False)]
    # Before, the gap's update was invisible: row_at answered "a" at `old` and table_at "in the gap".
    assert refusal(admin, "SELECT bemi.row_at('t', '1', %s)", [old]) == GAP
    assert refusal(admin, "SELECT * FROM bemi.table_at(NULL::t, %s)", [old]) == GAP
    until = admin.execute("SELECT bemi.ingested_until() AS u").fetchone()["u"]  # type: ignore[index]
    assert row_at(admin, "t", "1", until) == {"id": 1, "v": "after"}


def test_a_rows_change_before_a_gap_does_not_answer_after_it(admin: psycopg.Connection[Any]) -> None:
    """The row's last stored change is from before the gap, its change in the gap is lost: at
    a moment after the gap, the row is what the table (or a later change) says, not that
    stored change (found by the property test: it answered the stale value)."""
    admin.execute("CREATE TABLE t (id int PRIMARY KEY, v text); SELECT bemi.track('t')")
    admin.execute("INSERT INTO t VALUES (1, 'stored'), (2, 'stored')")
    ingest(admin)
    admin.execute("SELECT bemi.drop_slot()")
    admin.execute("UPDATE t SET v = 'in the gap'")
    admin.execute("SELECT bemi.create_slot()")
    admin.execute("INSERT INTO t VALUES (3, 'after')")
    ingest(admin)
    after = now(admin)
    admin.execute("UPDATE t SET v = 'later' WHERE id = 2")
    ingest(admin)
    assert row_at(admin, "t", "1", after) == {"id": 1, "v": "in the gap"}  # the table as it is
    assert row_at(admin, "t", "2", after) == {"id": 2, "v": "in the gap"}  # the later change's before
    assert row_at(admin, "t", "3", after) == {"id": 3, "v": "after"}


def test_a_slot_lost_behind_bemis_back_is_a_gap(admin: psycopg.Connection[Any]) -> None:
    """As after a failover before 17: the slot is gone, the progress row is not."""
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t'); INSERT INTO t VALUES (1)")
    ingest(admin)
    stored = admin.execute("SELECT lsn FROM bemi.progress").fetchone()["lsn"]  # type: ignore[index]
    admin.execute("SELECT pg_drop_replication_slot(bemi.slot_name())")
    with pytest.raises(psycopg.errors.UndefinedObject, match="does not exist"):
        admin.execute("SELECT bemi.ingest()")
    start_lsn = admin.execute("SELECT bemi.create_slot() AS s").fetchone()["s"]  # type: ignore[index]
    row = admin.execute("SELECT cause, from_lsn, to_lsn, open FROM bemi.coverage_report()").fetchone()
    assert row == {"cause": "slot lost", "from_lsn": stored, "to_lsn": start_lsn, "open": False}


def test_untracked_time_is_a_gap(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t')")
    admin.execute("SELECT bemi.untrack('t')")
    rows = admin.execute("SELECT cause, \"table\", open FROM bemi.coverage_report()").fetchall()
    assert rows == [{"cause": "tracking paused", "table": "t", "open": True}]
    admin.execute("SELECT bemi.track('t')")
    assert gaps(admin) == [("tracking paused", False)]


def test_a_worker_behind_the_slot_records_the_split(dsn: str, admin: psycopg.Connection[Any]) -> None:
    """Another trail moved the slot past what this trail holds (here: by hand, as a worker
    storing elsewhere would): the worker warns, records the gap and stores what comes after."""
    admin.execute("CREATE TABLE t (id int PRIMARY KEY, v text); SELECT bemi.track('t')")
    admin.execute("INSERT INTO t VALUES (1, 'a')")
    ingest(admin)
    before = admin.execute("SELECT bemi.ingested_until() AS u").fetchone()["u"]  # type: ignore[index]
    admin.execute("UPDATE t SET v = 'elsewhere'")
    admin.execute("SELECT pg_replication_slot_advance(bemi.slot_name(), pg_current_wal_lsn())")
    admin.execute("UPDATE t SET v = 'here'")
    done = run(dsn, "worker", "--drain")
    assert done.returncode == 0, done.stderr
    assert "warning: gap in the trail recorded (trail split" in done.stderr
    assert [r["after"]["v"] for r in admin.execute("SELECT after FROM bemi.changes ORDER BY id")] == ["a", "here"]
    assert gaps(admin) == [("trail split", False)]
    assert refusal(admin, "SELECT bemi.row_at('t', '1', %s)", [before]) == GAP
    assert row_at(admin, "t", "1", admin.execute("SELECT bemi.ingested_until() AS u").fetchone()["u"]) == {  # type: ignore[index]
        "id": 1, "v": "here"}


# ---------------------------------------------------------------------------------------
# Writes not yet ingested.

def test_pending_writes_are_refused(admin: psycopg.Connection[Any]) -> None:
    """The live table shows writes the trail does not hold yet: answers that read it would
    put them in the past (a keyless table with a pending INSERT and DELETE answered wrong
    with no error; a pending INSERT showed up in row_at's past)."""
    admin.execute("CREATE TABLE bag (v int); CREATE TABLE todo (id int PRIMARY KEY, v int); CREATE TABLE other (v int)")
    admin.execute("SELECT bemi.track('bag'), bemi.track('todo'), bemi.track('other')")
    admin.execute("INSERT INTO bag VALUES (1), (2); INSERT INTO todo VALUES (1, 1); INSERT INTO other VALUES (9)")
    ingest(admin)
    at = admin.execute("SELECT bemi.ingested_until() AS u").fetchone()["u"]  # type: ignore[index]
    admin.execute("INSERT INTO bag VALUES (3); DELETE FROM bag WHERE v = 1; INSERT INTO todo VALUES (2, 2)")
    assert refusal(admin, "SELECT * FROM bemi.table_at(NULL::bag, %s)", [at]) == PENDING
    assert refusal(admin, "SELECT * FROM bemi.table_at(NULL::todo, %s)", [at]) == PENDING
    assert refusal(admin, "SELECT bemi.row_at('todo', '2', %s)", [at]) == PENDING
    # Another table's pending writes are no reason to refuse.
    assert admin.execute("SELECT count(*) AS n FROM bemi.table_at(NULL::other, %s)", [at]).fetchone()["n"] == 1  # type: ignore[index]
    ingest(admin)
    assert sorted(r["v"] for r in admin.execute("SELECT * FROM bemi.table_at(NULL::bag, %s)", [at])) == [1, 2]
    assert row_at(admin, "todo", "2", at) is None


def test_pending_writes_are_seen_while_a_worker_streams(dsn: str, admin: psycopg.Connection[Any]) -> None:
    """The slot is in use by the streaming worker: the check reads a temporary copy of it."""
    admin.execute("CREATE TABLE bag (v int); SELECT bemi.track('bag'); INSERT INTO bag VALUES (1)")
    ingest(admin)
    at = admin.execute("SELECT bemi.ingested_until() AS u").fetchone()["u"]  # type: ignore[index]
    process = start(dsn, "--interval", "0.1")
    try:
        deadline = time.monotonic() + 60
        while not admin.execute("SELECT active FROM pg_replication_slots WHERE slot_name = bemi.slot_name()").fetchone()["active"]:  # type: ignore[index]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with psycopg.connect(dsn, autocommit=True) as app:
            app.execute("SET synchronous_commit = off")
            with app.transaction():
                bemi_pg.set_context(app, {"op": 1})
                app.execute("INSERT INTO bag SELECT generate_series(2, 50000)")
        answers = set()
        while time.monotonic() < deadline:
            state = refusal(admin, "SELECT count(*) FROM bemi.table_at(NULL::bag, %s)", [at])
            answers.add(state)
            if state is None:
                break
        # Refused while the insert was pending, answered once stored: never a wrong count.
        assert None in answers and answers <= {None, PENDING}
        assert admin.execute("SELECT count(*) AS n FROM bemi.table_at(NULL::bag, %s)", [at]).fetchone()["n"] == 1  # type: ignore[index]
        assert admin.execute("SELECT count(*) AS n FROM pg_replication_slots WHERE slot_name LIKE 'bemi_check_%'").fetchone()["n"] == 0  # type: ignore[index]
    finally:
        process.send_signal(signal.SIGINT)
        process.wait()
