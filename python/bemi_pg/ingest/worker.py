"""``bemi-pg worker``: keeps the trail current.

Streaming (the default): reads this database's slot over the replication protocol
(stream.py), parses pgoutput (pgoutput.py), stages batches (staging.py) and stores them on a
writer thread (writer.py), and confirms to the server only what is stored. The SQL path
(``--sql``, or when the role may not stream) calls ``bemi.ingest(n)`` in a loop instead.

Before it says it is ingesting it checks what retrying cannot fix (authentication, the
database, the extension, the slot, privileges) and fails fast with a clear message; it
retries with backoff only on errors that go away (the server restarting, a lost connection,
the slot still held by a worker just killed). Totals survive reconnects.
"""

from __future__ import annotations

import contextlib
import datetime
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from bemi_pg.ingest import coverage, pgoutput
from bemi_pg.ingest.staging import Stager, describe, python_codec
from bemi_pg.ingest.stream import (Keepalive, ReplicationStream, XLogData, format_lsn, keepalives, now_us, parse_lsn,
                                   session_options, stream_encoding)
from bemi_pg.ingest.writer import Source, Stored, Writer, cancel, wal_mark


class Failure(Exception):
    """What retrying cannot fix: printed as "error: ..." with exit status 1."""


@dataclass(frozen=True)
class Options:
    dsn: str
    batch: int = 20000  # changes per store (a larger transaction is stored in parts of this size)
    interval: float = 2.0  # seconds: idle heartbeat (streaming), wait when caught up (SQL path)
    drain: bool = False  # stop once everything written before the start is stored
    sql: bool = False  # use bemi.ingest() instead of streaming
    trail_dsn: str | None = None  # store the trail in this database instead (prepared with bemi-pg install --trail-only)


@dataclass
class Totals:
    changes: int = 0
    started: float = field(default_factory=time.monotonic)
    drain_target: int | None = None  # the server's WAL position when --drain started
    drain_at: datetime.datetime | None = None  # and its time: every commit before it is stored when drained


Say = Callable[[str], None]

# Errors retrying cannot fix (SQLSTATE prefixes), and the same said by libpq before a session exists.
FATAL_STATES = ("28", "3D000", "42501", "42704", "42883", "3F000", "42P01")
FATAL_CONNECT = ("password authentication failed", "does not exist", "no pg_hba.conf entry", "permission denied",
                 "authentication failed", "not permitted to log in", "must be superuser or replication role",
                 "invalid connection option", "invalid dsn", "missing \"=\"", "invalid integer value")


def is_transient(error: psycopg.Error) -> bool:
    """Whether the error may go away by itself (lost connection, restart, slot still in use)."""
    state = error.sqlstate or ""
    if state.startswith(FATAL_STATES):
        return False
    if state:
        return state.startswith(("08", "53", "57", "55006", "40"))
    text = str(error).lower()
    return isinstance(error, psycopg.OperationalError) and not any(m in text for m in FATAL_CONNECT)


def _connect(dsn: str, application_name: str = "bemi-pg", **kwargs: Any) -> psycopg.Connection[Any]:
    """A normal connection with the worker's settings (stream.session_options), whatever the
    database, the role or the DSN bring: its queries resolve names in pg_catalog only (names
    of bemi are schema-qualified), psycopg reads dates in ISO style, and no timeout stops it."""
    return psycopg.connect(dsn, client_encoding="UTF8", application_name=application_name, connect_timeout=10,
                           options=session_options(dsn), **keepalives(dsn), **kwargs)


# ---------------------------------------------------------------------------------------
# Preflight: what this role may do here, decided once per connection.

PREFLIGHT = """
SELECT current_database() AS database, current_user AS role,
  (SELECT extversion FROM pg_extension WHERE extname = 'bemi') AS version,
  EXISTS (SELECT FROM pg_proc WHERE pronamespace = to_regnamespace('bemi') AND proname = 'store') AS has_store,
  to_regprocedure('bemi.slot_name()') IS NOT NULL AS has_slot_name,
  (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user) AS replication,
  current_setting('server_encoding') AS encoding
"""
SLOT = "SELECT bemi.slot_name() AS name, EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = bemi.slot_name()) AS exists"
PRIVILEGES = """
SELECT has_function_privilege('bemi.ingest(integer)', 'EXECUTE') AS ingest,
  (SELECT bool_and(has_function_privilege(oid, 'EXECUTE')) FROM pg_proc
   WHERE pronamespace = 'bemi'::regnamespace AND proname = 'store') AS store,
  has_table_privilege('bemi.staged', 'INSERT') AND has_table_privilege('bemi.staged_relations', 'INSERT') AS stage,
  has_table_privilege('bemi.progress', 'SELECT') AS progress
"""
STREAM_GRANTS = ("the REPLICATION attribute, EXECUTE on bemi.store, INSERT on bemi.staged and "
                 "bemi.staged_relations, SELECT on bemi.progress")


@dataclass(frozen=True)
class Plan:
    database: str
    slot: str
    sql: bool  # the SQL path, not streaming
    note: str = ""  # why the SQL path, when it was not asked for
    reads_progress: bool = True  # may read bemi.progress (for the pending WAL in progress lines)
    encoding: str = "UTF8"  # the database's (server_encoding)


def preflight(dsn: str, want_sql: bool) -> Plan:
    with _connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        info = conn.execute(PREFLIGHT).fetchone()
        assert info is not None
        database, role = info["database"], info["role"]
        if info["version"] is None:
            raise Failure(f'the bemi extension is not installed in database "{database}" '
                          "(run CREATE EXTENSION bemi as its owner)")
        if not info["has_slot_name"] or not info["has_store"]:
            raise Failure(f"the bemi extension in database \"{database}\" is version {info['version']}; this worker "
                          "needs 1.1 or later (run ALTER EXTENSION bemi UPDATE)")
        slot = conn.execute(SLOT).fetchone()
        assert slot is not None
        if not slot["exists"]:
            raise Failure(f'the replication slot "{slot["name"]}" does not exist in database "{database}": changes '
                          "are not being captured (create it with SELECT bemi.create_slot())")
        may = conn.execute(PRIVILEGES).fetchone()
        assert may is not None
    can_stream = bool(info["replication"]) and may["store"] and may["stage"] and may["progress"]
    why_not = None if can_stream else f'role "{role}" lacks ' + (
        "the REPLICATION attribute" if not info["replication"] else "the grants for streaming")
    try:
        python_codec(info["encoding"])
    except psycopg.NotSupportedError:
        why_not = f'Python cannot read the database encoding {info["encoding"]}'
    if want_sql or why_not:
        if not may["ingest"]:
            raise Failure(f'role "{role}" may not call bemi.ingest()' + (
                "" if want_sql else f" nor stream (that needs {STREAM_GRANTS})" if not can_stream else
                f" and {why_not}") + ": see docs/security.md")
        note = "" if want_sql else f"{why_not}, so ingesting through SQL (bemi.ingest)"
        return Plan(database, slot["name"], sql=True, note=note, reads_progress=bool(may["progress"]))
    return Plan(database, slot["name"], sql=False, encoding=info["encoding"])


# ---------------------------------------------------------------------------------------
# The worker loop: preflight, ingest, reconnect on transient errors.

TRAIL_READY = "SELECT to_regprocedure('bemi.store(pg_lsn,pg_lsn,bigint,timestamptz,name,text)') IS NOT NULL"


def check_trail(options: Options) -> None:
    """A separate trail database must hold bemi 1.1 (bemi-pg install --trail-only), and is
    written by the streaming worker only."""
    if options.sql:
        raise Failure("--trail-dsn needs the streaming worker: bemi.ingest() stores in its own database")
    assert options.trail_dsn is not None
    with _connect(options.trail_dsn, autocommit=True) as trail:
        row = trail.execute(TRAIL_READY).fetchone()
        if not (row and row[0]):
            raise Failure(f'the trail database "{trail.info.dbname}" has no bemi 1.1: prepare it with '
                          "bemi-pg install --trail-only --dsn <trail URL>")


def check_coverage(options: Options, say: Say) -> None:
    """The slot against the trail's progress, before streaming: gaps are recorded in the trail
    (bemi_pg.ingest.coverage); a lost slot stops the worker (coverage.SlotLost)."""
    with _connect(options.dsn, autocommit=True) as origin:
        row = origin.execute("SELECT to_regprocedure('bemi.slot_name()') IS NOT NULL AND "
                             "to_regclass('bemi.progress') IS NOT NULL").fetchone()
        if not (row and row[0]):
            return  # preflight says what is missing
        # A role that only calls bemi.ingest() may not read the progress row: bemi.ingest and
        # bemi.create_slot keep the record then.
        row = origin.execute("SELECT has_table_privilege('bemi.progress', 'SELECT')").fetchone()
        if not (row and row[0]):
            return
        (slot,) = origin.execute("SELECT bemi.slot_name()::text").fetchone()  # type: ignore[misc]
        with _connect(options.trail_dsn or options.dsn) as trail:
            coverage.check(origin, trail, slot, bool(options.trail_dsn), lambda line: print(line, file=sys.stderr, flush=True))


def run(options: Options, stop: threading.Event, say: Say) -> Totals:
    totals, backoff = Totals(), 0.5
    while not stop.is_set():
        try:
            if options.trail_dsn:
                check_trail(options)
            check_coverage(options, say)
            plan = preflight(options.dsn, options.sql)
            if options.trail_dsn and plan.sql:
                raise Failure(f"--trail-dsn needs the streaming worker, and {plan.note}")
            if plan.note:
                say(f"worker: {plan.note}")
            session = SqlSession if plan.sql else StreamSession
            if session(options, plan, totals, stop, say).run():
                break
            backoff = 0.5
        except psycopg.Error as error:
            if not is_transient(error):
                raise Failure(str(error).strip()) from error
            print(f"error: {str(error).strip()}; retrying in {backoff:.1f} s", file=sys.stderr, flush=True)
            stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)
    return totals


class Session:
    """One connected stretch of ingesting; run() returns True when the worker is done."""

    def __init__(self, options: Options, plan: Plan, totals: Totals, stop: threading.Event, say: Say) -> None:
        self.options, self.plan, self.totals, self.stop, self.say = options, plan, totals, stop, say
        self.reported_at, self.reported_changes, self.reported_idle = time.monotonic(), totals.changes, False

    def lock(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute("SELECT pg_try_advisory_lock(hashtext('bemi.worker'))").fetchone()
        if not (row and row[0]):
            raise Failure("another bemi-pg worker is already ingesting this database; not starting a second")

    def drain_target(self, conn: psycopg.Connection[Any]) -> int | None:
        if self.options.drain and self.totals.drain_target is None:
            for _ in range(50):  # a mark waits for the commits under way; under load, ask again
                self.totals.drain_at, self.totals.drain_target = wal_mark(conn)
                if self.totals.drain_at is not None:
                    break
        return self.totals.drain_target

    def report(self, pending_bytes: int | None, newest_commit_age: float | None, force: bool = False) -> None:
        """A progress line at most once a second while changes arrive; one line when caught up."""
        now = time.monotonic()
        stored = self.totals.changes - self.reported_changes
        if stored and (force or now - self.reported_at >= 1.0):
            rate = stored / max(now - self.reported_at, 1e-6)
            age = "" if newest_commit_age is None else f", newest committed {newest_commit_age:.1f} s ago"
            self.say(f"ingested {stored} changes ({rate:,.0f}/s), total {self.totals.changes}{age}"
                     + pending(pending_bytes))
            self.reported_at, self.reported_changes, self.reported_idle = now, self.totals.changes, False
        elif not stored and not self.reported_idle and force:
            self.say(f"caught up: total {self.totals.changes}" + pending(pending_bytes))
            self.reported_at, self.reported_idle = now, True


@contextlib.contextmanager
def cancelled_on(stop: threading.Event, conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Cancels what ``conn`` runs as soon as ``stop`` is set (SIGTERM while bemi.ingest runs)."""
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if stop.wait(0.2):
                cancel(conn)  # and again while the session lasts: a statement may begin just after
                done.wait(1.0)

    watcher = threading.Thread(target=watch, name="bemi-pg cancel", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


class SqlSession(Session):
    """The SQL path: bemi.ingest(batch) until stopped (or, with --drain, until it returns 0)."""

    PROGRESS = ("SELECT lsn::text, pg_wal_lsn_diff(pg_current_wal_lsn(), lsn)::bigint FROM bemi.progress "
                "WHERE slot_name = bemi.slot_name()")

    def run(self) -> bool:
        with _connect(self.options.dsn, autocommit=True) as conn, cancelled_on(self.stop, conn):
            self.lock(conn)
            target = self.drain_target(conn)
            self.say(f"worker: ingesting from slot {self.plan.slot} of {self.plan.database} through bemi.ingest "
                     f"(batch {self.options.batch})")
            stored_to = None
            while not self.stop.is_set():
                try:
                    row = conn.execute("SELECT bemi.ingest(%s)", [self.options.batch]).fetchone()
                except psycopg.errors.QueryCanceled:
                    if self.stop.is_set():  # SIGTERM: that ingest is rolled back, and done again at the next start
                        return True
                    raise
                n = int(row[0]) if row else 0
                self.totals.changes += n
                progress = conn.execute(self.PROGRESS).fetchone() if self.plan.reads_progress else None
                self.report(int(progress[1] or 0) if progress else None, None, force=n < self.options.batch)
                if n == 0 and target is not None:
                    # Drained: past the WAL end at the start, or nothing more moves (without
                    # SELECT on bemi.progress: the first empty ingest).
                    now_at = parse_lsn(progress[0]) if progress else None
                    if now_at is None or now_at >= target or now_at == stored_to:
                        return True
                    stored_to = now_at
                    continue
                if n < self.options.batch:
                    self.stop.wait(self.options.interval)
        return True


class StreamSession(Session):
    """Streaming: the stream is read on this thread, batches are stored on the writer's."""

    FEEDBACK_EVERY = 10.0  # seconds: a status update even when nothing moved (wal_sender_timeout)
    READ_TIMEOUT = 0.1
    wal_end: int | None = None  # the server's WAL position at the last store

    def run(self) -> bool:
        options = self.options
        trail_dsn = options.trail_dsn or options.dsn
        with _connect(options.dsn, application_name="bemi-pg", autocommit=True) as origin, \
                _connect(trail_dsn, application_name="bemi-pg store") as conn, \
                _connect(trail_dsn, application_name="bemi-pg store") as second:
            self.lock(origin)
            target = self.drain_target(origin)
            # The progress row lives with the trail, wherever it is.
            row = conn.execute("SELECT lsn::text, part_of::text, part_stored FROM bemi.progress WHERE slot_name = %s",
                               [self.plan.slot]).fetchone()
            conn.commit()
            start, part_of, part_stored = (parse_lsn(row[0]), row[1] and parse_lsn(row[1]), row[2]) if row else (0, None, 0)
            source = Source(origin, self.plan.slot, self.plan.database) if options.trail_dsn else None
            encoding = stream_encoding(self.plan.encoding)
            writer = Writer([conn, second], start, source, encoding)
            if target is not None:  # drained, the trail is complete up to the drain's start
                writer.mark = (self.totals.drain_at, target)  # type: ignore[assignment]
            stager = Stager(start, part_of, part_stored,
                            None if source is None else lambda relation, position: describe(origin, relation, position),
                            python_codec(self.plan.encoding))
            with ReplicationStream(options.dsn, self.plan.slot, start, encoding=encoding) as stream:
                self.say(f"worker: streaming slot {self.plan.slot} of {self.plan.database} from {format_lsn(start)} "
                         f"(batches of up to {options.batch} changes)")
                writer.start()
                try:
                    return self.loop(stream, stager, writer, target)
                finally:
                    if self.stop.is_set():  # SIGTERM: now, not once what is handed is stored
                        writer.abort()
                    while writer.is_alive() and not writer.put(None, timeout=0.5):
                        pass
                    writer.join()
                    self.collect(writer, force=True)
                    if writer.error is None and stream.confirmed < writer.stored:
                        with contextlib.suppress(psycopg.Error):  # the stream may be what failed
                            stream.confirm(writer.stored)

    def loop(self, stream: ReplicationStream, stager: Stager, writer: Writer, target: int | None) -> bool:
        parse, add, limit = pgoutput.parse, stager.add, self.options.batch
        interval = 0.0 if target is not None else self.options.interval
        now = time.monotonic()
        ping_due, pinged_at, feedback_at, count, marked = now + interval, None, now, 0, False
        while not self.stop.is_set():
            message = stream.read(self.READ_TIMEOUT)
            if type(message) is XLogData:  # the hot path
                add(message.start, parse(message.payload))
                rows = stager.batch.rows
                if rows and (len(rows) >= limit or (stager.transaction is None and writer.idle)):
                    self.hand(stream, writer, stager)
                count += 1
                if count & 1023:
                    continue
            now = time.monotonic()
            if writer.error is not None:
                raise writer.error
            if type(message) is Keepalive:
                stager.keepalive(message.end)
                if message.reply_requested:
                    stream.confirm(writer.stored)
                    feedback_at = now
                if pinged_at is not None and not stager.in_transaction and not stager.batch.rows:
                    # Everything before message.end is here: record it (and how current the trail is).
                    pinged_at, ping_due = None, now + interval
                    self.hand(stream, writer, stager, idle=True)
            elif message is None and not stager.in_transaction:
                if stager.batch.rows:  # the stream is quiet: store what is complete
                    self.hand(stream, writer, stager)
                elif now >= ping_due and pinged_at is None and writer.idle:  # idle: ask how far the server is
                    stream.confirm(writer.stored, reply_requested=True)
                    pinged_at = feedback_at = now
            if pinged_at is not None and now - pinged_at > self.FEEDBACK_EVERY:
                pinged_at = None  # no answer: ask again
            self.collect(writer, caught_up=writer.idle and not stager.in_transaction and not stager.batch.rows)
            if writer.stored > stream.confirmed or now - feedback_at >= self.FEEDBACK_EVERY:
                stream.confirm(writer.stored)
                feedback_at = now
            if target is not None and writer.stored >= target and writer.idle:
                if marked or stager.in_transaction or stager.batch.rows:
                    return True
                self.hand(stream, writer, stager, idle=True)  # records caught_up_at: the drain's start
                marked = True
        return False

    def hand(self, stream: ReplicationStream, writer: Writer, stager: Stager, idle: bool = False) -> None:
        """Gives the batch built so far to the writer, waiting while it is busy (with feedback,
        so the server does not time the stream out)."""
        batch = stager.take(idle)
        while not writer.put(batch, timeout=1.0):
            if writer.error is not None:
                raise writer.error
            if self.stop.is_set():  # dropped: not stored, it is streamed again at the next start
                return
            stream.confirm(writer.stored)

    def collect(self, writer: Writer, force: bool = False, caught_up: bool = False) -> bool:
        """Counts what the writer stored and reports it (at once when it has caught up with
        the stream, else at most once a second); whether anything was stored."""
        latest: Stored | None = None
        while not writer.results.empty():
            latest = writer.results.get_nowait()
            self.totals.changes += latest.changes
            self.wal_end = latest.wal_end
        if latest is not None or force:
            age = None
            if latest is not None and latest.newest_commit is not None:
                age = max(0.0, (now_us() - latest.newest_commit) / 1e6)
            pending_bytes = None if self.wal_end is None else max(0, self.wal_end - writer.stored)
            self.report(pending_bytes, age, force=force or caught_up or latest is not None and latest.changes == 0)
        return latest is not None


def pending(n: int | None) -> str:
    return "" if n is None else f", pending WAL {human_bytes(n)}"


def human_bytes(n: int | None) -> str:
    size = float(n or 0)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")

