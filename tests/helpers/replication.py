"""A primary and a streaming standby on this machine, for failover tests: servers of any
installed major (their bindir), run as the current user in a short temporary directory.

The standby is made without pg_basebackup (the embedded 17 has none), as
/work/shared/research/failover.md describes: pg_backup_start, a copy of the data directory
without the files a backup leaves out, pg_backup_stop's label; it streams from the primary
through a physical slot, and from 17 on synchronizes the failover slots."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

PRIMARY_SETTINGS = """
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
listen_addresses = ''
fsync = off
hot_standby = on
timezone = 'UTC'
"""
# A backup leaves these out (their contents; the directories stay).
EMPTIED = ("pg_wal", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots", "pg_stat_tmp",
           "pg_subtrans", "pg_logical/snapshots", "pg_logical/mappings")


def wait_for(check: Any, seconds: float = 60.0, every: float = 0.05) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return bool(check())


class Server:
    def __init__(self, bindir: str, root: Path, name: str, port: int) -> None:
        self.bindir, self.data, self.port, self.socket = bindir, root / name, port, str(root)
        self.log = root / f"{name}.log"

    def run(self, tool: str, *args: str) -> None:
        subprocess.run([os.path.join(self.bindir, tool), *args], check=True, capture_output=True, text=True)

    def conninfo(self, dbname: str = "postgres") -> str:
        return psycopg.conninfo.make_conninfo(host=self.socket, port=self.port, dbname=dbname, user=os.environ.get("USER")
                                              or subprocess.check_output(["whoami"], text=True).strip())

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(self.conninfo(dbname), autocommit=True)

    def configure(self, settings: str) -> None:
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(settings + f"\nport = {self.port}\nunix_socket_directories = '{self.socket}'\n")

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "120", "start")

    def stop(self, mode: str = "fast") -> None:
        subprocess.run([os.path.join(self.bindir, "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
                       capture_output=True)

    def promote(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-w", "promote")


class Pair:
    """A primary (with a physical slot "standby1") and its standby, started."""

    def __init__(self, bindir: str, major: int, primary_settings: str = "") -> None:
        self.major = major
        self.root = Path(tempfile.mkdtemp(prefix="bf"))  # short: socket paths are limited
        base = 20000 + os.getpid() % 20000
        self.primary = Server(bindir, self.root, "primary", base)
        self.standby = Server(bindir, self.root, "standby", base + 1)
        self.primary.run("initdb", "-D", str(self.primary.data), "-A", "trust", "--no-sync")
        extra = "synchronized_standby_slots = 'standby1'\n" if major >= 17 else ""
        self.primary.configure(PRIMARY_SETTINGS + extra + primary_settings)
        self.primary.start()
        with self.primary.connect() as conn:
            conn.execute("SELECT pg_create_physical_replication_slot('standby1', true)")

    def make_standby(self) -> None:
        """The standby, from a backup of the primary as it is now, started and streaming."""
        with self.primary.connect() as conn:
            conn.execute("SELECT pg_backup_start('bemi failover test', true)")
            shutil.copytree(self.primary.data, self.standby.data, ignore=self._left_out, symlinks=True)
            label, spcmap = conn.execute("SELECT labelfile, spcmapfile FROM pg_backup_stop(false)").fetchone()  # type: ignore[misc]
        (self.standby.data / "backup_label").write_text(label)
        if spcmap:
            (self.standby.data / "tablespace_map").write_text(spcmap)
        os.chmod(self.standby.data, 0o700)
        settings = (f"primary_conninfo = '{self.primary.conninfo()} application_name=standby1'\n"
                    "primary_slot_name = 'standby1'\nhot_standby_feedback = on\n")
        if self.major >= 17:
            settings += "sync_replication_slots = on\nsynchronized_standby_slots = ''\n"
        self.standby.configure(settings)
        (self.standby.data / "standby.signal").touch()
        self.standby.start()
        with self.standby.connect() as conn:
            assert wait_for(lambda: conn.execute(
                "SELECT EXISTS (SELECT FROM pg_stat_wal_receiver WHERE status = 'streaming')").fetchone() == (True,))

    def _left_out(self, directory: str, names: list[str]) -> set[str]:
        relative = os.path.relpath(directory, self.primary.data)
        left = {n for n in names if n in ("postmaster.pid", "postmaster.opts")}
        if relative in EMPTIED:
            left |= {n for n in names if not (relative == "pg_wal" and n == "archive_status")}
        return left

    def both(self, dbname: str) -> str:
        """A DSN naming both servers, that connects to whichever is the primary."""
        user = psycopg.conninfo.conninfo_to_dict(self.primary.conninfo())["user"]
        return (f"host={self.root},{self.root} port={self.primary.port},{self.standby.port} dbname={dbname} "
                f"user={user} target_session_attrs=read-write")

    def close(self) -> None:
        self.standby.stop("immediate")
        self.primary.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
