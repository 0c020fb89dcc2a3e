"""bemi-pg prune and restore-archive: old partitions of the trail archived, dropped, put back
(bemi_pg/retention.py)."""

from __future__ import annotations

import argparse

from bemi_pg import retention
from bemi_pg.cli.connection import connect
from bemi_pg.cli.errors import Failure
from bemi_pg.cli.output import say


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
