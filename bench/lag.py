"""W4: lag under a steady load. pgbench runs the bemi variant's W1 transaction at a fixed
rate while ``bemi-pg worker`` streams, as users run it; the lag of a change is
``queued_at - committed_at``, the backlog is how many changes are written but not yet
stored, sampled each second, and the catch-up time is how long after the load stops the
backlog takes to reach zero. The load starts once the worker has caught up with the WAL
written before it started (timed apart: a restarted worker reads again what its slot's
restart_lsn holds). The sustainable rate is the highest fixed rate (in steps of a
quarter of bemi's W1 rate) at which the backlog stays bounded and catches up within 5 s."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from bench import server
from bench.ingest import drain, vacuum_stage
from bench.report import Cell, Results
from bench.variants import BEMI

PENDING = """
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), p.lsn)::bigint FROM bemi.progress p WHERE p.slot_name = bemi.slot_name()
"""

# Changes written and changes stored so far, from the two sequences (cheap to read often):
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
# The worker has read through the WAL written before it started: a slot resumes from its
# restart_lsn, which trails what was confirmed by up to one xl_running_xacts record (15 s of
# the workloads before), and all that WAL is read again before anything new.
CAUGHT_UP = "SELECT coalesce(p.caught_up_at >= %s, false) FROM bemi.progress p WHERE p.slot_name = bemi.slot_name()"
CATCH_UP = 30.0  # seconds the worker gets to catch up after the load
CATCH_UP_TARGET = 5.0  # ...and the target for it


def sample_backlog(dsn: str, stop: threading.Event, samples: list[int]) -> None:
    """Every second, how many changes are written but not yet in bemi.changes."""
    with server.connect(dsn) as conn:
        written_0, stored_0 = conn.execute(COUNTERS).fetchone()  # type: ignore[misc]
        while not stop.wait(1.0):
            written, stored = conn.execute(COUNTERS).fetchone()  # type: ignore[misc]
            samples.append((written - written_0) - (stored - stored_0))


def stored(conn: Any) -> int:
    return int(conn.execute("SELECT count(*) FROM bemi.changes").fetchone()[0])


def steady_load(dsn: str, *, rate: float, seconds: float) -> dict[str, Any]:
    """pgbench at ``rate`` for ``seconds`` with the worker running; lag, backlog and catch-up."""
    with server.connect(dsn) as conn:
        drain(conn)
        conn.execute("TRUNCATE bemi.changes")
        vacuum_stage(conn)
        worker_at, begun = conn.execute("SELECT clock_timestamp()").fetchone()[0], time.monotonic()  # type: ignore[index]
        worker = server.start_worker(dsn, "--interval", "0.5", quiet=True)
        while not conn.execute(CAUGHT_UP, [worker_at]).fetchone()[0]:  # type: ignore[index]  # lag, not start-up time
            if worker.poll() is not None:
                raise RuntimeError(f"bemi-pg worker exited:\n{server.stop(worker)}")
            time.sleep(0.05)
        resumed = time.monotonic() - begun
        started_at = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        rows_before = conn.execute(ROWS).fetchone()[0]  # type: ignore[index]
    stop, backlog = threading.Event(), list[int]()
    sampler = threading.Thread(target=sample_backlog, args=(dsn, stop, backlog), daemon=True)
    sampler.start()
    tps = server.pgbench(dsn, BEMI.oltp_script, seconds=seconds, rate=rate, search_path=BEMI.schema,
                         synchronous_commit="off")
    load_ended = time.monotonic()
    stop.set()
    sampler.join()
    with server.connect(dsn) as conn:
        stopped_at = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        end_bytes = conn.execute(PENDING).fetchone()[0]  # type: ignore[index]
        written = 2 * (conn.execute(ROWS).fetchone()[0] - rows_before)  # type: ignore[index]  # INSERT + UPDATE
        ingested_by_stop = conn.execute("SELECT count(*) FROM bemi.changes WHERE queued_at <= %s",
                                        [stopped_at]).fetchone()[0]  # type: ignore[index]
        # How long the worker takes to store what was written (what it has not stored by the
        # end of the wait has no lag to show).
        while stored(conn) < written and time.monotonic() - load_ended < CATCH_UP:
            time.sleep(0.05)
        catch_up = time.monotonic() - load_ended
        output = server.stop(worker)
        count, p50, p99, worst = conn.execute(LAG, [started_at]).fetchone()  # type: ignore[misc]
    if not count:
        raise RuntimeError(f"bemi-pg worker ingested nothing during W4:\n{output}")
    third = max(1, len(backlog) // 3)
    return {"rate": rate, "tps": tps, "resumed_seconds": resumed, "changes": written, "ingested": count, "not_ingested": written - count,
            "p50": p50, "p99": p99, "max": worst, "backlog_changes": written - ingested_by_stop,
            "backlog_end_bytes": end_bytes, "catch_up_seconds": catch_up,
            "backlog_early": statistics.median(backlog[:third] or [0]),
            "backlog_late": statistics.median(backlog[-third:] or [0]), "backlog_samples": backlog}


def grew(run: dict[str, Any]) -> bool:
    """The backlog of the last third of a run well above that of the first third (a worker
    that keeps up holds a second or so of changes: a few thousand, up and down)."""
    return bool(run["backlog_late"] - run["backlog_early"] > max(5_000, 0.5 * run["backlog_early"]))


def kept_up(run: dict[str, Any]) -> bool:
    return not grew(run) and not run["not_ingested"] and run["catch_up_seconds"] <= CATCH_UP_TARGET


def lag(dsn: str, results: Results, *, rate: float, seconds: float, log: Callable[[str], None]) -> dict[str, Any]:
    run = steady_load(dsn, rate=rate, seconds=seconds)
    log(f"  W4: worker caught up {run['resumed_seconds']:.1f} s after it started (the WAL of the workloads before); "
        f"{run['tps']:,.0f} tps for {seconds:.0f} s, {run['changes']:,} changes, lag p50 {run['p50']:.2f} s "
        f"p99 {run['p99']:.2f} s max {run['max']:.2f} s; backlog at end {run['backlog_changes']:,} changes "
        f"({run['backlog_end_bytes'] / 1024:.0f} kB of WAL), back to zero {run['catch_up_seconds']:.1f} s after "
        f"the load; median backlog first third {run['backlog_early']:,.0f} changes, last third {run['backlog_late']:,.0f}"
        + (f"; {run['not_ingested']:,} changes not ingested {CATCH_UP:.0f} s after the load"
           if run["not_ingested"] else ""))
    cells = {
        "w4_resumed": ("W4 worker start to caught up, before the load (the slot re-reads WAL from its restart_lsn)", "s",
                       run["resumed_seconds"]),
        "w4_rate": ("W4 load (pgbench at a fixed rate, two clients)", "tps", run["tps"]),
        "w4_p50": ("W4 lag p50 (committed_at to queued_at)", "s", run["p50"]),
        "w4_p99": ("W4 lag p99" + (f" (of the {run['ingested']:,} ingested)" if run["not_ingested"] else ""), "s",
                   run["p99"]),
        "w4_backlog": ("W4 backlog at end of load", "changes", float(run["backlog_changes"])),
        "w4_catch_up": ("W4 backlog back to zero after the load", "s", run["catch_up_seconds"]),
    }
    for key, (label, unit, value) in cells.items():
        results.row(key, label, unit, "higher" if unit == "tps" else "lower").cells[BEMI.key] = Cell(value)
    return run


def sustainable(dsn: str, results: Results, *, w1_rate: float, seconds: float,
                log: Callable[[str], None]) -> dict[str, Any]:
    """The highest fixed rate, asked in steps of a quarter of bemi's W1 rate, at which the
    worker keeps up; as the rate pgbench achieved, a fraction of the W1 rate. When pgbench
    cannot reach the rate asked (the machine is saturated by the load and the worker
    together), the search ends there: the worker kept up with all the machine could write."""
    best, runs, saturated = 0.0, [], False
    for quarters in range(2, 13):
        asked = quarters / 4 * w1_rate
        run = steady_load(dsn, rate=asked, seconds=seconds)
        runs.append({k: v for k, v in run.items() if k != "backlog_samples"})
        ok, achieved = kept_up(run), run["tps"] / w1_rate
        saturated = run["tps"] < 0.9 * asked
        log(f"  W4 sustainable: asked {quarters / 4:.2f} of W1, achieved {achieved:.2f} ({run['tps']:,.0f} tps, "
            f"{2 * run['tps']:,.0f} changes/s): {'kept up' if ok else 'fell behind'} (backlog "
            f"{run['backlog_early']:,.0f} -> {run['backlog_late']:,.0f}, caught up {run['catch_up_seconds']:.1f} s "
            f"after, p99 lag {run['p99']:.2f} s)" + ("; pgbench could not reach the rate asked" if saturated else ""))
        if not ok:
            break
        best = max(best, achieved)
        if saturated:
            break
    label = "W4 sustainable rate (backlog bounded, caught up within 5 s), of bemi's W1 rate" + (
        " (the load could go no faster)" if saturated and best else "")
    results.row("w4_sustainable", label, "fraction", "higher").cells[BEMI.key] = Cell(best)
    return {"fraction": best, "w1_rate": w1_rate, "saturated": saturated, "runs": runs}
