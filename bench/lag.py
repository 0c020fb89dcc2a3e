"""W4: lag under a steady load. pgbench runs the bemi variant's W1 transaction at a fixed
rate while ``bemi-pg worker`` ingests, as users run it; the lag of a change is
``queued_at - committed_at``, the backlog is how far ingest is behind, sampled each second."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

from bench import server
from bench.ingest import drain
from bench.report import Cell, Results
from bench.variants import BEMI

PENDING = """
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), p.lsn)::bigint FROM bemi.progress p WHERE p.slot_name = 'bemi'
"""

# Changes written and changes stored so far, from the two sequences (cheap to read each second):
# each W1 transaction inserts one todo (one id) and makes two changes.
COUNTERS = f"""
SELECT 2 * (SELECT last_value FROM {BEMI.schema}.todo_id_seq), (SELECT last_value FROM bemi.changes_id_seq)
"""

LAG = """
SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM queued_at - committed_at)::float8),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM queued_at - committed_at)::float8),
       max(extract(epoch FROM queued_at - committed_at))::float8
FROM bemi.changes WHERE committed_at >= %s
"""

ROWS = f"SELECT count(*) FROM {BEMI.schema}.todo"
CATCH_UP = 30.0  # seconds the worker gets to catch up after the load


def sample_backlog(dsn: str, stop: threading.Event, samples: list[int]) -> None:
    """Every second, how many changes are written but not yet in bemi.changes."""
    with server.connect(dsn) as conn:
        written_0, stored_0 = conn.execute(COUNTERS).fetchone()  # type: ignore[misc]
        while not stop.wait(1.0):
            written, stored = conn.execute(COUNTERS).fetchone()  # type: ignore[misc]
            samples.append((written - written_0) - (stored - stored_0))


def lag(dsn: str, results: Results, *, rate: float, seconds: float, log: Callable[[str], None]) -> dict[str, float]:
    with server.connect(dsn) as conn:
        drain(conn)
        conn.execute("TRUNCATE bemi.changes")
        started_at = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        rows_before = conn.execute(ROWS).fetchone()[0]  # type: ignore[index]
    worker = server.start_worker(dsn, quiet=True)
    stop, backlog = threading.Event(), []
    sampler = threading.Thread(target=sample_backlog, args=(dsn, stop, backlog), daemon=True)
    sampler.start()
    tps = server.pgbench(dsn, BEMI.oltp_script, seconds=seconds, rate=rate, search_path=BEMI.schema,
                         synchronous_commit="off")
    stop.set()
    sampler.join()
    with server.connect(dsn) as conn:
        stopped_at = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        end_bytes = conn.execute(PENDING).fetchone()[0]  # type: ignore[index]
        written = 2 * (conn.execute(ROWS).fetchone()[0] - rows_before)  # type: ignore[index]  # INSERT + UPDATE
        ingested_by_stop = conn.execute("SELECT count(*) FROM bemi.changes WHERE queued_at <= %s",
                                        [stopped_at]).fetchone()[0]  # type: ignore[index]
        # Give the worker a while to catch up; what it has not ingested by then has no lag to show.
        waited = time.monotonic()
        while conn.execute("SELECT count(*) FROM bemi.changes").fetchone()[0] < written \
                and time.monotonic() - waited < CATCH_UP:  # type: ignore[index]
            time.sleep(0.5)
        output = server.stop(worker)
        count, p50, p99, worst = conn.execute(LAG, [started_at]).fetchone()  # type: ignore[misc]
    if not count:
        raise RuntimeError(f"bemi-pg worker ingested nothing during W4:\n{output}")
    missing = written - count
    backlog_changes = written - ingested_by_stop
    third = max(1, len(backlog) // 3)
    early, late = statistics.median(backlog[:third] or [0]), statistics.median(backlog[-third:] or [0])
    log(f"  W4: {tps:,.0f} tps for {seconds:.0f} s, {written:,} changes, lag p50 {p50:.2f} s p99 {p99:.2f} s "
        f"max {worst:.2f} s; backlog at end {backlog_changes:,} changes ({end_bytes / 1024:.0f} kB of WAL), "
        f"median backlog first third {early:,.0f} changes, last third {late:,.0f}"
        + (f"; {missing:,} changes not ingested {CATCH_UP:.0f} s after the load" if missing else ""))
    cells = {
        "w4_rate": ("W4 load (pgbench at a fixed rate, two clients)", "tps", tps),
        "w4_p50": ("W4 lag p50 (committed_at to queued_at)", "s", p50),
        "w4_p99": ("W4 lag p99" + (f" (of the {count:,} ingested)" if missing else ""), "s", p99),
        "w4_backlog": ("W4 backlog at end of load", "changes", float(backlog_changes)),
    }
    for key, (label, unit, value) in cells.items():
        results.row(key, label, unit, "higher" if unit == "tps" else "lower").cells[BEMI.key] = Cell(value)
    return {"tps": tps, "changes": written, "ingested": count, "not_ingested": missing, "p50": p50, "p99": p99,
            "max": worst, "backlog_changes": backlog_changes, "backlog_end_bytes": end_bytes,
            "backlog_early": early, "backlog_late": late, "backlog_samples": backlog}
