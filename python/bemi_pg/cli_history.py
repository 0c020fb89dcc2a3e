"""The time-travel and revert parts of the bemi-pg command line (wired into bemi_pg.cli).

    bemi-pg changes --at "2026-11-27 10:00+00" --table todo [--key 26]
    bemi-pg revert --transaction 1234 [--dry-run] [--on-conflict skip]
    bemi-pg revert --context '{"request_id": "r-42"}' --since 1h
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from bemi_pg.revert import revert as revert_changes
from bemi_pg.timetravel import row_at, table_at

REVERT_COLUMNS = ("change_id", "schema", "table", "primary_key", "action")

TimeBound = Callable[[str], tuple[str, str]]
"""bemi_pg.cli.time_bound: a --since/--at value as an SQL expression and its parameter."""


class UsageError(ValueError):
    """Arguments that do not fit together, or a bad value (bemi_pg.cli prints it as "error: ...")."""


def context_option(text: str) -> dict[str, Any]:
    """A --context value: a JSON object."""
    try:
        context = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--context is not JSON: {error}") from error
    if not isinstance(context, dict):
        raise UsageError(f"--context must be a JSON object such as '{{\"user_id\": 7}}', not {text}")
    return context


def moment(conn: psycopg.Connection[Any], value: str, time_bound: TimeBound) -> Any:
    expression, parameter = time_bound(value)
    row = conn.execute(sql.SQL("SELECT {} AS at").format(sql.SQL(expression)), [parameter]).fetchone()
    assert row is not None
    return row["at"]


def add_revert_command(sub: Any) -> argparse.ArgumentParser:
    """The ``revert`` subcommand (its ``run`` is set by the caller)."""
    r: argparse.ArgumentParser = sub.add_parser(
        "revert", help="undo a transaction's or a context's changes (shows what it does; --dry-run rolls back)")
    chosen = r.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--transaction", type=int, metavar="ID", help="the transaction_id of the changes")
    chosen.add_argument("--context", metavar="JSON", help='every change whose context contains this, e.g. \'{"request_id": "r-42"}\'')
    chosen.add_argument("--change", type=int, nargs="+", metavar="ID", help="these change ids")
    r.add_argument("--since", help="with --context: committed at or after a timestamp, or how long ago (30m, 1h, 2d)")
    r.add_argument("--on-conflict", choices=("error", "skip", "overwrite"), default="error",
                   help="a row changed since: fail and change nothing (default), leave it alone, or revert it anyway")
    r.add_argument("--dry-run", action="store_true", help="show what would be done, then roll back")
    r.add_argument("--json", action="store_true", help="one JSON object per row")
    r.add_argument("--trail-dsn", help="read the changes from this database (where bemi-pg worker --trail-dsn keeps the trail)")
    return r


def changes_at(args: argparse.Namespace, conn: psycopg.Connection[Any], time_bound: TimeBound,
               trail: psycopg.Connection[Any] | None) -> list[dict[str, Any]] | None:
    """``changes --at``: the row with --key (None when it did not exist then), else the table;
    trail: the trail database's connection (--trail-dsn), None where the trail is in conn's."""
    if not args.table:
        raise UsageError("--at needs --table")
    at = moment(conn, args.at, time_bound)
    if args.key is not None:
        row = row_at(conn, args.table, args.key, at, trail=trail)
        return None if row is None else [row]
    return table_at(conn, args.table, at, trail=trail)


def revert(args: argparse.Namespace, conn: psycopg.Connection[Any], time_bound: TimeBound,
           trail: psycopg.Connection[Any] | None) -> list[dict[str, Any]]:
    """Runs the revert in one transaction, committed unless --dry-run; returns its rows
    (trail: as for changes_at)."""
    context = None if args.context is None else context_option(args.context)
    if context is None and args.since:
        raise UsageError("--since goes with --context")
    since = moment(conn, args.since, time_bound) if args.since else None
    with conn.transaction(force_rollback=args.dry_run):
        done = revert_changes(conn, change_ids=args.change, transaction_id=args.transaction, context=context,
                              since=since, on_conflict=args.on_conflict, trail=trail)
    return [{c: getattr(r, c) for c in REVERT_COLUMNS} for r in done]
