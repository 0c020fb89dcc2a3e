"""Time travel and revert at the edges, against snapshots (hypothesis; issue 20 item 6).

Extends test_history_property.py with what it leaves out: a partitioned table with a
composite, typed key (int, text), optionally DEFERRABLE, whose random history holds key swaps
through a temporary key, shifts and rotations (deferrable only), rows moved between
partitions, one partition truncated, detached and attached again. After each commit the test
records the transaction, the server's clock and a snapshot. Then, once stored by each ingest
path (bemi.ingest(), the streaming worker):

- ``table_at`` and ``table_at_transaction`` at every snapshot give it exactly, or refuse with
  0A000 where a partition event after the moment hides rows (never a wrong answer), and so do
  ``table_page_at``'s pages of two rows, walked in key order;
- ``row_at`` and ``row_at_transaction`` of every key ever used, spelled another way, give the
  snapshot's row or NULL (or 0A000 as above);
- reverting the transactions after the last partition event, newest first, restores every
  snapshot on the way.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.types.json import Jsonb

from bemi_pg.ingest import worker
from tests.helpers.history import moment
from tests.helpers.trail import ingest

REGIONS = ("eu", "us")
KEYS = st.integers(1, 6)

operations = st.one_of(
    st.tuples(st.just("insert"), KEYS, st.sampled_from(REGIONS), st.text("abc", max_size=3)),
    st.tuples(st.just("update"), KEYS, st.text("xyz", max_size=3)),
    st.tuples(st.just("delete"), KEYS),
    st.tuples(st.just("swap"), KEYS, KEYS, st.sampled_from(REGIONS)),
    st.tuples(st.just("shift"), st.sampled_from(REGIONS)),
    st.tuples(st.just("rotate"), st.sampled_from(REGIONS)),
    st.tuples(st.just("move"), KEYS),
    st.tuples(st.just("truncate"), st.sampled_from(REGIONS)),
    st.tuples(st.just("detach")),
    st.tuples(st.just("attach")),
)


def statements(op: tuple[Any, ...], table: str, n: int, deferrable: bool, detached: bool) -> list[str]:
    """The statements of one operation (one transaction); [] when it does not apply now."""
    kind = op[0]
    if kind == "insert":
        if detached and op[2] == "us":
            return []
        return [f"INSERT INTO {table} SELECT {op[1]}, '{op[2]}', '{op[3]}' "
                f"WHERE NOT EXISTS (SELECT FROM {table} WHERE k = {op[1]} AND region = '{op[2]}')"]
    if kind == "update":
        return [f"UPDATE {table} SET v = '{op[2]}' WHERE k = {op[1]}"]
    if kind == "delete":
        return [f"DELETE FROM {table} WHERE k = {op[1]}"]
    if kind == "swap" and op[1] != op[2] and not (detached and op[3] == "us"):
        a, b, r = op[1], op[2], op[3]
        return [f"UPDATE {table} SET k = -1 WHERE k = {a} AND region = '{r}'",
                f"UPDATE {table} SET k = {a} WHERE k = {b} AND region = '{r}'",
                f"UPDATE {table} SET k = {b} WHERE k = -1 AND region = '{r}'"]
    if kind == "shift" and deferrable:
        return [f"UPDATE {table} SET k = k + 1 WHERE region = '{op[1]}'"]
    if kind == "rotate" and deferrable:
        return [f"UPDATE {table} SET k = (SELECT coalesce(max(k), 0) FROM {table} WHERE region = '{op[1]}') + 1 - k "
                f"WHERE region = '{op[1]}'"]
    if kind == "move" and not detached:
        # To the other partition, unless that key is taken there.
        return [f"UPDATE {table} AS t SET region = CASE region WHEN 'eu' THEN 'us' ELSE 'eu' END WHERE k = {op[1]} "
                f"AND NOT EXISTS (SELECT FROM {table} AS o WHERE o.k = t.k AND o.region <> t.region)"]
    if kind == "truncate" and not (detached and op[1] == "us"):
        return [f"TRUNCATE p{n}_{op[1]}"]
    if kind == "detach" and not detached:
        return [f"ALTER TABLE {table} DETACH PARTITION p{n}_us"]
    if kind == "attach" and detached:
        return [f"ALTER TABLE {table} ATTACH PARTITION p{n}_us FOR VALUES IN ('us')"]
    return []


def refused_or(admin: psycopg.Connection[Any], query: str, params: list[Any]) -> Any:
    """The query's rows, or None when it refuses with 0A000."""
    try:
        with admin.transaction():
            return admin.execute(query, params).fetchall()
    except psycopg.errors.FeatureNotSupported as error:
        assert str(error).startswith("bemi: "), error
        if "alike in every value" in str(error):
            return "alike"
        return None


def paged(admin: psycopg.Connection[Any], table: str, at: Any) -> list[tuple[Any, ...]]:
    """The table at a moment as table_page_at's pages of two rows give it, each page starting
    after the last key of the one before; the rows in key order, each once."""
    found: list[tuple[Any, ...]] = []
    after = None
    while True:
        page = [tuple(r.values()) for r in admin.execute(
            f"SELECT k, region, v FROM bemi.table_page_at(NULL::{table}, %s, %s, 2)",
            [at, None if after is None else Jsonb({"k": after[0], "region": after[1]})])]
        found += page
        if len(page) < 2:
            assert [r[:2] for r in found] == sorted(r[:2] for r in found)  # in key order
            return sorted(found)
        after = page[-1]


def spelled(k: int, region: str) -> str:
    """A key as row_at takes it, not as the trail writes it."""
    return f'[ "{k}" ,"{region}" ]'


@pytest.mark.slow
@pytest.mark.parametrize("path", ["ingest", "worker"])
def test_edges_agree_with_snapshots(dsn: str, admin: psycopg.Connection[Any], path: str) -> None:
    counter = itertools.count()

    @settings(max_examples=25, deadline=None, report_multiple_bugs=False, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(ops=st.lists(operations, min_size=1, max_size=14), deferrable=st.booleans(), initial=st.lists(
        st.tuples(KEYS, st.sampled_from(REGIONS)), max_size=4, unique=True))
    def check(ops: list[tuple[Any, ...]], deferrable: bool, initial: list[tuple[int, str]]) -> None:
        n = next(counter)
        table = f"e{n}"
        admin.execute(f"CREATE TABLE {table} (k int, region text, v text, PRIMARY KEY (k, region)"
                      f"{' DEFERRABLE' if deferrable else ''}) PARTITION BY LIST (region)")
        for region in REGIONS:
            admin.execute(f"CREATE TABLE p{n}_{region} PARTITION OF {table} FOR VALUES IN ('{region}')")
        for k, region in initial:  # rows from before tracking
            admin.execute(f"INSERT INTO {table} VALUES ({k}, '{region}', 'init')")
        admin.execute("SELECT bemi.track(%s)", [table])
        snapshots: list[tuple[Any, int | None, list[tuple[Any, ...]]]] = []

        def state() -> list[tuple[Any, ...]]:
            return sorted(tuple(r.values()) for r in admin.execute(f"SELECT k, region, v FROM {table}").fetchall())

        snapshots.append((moment(admin), None, state()))
        detached = False
        for op in ops:
            todo = statements(op, table, n, deferrable, detached)
            if not todo:
                continue
            try:
                with admin.transaction():
                    for statement in todo:
                        admin.execute(statement)
                    xid = admin.execute("SELECT pg_current_xact_id()::text::bigint AS x").fetchone()["x"]  # type: ignore[index]
            except psycopg.errors.UniqueViolation:
                continue  # a shift or swap the key does not allow: nothing happened
            detached = {"detach": True, "attach": False}.get(op[0], detached)
            snapshots.append((moment(admin), xid, state()))
        if path == "ingest":
            ingest(admin)
        else:
            worker.run(worker.Options(dsn, drain=True, interval=0.05), threading.Event(), lambda _: None)

        # Transactions that wrote nothing the trail holds (an UPDATE of no row) have no moment.
        stored = {r["transaction_id"] for r in admin.execute(
            "SELECT DISTINCT transaction_id FROM bemi.changes WHERE \"table\" = %s", [table])}
        snapshots = [(at, xid if xid in stored else None, rows) for at, xid, rows in snapshots]
        keys = sorted({(r[0], r[1]) for _, _, rows in snapshots for r in rows})
        events = [r["committed_at"] for r in admin.execute(
            "SELECT committed_at FROM bemi.changes WHERE \"table\" = %s AND operation = 'TRUNCATE'", [table])]
        for at, xid, rows in snapshots:
            hidden = any(e > at for e in events)
            by_time = refused_or(admin, f"SELECT k, region, v FROM bemi.table_at(NULL::{table}, %s)", [at])
            assert (by_time is None and hidden) or sorted(tuple(r.values()) for r in by_time) == rows, (at, by_time, rows)
            if by_time is not None:
                assert paged(admin, table, at) == rows, (at, rows)
            if xid is not None:
                by_xid = refused_or(admin, f"SELECT k, region, v FROM bemi.table_at_transaction(NULL::{table}, %s)", [xid])
                assert (by_xid is None and hidden) or sorted(tuple(r.values()) for r in by_xid) == rows
            present = {(r[0], r[1]): r for r in rows}
            for k, region in keys:
                expected = present.get((k, region))
                for query, moment_or_xid in (("SELECT bemi.row_at(%s::regclass, %s, %s) AS r", at),
                                             ("SELECT bemi.row_at_transaction(%s::regclass, %s, %s) AS r", xid)):
                    if moment_or_xid is None:
                        continue
                    found = refused_or(admin, query, [table, spelled(k, region), moment_or_xid])
                    if found == "alike":  # twins that shared the key: refused, never a wrong row
                        assert deferrable and any(r[:2] != (k, region) and r[2] == (expected or ("", "", ""))[2] for r in rows)
                        continue
                    if found is None:
                        assert hidden or expected is None, (k, region, at)
                        continue
                    image = found[0]["r"]
                    assert (None if image is None else (image["k"], image["region"], image["v"])) == expected, (k, region, at)

        # Walking back: every transaction after the last partition event, newest first.
        last_event = max(events, default=None)
        for index in range(len(snapshots) - 1, 0, -1):
            at, xid, _ = snapshots[index]
            if last_event is not None and snapshots[index - 1][0] < last_event:
                break  # this transaction, or one after it, holds a partition event
            if xid is None:
                assert state() == snapshots[index - 1][2]
                continue
            if detached:
                break  # rows of a detached partition are outside the table
            with admin.transaction():
                admin.execute("SELECT * FROM bemi.revert_transaction(%s)", [xid])
            assert state() == snapshots[index - 1][2], (index, ops)

    check()
