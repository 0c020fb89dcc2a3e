"""Inputs that used to stop the trail for good or store values wrong (issue 8's lists): each
case asserts the stored rows, and that a normal change after it gets through."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import bemi_pg
from tests.helpers.trail import changes, ingest, set_replica_identity


def track(admin: psycopg.Connection[Any], definition: str, table: str = "t") -> None:
    admin.execute(f"CREATE TABLE {table} ({definition})")
    admin.execute("SELECT bemi.track(%s)", [table])


def trail(admin: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return [(r["table"], r["operation"], r["before"], r["after"], r["problem"], r["partial"])
            for r in changes(admin, "table", "operation", "before", "after", "problem", "partial")]


def test_json_that_jsonb_refuses_is_stored_as_text_and_the_next_change_gets_through(
        admin: psycopg.Connection[Any]) -> None:
    track(admin, "id int PRIMARY KEY, doc json")
    admin.execute("""INSERT INTO t VALUES (1, '{"a": "\\u0000"}')""")
    admin.execute("""INSERT INTO t VALUES (2, '{"a": 1}')""")
    assert ingest(admin) == 2
    poisoned, normal = changes(admin)
    assert poisoned["after"] == {"id": "1", "doc": '{"a": "\\u0000"}'}
    assert "22P05" in poisoned["problem"] and poisoned["primary_key"] == "1"
    assert (normal["after"], normal["problem"]) == ({"id": 2, "doc": {"a": 1}}, None)
    assert admin.execute("SELECT count(*) AS n FROM bemi.wal WHERE data ->> 'action' = 'I'").fetchone() == {"n": 0}


def test_domain_constraint_added_while_older_values_are_pending(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE DOMAIN small AS integer")
    track(admin, "id int PRIMARY KEY, n small")
    admin.execute("INSERT INTO t VALUES (1, 50)")
    admin.execute("ALTER DOMAIN small ADD CONSTRAINT under_ten CHECK (VALUE < 10) NOT VALID")
    admin.execute("INSERT INTO t VALUES (2, 5)")
    assert ingest(admin) == 2
    # A domain is read as its base type: the value was valid when it was written, and its
    # checks (a role's code) never run as bemi (docs/security.md).
    assert trail(admin) == [("t", "CREATE", {}, {"id": 1, "n": 50}, None, False),
                            ("t", "CREATE", {}, {"id": 2, "n": 5}, None, False)]


def test_type_names_with_brackets_and_colons(admin: psycopg.Connection[Any]) -> None:
    admin.execute("""CREATE TYPE "we]: ird" AS ENUM ('a b', 'c')""")
    admin.execute("""CREATE TYPE "odd[]: pair" AS (x int, "y]:" text)""")
    track(admin, """id int PRIMARY KEY, e "we]: ird", p "odd[]: pair", es "we]: ird"[]""")
    admin.execute("""INSERT INTO t VALUES (1, 'a b', ROW(1, 'z]: q'), '{c,"a b"}')""")
    ingest(admin)
    assert [r["after"] for r in changes(admin, "after")] == [
        {"id": 1, "e": "a b", "p": {"x": 1, "y]:": "z]: q"}, "es": ["c", "a b"]}]


def test_fixed_length_arrays_keep_their_length(admin: psycopg.Connection[Any]) -> None:
    track(admin, "id int PRIMARY KEY, c char(3)[], b bit(3)[], v varchar(2)[]")
    admin.execute("""INSERT INTO t VALUES (1, '{"ab ",cde}', '{101,011}', '{ab,c}')""")
    ingest(admin)
    row = admin.execute("SELECT after, jsonb_populate_record(NULL::t, after)::text = t::text AS same "
                        "FROM bemi.changes, t").fetchone()
    assert row == {"after": {"id": 1, "c": ["ab ", "cde"], "b": ["101", "011"], "v": ["ab", "c"]}, "same": True}


def test_old_image_with_only_the_key_is_partial_not_invented(admin: psycopg.Connection[Any]) -> None:
    track(admin, "id int PRIMARY KEY, v text, w int")
    admin.execute("INSERT INTO t VALUES (1, 'a', NULL), (2, 'b', 7)")
    set_replica_identity(admin, "t", "DEFAULT")  # a user changes it after track
    admin.execute("UPDATE t SET v = 'x' WHERE id = 1")
    admin.execute("DELETE FROM t WHERE id = 2")
    ingest(admin)
    assert trail(admin)[2:] == [
        ("t", "UPDATE", {"id": 1}, {"id": 1, "v": "x", "w": None}, None, True),
        ("t", "DELETE", {"id": 2}, {}, None, True),
    ]


def test_a_table_without_replica_identity_refuses_deletes_instead_of_losing_them(
        admin: psycopg.Connection[Any]) -> None:
    """The publication makes PostgreSQL itself refuse a DELETE whose old row the WAL would not
    hold: nothing is lost silently, and the trail goes on."""
    track(admin, "id int, v text")
    admin.execute("INSERT INTO t VALUES (1, 'a')")
    set_replica_identity(admin, "t", "NOTHING")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="replica identity"):
        admin.execute("DELETE FROM t")
    admin.execute("SELECT bemi.track('t')")  # tracking again restores FULL
    admin.execute("DELETE FROM t")
    ingest(admin)
    assert [(r[1], r[2], r[3]) for r in trail(admin)] == [
        ("CREATE", {}, {"id": 1, "v": "a"}), ("DELETE", {"id": 1, "v": "a"}, {})]


def test_new_partition_without_a_key_under_a_keyless_parent(
        admin: psycopg.Connection[Any], conn: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE t (region text, v int) PARTITION BY LIST (region)")
    admin.execute("CREATE TABLE t_eu PARTITION OF t FOR VALUES IN ('eu')")
    admin.execute("SELECT bemi.track('t')")
    admin.execute("CREATE TABLE t_us PARTITION OF t FOR VALUES IN ('us')")  # after track
    with bemi_pg.with_context(conn, {"step": 1}):
        conn.execute("INSERT INTO t VALUES ('eu', 1), ('us', 2)")
    admin.execute("SELECT bemi.track('t')")  # covers the new partition (or the event trigger does)
    with bemi_pg.with_context(conn, {"step": 2}):
        conn.execute("UPDATE t SET v = v + 10")
    ingest(admin)
    rows = changes(admin, "table", "operation", "before", "after", "context", "partial")
    assert [(r["table"], r["operation"], r["before"], r["after"], r["context"]) for r in rows] == [
        ("t", "CREATE", {}, {"region": "eu", "v": 1}, {"step": 1}),
        ("t", "CREATE", {}, {"region": "us", "v": 2}, {"step": 1}),
        ("t", "UPDATE", {"region": "eu", "v": 1}, {"region": "eu", "v": 11}, {"step": 2}),
        ("t", "UPDATE", {"region": "us", "v": 2}, {"region": "us", "v": 12}, {"step": 2}),
    ]


def test_inheritance_children_are_captured(admin: psycopg.Connection[Any], conn: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    admin.execute("CREATE TABLE t_child (extra int) INHERITS (t)")
    admin.execute("SELECT bemi.track('t')")
    with bemi_pg.with_context(conn, {"who": "child"}):
        conn.execute("INSERT INTO t_child VALUES (1, 'a', 5)")
        conn.execute("UPDATE t SET v = 'b'")  # through the parent: reaches the child's row
    ingest(admin)
    assert [(r["table"], r["operation"], r["before"], r["after"], r["context"])
            for r in changes(admin, "table", "operation", "before", "after", "context")] == [
        ("t_child", "CREATE", {}, {"id": 1, "v": "a", "extra": 5}, {"who": "child"}),
        ("t_child", "UPDATE", {"id": 1, "v": "a", "extra": 5}, {"id": 1, "v": "b", "extra": 5}, {"who": "child"}),
    ]


@pytest.mark.parametrize("kind", ["UNLOGGED", "TEMPORARY"])
def test_unlogged_and_temporary_tables_are_refused(admin: psycopg.Connection[Any], kind: str) -> None:
    admin.execute(f"CREATE {kind} TABLE u (id int PRIMARY KEY)")
    with pytest.raises(psycopg.errors.WrongObjectType, match="^bemi: .*(unlogged|temporary)"):
        admin.execute("SELECT bemi.track('u')")
    assert admin.execute("SELECT count(*) AS n FROM bemi.tracking").fetchone() == {"n": 0}


def test_track_all_leaves_unlogged_tables_out_with_a_notice(admin: psycopg.Connection[Any],
                                                             conn: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE a (id int PRIMARY KEY); CREATE UNLOGGED TABLE b (id int PRIMARY KEY); "
                  "CREATE TABLE c (id int PRIMARY KEY) PARTITION BY RANGE (id); "
                  "CREATE UNLOGGED TABLE c1 PARTITION OF c FOR VALUES FROM (0) TO (10); CREATE TABLE d (id int PRIMARY KEY)")
    said: list[tuple[str | None, str | None, str | None]] = []
    admin.add_notice_handler(lambda n: said.append((n.severity_nonlocalized, n.message_primary, n.message_hint)))
    tracked = [r["track_all"] for r in admin.execute("SELECT bemi.track_all('public')::text")]
    assert tracked == ["a", "d"]
    assert [s[:2] for s in said] == [
        ("NOTICE", "bemi: public.b is not tracked: public.b is unlogged, so its changes never reach the WAL"),
        ("NOTICE", "bemi: public.c is not tracked: public.c1 is unlogged, so its changes never reach the WAL")]
    assert said[1][2] == ("Make it logged, then track it: ALTER TABLE public.c1 SET LOGGED; "
                          "SELECT bemi.track('public.c');")
    conn.execute("INSERT INTO a VALUES (1); INSERT INTO b VALUES (1); INSERT INTO d VALUES (1)")
    conn.commit()
    ingest(admin)
    assert [r["table"] for r in changes(admin, "table")] == ["a", "d"]


@pytest.mark.slow
def test_truncate_of_many_long_named_tables(admin: psycopg.Connection[Any]) -> None:
    """One TRUNCATE of 1,000 tables with 63-character names (a 70 kB statement)."""
    names = [f"t{i:04d}_" + "x" * 57 for i in range(1000)]
    admin.execute("DO $$ DECLARE i int; BEGIN FOR i IN 0..999 LOOP "
                  "EXECUTE format('CREATE TABLE %I (id int PRIMARY KEY)', 't' || lpad(i::text, 4, '0') || '_' || repeat('x', 57)); "
                  "END LOOP; END $$")
    admin.execute("SELECT count(*) FROM bemi.track_all('public')")
    admin.execute("TRUNCATE " + ", ".join(names))
    admin.execute("CREATE TABLE after_it (id int PRIMARY KEY); SELECT bemi.track('after_it'); INSERT INTO after_it VALUES (1)")
    ingest(admin)
    rows = changes(admin, "table", "operation", "ordinal")
    assert sorted(r["table"] for r in rows[:-1]) == sorted(names)
    assert {r["operation"] for r in rows[:-1]} == {"TRUNCATE"}
    assert sorted(r["ordinal"] for r in rows[:-1]) == list(range(1, 1001))
    assert (rows[-1]["table"], rows[-1]["operation"]) == ("after_it", "CREATE")


def test_composite_altered_before_ingest_is_marked_not_wedged(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TYPE pair AS (x int, y text)")
    track(admin, "id int PRIMARY KEY, p pair")
    admin.execute("INSERT INTO t VALUES (1, ROW(1, 'a'))")
    admin.execute("ALTER TYPE pair ADD ATTRIBUTE z int")
    admin.execute("INSERT INTO t VALUES (2, ROW(2, 'b', 3))")
    ingest(admin)
    first, second = changes(admin, "after", "problem")
    # Written before the type changed: kept as written (bemi.type_changes), the rest typed.
    assert first == {"after": {"id": 1, "p": "(1,a)"}, "problem": "bemi: the type of p changed its attributes since: stored as text"}
    assert second == {"after": {"id": 2, "p": {"x": 2, "y": "b", "z": 3}}, "problem": None}


def test_a_transaction_larger_than_max_changes_is_stored_whole_by_one_call(admin: psycopg.Connection[Any]) -> None:
    track(admin, "id int PRIMARY KEY")
    admin.execute("INSERT INTO t SELECT generate_series(1, 500)")
    admin.execute("INSERT INTO t VALUES (0)")
    assert admin.execute("SELECT bemi.ingest(10) AS n").fetchone() == {"n": 500}
    assert admin.execute("SELECT bemi.ingest(10) AS n").fetchone() == {"n": 1}


def test_ids_follow_commit_order_across_concurrent_transactions(dsn: str, admin: psycopg.Connection[Any]) -> None:
    """Two transactions interleave their writes; the one that commits first gets the lower ids."""
    track(admin, "id int PRIMARY KEY, tx text")
    with psycopg.connect(dsn) as first, psycopg.connect(dsn) as second:
        first.execute("INSERT INTO t VALUES (1, 'first')")
        second.execute("INSERT INTO t VALUES (2, 'second')")
        first.execute("INSERT INTO t VALUES (3, 'first')")
        second.execute("INSERT INTO t VALUES (4, 'second')")
        second.commit()
        first.commit()
    ingest(admin)
    assert [r["after"]["tx"] for r in changes(admin, "after")] == ["second", "second", "first", "first"]


def test_the_slot_moves_past_wal_of_untracked_tables(admin: psycopg.Connection[Any]) -> None:
    """Only tracked tables reach the slot's output; ingest still confirms the WAL it read, so
    an untracked table's writes are not kept forever."""
    admin.execute("CREATE TABLE untracked (id int); INSERT INTO untracked SELECT generate_series(1, 1000)")
    flushed = admin.execute("SELECT pg_current_wal_flush_lsn() AS lsn").fetchone()["lsn"]  # type: ignore[index]
    assert admin.execute("SELECT bemi.ingest() AS n").fetchone() == {"n": 0}
    admin.execute("SELECT bemi.ingest()")
    slot = admin.execute("SELECT confirmed_flush_lsn AS lsn FROM pg_replication_slots WHERE slot_name = bemi.slot_name()")
    assert slot.fetchone()["lsn"] >= flushed  # type: ignore[index]


def test_an_update_of_the_key_keeps_the_previous_key(admin: psycopg.Connection[Any]) -> None:
    track(admin, "a int, b int, v text, PRIMARY KEY (a, b)")
    admin.execute("INSERT INTO t VALUES (1, 2, 'x')")
    admin.execute("UPDATE t SET b = 3")
    admin.execute("UPDATE t SET v = 'y'")
    ingest(admin)
    assert [(r["primary_key"], r["previous_key"]) for r in changes(admin, "primary_key", "previous_key")] == [
        ("[1, 2]", None), ("[1, 3]", "[1, 2]"), ("[1, 3]", None)]


def test_primary_key_is_the_key_the_table_had_at_the_change(admin: psycopg.Connection[Any]) -> None:
    track(admin, "a int, b int, v text, PRIMARY KEY (a)")
    admin.execute("INSERT INTO t VALUES (1, 1, 'x')")
    admin.execute("ALTER TABLE t DROP CONSTRAINT t_pkey, ADD PRIMARY KEY (a, b)")
    admin.execute("INSERT INTO t VALUES (2, 2, 'y')")
    admin.execute("ALTER TABLE t DROP CONSTRAINT t_pkey")
    admin.execute("INSERT INTO t VALUES (3, 3, 'z')")
    admin.execute("ALTER TABLE t ADD PRIMARY KEY (b)")  # before any of it is ingested
    ingest(admin)
    assert [r["primary_key"] for r in changes(admin, "primary_key")] == ["1", "[2, 2]", None]


def test_the_values_contract_holds_at_its_edges(admin: psycopg.Connection[Any]) -> None:
    """README's values contract, exactly: each stored image reads back into the table's row type
    equal to the row, for the edges where JSON cannot say everything (array bounds, -0, json
    text, hstore, a role's range, a composite holding a domain)."""
    admin.execute("CREATE EXTENSION hstore")
    admin.execute("CREATE DOMAIN positive AS int CHECK (VALUE > 0)")
    admin.execute("CREATE TYPE pair AS (a positive, b text)")
    admin.execute("CREATE TYPE floatrange AS RANGE (subtype = float8)")
    track(admin, "id int PRIMARY KEY, zero_based int[], f float8, j json, h hstore, r floatrange, p pair, ps pair[]")
    admin.execute("""INSERT INTO t VALUES (1, '[0:1]={1,2}', '-0', '{"b": 1,  "a": [1, 2]}', 'x=>1, y=>NULL',
                     '[1.5,2)', '(3,z)', ARRAY['(4,w)']::pair[])""")
    ingest(admin)
    assert [r["after"] for r in changes(admin, "after")] == [
        {"id": 1, "zero_based": "[0:1]={1,2}", "f": 0, "j": {"a": [1, 2], "b": 1}, "h": '"x"=>"1", "y"=>NULL',
         "r": "[1.5,2)", "p": "(3,z)", "ps": ["(4,w)"]}]
    same = admin.execute("""SELECT (x.zero_based, x.f, x.h, x.r, x.p, x.ps) = (t.zero_based, t.f, t.h, t.r, t.p, t.ps)
                              AND array_lower(x.zero_based, 1) = 0 AND x.j::jsonb = t.j::jsonb AS same
                            FROM bemi.changes c, jsonb_populate_record(NULL::t, c.after) x, t""").fetchone()
    assert same == {"same": True}
