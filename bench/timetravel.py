"""Time travel: bemi.row_at on a row with a long history, and bemi.table_at of a table of which
a tenth changed since the moment asked for, each next to a plain SELECT of the same rows; and
bemi.revert of that tenth (rolled back). Then the same through bemi_pg's helpers, with the
trail in this database and with the trail copied into a database of its own (trail=).

The trail is generated straight into bemi.changes (INSERT ... SELECT), not ingested: one row
("history", id 1) with HISTORY[mode] UPDATEs a second apart, and TABLE_ROWS[mode] rows of
"todo" of which every tenth has an UPDATE after the moment (done: false -> true). The tables
are filled, as they are after those changes, before they are tracked, so the slot holds none of it. Runs in a database of its own.

    python -m bench.timetravel --quick    # this workload alone, on a throwaway server
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

import bemi_pg
from bemi_pg.steps import pipe
from bench import server
from bench.report import Cell, Results

HISTORY = {"latest": 1_000_000, "quick": 100_000}  # by bench mode (run.py's Sizes.name)
TABLE_ROWS = {"latest": 100_000, "quick": 10_000}
DATABASE = "timetravel"
TRAIL_DATABASE = "timetravel_trail"  # the same trail, in a database of its own
START = "2026-01-01 00:00+00"  # the first generated change; tracking "began" a day before
ROUNDS = 200  # row_at calls timed (the median is reported)
TABLE_ROUNDS = 5

SETUP = [
    "CREATE TABLE history (id int PRIMARY KEY, n bigint NOT NULL, note text NOT NULL)",
    "INSERT INTO history VALUES (1, %(history)s, 'the row with a long history')",
    "CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL, owner text NOT NULL, done boolean NOT NULL)",
    "INSERT INTO todo SELECT g, 'task of ' || g, 'user ' || g %% 1000, g %% 10 = 0 FROM generate_series(1, %(rows)s) g",
]

# One row's history: UPDATE i sets n from i - 1 to i, a second after the previous one.
HISTORY_TRAIL = """
INSERT INTO bemi.changes (schema, "table", primary_key, operation, before, after, committed_at,
                          transaction_id, position, ordinal)
SELECT 'public', 'history', '1', 'UPDATE',
       jsonb_build_object('id', 1, 'n', g - 1, 'note', 'the row with a long history'),
       jsonb_build_object('id', 1, 'n', g, 'note', 'the row with a long history'),
       %(start)s::timestamptz + g * interval '1 second', g, ('1/' || to_hex(g))::pg_lsn, 1
FROM generate_series(1, %(history)s) AS g
"""

# Every tenth todo row was done = false at the moment and was set done afterwards.
TABLE_TRAIL = """
INSERT INTO bemi.changes (schema, "table", primary_key, operation, before, after, committed_at,
                          transaction_id, position, ordinal)
SELECT 'public', 'todo', g::text, 'UPDATE',
       jsonb_build_object('id', g, 'task', 'task of ' || g, 'owner', 'user ' || g %% 1000, 'done', false),
       jsonb_build_object('id', g, 'task', 'task of ' || g, 'owner', 'user ' || g %% 1000, 'done', true),
       %(at)s::timestamptz + g * interval '1 millisecond', %(history)s + g, ('2/' || to_hex(g))::pg_lsn, 1
FROM generate_series(10, %(rows)s, 10) AS g
"""


def timetravel(dsn: str, results: Results, mode: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Times row_at and table_at next to plain SELECTs; adds two rows and a target to results."""
    with server.connect(dsn) as admin:
        admin.execute(f"CREATE DATABASE {DATABASE}")
        admin.execute(f"CREATE DATABASE {TRAIL_DATABASE}")
    try:
        measured = measure(psycopg.conninfo.make_conninfo(dsn, dbname=DATABASE),
                           psycopg.conninfo.make_conninfo(dsn, dbname=TRAIL_DATABASE), HISTORY[mode], TABLE_ROWS[mode], log)
    finally:
        with server.connect(dsn) as admin:
            admin.execute(f"DROP DATABASE {DATABASE} WITH (FORCE)")
            admin.execute(f"DROP DATABASE {TRAIL_DATABASE} WITH (FORCE)")
    row = results.row("row_at", f"Time travel: row_at, a row with {measured['history']:,} changes", "ms",
                      better="lower", ratio_to="plain SELECT")
    row.cells["bemi.row_at"] = Cell(measured["row_at"], {"plain SELECT": measured["row_at"] / measured["row_select"]})
    row.cells["plain SELECT"] = Cell(measured["row_select"])
    helpers(row, measured, "row_at")
    row = results.row("table_at", f"Time travel: table_at, {measured['rows']:,} rows, a tenth changed since", "ms",
                      better="lower", ratio_to="plain SELECT")
    row.cells["bemi.table_at"] = Cell(measured["table_at"], {"plain SELECT": measured["table_at"] / measured["table_select"]})
    row.cells["plain SELECT"] = Cell(measured["table_select"])
    helpers(row, measured, "table_at")
    row = results.row("revert", f"Revert: {measured['rows'] // 10:,} rows updated since, one bemi.revert", "ms", better="lower")
    row.cells["bemi.revert"] = Cell(measured["revert"])
    helpers(row, measured, "revert")
    results.target("Time travel row_at", "< 5 ms, on the (schema, table, primary_key) index",
                   f"{measured['row_at']:.2f} ms, index {'used' if measured['row_at_index'] else 'NOT used'}",
                   measured["row_at"] < 5 and measured["row_at_index"])
    log(f"  row_at {measured['row_at']:.3f} ms (plain SELECT {measured['row_select']:.3f} ms); "
        f"table_at {measured['table_at']:.1f} ms (plain SELECT {measured['table_select']:.1f} ms); "
        f"revert of {measured['rows'] // 10:,} rows {measured['revert']:.0f} ms")
    log("  bemi_pg, trail here / trail database: " + "; ".join(
        f"{name} {measured['here'][name]:.1f} / {measured['trail'][name]:.1f} ms" for name in ("row_at", "table_at", "revert")))
    return measured


def helpers(row: Any, measured: dict[str, Any], name: str) -> None:
    """The bemi_pg helper's cells of a row: the trail here, and in a database of its own (its
    ratio is to the trail here; the row's ratio_to names the SQL function's)."""
    here, there = measured["here"][name], measured["trail"][name]
    row.cells["bemi_pg, trail here"] = Cell(here)
    row.cells["bemi_pg, trail database"] = Cell(there, {"bemi_pg, trail here": there / here})


def measure(dsn: str, trail_dsn: str, history: int, rows: int, log: Callable[[str], None]) -> dict[str, Any]:
    with server.connect(dsn) as conn:
        conn.execute("CREATE EXTENSION bemi")
        conn.execute("SELECT bemi.create_slot()")
        for statement in SETUP:
            conn.execute(statement, {"history": history, "rows": rows})
        conn.execute("SELECT bemi.track('history'), bemi.track('todo')")
        conn.execute("UPDATE bemi.tracking SET tracked_at = %s::timestamptz - interval '1 day'", [START])
        conn.execute("SELECT bemi.create_partitions(%s, now())", [START])
        log(f"  generating a history of {history:,} changes of one row and {rows // 10:,} changes of a {rows:,}-row table")
        conn.execute(HISTORY_TRAIL, {"start": START, "history": history})
        # The moment asked for: halfway through the history; the table's changes come after it.
        at = conn.execute("SELECT %s::timestamptz + %s * interval '1 second' / 2", [START, history]).fetchone()[0]  # type: ignore[index]
        conn.execute(TABLE_TRAIL, {"at": at, "history": history, "rows": rows})
        conn.execute("VACUUM ANALYZE")
        # Nothing to store: the trail is current up to now. Time travel's check for writes not
        # yet ingested peeks the slot, which decodes from its restart_lsn; that moves on only past
        # a snapshot of running transactions (the background writer logs one every 15 s, a
        # CHECKPOINT one at once), so right after the generated trail's 800 MB of WAL every check
        # re-read them (1.4 s of a 1.5 s table_at). A running system reads 15 s of WAL at most.
        conn.execute("CHECKPOINT")
        conn.execute("SELECT bemi.ingest()")
        conn.execute("SELECT bemi.ingest()")

        row_at = median_ms(query(conn, "SELECT bemi.row_at('history', '1', %s)", [at]), ROUNDS)
        row_select = median_ms(query(conn, "SELECT to_jsonb(h) FROM history h WHERE id = 1", None), ROUNDS)
        plan = conn.execute("EXPLAIN (FORMAT JSON) SELECT * FROM bemi.row_event(NULL, 'public', 'history', '1', %s, true)",
                            [at]).fetchone()[0]  # type: ignore[index]
        expected = conn.execute("SELECT bemi.row_at('history', '1', %s) ->> 'n'", [at]).fetchone()[0]  # type: ignore[index]
        if int(expected) != history // 2:
            raise AssertionError(f"row_at gave n = {expected}, expected {history // 2}")
        table_at = median_ms(query(conn, "SELECT count(*) FROM bemi.table_at(NULL::todo, %s) WHERE NOT done", [at]), TABLE_ROUNDS)
        table_select = median_ms(query(conn, "SELECT count(*) FROM todo WHERE NOT done", None), TABLE_ROUNDS)
        done_then = conn.execute("SELECT count(*) FILTER (WHERE done) FROM bemi.table_at(NULL::todo, %s)", [at]).fetchone()[0]  # type: ignore[index]
        if done_then != 0:
            raise AssertionError(f"table_at found {done_then} rows done at the moment, expected none")
        # Reverting the tenth that changed: one transaction, rolled back.
        with conn.transaction(force_rollback=True):
            started = time.perf_counter()
            reverted = conn.execute("SELECT count(*) FROM bemi.revert(ARRAY(SELECT id FROM bemi.changes "
                                    "WHERE \"table\" = 'todo'))").fetchone()[0]  # type: ignore[index]
            revert_ms = (time.perf_counter() - started) * 1000
        if reverted != rows // 10:
            raise AssertionError(f"revert dealt with {reverted} rows, expected {rows // 10}")
        with server.connect(trail_dsn) as trail:
            copy_trail(conn, trail)
            here, there = (through_helpers(conn, at, other) for other in (None, trail))
    if here["answers"] != there["answers"]:
        raise AssertionError(f"the trail database answered {there['answers']}, the trail here {here['answers']}")
    return {"history": history, "rows": rows, "row_at": row_at, "row_select": row_select,
            "row_at_index": "Index" in str(plan) and "Seq Scan" not in str(plan),
            "table_at": table_at, "table_select": table_select, "revert": revert_ms, "here": here, "trail": there}


def copy_trail(conn: psycopg.Connection[Any], trail: psycopg.Connection[Any]) -> None:
    """The trail and its progress, copied into the trail database (as docs/trail-database.md moves one)."""
    trail.execute("CREATE EXTENSION bemi")
    trail.execute("SELECT bemi.create_partitions(%s, now())", [START])
    for table in (sql.SQL("bemi.changes"), sql.SQL("bemi.progress")):
        pipe(conn, sql.SQL("SELECT * FROM {}").format(table), None, trail, table)
    trail.execute("VACUUM ANALYZE bemi.changes")


def through_helpers(conn: psycopg.Connection[Any], at: Any, trail: psycopg.Connection[Any] | None) -> dict[str, Any]:
    """row_at, table_at and revert (rolled back) through bemi_pg's helpers: times in ms, and
    what they answered."""
    ids = [r[0] for r in conn.execute("SELECT id FROM bemi.changes WHERE \"table\" = 'todo'")]

    def revert() -> Any:
        with conn.transaction(force_rollback=True):
            return len(bemi_pg.revert(conn, change_ids=ids, trail=trail))

    calls = {"row_at": lambda: bemi_pg.row_at(conn, "history", 1, at, trail=trail)["n"],
             "table_at": lambda: sum(not r["done"] for r in bemi_pg.table_at(conn, "todo", at, trail=trail)),
             "revert": revert}
    rounds = {"row_at": ROUNDS, "table_at": TABLE_ROUNDS, "revert": 1}
    return {**{name: median_ms(call, rounds[name]) for name, call in calls.items()},
            "answers": {name: call() for name, call in calls.items()}}


def query(conn: psycopg.Connection[Any], sql: str, params: Any) -> Callable[[], Any]:
    return lambda: conn.execute(sql, params).fetchall()


def median_ms(call: Callable[[], Any], rounds: int) -> float:
    """The median time of a call in milliseconds, after one warm-up run."""
    call()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.timetravel", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"{HISTORY['quick']:,}-change history instead of {HISTORY['latest']:,}")
    args = p.parse_args(argv)
    results = Results(mode="quick" if args.quick else "full", date="", machine={})
    with server.bench_server() as dsn:
        timetravel(dsn, results, "quick" if args.quick else "latest", lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
