"""The bemi-pg command line: worker, status, changes, revert, install, uninstall, prune,
restore-archive, demo.

Connects by psql's conventions (-h/-p/-U/-d, --dsn, PG*, then DATABASE_URL: cli/connection.py).
Progress goes to stdout (to stderr under --json, whose stdout is JSON only), errors to stderr
prefixed "error:" (and, under --json, as {"error": ..., "sqlstate": ...} on stdout). The exit
status says how it went (cli/parser.py lists them in --help): 0 done, 1 error, 2 warnings,
3 usage, 130 interrupted. Ctrl-C and a closed pipe (bemi-pg changes | head -1) end it
quietly. One module per subcommand or family (worker, status, trail, install, retention,
demo), the argument parser (parser), and what they share: connection, output, errors.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import psycopg

from bemi_pg.cli.errors import Failure
from bemi_pg.cli.output import to_json
from bemi_pg.cli.parser import ERROR, INTERRUPTED, build_parser

__all__ = ["main"]

BROKEN_PIPE = 141  # as a shell reports a process ended by SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        try:
            code = int(args.run(args))
        except Failure as error:
            code = failed(args, str(error), error.sqlstate)
        except psycopg.Error as error:
            code = failed(args, str(error).strip(), error.sqlstate)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # Whoever read our output has gone (| head): nothing more to say, and nothing at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE


def failed(args: argparse.Namespace, message: str, sqlstate: str | None) -> int:
    """Reports an error: on stderr, and under --json as a JSON object on stdout too."""
    if getattr(args, "json", False):
        print(to_json({"error": message, "sqlstate": sqlstate}), flush=True)
    print(f"error: {message}", file=sys.stderr)
    return ERROR
