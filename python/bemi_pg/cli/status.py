"""bemi-pg status: the worker, the slot, how far ingest got, how far behind it is, how much WAL
is retained, what needs care; as lines, or (--json) as one JSON object for monitoring.

Cheap at any size of the trail: it reads the slot, the progress row, the catalog (the
partitions' estimated rows) and the partial index of changes with a problem, never the trail
itself; every query of it gives up after --timeout (statement_timeout and lock_timeout), so it
never hangs behind a lock. With a trail database (--trail-dsn), the slot, the worker's stream
and the tracked tables are read in the source, the progress and problems in the trail.
Exit status: 0, 2 when there are warnings (a missing slot is one), 1 on errors.
docs/monitoring.md lists the fields and a role that may run it.
"""

from __future__ import annotations

import argparse
import re
import sys
from contextlib import nullcontext
from typing import Any

import psycopg

from bemi_pg.cli.connection import connect, trail_dsn
from bemi_pg.cli.errors import Failure
from bemi_pg.cli.output import iso, to_json
from bemi_pg.ingest import coverage
from bemi_pg.ingest.worker import human_bytes

SOURCE = """
SELECT now() AS server_time, current_database() AS database, current_setting('wal_level') AS wal_level,
       pg_current_wal_lsn()::text AS current_lsn
"""

SLOT = """
SELECT s.slot_name, s.plugin, s.active, s.active_pid, s.wal_status,
       s.restart_lsn::text AS restart_lsn, s.confirmed_flush_lsn::text AS confirmed_flush_lsn,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint AS retained_bytes
FROM pg_replication_slots s
WHERE s.slot_name = %(slot)s AND s.database = current_database()
"""

# How far the trail got: the progress row of the source's slot (in the trail's database).
PROGRESS = """
SELECT p.lsn::text AS lsn, p.ingested_at, p.committed_at, p.caught_up_at, p.part_of::text AS part_of,
       bemi.ingested_until(%(slot)s) AS ingested_until
FROM bemi.progress p WHERE p.slot_name = %(slot)s
"""

# The changes stored, as the planner estimates them (catalog only; null before any ANALYZE).
ESTIMATE = """
SELECT sum(c.reltuples)::bigint AS changes FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'bemi.changes'::regclass AND c.reltuples >= 0
"""

# A partial index of each partition holds exactly these (bemi.index_partition).
PROBLEMS = "SELECT count(*) AS n FROM bemi.changes WHERE problem IS NOT NULL"

# Who reads the slot: sessions named "bemi-pg worker..." (the worker names its connections so),
# the process holding the slot (a walsender, or an ingest in progress), the holder of the SQL
# worker's advisory lock; with what pg_stat_replication says of a stream.
WORKERS = """
SELECT a.pid, a.backend_start, a.application_name, host(a.client_addr) AS client_addr, a.backend_type,
       a.wait_event_type, a.pid = s.active_pid AS holds_slot, r.state AS replication_state,
       r.reply_time, r.flush_lsn::text AS flush_lsn
FROM pg_stat_activity a
LEFT JOIN pg_replication_slots s ON s.slot_name = %(slot)s
LEFT JOIN pg_stat_replication r ON r.pid = a.pid
WHERE a.pid <> pg_backend_pid() AND a.datname = current_database()
  AND (a.application_name LIKE 'bemi-pg worker%%' OR a.pid = s.active_pid
       OR a.pid IN (SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
                    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                    AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext('bemi.worker')::bigint))
ORDER BY a.pid = s.active_pid DESC NULLS LAST, a.backend_start
"""

# Tracked tables and their partitions that do not log whole rows: their "before" is incomplete.
NOT_FULL = """
WITH RECURSIVE family(relid) AS (
  SELECT relation::oid FROM bemi.tracked
  UNION
  SELECT i.inhrelid FROM pg_inherits i JOIN family f ON i.inhparent = f.relid
)
SELECT format('%I.%I', n.nspname, c.relname) AS relation,
       CASE c.relreplident WHEN 'd' THEN 'default' WHEN 'n' THEN 'nothing' WHEN 'i' THEN 'index' END AS identity
FROM family f
JOIN pg_class c ON c.oid = f.relid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relreplident <> 'f' AND c.relkind = 'r'
ORDER BY 1
"""

TRACKED = "SELECT format('%I.%I', schema, \"table\") AS relation FROM bemi.tracked ORDER BY 1"


def one(conn: psycopg.Connection[Any], query: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    return conn.execute(query, params).fetchone() or {}


def slot_name(conn: psycopg.Connection[Any]) -> str:
    """This database's slot: bemi.slot_name() from 1.1 on, "bemi" before."""
    if one(conn, "SELECT to_regprocedure('bemi.slot_name()') IS NOT NULL AS per_database")["per_database"]:
        return str(one(conn, "SELECT bemi.slot_name() AS name")["name"])
    return "bemi"


def bounded(conn: psycopg.Connection[Any], seconds: float) -> None:
    """Every query of this session gives up after seconds; a lock it waits for a little sooner,
    so that a lock says it was one (55P03, not 57014)."""
    ms = max(2, int(seconds * 1000))
    conn.execute(f"SET statement_timeout = {ms}; SET lock_timeout = {ms * 4 // 5}")


def lsn(text: str | None) -> int | None:
    """A pg_lsn's text as a number."""
    if text is None:
        return None
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def require_bemi(conn: psycopg.Connection[Any]) -> None:
    if not one(conn, "SELECT to_regclass('bemi.progress') IS NOT NULL AS ok")["ok"]:
        raise Failure(f"bemi is not installed in database {conn.info.dbname} "
                      "(bemi-pg install, or CREATE EXTENSION bemi where the extension files are installed)")


def worker_state(row: dict[str, Any]) -> str:
    """streaming (holds the slot over replication), ingesting (bemi.ingest() or the SQL
    worker's lock), the state a worker names its session after ("bemi-pg worker (waiting)":
    waiting for another worker's lock; starting, catching-up, streaming: docs/ingest.md),
    waiting (for a lock), or connected."""
    name = row["application_name"] or ""
    if row["holds_slot"] and row["backend_type"] == "walsender":
        return "streaming"
    if row["holds_slot"] or not name.startswith("bemi-pg worker"):
        return "ingesting"
    if named := re.fullmatch(r"bemi-pg worker \((.+)\)", name):
        return named[1]
    return "waiting" if row["wait_event_type"] == "Lock" else "connected"


def workers(conn: psycopg.Connection[Any], slot: str) -> list[dict[str, Any]]:
    return [{
        "pid": r["pid"], "state": worker_state(r), "connected_since": iso(r["backend_start"]),
        "application_name": r["application_name"], "client_addr": r["client_addr"],
        "streaming": r["holds_slot"] is True and r["backend_type"] == "walsender",
        "replication_state": r["replication_state"], "reply_time": iso(r["reply_time"]), "flush_lsn": r["flush_lsn"],
    } for r in conn.execute(WORKERS, {"slot": slot})]


def status_report(conn: psycopg.Connection[Any], trail: psycopg.Connection[Any] | None = None) -> dict[str, Any]:
    """Everything bemi-pg status shows, as JSON-ready values, without its warnings; trail: the
    connection to the trail's database when it has one of its own."""
    require_bemi(conn)
    store = trail or conn
    if trail is not None:
        require_bemi(trail)
    slot = slot_name(conn)
    source = one(conn, SOURCE)
    found = conn.execute(SLOT, {"slot": slot}).fetchone()
    progress = store.execute(PROGRESS, {"slot": slot}).fetchone() or {}
    # Read up to the slot's confirmed position, or further where the trail's progress is (the
    # slot is confirmed after the store commits).
    read_to = max(lsn(found["confirmed_flush_lsn"]) or 0, lsn(progress.get("lsn")) or 0) if found else None
    lag_bytes = None if read_to is None else max(0, (lsn(source["current_lsn"]) or 0) - read_to)
    until = progress.get("ingested_until")
    behind = None if until is None else max(0.0, (source["server_time"] - until).total_seconds())
    return {
        "server_time": iso(source["server_time"]),
        "database": source["database"],
        "trail_database": store.info.dbname,
        "wal_level": source["wal_level"],
        "current_lsn": source["current_lsn"],
        "slot_name": slot,
        "slot": None if found is None else {
            "name": found["slot_name"], "plugin": found["plugin"], "active": found["active"],
            "active_pid": found["active_pid"], "wal_status": found["wal_status"],
            "restart_lsn": found["restart_lsn"], "confirmed_flush_lsn": found["confirmed_flush_lsn"],
            "retained_bytes": found["retained_bytes"],
        },
        # Behind: the WAL written since the slot's confirmed position or the trail's progress,
        # whichever is further (an upper bound of what is pending: it counts other databases'
        # WAL too), and the time since the newest
        # moment the trail is complete up to (0 when nothing is pending).
        "lag": {"bytes": lag_bytes, "seconds": 0.0 if lag_bytes == 0 else behind},
        "pending": {"wal_bytes": lag_bytes, "transaction_in_parts": progress.get("part_of")},
        "ingested_lsn": progress.get("lsn"),
        "ingested_until": iso(until),
        "last_ingested_at": iso(progress.get("ingested_at")),
        "last_committed_at": iso(progress.get("committed_at")),
        "changes_estimate": one(store, ESTIMATE).get("changes"),
        "problems": one(store, PROBLEMS)["n"],
        "workers": workers(conn, slot) + (workers(trail, slot) if trail is not None else []),
        "tracked": [r["relation"] for r in conn.execute(TRACKED)],
        "not_full_identity": [f"{r['relation']} ({r['identity']})" for r in conn.execute(NOT_FULL)],
        "gaps": [{**g, "from_at": iso(g["from_at"]), "to_at": iso(g["to_at"])} for g in coverage.gaps(conn, slot)],
        "trail_stored_in": stored_in(conn, slot, trail),
    }


def stored_in(conn: psycopg.Connection[Any], slot: str, trail: psycopg.Connection[Any] | None) -> dict[str, Any] | None:
    """The trail database the source records its trail is stored in (None: the source), and
    whether it is the one this report read (trail)."""
    found = coverage.recorded(conn, slot)
    if found is None:
        return None
    place, since = found
    return {**vars(place), "since": iso(since), "read_here": trail is not None and coverage.identity(trail) == place}


def warnings_of(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    slot, found = report["slot"], []
    if slot is None:
        found.append(f"the replication slot {report['slot_name']} does not exist: changes are not being captured "
                     "(create it with SELECT bemi.create_slot())")
    elif slot["wal_status"] == "lost":
        found.append(f"the slot {slot['name']} has lost WAL it needed (wal_status lost): changes are missing; "
                     "drop it and create it again with SELECT bemi.drop_slot(); SELECT bemi.create_slot()")
    elif slot["retained_bytes"] is not None and slot["retained_bytes"] > args.max_retained_mb * 1024 * 1024:
        found.append(f"the slot retains {human_bytes(slot['retained_bytes'])} of WAL, over "
                     f"{args.max_retained_mb} MB: is bemi-pg worker running?")
    confirmed, stored = lsn(slot and slot["confirmed_flush_lsn"]), lsn(report["ingested_lsn"])
    if confirmed is not None and (stored is None or confirmed > stored):
        found.append(f"the slot has confirmed up to {slot['confirmed_flush_lsn']}, past what this trail holds "
                     f"({report['ingested_lsn'] or 'nothing'}): those changes were stored elsewhere (a trail "
                     "database: pass --trail-dsn) or are lost")
    if slot is not None and report["lag"]["seconds"] is not None and report["lag"]["seconds"] > args.max_lag:
        found.append(f"the trail is {report['lag']['seconds']:.0f} s behind, over {args.max_lag:g} s "
                     f"(complete up to {report['ingested_until']}): is bemi-pg worker running?")
    if report["problems"]:
        found.append(f"{report['problems']} stored changes have a problem "
                     "(SELECT id, problem FROM bemi.changes WHERE problem IS NOT NULL)")
    if report["not_full_identity"]:
        found.append("tracked tables without REPLICA IDENTITY FULL (their before images are incomplete): "
                     + ", ".join(report["not_full_identity"]) + "; run bemi.track() on them again")
    found.extend(coverage.warnings(report["gaps"]))
    where = report["trail_stored_in"]
    if where is not None and not where["read_here"]:
        found.append(f"the trail is stored in the trail database {where['database']} (system identifier "
                     f"{where['system_identifier']}) since {where['since']}, not the one read here: pass --trail-dsn "
                     "naming it")
    if report["wal_level"] != "logical":
        found.append(f"wal_level is {report['wal_level']}: nothing can be decoded until it is logical")
    return found


def status(args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        raise Failure("--timeout must be a positive number of seconds")
    with connect(args, connect_timeout=max(2, int(args.timeout))) as conn, \
            (connect(args, trail=True, connect_timeout=max(2, int(args.timeout))) if trail_dsn(args)
             else nullcontext()) as trail:
        for session in (conn, trail):
            if session is not None:
                bounded(session, args.timeout)
        report = status_report(conn, trail)
    warnings = warnings_of(report, args)
    if args.json:
        print(to_json({**report, "warnings": warnings}))
    else:
        print_report(report)
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    return 2 if warnings else 0


def describe_worker(w: dict[str, Any]) -> str:
    return (f"{w['state']} since {w['connected_since']} (pid {w['pid']}"
            + (f", {w['application_name']}" if w["application_name"] else "")
            + (f", from {w['client_addr']}" if w["client_addr"] else "") + ")")


def print_report(report: dict[str, Any]) -> None:
    slot, lag = report["slot"], report["lag"]
    rows = [
        ("server time", report["server_time"]),
        ("database", report["database"] + (f" (trail in {report['trail_database']})"
                                           if report["trail_database"] != report["database"] else "")),
        ("wal_level", report["wal_level"]),
        ("slot", "missing" if slot is None else
         f"{slot['name']} ({slot['plugin']}, {'in use' if slot['active'] else 'idle'}, WAL {slot['wal_status']})"),
        ("worker", "; ".join(describe_worker(w) for w in report["workers"]) or "none connected"),
        ("ingested up to", f"{report['ingested_lsn'] or '-'}"
         + (f", every commit up to {report['ingested_until']} stored" if report["ingested_until"] else "")),
        ("lag", "-" if lag["bytes"] is None else
         f"{human_bytes(lag['bytes'])} of WAL" + ("" if lag["seconds"] is None else f", {lag['seconds']:.1f} s")),
        ("retained WAL", "-" if slot is None else human_bytes(slot["retained_bytes"])),
        ("tracked tables", ", ".join(report["tracked"]) or "none (SELECT bemi.track('table'))"),
        ("not REPLICA IDENTITY FULL", ", ".join(report["not_full_identity"]) or "none"),
        ("changes stored", "-" if report["changes_estimate"] is None else f"about {report['changes_estimate']:,}"),
        ("problem changes", f"{report['problems']:,}"),
        ("last change committed", report["last_committed_at"] or "-"),
        ("last change ingested", report["last_ingested_at"] or "-"),
    ]
    for label, value in rows:
        print(f"{label:<26} {value}")
