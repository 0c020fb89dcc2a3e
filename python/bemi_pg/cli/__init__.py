"""The bemi-pg command line: worker, status, changes, revert, install, uninstall, prune,
restore-archive, demo.

Connects with libpq conventions: --dsn, else DATABASE_URL, else the PG* environment.
Progress goes to stdout, errors to stderr prefixed "error:"; any failure exits non-zero.
One module per subcommand or family (worker, status, trail, install, retention, demo), the
argument parser (parser), and what they share: connection, output, errors.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import psycopg

from bemi_pg.cli.errors import Failure
from bemi_pg.cli.parser import build_parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except Failure as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except psycopg.Error as error:
        print(f"error: {str(error).strip()}", file=sys.stderr)
        return 1
