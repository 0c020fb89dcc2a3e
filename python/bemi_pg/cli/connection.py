"""The databases a command connects to, by libpq conventions: --dsn, else DATABASE_URL, else
the PG* environment; --trail-dsn for a trail kept in a database of its own."""

from __future__ import annotations

import argparse
import os
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import psycopg
from psycopg.rows import dict_row


def connect(args: argparse.Namespace, trail: bool = False) -> psycopg.Connection[dict[str, Any]]:
    """The database of --dsn (else DATABASE_URL, else PG*); with trail, the one that holds the
    trail: --trail-dsn when the trail is kept in a database of its own."""
    dsn = (trail and getattr(args, "trail_dsn", None)) or args.dsn or os.environ.get("DATABASE_URL", "")
    return psycopg.connect(dsn, autocommit=True, row_factory=dict_row, application_name="bemi-pg")


def connect_trail(args: argparse.Namespace) -> AbstractContextManager[psycopg.Connection[dict[str, Any]] | None]:
    """The database of --trail-dsn, for time travel and revert; None where the trail is in the source."""
    return connect(args, trail=True) if args.trail_dsn else nullcontext()
