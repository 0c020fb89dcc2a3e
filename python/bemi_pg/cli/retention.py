"""bemi-pg prune and restore-archive: old partitions of the trail archived, dropped, put back
(bemi_pg/retention.py). prune lists what it would drop (--dry-run stops there), then asks
(--yes answers for it)."""

from __future__ import annotations

import argparse

from bemi_pg import retention
from bemi_pg.cli.connection import connect
from bemi_pg.cli.errors import Failure
from bemi_pg.cli.output import confirm, say

# What prune would drop, with the planner's estimate of the rows (no scan of the trail).
CANDIDATES = """
SELECT r.partition::text AS partition, r.from_at, r.to_at, greatest(c.reltuples, 0)::bigint AS rows
FROM bemi.retainable(%s) r JOIN pg_class c ON c.oid = r.partition
ORDER BY r.from_at
"""


def prune(args: argparse.Namespace) -> int:
    try:
        older_than = retention.parse_duration(args.older_than)
        with connect(args) as conn:
            candidates = conn.execute(CANDIDATES, [older_than]).fetchall()
            for part in candidates:
                say(args, f"prune: {'would drop' if args.dry_run else 'to drop'} {part['partition']} "
                          f"({part['from_at']} to {part['to_at']}, about {part['rows']:,} changes)")
            if args.dry_run:
                say(args, f"prune: dry run: {len(candidates)} partitions would be dropped"
                          + ("" if args.no_archive else f", archived first to {args.archive}"))
                return 0
            if candidates and not confirm(args, f"Drop {len(candidates)} partitions of the trail "
                                                f"{'without an archive' if args.no_archive else 'after archiving them'}?"):
                raise Failure("prune: not confirmed; nothing was dropped")
            pruned = retention.prune(conn, older_than, None if args.no_archive else args.archive,
                                     lambda line: say(args, line), lock_timeout=f"{args.lock_timeout}s")
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
