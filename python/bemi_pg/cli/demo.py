"""bemi-pg demo: the example every user reads first, on a throwaway server."""

from __future__ import annotations

import argparse

import psycopg
from psycopg.rows import dict_row

from bemi_pg import demo as example
from bemi_pg.cli.errors import Failure
from bemi_pg.cli.output import print_trail, say


def demo(args: argparse.Namespace) -> int:
    say(args, "demo: starting a throwaway PostgreSQL with wal_level=logical")
    with example.throwaway_server() as dsn:
        with psycopg.connect(dsn, autocommit=True) as admin:
            try:
                admin.execute("CREATE EXTENSION bemi")
            except psycopg.errors.UndefinedFile as error:
                raise Failure("the bemi extension is not installed on this server: run make install") from error
            admin.execute("SELECT bemi.create_slot()")
        with psycopg.connect(dsn) as conn:
            example.seed_example(conn)
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as admin:
            n = admin.execute("SELECT bemi.ingest() AS n").fetchone()["n"]  # type: ignore[index]
            say(args, f"demo: ingested {n} changes into bemi.changes\n")
            print_trail(admin.execute("SELECT * FROM bemi.changes ORDER BY id").fetchall())
    say(args, "\ndemo: server stopped and removed")
    return 0
