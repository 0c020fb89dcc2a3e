"""Ingest into each kind of trail: the same workload streamed by ``bemi-pg worker --drain`` into

1. the local partitioned trail (1.1's ``bemi.changes``, range-partitioned by committed_at);
2. a local unpartitioned trail: a bench-only stand-in for 1.0's unpartitioned trail, a plain
   table made by ``CREATE TABLE ... (LIKE bemi.changes INCLUDING ALL)`` (same columns,
   defaults, identity, CHECK and index definitions, the primary key and
   ``UNIQUE (position, ordinal, committed_at)`` included; checked before measuring), put in
   place under the name ``bemi.changes`` for its runs (bemi.store inserts by name);
3. a trail database on the same server (``bemi-pg install --trail-only``), the worker with
   ``--trail-dsn``.

Each run writes W3's workload (bench/ingest.py) from a new slot and drains it into an emptied
trail. The three run in turn, in a different order each round; the medians are reported, with
1 and 3 as a ratio of 2 (the issue's target: within 10 %). The partitions the workload's
commit times need exist before the first run, so no run pays for creating them (ingest
creates a partition once a period).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from typing import Any

import psycopg

from bemi_pg import install as installer
from bench import ingest, server
from bench.report import Cell, Results
from bench.variants import BEMI

PARTITIONED, UNPARTITIONED, DATABASE = "partitioned", "unpartitioned", "database"
KINDS = (PARTITIONED, UNPARTITIONED, DATABASE)
LABELS = {
    PARTITIONED: "local partitioned trail (the default)",
    UNPARTITIONED: "local unpartitioned trail (bench-only stand-in for 1.0's, same indexes)",
    DATABASE: "trail database on the same server (--trail-dsn)",
}
TRAIL_DATABASE = "trail"
FLAT = "changes_flat"  # the unpartitioned trail, while it is not in place

# What a trail table is made of, as sorted text: columns (type, NOT NULL, identity, default),
# CHECK constraints, and index definitions without their names.
SHAPE = """
SELECT array_agg(d ORDER BY d) FROM (
  SELECT 'column ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
         || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END || ' identity ' || a.attidentity::text
         || coalesce(' default ' || pg_get_expr(f.adbin, f.adrelid), '') AS d
  FROM pg_attribute a LEFT JOIN pg_attrdef f ON f.adrelid = a.attrelid AND f.adnum = a.attnum
  WHERE a.attrelid = %(t)s::regclass AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT 'check ' || pg_get_constraintdef(c.oid) FROM pg_constraint c WHERE c.conrelid = %(t)s::regclass AND c.contype = 'c'
  UNION ALL
  SELECT CASE WHEN i.indisprimary THEN 'primary key' WHEN i.indisunique THEN 'unique' ELSE 'index' END
         || substring(pg_get_indexdef(i.indexrelid) FROM ' USING .*')
  FROM pg_index i WHERE i.indrelid = %(t)s::regclass) AS shape
"""


def trails(dsn: str, results: Results, *, changes: int, rounds: int, limit: float,
           log: Callable[[str], None]) -> dict[str, Any]:
    """Changes per second of the worker into each kind of trail; adds the rows and targets."""
    trail_dsn = psycopg.conninfo.make_conninfo(dsn, dbname=TRAIL_DATABASE)
    with server.connect(dsn) as admin:
        admin.execute(f"CREATE DATABASE {TRAIL_DATABASE}")
    try:
        with server.connect(dsn) as conn, server.connect(trail_dsn) as trail:
            installer.install(trail, trail_only=True)  # what bemi-pg install --trail-only runs
            prepare(conn, trail)
            log(f"  trails: {changes:,} changes a run, {rounds} rounds, load average "
                f"{[round(x, 2) for x in os.getloadavg()]}")
            runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
            for number in range(rounds):
                for kind in KINDS[number % len(KINDS):] + KINDS[:number % len(KINDS)]:
                    run = ingest_once((dsn, trail_dsn), conn, trail, kind, changes, limit)
                    runs[kind].append(run)
                    log(f"  trails round {number + 1}, {kind}: {run['rate']:,.0f} changes/s ({run['changes']:,} "
                        f"in {run['seconds']:.1f} s, {run['stored']:,} of {run['expected']:,} stored, "
                        f"load average {run['load']:.2f})")
            conn.execute(f"DROP TABLE bemi.{FLAT}")
            ingest.fresh_slot(conn)
    finally:
        with server.connect(dsn) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {TRAIL_DATABASE} WITH (FORCE)")
    return report(results, runs, rounds, log)


def prepare(conn: psycopg.Connection[Any], trail: psycopg.Connection[Any]) -> None:
    """The partitions the runs need, in both databases, and the unpartitioned trail."""
    for db in (conn, trail):
        db.execute("SELECT count(*) FROM bemi.create_partitions(now() - interval '1 day', "
                   "now() + 2 * bemi.partition_interval())")
    conn.execute(f"CREATE TABLE bemi.{FLAT} (LIKE bemi.changes INCLUDING ALL)")
    # The keys and indexes are each partition's own (bemi.index_partition), not bemi.changes'.
    conn.execute(f"SELECT bemi.index_partition('bemi.{FLAT}')")
    partition = conn.execute("SELECT p.partition::text FROM bemi.partitions AS p LIMIT 1").fetchone()[0]  # type: ignore[index]
    keyed = ("primary key", "unique", "index")
    partitioned = sorted([d for d in shape(conn, "bemi.changes") if not d.startswith(keyed)]
                         + [d for d in shape(conn, partition) if d.startswith(keyed)])
    flat = sorted(shape(conn, f"bemi.{FLAT}"))
    if partitioned != flat or not any(d.startswith("unique") and "committed_at" in d for d in flat):
        raise AssertionError(f"the unpartitioned trail differs from bemi.changes and its partitions:\n{partitioned}\n{flat}")


def shape(conn: psycopg.Connection[Any], table: str) -> list[str]:
    return list((conn.execute(SHAPE, {"t": table}).fetchone() or [[]])[0])


def swap(conn: psycopg.Connection[Any]) -> None:
    """Puts the unpartitioned trail in place of the partitioned one, or back."""
    with conn.transaction():
        conn.execute("ALTER TABLE bemi.changes RENAME TO changes_swapping")
        conn.execute(f"ALTER TABLE bemi.{FLAT} RENAME TO changes")
        conn.execute(f"ALTER TABLE bemi.changes_swapping RENAME TO {FLAT}")


def ingest_once(dsns: tuple[str, str], conn: psycopg.Connection[Any], trail: psycopg.Connection[Any], kind: str,
                changes: int, limit: float) -> dict[str, float]:
    """W3's workload written from a new slot, then drained by the worker into an empty trail
    of this kind (source and trail database: ``dsns``, ``conn`` and ``trail``). Each run
    writes its own WAL: a copy of one slot would also decode every earlier run's trail writes."""
    into = trail if kind == DATABASE else conn
    if kind == UNPARTITIONED:
        swap(conn)
    try:
        ingest.fresh_slot(conn)  # empties the local trail (whichever is in place) and the table
        if kind == DATABASE:
            trail.execute("TRUNCATE bemi.changes RESTART IDENTITY")
            trail.execute("DELETE FROM bemi.progress")  # the worker starts where the slot is
        expected = ingest.mixed_workload(conn, changes)
        conn.execute("CHECKPOINT")
        # A source's trail is in one place at a time: a local run brings it back (--trail-here).
        worker = ingest.run_worker(dsns[0], limit, *(["--trail-dsn", dsns[1]] if kind == DATABASE else ["--trail-here"]))
        stored = into.execute("SELECT count(*) FROM bemi.changes").fetchone()[0]  # type: ignore[index]
    finally:
        if kind == UNPARTITIONED:
            swap(conn)
    return {**worker, "expected": expected, "stored": stored, "rate": worker["changes"] / worker["seconds"],
            "load": os.getloadavg()[0]}


def report(results: Results, runs: dict[str, list[dict[str, float]]], rounds: int,
           log: Callable[[str], None]) -> dict[str, Any]:
    expected = runs[PARTITIONED][0]["expected"]
    rates = {kind: [run["rate"] for run in runs[kind]] for kind in KINDS}
    median = {kind: statistics.median(rates[kind]) for kind in KINDS}
    complete = all(run["stored"] == run["changes"] == run["expected"] for kind in KINDS for run in runs[kind])
    done = "" if complete else " (NOT every change stored in every run: see the details)"
    for kind in KINDS:
        ratios = {} if kind == UNPARTITIONED else {"unpartitioned": median[kind] / median[UNPARTITIONED]}
        results.row(f"trails_{kind}", f"Ingest by bemi-pg worker into the {LABELS[kind]}, {expected:,} changes, "
                    f"median of {rounds}{done}", "changes/s", "higher",
                    "" if kind == UNPARTITIONED else "unpartitioned").cells[BEMI.key] = Cell(
            median[kind], ratios, rates[kind])
    for kind, what in ((PARTITIONED, "Ingest into the partitioned trail"), (DATABASE, "Ingest into a trail database")):
        ratio = median[kind] / median[UNPARTITIONED]
        results.target(what, "within 10 % of the unpartitioned local trail (>= 0.90)",
                       f"{ratio:.2f} of it ({median[kind]:,.0f} vs {median[UNPARTITIONED]:,.0f} changes/s){done}",
                       complete and ratio >= 0.90)
    log("  trails: medians " + ", ".join(f"{kind} {median[kind]:,.0f}/s" for kind in KINDS)
        + f"; partitioned {median[PARTITIONED] / median[UNPARTITIONED]:.2f} and trail database "
        f"{median[DATABASE] / median[UNPARTITIONED]:.2f} of unpartitioned; load average "
        f"{[round(x, 2) for x in os.getloadavg()]}")
    return {"changes": expected, "rounds": rounds, "complete": complete, "median": median, "runs": runs}
