"""What differs between PostgreSQL versions, tested on the server the suite runs on (the machine's
with `make test`; 14, 16, 17 and 18 with `make test-versions`, which sets BEMI_PG_MAJOR)."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from bemi_pg.ingest import worker
from tests.fixtures.database import NewDatabase
from tests.helpers.trail import ingest

EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


def server_version(admin: psycopg.Connection[Any]) -> int:
    return int(admin.execute("SHOW server_version_num").fetchone()["server_version_num"])  # type: ignore[index]


def test_the_server_is_the_version_asked_for(admin: psycopg.Connection[Any]) -> None:
    """make test-versions runs the suite once per version: a wrong PATH would test 15 again."""
    wanted = os.environ.get("BEMI_PG_MAJOR")
    if not wanted:
        pytest.skip("BEMI_PG_MAJOR is set by make test-versions")
    assert server_version(admin) // 10000 == int(wanted)


@pytest.mark.parametrize("microseconds", [
    0, 1, 999_999, 1_000_000, 2**31 - 1, 2**31, 2**32 + 7,
    849_924_336_899_095,  # 2026-12-06, the value PostgreSQL 14 could not read
    4_102_444_800_000_000 - 946_684_800_000_000 + 123_456,  # 2100-01-01 00:00:00.123456
])
def test_commit_times_convert_exactly(admin: psycopg.Connection[Any], microseconds: int) -> None:
    """pgoutput's timestamps (microseconds since 2000-01-01) on the SQL path, on every version."""
    message = b"\x00" * 3 + microseconds.to_bytes(8, "big")
    got = admin.execute("SELECT bemi.time_at(%s, 3) AS t", [message]).fetchone()["t"]  # type: ignore[index]
    assert got == EPOCH + timedelta(microseconds=microseconds)


def test_generated_columns_reach_the_trail_from_18_on(dsn: str, admin: psycopg.Connection[Any]) -> None:
    """Stored generated columns: in before/after on 18 (publish_generated_columns), through both
    ingest paths alike; left out on 14-17, where pgoutput cannot send them."""
    admin.execute("CREATE TABLE g (id int PRIMARY KEY, price int, doubled int GENERATED ALWAYS AS (price * 2) STORED)")
    admin.execute("SELECT bemi.track('g')")
    copy = "generated_copy"
    admin.execute("SELECT pg_copy_logical_replication_slot(bemi.slot_name(), %s)", [copy])
    with psycopg.connect(dsn, autocommit=True) as app:
        app.execute("INSERT INTO g (id, price) VALUES (1, 10)")
        app.execute("UPDATE g SET price = 11")
        app.execute("DELETE FROM g")

    worker.run(worker.Options(dsn, drain=True), threading.Event(), lambda _: None)
    streamed = admin.execute("SELECT operation, before, after FROM bemi.changes ORDER BY id").fetchall()
    admin.execute("DELETE FROM bemi.changes")
    slot = admin.execute("SELECT bemi.slot_name() AS s").fetchone()["s"]  # type: ignore[index]
    deadline = time.monotonic() + 30  # the worker's walsender lets go of the slot
    while admin.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", [slot]).fetchone()["active"]:  # type: ignore[index]
        assert time.monotonic() < deadline, "the worker's connection still holds the slot"
        time.sleep(0.05)
    admin.execute("SELECT pg_drop_replication_slot(%s)", [slot])
    admin.execute("SELECT pg_copy_logical_replication_slot(%s, %s)", [copy, slot])
    admin.execute("SELECT pg_drop_replication_slot(%s)", [copy])
    admin.execute("UPDATE bemi.progress p SET lsn = s.confirmed_flush_lsn, part_of = NULL, part_stored = 0 "
                  "FROM pg_replication_slots s WHERE s.slot_name = p.slot_name AND p.slot_name = %s", [slot])
    ingest(admin)
    through_sql = admin.execute("SELECT operation, before, after FROM bemi.changes ORDER BY id").fetchall()

    if server_version(admin) >= 180000:
        expected = [
            {"operation": "CREATE", "before": {}, "after": {"id": 1, "price": 10, "doubled": 20}},
            {"operation": "UPDATE", "before": {"id": 1, "price": 10, "doubled": 20},
             "after": {"id": 1, "price": 11, "doubled": 22}},
            {"operation": "DELETE", "before": {"id": 1, "price": 11, "doubled": 22}, "after": {}},
        ]
    else:
        expected = [
            {"operation": "CREATE", "before": {}, "after": {"id": 1, "price": 10}},
            {"operation": "UPDATE", "before": {"id": 1, "price": 10}, "after": {"id": 1, "price": 11}},
            {"operation": "DELETE", "before": {"id": 1, "price": 11}, "after": {}},
        ]
    assert streamed == expected
    assert through_sql == expected



def test_the_update_to_1_2_publishes_generated_columns(new_database: NewDatabase) -> None:
    """A table with a stored generated column, tracked under 1.1: after ALTER EXTENSION bemi
    UPDATE its writes succeed on every version, and on 18 its generated values reach the trail."""
    dsn = new_database()
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as admin:
        admin.execute("CREATE EXTENSION bemi VERSION '1.1'")
        admin.execute("SELECT bemi.create_slot()")
        admin.execute("CREATE TABLE g (id int PRIMARY KEY, price int, doubled int GENERATED ALWAYS AS (price * 2) STORED)")
        admin.execute("SELECT bemi.track('g')")
        admin.execute("INSERT INTO g (id, price) VALUES (1, 10)")
        admin.execute("ALTER EXTENSION bemi UPDATE")
        admin.execute("UPDATE g SET price = 11")
        admin.execute("DELETE FROM g")
        ingest(admin)
        got = admin.execute("SELECT operation, before, after FROM bemi.changes ORDER BY id").fetchall()
        published = admin.execute("SELECT coalesce(to_jsonb(p) ->> 'pubgencols', '-') AS g "
                                  "FROM pg_publication p WHERE pubname = 'bemi'").fetchone()
        if server_version(admin) >= 180000:
            assert published == {"g": "s"}
            doubled = [{"doubled": 20}, {"doubled": 22}]
        else:
            assert published == {"g": "-"}
            doubled = [{}, {}]
    # The INSERT was written before the update: pgoutput decodes it with the publication as it was.
    assert got == [
        {"operation": "CREATE", "before": {}, "after": {"id": 1, "price": 10}},
        {"operation": "UPDATE", "before": {"id": 1, "price": 10, **doubled[0]},
         "after": {"id": 1, "price": 11, **doubled[1]}},
        {"operation": "DELETE", "before": {"id": 1, "price": 11, **doubled[1]}, "after": {}},
    ]


def test_without_the_event_trigger_track_restores_the_replica_identity(new_database: NewDatabase) -> None:
    """Installed by a role that may not create event triggers (a managed platform's), nothing
    stops ALTER TABLE ... REPLICA IDENTITY on a tracked table; NOTHING then makes PostgreSQL refuse
    the table's UPDATE and DELETE (docs/tracking.md says so). bemi.track called again restores
    FULL, and the writes succeed again with whole rows in the trail."""
    dsn = new_database(as_owner=True)
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as admin:
        admin.execute("CREATE EXTENSION bemi")
        admin.execute("SELECT bemi.create_slot()")
        assert admin.execute("SELECT count(*) AS n FROM pg_event_trigger WHERE evtname = 'bemi_remember_keys'"
                             ).fetchone() == {"n": 0}
        admin.execute("CREATE TABLE t (k int PRIMARY KEY, a int)")
        admin.execute("SELECT bemi.track('t')")
        admin.execute("INSERT INTO t VALUES (1, 1)")
        admin.execute("ALTER TABLE t REPLICA IDENTITY NOTHING")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="does not have a replica identity"):
            admin.execute("UPDATE t SET a = 2")
        admin.execute("SELECT bemi.track('t')")
        assert admin.execute("SELECT relreplident AS r FROM pg_class WHERE oid = 't'::regclass").fetchone() == {"r": "f"}
        admin.execute("UPDATE t SET a = 2")
        ingest(admin)
        assert admin.execute("SELECT operation, before FROM bemi.changes ORDER BY id").fetchall() == [
            {"operation": "CREATE", "before": {}}, {"operation": "UPDATE", "before": {"k": 1, "a": 1}}]


def test_a_tracked_table_keeps_replica_identity_full(admin: psycopg.Connection[Any]) -> None:
    """The ALTER TABLE event trigger refuses another replica identity on a tracked table (NOTHING
    would make its UPDATE and DELETE fail, DEFAULT would cut "before" to the key); once
    untracked, the table's identity is the user's again."""
    admin.execute("CREATE TABLE t (k int PRIMARY KEY, a int)")
    admin.execute("SELECT bemi.track('t')")
    for identity in ("NOTHING", "DEFAULT", "USING INDEX t_pkey"):
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as refused:
            admin.execute(f"ALTER TABLE t REPLICA IDENTITY {identity}")
        assert refused.value.diag.message_primary == "bemi: public.t is tracked, which needs REPLICA IDENTITY FULL"
        assert "SELECT bemi.untrack('public.t');" in (refused.value.diag.message_hint or "")
    admin.execute("INSERT INTO t VALUES (1, 1)")
    admin.execute("UPDATE t SET a = 2")
    admin.execute("SELECT bemi.untrack('t')")
    admin.execute("ALTER TABLE t REPLICA IDENTITY NOTHING")
    assert admin.execute("SELECT relreplident AS r FROM pg_class WHERE oid = 't'::regclass").fetchone() == {"r": "n"}
