"""W3 and W5: moving decoded changes into bemi.changes.

W3 decodes one WAL four ways, side by side: the streaming worker (``bemi-pg worker
--drain``, as users run it), ``bemi.ingest()`` (the SQL path), raw pgoutput decoding
(``count(*)`` of a binary peek: the ceiling), and the store limit (an ``INSERT ... SELECT``
of the stored rows into a copy of the trail with the same indexes). Copies of the slot made
before the workload let every reader see the same WAL.
W5 streams one huge transaction through the worker and watches the memory of the worker
and of the walsender that decodes it, and checks that every row was stored.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from bench import server
from bench.report import Cell, Results
from bench.variants import BEMI

TABLE = f"{BEMI.schema}.todo"
ROW = "'task of ' || g, 'user ' || g % 1000, false, g % 5, repeat('p', 100)"
CONTEXT = """PERFORM bemi.set_context('{"user_id": 187234, "endpoint": "/import"}');"""
PGOUTPUT = "'proto_version', '1', 'publication_names', 'bemi', 'messages', 'true'"
TRAIL_COLUMNS = ('schema, "table", primary_key, operation, before, after, context, committed_at, queued_at, '
                 "transaction_id, position, ordinal, problem, partial")


def fresh_slot(conn: psycopg.Connection[Any]) -> None:
    """Starts capture from now: a new slot and an empty trail and table."""
    if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = bemi.slot_name()").fetchone():
        conn.execute("SELECT bemi.drop_slot()")
    conn.execute(f"TRUNCATE bemi.changes, {TABLE} RESTART IDENTITY")
    vacuum_stage(conn)
    conn.execute("SELECT bemi.create_slot()")


def vacuum_stage(conn: psycopg.Connection[Any]) -> None:
    """Vacuums the staging tables, as autovacuum would between batches of a real server: the
    bench server runs with autovacuum off, and every stored batch leaves its staged rows dead."""
    conn.execute("VACUUM bemi.staged, bemi.staged_relations")


def copy_slot(conn: psycopg.Connection[Any], name: str) -> None:
    """A copy of this database's slot, at the same position: a second reader of the same WAL."""
    conn.execute("SELECT pg_copy_logical_replication_slot(bemi.slot_name(), %s)", [name])


def replace_slot(conn: psycopg.Connection[Any], copy: str) -> None:
    """The slot becomes ``copy`` (taken earlier), and the progress row goes back with it."""
    slot = conn.execute("SELECT bemi.slot_name()").fetchone()[0]  # type: ignore[index]
    while conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", [slot]).fetchone()[0]:  # type: ignore[index]
        time.sleep(0.05)  # the worker's walsender is still exiting
    conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
    conn.execute("SELECT pg_copy_logical_replication_slot(%s, %s)", [copy, slot])
    conn.execute("SELECT pg_drop_replication_slot(%s)", [copy])
    conn.execute("UPDATE bemi.progress p SET lsn = s.confirmed_flush_lsn, part_of = NULL, part_stored = 0 "
                 "FROM pg_replication_slots s WHERE s.slot_name = p.slot_name AND p.slot_name = %s", [slot])


def drain(conn: psycopg.Connection[Any], batch: int = 10000, deadline: float = float("inf")) -> int:
    """Ingests with bemi.ingest() until nothing is pending, or until time.monotonic() passes ``deadline``."""
    total = 0
    while time.monotonic() < deadline and (
            n := conn.execute("SELECT bemi.ingest(%s)", [batch]).fetchone()[0]):  # type: ignore[index]
        total += n
    return total


def transactions(conn: psycopg.Connection[Any], count: int, rows: int) -> None:
    """``count`` transactions of ``rows`` inserted rows each, every one with a context."""
    if count:
        conn.execute(f"""DO $$ BEGIN FOR i IN 1..{count} LOOP {CONTEXT}
          INSERT INTO {TABLE} (task, owner, is_completed, priority, payload)
          SELECT {ROW} FROM generate_series(1, {rows}) AS g; COMMIT; END LOOP; END $$""")


def mixed_workload(conn: psycopg.Connection[Any], changes: int) -> int:
    """About ``changes`` changes: a tenth in 1-row transactions, a fifth in 10-row ones,
    three tenths in 1000-row ones, and two big ones (an INSERT and an UPDATE of changes/5 rows)."""
    big = changes // 5
    transactions(conn, changes // 10, 1)
    transactions(conn, changes // 5 // 10, 10)
    transactions(conn, changes * 3 // 10 // 1000, 1000)
    transactions(conn, 1, big)
    conn.execute(f"""DO $$ BEGIN {CONTEXT}
      UPDATE {TABLE} SET is_completed = true WHERE id IN (SELECT id FROM {TABLE} ORDER BY id DESC LIMIT {big});
      END $$""")
    return changes // 10 + changes // 5 // 10 * 10 + changes * 3 // 10 // 1000 * 1000 + 2 * big


def ingest_rate(dsn: str, results: Results, *, changes: int, limit: float,
                log: Callable[[str], None]) -> dict[str, float]:
    """W3: changes per second of the worker, the store limit, bemi.ingest() and raw decoding,
    all of the same WAL. Each reader stops after ``limit`` seconds (its rate is then of what
    it did by then)."""
    with server.connect(dsn) as conn:
        fresh_slot(conn)
        copy_slot(conn, "bench_raw")
        copy_slot(conn, "bench_sql")
        expected = mixed_workload(conn, changes)
        conn.execute("CHECKPOINT")
        log(f"  W3: {expected:,} changes written; decoding")

        started = time.perf_counter()
        decoded = conn.execute(f"SELECT count(*) FROM pg_logical_slot_peek_binary_changes('bench_raw', NULL, NULL, "
                               f"{PGOUTPUT})").fetchone()[0]  # type: ignore[index]
        raw_seconds = time.perf_counter() - started
        conn.execute("SELECT pg_drop_replication_slot('bench_raw')")

        log("  W3: the streaming worker")
        worker = run_worker(dsn, limit)
        stored = conn.execute("SELECT count(*) FROM bemi.changes").fetchone()[0]  # type: ignore[index]

        log("  W3: the store limit (INSERT ... SELECT into a copy of the trail)")
        store_seconds = store_limit(conn)

        log("  W3: bemi.ingest()")
        conn.execute("TRUNCATE bemi.changes")
        vacuum_stage(conn)
        replace_slot(conn, "bench_sql")
        started = time.perf_counter()
        ingested = drain(conn, deadline=time.monotonic() + limit)
        ingest_seconds = time.perf_counter() - started
    rates = {"worker": worker["changes"] / worker["seconds"], "store": stored / store_seconds,
             "ingest": ingested / ingest_seconds, "raw": expected / raw_seconds}
    log(f"  W3: worker {rates['worker']:,.0f} changes/s ({worker['changes']:,} in {worker['seconds']:.1f} s), "
        f"store limit {rates['store']:,.0f}/s, bemi.ingest {rates['ingest']:,.0f}/s ({ingested:,} in "
        f"{ingest_seconds:.1f} s), raw pgoutput decode {rates['raw']:,.0f}/s ({decoded:,} messages in {raw_seconds:.1f} s)")
    for key, label, done in (("worker", "streaming worker (bemi-pg worker --drain)", worker["changes"]),
                             ("ingest", "bemi.ingest() (the SQL path)", ingested)):
        results.row(f"w3_{key}", f"W3 {label}, {done:,} of {expected:,} changes", "changes/s", "higher",
                    "store limit, raw decode").cells[BEMI.key] = Cell(
            rates[key], {"store limit": rates[key] / rates["store"], "raw decode": rates[key] / rates["raw"]})
    results.row("w3_store", "W3 store limit: INSERT ... SELECT into a copy of the trail, same indexes",
                "rows/s", "higher").cells["store limit"] = Cell(rates["store"])
    results.row("w3_raw", "W3 raw decode of the same WAL (pgoutput binary peek, count(*))", "changes/s", "higher"
                ).cells["raw decode"] = Cell(rates["raw"])
    return {"changes": expected, "worker_changes": worker["changes"], "worker_seconds": worker["seconds"],
            "ingested": ingested, "ingest_seconds": ingest_seconds, "stored": stored, "store_seconds": store_seconds,
            "raw_seconds": raw_seconds, "rate": rates["worker"], "ingest_rate": rates["ingest"],
            "store_rate": rates["store"], "raw_rate": rates["raw"]}


def run_worker(dsn: str, limit: float, *args: str) -> dict[str, float]:
    """``bemi-pg worker --drain`` (and ``args``), stopped (SIGTERM) after ``limit`` seconds; what it says it did."""
    process = server.start_worker(dsn, "--drain", *args)
    try:
        out, _ = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        out = server.stop(process)
    match = re.search(r"worker: (?:drained|stopped after) (\d+) changes in ([0-9.]+) s", out)
    if not match:
        raise RuntimeError(f"bemi-pg worker failed:\n{out}")
    return {"changes": int(match.group(1)), "seconds": float(match.group(2))}


def store_limit(conn: psycopg.Connection[Any], batch: int = 20000) -> float:
    """Seconds to copy the trail's rows into a copy of bemi.changes with the same indexes, in
    transactions of ``batch`` rows with synchronous_commit on (as bemi.store commits)."""
    conn.execute("DROP TABLE IF EXISTS bench_trail")
    conn.execute("CREATE TABLE bench_trail (LIKE bemi.changes INCLUDING ALL)")
    first, last = conn.execute("SELECT min(id), max(id) FROM bemi.changes").fetchone()  # type: ignore[misc]
    conn.execute("CHECKPOINT")
    started = time.perf_counter()
    for low in range(first or 0, (last or -1) + 1, batch):
        with conn.transaction():
            conn.execute("SET LOCAL synchronous_commit = on")
            conn.execute(f"INSERT INTO bench_trail ({TRAIL_COLUMNS}) SELECT {TRAIL_COLUMNS} FROM bemi.changes "
                         "WHERE id >= %s AND id < %s ORDER BY id", [low, low + batch])
    seconds = time.perf_counter() - started
    conn.execute("DROP TABLE bench_trail")
    return seconds


# ---------------------------------------------------------------------------------------
# W5: one huge transaction, streamed by the worker, memory watched from /proc.

# The server processes of the worker: the walsender that decodes (application_name of the
# replication connection) and the backend that stores.
PROCESSES = {"walsender": "bemi-pg stream", "backend": "bemi-pg store"}


class Watcher(threading.Thread):
    """Polls the memory of the worker, its walsender and its backend until stopped; keeps the peaks."""

    def __init__(self, dsn: str, worker_pid: int) -> None:
        super().__init__(daemon=True)
        self.dsn, self.worker_pid = dsn, worker_pid
        self.pids: dict[str, int] = {}
        self.peaks: dict[str, int] = {}
        self.finished = threading.Event()

    def run(self) -> None:
        with server.connect(self.dsn) as conn:
            while not self.finished.is_set():
                if len(self.pids) < len(PROCESSES):
                    for who, name in PROCESSES.items():
                        row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", [name]
                                           ).fetchone()
                        if row:
                            self.pids[who] = row[0]
                self.sample("worker", self.worker_pid)
                for who, pid in self.pids.items():
                    self.sample(who, pid)
                time.sleep(0.02)

    def sample(self, who: str, pid: int) -> None:
        for name, kb in server.memory_kb(pid).items():
            key = f"{who}_{name}"
            self.peaks[key] = max(self.peaks.get(key, 0), kb)


def huge_transaction(dsn: str, rows: int, limit: float, log: Callable[[str], None]) -> dict[str, float]:
    """Writes one ``rows``-row transaction and lets the worker stream it, for at most ``limit``
    seconds; returns the memory peaks in MB and how many of the rows are in the trail."""
    with server.connect(dsn) as conn:
        drain(conn)
        conn.execute(f"TRUNCATE bemi.changes, {TABLE} RESTART IDENTITY")
        vacuum_stage(conn)
        transactions(conn, 1, rows)
        conn.execute("CHECKPOINT")
    worker = server.start_worker(dsn, "--interval", "0.2")
    watcher = Watcher(dsn, worker.pid)
    watcher.start()
    started, progress = time.perf_counter(), Progress(worker, rows)
    progress.start()
    progress.join(limit)
    seconds = time.perf_counter() - started
    watcher.finished.set()
    watcher.join()
    server.stop(worker)
    with server.connect(dsn) as conn:
        stored, distinct = conn.execute("SELECT count(*), count(DISTINCT primary_key) FROM bemi.changes "
                                        "WHERE operation = 'CREATE'").fetchone()  # type: ignore[misc]
    peaks = {k: v / 1024 for k, v in watcher.peaks.items()}
    log(f"  W5 {rows:,} rows: {stored:,} stored ({distinct:,} distinct keys) in {seconds:.1f} s"
        + (f" (stopped at the limit of {limit:.0f} s)" if stored < rows else "") + "; "
        + ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(peaks.items())))
    return {"rows": rows, "ingested": stored, "distinct": distinct, "seconds": seconds, **peaks}


class Progress(threading.Thread):
    """Reads the worker's progress lines until it has ingested everything (or stops)."""

    def __init__(self, worker: subprocess.Popen[str], rows: int) -> None:
        super().__init__(daemon=True)
        self.worker, self.rows, self.total = worker, rows, 0

    def run(self) -> None:
        assert self.worker.stdout is not None
        for line in self.worker.stdout:
            if match := re.search(r"total (\d+)", line):
                self.total = int(match.group(1))
                if self.total >= self.rows:
                    return


def huge(dsn: str, results: Results, *, sizes: tuple[int, int], limit: float,
         log: Callable[[str], None]) -> list[dict[str, float]]:
    runs = [huge_transaction(dsn, rows, limit, log) for rows in sizes]
    for name, label in [("worker_VmHWM", "worker peak resident memory (VmHWM)"),
                        ("walsender_RssAnon", "walsender peak private memory (RssAnon)"),
                        ("walsender_VmHWM", "walsender peak resident memory (VmHWM, with shared buffers)"),
                        ("backend_RssAnon", "storing backend peak private memory (RssAnon)")]:
        for run in runs:
            results.row(f"w5_{name}_{run['rows']}", f"W5 {run['rows']:,}-row transaction: {label}", "MB", "lower",
                        ).cells[BEMI.key] = Cell(run.get(name, 0.0))
    for run in runs:
        done = "" if run["ingested"] == run["distinct"] == run["rows"] else \
            f" (NOT every row: {run['ingested']:,} stored, {run['distinct']:,} distinct)"
        results.row(f"w5_seconds_{run['rows']}", f"W5 {run['rows']:,}-row transaction: time to store every row{done}",
                    "s", "lower").cells[BEMI.key] = Cell(run["seconds"])
    return runs
