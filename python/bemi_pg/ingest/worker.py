"""``bemi-pg worker``: keeps the trail current.

Streaming (the default): reads this database's slot over the replication protocol
(stream.py), parses pgoutput (pgoutput.py), stages batches (staging.py) and stores them on a
writer thread (writer.py), and confirms to the server only what is stored. The SQL path
(``--sql``, or when the role may not stream) calls ``bemi.ingest(n)`` in a loop instead.

Before it says it is ingesting it checks what retrying cannot fix (authentication, the
database, the install, the slot, privileges) and fails fast with a clear message; it retries
with backoff only on errors that go away (the server restarting, a lost connection, the slot
still held by a worker just killed). Totals survive reconnects.

It behaves like a well-mannered replication client: it never delays a server shutdown (it
confirms what the server sent as soon as it is stored, ends its stream when the server does,
and leaves at a smart shutdown, which it learns of by a probe connection being refused), a
second worker waits for the first one's lock, and its state shows in its session's
application_name, ``bemi-pg worker (<state>)``, and in its metrics (metrics.py).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from bemi_pg.ingest import coverage, pgoutput
from bemi_pg.ingest.metrics import Metrics
from bemi_pg.ingest.staging import Stager, describe, python_codec
from bemi_pg.ingest.stream import (POSTGRES_EPOCH_US, Keepalive, ReplicationStream, XLogData, format_lsn, keepalives,
                                   now_us, parse_lsn, session_options, stream_encoding)
from bemi_pg.ingest.writer import Source, Stored, Writer, cancel, wal_mark

log = logging.getLogger("bemi_pg.worker")


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
    wait: bool = True  # wait while another worker holds the lock (else: exit with an error)
    trail_here: bool = False  # bring the trail back into the source's own database first (bemi.trail_here())
    lock_poll: float = 5.0  # seconds between attempts to take the lock while waiting
    probe_every: float = 5.0  # seconds between probe connections (how a smart shutdown is noticed)
    max_backoff: float = 10.0  # seconds: the longest wait before connecting again


@dataclass
class Totals:
    changes: int = 0
    started: float = field(default_factory=time.monotonic)
    drain_target: int | None = None  # the server's WAL position when --drain started
    drain_at: datetime.datetime | None = None  # and its time: every commit before it is stored when drained
    ingesting: bool = False  # the current session got as far as ingesting


# Errors retrying cannot fix (SQLSTATE prefixes), and the same said by libpq before a session exists.
FATAL_STATES = ("28", "3D000", "42501", "42704", "42883", "3F000", "42P01")
FATAL_CONNECT = ("password authentication failed", "does not exist", "no pg_hba.conf entry", "permission denied",
                 "authentication failed", "not permitted to log in", "must be superuser or replication role",
                 "invalid connection option", "invalid dsn", "missing \"=\"", "invalid integer value")


# A host name that does not resolve: a typo before the worker ever connected, an outage after.
UNKNOWN_HOST = ("failed to resolve host", "could not translate host name", "name or service not known")


def is_transient(error: psycopg.Error, connected_before: bool = True) -> bool:
    """Whether the error may go away by itself (lost connection, restart, shutdown, slot still
    in use); a host name that does not resolve only once the worker has connected."""
    state = error.sqlstate or ""
    if state.startswith(FATAL_STATES):
        return False
    if state:
        return state.startswith(("08", "53", "57", "55006", "40"))
    text = str(error).lower()
    if not connected_before and any(m in text for m in UNKNOWN_HOST):
        return False
    return isinstance(error, psycopg.OperationalError) and not any(m in text for m in FATAL_CONNECT)


def one_line(error: BaseException) -> str:
    """An error's message on one line (libpq's run over several), for logs."""
    return " ".join(str(error).split())


def info(message: str, **fields: Any) -> None:
    """A progress line; ``fields`` are separate keys in JSON logs (--log-format json)."""
    log.info(message, extra={"fields": fields})


def warn(message: str, **fields: Any) -> None:
    log.warning(message, extra={"fields": fields})


def released(conn: psycopg.Connection[Any], slot: str, walsender: int, wait: float = 5.0) -> None:
    """Waits (a few seconds at most) until the walsender that streamed the slot has let it go:
    it ends after its connection closes, so a bemi.ingest() or worker run right after this one
    (a --drain in a script) would otherwise find the slot in use."""
    deadline = time.monotonic() + wait
    with contextlib.suppress(psycopg.Error):  # the server may be what stopped the stream
        while time.monotonic() < deadline and conn.execute(
                "SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = %s AND active_pid = %s)",
                [slot, walsender]).fetchone() == (True,):
            time.sleep(0.01)


def _connect(dsn: str, application_name: str = "bemi-pg", **kwargs: Any) -> psycopg.Connection[Any]:
    """A normal connection with the worker's settings (stream.session_options), whatever the
    database, the role or the DSN bring: its queries resolve names in pg_catalog only (names
    of bemi are schema-qualified), psycopg reads dates in ISO style, and no timeout stops it."""
    return psycopg.connect(dsn, client_encoding="UTF8", application_name=application_name, connect_timeout=10,
                           options=session_options(dsn), **keepalives(dsn), **kwargs)


# ---------------------------------------------------------------------------------------
# Preflight: what this role may do here, decided once per connection.

# How bemi is installed, as bemi_pg.install.installed() tells it, but without reading
# bemi.plain_install (a worker role need not): the extension's version, or a plain install.
PREFLIGHT = """
SELECT current_database() AS database, current_user AS role,
  (SELECT extversion FROM pg_extension WHERE extname = 'bemi') AS version,
  to_regclass('bemi.plain_install') IS NOT NULL AS plain,
  EXISTS (SELECT FROM pg_proc WHERE pronamespace = to_regnamespace('bemi') AND proname = 'store') AS has_store,
  to_regprocedure('bemi.slot_name()') IS NOT NULL AS has_slot_name,
  (SELECT rolreplication OR rolsuper
          OR coalesce(pg_has_role(oid, (SELECT oid FROM pg_roles WHERE rolname = 'rds_replication'), 'MEMBER'), false)
   FROM pg_roles WHERE rolname = current_user) AS replication,
  current_setting('server_encoding') AS encoding
"""
SLOT = "SELECT bemi.slot_name() AS name, EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = bemi.slot_name()) AS exists"
# What the SQL path needs in the source; what a trail in another database needs of the source.
SOURCE_PRIVILEGES = """
SELECT has_function_privilege('bemi.ingest(integer)', 'EXECUTE') AS ingest,
  has_function_privilege('bemi.describe_relation(oid, oid[], integer[], pg_lsn)', 'EXECUTE') AS describe,
  coalesce(has_function_privilege(to_regprocedure('bemi.move_trail_to(bigint, name)'), 'EXECUTE'), true) AS move
"""
# What storing needs, wherever the trail is.
STORE_PRIVILEGES = """
SELECT (SELECT bool_and(has_function_privilege(oid, 'EXECUTE')) FROM pg_proc
        WHERE pronamespace = 'bemi'::regnamespace AND proname = 'store') AS store,
  has_table_privilege('bemi.staged', 'INSERT') AND has_table_privilege('bemi.staged_relations', 'INSERT') AS stage,
  has_table_privilege('bemi.progress', 'SELECT') AS progress
"""
STREAM_GRANTS = ("the REPLICATION attribute, EXECUTE on bemi.store, INSERT on bemi.staged and "
                 "bemi.staged_relations, SELECT on bemi.progress")
TRAIL_READY = "SELECT to_regprocedure('bemi.store(pg_lsn,pg_lsn,bigint,timestamptz,name,text)') IS NOT NULL AS ready"


@dataclass(frozen=True)
class Plan:
    database: str
    slot: str
    sql: bool  # the SQL path, not streaming
    note: str = ""  # why the SQL path, when it was not asked for
    reads_progress: bool = True  # may read bemi.progress (for the pending WAL in progress lines)
    encoding: str = "UTF8"  # the database's (server_encoding)


def preflight(options: Options) -> Plan:
    """What this role may do in the source (and, with --trail-dsn, in the trail database),
    or a Failure saying what is missing."""
    with _connect(options.dsn, autocommit=True, row_factory=dict_row) as conn:
        info = conn.execute(PREFLIGHT).fetchone()
        assert info is not None
        database, role = info["database"], info["role"]
        if info["version"] is None and not info["plain"]:
            raise Failure(f'the bemi extension is not installed in database "{database}" (run CREATE EXTENSION bemi '
                          "as its owner, or bemi-pg install where extensions cannot be installed)")
        if not info["has_slot_name"] or not info["has_store"]:
            raise Failure(f'bemi in database "{database}" is version {info["version"] or "1.0"}; this worker needs '
                          "1.1 or later (run ALTER EXTENSION bemi UPDATE, or bemi-pg install for a plain install)")
        slot = conn.execute(SLOT).fetchone()
        assert slot is not None
        if not slot["exists"]:
            raise Failure(f'the replication slot "{slot["name"]}" does not exist in database "{database}": changes '
                          "are not being captured (create it with SELECT bemi.create_slot())")
        may = conn.execute(SOURCE_PRIVILEGES).fetchone()
        assert may is not None
        local = None if options.trail_dsn else conn.execute(STORE_PRIVILEGES).fetchone()
    try:
        python_codec(info["encoding"])
        unreadable = None
    except psycopg.NotSupportedError:
        unreadable = f'Python cannot read the database encoding {info["encoding"]}'
    if options.trail_dsn:
        if options.sql:
            raise Failure("--trail-dsn needs the streaming worker: bemi.ingest() stores in its own database")
        if unreadable:
            raise Failure(f"--trail-dsn needs the streaming worker, and {unreadable}")
        if not info["replication"] or not may["describe"] or not may["move"]:
            raise Failure(f'role "{role}" may not stream database "{database}" into a trail database: that needs, '
                          "there, the REPLICATION attribute and EXECUTE on bemi.describe_relation and "
                          "bemi.move_trail_to (see docs/trail-database.md)")
        stored = trail_privileges(options.trail_dsn)
        missing = [what for what, ok in (("EXECUTE on bemi.store", stored["store"]), (
            "INSERT on bemi.staged and bemi.staged_relations", stored["stage"]),
            ("SELECT on bemi.progress", stored["progress"])) if not ok]
        if missing:
            raise Failure(f'role "{stored["role"]}" may not store into the trail database "{stored["database"]}": it '
                          f"needs {', '.join(missing)} there (see docs/trail-database.md)")
        return Plan(database, slot["name"], sql=False, encoding=info["encoding"])
    assert local is not None
    can_stream = bool(info["replication"]) and local["store"] and local["stage"] and local["progress"]
    why_not = None if can_stream else f'role "{role}" lacks ' + (
        "the REPLICATION attribute" if not info["replication"] else "the grants for streaming")
    if unreadable:
        why_not = unreadable
    if options.sql or why_not:
        if not may["ingest"]:
            raise Failure(f'role "{role}" may not call bemi.ingest()' + (
                "" if options.sql else f" nor stream (that needs {STREAM_GRANTS})" if not can_stream else
                f" and {why_not}") + ": see docs/security.md")
        note = "" if options.sql else f"{why_not}, so ingesting through SQL (bemi.ingest)"
        return Plan(database, slot["name"], sql=True, note=note, reads_progress=bool(local["progress"]))
    return Plan(database, slot["name"], sql=False, encoding=info["encoding"])


def trail_privileges(trail_dsn: str) -> dict[str, Any]:
    """A separate trail database must hold bemi 1.1 or later (bemi-pg install --trail-only):
    what this role may do there."""
    with _connect(trail_dsn, autocommit=True, row_factory=dict_row) as trail:
        row = trail.execute(TRAIL_READY).fetchone()
        if not (row and row["ready"]):
            raise Failure(f'the trail database "{trail.info.dbname}" has no bemi 1.1: prepare it with '
                          "bemi-pg install --trail-only --dsn <trail URL>")
        may: dict[str, Any] | None = trail.execute(
            STORE_PRIVILEGES + ", current_user AS role, current_database() AS database").fetchone()
        assert may is not None
        return may


def check_trail(options: Options) -> None:
    """A separate trail database must hold bemi 1.1 (bemi-pg install --trail-only), and is
    written by the streaming worker only: checked before the coverage check writes there."""
    if options.sql:
        raise Failure("--trail-dsn needs the streaming worker: bemi.ingest() stores in its own database")
    assert options.trail_dsn is not None
    with _connect(options.trail_dsn, autocommit=True) as trail:
        row = trail.execute(TRAIL_READY).fetchone()
        if not (row and row[0]):
            raise Failure(f'the trail database "{trail.info.dbname}" has no bemi 1.1: prepare it with '
                          "bemi-pg install --trail-only --dsn <trail URL>")


CoverageStep = Callable[[psycopg.Connection[Any], psycopg.Connection[Any], str, "coverage.Place | None",
                         Callable[[str], None]], None]


def check_coverage(options: Options, step: CoverageStep = coverage.check_slot) -> None:
    """The slot and where the trail is stored against the trail's progress (bemi_pg.ingest.coverage):
    ``coverage.check_slot`` before the worker's lock (a lost slot stops the worker), and
    ``coverage.settle`` under it (a move of the trail, and gaps, recorded)."""
    with _connect(options.dsn, autocommit=True) as origin:
        row = origin.execute("SELECT to_regprocedure('bemi.slot_name()') IS NOT NULL AND "
                             "to_regclass('bemi.progress') IS NOT NULL").fetchone()
        if not (row and row[0]):
            return  # preflight says what is missing
        (slot,) = origin.execute("SELECT bemi.slot_name()::text").fetchone()  # type: ignore[misc]
        with _connect(options.trail_dsn or options.dsn) as trail:
            here = coverage.identity(trail) if options.trail_dsn else None
            # A role that only calls bemi.ingest() may not read the progress row: bemi.ingest and
            # bemi.create_slot keep the record then, and bemi.ingest refuses a trail stored elsewhere.
            row = trail.execute("SELECT has_table_privilege('bemi.progress', 'SELECT')").fetchone()
            if not (row and row[0]):
                coverage.refuse_elsewhere(origin, slot, here)
                return
            step(origin, trail, slot, here, lambda line: warn(line))


def bring_trail_here(options: Options) -> None:
    """--trail-here: bemi.trail_here() in the source, before the worker takes its lock."""
    with _connect(options.dsn, autocommit=True) as conn:
        try:
            row = conn.execute("SELECT bemi.trail_here()::text").fetchone()
        except psycopg.errors.InsufficientPrivilege as error:
            raise Failure(f'role "{conn.info.user}" may not bring the trail back (bemi.trail_here()): run '
                          "bemi-pg worker --trail-here as the extension's owner") from error
        except psycopg.errors.ObjectInUse as error:
            raise Failure(one_line(error).removeprefix("bemi: ")) from error
    if row is None or row[0] is None:
        info("worker: the trail of this database is stored here already (--trail-here)")
    else:
        info(f"worker: the trail is back here, going on from {row[0]}; what the trail database stored before is "
             "there, recorded here as a gap (trail moved)", resumes=row[0])


# ---------------------------------------------------------------------------------------
# The worker loop: preflight, ingest, reconnect on transient errors.

def run(options: Options, stop: threading.Event, say: Callable[[str], None] | None = None, *,
        metrics: Metrics | None = None, wake: threading.Event | None = None) -> Totals:
    """Ingests until ``stop`` is set (or, with --drain, until drained). Transient errors are
    retried after a backoff (doubling, up to max_backoff; ``wake`` cuts one short); a Failure
    is what retrying cannot fix. Progress is logged to the "bemi_pg.worker" logger (and given
    to ``say``, line by line, when given)."""
    if say is not None:
        handler, level = Say(say), log.level
        log.addHandler(handler)
        log.setLevel(min(level or logging.INFO, logging.INFO))
        try:
            return run(options, stop, metrics=metrics, wake=wake)
        finally:
            log.removeHandler(handler)
            log.setLevel(level)
    metrics = metrics or Metrics()
    wake = wake or threading.Event()
    totals, backoff, attempt, connected = Totals(), 0.5, 0, False
    watch = ShutdownWatch([options.dsn, *([options.trail_dsn] if options.trail_dsn else [])], options.probe_every)
    watch.start()
    metrics.state.state("starting")
    try:
        if options.trail_here:
            bring_trail_here(options)
        while not stop.is_set():
            try:
                if options.trail_dsn:
                    check_trail(options)
                check_coverage(options)
                plan = preflight(options)
                connected = True
                if plan.note:
                    info(f"worker: {plan.note}")
                if attempt:
                    metrics.reconnects.inc()
                    info(f"worker: connected again after {attempt} failed attempt{'s' if attempt > 1 else ''}",
                         attempts=attempt)
                    attempt = 0
                session = SqlSession if plan.sql else StreamSession
                session(options, plan, totals, stop, metrics, watch).run()
                break
            except (Failure, coverage.Stop):
                metrics.errors.labels(kind="fatal").inc()
                raise
            except psycopg.Error as error:
                if error.sqlstate == coverage.TRAIL_ELSEWHERE:  # moved while this worker waited or ran
                    metrics.errors.labels(kind="fatal").inc()
                    raise coverage.TrailElsewhere(one_line(error).removeprefix("bemi: ")) from error
                if not is_transient(error, connected):
                    metrics.errors.labels(kind="fatal").inc()
                    raise Failure(one_line(error)) from error
                metrics.errors.labels(kind="transient").inc()
                metrics.state.state("reconnecting")
                attempt += 1
                if totals.ingesting:  # the session had been ingesting: start the backoff over
                    backoff, totals.ingesting = 0.5, False
                warn(f"{one_line(error)}; retrying in {backoff:.1f} s (attempt {attempt})", attempt=attempt,
                     backoff=backoff, sqlstate=error.sqlstate)
                if not pause(backoff, stop, wake):
                    backoff = min(backoff * 2, options.max_backoff)
                watch.stopping.clear()
    finally:
        watch.stop.set()
        metrics.state.state("stopped")
    return totals


class Say(logging.Handler):
    """Progress lines to a callable."""

    def __init__(self, say: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.say = say

    def emit(self, record: logging.LogRecord) -> None:
        self.say(record.getMessage())


def pause(seconds: float, stop: threading.Event, wake: threading.Event) -> bool:
    """Waits ``seconds``, or until stopped or woken (SIGHUP): whether it was cut short."""
    wake.clear()
    deadline = time.monotonic() + seconds
    while not (stop.is_set() or wake.is_set()) and (left := deadline - time.monotonic()) > 0:
        stop.wait(min(left, 0.2))
    return stop.is_set() or wake.is_set()


class ServerStopping(psycopg.OperationalError):
    """A smart shutdown is under way: the worker leaves, so that the server can stop."""


class ShutdownWatch(threading.Thread):
    """A smart shutdown waits for every client session to end, and tells none of them: a new
    connection being refused ("the database system is shutting down", 57P03) is how a client
    learns of it. Every ``every`` seconds this thread tries one to each database the worker
    uses, and sets ``stopping`` when one is refused so. (libpq gives no SQLSTATE for a refused
    connection: the server's message is matched, as it sends it with lc_messages in English.)"""

    def __init__(self, dsns: list[str], every: float) -> None:
        super().__init__(name="bemi-pg shutdown watch", daemon=True)
        self.dsns, self.every = dsns, every
        self.stop, self.stopping = threading.Event(), threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            for dsn in self.dsns:
                try:
                    psycopg.connect(dsn, connect_timeout=10, application_name="bemi-pg probe", **keepalives(dsn)).close()
                except psycopg.Error as error:
                    if "the database system is shutting down" in str(error):
                        self.stopping.set()

    def check(self) -> None:
        if self.stopping.is_set():
            raise ServerStopping("the server is shutting down (a new connection was refused): leaving it")


class Session:
    """One connected stretch of ingesting; run() returns when the worker is done (stopped, or
    drained), and raises on an error."""

    def __init__(self, options: Options, plan: Plan, totals: Totals, stop: threading.Event, metrics: Metrics,
                 watch: ShutdownWatch) -> None:
        self.options, self.plan, self.totals, self.stop, self.metrics, self.watch = \
            options, plan, totals, stop, metrics, watch
        self.reported_at, self.reported_changes, self.reported_idle = time.monotonic(), totals.changes, False
        self.conn: psycopg.Connection[Any] | None = None  # the session holding the lock, named for the state
        self.state = ""

    def set_state(self, state: str) -> None:
        """The worker's state, in its metrics and in its session's application_name (which
        bemi-pg status reads from pg_stat_activity)."""
        if state == self.state:
            return
        self.state = state
        self.metrics.state.state(state)
        if self.conn is not None:
            self.conn.execute("SELECT pg_catalog.set_config('application_name', %s, false)",
                              [f"bemi-pg worker ({state})"])

    def lock(self, conn: psycopg.Connection[Any]) -> bool:
        """Takes the worker's lock; while another worker holds it, waits (polling) unless
        --no-wait. False when stopped while waiting."""
        self.conn = conn
        waiting_since = None
        while True:
            row = conn.execute("SELECT pg_try_advisory_lock(hashtext('bemi.worker'))").fetchone()
            if row and row[0]:
                if waiting_since is not None:
                    info(f"worker: took the lock after waiting {time.monotonic() - waiting_since:.0f} s")
                return True
            if not self.options.wait:
                raise Failure("another bemi-pg worker is already ingesting this database; not starting a second")
            if waiting_since is None:
                holder = conn.execute(LOCK_HOLDER).fetchone()
                info(f"worker: another bemi-pg worker (pid {holder[0] if holder else '?'}) holds this database's "
                     f"lock; waiting for it, trying every {self.options.lock_poll:g} s (--no-wait to exit instead)",
                     holder_pid=holder[0] if holder else None)
                waiting_since = time.monotonic()
                self.set_state("waiting")
            if self.stop.wait(self.options.lock_poll):
                return False
            self.watch.check()

    def drain_target(self, conn: psycopg.Connection[Any]) -> int | None:
        if self.options.drain and self.totals.drain_target is None:
            for _ in range(50):  # a mark waits for the commits under way; under load, ask again
                self.totals.drain_at, self.totals.drain_target = wal_mark(conn)
                if self.totals.drain_at is not None:
                    break
        return self.totals.drain_target

    def report(self, pending_bytes: int | None, newest_commit_age: float | None, force: bool = False,
               caught_up: bool = False) -> None:
        """A progress line at most once a second while changes arrive; one line when caught up."""
        now = time.monotonic()
        stored = self.totals.changes - self.reported_changes
        if stored and (force or now - self.reported_at >= 1.0):
            rate = stored / max(now - self.reported_at, 1e-6)
            age = "" if newest_commit_age is None else f", newest committed {newest_commit_age:.1f} s ago"
            info(f"ingested {stored} changes ({rate:,.0f}/s), total {self.totals.changes}{age}" + pending(pending_bytes),
                 stored=stored, total=self.totals.changes, pending_bytes=pending_bytes, lag_seconds=newest_commit_age)
            self.reported_at, self.reported_changes, self.reported_idle = now, self.totals.changes, False
        elif not stored and not self.reported_idle and caught_up:
            info(f"caught up: total {self.totals.changes}" + pending(pending_bytes), total=self.totals.changes,
                 pending_bytes=pending_bytes)
            self.reported_at, self.reported_idle = now, True
        if caught_up:
            self.set_state("streaming")
        elif pending_bytes is not None and pending_bytes > CATCHING_UP_BYTES:
            self.set_state("catching-up")


# Whose lock a waiting worker waits for.
LOCK_HOLDER = """
SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database =
  (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((classid::bigint << 32) | objid::bigint) = hashtext('bemi.worker')::bigint
"""
# A worker further behind than this is catching up (else it streams, keeping up).
CATCHING_UP_BYTES = 16 * 1024 * 1024


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

    def run(self) -> None:
        with _connect(self.options.dsn, autocommit=True) as conn, cancelled_on(self.stop, conn):
            if not self.lock(conn):
                return
            check_coverage(self.options, coverage.settle)
            self.set_state("catching-up")
            target = self.drain_target(conn)
            info(f"worker: ingesting from slot {self.plan.slot} of {self.plan.database} through bemi.ingest "
                 f"(batch {self.options.batch})", slot=self.plan.slot, database=self.plan.database)
            self.totals.ingesting = True
            stored_to = None
            while not self.stop.is_set():
                self.watch.check()
                try:
                    row = conn.execute("SELECT bemi.ingest(%s)", [self.options.batch]).fetchone()
                except psycopg.errors.QueryCanceled:
                    if self.stop.is_set():  # SIGTERM: that ingest is rolled back, and done again at the next start
                        return
                    raise
                n = int(row[0]) if row else 0
                self.totals.changes += n
                progress = conn.execute(self.PROGRESS).fetchone() if self.plan.reads_progress else None
                pending_bytes = int(progress[1] or 0) if progress else None
                self.metrics.stored(n, pending_bytes, None, caught_up=n < self.options.batch)
                self.report(pending_bytes, None, force=n < self.options.batch, caught_up=n < self.options.batch)
                if n == 0 and target is not None:
                    # Drained: past the WAL end at the start, or nothing more moves (without
                    # SELECT on bemi.progress: the first empty ingest).
                    now_at = parse_lsn(progress[0]) if progress else None
                    if now_at is None or now_at >= target or now_at == stored_to:
                        return
                    stored_to = now_at
                    continue
                if n < self.options.batch:
                    self.stop.wait(self.options.interval)


class StreamSession(Session):
    """Streaming: the stream is read on this thread, batches are stored on the writer's."""

    FEEDBACK_EVERY = 10.0  # seconds: a status update even when nothing moved (wal_sender_timeout)
    READ_TIMEOUT = 0.1
    wal_end: int | None = None  # the server's WAL position at the last store

    def run(self) -> None:
        options = self.options
        trail_dsn = options.trail_dsn or options.dsn
        with _connect(options.dsn, application_name="bemi-pg worker (starting)", autocommit=True) as origin:
            if not self.lock(origin):
                return
            check_coverage(options, coverage.settle)
            with _connect(trail_dsn, application_name="bemi-pg store") as conn, \
                    _connect(trail_dsn, application_name="bemi-pg store") as second:
                self.stream(origin, conn, second)

    def stream(self, origin: psycopg.Connection[Any], conn: psycopg.Connection[Any],
               second: psycopg.Connection[Any]) -> None:
        options = self.options
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
            writer.mark = (self.totals.drain_at, target)
        stager = Stager(start, part_of, part_stored,
                        None if source is None else lambda relation, position: describe(origin, relation, position),
                        python_codec(self.plan.encoding))
        with ReplicationStream(options.dsn, self.plan.slot, start, encoding=encoding) as stream:
            walsender = stream.pgconn.backend_pid
            self.set_state("catching-up")
            info(f"worker: streaming slot {self.plan.slot} of {self.plan.database} from {format_lsn(start)} "
                 f"(batches of up to {options.batch} changes)", slot=self.plan.slot, database=self.plan.database,
                 start=format_lsn(start))
            self.totals.ingesting = True
            writer.start()
            try:
                self.loop(stream, stager, writer, target)
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
        released(origin, self.plan.slot, walsender)

    def loop(self, stream: ReplicationStream, stager: Stager, writer: Writer, target: int | None) -> None:
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
            self.watch.check()
            if type(message) is Keepalive:
                stager.keepalive(message.end)
                settled = not stager.in_transaction and not stager.batch.rows and writer.idle
                if settled and message.end > writer.stored and (pinged_at is not None or message.reply_requested):
                    # Everything before message.end is here and none of it is left to store:
                    # record that (and how current the trail is); it is confirmed once stored.
                    # A server shutting down asks this until all it sent is confirmed.
                    pinged_at, ping_due = None, now + interval
                    self.hand(stream, writer, stager, idle=True)
                if message.reply_requested:
                    stream.confirm(writer.stored)
                    feedback_at = now
            elif message is None and not stager.in_transaction:
                if stager.batch.rows:  # the stream is quiet: store what is complete
                    self.hand(stream, writer, stager)
                elif now >= ping_due and pinged_at is None and writer.idle:  # idle: ask how far the server is
                    stream.confirm(writer.stored, reply_requested=True)
                    pinged_at = feedback_at = now
            if pinged_at is not None and now - pinged_at > self.FEEDBACK_EVERY:
                pinged_at = None  # no answer: ask again
            self.collect(writer, settled=writer.idle and not stager.in_transaction and not stager.batch.rows)
            if writer.stored > stream.confirmed or now - feedback_at >= self.FEEDBACK_EVERY:
                stream.confirm(writer.stored)
                feedback_at = now
            if target is not None and writer.stored >= target and writer.idle:
                if marked or stager.in_transaction or stager.batch.rows:
                    return
                self.hand(stream, writer, stager, idle=True)  # records caught_up_at: the drain's start
                marked = True

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

    def collect(self, writer: Writer, force: bool = False, settled: bool = False) -> None:
        """Counts what the writer stored and reports it (at once when it has stored all the
        stream sent, else at most once a second); "caught up" once an idle store says the
        trail is complete up to the server's position."""
        latest: Stored | None = None
        while not writer.results.empty():
            latest = writer.results.get_nowait()
            self.totals.changes += latest.changes
            self.wal_end = latest.wal_end
            newest = None if latest.newest_commit is None else (latest.newest_commit + POSTGRES_EPOCH_US) / 1e6
            self.metrics.stored(latest.changes, max(0, latest.wal_end - latest.through), newest, caught_up=latest.idle)
        if latest is not None or force:
            age = None
            if latest is not None and latest.newest_commit is not None:
                age = max(0.0, (now_us() - latest.newest_commit) / 1e6)
            pending_bytes = None if self.wal_end is None else max(0, self.wal_end - writer.stored)
            caught_up = latest is not None and latest.idle
            self.report(pending_bytes, age, force=force or settled or caught_up, caught_up=caught_up)


def pending(n: int | None) -> str:
    return "" if n is None else f", pending WAL {human_bytes(n)}"


def human_bytes(n: int | None) -> str:
    size = float(n or 0)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")

