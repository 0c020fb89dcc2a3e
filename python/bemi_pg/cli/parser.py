"""The bemi-pg argument parser: every subcommand, its options, and the function that runs it.

psql's conventions: -h/-p/-U/-d/-W/-w connect (so --help alone asks for help), before or after
the subcommand; a usage error exits with USAGE (3), apart from the 2 that status uses for
warnings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

import bemi_pg
from bemi_pg import scripts
from bemi_pg.cli import demo, install, retention, serve, status, trail, worker

OK, ERROR, WARNINGS, USAGE, INTERRUPTED = 0, 1, 2, 3, 130

EPILOG = """\
connection (psql's conventions; first found wins):
  -h/-p/-U/-d, then --dsn, then the PG* variables (PGHOST, PGPORT, PGUSER,
  PGDATABASE, PGPASSWORD, PGSERVICE, ...); DATABASE_URL only when neither --dsn
  nor PGHOST, PGHOSTADDR, PGPORT, PGDATABASE, PGUSER or PGSERVICE is set.
  --trail-dsn, else BEMI_TRAIL_DSN: the database that holds the trail.
  A password is asked for on a terminal when the server wants one.

exit status:
  0    done
  1    an error (printed on stderr as "error: ...")
  2    done, with warnings (status: something needs care)
  3    usage: unknown options or options that do not fit together;
       worker: the slot is lost (the gap is recorded in the trail)
  4    worker: the trail is stored in another database (nothing stored)
  130  interrupted (Ctrl-C)

See docs/monitoring.md for bemi-pg status and the monitoring role."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors exit with USAGE, and whose help is --help only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, add_help=False, **kwargs)
        self.add_argument("--help", action="help", help="show this help and exit")

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="bemi-pg", description="Context-aware change tracking for PostgreSQL.", epilog=EPILOG)
    p.add_argument("--version", action="version",
                   version=f"bemi-pg {bemi_pg.__version__} (installs bemi {scripts.latest_version()})")
    connection_options(p)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    w = sub.add_parser("worker", help="keep ingesting changes into bemi.changes")
    worker.add_arguments(w)
    trail_option(w, "store the trail in this database instead of the source "
                    "(prepared with bemi-pg install --trail-only); see docs/trail-database.md")
    w.set_defaults(run=worker.worker)

    s = sub.add_parser("status", help="slot, lag, worker, tracked tables, problems (exit 2: warnings)",
                       epilog="See docs/monitoring.md: the fields, and a role that may run it.")
    s.add_argument("--max-retained-mb", type=int, default=1024, help="warn above this much retained WAL (default 1024)")
    s.add_argument("--max-lag", type=float, default=300, metavar="SECONDS",
                   help="warn when the trail is further behind than this (default 300)")
    s.add_argument("--timeout", type=float, default=10, metavar="SECONDS",
                   help="give up on a query (or a lock) after this long (default 10)")
    s.add_argument("--json", action="store_true", help="one JSON object, for monitoring (errors too)")
    trail_option(s, "the database that holds the trail (where bemi-pg worker --trail-dsn keeps it)")
    s.set_defaults(run=status.status)

    c = sub.add_parser("changes", help="print the audit trail")
    c.add_argument("--table", help='a table as SQL names it: todo, public.todo, \'"My Schema"."Todo"\' '
                                   "(unqualified: in any schema; with --at: by search_path)")
    c.add_argument("--key", help="primary key (text; a JSON array for composite keys)")
    c.add_argument("--context", help='JSON the context must contain, e.g. \'{"user_id": 7}\'')
    c.add_argument("--since", help="committed at or after: a timestamp, or how long ago (30m, 1h, 2d, 1w)")
    c.add_argument("--until", help="committed before: a timestamp, or how long ago (30m, 1h, 2d, 1w)")
    c.add_argument("--limit", type=int, default=50, help="newest N changes (default 50)")
    c.add_argument("--json", action="store_true", help="one JSON object per line")
    c.add_argument("--at", help="time travel: print the --table (or its --key row) as of this time instead")
    trail_option(c, "read the trail from this database (where bemi-pg worker --trail-dsn keeps it)")
    c.set_defaults(run=trail.changes)

    v = sub.add_parser(
        "revert", help="undo a transaction's or a context's changes (shows what it does; --dry-run rolls back)")
    chosen = v.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--transaction", type=int, metavar="ID", help="the transaction_id of the changes")
    chosen.add_argument("--context", metavar="JSON", help='every change whose context contains this, e.g. \'{"request_id": "r-42"}\'')
    chosen.add_argument("--change", type=int, nargs="+", metavar="ID", help="these change ids")
    chosen.add_argument("--transactions", type=int, nargs=2, metavar=("FIRST", "LAST"),
                        help="every transaction committed from FIRST through LAST (transaction_ids), in one revert")
    v.add_argument("--match-all", action="store_true", help="with --context '{}': really revert every change in the trail")
    v.add_argument("--since", help="with --context: committed at or after a timestamp, or how long ago (30m, 1h, 2d)")
    v.add_argument("--on-conflict", choices=("error", "skip", "overwrite"), default="error",
                   help="a row changed since: fail and change nothing (default), leave it alone, or revert it anyway")
    v.add_argument("--dry-run", action="store_true", help="show what would be done, then roll back")
    v.add_argument("--json", action="store_true", help="one JSON object per row (the summary goes to stderr)")
    trail_option(v, "read the changes from this database (where bemi-pg worker --trail-dsn keeps the trail)")
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
    u.add_argument("--yes", action="store_true", help="do not ask for confirmation (needed without a terminal)")
    u.set_defaults(run=install.uninstall)

    r = sub.add_parser("prune", help="drop partitions of the trail older than a duration, archiving them first")
    r.add_argument("--older-than", required=True, metavar="DURATION", help="drop partitions whose changes are all older than this: 90d, 12h, 2w")
    kept = r.add_mutually_exclusive_group(required=True)
    kept.add_argument("--archive-dir", "--archive", type=Path, metavar="DIR", dest="archive",
                      help="first write each partition to DIR (COPY binary file and a .json sidecar, "
                           "readable by their owner only)")
    kept.add_argument("--no-archive", action="store_true", help="drop without writing an archive")
    r.add_argument("--dry-run", action="store_true", help="list what would be dropped; change nothing")
    r.add_argument("--yes", action="store_true", help="do not ask for confirmation (needed without a terminal)")
    r.add_argument("--lock-timeout", type=float, default=30, metavar="SECONDS",
                   help="seconds to wait for the locks a drop needs before giving up (default 30)")
    r.set_defaults(run=retention.prune)

    a = sub.add_parser("restore-archive", help="put back a partition written by prune --archive")
    a.add_argument("file", type=Path, help="the archive's .copy (or .json) file")
    a.set_defaults(run=retention.restore_archive)

    serve.register(sub)

    # The connection options and -q are accepted after the subcommand too.
    for command in sub.choices.values():
        connection_options(command, after_command=True)
    return p


def connection_options(p: argparse.ArgumentParser, after_command: bool = False) -> None:
    """-h/-p/-U/-d/-W/-w, --dsn and -q; after the subcommand they override what came before it, if given."""
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if after_command else {}
    group = p.add_argument_group("connection options")
    group.add_argument("-h", "--host", help="database server host or socket directory", **default)
    group.add_argument("-p", "--port", help="database server port", **default)
    group.add_argument("-U", "--username", help="database user name", **default)
    group.add_argument("-d", "--dbname", help="database name (or a whole connection string)", **default)
    group.add_argument("-w", "--no-password", action="store_true", help="never prompt for a password", **default)
    group.add_argument("-W", "--password", action="store_true", help="prompt for a password before connecting",
                       **default)
    group.add_argument("--dsn", help="libpq connection string or URL (see connection, below)", **default)
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors and results", **default)


def trail_option(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--trail-dsn", help=f"{text}; default: BEMI_TRAIL_DSN")
