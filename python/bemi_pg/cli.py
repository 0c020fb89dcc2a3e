"""The bemi-pg command line: worker, status, changes, demo.

Connects with libpq conventions: --dsn, else DATABASE_URL, else the PG* environment.
Progress goes to stdout, errors to stderr prefixed "error:"; any failure exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from bemi_pg import demo as demo_module

TRAIL_COLUMNS = ("primary_key", "table", "operation", "before", "after", "context", "committed_at")


class Failure(Exception):
    """A failure the user can act on: printed as "error: ..." with exit status 1."""


def connect(args: argparse.Namespace) -> psycopg.Connection[dict[str, Any]]:
    dsn = args.dsn or os.environ.get("DATABASE_URL", "")
    return psycopg.connect(dsn, autocommit=True, row_factory=dict_row, application_name="bemi-pg")


def say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, flush=True)


def human_bytes(n: int | None) -> str:
    size = float(n or 0)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------
# worker: keeps ingesting until SIGINT/SIGTERM, reconnecting when the server goes away.

WORKER_LOCK = "SELECT pg_try_advisory_lock(hashtext('bemi.worker')) AS locked"
LAG = """
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), p.lsn)::bigint AS pending_bytes,
       (SELECT extract(epoch FROM clock_timestamp() - max(c.committed_at)) FROM bemi.changes c) AS lag_seconds
FROM bemi.progress p WHERE p.slot_name = 'bemi'
"""


def worker(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    total, backoff = 0, 0.5
    while not stop.is_set():
        try:
            with connect(args) as conn:
                if not conn.execute(WORKER_LOCK).fetchone()["locked"]:  # type: ignore[index]
                    raise Failure("another bemi-pg worker is already ingesting this database; not starting a second")
                say(args, f"worker: ingesting from slot bemi of {conn.info.dbname} (batch {args.batch})")
                backoff = 0.5
                total = ingest_until_stopped(args, conn, stop, total)
        except psycopg.OperationalError as error:
            print(f"error: {str(error).strip()}; reconnecting in {backoff:.1f} s", file=sys.stderr, flush=True)
            stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)
    say(args, f"worker: stopped after {total} changes")
    return 0


def ingest_until_stopped(
    args: argparse.Namespace, conn: psycopg.Connection[dict[str, Any]], stop: threading.Event, total: int
) -> int:
    while not stop.is_set():
        started = time.monotonic()
        n = conn.execute("SELECT bemi.ingest(%s) AS n", [args.batch]).fetchone()["n"]  # type: ignore[index]
        total += n
        lag = conn.execute(LAG).fetchone() or {}
        if n:
            rate = n / max(time.monotonic() - started, 1e-6)
            say(args, f"ingested {n} changes ({rate:,.0f}/s), total {total}, "
                      f"newest committed {float(lag.get('lag_seconds') or 0):.1f} s ago, "
                      f"pending WAL {human_bytes(lag.get('pending_bytes'))}")
        if n < args.batch:
            stop.wait(args.interval)
    return total


# ---------------------------------------------------------------------------------------
# status: the slot, how far ingest got, how much WAL is retained, the tracked tables.

STATUS = """
SELECT s.slot_name, s.active, s.confirmed_flush_lsn, p.lsn AS ingested_lsn, p.ingested_at,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint AS retained_bytes,
       pg_wal_lsn_diff(pg_current_wal_lsn(), greatest(p.lsn, s.confirmed_flush_lsn))::bigint AS pending_bytes,
       s.wal_status
FROM pg_replication_slots s LEFT JOIN bemi.progress p ON p.slot_name = s.slot_name
WHERE s.slot_name = 'bemi' AND s.database = current_database()
"""


def status(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        slot = conn.execute(STATUS).fetchone()
        last = conn.execute(
            "SELECT count(*) AS n, max(committed_at) AS committed_at, max(queued_at) AS queued_at FROM bemi.changes"
        ).fetchone() or {}
        tracked = [r["relation"] for r in conn.execute("SELECT format('%I.%I', schema, \"table\") AS relation FROM bemi.tracked ORDER BY 1")]
        database = conn.info.dbname
    rows = [
        ("database", database),
        ("tracked tables", ", ".join(tracked) or "none (SELECT bemi.track('table'))"),
        ("changes stored", f"{last.get('n', 0):,}"),
        ("last change committed", str(last.get("committed_at") or "-")),
        ("last change ingested", str(last.get("queued_at") or "-")),
    ]
    if slot is None:
        for label, value in rows:
            print(f"{label:<22} {value}")
        raise Failure("the replication slot bemi does not exist: changes are not being captured "
                      "(create it with SELECT bemi.create_slot())")
    rows[1:1] = [
        ("slot", f"bemi ({'in use' if slot['active'] else 'idle'}, WAL {slot['wal_status']})"),
        ("ingested up to", f"{slot['ingested_lsn']} at {slot['ingested_at']}"),
        ("pending WAL", human_bytes(slot["pending_bytes"])),
        ("retained WAL", human_bytes(slot["retained_bytes"])),
    ]
    for label, value in rows:
        print(f"{label:<22} {value}")
    if slot["retained_bytes"] > args.max_retained_mb * 1024 * 1024:
        print(f"warning: the slot retains {human_bytes(slot['retained_bytes'])} of WAL, over "
              f"{args.max_retained_mb} MB: is bemi-pg worker running?", file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------------------------------
# changes: the trail, printed like psql prints it.

def changes(args: argparse.Namespace) -> int:
    where, params = ["true"], []
    if args.table:
        schema, _, table = args.table.rpartition(".")
        where.append('"table" = %s' + (" AND schema = %s" if schema else ""))
        params += [table, schema] if schema else [table]
    if args.key is not None:
        where.append("primary_key = %s")
        params.append(args.key)
    if args.context:
        try:
            context = json.loads(args.context)
        except json.JSONDecodeError as error:
            raise Failure(f"--context is not JSON: {error}") from error
        where.append("context @> %s::jsonb")
        params.append(json.dumps(context))
    for bound, op in ((args.since, ">="), (args.until, "<")):
        if bound:
            where.append(f"committed_at {op} %s::timestamptz")
            params.append(bound)
    query = (f"SELECT * FROM (SELECT * FROM bemi.changes WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT %s) c "
             "ORDER BY id")
    with connect(args) as conn:
        rows = conn.execute(query, [*params, args.limit]).fetchall()
    print_trail(rows, as_json=args.json)
    return 0


def print_trail(rows: Sequence[dict[str, Any]], as_json: bool = False) -> None:
    if as_json:
        for row in rows:
            print(json.dumps({c: row[c] for c in TRAIL_COLUMNS}, default=str))
        return
    cells = [[cell(row[c]) for c in TRAIL_COLUMNS] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(TRAIL_COLUMNS)]
    print(" " + " | ".join(c.ljust(w) for c, w in zip(TRAIL_COLUMNS, widths)))
    print("-" + "-+-".join("-" * w for w in widths) + "-")
    for r in cells:
        print(" " + " | ".join(v.ljust(w) for v, w in zip(r, widths)))
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


def cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else str(value)


# ---------------------------------------------------------------------------------------
# demo: the example every user reads first, on a throwaway server.

def demo(args: argparse.Namespace) -> int:
    say(args, "demo: starting a throwaway PostgreSQL with wal_level=logical")
    with demo_module.throwaway_server() as dsn:
        with psycopg.connect(dsn, autocommit=True) as admin:
            try:
                admin.execute("CREATE EXTENSION bemi")
            except psycopg.errors.UndefinedFile as error:
                raise Failure("the bemi extension is not installed on this server: run make install") from error
            admin.execute("SELECT bemi.create_slot()")
        with psycopg.connect(dsn) as conn:
            demo_module.seed_example(conn)
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as admin:
            n = admin.execute("SELECT bemi.ingest() AS n").fetchone()["n"]  # type: ignore[index]
            say(args, f"demo: ingested {n} changes into bemi.changes\n")
            print_trail(admin.execute("SELECT * FROM bemi.changes ORDER BY id").fetchall())
    say(args, "\ndemo: server stopped and removed")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bemi-pg", description="Context-aware change tracking for PostgreSQL.")
    p.add_argument("--dsn", help="libpq connection string or URL (default: DATABASE_URL, then PG* variables)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors and results")
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", help="keep ingesting changes into bemi.changes")
    w.add_argument("--batch", type=int, default=10000, help="changes per ingest call (default 10000)")
    w.add_argument("--interval", type=float, default=1.0, help="seconds to wait when caught up (default 1)")
    w.set_defaults(run=worker)

    s = sub.add_parser("status", help="slot, lag, tracked tables, last ingested change")
    s.add_argument("--max-retained-mb", type=int, default=1024, help="warn above this much retained WAL")
    s.set_defaults(run=status)

    c = sub.add_parser("changes", help="print the audit trail")
    c.add_argument("--table", help="table or schema.table")
    c.add_argument("--key", help="primary key (text; a JSON array for composite keys)")
    c.add_argument("--context", help='JSON the context must contain, e.g. \'{"user_id": 7}\'')
    c.add_argument("--since", help="committed at or after (timestamp)")
    c.add_argument("--until", help="committed before (timestamp)")
    c.add_argument("--limit", type=int, default=50, help="newest N changes (default 50)")
    c.add_argument("--json", action="store_true", help="one JSON object per line")
    c.set_defaults(run=changes)

    d = sub.add_parser("demo", help="run the example on a throwaway server")
    d.set_defaults(run=demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except Failure as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except psycopg.Error as error:
        print(f"error: {str(error).strip()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
