"""W1 and W1-py: small transactions (create a todo, complete it), per variant.

W1 drives them with pgbench (two clients), CPU-bound and with default durability; variants
run interleaved for several rounds and the median counts. W1-py drives the same
transaction from Python, to show what the bemi_pg client and the Django and SQLAlchemy
integrations themselves cost.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import psycopg

import bemi_pg
from bench import frameworks, server, variants
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
# W1-py: the transaction from Python, one connection, as an app would send it: from psycopg
# (bemi_pg.with_context against conn.transaction()) and through the Django and SQLAlchemy
# integrations (bench/frameworks.py), with and without the statement's SQL in the context.

def request(conn: psycopg.Connection[Any], user_id: int) -> None:
    todo_id = conn.execute(frameworks.INSERT, [f"task of {user_id}", f"user {user_id}", user_id % 5]).fetchone()[0]  # type: ignore[index]
    conn.execute(frameworks.UPDATE, [todo_id])


def plain_transaction(conn: psycopg.Connection[Any], user_id: int) -> None:
    with conn.transaction():
        request(conn, user_id)


def with_context(conn: psycopg.Connection[Any], user_id: int) -> None:
    with bemi_pg.with_context(conn, frameworks.request_context(user_id)):
        request(conn, user_id)


def psycopg_client(transaction: Callable[[psycopg.Connection[Any], int], None]) -> Opener:
    @contextmanager
    def open_connection(dsn: str, schema: str) -> Iterator[frameworks.Transaction]:
        with server.connect(dsn, search_path=schema, synchronous_commit="off") as conn:
            yield lambda user_id: transaction(conn, user_id)

    return open_connection


Opener = Callable[[str, str], AbstractContextManager[frameworks.Transaction]]  # (dsn, schema)
SQL_COLUMN = "bemi + SQL"


@dataclass(frozen=True)
class PyCase:
    column: str  # the table column: a variant's key, or SQL_COLUMN
    row: str  # the results row
    variant: Variant  # whose table it writes
    name: str  # as logged
    open: Opener


PY_ROWS = {
    "w1_py": "W1-py tps, with_context vs conn.transaction()",
    "w1_py_django": "W1-py Django tps, atomic() + cursor, context vs none",
    "w1_py_sqlalchemy": "W1-py SQLAlchemy tps, engine.begin(), context vs none",
}
PY_CASES = [
    PyCase(PLAIN.key, "w1_py", PLAIN, "conn.transaction()", psycopg_client(plain_transaction)),
    PyCase(BEMI.key, "w1_py", BEMI, "with_context", psycopg_client(with_context)),
    *(case for integration, opener in (("django", frameworks.django), ("sqlalchemy", frameworks.sqlalchemy)) for case in (
        PyCase(PLAIN.key, f"w1_py_{integration}", PLAIN, f"{integration} without context",
               partial(opener, tracked=False, sql=False)),
        PyCase(BEMI.key, f"w1_py_{integration}", BEMI, f"{integration} with context",
               partial(opener, tracked=True, sql=False)),
        PyCase(SQL_COLUMN, f"w1_py_{integration}", BEMI, f"{integration} with context and SQL",
               partial(opener, tracked=True, sql=True)),
    )),
]


def python_client(dsn: str, results: Results, *, rounds: int, seconds: float,
                  log: Callable[[str], None]) -> dict[str, float]:
    """W1-py, every case interleaved per round; returns the median tps of "column:row"."""
    samples: dict[PyCase, list[float]] = {case: [] for case in PY_CASES}
    for number in range(rounds):
        for case in PY_CASES:
            with case.open(dsn, case.variant.schema) as transaction:
                for user_id in range(-20, 0):  # warm up: connection, caches, prepared statements
                    transaction(user_id)
                done, user_id, started = 0, 0, time.perf_counter()
                while (elapsed := time.perf_counter() - started) < seconds:
                    user_id += 1
                    transaction(user_id)
                    done += 1
            tps = done / elapsed
            samples[case].append(tps)
            log(f"  W1-py round {number + 1}/{rounds}: {case.name} {tps:,.0f} tps")
    medians = {case: statistics.median(values) for case, values in samples.items()}
    rows = {key: results.row(key, label, "tps", "higher", "plain") for key, label in PY_ROWS.items()}
    for case, value in medians.items():
        base = next(medians[c] for c in PY_CASES if c.row == case.row and c.column == PLAIN.key)
        rows[case.row].cells[case.column] = Cell(value, {"plain": value / base}, samples[case])
    return {f"{case.column}:{case.row}": value for case, value in medians.items()}
