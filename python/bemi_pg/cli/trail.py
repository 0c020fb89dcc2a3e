"""bemi-pg changes and revert: the trail printed (filtered, or as of a moment: time travel),
and changes undone.

    bemi-pg changes --table todo --since 1h
    bemi-pg changes --table '"My Schema"."Todo"' --json
    bemi-pg changes --at "2026-11-27 10:00+00" --table todo [--key 26]
    bemi-pg revert --transaction 1234 [--dry-run] [--on-conflict skip]
    bemi-pg revert --context '{"request_id": "r-42"}' --since 1h
    bemi-pg revert --transactions 1234 1240
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

import psycopg
from psycopg import sql

from bemi_pg.cli.connection import connect, connect_trail
from bemi_pg.cli.errors import Failure
from bemi_pg.cli.output import print_trail, say
from bemi_pg.revert import revert as revert_changes
from bemi_pg.timetravel import row_at, table_at

REVERT_COLUMNS = ("change_id", "schema", "table", "primary_key", "action")

RELATIVE = re.compile(r"^\s*(\d+)\s*(s|sec|m|min|h|d|w)\s*$")
UNITS = {"s": "seconds", "sec": "seconds", "m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def time_bound(value: str) -> tuple[str, str]:
    """A --since/--until value as SQL and its parameter: "1h", "2d", "30m" mean that long ago,
    anything else is a timestamp."""
    if match := RELATIVE.match(value):
        return "now() - %s::interval", f"{match.group(1)} {UNITS[match.group(2)]}"
    return "%s::timestamptz", value


IDENTIFIER_PART = re.compile(r'\s*(?:"((?:[^"]|"")+)"|([^".\s]+))\s*(\.|$)')


def table_name(text: str) -> tuple[str | None, str]:
    """A --table value read as SQL reads a name: schema.table or table, unquoted parts folded
    to lower case, double-quoted parts kept as they are ("My Schema"."Todo")."""
    parts, at = [], 0
    while at < len(text):
        match = IDENTIFIER_PART.match(text, at)
        if match is None:
            break
        parts.append(match.group(1).replace('""', '"') if match.group(1) is not None else match.group(2).lower())
        at = match.end()
        if not match.group(3):
            break
    if at != len(text) or not 1 <= len(parts) <= 2 or text.rstrip().endswith("."):
        raise Failure(f"--table must name a table as SQL does: todo, public.todo or '\"My Schema\".\"Todo\"', "
                      f"not {text!r}")
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def context_option(text: str) -> dict[str, Any]:
    """A --context value: a JSON object."""
    try:
        context = json.loads(text)
    except json.JSONDecodeError as error:
        raise Failure(f"--context is not JSON: {error}") from error
    if not isinstance(context, dict):
        raise Failure(f"--context must be a JSON object such as '{{\"user_id\": 7}}', not {text}")
    return context


def moment(conn: psycopg.Connection[Any], value: str) -> Any:
    """A --since/--at value as the server reads it."""
    expression, parameter = time_bound(value)
    row = conn.execute(sql.SQL("SELECT {} AS at").format(sql.SQL(expression)), [parameter]).fetchone()
    assert row is not None
    return row["at"]


def changes(args: argparse.Namespace) -> int:
    if args.at:  # time travel: the row or the table as of then
        with connect(args) as conn, connect_trail(args) as trail:
            found = changes_at(args, conn, trail)
        if found is None:
            print(f"(no row with primary key {args.key} at {args.at})" if not args.json else "null")
        elif found:
            print_trail(found, as_json=args.json, columns=tuple(found[0]))
        else:
            print_trail([], as_json=args.json, columns=())
        return 0
    where, params = ["true"], []
    if args.table:
        schema, table = table_name(args.table)
        where.append('"table" = %s' + (" AND schema = %s" if schema else ""))
        params += [table, schema] if schema else [table]
    if args.key is not None:
        where.append("primary_key = %s")
        params.append(args.key)
    if args.context:
        context_option(args.context)
        where.append("context @> %s::jsonb")
        params.append(args.context)  # as written: its numbers exact
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
        done = reverted(args, conn, trail)
    print_trail(done, as_json=args.json, columns=REVERT_COLUMNS)
    say(args, "revert: dry run, rolled back: nothing was changed" if args.dry_run else
        f"revert: committed ({sum(r['action'] in ('inserted', 'updated', 'deleted') for r in done)} rows written)")
    return 0


def changes_at(args: argparse.Namespace, conn: psycopg.Connection[Any],
               trail: psycopg.Connection[Any] | None) -> list[dict[str, Any]] | None:
    """``changes --at``: the row with --key (None when it did not exist then), else the table;
    trail: the trail database's connection (--trail-dsn), None where the trail is in conn's."""
    if not args.table:
        raise Failure("--at needs --table")
    schema, name = table_name(args.table)
    table: str | tuple[str, str] = (schema, name) if schema else sql.Identifier(name).as_string(None)
    at = moment(conn, args.at)
    if args.key is not None:
        row = row_at(conn, table, args.key, at, trail=trail)
        return None if row is None else [row]
    return table_at(conn, table, at, trail=trail)


def reverted(args: argparse.Namespace, conn: psycopg.Connection[Any],
             trail: psycopg.Connection[Any] | None) -> list[dict[str, Any]]:
    """Runs the revert in one transaction, committed unless --dry-run; returns its rows
    (trail: as for changes_at)."""
    context = None if args.context is None else context_option(args.context)
    if context is None and (args.since or args.match_all):
        raise Failure("--since and --match-all go with --context")
    since = moment(conn, args.since) if args.since else None
    with conn.transaction(force_rollback=args.dry_run):
        done = revert_changes(conn, change_ids=args.change, transaction_id=args.transaction, context=context,
                              since=since, on_conflict=args.on_conflict, trail=trail,
                              transaction_range=None if args.transactions is None else tuple(args.transactions),
                              match_all=args.match_all)
    return [{c: getattr(r, c) for c in REVERT_COLUMNS} for r in done]
