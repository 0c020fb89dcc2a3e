"""The bemi-pg command line: worker, status, changes, demo.

Connects with libpq conventions: --dsn, else DATABASE_URL, else the PG* environment.
Progress goes to stdout, errors to stderr prefixed "error:"; any failure exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

import bemi_pg
from bemi_pg import bundle
from bemi_pg import cli_history
from bemi_pg import demo as demo_module
from bemi_pg import worker as worker_module
from bemi_pg.worker import human_bytes
from bemi_pg import install as installer
from bemi_pg import retention

TRAIL_COLUMNS = ("primary_key", "table", "operation", "before", "after", "context", "committed_at")


class Failure(Exception):
    """A failure the user can act on: printed as "error: ..." with exit status 1."""


def connect(args: argparse.Namespace, trail: bool = False) -> psycopg.Connection[dict[str, Any]]:
    """The database of --dsn (else DATABASE_URL, else PG*); with trail, the one that holds the
    trail: --trail-dsn when the trail is kept in a database of its own."""
    dsn = (trail and getattr(args, "trail_dsn", None)) or args.dsn or os.environ.get("DATABASE_URL", "")
    return psycopg.connect(dsn, autocommit=True, row_factory=dict_row, application_name="bemi-pg")


def connect_trail(args: argparse.Namespace) -> AbstractContextManager[psycopg.Connection[dict[str, Any]] | None]:
    """The database of --trail-dsn, for time travel and revert; None where the trail is in the source."""
    return connect(args, trail=True) if args.trail_dsn else nullcontext()


def say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, flush=True)


# ---------------------------------------------------------------------------------------
# worker: keeps ingesting until SIGINT/SIGTERM (or, with --drain, until nothing is pending),
# streaming the slot or through bemi.ingest(); see bemi_pg/worker.py.

def worker(args: argparse.Namespace) -> int:
    if args.batch < 1 or not args.interval > 0:
        raise Failure("--batch must be a positive number of changes and --interval a positive number of seconds")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    options = worker_module.Options(dsn=args.dsn or os.environ.get("DATABASE_URL", ""), batch=args.batch,
                                    interval=args.interval, drain=args.drain, sql=args.sql, trail_dsn=args.trail_dsn)
    try:
        totals = worker_module.run(options, stop, lambda line: say(args, line))
    except worker_module.Failure as error:
        raise Failure(str(error)) from error
    seconds = time.monotonic() - totals.started
    say(args, f"worker: {'drained' if args.drain and not stop.is_set() else 'stopped after'} {totals.changes} changes "
              f"in {seconds:.1f} s ({totals.changes / max(seconds, 1e-6):,.0f}/s)")
    return 0


# ---------------------------------------------------------------------------------------
# status: the worker, the slot, how far ingest got, how much WAL is retained, what needs care.

def slot_name(conn: psycopg.Connection[Any]) -> str:
    """This database's slot: bemi.slot_name() from 1.1 on, "bemi" before."""
    row = conn.execute("SELECT to_regprocedure('bemi.slot_name()') IS NOT NULL AS per_database").fetchone()
    if row and row["per_database"]:
        return str(conn.execute("SELECT bemi.slot_name() AS name").fetchone()["name"])  # type: ignore[index]
    return "bemi"


SLOT = """
SELECT s.slot_name, s.plugin, s.active, s.wal_status, s.confirmed_flush_lsn::text AS confirmed_flush_lsn,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint AS retained_bytes,
       pg_wal_lsn_diff(pg_current_wal_lsn(), greatest(p.lsn, s.confirmed_flush_lsn))::bigint AS pending_bytes,
       to_jsonb(p) - 'slot_name' AS progress
FROM pg_replication_slots s LEFT JOIN bemi.progress p ON p.slot_name = s.slot_name
WHERE s.slot_name = %(slot)s AND s.database = current_database()
"""

# Who reads the slot: the process holding it (the streaming worker's walsender, or an ingest
# in progress), else the holder of the SQL worker's advisory lock.
WORKER = """
SELECT a.pid, a.backend_start, a.application_name, host(a.client_addr) AS client_addr, a.backend_type
FROM pg_stat_activity a
WHERE a.pid = (SELECT s.active_pid FROM pg_replication_slots s WHERE s.slot_name = %(slot)s)
   OR a.pid IN (SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext('bemi.worker')::bigint)
ORDER BY a.backend_type = 'walsender' DESC, a.backend_start
LIMIT 1
"""

# Tracked tables and their partitions that do not log whole rows: their "before" is incomplete.
NOT_FULL = """
WITH RECURSIVE family(relid) AS (
  SELECT relation::oid FROM bemi.tracked
  UNION
  SELECT i.inhrelid FROM pg_inherits i JOIN family f ON i.inhparent = f.relid
)
SELECT format('%I.%I', n.nspname, c.relname) AS relation,
       CASE c.relreplident WHEN 'd' THEN 'default' WHEN 'n' THEN 'nothing' WHEN 'i' THEN 'index' END AS identity
FROM family f
JOIN pg_class c ON c.oid = f.relid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relreplident <> 'f' AND c.relkind = 'r'
ORDER BY 1
"""


def status_report(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Everything bemi-pg status shows, as JSON-ready values."""
    if not (conn.execute("SELECT to_regclass('bemi.progress') IS NOT NULL AS ok").fetchone() or {}).get("ok"):
        raise Failure(f"bemi is not installed in database {conn.info.dbname} "
                      "(bemi-pg install, or CREATE EXTENSION bemi where the extension files are installed)")
    slot = slot_name(conn)
    found = conn.execute(SLOT, {"slot": slot}).fetchone()
    worker_row = conn.execute(WORKER, {"slot": slot}).fetchone()
    last = conn.execute(
        "SELECT count(*) AS n, max(committed_at) AS committed_at, max(queued_at) AS queued_at FROM bemi.changes"
    ).fetchone() or {}
    has_problem = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'bemi.changes'::regclass "
        "AND attname = 'problem' AND NOT attisdropped) AS yes").fetchone()
    problems = (conn.execute("SELECT count(*) AS n FROM bemi.changes WHERE problem IS NOT NULL").fetchone() or {}
                ).get("n", 0) if has_problem and has_problem["yes"] else 0
    return {
        "database": conn.info.dbname,
        "wal_level": (conn.execute("SELECT current_setting('wal_level') AS v").fetchone() or {}).get("v"),
        "slot": None if found is None else {
            "name": found["slot_name"], "plugin": found["plugin"], "active": found["active"],
            "wal_status": found["wal_status"], "confirmed_flush_lsn": found["confirmed_flush_lsn"],
            "pending_bytes": found["pending_bytes"], "retained_bytes": found["retained_bytes"],
            "progress": found["progress"],
        },
        "slot_name": slot,
        "worker": None if worker_row is None else {
            "pid": worker_row["pid"], "connected_since": iso(worker_row["backend_start"]),
            "application_name": worker_row["application_name"], "client_addr": worker_row["client_addr"],
            "streaming": worker_row["backend_type"] == "walsender",
        },
        "tracked": [r["relation"] for r in conn.execute(
            "SELECT format('%I.%I', schema, \"table\") AS relation FROM bemi.tracked ORDER BY 1")],
        "not_full_identity": [f"{r['relation']} ({r['identity']})" for r in conn.execute(NOT_FULL)],
        "changes": last.get("n", 0),
        "problem_changes": problems,
        "last_committed_at": iso(last.get("committed_at")),
        "last_ingested_at": iso(last.get("queued_at")),
    }


def status(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        report = status_report(conn)
    slot, worker_info = report["slot"], report["worker"]
    warnings = []
    if slot is not None and slot["retained_bytes"] > args.max_retained_mb * 1024 * 1024:
        warnings.append(f"the slot retains {human_bytes(slot['retained_bytes'])} of WAL, over "
                        f"{args.max_retained_mb} MB: is bemi-pg worker running?")
    if report["problem_changes"]:
        warnings.append(f"{report['problem_changes']} stored changes have a problem "
                        "(SELECT id, problem FROM bemi.changes WHERE problem IS NOT NULL)")
    if report["not_full_identity"]:
        warnings.append("tracked tables without REPLICA IDENTITY FULL (their before images are incomplete): "
                        + ", ".join(report["not_full_identity"]) + "; run bemi.track() on them again")
    if report["wal_level"] != "logical":
        warnings.append(f"wal_level is {report['wal_level']}: nothing can be decoded until it is logical")
    if args.json:
        print(json.dumps({**report, "warnings": warnings}, default=str))
    else:
        rows = [
            ("database", report["database"]),
            ("wal_level", report["wal_level"]),
            ("worker", "none connected" if worker_info is None else
             f"connected since {worker_info['connected_since']} (pid {worker_info['pid']}"
             + (f", {worker_info['application_name']}" if worker_info["application_name"] else "")
             + (f", from {worker_info['client_addr']}" if worker_info["client_addr"] else "") + ")"),
            ("tracked tables", ", ".join(report["tracked"]) or "none (SELECT bemi.track('table'))"),
            ("not REPLICA IDENTITY FULL", ", ".join(report["not_full_identity"]) or "none"),
            ("changes stored", f"{report['changes']:,}"),
            ("problem changes", f"{report['problem_changes']:,}"),
            ("last change committed", report["last_committed_at"] or "-"),
            ("last change ingested", report["last_ingested_at"] or "-"),
        ]
        if slot is not None:
            progress = slot["progress"] or {}
            rows[3:3] = [
                ("slot", f"{slot['name']} ({slot['plugin']}, {'in use' if slot['active'] else 'idle'}, "
                         f"WAL {slot['wal_status']})"),
                ("ingested up to", str(progress.get("lsn", "-"))
                 + (f", every commit up to {until} stored" if (until := progress.get("caught_up_at")
                                                               or progress.get("committed_at")) else "")),
                ("pending WAL", human_bytes(slot["pending_bytes"])),
                ("retained WAL", human_bytes(slot["retained_bytes"])),
            ]
        for label, value in rows:
            print(f"{label:<26} {value}")
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    if slot is None:
        raise Failure(f"the replication slot {report['slot_name']} does not exist: changes are not being captured "
                      "(create it with SELECT bemi.create_slot())")
    return 2 if warnings else 0


def iso(value: Any) -> str | None:
    """A timestamp as ISO 8601 (None stays None)."""
    return None if value is None else value.isoformat()


# ---------------------------------------------------------------------------------------
# changes: the trail, printed like psql prints it, fitted to the terminal.

RELATIVE = re.compile(r"^\s*(\d+)\s*(s|sec|m|min|h|d|w)\s*$")
UNITS = {"s": "seconds", "sec": "seconds", "m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def time_bound(value: str) -> tuple[str, str]:
    """A --since/--until value as SQL and its parameter: "1h", "2d", "30m" mean that long ago,
    anything else is a timestamp."""
    if match := RELATIVE.match(value):
        return "now() - %s::interval", f"{match.group(1)} {UNITS[match.group(2)]}"
    return "%s::timestamptz", value


def changes(args: argparse.Namespace) -> int:
    if args.at:  # time travel: the row or the table as of then
        with connect(args) as conn, connect_trail(args) as trail:
            found = cli_history.changes_at(args, conn, time_bound, trail)
        if found is None:
            print(f"(no row with primary key {args.key} at {args.at})" if not args.json else "null")
        elif found:
            print_trail(found, as_json=args.json, columns=tuple(found[0]))
        else:
            print_trail([], as_json=args.json, columns=())
        return 0
    where, params = ["true"], []
    if args.table:
        schema, _, table = args.table.rpartition(".")
        where.append('"table" = %s' + (" AND schema = %s" if schema else ""))
        params += [table, schema] if schema else [table]
    if args.key is not None:
        where.append("primary_key = %s")
        params.append(args.key)
    if args.context:
        where.append("context @> %s::jsonb")
        params.append(json.dumps(cli_history.context_option(args.context)))
    for bound, op in ((args.since, ">="), (args.until, "<")):
        if bound:
            expression, value = time_bound(bound)
            where.append(f"committed_at {op} {expression}")
            params.append(value)
    if args.limit < 1:
        raise Failure(f"--limit must be a positive number, not {args.limit}")
    # One row more than asked tells whether the limit cut any.
    query = (f"SELECT * FROM (SELECT * FROM bemi.changes WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT %s) c "
             "ORDER BY id")
    with connect(args, trail=True) as conn:
        rows = conn.execute(query, [*params, args.limit + 1]).fetchall()
    if len(rows) > args.limit:
        rows = rows[1:]
        print(f"note: showing the newest {args.limit} matching changes; older ones match too "
              "(raise --limit or narrow with --since)", file=sys.stderr)
    print_trail(rows, as_json=args.json)
    return 0


def revert(args: argparse.Namespace) -> int:
    with connect(args) as conn, connect_trail(args) as trail:
        done = cli_history.revert(args, conn, time_bound, trail)
    print_trail(done, as_json=args.json, columns=cli_history.REVERT_COLUMNS)
    say(args, "revert: dry run, rolled back: nothing was changed" if args.dry_run else
        f"revert: committed ({sum(r['action'] in ('inserted', 'updated', 'deleted') for r in done)} rows written)")
    return 0


def json_row(row: dict[str, Any]) -> str:
    """A stored change as one line of JSON: every column, timestamps in ISO 8601."""
    return json.dumps({k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in row.items()},
                      default=str, ensure_ascii=False)


def print_trail(rows: Sequence[dict[str, Any]], as_json: bool = False, columns: Sequence[str] = TRAIL_COLUMNS) -> None:
    if as_json:
        for row in rows:
            print(json_row(row))
        return
    cells = [[cell(row[c]) for c in columns] for row in rows]
    widths = fit_widths([max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)],
                        [len(c) for c in columns], terminal_width())
    print(" " + " | ".join(clip(c, w).ljust(w) for c, w in zip(columns, widths)))
    print("-" + "-+-".join("-" * w for w in widths) + "-")
    for r in cells:
        print(" " + " | ".join(clip(v, w).ljust(w) for v, w in zip(r, widths)))
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


def terminal_width() -> int | None:
    """The width to fit tables in: $COLUMNS, else the terminal's; None when output goes to a pipe."""
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def fit_widths(widths: list[int], headers: list[int], total: int | None) -> list[int]:
    """Column widths whose table (" a | b ") fits in total characters: the widest column gives
    up a character at a time, down to its header's width, then (a narrow terminal) to 3."""
    widths = list(widths)
    if total is None:
        return widths
    for floor in (headers, [3] * len(widths)):
        while sum(widths) + 3 * len(widths) - 1 > total:
            shrinkable = [i for i, w in enumerate(widths) if w > max(floor[i], 3)]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda i: widths[i])
            widths[widest] -= 1
    return widths


def clip(value: str, width: int) -> str:
    return value if len(value) <= width else value[: width - 1] + "…"


def cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else str(value).replace("\n", "\\n")


# ---------------------------------------------------------------------------------------
# install, uninstall: bemi as plain SQL where CREATE EXTENSION is out of reach (install.py).

def install(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        database = conn.info.dbname
        if args.check:
            found = installer.checks(conn)
            for check in found:
                print(f"{'ok' if check.ok else 'MISSING':<8} {check.name:<15} {check.detail}")
            return 0 if all(check.ok for check in found) else 1
        try:
            before, after = installer.install(conn, notice=lambda message: print(message, file=sys.stderr),
                                              trail_only=args.trail_only)
        except installer.InstallError as error:
            raise Failure(f"cannot install: {error}") from error
    if before == after:
        say(args, f"install: bemi {after} is already installed in database {database}; nothing to do")
    elif before is None and args.trail_only:
        say(args, f"install: installed bemi {after} as plain SQL in schema bemi of database {database}, to hold a "
                  "trail\nnext: bemi-pg worker --dsn <source> --trail-dsn <this database>")
    elif before is None:
        say(args, f"install: installed bemi {after} as plain SQL in schema bemi of database {database}\n"
                  "next: SELECT bemi.track_all('public'); SELECT bemi.create_slot(); then run bemi-pg worker")
    else:
        say(args, f"install: upgraded bemi {before} to {after} in database {database}")
    return 0


def uninstall(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        database = conn.info.dbname
        try:
            trail = installer.uninstall(conn, drop_trail=args.drop_trail)
        except installer.InstallError as error:
            raise Failure(f"cannot uninstall: {error}") from error
    say(args, f"uninstall: removed bemi from database {database} (slot, publication, triggers; replica "
              f"identities restored); {trail}")
    return 0


# ---------------------------------------------------------------------------------------
# prune, restore-archive: old partitions of the trail archived, dropped, put back (retention.py).

def prune(args: argparse.Namespace) -> int:
    try:
        older_than = retention.parse_duration(args.older_than)
        with connect(args) as conn:
            pruned = retention.prune(conn, older_than, args.archive, lambda line: say(args, line),
                                     lock_timeout=f"{args.lock_timeout}s")
            horizon = conn.execute("SELECT bemi.retained_from() AS at").fetchone()
    except (retention.RetentionError, OSError) as error:
        raise Failure(str(error)) from error
    if pruned:
        say(args, f"prune: dropped {len(pruned)} partitions ({sum(p.rows for p in pruned):,} changes); "
                  f"the trail holds every change from {horizon['at'] if horizon else '-'}")
    return 0


def restore_archive(args: argparse.Namespace) -> int:
    try:
        with connect(args) as conn:
            retention.restore(conn, args.file, lambda line: say(args, line))
    except (retention.RetentionError, OSError) as error:
        raise Failure(str(error)) from error
    return 0


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
    p.add_argument("--version", action="version",
                   version=f"bemi-pg {bemi_pg.__version__} (installs bemi {bundle.latest_version()})")
    connection_options(p)
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", help="keep ingesting changes into bemi.changes")
    w.add_argument("--batch", type=int, default=20000,
                   help="changes per store; larger transactions are stored in parts (default 20000)")
    w.add_argument("--interval", type=float, default=2.0,
                   help="seconds between checks when caught up (default 2)")
    w.add_argument("--drain", action="store_true", help="ingest until nothing is pending, print the totals, exit")
    w.add_argument("--sql", action="store_true",
                   help="ingest through SELECT bemi.ingest() instead of streaming (needs only EXECUTE on it)")
    w.add_argument("--trail-dsn", help="store the trail in this database instead of the source "
                                       "(prepared with bemi-pg install --trail-only); see docs/trail-database.md")
    w.set_defaults(run=worker)

    s = sub.add_parser("status", help="slot, lag, tracked tables, last ingested change")
    s.add_argument("--max-retained-mb", type=int, default=1024, help="warn above this much retained WAL")
    s.add_argument("--json", action="store_true", help="one JSON object, for monitoring")
    s.set_defaults(run=status)

    c = sub.add_parser("changes", help="print the audit trail")
    c.add_argument("--table", help="table or schema.table")
    c.add_argument("--key", help="primary key (text; a JSON array for composite keys)")
    c.add_argument("--context", help='JSON the context must contain, e.g. \'{"user_id": 7}\'')
    c.add_argument("--since", help="committed at or after: a timestamp, or how long ago (30m, 1h, 2d, 1w)")
    c.add_argument("--until", help="committed before: a timestamp, or how long ago (30m, 1h, 2d, 1w)")
    c.add_argument("--limit", type=int, default=50, help="newest N changes (default 50)")
    c.add_argument("--json", action="store_true", help="one JSON object per line")
    c.add_argument("--at", help="time travel: print the --table (or its --key row) as of this time instead")
    c.add_argument("--trail-dsn", help="read the trail from this database (where bemi-pg worker --trail-dsn keeps it)")
    c.set_defaults(run=changes)
    cli_history.add_revert_command(sub).set_defaults(run=revert)

    d = sub.add_parser("demo", help="run the example on a throwaway server")
    d.set_defaults(run=demo)

    i = sub.add_parser("install", help="install or upgrade bemi as plain SQL (no CREATE EXTENSION needed)")
    i.add_argument("--check", action="store_true", help="report what the server and role allow; change nothing")
    i.add_argument("--trail-only", action="store_true",
                   help="a database that only holds the trail bemi-pg worker --trail-dsn writes (no REPLICATION needed)")
    i.set_defaults(run=install)

    u = sub.add_parser("uninstall", help="remove bemi: slot, publication, triggers, then the extension or install")
    u.add_argument("--drop-trail", action="store_true", help="drop the trail too (default: keep it in bemi_trail)")
    u.set_defaults(run=uninstall)

    r = sub.add_parser("prune", help="drop partitions of the trail older than a duration, archiving them first")
    r.add_argument("--older-than", required=True, metavar="DURATION", help="drop partitions whose changes are all older than this: 90d, 12h, 2w")
    r.add_argument("--archive", type=Path, metavar="DIR",
                   help="first write each partition to DIR (COPY binary file and a .json sidecar)")
    r.add_argument("--lock-timeout", type=float, default=30, metavar="SECONDS",
                   help="seconds to wait for the locks a drop needs before giving up (default 30)")
    r.set_defaults(run=prune)

    a = sub.add_parser("restore-archive", help="put back a partition written by prune --archive")
    a.add_argument("file", type=Path, help="the archive's .copy (or .json) file")
    a.set_defaults(run=restore_archive)

    # --dsn and -q are accepted after the subcommand too.
    for command in sub.choices.values():
        connection_options(command, after_command=True)
    return p


def connection_options(p: argparse.ArgumentParser, after_command: bool = False) -> None:
    """--dsn and -q; after the subcommand they override what came before it, if given."""
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if after_command else {}
    p.add_argument("--dsn", help="libpq connection string or URL (default: DATABASE_URL, then PG* variables)",
                   **default)
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors and results", **default)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (Failure, cli_history.UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except psycopg.Error as error:
        print(f"error: {str(error).strip()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
