"""The trail at scale: the history of one row and a context containment query on a trail of
CHANGES[mode] changes in ten monthly partitions, over all of it and over one month, with the
partitions each plan scans (partition pruning: the one-month queries scan one); then each page
of bemi-pg serve on the same trail (bench.serve).

The trail is generated straight into bemi.changes (INSERT ... SELECT, prune.GENERATE): a tenth
of the changes in each month, each row changed ten times a month (100 changes in all), contexts
from 1,000 users. Runs in a database of its own.

    python -m bench.scale --quick    # this workload alone, on a throwaway server
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from bench import serve, server
from bench.prune import GENERATE
from bench.report import Cell, Results
from bench.timetravel import median_ms, query

CHANGES = {"latest": 10_000_000, "quick": 500_000}  # by bench mode (run.py's Sizes.name)
MONTHS = 10
CHANGES_OF_A_ROW = 10  # a month
DATABASE = "scale"
START = "2025-01-01 00:00+00"
ONE_MONTH = ("2025-04-01 00:00+00", "2025-05-01 00:00+00")
ROUNDS = 20

HISTORY = """SELECT id, committed_at, operation, before, after FROM bemi.changes
WHERE schema = 'public' AND "table" = 'todo' AND primary_key = '4242'{} ORDER BY committed_at, id"""
CONTEXT = """SELECT count(*) FROM bemi.changes WHERE context @> '{{"user_id": 42}}'{}"""
MONTH_BOUND = f" AND committed_at >= '{ONE_MONTH[0]}' AND committed_at < '{ONE_MONTH[1]}'"
QUERIES = {"row history": HISTORY.format(""), "row history, one month": HISTORY.format(MONTH_BOUND),
           "context @>": CONTEXT.format(""), "context @>, one month": CONTEXT.format(MONTH_BOUND)}


def scale(dsn: str, results: Results, mode: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Times the four queries; adds two rows and a target to results."""
    with server.connect(dsn) as admin:
        admin.execute(f"CREATE DATABASE {DATABASE}")
    try:
        measured = measure(psycopg.conninfo.make_conninfo(dsn, dbname=DATABASE), CHANGES[mode], log)
        log("  bemi-pg serve: each page, next to its SQL query")
        measured["serve"] = serve.pages(psycopg.conninfo.make_conninfo(dsn, dbname=DATABASE), results,
                                        CHANGES[mode] // MONTHS // CHANGES_OF_A_ROW, START, log)
    finally:
        with server.connect(dsn) as admin:
            admin.execute(f"DROP DATABASE {DATABASE} WITH (FORCE)")
    total = measured["partitions"]
    for key, label in (("row history", f"History of one row ({measured['row history']['rows']} changes)"),
                       ("context @>", f"Context containment count ({measured['context @>']['rows']:,} changes)")):
        month = f"{key}, one month"
        row = results.row(f"scale {key}", f"{label}, a {measured['changes']:,}-change trail in {total} partitions; "
                          f"partitions scanned: {measured[key]['scanned']} (all months), {measured[month]['scanned']} "
                          "(one month)", "ms", better="lower")
        row.cells["all months"] = Cell(measured[key]["ms"])
        row.cells["one month"] = Cell(measured[month]["ms"])
    pruned = all(measured[f"{key}, one month"]["scanned"] == 1 for key in ("row history", "context @>"))
    results.target("Trail at scale: one month of history", "partition pruning: one partition scanned",
                   ", ".join(f"{key}: {measured[key]['scanned']} of {total}" for key in QUERIES), pruned)
    for key in QUERIES:
        log(f"  {key}: {measured[key]['ms']:.2f} ms, {measured[key]['rows']:,} rows, "
            f"{measured[key]['scanned']} of {total} partitions scanned")
    return measured


def measure(dsn: str, changes: int, log: Callable[[str], None]) -> dict[str, Any]:
    per_month = changes // MONTHS
    keys = per_month // CHANGES_OF_A_ROW
    with server.connect(dsn) as conn:
        conn.execute("CREATE EXTENSION bemi")
        log(f"  generating {changes:,} changes in {MONTHS} months ({per_month:,} a month, of {keys:,} rows)")
        for month in range(MONTHS):
            start = conn.execute("SELECT %s::timestamptz + %s * interval '1 month'", [START, month]).fetchone()[0]  # type: ignore[index]
            conn.execute("SELECT bemi.create_partitions(%s, %s)", [start, start])
            conn.execute(GENERATE, {"start": start, "span": "28 days", "first": month * per_month + 1,
                                    "rows": per_month, "keys": keys})
        conn.execute("VACUUM ANALYZE bemi.changes")  # as autovacuum would: the GIN pending lists merged
        partitions = len(conn.execute("SELECT 1 FROM bemi.partitions").fetchall())
        measured: dict[str, Any] = {"changes": changes, "partitions": partitions}
        for key, sql in QUERIES.items():
            plan = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}").fetchone()[0][0]["Plan"]  # type: ignore[index]
            rows = conn.execute(sql).fetchall()
            measured[key] = {"ms": median_ms(query(conn, sql, None), ROUNDS), "scanned": len(set(scanned(plan))),
                             "rows": rows[0][0] if key.startswith("context") else len(rows),
                             "plan": conn.execute(f"EXPLAIN (COSTS OFF) {sql}").fetchall()}
    for key in ("row history", "context @>"):
        if measured[f"{key}, one month"]["rows"] * MONTHS != measured[key]["rows"]:
            raise AssertionError(f"{key}: {measured[key]['rows']} rows, one month {measured[f'{key}, one month']['rows']}")
    return measured


def scanned(plan: dict[str, Any]) -> Iterator[str]:
    """The partitions a plan read (ANALYZE: only nodes that ran)."""
    if "Relation Name" in plan and plan.get("Actual Loops", 1):
        yield plan["Relation Name"]
    for child in plan.get("Plans", []):
        yield from scanned(child)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"{CHANGES['quick']:,} changes instead of {CHANGES['latest']:,}")
    args = p.parse_args(argv)
    results = Results(mode="quick" if args.quick else "full", date="", machine={})
    with server.bench_server() as dsn:
        measured = scale(dsn, results, "quick" if args.quick else "latest", lambda line: print(line, flush=True))
    for key in ("row history, one month", "context @>, one month"):
        print(f"\n{key}:\n" + "\n".join(line for line, in measured[key]["plan"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
