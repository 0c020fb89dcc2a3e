"""W2: bulk statements, each timed as one transaction (context, statement, commit).

Each round runs the same sequence on every variant's table, variants in a rotating order;
a checkpoint before each statement gives every variant the same full-page-write cost.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg

from bench import server, variants
from bench.report import Cell, Results
from bench.variants import FULL_IDENTITY, PLAIN, Variant

COLUMNS = "task, owner, is_completed, priority, payload"
PAYLOAD = "p" * 100


def statements(rows: int, values_rows: int) -> list[tuple[str, str]]:
    """(key, label) of the statements, in the order they run."""
    return [
        ("insert_select", f"W2 INSERT ... SELECT {rows:,} rows"),
        ("update", f"W2 UPDATE {rows:,} rows"),
        ("delete", f"W2 DELETE {rows:,} rows"),
        ("insert_values", f"W2 INSERT multi-VALUES {values_rows:,} rows"),
        ("copy", f"W2 COPY {rows:,} rows"),
    ]


def values_insert(rows: int) -> str:
    tuples = ",".join(f"('task of {i}','user {i % 1000}',false,{i % 5},'{PAYLOAD}')" for i in range(rows))
    return f"INSERT INTO todo ({COLUMNS}) VALUES {tuples}"


def copy_data(rows: int) -> bytes:
    return "".join(f"task of {i}\tuser {i % 1000}\tf\t{i % 5}\t{PAYLOAD}\n" for i in range(rows)).encode()


def timed(conn: psycopg.Connection[Any], variant: Variant, work: Callable[[], None]) -> float:
    """Seconds for one transaction: the variant's context, the work, the commit."""
    conn.execute("CHECKPOINT")
    started = time.perf_counter()
    with conn.transaction():
        variant.set_context(conn)
        work()
    return time.perf_counter() - started


def sequence(conn: psycopg.Connection[Any], variant: Variant, rows: int, values_sql: str,
             copy_bytes: bytes) -> dict[str, float]:
    """One round of every statement on one variant's (emptied) table."""
    def run(text: str) -> Callable[[], None]:
        return lambda: conn.execute(variant.statement(text)).close()

    def copy() -> None:
        with conn.cursor().copy(variant.statement(f"COPY todo ({COLUMNS}) FROM STDIN")) as c:
            c.write(copy_bytes)

    variants.reset(conn, variant)
    took = {
        "insert_select": timed(conn, variant, run(
            f"INSERT INTO todo ({COLUMNS}) SELECT 'task of ' || g, 'user ' || g % 1000, false, g % 5, "
            f"repeat('p', 100) FROM generate_series(1, {rows}) AS g")),
        "update": timed(conn, variant, run("UPDATE todo SET is_completed = NOT is_completed, priority = priority + 1")),
        "delete": timed(conn, variant, run("DELETE FROM todo")),
    }
    conn.execute("VACUUM todo")
    took["insert_values"] = timed(conn, variant, run(values_sql))
    variants.reset(conn, variant)
    took["copy"] = timed(conn, variant, copy)
    variants.reset(conn, variant)
    return took


def bulk(dsn: str, results: Results, *, rows: int, values_rows: int, rounds: int,
         log: Callable[[str], None]) -> dict[str, dict[str, float]]:
    """W2; returns the median seconds of each statement for each variant."""
    values_sql, copy_bytes = values_insert(values_rows), copy_data(rows)
    samples: dict[str, dict[str, list[float]]] = {v.key: {} for v in variants.ALL}
    for number in range(rounds):
        for variant in variants.rotated(number):
            with server.connect(dsn, search_path=variant.schema) as conn:
                took = sequence(conn, variant, rows, values_sql, copy_bytes)
            for name, seconds in took.items():
                samples[variant.key].setdefault(name, []).append(seconds)
            log(f"  W2 round {number + 1}/{rounds}: {variant.label} "
                + ", ".join(f"{k} {v:.2f}s" for k, v in took.items()))
    medians = {v: {s: statistics.median(x) for s, x in by.items()} for v, by in samples.items()}
    for name, label in statements(rows, values_rows):
        row = results.row(f"w2_{name}", label, "s", "lower", "plain, full identity")
        for variant in variants.ALL:
            m = medians[variant.key][name]
            row.cells[variant.key] = Cell(
                m, {"plain": m / medians[PLAIN.key][name], "full identity": m / medians[FULL_IDENTITY.key][name]},
                samples[variant.key][name])
    return medians
