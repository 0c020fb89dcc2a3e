"""The databases a command connects to, by psql's conventions.

Where each connection parameter comes from, first found wins:

1. ``-h/--host``, ``-p/--port``, ``-U/--username``, ``-d/--dbname`` (each overrides only its
   own parameter; a ``-d`` holding ``=`` or a ``postgresql://`` URL is a whole connection
   string, as in psql);
2. ``--dsn`` (a libpq connection string or URL);
3. the ``PG*`` variables (``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGDATABASE``, ...), read by libpq;
4. ``DATABASE_URL``, only when neither ``--dsn`` nor any of ``PGHOST``, ``PGHOSTADDR``,
   ``PGPORT``, ``PGDATABASE``, ``PGUSER``, ``PGSERVICE`` is set: one connection never mixes
   a URL with variables that name another server.

The trail's database (``--trail-dsn``, else ``BEMI_TRAIL_DSN``) is given whole; the
``PG*`` variables fill in what it leaves out, as libpq does. A password is asked for on the
terminal when the server wants one (``-W`` asks before connecting, ``-w`` never asks), as
psql does.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from contextlib import AbstractContextManager, nullcontext
from decimal import Decimal
from functools import partial
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads

from bemi_pg.cli.errors import Failure

# The variables that name a server, a database or a role: any of them set means "PG*, not DATABASE_URL".
PG_NAMING = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")
FLAGS = {"host": "host", "port": "port", "username": "user", "dbname": "dbname"}
NO_PASSWORD = "no password supplied"


def is_conninfo(text: str) -> bool:
    return "=" in text or text.startswith(("postgresql://", "postgres://"))


def source_dsn(args: argparse.Namespace) -> str:
    """The source database's connection string, by the precedence above (no password prompt)."""
    dbname = getattr(args, "dbname", None)
    base = getattr(args, "dsn", None)
    if dbname and is_conninfo(dbname):
        base, dbname = dbname, None
    if base is None:
        named = any(os.environ.get(v) for v in PG_NAMING)
        base = "" if named else os.environ.get("DATABASE_URL", "")
    given = {FLAGS[k]: v for k in FLAGS if (v := (dbname if k == "dbname" else getattr(args, k, None)))}
    try:
        return make_conninfo(base, **given) if given else base
    except psycopg.ProgrammingError as error:
        raise Failure(f"not a connection string: {error}") from error


def trail_dsn(args: argparse.Namespace) -> str | None:
    """--trail-dsn, else BEMI_TRAIL_DSN, else None (the trail is in the source)."""
    return getattr(args, "trail_dsn", None) or os.environ.get("BEMI_TRAIL_DSN") or None


def has_password(dsn: str) -> bool:
    try:
        return bool(conninfo_to_dict(dsn).get("password")) or bool(os.environ.get("PGPASSWORD"))
    except psycopg.ProgrammingError:
        return False


def ask_password(dsn: str) -> str:
    """Prompts on the terminal, as psql does: "Password for user NAME:"."""
    try:
        user = conninfo_to_dict(dsn).get("user") or os.environ.get("PGUSER") or getpass.getuser()
    except psycopg.ProgrammingError:
        user = getpass.getuser()
    return getpass.getpass(f"Password for user {user}: ")


def with_password(dsn: str, password: str | None) -> str:
    return make_conninfo(dsn, password=password) if password else dsn


def can_prompt(args: argparse.Namespace) -> bool:
    return not getattr(args, "no_password", False) and sys.stdin.isatty()


def open_connection(args: argparse.Namespace, dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """Connects; asks for a password first with -W, or when the server wants one and there is
    a terminal to ask on (not with -w). The password is remembered for the command's other
    connections to the same database."""
    passwords: dict[str, str] = args.__dict__.setdefault("_passwords", {})
    if getattr(args, "password", False) and dsn not in passwords:
        passwords[dsn] = ask_password(dsn)
    try:
        return psycopg.connect(with_password(dsn, passwords.get(dsn)), **kwargs)
    except psycopg.OperationalError as error:
        if NO_PASSWORD not in str(error) or dsn in passwords or not can_prompt(args):
            raise
    passwords[dsn] = ask_password(dsn)
    return psycopg.connect(with_password(dsn, passwords[dsn]), **kwargs)


def exact_json(conn: psycopg.Connection[Any]) -> None:
    """json and jsonb values load with their numbers exact: Decimal, never float."""
    set_json_loads(partial(json.loads, parse_float=Decimal), conn)


def connect(args: argparse.Namespace, trail: bool = False, **options: Any) -> psycopg.Connection[dict[str, Any]]:
    """The source database (see the module); with trail, the one that holds the trail: the
    trail's database when it is kept in one of its own."""
    dsn = (trail and trail_dsn(args)) or source_dsn(args)
    conn = open_connection(args, dsn, autocommit=True, row_factory=dict_row, application_name="bemi-pg", **options)
    exact_json(conn)
    return conn


def connect_trail(args: argparse.Namespace) -> AbstractContextManager[psycopg.Connection[dict[str, Any]] | None]:
    """The trail's database, for time travel and revert; None where the trail is in the source."""
    return connect(args, trail=True) if trail_dsn(args) else nullcontext()


def worker_dsn(args: argparse.Namespace, dsn: str) -> str:
    """A connection string the worker can reconnect with: with the password asked for on the
    terminal (-W, or the server asked and there is a terminal), else as given."""
    if getattr(args, "password", False):
        return with_password(dsn, ask_password(dsn))
    if has_password(dsn) or not can_prompt(args):
        return dsn
    try:
        psycopg.connect(dsn, connect_timeout=10).close()
    except psycopg.OperationalError as error:
        if NO_PASSWORD in str(error):
            return with_password(dsn, ask_password(dsn))
    return dsn  # any other failure is the worker's to report (or to wait out)
