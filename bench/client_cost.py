"""Client CPU per transaction: what ``bemi_pg.with_context`` costs the application's process
over ``conn.transaction()``, sync and async, and what the Django and SQLAlchemy integrations
cost a W1 transaction (insert a todo, complete it) over the same code without bemi.

    python -m bench.client_cost [--iterations 4000]

Each with_context block is empty (BEGIN, the context, COMMIT), so what differs is the
client's own work: building the statement, quoting the context, the nesting bookkeeping. The
framework transactions (bench/frameworks.py, a tenth as many) differ by the comment each write
carries. ``time.process_time`` counts this process's CPU only, not the waits for the server;
the best of three runs counts, the kinds taking turns. ``make bench`` runs it too
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
from bench import frameworks, server, variants
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


def framework_cost(dsn: str, transactions: int = 400) -> dict[str, float]:
    """µs of client CPU per W1 transaction through each integration: {"django untracked": ...,
    "django tracked": ..., and the same for sqlalchemy}. Needs the bench's variants."""
    costs: dict[str, float] = {}
    for name, framework in (("django", frameworks.django), ("sqlalchemy", frameworks.sqlalchemy)):
        with framework(dsn, variants.PLAIN.schema, tracked=False, sql=False) as untracked, \
                framework(dsn, variants.BEMI.schema, tracked=True, sql=False) as tracked:
            fewest = {"untracked": float("inf"), "tracked": float("inf")}
            for _ in range(RUNS):
                for kind, run in (("untracked", untracked), ("tracked", tracked)):
                    started = time.process_time()
                    for n in range(transactions):
                        run(n)
                    fewest[kind] = min(fewest[kind], time.process_time() - started)
        costs.update({f"{name} {kind}": seconds / transactions * 1e6 for kind, seconds in fewest.items()})
    return costs


def overheads(costs: dict[str, float]) -> dict[str, float]:
    """µs bemi adds: with_context over conn.transaction() {"sync": ..., "async": ...}, and each
    integration over the same transaction without it, when measured ({"django": ..., ...})."""
    extra = {mode: costs[f"{mode} with_context"] - costs[f"{mode} conn.transaction()"] for mode in ("sync", "async")}
    extra.update({name: costs[f"{name} tracked"] - costs[f"{name} untracked"]
                  for name in ("django", "sqlalchemy") if f"{name} tracked" in costs})
    return extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.client_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=4000, help="blocks per run (best of three runs)")
    args = parser.parse_args(argv)
    with server.bench_server() as dsn:
        with server.connect(dsn) as conn:
            variants.create_all(conn)
        costs = {**client_cost(dsn, args.iterations), **framework_cost(dsn, args.iterations // 10)}
    for name, value in costs.items():
        print(f"{name:32s} {value:8.1f} µs")
    for path, extra in overheads(costs).items():
        over = "the same without bemi" if path in ("django", "sqlalchemy") else "conn.transaction()"
        print(f"{path} over {over}: {extra:+.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
