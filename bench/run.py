"""The benchmark driver: starts a throwaway server, runs every workload on every variant,
prints the table, writes ``bench/results/<name>.json`` and draws ``<name>.png``.

    python -m bench.run            # the full run (make bench), about 13 minutes
    python -m bench.run --quick    # every workload at reduced size (make bench-quick)
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import bulk, chart, ingest, lag, oltp, server, variants
from bench.report import Results, markdown, table, targets_table, write_atomically
from bench.variants import AUDIT, BEMI, FULL_IDENTITY, PLAIN, ROW_TRIGGER

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Sizes:
    name: str
    w1_rounds: int
    w1_seconds: float
    w1_durable_rounds: int
    w1_py_rounds: int
    w1_py_seconds: float
    w2_rows: int
    w2_values_rows: int
    w2_rounds: int
    w3_changes: int
    w4_seconds: float
    w5_rows: tuple[int, int]
    ingest_limit: float  # seconds W3 and each W5 size may ingest before they are stopped


FULL = Sizes("latest", w1_rounds=5, w1_seconds=5, w1_durable_rounds=3, w1_py_rounds=3, w1_py_seconds=4,
             w2_rows=100_000, w2_values_rows=10_000, w2_rounds=3, w3_changes=500_000, w4_seconds=60,
             w5_rows=(200_000, 2_000_000), ingest_limit=60)
QUICK = Sizes("quick", w1_rounds=1, w1_seconds=3, w1_durable_rounds=1, w1_py_rounds=1, w1_py_seconds=2,
              w2_rows=10_000, w2_values_rows=1_000, w2_rounds=1, w3_changes=50_000, w4_seconds=10,
              w5_rows=(20_000, 100_000), ingest_limit=15)


def log(message: str) -> None:
    print(message, flush=True)


def run(sizes: Sizes) -> Results:
    started = time.perf_counter()
    with server.bench_server() as dsn:
        with server.connect(dsn) as conn:
            variants.create_all(conn)
        results = Results(mode="quick" if sizes is QUICK else "full",
                          date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                          machine=server.machine(dsn))
        results.machine["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
        script = Path(__file__).parent.parent / "sql" / "bemi--1.0.sql"
        results.machine["extension_script_sha256"] = hashlib.sha256(script.read_bytes()).hexdigest()[:12]
        log(f"bench: {server.describe(results.machine)}, load average {results.machine['load_average_at_start']}")

        log("W1: OLTP with pgbench, two clients")
        cpu = oltp.oltp(dsn, results, key="w1_sync_off", label="W1 OLTP tps, synchronous_commit=off",
                        synchronous_commit="off", rounds=sizes.w1_rounds, seconds=sizes.w1_seconds, log=log)
        durable = oltp.oltp(dsn, results, key="w1_durable", label="W1 OLTP tps, default durability",
                            synchronous_commit="on", rounds=sizes.w1_durable_rounds, seconds=sizes.w1_seconds, log=log)
        log("W1-py: the same transaction from Python")
        py = oltp.python_client(dsn, results, rounds=sizes.w1_py_rounds, seconds=sizes.w1_py_seconds, log=log)
        log("W2: bulk statements")
        w2 = bulk.bulk(dsn, results, rows=sizes.w2_rows, values_rows=sizes.w2_values_rows,
                       rounds=sizes.w2_rounds, log=log)
        log("W3: ingest throughput")
        w3 = ingest.ingest_rate(dsn, results, changes=sizes.w3_changes, limit=sizes.ingest_limit, log=log)
        log(f"W4: lag at half the W1 rate ({cpu[BEMI.key] / 2:,.0f} tps) while bemi-pg worker runs")
        w4 = lag.lag(dsn, results, rate=cpu[BEMI.key] / 2, seconds=sizes.w4_seconds, log=log)
        log("W5: one huge transaction")
        w5 = ingest.huge(dsn, results, sizes=sizes.w5_rows, limit=sizes.ingest_limit, log=log)

    results.details = {"sizes": sizes.__dict__, "w1_sync_off": cpu, "w1_durable": durable, "w1_py": py,
                       "w2": w2, "w3": w3, "w4": w4, "w5": w5}
    judge(results, cpu, durable, py, w2, w3, w4, w5)
    results.seconds = time.perf_counter() - started
    # Other work on the machine shows here: the load average should stay near the bench's own ~2.
    results.machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


def judge(results: Results, cpu: dict[str, float], durable: dict[str, float], py: dict[str, float],
          w2: dict[str, dict[str, float]], w3: dict[str, float], w4: dict[str, float],
          w5: list[dict[str, float]]) -> None:
    """The issue's targets, each marked met or missed with the measured value."""
    bemi, plain = cpu[BEMI.key], cpu[PLAIN.key]
    results.target("W1 CPU-bound", ">= 0.85 of plain", f"{bemi / plain:.2f} of plain", bemi >= 0.85 * plain)
    results.target("W1 CPU-bound", "not below row-trigger emit", f"{bemi / cpu[ROW_TRIGGER.key]:.2f} of row-trigger emit",
                   bemi >= cpu[ROW_TRIGGER.key])
    ratio = durable[BEMI.key] / durable[PLAIN.key]
    results.target("W1 default durability", ">= 0.95 of plain", f"{ratio:.2f} of plain", ratio >= 0.95)
    ratio = py[f"{BEMI.key}:py_tps"] / py[f"{PLAIN.key}:py_tps"]
    results.target("W1-py", ">= 0.90 of plain", f"{ratio:.2f} of plain", ratio >= 0.90)
    for name in ("insert_select", "update", "delete", "insert_values", "copy"):
        mine = w2[BEMI.key][name]
        to_full = mine / w2[FULL_IDENTITY.key][name]
        best_baseline = min(w2[ROW_TRIGGER.key][name], w2[AUDIT.key][name])
        results.target(f"W2 {name}", "<= 1.10x full identity", f"{to_full:.2f}x full identity", to_full <= 1.10)
        results.target(f"W2 {name}", "far below both baselines (<= 0.75x the faster one)",
                       f"{mine / best_baseline:.2f}x the faster baseline", mine <= 0.75 * best_baseline)
    results.target("W3", ">= 20,000 changes/s", f"{w3['rate']:,.0f} changes/s ({w3['rate'] / w3['raw_rate']:.2f} of raw decode)",
                   w3["rate"] >= 20_000)
    unfinished = f", {w4['not_ingested']:,} changes not ingested 30 s after the load" if w4["not_ingested"] else ""
    results.target("W4", "p99 lag <= 2 s", f"{w4['p99']:.2f} s{unfinished}", w4["p99"] <= 2.0 and not unfinished)
    # Growth: the backlog of the last third of the run well above that of the first third
    # (a worker that keeps up holds a second or so of changes: a few thousand, up and down).
    grew = w4["backlog_late"] - w4["backlog_early"] > max(5_000, 0.5 * w4["backlog_early"])
    results.target("W4", "no backlog growth",
                   f"median backlog {w4['backlog_early']:,.0f} -> {w4['backlog_late']:,.0f} changes (first -> last "
                   f"third), {w4['backlog_changes']:,} pending at the end", not grew)
    small, large = w5
    for key, who in (("backend_RssAnon", "backend private"), ("worker_VmHWM", "worker")):
        a, b = small.get(key, 0.0), large.get(key, 0.0)
        partial = "" if large["ingested"] >= large["rows"] else \
            f" (the {large['rows']:,}-row ingest was stopped at the time limit: {large['ingested']:,} done)"
        results.target(f"W5 {who} memory", f"bounded: {large['rows']:,} rows <= 1.25x {small['rows']:,} rows + 8 MB",
                       f"{a:.0f} MB -> {b:.0f} MB{partial}", 0 < b <= 1.25 * a + 8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="every workload at reduced size (under 2 minutes)")
    p.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON and the chart")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    results = run(sizes)
    args.out.mkdir(parents=True, exist_ok=True)
    results.write_json(args.out / f"{sizes.name}.json")
    write_atomically(args.out / f"{sizes.name}.md", markdown(results))
    chart.draw(json.loads((args.out / f"{sizes.name}.json").read_text()), args.out / f"{sizes.name}.png")
    print()
    print(f"bemi benchmark ({results.mode}), {results.date}, {server.describe(results.machine)}")
    print("cells: value (ratio to the columns named in '(ratio to)')")
    print(table(results))
    print()
    print(targets_table(results))
    print(f"\nbench: {results.seconds:.0f} s; wrote {args.out}/{sizes.name}.json, .md and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
