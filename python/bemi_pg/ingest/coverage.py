"""The coverage record, kept by the worker (docs/ingest.md, "Gaps and failover").

Before it streams (at start and after every reconnect) the worker compares what the slot has
confirmed with what the trail it stores into holds:

- the slot is gone or invalidated (a failover before PostgreSQL 17, ``max_slot_wal_keep_size``
  exceeded, a drop by hand): the trail records an open gap from what it holds, and the worker
  stops with exit status 3 (``SlotLost``); ``bemi.create_slot()`` (and, for a trail database,
  the next worker) ends the gap where capture resumes;
- the slot confirmed past what the trail holds (another trail or a worker storing elsewhere
  moved it, or a synced failover slot is ahead of its standby's trail): those changes can
  never be read again, so the span is recorded as a gap and the worker says so loudly;
- a trail database that holds nothing of this slot yet, while the source's own trail does:
  the trail moved, and what came before is recorded as a gap in the new one.

Time travel refuses moments before the end of a gap (``bemi.check_trail``), so nothing is
answered from a trail with a hole in it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row, tuple_row

from bemi_pg.ingest.stream import parse_lsn

SLOT_STATE = "SELECT confirmed_flush_lsn::text, wal_status FROM pg_replication_slots WHERE slot_name = %s"
PROGRESS = "SELECT lsn::text FROM bemi.progress WHERE slot_name = %s"
CAN_NOTE = ("SELECT to_regprocedure('bemi.note_gap(name,text,pg_lsn,pg_lsn,text)') IS NOT NULL "
            "AND has_function_privilege('bemi.note_gap(name,text,pg_lsn,pg_lsn,text)', 'EXECUTE')")
NOTE = "SELECT bemi.note_gap(%s, %s, %s::pg_lsn, %s::pg_lsn, %s)"
# Whether the source's own trail holds changes of its slot (stored there, not elsewhere).
LOCAL_HISTORY = ("SELECT to_regclass('bemi.changes') IS NOT NULL AND EXISTS (SELECT FROM bemi.progress "
                 "WHERE slot_name = %s AND (committed_at IS NOT NULL OR caught_up_at IS NOT NULL))")
EXIT_GAP = 3  # the worker's exit status when capture was lost (docs/ingest.md)


class SlotLost(Exception):
    """The slot is gone or invalidated: the gap is recorded; a new slot resumes capture."""


def check(origin: psycopg.Connection[Any], trail: psycopg.Connection[Any], slot: str, separate_trail: bool,
          warn: Callable[[str], None]) -> None:
    """Compares the slot with the trail's progress; records what is missing (see the module)."""
    state = origin.execute(SLOT_STATE, [slot]).fetchone()
    stored_row = trail.execute(PROGRESS, [slot]).fetchone()
    stored = None if stored_row is None else stored_row[0]
    if stored is None and state is None:
        return  # never created, or dropped with bemi.drop_slot() (which recorded the gap): preflight says so
    if state is None or state[1] == "lost":
        what = "does not exist" if state is None else "was invalidated (the WAL it needed is gone)"
        note(trail, slot, "slot lost", stored, None,
             f"the slot {what}: writes after the trail's last complete commit were not captured", warn)
        trail.commit()
        raise SlotLost(
            f'the replication slot "{slot}" {what}: changes after {stored or "the last stored one"} are not in the '
            "trail (recorded as a gap in bemi.gaps). Create a new slot with SELECT bemi.create_slot()"
            + (" (after SELECT bemi.drop_slot())" if state is not None else "")
            + " and start the worker again; time travel refuses moments before the gap's end")
    confirmed = state[0]
    if stored is None:
        if separate_trail and origin.execute(LOCAL_HISTORY, [slot]).fetchone() == (True,):
            note(trail, slot, "trail moved", None, confirmed,
                 f"this trail begins at {confirmed}: earlier changes are in the trail of the source database", warn)
    elif parse_lsn(confirmed) > parse_lsn(stored):
        note(trail, slot, "trail split", stored, confirmed,
             f"the slot confirmed up to {confirmed}, past {stored} that this trail holds: those changes were read "
             "by another trail (a worker storing elsewhere) or a synced slot ran ahead of this trail", warn)
    trail.commit()


def note(trail: psycopg.Connection[Any], slot: str, cause: str, from_lsn: str | None, to_lsn: str | None,
         detail: str, warn: Callable[[str], None]) -> None:
    span = f"{from_lsn or 'the start'} to {to_lsn or 'a new slot'}"
    if trail.execute(CAN_NOTE).fetchone() != (True,):
        warn(f"warning: gap in the trail ({cause}, {span}) NOT recorded: this role may not execute bemi.note_gap; "
             f"{detail}")
        return
    trail.execute(NOTE, [slot, cause, from_lsn, to_lsn, detail])
    warn(f"warning: gap in the trail recorded ({cause}, {span}): {detail}")


# ---------------------------------------------------------------------------------------
# For bemi-pg status: the gaps, and what they mean for an operator.

REPORT = ("SELECT cause, schema, \"table\", from_lsn::text, from_at, to_lsn::text, to_at, open, detail "
          "FROM bemi.coverage_report(%s) WHERE to_regprocedure('bemi.coverage_report(name)') IS NOT NULL")
MAY_REPORT = ("SELECT to_regprocedure('bemi.coverage_report(name)') IS NOT NULL "
              "AND has_function_privilege('bemi.coverage_report(name)', 'EXECUTE')")


def gaps(conn: psycopg.Connection[Any], slot: str) -> list[dict[str, Any]]:
    """bemi.coverage_report() as dicts (empty where bemi is older or the role may not call it)."""
    with conn.cursor(row_factory=tuple_row) as cur:
        if cur.execute(MAY_REPORT).fetchone() != (True,):
            return []
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(REPORT, [slot]).fetchall()


def warnings(found: list[dict[str, Any]]) -> list[str]:
    """A warning per open gap (closed ones are history: bemi.coverage shows them)."""
    return [f"capture has an open gap ({g['cause']}"
            + (f" of {g['schema']}.{g['table']}" if g["table"] else "")
            + f", from {g['from_lsn'] or 'the start'}): {g['detail']}" for g in found if g["open"]]
