"""bemi-pg status: the worker, the slot, how far ingest got, how much WAL is retained, what
needs care."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import psycopg

from bemi_pg.cli.connection import connect
from bemi_pg.cli.errors import Failure
from bemi_pg.cli.output import iso
from bemi_pg.ingest import coverage
from bemi_pg.ingest.worker import human_bytes


def slot_name(conn: psycopg.Connection[Any]) -> str:
    """This database's slot: bemi.slot_name() from 1.1 on, "bemi" before."""
    row = conn.execute("SELECT to_regprocedure('bemi.slot_name()') IS NOT NULL AS per_database").fetchone()
    if row and row["per_database"]:
        return str(conn.execute("SELECT bemi.slot_name() AS name").fetchone()["name"])  # type: ignore[index]
    return "bemi"


SLOT = """
SELECT s.slot_name, s.plugin, s.active, s.wal_status, s.confirmed_flush_lsn::text AS confirmed_flush_lsn,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint AS retained_bytes,
       pg_wal_lsn_diff(pg_current_wal_lsn(), greatest(p.lsn, s.confirmed_flush_lsn))::bigint AS pending_bytes,
       to_jsonb(p) - 'slot_name' AS progress
FROM pg_replication_slots s LEFT JOIN bemi.progress p ON p.slot_name = s.slot_name
WHERE s.slot_name = %(slot)s AND s.database = current_database()
"""

# Who reads the slot: the process holding it (the streaming worker's walsender, or an ingest
# in progress), else the holder of the SQL worker's advisory lock.
WORKER = """
SELECT a.pid, a.backend_start, a.application_name, host(a.client_addr) AS client_addr, a.backend_type
FROM pg_stat_activity a
WHERE a.pid = (SELECT s.active_pid FROM pg_replication_slots s WHERE s.slot_name = %(slot)s)
   OR a.pid IN (SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext('bemi.worker')::bigint)
ORDER BY a.backend_type = 'walsender' DESC, a.backend_start
LIMIT 1
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


def status_report(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Everything bemi-pg status shows, as JSON-ready values."""
    if not (conn.execute("SELECT to_regclass('bemi.progress') IS NOT NULL AS ok").fetchone() or {}).get("ok"):
        raise Failure(f"bemi is not installed in database {conn.info.dbname} "
                      "(bemi-pg install, or CREATE EXTENSION bemi where the extension files are installed)")
    slot = slot_name(conn)
    found = conn.execute(SLOT, {"slot": slot}).fetchone()
    worker_row = conn.execute(WORKER, {"slot": slot}).fetchone()
    last = conn.execute(
        "SELECT count(*) AS n, max(committed_at) AS committed_at, max(queued_at) AS queued_at FROM bemi.changes"
    ).fetchone() or {}
    has_problem = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'bemi.changes'::regclass "
        "AND attname = 'problem' AND NOT attisdropped) AS yes").fetchone()
    problems = (conn.execute("SELECT count(*) AS n FROM bemi.changes WHERE problem IS NOT NULL").fetchone() or {}
                ).get("n", 0) if has_problem and has_problem["yes"] else 0
    return {
        "database": conn.info.dbname,
        "wal_level": (conn.execute("SELECT current_setting('wal_level') AS v").fetchone() or {}).get("v"),
        "slot": None if found is None else {
            "name": found["slot_name"], "plugin": found["plugin"], "active": found["active"],
            "wal_status": found["wal_status"], "confirmed_flush_lsn": found["confirmed_flush_lsn"],
            "pending_bytes": found["pending_bytes"], "retained_bytes": found["retained_bytes"],
            "progress": found["progress"],
        },
        "slot_name": slot,
        "worker": None if worker_row is None else {
            "pid": worker_row["pid"], "connected_since": iso(worker_row["backend_start"]),
            "application_name": worker_row["application_name"], "client_addr": worker_row["client_addr"],
            "streaming": worker_row["backend_type"] == "walsender",
        },
        "tracked": [r["relation"] for r in conn.execute(
            "SELECT format('%I.%I', schema, \"table\") AS relation FROM bemi.tracked ORDER BY 1")],
        "not_full_identity": [f"{r['relation']} ({r['identity']})" for r in conn.execute(NOT_FULL)],
        "changes": last.get("n", 0),
        "problem_changes": problems,
        "last_committed_at": iso(last.get("committed_at")),
        "last_ingested_at": iso(last.get("queued_at")),
        "gaps": [{**g, "from_at": iso(g["from_at"]), "to_at": iso(g["to_at"])} for g in coverage.gaps(conn, slot)],
    }


def status(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        report = status_report(conn)
    slot, worker_info = report["slot"], report["worker"]
    warnings = []
    if slot is not None and slot["retained_bytes"] > args.max_retained_mb * 1024 * 1024:
        warnings.append(f"the slot retains {human_bytes(slot['retained_bytes'])} of WAL, over "
                        f"{args.max_retained_mb} MB: is bemi-pg worker running?")
    if report["problem_changes"]:
        warnings.append(f"{report['problem_changes']} stored changes have a problem "
                        "(SELECT id, problem FROM bemi.changes WHERE problem IS NOT NULL)")
    if report["not_full_identity"]:
        warnings.append("tracked tables without REPLICA IDENTITY FULL (their before images are incomplete): "
                        + ", ".join(report["not_full_identity"]) + "; run bemi.track() on them again")
    warnings.extend(coverage.warnings(report["gaps"]))
    if report["wal_level"] != "logical":
        warnings.append(f"wal_level is {report['wal_level']}: nothing can be decoded until it is logical")
    if args.json:
        print(json.dumps({**report, "warnings": warnings}, default=str))
    else:
        rows = [
            ("database", report["database"]),
            ("wal_level", report["wal_level"]),
            ("worker", "none connected" if worker_info is None else
             f"connected since {worker_info['connected_since']} (pid {worker_info['pid']}"
             + (f", {worker_info['application_name']}" if worker_info["application_name"] else "")
             + (f", from {worker_info['client_addr']}" if worker_info["client_addr"] else "") + ")"),
            ("tracked tables", ", ".join(report["tracked"]) or "none (SELECT bemi.track('table'))"),
            ("not REPLICA IDENTITY FULL", ", ".join(report["not_full_identity"]) or "none"),
            ("changes stored", f"{report['changes']:,}"),
            ("problem changes", f"{report['problem_changes']:,}"),
            ("last change committed", report["last_committed_at"] or "-"),
            ("last change ingested", report["last_ingested_at"] or "-"),
        ]
        if slot is not None:
            progress = slot["progress"] or {}
            rows[3:3] = [
                ("slot", f"{slot['name']} ({slot['plugin']}, {'in use' if slot['active'] else 'idle'}, "
                         f"WAL {slot['wal_status']})"),
                ("ingested up to", str(progress.get("lsn", "-"))
                 + (f", every commit up to {until} stored" if (until := progress.get("caught_up_at")
                                                               or progress.get("committed_at")) else "")),
                ("pending WAL", human_bytes(slot["pending_bytes"])),
                ("retained WAL", human_bytes(slot["retained_bytes"])),
            ]
        for label, value in rows:
            print(f"{label:<26} {value}")
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    if slot is None:
        raise Failure(f"the replication slot {report['slot_name']} does not exist: changes are not being captured "
                      "(create it with SELECT bemi.create_slot())")
    return 2 if warnings else 0
