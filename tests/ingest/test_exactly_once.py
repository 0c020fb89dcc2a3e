"""Exactly once: an ingest interrupted at each of its steps, then run again, stores every
change once. The interruptions are real: the ingest's backend is terminated with
pg_terminate_backend while it waits on a lock this test holds, or its transaction rolls back."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

import bemi_pg
from tests.helpers.trail import changes, ingest

TRANSACTIONS = 6


def make_changes(conn: psycopg.Connection[Any]) -> list[tuple[str, str, dict[str, int]]]:
    """Six transactions of three changes each; returns them as (key, operation, context)."""
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text); SELECT bemi.track('t')")
    conn.commit()
    made = []
    for tx in range(TRANSACTIONS):
        with bemi_pg.with_context(conn, {"tx": tx}):
            conn.execute("INSERT INTO t VALUES (%s, 'a'), (%s, 'b')", [2 * tx, 2 * tx + 1])
            conn.execute("UPDATE t SET v = 'c' WHERE id = %s", [2 * tx])
        made += [(str(2 * tx), "CREATE", {"tx": tx}), (str(2 * tx + 1), "CREATE", {"tx": tx}),
                 (str(2 * tx), "UPDATE", {"tx": tx})]
    return made


def stored(admin: psycopg.Connection[Any]) -> list[tuple[str, str, dict[str, int]]]:
    return [(r["primary_key"], r["operation"], r["context"]) for r in changes(admin, "primary_key", "operation", "context")]


def stored_keys(admin: psycopg.Connection[Any]) -> list[tuple[str, int]]:
    return [(r["position"], r["ordinal"]) for r in changes(admin, "position", "ordinal")]


def assert_slot_behind_progress(admin: psycopg.Connection[Any]) -> None:
    """The slot is never ahead of what a committed ingest stored."""
    row = admin.execute(
        "SELECT s.confirmed_flush_lsn <= p.lsn AS behind FROM pg_replication_slots s "
        "JOIN bemi.progress p USING (slot_name) WHERE s.slot_name = bemi.slot_name()").fetchone()
    assert row is not None and row["behind"]


# Where the ingest is made to wait: a lock this test holds at that step.
BLOCKERS = {
    "before slot advance": "SELECT pg_advisory_xact_lock(hashtext('bemi.ingest'))",
    "before insert": "LOCK TABLE bemi.changes IN SHARE MODE",
    "after insert": "SELECT FROM bemi.progress FOR UPDATE",
}


@pytest.mark.parametrize("step", BLOCKERS)
def test_ingest_terminated_at_each_step_then_rerun(
        step: str, dsn: str, conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> None:
    made = make_changes(conn)
    while not stored(admin):  # a first, committed batch: the slot has somewhere to go
        admin.execute("SELECT bemi.ingest(4)")
    first = len(stored(admin))
    assert 0 < first < len(made)
    with psycopg.connect(dsn) as blocker, psycopg.connect(dsn, autocommit=True) as victim:
        blocker.execute(BLOCKERS[step])
        pid = victim.info.backend_pid
        outcome: list[BaseException] = []
        thread = threading.Thread(target=lambda: record_failure(outcome, victim, "SELECT bemi.ingest(4)"))
        thread.start()
        assert wait_until(admin, "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", [pid])
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        thread.join()
        blocker.rollback()
    assert len(outcome) == 1 and isinstance(outcome[0], psycopg.OperationalError)
    assert len(stored(admin)) == first
    assert_slot_behind_progress(admin)
    ingest(admin, batch=4)
    assert stored(admin) == made


def record_failure(outcome: list[BaseException], conn: psycopg.Connection[Any], query: str) -> None:
    try:
        conn.execute(query)
    except psycopg.Error as error:
        outcome.append(error)


def wait_until(admin: psycopg.Connection[Any], query: str, params: list[Any]) -> bool:
    """Polls a boolean query, generously bounded."""
    for _ in range(2000):
        row = admin.execute(query, params).fetchone()
        if row is not None and list(row.values())[0]:
            return True
        admin.execute("SELECT pg_sleep(0.01)")
    return False


def test_ingest_rolled_back_after_insert_then_rerun(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> None:
    made = make_changes(conn)
    with admin.transaction(force_rollback=True):
        assert admin.execute("SELECT bemi.ingest() AS n").fetchone() == {"n": len(made)}
    assert stored(admin) == []
    assert_slot_behind_progress(admin)
    assert ingest(admin) == len(made)
    assert stored(admin) == made


def test_several_ingests_in_one_transaction_rolled_back(
        conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> None:
    """The slot moves outside transactions: an ingest must not move it up to progress that an
    earlier ingest of the same, still open, transaction wrote."""
    made = make_changes(conn)
    with admin.transaction(force_rollback=True):
        for _ in range(4):
            admin.execute("SELECT bemi.ingest(10)")
        assert 0 < len(stored(admin)) == len(set(stored_keys(admin)))
    assert stored(admin) == []
    assert_slot_behind_progress(admin)
    ingest(admin, batch=3)
    assert stored(admin) == made


def test_ingest_after_commit_before_slot_advance(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> None:
    """After a committed ingest the slot still holds its changes (it moves at the next ingest):
    decoding them again stores nothing twice, and then the slot moves on."""
    made = make_changes(conn)
    admin.execute("SELECT bemi.ingest()")
    slot = admin.execute("SELECT confirmed_flush_lsn AS lsn FROM pg_replication_slots WHERE slot_name = bemi.slot_name()").fetchone()
    progress = admin.execute("SELECT lsn FROM bemi.progress").fetchone()
    assert slot is not None and progress is not None and slot["lsn"] < progress["lsn"]
    assert admin.execute("SELECT count(*) AS n FROM bemi.wal WHERE data ->> 'action' = 'I'").fetchone() == {"n": 12}
    assert admin.execute("SELECT bemi.ingest() AS n").fetchone() == {"n": 0}
    assert admin.execute("SELECT count(*) AS n FROM bemi.wal WHERE data ->> 'action' NOT IN ('B', 'C')").fetchone() == {"n": 0}
    assert stored(admin) == made
