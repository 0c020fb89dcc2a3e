"""W1 and W1-py: small transactions (create a todo, complete it), per variant.

W1 drives them with pgbench (two clients), CPU-bound and with default durability; variants
run interleaved for several rounds and the median counts. W1-py drives the same
transaction from Python, to show what the bemi_pg client itself costs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg

import bemi_pg
from bench import server, variants
from bench.report import Cell, Results
from bench.variants import BEMI, PLAIN, Variant


def oltp(dsn: str, results: Results, *, key: str, label: str, synchronous_commit: str,
         rounds: int, seconds: float, log: Callable[[str], None]) -> dict[str, float]:
    """W1 with one durability setting; returns the median tps of each variant."""
    samples: dict[str, list[float]] = {v.key: [] for v in variants.ALL}
    for number in range(rounds):
        for variant in variants.rotated(number):
            with server.connect(dsn) as conn:
                conn.execute("CHECKPOINT")
            tps = server.pgbench(dsn, variant.oltp_script, seconds=seconds, search_path=variant.schema,
                                 synchronous_commit=synchronous_commit)
            samples[variant.key].append(tps)
            log(f"  {label} round {number + 1}/{rounds}: {variant.label} {tps:,.0f} tps")
    medians = {k: statistics.median(v) for k, v in samples.items()}
    row = results.row(key, label, "tps", "higher", "plain")
    for variant in variants.ALL:
        m = medians[variant.key]
        row.cells[variant.key] = Cell(m, {"plain": m / medians[PLAIN.key]}, samples[variant.key])
    return medians


# ---------------------------------------------------------------------------------------
# W1-py: the transaction from Python, one connection, as an app would send it.

INSERT = ("INSERT INTO todo (task, owner, priority, payload) VALUES (%s, %s, %s, repeat('p', 100)) "
          "RETURNING id")
UPDATE = "UPDATE todo SET is_completed = true WHERE id = %s"


def request(conn: psycopg.Connection[Any], user_id: int) -> None:
    todo_id = conn.execute(INSERT, [f"task of {user_id}", f"user {user_id}", user_id % 5]).fetchone()[0]  # type: ignore[index]
    conn.execute(UPDATE, [todo_id])


def context(user_id: int) -> dict[str, Any]:
    return {"user_id": user_id, "endpoint": "/todo", "method": "POST"}


def plain_transaction(conn: psycopg.Connection[Any], user_id: int) -> None:
    with conn.transaction():
        request(conn, user_id)


def with_context(conn: psycopg.Connection[Any], user_id: int) -> None:
    with bemi_pg.with_context(conn, context(user_id)):
        request(conn, user_id)


# (column key, row, variant whose table it writes, transaction)
PY_CASES: list[tuple[str, str, Variant, Callable[[psycopg.Connection[Any], int], None]]] = [
    (PLAIN.key, "py_tps", PLAIN, plain_transaction),
    (BEMI.key, "py_tps", BEMI, with_context),
]


def python_client(dsn: str, results: Results, *, rounds: int, seconds: float,
                  log: Callable[[str], None]) -> dict[str, float]:
    samples: dict[tuple[str, str], list[float]] = {(c, r): [] for c, r, _, _ in PY_CASES}
    for number in range(rounds):
        for column, row_key, variant, transaction in PY_CASES:
            with server.connect(dsn, search_path=variant.schema, synchronous_commit="off") as conn:
                done, user_id, started = 0, 0, time.perf_counter()
                while (elapsed := time.perf_counter() - started) < seconds:
                    user_id += 1
                    transaction(conn, user_id)
                    done += 1
            tps = done / elapsed
            samples[(column, row_key)].append(tps)
            log(f"  W1-py round {number + 1}/{rounds}: {transaction.__name__} {tps:,.0f} tps")
    medians = {k: statistics.median(v) for k, v in samples.items()}
    base = medians[(PLAIN.key, "py_tps")]
    rows = {
        "py_tps": results.row("w1_py", "W1-py tps, with_context vs conn.transaction()", "tps", "higher", "plain"),
    }
    for (column, row_key), value in medians.items():
        rows[row_key].cells[column] = Cell(value, {"plain": value / base}, samples[(column, row_key)])
    return {f"{c}:{r}": v for (c, r), v in medians.items()}
