"""Client CPU per transaction block: what ``bemi_pg.with_context`` costs the application's
process over ``conn.transaction()``, sync and async.

    python -m bench.client_cost [--iterations 4000]

Each block is empty (BEGIN, the context, COMMIT), so what differs is the client's own work:
building the statement, quoting the context, the nesting bookkeeping. ``time.process_time``
counts this process's CPU only, not the waits for the server; the best of three runs of
``--iterations`` blocks counts, the kinds of block taking turns. ``make bench`` runs it too
(bench/run.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg

import bemi_pg
from bench import server
from bench.frameworks import request_context

RUNS = 3

# Each opens a block on a psycopg connection, sync or async (n: the request's number).
Block = Callable[[Any, int], Any]
BLOCKS: dict[str, Block] = {
    "conn.transaction()": lambda conn, n: conn.transaction(),
    "with_context": lambda conn, n: bemi_pg.with_context(conn, request_context(n)),
}


def sync_loop(conn: psycopg.Connection[Any], block: Block, iterations: int) -> float:
    """Seconds of client CPU for ``iterations`` blocks."""
    started = time.process_time()
    for n in range(iterations):
        with block(conn, n):
            pass
    return time.process_time() - started


async def async_loop(conn: psycopg.AsyncConnection[Any], block: Block, iterations: int) -> float:
    started = time.process_time()
    for n in range(iterations):
        async with block(conn, n):
            pass
    return time.process_time() - started


def best(loop: Callable[[Block], float]) -> dict[str, float]:
    """The fewest seconds each kind of block took in RUNS runs, the kinds taking turns so that
    the machine's other work weighs on them alike."""
    fewest = dict.fromkeys(BLOCKS, float("inf"))
    for _ in range(RUNS):
        for name, block in BLOCKS.items():
            fewest[name] = min(fewest[name], loop(block))
    return fewest


def client_cost(dsn: str, iterations: int = 4000) -> dict[str, float]:
    """µs of client CPU per empty block: {"sync conn.transaction()": ..., "sync with_context": ...,
    and the same for async}."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        runs = {"sync": best(lambda block: sync_loop(conn, block, iterations))}
    events = asyncio.new_event_loop()
    try:
        aconn = events.run_until_complete(psycopg.AsyncConnection.connect(dsn, autocommit=True))
        runs["async"] = best(lambda block: events.run_until_complete(async_loop(aconn, block, iterations)))
        events.run_until_complete(aconn.close())
    finally:
        events.close()
    return {f"{mode} {name}": seconds / iterations * 1e6 for mode, fewest in runs.items() for name, seconds in fewest.items()}


def overheads(costs: dict[str, float]) -> dict[str, float]:
    """µs with_context adds over conn.transaction(): {"sync": ..., "async": ...}."""
    return {mode: costs[f"{mode} with_context"] - costs[f"{mode} conn.transaction()"] for mode in ("sync", "async")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.client_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=4000, help="blocks per run (best of three runs)")
    args = parser.parse_args(argv)
    with server.bench_server() as dsn:
        with server.connect(dsn) as conn:
            conn.execute("CREATE EXTENSION bemi")
        costs = client_cost(dsn, args.iterations)
    for name, value in costs.items():
        print(f"{name:32s} {value:8.1f} µs")
    for mode, extra in overheads(costs).items():
        print(f"with_context over conn.transaction(), {mode}: {extra:+.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
