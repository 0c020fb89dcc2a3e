"""Pruning a month of changes: bemi.retain drops the month's partition of the trail; the same
rows go by DELETE (then VACUUM, which a DELETE needs to give the space back) from an
unpartitioned copy of the trail with the same indexes.

Both trails hold the month (generated straight into its partition with INSERT ... SELECT) and
a fifth as many changes of the current month, which stay. Runs in a database of its own.

    python -m bench.prune --quick    # this workload alone, on a throwaway server
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg

from bench import server
from bench.report import Cell, Results

CHANGES = {"latest": 5_000_000, "quick": 100_000}  # by bench mode (run.py's Sizes.name)
DATABASE = "prune"
MONTH = ("2020-01-01 00:00+00", "2020-02-01 00:00+00")

# Changes shaped like the trail's: an UPDATE of a todo row (id g, or g modulo keys: a row
# changed again every keys changes) with its context, made by one of 1,000 users.
GENERATE = """
INSERT INTO bemi.changes (schema, "table", primary_key, operation, before, after, context, committed_at,
                          transaction_id, position, ordinal)
SELECT 'public', 'todo', r.k::text, 'UPDATE',
       jsonb_build_object('id', r.k, 'task', 'task of ' || r.k, 'owner', 'user ' || r.k %% 1000, 'is_completed', false, 'priority', g %% 5),
       jsonb_build_object('id', r.k, 'task', 'task of ' || r.k, 'owner', 'user ' || r.k %% 1000, 'is_completed', true, 'priority', g %% 5),
       jsonb_build_object('user_id', g %% 1000, 'endpoint', '/todo/' || r.k, 'method', 'PUT'),
       %(start)s::timestamptz + (g - %(first)s) * (%(span)s::interval / %(rows)s), g, ('0/' || to_hex(g))::pg_lsn, 1
FROM generate_series(%(first)s::bigint, %(first)s::bigint + %(rows)s - 1) AS g,
     LATERAL (SELECT CASE WHEN %(keys)s::bigint > 0 THEN g %% %(keys)s::bigint ELSE g END AS k) AS r
"""


def prune(dsn: str, results: Results, changes: int, log: Callable[[str], None]) -> dict[str, float]:
    """Times bemi.retain against DELETE (and VACUUM) of the same month; adds a row to results."""
    with server.connect(dsn) as admin:
        admin.execute(f"CREATE DATABASE {DATABASE}")
    try:
        measured = measure(psycopg.conninfo.make_conninfo(dsn, dbname=DATABASE), changes, log)
    finally:
        with server.connect(dsn) as admin:
            admin.execute(f"DROP DATABASE {DATABASE} WITH (FORCE)")
    row = results.row("prune", f"Prune a month of {changes:,} changes", "s", better="lower", ratio_to="DELETE")
    row.cells["bemi.retain"] = Cell(measured["retain"], {"DELETE": measured["retain"] / measured["delete"]})
    row.cells["DELETE"] = Cell(measured["delete"])
    row.cells["DELETE + VACUUM"] = Cell(measured["delete"] + measured["vacuum"])
    results.target("Prune a month", "bemi.retain faster than DELETE",
                   f"{measured['retain']:.3f} s vs {measured['delete']:.3f} s", measured["retain"] < measured["delete"])
    log(f"  bemi.retain {measured['retain']:.3f} s, DELETE {measured['delete']:.3f} s "
        f"(+ VACUUM {measured['vacuum']:.3f} s): retain takes {measured['retain'] / measured['delete']:.4f} of the DELETE")
    return measured


def measure(dsn: str, changes: int, log: Callable[[str], None]) -> dict[str, float]:
    with server.connect(dsn) as conn:
        conn.execute("CREATE EXTENSION bemi")  # no slot: nothing to wait for before retain
        log(f"  generating {changes:,} changes of {MONTH[0][:7]} and {changes // 5:,} of this month")
        conn.execute("SELECT bemi.create_partitions(%s, %s)", [MONTH[0], MONTH[0]])
        conn.execute("SELECT bemi.create_partitions(now(), now())")
        conn.execute(GENERATE, {"start": MONTH[0], "span": "31 days", "first": 1, "rows": changes, "keys": 0})
        this_month = conn.execute("SELECT date_trunc('month', now())").fetchone()[0]  # type: ignore[index]
        conn.execute(GENERATE, {"start": this_month, "span": "1 hour", "first": changes + 1, "rows": changes // 5, "keys": 0})
        conn.execute("CREATE TABLE flat (LIKE bemi.changes INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)")
        conn.execute("INSERT INTO flat SELECT * FROM bemi.changes")
        conn.execute("VACUUM (FREEZE, ANALYZE) flat")
        conn.execute("VACUUM (FREEZE, ANALYZE) bemi.changes")

        retain = timed(conn, "SELECT count(*) FROM bemi.retain('30 days')")
        kept = count(conn, "SELECT count(*) FROM bemi.changes")
        delete = timed(conn, "DELETE FROM flat WHERE committed_at >= %s AND committed_at < %s", MONTH)
        vacuum = timed(conn, "VACUUM flat")
        left = count(conn, "SELECT count(*) FROM flat")
    if kept != left or kept != changes // 5:
        raise AssertionError(f"retain kept {kept:,} changes, DELETE {left:,}; expected {changes // 5:,}")
    return {"retain": retain, "delete": delete, "vacuum": vacuum, "changes": changes}


def timed(conn: psycopg.Connection[Any], statement: str, params: Any = None) -> float:
    """Seconds for one statement in its own transaction, after a checkpoint."""
    conn.execute("CHECKPOINT")
    started = time.perf_counter()
    conn.execute(statement, params).close()
    return time.perf_counter() - started


def count(conn: psycopg.Connection[Any], query: str) -> int:
    return int((conn.execute(query).fetchone() or [0])[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.prune", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"{CHANGES['quick']:,} changes instead of {CHANGES['latest']:,}")
    args = p.parse_args(argv)
    results = Results(mode="quick" if args.quick else "full", date="", machine={})
    with server.bench_server() as dsn:
        prune(dsn, results, CHANGES["quick" if args.quick else "latest"], lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
