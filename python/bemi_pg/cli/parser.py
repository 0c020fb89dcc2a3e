"""The bemi-pg argument parser: every subcommand, its options, and the function that runs it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import bemi_pg
from bemi_pg import scripts
from bemi_pg.cli import demo, install, retention, status, trail, worker


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bemi-pg", description="Context-aware change tracking for PostgreSQL.")
    p.add_argument("--version", action="version",
                   version=f"bemi-pg {bemi_pg.__version__} (installs bemi {scripts.latest_version()})")
    connection_options(p)
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", help="keep ingesting changes into bemi.changes")
    worker.add_arguments(w)
    w.set_defaults(run=worker.worker)

    s = sub.add_parser("status", help="slot, lag, tracked tables, last ingested change")
    s.add_argument("--max-retained-mb", type=int, default=1024, help="warn above this much retained WAL")
    s.add_argument("--json", action="store_true", help="one JSON object, for monitoring")
    s.set_defaults(run=status.status)

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
    c.set_defaults(run=trail.changes)

    v = sub.add_parser(
        "revert", help="undo a transaction's or a context's changes (shows what it does; --dry-run rolls back)")
    chosen = v.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--transaction", type=int, metavar="ID", help="the transaction_id of the changes")
    chosen.add_argument("--context", metavar="JSON", help='every change whose context contains this, e.g. \'{"request_id": "r-42"}\'')
    chosen.add_argument("--change", type=int, nargs="+", metavar="ID", help="these change ids")
    v.add_argument("--since", help="with --context: committed at or after a timestamp, or how long ago (30m, 1h, 2d)")
    v.add_argument("--on-conflict", choices=("error", "skip", "overwrite"), default="error",
                   help="a row changed since: fail and change nothing (default), leave it alone, or revert it anyway")
    v.add_argument("--dry-run", action="store_true", help="show what would be done, then roll back")
    v.add_argument("--json", action="store_true", help="one JSON object per row")
    v.add_argument("--trail-dsn", help="read the changes from this database (where bemi-pg worker --trail-dsn keeps the trail)")
    v.set_defaults(run=trail.revert)

    d = sub.add_parser("demo", help="run the example on a throwaway server")
    d.set_defaults(run=demo.demo)

    i = sub.add_parser("install", help="install or upgrade bemi as plain SQL (no CREATE EXTENSION needed)")
    i.add_argument("--check", action="store_true", help="report what the server and role allow; change nothing")
    i.add_argument("--trail-only", action="store_true",
                   help="a database that only holds the trail bemi-pg worker --trail-dsn writes (no REPLICATION needed)")
    i.set_defaults(run=install.install)

    u = sub.add_parser("uninstall", help="remove bemi: slot, publication, triggers, then the extension or install")
    u.add_argument("--drop-trail", action="store_true", help="drop the trail too (default: keep it in bemi_trail)")
    u.set_defaults(run=install.uninstall)

    r = sub.add_parser("prune", help="drop partitions of the trail older than a duration, archiving them first")
    r.add_argument("--older-than", required=True, metavar="DURATION", help="drop partitions whose changes are all older than this: 90d, 12h, 2w")
    r.add_argument("--archive", type=Path, metavar="DIR",
                   help="first write each partition to DIR (COPY binary file and a .json sidecar)")
    r.add_argument("--lock-timeout", type=float, default=30, metavar="SECONDS",
                   help="seconds to wait for the locks a drop needs before giving up (default 30)")
    r.set_defaults(run=retention.prune)

    a = sub.add_parser("restore-archive", help="put back a partition written by prune --archive")
    a.add_argument("file", type=Path, help="the archive's .copy (or .json) file")
    a.set_defaults(run=retention.restore_archive)

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
