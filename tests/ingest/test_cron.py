"""bemi.ingest() scheduled by a real pg_cron (Debian's postgresql-15-cron), no worker running.

pg_cron must be preloaded, so this module starts its own server: pg_cron lives in database
postgres (cron.database_name) and runs the job in the application database with
cron.schedule_in_database, as docs/install.md shows. pg_cron 1.4 schedules by the minute, so the
test waits for the first run (up to a minute).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from pytest_postgresql import factories

import bemi_pg
from tests.fixtures.database import BINDIR, Databases, conninfo

SHAREDIR = subprocess.check_output(["pg_config", "--sharedir"], text=True).strip()
# Not a skip: make test installs postgresql-15-cron (tools/install-deps, as root); without it this fails.
assert os.path.exists(os.path.join(SHAREDIR, "extension", "pg_cron.control")), \
    "pg_cron is not installed: run make test as root, or apt-get install postgresql-15-cron"

cron_proc = factories.postgresql_proc(
    executable=os.path.join(BINDIR, "pg_ctl"),
    postgres_options=(
        "-c wal_level=logical -c shared_preload_libraries=pg_cron -c cron.database_name=postgres "
        "-c cron.use_background_workers=on -c max_worker_processes=16 -c timezone=UTC -c fsync=off"
    ),
)


@pytest.fixture
def app(cron_proc: Any) -> Iterator[str]:
    """An application database with bemi and its slot (tests.fixtures.database's factory, on
    this module's server); pg_cron in database postgres."""
    with psycopg.connect(conninfo(cron_proc, "postgres"), autocommit=True) as admin:
        admin.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
    databases = Databases(cron_proc)
    url = databases(bemi=True)
    yield url
    with psycopg.connect(conninfo(cron_proc, "postgres"), autocommit=True) as admin:
        admin.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE database = %s",
                      [psycopg.conninfo.conninfo_to_dict(url)["dbname"]])
    databases.drop()


@pytest.mark.slow
def test_pg_cron_runs_ingest_into_the_trail(app: str, cron_proc: Any) -> None:
    with psycopg.connect(app) as conn:
        bemi_pg.seed_example(conn)
    database = psycopg.conninfo.conninfo_to_dict(app)["dbname"]
    with psycopg.connect(conninfo(cron_proc, "postgres"), autocommit=True, row_factory=dict_row) as cron:
        # The call docs/install.md documents (there in the application database's name).
        job = cron.execute("SELECT cron.schedule_in_database('bemi-ingest', '* * * * *', "
                           "'SELECT bemi.ingest(100000)', %s) AS id", [database]).fetchone()
        assert job is not None
        run = None
        for _ in range(1800):
            run = cron.execute("SELECT status, return_message FROM cron.job_run_details "
                               "WHERE jobid = %s AND status IN ('succeeded', 'failed')", [job["id"]]).fetchone()
            if run:
                break
            time.sleep(0.1)
    assert run == {"status": "succeeded", "return_message": "SELECT 1"}
    with psycopg.connect(app, row_factory=dict_row) as conn:
        stored = conn.execute("SELECT primary_key, operation, context ->> 'endpoint' AS endpoint "
                              "FROM bemi.changes ORDER BY id").fetchall()
    assert [tuple(r.values()) for r in stored] == [
        ("26", "CREATE", "/todo"), ("27", "CREATE", "/todo"), ("28", "CREATE", "/todo"),
        ("26", "UPDATE", "/todo/complete"), ("27", "DELETE", "/todo/27")]
