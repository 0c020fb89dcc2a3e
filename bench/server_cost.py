"""Server work per W1 transaction, counted in instructions: what each server-side step of
capturing a context costs, unmoved by whatever else runs on the machine.

    python -m bench.server_cost [--transactions 300]

Builds the bench's variants (bench/variants.py) in a throwaway cluster, stops it, and runs
each case's transactions through a single-user backend (``postgres --single``) under
valgrind (callgrind), once with 100 transactions and once with ``--transactions``; the
difference, divided by the difference in transactions, is the backend's instructions per
transaction with start-up and shut-down taken out. Every case starts from the same copy of the
cluster. Needs valgrind. Wall-clock rates (``make bench``) move by 10-30 % on a shared
machine; these counts repeat to within about 1 %.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

import psycopg

from bench import variants
from bench.server import bindir
from bench.variants import AUDIT, BEMI, FULL_IDENTITY, PLAIN, ROW_TRIGGER, Variant

CONTEXT = '{{"user_id": {n}, "endpoint": "/todo", "method": "POST"}}'
INSERT = "INSERT INTO todo (task, owner, priority, payload) VALUES ('task of {n}', 'user {n}', {m}, repeat('p', 100))"
UPDATE = "UPDATE todo SET is_completed = true WHERE id = (SELECT lastval())"

Statements = Callable[[int], list[str]]
Case = tuple[str, Variant, Statements]  # (name, the variant whose table it writes, its statements)


def transaction(first: str | None = None, comment: str = "", leading: str = "") -> Statements:
    """BEGIN; [first;] INSERT; UPDATE; COMMIT, with the context where the variant puts it."""
    def statements(n: int) -> list[str]:
        context = CONTEXT.format(n=n)
        around = [leading.format(context=context), comment.format(context=context)]
        writes = [around[0] + INSERT.format(n=n, m=n % 5) + around[1], around[0] + UPDATE + around[1]]
        return ["BEGIN", *([first.format(context=context)] if first else []), *writes, "COMMIT"]
    return statements


def statement(text: str) -> Statements:
    return lambda n: [text.format(context=CONTEXT.format(n=n))]


CASES: list[Case] = [
    ("plain", PLAIN, transaction()),
    ("full identity", FULL_IDENTITY, transaction()),
    ("bemi, no context", BEMI, transaction()),
    ("bemi, use_context with BEGIN", BEMI, transaction("CALL bemi.use_context('{context}')")),
    ("bemi, set_context with BEGIN", BEMI, transaction("SELECT bemi.set_context('{context}')")),
    ("bemi, comment on each write", BEMI, transaction(comment="\n/*Bemi {context} Bemi*/")),
    ("row-trigger emit", ROW_TRIGGER, transaction(leading="/*Bemi {context} Bemi*/ ")),
    ("audit table", AUDIT, transaction("SELECT set_config('bench.context', '{context}', true)")),
    ("statement: SELECT 1", PLAIN, statement("SELECT 1")),
    ("statement: SELECT bemi.set_context(...)", PLAIN, statement("SELECT bemi.set_context('{context}')")),
    ("statement: CALL bemi.use_context(...)", PLAIN, statement("CALL bemi.use_context('{context}')")),
]


def as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def build(data: str, socket_dir: str) -> None:
    """A stopped cluster holding the extension and every variant's empty table."""
    run = [*as_postgres()]
    subprocess.run([*run, os.path.join(bindir(), "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "--no-sync"],
                   check=True, stdout=subprocess.DEVNULL)
    options = f"-c wal_level=logical -c listen_addresses='' -c unix_socket_directories={socket_dir} -c port=5432"
    subprocess.run([*run, os.path.join(bindir(), "pg_ctl"), "-D", data, "-o", options, "-w", "-l",
                    os.path.join(socket_dir, "log"), "start"], check=True, stdout=subprocess.DEVNULL)
    try:
        with psycopg.connect(host=socket_dir, port=5432, user="postgres", dbname="postgres", autocommit=True) as conn:
            variants.create_all(conn)
            conn.execute("CHECKPOINT")
    finally:
        subprocess.run([*run, os.path.join(bindir(), "pg_ctl"), "-D", data, "-m", "fast", "-w", "stop"],
                       check=True, stdout=subprocess.DEVNULL)


def instructions(template: str, work: str, variant: Variant, statements: Statements, count: int) -> int:
    """The instructions a single-user backend runs for ``count`` transactions of a case."""
    subprocess.run([*as_postgres(), "rm", "-rf", work], check=True)
    subprocess.run([*as_postgres(), "cp", "-a", template, work], check=True)
    lines = [f"SET search_path = {variant.schema}, public", "SET synchronous_commit = off"]
    for n in range(1, count + 1):
        lines += statements(n)
    # One statement a line, with no terminating semicolon: the query string each statement's
    # current_query() returns is then what a driver sends (with -j it would end with ";").
    script = "".join(line.replace("\n", " ") + "\n" for line in lines)
    done = subprocess.run([*as_postgres(), "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                           os.path.join(bindir(), "postgres"), "--single", "-D", work,
                           "-c", "wal_level=logical", "postgres"],
                          input=script, capture_output=True, text=True)
    collected = re.search(r"Collected : (\d+)", done.stderr)
    # A single-user backend reports errors on stderr, and goes on with the next statement.
    if done.returncode != 0 or not collected or " ERROR: " in done.stdout + done.stderr:
        raise RuntimeError(f"single-user run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return int(collected.group(1))


def costs(cases: list[Case], transactions: int = 300, log: Callable[[str], None] = print) -> dict[str, float]:
    """k instructions per transaction of each case (the first is what the ratios logged are to),
    each logged as it is counted."""
    workdir = tempfile.mkdtemp(prefix="bemi-cost-")
    counted: dict[str, float] = {}
    try:
        if as_postgres():
            shutil.chown(workdir, "postgres")
        template, work = os.path.join(workdir, "template"), os.path.join(workdir, "work")
        build(template, workdir)
        for name, variant, statements in cases:
            low = instructions(template, work, variant, statements, 100)
            high = instructions(template, work, variant, statements, transactions)
            counted[name] = per = (high - low) / (transactions - 100) / 1000
            log(f"{name:42s} {per:15.1f}  x{per / next(iter(counted.values())):.3f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return counted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=300, help="transactions of the longer run (> 100)")
    args = parser.parse_args(argv)
    if not shutil.which("valgrind"):
        print("error: valgrind is needed (apt-get install valgrind)", file=sys.stderr)
        return 1
    print(f"{'case':42s} {'k instructions':>15s}  ratio to plain")
    costs(CASES, args.transactions, log=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
