"""The example every user reads first, and a throwaway server to run it on."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from bemi_pg.transaction import with_context

TODO_TABLE = """
CREATE TABLE todo (id serial PRIMARY KEY, task text NOT NULL, is_completed boolean NOT NULL DEFAULT false);
SELECT setval('todo_id_seq', 25);
SELECT bemi.track('todo');
"""


def seed_example(conn: psycopg.Connection[Any]) -> None:
    """Creates and tracks the todo table, then makes the example's five changes."""
    with conn.transaction():
        conn.execute(TODO_TABLE)
    user = {"user_id": 187234}
    with with_context(conn, {**user, "endpoint": "/todo", "method": "POST"}):
        conn.execute("INSERT INTO todo (task) VALUES ('Sleep'), ('Eat'), ('Repeat')")
    with with_context(conn, {**user, "endpoint": "/todo/complete", "method": "PUT"}):
        conn.execute("UPDATE todo SET is_completed = true WHERE id = 26")
    with with_context(conn, {**user, "endpoint": "/todo/27", "method": "DELETE"}):
        conn.execute("DELETE FROM todo WHERE id = 27")


def _bindir() -> str:
    return subprocess.check_output(["pg_config", "--bindir"], text=True).strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def throwaway_server(options: str = "") -> Iterator[str]:
    """A PostgreSQL server with wal_level=logical in a temporary directory; yields its DSN.

    ``options`` are extra server options (``-c name=value ...``), added after the defaults.

    PostgreSQL refuses to run as root: as root, the server runs as the user "postgres".
    """
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    workdir = tempfile.mkdtemp(prefix="bemi-demo-")
    if as_user:
        shutil.chown(workdir, "postgres")
    data, port = os.path.join(workdir, "data"), _free_port()
    bindir = _bindir()

    def run(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, stdout=subprocess.DEVNULL)

    try:
        run(os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "--no-sync")
        defaults = f"-c wal_level=logical -c port={port} -c listen_addresses='' -c unix_socket_directories={workdir}"
        run(os.path.join(bindir, "pg_ctl"), "-D", data, "-o", f"{defaults} {options}".strip(),
            "-l", os.path.join(workdir, "log"), "-w", "start")
        try:
            yield psycopg.conninfo.make_conninfo(host=workdir, port=port, user="postgres", dbname="postgres")
        finally:
            run(os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
