"""make stress: the long fault and load scenarios at full size, on a throwaway server, then a
table of scenario, trials, changes made, changes found, missing, duplicated.

    python stress/run.py            20 kills, 5 immediate stops, 8 x 20,000 transactions
    python stress/run.py --quick    a few of each, for a smoke run

Exits 1 when any change is missing or duplicated, or any other check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable

import psycopg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scenarios  # noqa: E402

from bemi_pg.demo import throwaway_server  # noqa: E402


def fresh_database(server_dsn: str) -> str:
    name = f"stress_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg.conninfo.make_conninfo(server_dsn, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION bemi")
        conn.execute("SELECT bemi.create_slot()")
    return dsn


def drop_database(server_dsn: str, dsn: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s", [name])
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few trials of each scenario")
    args = parser.parse_args()
    kills, crashes, writers, transactions = (3, 1, 4, 500) if args.quick else (20, 5, 8, 20_000)

    failed = False
    rows: list[scenarios.Tally] = []
    with throwaway_server("-c fsync=off -c max_connections=100 -c max_replication_slots=10") as server:
        workdir = str(psycopg.conninfo.conninfo_to_dict(server)["host"])
        datadir, logfile = os.path.join(workdir, "data"), os.path.join(workdir, "log")
        runs: list[tuple[str, Callable[[str], scenarios.Tally]]] = [
            ("kill -9 worker", lambda dsn: scenarios.worker_kills(dsn, kills, writers=3)),
            ("immediate stop", lambda dsn: scenarios.server_crashes(dsn, datadir, logfile, crashes, writers=3)),
            ("load", lambda dsn: scenarios.load(dsn, writers, transactions)),
        ]
        for name, run in runs:
            dsn = fresh_database(server)
            started = time.monotonic()
            try:
                tally = run(dsn)
            except Exception:  # a failed check: reported, and the other scenarios still run
                failed = True
                print(f"stress: {name} FAILED", file=sys.stderr)
                traceback.print_exc()
            else:
                rows.append(tally)
                failed |= bool(tally.missing or tally.duplicated or tally.made != tally.found)
                print(f"stress: {name} done in {time.monotonic() - started:.0f} s", flush=True)
            drop_database(server, dsn)

    print()
    print(scenarios.Tally.header())
    for tally in rows:
        print(tally.row())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
