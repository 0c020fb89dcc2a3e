"""Partitions and retention: bemi.changes is partitioned by commit time, ingest creates the
partitions ahead of the writes, bemi.retain / bemi-pg prune drop whole partitions (archived
first with --archive) while ingest keeps running, restore-archive puts them back exactly, time
travel stops at the retained horizon, a 1.0 trail moves into its partitions on upgrade, and
pg_partman can manage the partitions instead.

Periods of two seconds (SET bemi.partition_interval in each session that ingests) make period
boundaries come by during a test; the tests sleep until they do and assert on rows only."""

from __future__ import annotations

import datetime
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.rows import dict_row

import bemi_pg
from bemi_pg import retention
from tests.helpers.trail import ingest

PERIOD = "2 seconds"


def short_periods(connection: psycopg.Connection[Any]) -> None:
    """Partitions of two seconds for what this session ingests."""
    connection.execute(f"SET bemi.partition_interval = '{PERIOD}'")


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bemi_pg.cli", "--dsn", dsn, *args], capture_output=True, text=True)


def partitions(admin: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return admin.execute("SELECT partition::text AS partition, from_at, to_at FROM bemi.partitions ORDER BY from_at").fetchall()


def wait_until(admin: psycopg.Connection[Any], at: datetime.datetime) -> None:
    """Sleeps until the server's clock has passed at."""
    while admin.execute("SELECT now() > %s AS past", [at]).fetchone()["past"] is False:  # type: ignore[index]
        time.sleep(0.1)


def horizon(admin: psycopg.Connection[Any]) -> datetime.datetime | None:
    return admin.execute("SELECT bemi.retained_from() AS at").fetchone()["at"]  # type: ignore[index,no-any-return]


def trail(admin: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every column of every stored change, in id order."""
    return admin.execute("SELECT * FROM bemi.changes ORDER BY id").fetchall()


def restore_all(dsn: str, archive_dir: Path) -> None:
    """Restores every archive under the directory, newest first."""
    for path in sorted(archive_dir.glob("*.copy"), reverse=True):
        restored = cli(dsn, "restore-archive", str(path))
        assert restored.returncode == 0, restored.stderr


def test_partitions_are_created_ahead_of_the_writes_across_a_period_boundary(
        admin: psycopg.Connection[Any], conn: psycopg.Connection[Any]) -> None:
    short_periods(admin)
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text); SELECT bemi.track('todo')")
    assert partitions(admin) == []
    with bemi_pg.with_context(conn, {"step": 1}):
        conn.execute("INSERT INTO todo VALUES (1, 'first')")
    assert ingest(admin) == 1
    first = admin.execute("SELECT committed_at, tableoid::regclass::text AS part FROM bemi.changes").fetchone()
    assert first is not None
    made = partitions(admin)
    # The period of the change holds it, and the next period has its partition already.
    holding = [p for p in made if p["from_at"] <= first["committed_at"] < p["to_at"]]
    assert [p["partition"] for p in holding] == [first["part"]]
    ahead = [p for p in made if p["from_at"] == holding[0]["to_at"]]
    assert len(ahead) == 1 and ahead[0]["to_at"] - ahead[0]["from_at"] == datetime.timedelta(seconds=2)

    wait_until(admin, ahead[0]["from_at"])
    with bemi_pg.with_context(conn, {"step": 2}):
        conn.execute("INSERT INTO todo VALUES (2, 'second')")
        conn.execute("UPDATE todo SET task = 'first!' WHERE id = 1")
    committed = admin.execute("SELECT now() AS at").fetchone()["at"]  # type: ignore[index]
    assert ingest(admin) == 2
    second = admin.execute(
        "SELECT committed_at, tableoid::regclass::text AS part FROM bemi.changes WHERE context = '{\"step\": 2}'").fetchall()
    if committed < ahead[0]["to_at"]:
        # Written into the period whose partition the first ingest had made ahead of it.
        assert {r["part"] for r in second} == {ahead[0]["partition"]}
    assert all(r["committed_at"] >= ahead[0]["from_at"] for r in second)
    # Every change sits in the partition whose bounds hold its commit time, once.
    misplaced = admin.execute(
        "SELECT c.id FROM bemi.changes c JOIN bemi.partitions p ON p.partition = c.tableoid "
        "WHERE NOT (c.committed_at >= p.from_at AND c.committed_at < p.to_at)").fetchall()
    assert misplaced == []
    assert admin.execute("SELECT count(DISTINCT (position, ordinal)) AS n FROM bemi.changes").fetchone() == {"n": 3}
    assert ingest(admin) == 0
    # Each store made the partition of the period after its newest change.
    newest = admin.execute("SELECT max(committed_at) AS at FROM bemi.changes").fetchone()["at"]  # type: ignore[index]
    assert any(p["from_at"] > newest for p in partitions(admin))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["streaming", "sql"])
def test_prune_while_the_worker_ingests_loses_no_change_newer_than_the_cut(
        dsn: str, admin: psycopg.Connection[Any], tmp_path: Path, how: str) -> None:
    admin.execute("CREATE TABLE events (id serial PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT clock_timestamp())")
    admin.execute("SELECT bemi.track('events')")
    stop = threading.Event()
    failures: list[BaseException] = []

    def keep_writing() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as writer:
                while not stop.is_set():
                    writer.execute("INSERT INTO events DEFAULT VALUES")
                    time.sleep(0.01)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            failures.append(error)

    # bemi-pg worker, storing into two-second partitions.
    worker_dsn = psycopg.conninfo.make_conninfo(dsn, options=f"-c bemi.partition_interval={PERIOD.replace(' ', '')}")
    worker = subprocess.Popen([sys.executable, "-m", "bemi_pg.cli", "--dsn", worker_dsn, "worker", "--interval", "0.1",
                               *(["--sql"] if how == "sql" else [])], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        pruned = []
        for _ in range(3):
            time.sleep(3)
            run = cli(dsn, "prune", "--older-than", "2s", "--archive-dir", str(tmp_path), "--yes")
            assert run.returncode == 0, run.stderr
            pruned.append(run.stdout)
    finally:
        stop.set()
        writer.join()
        worker.send_signal(signal.SIGINT)
        _, err = worker.communicate()
    assert worker.returncode == 0, err
    assert failures == []
    short_periods(admin)
    ingest(admin)
    assert any("dropped" in out for out in pruned), pruned
    cut = horizon(admin)
    assert cut is not None
    source = {str(r["id"]): r["written_at"] for r in admin.execute("SELECT id, written_at FROM events")}
    stored = [r["primary_key"] for r in admin.execute(
        "SELECT primary_key FROM bemi.changes WHERE \"table\" = 'events' AND operation = 'CREATE'")]
    assert len(stored) == len(set(stored))
    missing = set(source) - set(stored)
    # Only changes written (so committed) before the horizon are gone, and some are.
    assert missing and all(source[key] < cut for key in missing)
    assert [k for k, at in source.items() if at >= cut and k not in stored] == []
    assert admin.execute("SELECT count(*) AS n FROM bemi.changes WHERE committed_at < %s", [cut]).fetchone() == {"n": 0}
    # The archives hold exactly the rest: restored, every change is there once.
    restore_all(dsn, tmp_path)
    stored = [r["primary_key"] for r in admin.execute(
        "SELECT primary_key FROM bemi.changes WHERE \"table\" = 'events' AND operation = 'CREATE'")]
    assert sorted(stored, key=int) == sorted(source, key=int)
    assert admin.execute("SELECT count(*) = count(DISTINCT id) AS unique FROM bemi.changes").fetchone() == {"unique": True}


@pytest.mark.slow
def test_archive_round_trips_exactly(dsn: str, admin: psycopg.Connection[Any], conn: psycopg.Connection[Any],
                                     tmp_path: Path) -> None:
    short_periods(admin)
    admin.execute("CREATE TABLE item (id int PRIMARY KEY, name text, price numeric, tags text[], data jsonb, raw bytea)")
    admin.execute("CREATE TABLE note (body text)")  # no primary key: primary_key NULL
    admin.execute("SELECT bemi.track('item'), bemi.track('note')")
    for step in range(3):
        with bemi_pg.with_context(conn, {"step": step, "user": "ünï \"quoted\"\ttab"}):
            conn.execute("INSERT INTO item SELECT g + %s, 'n' || g, g / 3.0, ARRAY['a', NULL, 'b,c'], "
                         "jsonb_build_object('g', g, 'nested', jsonb_build_array(1, 'x', NULL)), '\\x00ff'::bytea "
                         "FROM generate_series(1, 50) g", [step * 100])
            conn.execute("UPDATE item SET price = NULL, name = E'line\\nbreak' WHERE id % 7 = 0")
            conn.execute("DELETE FROM item WHERE id % 11 = 0")
            conn.execute("INSERT INTO note VALUES ('a note'), (NULL)")
        if step == 1:
            conn.execute("TRUNCATE note")
            conn.commit()
        ingest(admin)
        time.sleep(2.2)
    ingest(admin)  # caught up: ingest has gone past every partition's end
    before = trail(admin)
    assert len(before) > 150

    run = cli(dsn, "prune", "--older-than", "1s", "--archive-dir", str(tmp_path), "--yes")
    assert run.returncode == 0, run.stderr
    archived = sorted(tmp_path.glob("*.copy"))
    assert len(archived) >= 2 and len(list(tmp_path.glob("*.json"))) == len(archived)
    assert list(tmp_path.glob("*.tmp")) == []
    assert len(trail(admin)) < len(before)
    pruned_to = horizon(admin)
    assert pruned_to is not None

    # A file that does not match its sidecar is refused, and changes nothing.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for suffix in (".copy", ".json"):
        (damaged / archived[0].with_suffix(suffix).name).write_bytes(archived[0].with_suffix(suffix).read_bytes())
    copy = damaged / archived[0].name
    data = bytearray(copy.read_bytes())
    data[-10] ^= 0xFF
    copy.write_bytes(bytes(data))
    refused = cli(dsn, "restore-archive", str(copy))
    assert refused.returncode == 1 and refused.stderr.startswith("error: ") and "does not match" in refused.stderr
    assert horizon(admin) == pruned_to

    restore_all(dsn, tmp_path)
    assert trail(admin) == before  # every column of every row, ids included
    first = min(p["from_at"] for p in partitions(admin))
    assert horizon(admin) == first  # moved back over every restored partition

    again = cli(dsn, "restore-archive", str(archived[0]))
    assert again.returncode == 1 and "refusing to restore over it" in again.stderr
    assert trail(admin) == before


@pytest.mark.parametrize("value", ["90x", "0d", "", "d", "-3d", "1.5h", "90 d"])
def test_a_bad_older_than_is_an_error(dsn: str, admin: psycopg.Connection[Any], value: str) -> None:
    short_periods(admin)
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t'); INSERT INTO t VALUES (1)")
    ingest(admin)
    made = partitions(admin)
    run = cli(dsn, "prune", f"--older-than={value}", "--no-archive", "--yes")
    assert run.returncode == 1
    assert run.stderr.startswith("error: --older-than must be a duration above zero such as 90d"), run.stderr
    assert partitions(admin) == made


def test_prune_without_anything_old_enough_drops_nothing(dsn: str, admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t'); INSERT INTO t VALUES (1)")
    ingest(admin)
    made = partitions(admin)
    run = cli(dsn, "prune", "--older-than", "90d", "--no-archive")
    assert run.returncode == 0 and "no partition holds only changes older than" in run.stdout
    assert partitions(admin) == made and horizon(admin) is None


def one_change_stored(admin: psycopg.Connection[Any], conn: psycopg.Connection[Any], table: str, values: str) -> None:
    """Two-second periods; the table created and tracked, one row inserted and ingested."""
    short_periods(admin)
    admin.execute(f"CREATE TABLE {table}; SELECT bemi.track('{table.split()[0]}')")
    conn.execute(f"INSERT INTO {table.split()[0]} VALUES {values}")
    conn.commit()
    ingest(admin)


@pytest.mark.slow
def test_retain_leaves_partitions_ingest_has_not_passed(admin: psycopg.Connection[Any],
                                                        conn: psycopg.Connection[Any]) -> None:
    one_change_stored(admin, conn, "t (id int PRIMARY KEY)", "(1)")
    wait_until(admin, partitions(admin)[0]["to_at"])
    ingest(admin)  # nothing new: ingest has gone past the first partition
    stored_until = admin.execute("SELECT bemi.ingested_until() AS at").fetchone()["at"]  # type: ignore[index]
    conn.execute("INSERT INTO t VALUES (2)")  # not ingested: no partition after stored_until may go
    conn.commit()
    wait_until(admin, stored_until + datetime.timedelta(seconds=5))
    dropped = admin.execute("SELECT * FROM bemi.retain('1 second')").fetchall()
    assert dropped and all(d["to_at"] <= stored_until for d in dropped)
    assert [p for p in partitions(admin) if p["to_at"] <= stored_until] == []
    assert [p for p in partitions(admin) if p["from_at"] <= stored_until < p["to_at"]]  # held back
    ingest(admin)
    assert [r["primary_key"] for r in admin.execute(
        "SELECT primary_key FROM bemi.changes WHERE committed_at >= bemi.retained_from()")] == ["2"]


def test_time_travel_before_the_retained_horizon_is_an_error(admin: psycopg.Connection[Any],
                                                             conn: psycopg.Connection[Any]) -> None:
    one_change_stored(admin, conn, "todo (id int PRIMARY KEY, task text)", "(1, 'old')")
    early = admin.execute("SELECT committed_at FROM bemi.changes").fetchone()["committed_at"]  # type: ignore[index]
    wait_until(admin, early + datetime.timedelta(seconds=4.5))
    conn.execute("UPDATE todo SET task = 'new' WHERE id = 1")
    conn.commit()
    ingest(admin)
    late = admin.execute("SELECT max(committed_at) AS at FROM bemi.changes").fetchone()["at"]  # type: ignore[index]
    keep_from = admin.execute("SELECT from_at FROM bemi.partitions WHERE from_at <= %(at)s AND to_at > %(at)s",
                              {"at": late}).fetchone()["from_at"]  # type: ignore[index]
    admin.execute("SELECT * FROM bemi.retain(now() - %s)", [keep_from])
    cut = horizon(admin)
    assert cut is not None and early < cut <= keep_from
    assert admin.execute("SELECT bemi.row_at('todo', '1', %s) AS r", [late]).fetchone() == {"r": {"id": 1, "task": "new"}}
    # Moments before bemi.retained_from() are refused (bemi.check_trail): else row_at would
    # answer from a trail that no longer holds the row's history.
    for query in ("SELECT bemi.row_at('todo', '1', %s)", "SELECT * FROM bemi.table_at(NULL::todo, %s)"):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"(?i)retain|horizon|prun"):
            admin.execute(query, [early])


def test_upgrade_moves_a_1_0_trail_into_monthly_partitions_with_its_ids(old_install: str) -> None:
    with psycopg.connect(old_install, autocommit=True, row_factory=dict_row) as admin:
        # 3,000 changes over five months, ids in another order than commit times, some at the
        # very first and last instant of a month, and gaps in the ids.
        admin.execute("""
            INSERT INTO bemi.changes (schema, "table", primary_key, operation, before, after, context,
                                      committed_at, queued_at, transaction_id, position, ordinal)
            SELECT 'public', 'todo', (g % 97)::text, (ARRAY['CREATE', 'UPDATE', 'DELETE'])[1 + g % 3],
                   CASE WHEN g % 3 = 0 THEN '{}' ELSE jsonb_build_object('id', g % 97, 'v', g) END,
                   CASE WHEN g % 3 = 2 THEN '{}' ELSE jsonb_build_object('id', g % 97, 'v', g + 1) END,
                   jsonb_build_object('g', g),
                   CASE g % 10 WHEN 0 THEN timestamptz '2025-03-01 00:00:00+00' + ((g / 10) % 5) * interval '1 month'
                               WHEN 1 THEN timestamptz '2025-03-01 00:00:00+00' + ((g / 10) % 5) * interval '1 month' - interval '1 microsecond'
                               ELSE timestamptz '2025-02-10 00:00:00+00' + ((g * 7919) % 3000) * interval '45 minutes' END,
                   timestamptz '2025-08-01 00:00:00+00', 1000 + g, ('0/' || to_hex(100000 + g))::pg_lsn, 1
            FROM generate_series(1, 3100) g""")
        admin.execute("DELETE FROM bemi.changes WHERE id % 31 = 0")
        before = admin.execute("SELECT * FROM bemi.changes ORDER BY id").fetchall()
        assert len(before) == 3000
        admin.execute("ALTER EXTENSION bemi UPDATE")
        after = admin.execute("SELECT * FROM bemi.changes ORDER BY id").fetchall()
        assert [{k: r[k] for k in before[0]} for r in after] == before
        assert all(r["problem"] is None and r["partial"] is False and r["previous_key"] is None for r in after)
        misplaced = admin.execute(
            "SELECT c.id FROM bemi.changes c JOIN bemi.partitions p ON p.partition = c.tableoid "
            "WHERE NOT (c.committed_at >= p.from_at AND c.committed_at < p.to_at)").fetchall()
        assert misplaced == []
        months = admin.execute(
            "SELECT p.from_at, p.to_at, count(c.id) AS n FROM bemi.partitions p LEFT JOIN bemi.changes c "
            "ON c.tableoid = p.partition GROUP BY 1, 2 ORDER BY 1").fetchall()
        utc = datetime.timezone.utc
        assert [m["from_at"] for m in months] == [datetime.datetime(2025, month, 1, tzinfo=utc) for month in range(2, 8)]
        assert all(m["to_at"] == n["from_at"] for m, n in zip(months, months[1:]))
        assert sum(m["n"] for m in months) == 3000 and all(m["n"] > 0 for m in months)
        # New changes (on the 1.1 slot, which replaces the 1.0 one) get ids after the moved ones.
        admin.execute("SELECT bemi.create_slot()")
        admin.execute("CREATE TABLE todo (id int PRIMARY KEY); SELECT bemi.track('todo'); INSERT INTO todo VALUES (1)")
        ingest(admin)
        assert admin.execute("SELECT min(id) AS id FROM bemi.changes WHERE transaction_id < 1000 "
                             "OR committed_at > '2025-08-01'").fetchone()["id"] > before[-1]["id"]  # type: ignore[index]


def test_pg_partman_manages_the_partitions(admin: psycopg.Connection[Any], conn: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE SCHEMA partman; CREATE EXTENSION pg_partman SCHEMA partman")
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY); SELECT bemi.track('todo')")
    conn.execute("INSERT INTO todo VALUES (1)")
    conn.commit()
    ingest(admin)  # bemi made this month's partition and the next one
    assert len(partitions(admin)) == 2
    # Hand them to pg_partman (docs/retention.md): its names, then create_parent from the first
    # month, two months ahead, one month back.
    for statement in admin.execute("""SELECT format('ALTER TABLE %s RENAME TO %I', partition,
                                   'changes_p' || to_char(from_at AT TIME ZONE 'UTC', 'YYYY_MM')) AS s
                     FROM bemi.partitions""").fetchall():
        admin.execute(statement["s"])
    admin.execute("""SELECT partman.create_parent('bemi.changes', 'committed_at', 'native', 'monthly',
                       p_premake => 2, p_start_partition => (date_trunc('month', now()) - interval '1 month')::text)""")
    made = partitions(admin)
    names = [p["partition"] for p in made]
    last_month = admin.execute("SELECT date_trunc('month', now()) - interval '1 month' AS at").fetchone()["at"]  # type: ignore[index]
    assert made[0]["from_at"] == last_month
    assert len(made) == 4 and all(n.startswith("bemi.changes_p") for n in names)
    assert all(a["to_at"] == b["from_at"] for a, b in zip(made, made[1:]))
    managed = {f"{r['partition_schemaname']}.{r['partition_tablename']}"
               for r in admin.execute("SELECT * FROM partman.show_partitions('bemi.changes')")}
    assert managed == set(names)

    # Ingest stores into pg_partman's partitions and makes none of its own.
    with bemi_pg.with_context(conn, {"after": "partman"}):
        conn.execute("INSERT INTO todo VALUES (2), (3)")
    assert ingest(admin) == 2
    assert partitions(admin) == made
    stored_in = {r["part"] for r in admin.execute(
        "SELECT tableoid::regclass::text AS part FROM bemi.changes WHERE context = '{\"after\": \"partman\"}'")}
    assert len(stored_in) == 1 and stored_in <= set(names)
    assert admin.execute("SELECT count(*) AS n FROM bemi.changes_default").fetchone() == {"n": 0}

    # run_maintenance makes partitions ahead as premake says.
    admin.execute("UPDATE partman.part_config SET premake = 4 WHERE parent_table = 'bemi.changes'")
    admin.execute("SELECT partman.run_maintenance('bemi.changes')")
    ahead = partitions(admin)
    assert len(ahead) == 6 and ahead[:4] == made
    assert ahead[-1]["from_at"] > made[-1]["from_at"] and all(a["to_at"] == b["from_at"] for a, b in zip(ahead, ahead[1:]))

    # bemi.retain drops pg_partman's old partitions too, and maintenance carries on.
    dropped = admin.execute("SELECT partition FROM bemi.retain('1 day')").fetchall()
    assert [d["partition"] for d in dropped] == [made[0]["partition"]]
    admin.execute("SELECT partman.run_maintenance('bemi.changes')")
    assert partitions(admin) == ahead[1:]


def copy_file(rows: list[list[bytes | None]]) -> bytes:
    """A file of COPY's binary format holding these rows."""
    out = [retention.COPY_SIGNATURE, struct.pack(">ii", 0, 0)]
    for row in rows:
        out.append(struct.pack(">h", len(row)))
        out += [struct.pack(">i", -1) if v is None else struct.pack(">i", len(v)) + v for v in row]
    out.append(struct.pack(">h", -1))
    return b"".join(out)


@given(st.lists(st.lists(st.one_of(st.none(), st.binary(max_size=40)), min_size=1, max_size=5), max_size=30),
       st.data())
def test_rows_of_a_copy_file_are_counted_and_a_cut_file_is_refused(rows: list[list[bytes | None]],
                                                                     data: st.DataObject) -> None:
    content = copy_file(rows)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "a.copy"
        path.write_bytes(content)
        assert retention.count_copy_rows(path) == len(rows)
        cut = data.draw(st.integers(min_value=0, max_value=len(content) - 1))
        path.write_bytes(content[:cut])
        with pytest.raises(retention.RetentionError):
            retention.count_copy_rows(path)
        path.write_bytes(content + b"\x00")
        with pytest.raises(retention.RetentionError):
            retention.count_copy_rows(path)
