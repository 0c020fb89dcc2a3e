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

The source also records where its trail is stored (``bemi.trail_location``): a worker storing
into a trail database records it there as it starts (``bemi.move_trail_to``); from then on a
worker that would store anywhere else (here, or another trail database) stops with exit
status 4 (``TrailElsewhere``), as ``bemi.ingest()`` refuses (ZB003), until ``bemi.trail_here()``
(``bemi-pg worker --trail-here``) brings the trail back. The span a moved trail missed is a
'trail moved' gap: the trail never splits.

Two steps: ``check_slot`` before the worker takes its lock (a lost slot, a trail stored
elsewhere: nothing to wait for), ``settle`` once it holds it (no other worker stores then).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row, tuple_row

from bemi_pg.ingest.stream import parse_lsn

SLOT_STATE = "SELECT confirmed_flush_lsn::text, wal_status FROM pg_replication_slots WHERE slot_name = %s"
PROGRESS = "SELECT lsn::text FROM bemi.progress WHERE slot_name = %s"
CAN_NOTE = ("SELECT to_regprocedure('bemi.note_gap(name,text,pg_lsn,pg_lsn,text)') IS NOT NULL "
            "AND has_function_privilege('bemi.note_gap(name,text,pg_lsn,pg_lsn,text)', 'EXECUTE')")
NOTE = "SELECT bemi.note_gap(%s, %s, %s::pg_lsn, %s::pg_lsn, %s)"
# Whether the source's own trail holds changes of its slot (stored there, not elsewhere), where
# this role may read its progress (the role of a worker storing into a trail database need not).
MAY_READ_LOCAL = "SELECT has_table_privilege('bemi.progress', 'SELECT')"
LOCAL_HISTORY = ("SELECT to_regclass('bemi.changes') IS NOT NULL AND EXISTS (SELECT FROM bemi.progress "
                 "WHERE slot_name = %s AND (committed_at IS NOT NULL OR caught_up_at IS NOT NULL))")
# Where the trail of a slot is stored, as the source records it (no row: here).
CAN_PLACE = "SELECT to_regprocedure('bemi.trail_stored_in(name)') IS NOT NULL"
PLACE = "SELECT system_identifier, database::text, since FROM bemi.trail_stored_in(%s)"
IDENTITY = "SELECT system_identifier, current_database()::text FROM pg_catalog.pg_control_system()"
MOVE = "SELECT bemi.move_trail_to(%s, %s)"
TRAIL_ELSEWHERE = "ZB003"  # the SQLSTATE of bemi.refuse_trail_elsewhere()


class Stop(Exception):
    """Capture cannot go on as it is: the worker stops with ``exit_status`` (docs/ingest.md)."""

    exit_status = 1


class SlotLost(Stop):
    """The slot is gone or invalidated: the gap is recorded; a new slot resumes capture."""

    exit_status = 3


class TrailElsewhere(Stop):
    """The trail is stored in another database: storing where this worker would splits it."""

    exit_status = 4


@dataclass(frozen=True)
class Place:
    """A trail database: its server's system identifier and its name."""

    system_identifier: int
    database: str

    def __str__(self) -> str:
        return f'the trail database "{self.database}" (system identifier {self.system_identifier})'


def identity(trail: psycopg.Connection[Any]) -> Place:
    """The trail database a connection is to."""
    with trail.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(IDENTITY).fetchone()
    assert row is not None
    return Place(int(row[0]), row[1])


def recorded(origin: psycopg.Connection[Any], slot: str) -> tuple[Place, Any] | None:
    """Where the source records its trail is stored, and since when (None: here, or a bemi
    older than this record)."""
    with origin.cursor(row_factory=tuple_row) as cur:
        if cur.execute(CAN_PLACE).fetchone() != (True,):
            return None
        row = cur.execute(PLACE, [slot]).fetchone()
    return None if row is None else (Place(int(row[0]), row[1]), row[2])


def refuse_elsewhere(origin: psycopg.Connection[Any], slot: str, here: Place | None) -> bool:
    """Raises TrailElsewhere unless the trail is stored where this worker stores (``here``;
    None: the source's own trail). Whether the trail moves to ``here`` now (it was local)."""
    found = recorded(origin, slot)
    if found is None:
        return here is not None
    place, since = found
    if place != here:
        raise TrailElsewhere(
            f'the trail of database "{origin.info.dbname}" is stored in {place} since {since}: storing it '
            + ("here" if here is None else f"in {here}") + " would split it. Run the worker with --trail-dsn naming "
            f'"{place.database}"; or, to bring the trail back here, stop every worker and run bemi-pg worker '
            "--trail-here (or SELECT bemi.trail_here()) as the extension's owner")
    return False


def check_slot(origin: psycopg.Connection[Any], trail: psycopg.Connection[Any], slot: str, here: Place | None,
               warn: Callable[[str], None]) -> None:
    """Before the worker's lock: a trail stored elsewhere, or a slot gone or invalidated (the
    gap recorded), stop the worker."""
    refuse_elsewhere(origin, slot, here)
    state = origin.execute(SLOT_STATE, [slot]).fetchone()
    stored = progress(trail, slot)
    if (state is not None and state[1] != "lost") or (stored is None and state is None):
        return  # the slot can be read; or never created, or dropped with bemi.drop_slot() (which recorded the gap)
    what = "does not exist" if state is None else "was invalidated (the WAL it needed is gone)"
    note(trail, slot, "slot lost", stored, None,
         f"the slot {what}: writes after the trail's last complete commit were not captured", warn)
    trail.commit()
    raise SlotLost(
        f'the replication slot "{slot}" {what}: changes after {stored or "the last stored one"} are not in the '
        "trail (recorded as a gap in bemi.gaps). Create a new slot with SELECT bemi.create_slot()"
        + (" (after SELECT bemi.drop_slot())" if state is not None else "")
        + " and start the worker again; time travel refuses moments before the gap's end")


def settle(origin: psycopg.Connection[Any], trail: psycopg.Connection[Any], slot: str, here: Place | None,
           warn: Callable[[str], None]) -> None:
    """Under the worker's lock, before it stores: records a move of the trail to ``here`` in
    the source first (from then on nothing else stores there), then what this trail lacks of
    what the slot confirmed (see the module)."""
    moving = refuse_elsewhere(origin, slot, here)
    if moving:
        assert here is not None
        origin.execute(MOVE, [here.system_identifier, here.database])
        origin.commit()
        warn(f"warning: the trail of this database is stored in {here} from now on: a worker storing anywhere "
             "else, and bemi.ingest(), refuse until bemi.trail_here() brings it back")
    state = origin.execute(SLOT_STATE, [slot]).fetchone()
    if state is None or state[1] == "lost":
        return  # check_slot stops the next start
    confirmed, stored = state[0], progress(trail, slot)
    if stored is None:
        if here is not None and origin.execute(MAY_READ_LOCAL).fetchone() == (True,) \
                and origin.execute(LOCAL_HISTORY, [slot]).fetchone() == (True,):
            note(trail, slot, "trail moved", None, confirmed,
                 f"this trail begins at {confirmed}: earlier changes are in the trail of the source database", warn)
    elif parse_lsn(confirmed) > parse_lsn(stored):
        if moving:
            note(trail, slot, "trail moved", stored, confirmed,
                 f"the trail was stored in the source database from {stored} to {confirmed}: those changes are "
                 "there, not here", warn)
        else:
            note(trail, slot, "trail split", stored, confirmed,
                 f"the slot confirmed up to {confirmed}, past {stored} that this trail holds: those changes were "
                 "read by another trail or a synced slot ran ahead of this trail", warn)
    trail.commit()


def progress(trail: psycopg.Connection[Any], slot: str) -> str | None:
    """How far the trail holds every change of the slot (None: nothing yet)."""
    row = trail.execute(PROGRESS, [slot]).fetchone()
    return None if row is None else str(row[0])


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
