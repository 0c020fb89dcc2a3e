"""PostgreSQL 13 and older are refused at install, with a message naming the minimum version and
why (issue 18, item 5): CREATE EXTENSION, bemi-pg install and bemi-pg install --check.

The server is a real PostgreSQL 13 (tools/pg-versions), started here with initdb and pg_ctl:
pytest-postgresql itself refuses versions before 14. `make test-versions` sets BEMI_PG13_BINDIR;
without it (`make test`, on the machine's server) there is no 13 to test against."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.helpers.commands import BEMI_PG

BINDIR = os.environ.get("BEMI_PG13_BINDIR")

pytestmark = pytest.mark.skipif(not BINDIR, reason="no PostgreSQL 13: run by make test-versions (BEMI_PG13_BINDIR)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def old_server() -> Iterator[str]:
    """A PostgreSQL 13 with wal_level=logical and bemi's files in its extension directory."""
    assert BINDIR and Path(BINDIR, "postgres").exists(), f"BEMI_PG13_BINDIR={BINDIR} holds no postgres"
    version = subprocess.check_output([os.path.join(BINDIR, "postgres"), "--version"], text=True)
    assert version.startswith("postgres (PostgreSQL) 13."), version
    with tempfile.TemporaryDirectory(prefix="bemi-pg13-") as tmp:
        data, port = os.path.join(tmp, "data"), free_port()
        subprocess.run([os.path.join(BINDIR, "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "--no-sync"],
                       check=True, capture_output=True)
        subprocess.run([os.path.join(BINDIR, "pg_ctl"), "-D", data, "-l", os.path.join(tmp, "log"), "-w", "-o",
                        f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={tmp} "
                        "-c wal_level=logical -c fsync=off", "start"], check=True, capture_output=True)
        try:
            yield psycopg.conninfo.make_conninfo(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        finally:
            subprocess.run([os.path.join(BINDIR, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"],
                           capture_output=True)


def nothing_installed(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'bemi'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'bemi'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)


def says_why(message: str) -> None:
    """The refusal names the minimum version and the reason for it."""
    assert "PostgreSQL 14" in message, message
    assert "13." in message, message  # the version found
    assert "logical messages" in message, message


def test_create_extension_is_refused(old_server: str) -> None:
    with psycopg.connect(old_server, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("CREATE EXTENSION bemi")
    error = refused.value
    assert error.diag.sqlstate == "0A000", error
    assert (error.diag.message_primary or "").startswith("bemi: "), error
    says_why(f"{error.diag.message_primary} {error.diag.message_hint}")
    nothing_installed(old_server)


def test_plain_install_is_refused(old_server: str) -> None:
    result = subprocess.run([*BEMI_PG, "install", "--dsn", old_server], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("error: cannot install: "), result.stderr
    says_why(result.stderr)
    nothing_installed(old_server)


def test_check_names_the_server_version(old_server: str) -> None:
    result = subprocess.run([*BEMI_PG, "install", "--check", "--dsn", old_server],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.split()[1:2] == ["server"]]
    assert len(lines) == 1 and lines[0].startswith("MISSING"), result.stdout
    says_why(lines[0])
    nothing_installed(old_server)
