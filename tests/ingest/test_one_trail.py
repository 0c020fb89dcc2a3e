"""A worker never stores into a second trail (issue 19, item 3; docs/trail-database.md, "One
trail at a time"): once a --trail-dsn worker has recorded in the source where the trail is
(bemi.trail_location), a worker without --trail-dsn (streaming or --sql), one naming another
trail database, and bemi.ingest() refuse (exit status 4, SQLSTATE ZB003) and store nothing;
bemi.trail_here() (bemi-pg worker --trail-here) brings the trail back, a 'trail moved' gap on
each side of a move. Each test counts the rows of bemi.changes in every database."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import bemi_pg
from bemi_pg.ingest import coverage
from bemi_pg.ingest.worker import Options
from bemi_pg.ingest.worker import run as run_worker
from tests.helpers.commands import cli, run, start
from tests.helpers.replication import wait_for
from tests.helpers.trail import drain, ingest

ELSEWHERE, GAP = "ZB003", "ZB001"


def keys(url: str) -> list[int]:
    """The keys of the changes in a database's trail, in id order."""
    with psycopg.connect(url) as conn:
        return [int(k) for (k,) in conn.execute("SELECT primary_key FROM bemi.changes ORDER BY id")]


def gaps(url: str) -> list[tuple[str, bool]]:
    """The gaps a database's trail records (of whichever slot: a trail database's are its source's)."""
    with psycopg.connect(url) as conn:
        return [(cause, is_open) for cause, is_open in conn.execute(
            "SELECT cause, to_at IS NULL FROM bemi.gaps ORDER BY id")]


def insert(admin: psycopg.Connection[Any], key: int) -> None:
    admin.execute("INSERT INTO t VALUES (%s)", [key])


@pytest.fixture
def moved(dsn: str, trail: str, admin: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """The source's own trail holds key 1; then a --trail-dsn worker stored key 2 in the trail
    database (the trail moved there). Returns the source's admin connection."""
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t')")
    insert(admin, 1)
    ingest(admin)
    insert(admin, 2)
    drain(dsn, trail)
    return admin


def test_the_move_is_recorded_with_a_gap_in_the_trail_database(dsn: str, trail: str,
                                                               moved: psycopg.Connection[Any]) -> None:
    """Part b of item 4's audit: the trail database records the 'trail moved' gap, and time
    travel through it refuses moments before the gap's end."""
    with psycopg.connect(trail, row_factory=dict_row) as trail_conn:
        place = trail_conn.execute("SELECT system_identifier, current_database() AS database "
                                   "FROM pg_control_system()").fetchone()
    recorded = moved.execute("SELECT system_identifier, database::text FROM bemi.trail_stored_in()").fetchall()
    assert recorded == [place]
    assert gaps(trail) == [("trail moved", False)]
    assert (keys(dsn), keys(trail)) == ([1], [2])
    before = moved.execute("SELECT bemi.ingested_until() AS u").fetchone()["u"]  # type: ignore[index]
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(trail, autocommit=True) as trail_conn:
        with pytest.raises(psycopg.Error) as refused:
            bemi_pg.row_at(conn, "t", 1, before, trail=trail_conn)
        assert refused.value.sqlstate == GAP
        until = trail_conn.execute("SELECT max(bemi.ingested_until(slot_name)) FROM bemi.progress").fetchone()[0]  # type: ignore[index]
        assert bemi_pg.row_at(conn, "t", 2, until, trail=trail_conn) == {"id": 2}


def test_storing_here_is_refused_on_every_path(dsn: str, trail: str, moved: psycopg.Connection[Any]) -> None:
    insert(moved, 3)
    for path in ([], ["--sql"]):
        done = run(dsn, "worker", "--drain", *path)
        assert done.returncode == 4, done.stderr
        assert done.stderr.startswith("error: the trail of database ") and \
            f'is stored in the trail database "{psycopg.conninfo.conninfo_to_dict(trail)["dbname"]}"' in done.stderr \
            and "--trail-here" in done.stderr, done.stderr
    with pytest.raises(coverage.TrailElsewhere):
        run_worker(Options(dsn, drain=True, interval=0.05), threading.Event(), lambda _: None)
    with pytest.raises(psycopg.Error) as refused:
        moved.execute("SELECT bemi.ingest()")
    assert refused.value.sqlstate == ELSEWHERE and "bemi.trail_here()" in (refused.value.diag.message_hint or "")
    assert (keys(dsn), keys(trail)) == ([1], [2])  # nothing stored here
    drain(dsn, trail)
    assert (keys(dsn), keys(trail)) == ([1], [2, 3])  # the trail database goes on, without a gap
    assert gaps(trail) == [("trail moved", False)]


def test_a_second_trail_database_is_refused(dsn: str, trail: str, new_database: Any,
                                            moved: psycopg.Connection[Any]) -> None:
    other = new_database()
    assert cli("install", "--trail-only", "--dsn", other).returncode == 0
    insert(moved, 3)
    done = run(dsn, "worker", "--drain", "--trail-dsn", other)
    assert done.returncode == 4 and "storing it in the trail database" in done.stderr, done.stderr
    with pytest.raises(coverage.TrailElsewhere):
        run_worker(Options(dsn, drain=True, interval=0.05, trail_dsn=other), threading.Event(), lambda _: None)
    with psycopg.connect(other) as conn:
        assert conn.execute("SELECT count(*) FROM bemi.progress").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM bemi.gaps").fetchone() == (0,)
    assert (keys(dsn), keys(trail), keys(other)) == ([1], [2], [])
    with pytest.raises(psycopg.Error) as refused:  # and the record cannot be taken over from SQL
        moved.execute("SELECT bemi.move_trail_to(1, 'elsewhere')")
    assert refused.value.sqlstate == ELSEWHERE


def test_a_local_worker_already_running_stores_nothing_once_the_trail_moved(
        dsn: str, trail: str, moved: psycopg.Connection[Any]) -> None:
    """bemi.store refuses too: a worker that began before the move (here, the move recorded
    by hand while it streams) stops at its next store, exit status 4."""
    moved.execute("SELECT bemi.trail_here()")
    insert(moved, 3)
    worker = start(dsn, "--interval", "0.1")
    try:
        assert wait_for(lambda: keys(dsn) == [1, 3], seconds=60)
        moved.execute("SELECT bemi.move_trail_to(system_identifier, 'another') FROM pg_control_system()")
        insert(moved, 4)
        assert wait_for(lambda: worker.poll() is not None, seconds=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    _, err = worker.communicate()
    assert worker.returncode == 4, err
    assert 'is stored in the trail database "another"' in err
    assert keys(dsn) == [1, 3]


def test_trail_here_brings_it_back(dsn: str, trail: str, moved: psycopg.Connection[Any]) -> None:
    insert(moved, 3)
    drain(dsn, trail)
    moved_back_after = moved.execute("SELECT clock_timestamp() AS t").fetchone()["t"]  # type: ignore[index]
    # Not while a worker streams into the trail database.
    worker = start(dsn, "--interval", "0.1", "--trail-dsn", trail)
    try:
        slot = moved.execute("SELECT bemi.slot_name() AS s").fetchone()["s"]  # type: ignore[index]
        assert wait_for(lambda: moved.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                                              [slot]).fetchone()["active"], seconds=60)  # type: ignore[index]
        with pytest.raises(psycopg.errors.ObjectInUse):
            moved.execute("SELECT bemi.trail_here()")
    finally:
        worker.terminate()
        worker.communicate()
    insert(moved, 4)
    done = run(dsn, "worker", "--drain", "--trail-here")
    assert done.returncode == 0, done.stderr
    assert "the trail is back here" in done.stdout
    assert moved.execute("SELECT count(*) AS n FROM bemi.trail_stored_in()").fetchone()["n"] == 0  # type: ignore[index]
    assert (keys(dsn), keys(trail)) == ([1, 4], [2, 3])
    assert gaps(dsn) == [("trail moved", False)]
    assert "trail split" not in done.stderr
    with pytest.raises(psycopg.Error) as refused:  # the local trail lacks 2 and 3
        moved.execute("SELECT bemi.row_at('t', '3', %s)", [moved_back_after])
    assert refused.value.sqlstate == GAP
    insert(moved, 5)
    ingest(moved)  # the SQL path stores here again
    assert keys(dsn) == [1, 4, 5]
    # Out again: the trail database records the span it missed as moved, not split.
    insert(moved, 6)
    drain(dsn, trail)
    assert (keys(dsn), keys(trail)) == ([1, 4, 5], [2, 3, 6])
    assert gaps(trail) == [("trail moved", False), ("trail moved", False)]
    # Bringing back a trail that is here already changes nothing.
    assert moved.execute("SELECT bemi.trail_here() AS l").fetchone()["l"] is not None  # type: ignore[index]
    assert moved.execute("SELECT bemi.trail_here() AS l").fetchone()["l"] is None  # type: ignore[index]


def test_only_the_extensions_owner_brings_the_trail_back(dsn: str, trail: str, moved: psycopg.Connection[Any]) -> None:
    role = f"w_{uuid.uuid4().hex[:8]}"
    moved.execute(f"CREATE ROLE {role} LOGIN REPLICATION")
    try:
        moved.execute(f"GRANT EXECUTE ON FUNCTION bemi.store TO {role}; "
                      f"GRANT INSERT ON bemi.staged, bemi.staged_relations TO {role}; "
                      f"GRANT SELECT ON bemi.progress TO {role}")
        done = run(psycopg.conninfo.make_conninfo(dsn, user=role), "worker", "--drain", "--trail-here")
        assert done.returncode == 1 and "as the extension's owner" in done.stderr, done.stderr
        assert moved.execute("SELECT count(*) AS n FROM bemi.trail_stored_in()").fetchone()["n"] == 1  # type: ignore[index]
    finally:
        moved.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
