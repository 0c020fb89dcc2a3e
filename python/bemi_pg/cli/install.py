"""bemi-pg install and uninstall: bemi as plain SQL where CREATE EXTENSION is out of reach
(bemi_pg/install.py)."""

from __future__ import annotations

import argparse
import sys

from bemi_pg import install as installer
from bemi_pg.cli.connection import connect
from bemi_pg.cli.errors import Failure
from bemi_pg.cli.output import confirm, say


def install(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        database = conn.info.dbname
        if args.check:
            found = installer.checks(conn)
            for check in found:
                print(f"{'ok' if check.ok else 'MISSING':<8} {check.name:<15} {check.detail}")
            return 0 if all(check.ok for check in found) else 1
        try:
            before, after = installer.install(conn, notice=lambda message: notice(args, message),
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
                  "next: SELECT bemi.create_slot(); SELECT bemi.track_all('public'); then run bemi-pg worker")
    else:
        say(args, f"install: upgraded bemi {before} to {after} in database {database}")
    return 0


def notice(args: argparse.Namespace, message: str) -> None:
    """What the install script says, on stderr; a trail-only database decodes nothing, so the
    wal_level it runs with is none of its business."""
    if not (args.trail_only and message.startswith("warning: bemi: wal_level is")):
        print(message, file=sys.stderr)


def uninstall(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        database = conn.info.dbname
        if not confirm(args, f"Remove bemi from database {database} (its slot, publication and triggers"
                             + ("; and DROP the trail" if args.drop_trail else "; the trail is kept in schema bemi_trail")
                             + ")?"):
            raise Failure("uninstall: not confirmed; nothing was changed")
        try:
            trail = installer.uninstall(conn, drop_trail=args.drop_trail)
        except installer.InstallError as error:
            raise Failure(f"cannot uninstall: {error}") from error
    say(args, f"uninstall: removed bemi from database {database} (slot, publication, triggers; replica "
              f"identities restored); {trail}")
    return 0
