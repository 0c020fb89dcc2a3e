"""W3 and W5: moving decoded changes into bemi.changes.

W3 times bemi.ingest draining a mix of transaction sizes and compares it with the raw
decode rate of the same WAL (a second test_decoding slot created at the same point).
W5 ingests one huge transaction through ``bemi-pg worker`` and watches the memory of the
worker and of the server backend it ingests through.
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

RAW_SLOT = "bench_raw"
DECODE_OPTIONS = "'include-xids', '1', 'include-timestamp', '1', 'skip-empty-xacts', '1'"
TABLE = f"{BEMI.schema}.todo"
ROW = "'task of ' || g, 'user ' || g % 1000, false, g % 5, repeat('p', 100)"
CONTEXT = """PERFORM bemi.set_context('{"user_id": 187234, "endpoint": "/import"}');"""


def fresh_slot(conn: psycopg.Connection[Any]) -> None:
    """Starts capture from now: a new bemi slot and an empty trail and table."""
    if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'bemi'").fetchone():
        conn.execute("SELECT bemi.drop_slot()")
    conn.execute(f"TRUNCATE bemi.changes, {TABLE} RESTART IDENTITY")
    conn.execute("SELECT bemi.create_slot()")


def drain(conn: psycopg.Connection[Any], batch: int = 10000, deadline: float = float("inf")) -> int:
    """Ingests until nothing is pending, or until time.monotonic() passes ``deadline``."""
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
    """W3: bemi.ingest's changes per second, next to the raw decode rate of the same WAL.
    Ingest stops after ``limit`` seconds (the rate is then of what it ingested by then)."""
    with server.connect(dsn) as conn:
        fresh_slot(conn)
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", [RAW_SLOT])
        expected = mixed_workload(conn, changes)
        conn.execute("CHECKPOINT")
        log(f"  W3: {expected:,} changes written; ingesting")

        started = time.perf_counter()
        ingested = drain(conn, deadline=time.monotonic() + limit)
        ingest_seconds = time.perf_counter() - started

        started = time.perf_counter()
        lines = conn.execute(
            f"SELECT count(*) FROM pg_logical_slot_peek_changes(%s, NULL, NULL, {DECODE_OPTIONS})", [RAW_SLOT]
        ).fetchone()[0]  # type: ignore[index]
        raw_seconds = time.perf_counter() - started
        conn.execute("SELECT pg_drop_replication_slot(%s)", [RAW_SLOT])
    if ingested != expected:
        log(f"  W3: ingested {ingested:,} of {expected:,} changes within the limit of {limit:.0f} s")
    rate, raw_rate = ingested / ingest_seconds, expected / raw_seconds
    log(f"  W3: ingest {rate:,.0f} changes/s ({ingest_seconds:.1f} s), raw decode {raw_rate:,.0f} changes/s "
        f"({lines:,} lines in {raw_seconds:.1f} s)")
    results.row("w3_ingest", f"W3 bemi.ingest, {ingested:,} of {expected:,} changes", "changes/s", "higher", "raw decode"
                ).cells[BEMI.key] = Cell(rate, {"raw decode": rate / raw_rate})
    results.row("w3_raw", "W3 raw decode of the same WAL (test_decoding, count(*))", "changes/s", "higher"
                ).cells["raw decode"] = Cell(raw_rate)
    return {"changes": expected, "ingested": ingested, "ingest_seconds": ingest_seconds, "raw_seconds": raw_seconds,
            "rate": rate, "raw_rate": raw_rate}


# ---------------------------------------------------------------------------------------
# W5: one huge transaction, ingested by the worker, memory watched from /proc.

class Watcher(threading.Thread):
    """Polls the memory of the worker and of its backend until stopped; keeps the peaks."""

    def __init__(self, dsn: str, worker_pid: int) -> None:
        super().__init__(daemon=True)
        self.dsn, self.worker_pid = dsn, worker_pid
        self.backend_pid: int | None = None
        self.peaks: dict[str, int] = {}
        self.finished = threading.Event()

    def run(self) -> None:
        with server.connect(self.dsn) as conn:
            while not self.finished.is_set():
                if self.backend_pid is None:
                    row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'bemi-pg'"
                                       ).fetchone()
                    self.backend_pid = row[0] if row else None
                self.sample("worker", self.worker_pid)
                if self.backend_pid:
                    self.sample("backend", self.backend_pid)
                time.sleep(0.02)

    def sample(self, who: str, pid: int) -> None:
        for name, kb in server.memory_kb(pid).items():
            key = f"{who}_{name}"
            self.peaks[key] = max(self.peaks.get(key, 0), kb)


def huge_transaction(dsn: str, rows: int, limit: float, log: Callable[[str], None]) -> dict[str, float]:
    """Writes one ``rows``-row transaction and lets the worker ingest it, for at most
    ``limit`` seconds (then the ingest is cancelled); returns the memory peaks in MB."""
    with server.connect(dsn) as conn:
        drain(conn)
        conn.execute(f"TRUNCATE bemi.changes, {TABLE} RESTART IDENTITY")
        transactions(conn, 1, rows)
        conn.execute("CHECKPOINT")
    worker = server.start_worker(dsn, "--batch", "10000", "--interval", "0.2")
    watcher = Watcher(dsn, worker.pid)
    watcher.start()
    started, progress = time.perf_counter(), Progress(worker, rows)
    progress.start()
    progress.join(limit)
    seconds = time.perf_counter() - started
    watcher.finished.set()
    watcher.join()
    if progress.is_alive() and watcher.backend_pid:  # over the limit: stop the ingest, not just the worker
        with server.connect(dsn) as conn:
            conn.execute("SELECT pg_cancel_backend(%s)", [watcher.backend_pid])
    server.stop(worker)
    peaks = {k: v / 1024 for k, v in watcher.peaks.items()}
    log(f"  W5 {rows:,} rows: ingested {progress.total:,} in {seconds:.1f} s"
        + (f" (stopped at the limit of {limit:.0f} s)" if progress.total < rows else "") + "; "
        + ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(peaks.items())))
    return {"rows": rows, "ingested": progress.total, "seconds": seconds, **peaks}


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
    for name, label in [("backend_RssAnon", "backend peak private memory (RssAnon)"),
                        ("backend_VmHWM", "backend peak resident memory (VmHWM, with shared buffers)"),
                        ("worker_VmHWM", "worker peak resident memory (VmHWM)")]:
        for run in runs:
            results.row(f"w5_{name}_{run['rows']}", f"W5 {run['rows']:,}-row transaction: {label}", "MB", "lower",
                        ).cells[BEMI.key] = Cell(run.get(name, 0.0))
    for run in runs:
        done = "" if run["ingested"] >= run["rows"] else f" (not done: {run['ingested']:,} ingested)"
        results.row(f"w5_seconds_{run['rows']}", f"W5 {run['rows']:,}-row transaction: ingest time{done}", "s",
                    "lower").cells[BEMI.key] = Cell(run["seconds"])
    return runs
