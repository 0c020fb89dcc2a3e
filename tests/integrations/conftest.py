"""The integration tests' fixtures: Django set up with the project of the tests
(tests/integrations/django_project) before any test module imports it, that project pointed at
the test's database, and a real PgBouncer."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import psycopg
import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.integrations.django_project.settings")
import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connections  # noqa: E402

PGBOUNCER = "/usr/sbin/pgbouncer"


@pytest.fixture
def database(dsn: str) -> Iterator[dict[str, Any]]:
    """Points Django (every thread's connection) at the test's database."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    settings = connections.settings["default"]
    saved = dict(settings)
    settings.update(HOST=params["host"], PORT=params["port"], USER=params["user"], NAME=params["dbname"])
    connections.close_all()
    yield settings
    connections.close_all()
    settings.clear()
    settings.update(saved)


@pytest.fixture
def project(database: dict[str, Any]) -> dict[str, Any]:
    call_command("migrate", verbosity=0)
    call_command("bemi_track", "todos", stdout=StringIO())
    return database



def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def pgbouncer(postgresql_proc: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real PgBouncer in transaction pooling mode with ONE server connection per database,
    so every client shares it; returns its port."""
    workdir: Path = tmp_path_factory.mktemp("pgbouncer")
    port = free_port()
    (workdir / "pgbouncer.ini").write_text(f"""
[databases]
* = host={postgresql_proc.host} port={postgresql_proc.port} user={postgresql_proc.user}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = 1
max_client_conn = 20
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
ignore_startup_parameters = extra_float_digits,options
""")
    process = subprocess.Popen([PGBOUNCER, str(workdir / "pgbouncer.ini")], stdout=subprocess.DEVNULL)
    try:
        # Ready when it accepts a connection; it starts in milliseconds.
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                assert process.poll() is None, (workdir / "pgbouncer.log").read_text()
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait()
