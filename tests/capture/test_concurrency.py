"""Concurrency: transactions of several connections interleaved statement by statement, each
with its own contexts, and two ingests racing each other. Every change keeps exactly its own
statement's context and is stored once."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import psycopg

import bemi_pg
from tests.helpers.trail import changes, ingest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "stress"))
import scenarios  # noqa: E402

WRITERS, ROUNDS = 5, 4


def interleaved_writer(dsn: str, writer: int, barrier: threading.Barrier) -> None:
    """Each round: a transaction whose statements run in lockstep with the other writers',
    switching context between them; writers commit in a different order every round."""
    with psycopg.connect(dsn) as conn:
        for round_ in range(ROUNDS):
            key = writer * 100 + round_
            with bemi_pg.with_context(conn, {"writer": writer, "round": round_, "step": 1}):
                conn.execute("INSERT INTO t VALUES (%s, %s, %s, 1)", [key, writer, round_])
                barrier.wait()
                bemi_pg.set_context(conn, {"writer": writer, "round": round_, "step": 2})
                conn.execute("UPDATE t SET step = 2 WHERE id = %s", [key])
                barrier.wait()
                conn.execute("SELECT bemi.set_context(NULL)")
                conn.execute("UPDATE t SET step = 3 WHERE id = %s", [key])
                barrier.wait()
                for _ in range((writer + round_) % WRITERS):  # a different commit order each round
                    conn.execute("SELECT pg_sleep(0.01)")


def test_interleaved_transactions_keep_their_own_contexts(dsn: str, admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY, writer int, round int, step int); SELECT bemi.track('t')")
    barrier = threading.Barrier(WRITERS, timeout=60)
    threads = [threading.Thread(target=interleaved_writer, args=(dsn, w, barrier)) for w in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ingest(admin) == WRITERS * ROUNDS * 3
    for change in changes(admin, "after", "context"):
        row = change["after"]
        expected = {} if row["step"] == 3 else {"writer": row["writer"], "round": row["round"], "step": row["step"]}
        assert change["context"] == expected, change
    transactions = admin.execute(
        "SELECT count(DISTINCT transaction_id) AS n, count(DISTINCT (after ->> 'writer', after ->> 'round')) AS rows "
        "FROM bemi.changes").fetchone()
    assert transactions == {"n": WRITERS * ROUNDS, "rows": WRITERS * ROUNDS}


def racing_ingest(dsn: str, end: list[str], counts: list[int], errors: list[BaseException]) -> None:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not (end and scenarios.caught_up(dsn, end[0])):
                counts.append(conn.execute("SELECT bemi.ingest(7)").fetchone()[0])  # type: ignore[index]
    except BaseException as error:
        errors.append(error)


def test_two_ingests_racing_store_each_change_once(dsn: str) -> None:
    scenarios.prepare(dsn)
    end: list[str] = []  # set when the writers are done
    counts: list[list[int]] = [[], []]
    errors: list[BaseException] = []
    racers = [threading.Thread(target=racing_ingest, args=(dsn, end, c, errors)) for c in counts]
    for racer in racers:
        racer.start()
    with scenarios.Writers(dsn, 3, transactions=40) as load:
        pass
    end.append(scenarios.mark_end(dsn))
    for racer in racers:
        racer.join()
    assert errors == []
    tally = scenarios.tally(dsn, "two ingests racing", 1, load)
    assert tally.made > 0
    assert (tally.found, tally.missing, tally.duplicated) == (tally.made, 0, 0), tally
    assert sum(counts[0]) + sum(counts[1]) == tally.found
    assert sum(counts[0]) > 0 and sum(counts[1]) > 0
