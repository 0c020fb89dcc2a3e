"""A PostgreSQL server of a test's own (initdb, pg_ctl), for tests that stop and start it
(pytest-postgresql's server is shared by the whole session): the machine's PostgreSQL
(``pg_config --bindir``), wal_level=logical, listening on a Unix socket in its directory."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import psycopg

BINDIR = subprocess.check_output(["pg_config", "--bindir"], text=True).strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A cluster in ``directory``: ``start()``, ``stop(mode)``, ``dsn(dbname)``, ``new_database()``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = str(directory / "data")
        self.log = str(directory / "log")
        self.port = free_port()
        subprocess.run([os.path.join(BINDIR, "initdb"), "-D", self.data, "-U", "postgres", "-A", "trust", "--no-sync"],
                       check=True, capture_output=True)
        with open(os.path.join(self.data, "postgresql.conf"), "a", encoding="utf-8") as conf:
            conf.write(f"port = {self.port}\nlisten_addresses = ''\nunix_socket_directories = '{directory}'\n"
                       "wal_level = logical\nmax_replication_slots = 10\nmax_wal_senders = 10\nfsync = off\n"
                       "full_page_writes = off\ntimezone = UTC\n")

    def start(self) -> None:
        subprocess.run([os.path.join(BINDIR, "pg_ctl"), "-D", self.data, "-l", self.log, "-w", "start"],
                       check=True, capture_output=True)

    def stop(self, mode: str = "fast") -> subprocess.CompletedProcess[str]:
        """pg_ctl stop -m MODE, waiting for it as long as it takes (the test asserts it returned 0)."""
        return subprocess.run([os.path.join(BINDIR, "pg_ctl"), "-D", self.data, "-m", mode, "-w", "--timeout=3600",
                               "stop"], capture_output=True, text=True)

    def dsn(self, dbname: str = "postgres", **params: str) -> str:
        return psycopg.conninfo.make_conninfo(host=str(self.directory), port=self.port, user="postgres",
                                              dbname=dbname, **params)

    def new_database(self, bemi: bool = True) -> str:
        """A new database; with bemi, the extension and its slot."""
        name = f"bemi_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        if bemi:
            with psycopg.connect(self.dsn(name), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION bemi")
                conn.execute("SELECT bemi.create_slot()")
        return self.dsn(name)
