"""Storing: a writer thread stores each staged batch with ``bemi.store`` in one transaction,
which converts the values with the server's own input functions, inserts the trail and moves
the progress row. Only then is the position reported as stored (and the stream confirms it to
the server).
"""

from __future__ import annotations

import contextlib
import datetime
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from bemi_pg.ingest.staging import Batch
from bemi_pg.ingest.stream import format_lsn, parse_lsn

# In the stream's encoding (stream.stream_encoding): an SQL_ASCII database's bytes are staged as
# they came, whatever the connection's client encoding.
STAGED_RELATIONS_COPY = (
    'COPY bemi.staged_relations (relation, relid, schema, "table", columns, types, typmods, identity, '
    "type_names, key_columns, ignore_columns, mask_columns) FROM STDIN (ENCODING '{}')")
STAGED_COPY = ("COPY bemi.staged (seq, relation, operation, position, ordinal, transaction_id, committed_at, "
               "context, old_values, old_key_only, new_values, new_missing) FROM STDIN (ENCODING '{}')")
STORE = "SELECT bemi.store(%s::pg_lsn, %s::pg_lsn, %s, %s, %s, %s)"
# An LSN past every commit made before the returned time: once that much is stored, the
# trail is complete up to that time (bemi.store's caught_up_at). bemi.wal_mark (1.2) lets the
# transactions committing at that time finish first; before 1.2, the time and the position.
WAL_MARK = "SELECT clock_timestamp(), pg_current_wal_insert_lsn()::text"
EXACT_MARK = "SELECT m.at, m.lsn::text FROM bemi.wal_mark() AS m"
HAS_EXACT_MARK = "SELECT to_regprocedure('bemi.wal_mark()') IS NOT NULL"
# Every store leaves its staged rows dead, and every store reads the whole stage: a writer that
# may vacuum the stage (its owner's role, or a superuser) does so after this many rows, instead
# of waiting for autovacuum (a minute at least), during which stores slow down under load.
VACUUM_EVERY = 50_000
MAY_VACUUM = """SELECT bool_and(pg_has_role(c.relowner, 'USAGE')) FROM pg_class c
WHERE c.oid IN ('bemi.staged'::regclass, 'bemi.staged_relations'::regclass)"""
# Without TRUNCATE: giving the empty end of the table back needs a lock that the other
# connection's open transaction holds off for up to five seconds.
VACUUM = "VACUUM (TRUNCATE false) bemi.staged, bemi.staged_relations"


def wal_mark(conn: psycopg.Connection[Any]) -> tuple[datetime.datetime | None, int]:
    """(time, LSN): every commit at or before the time ends before the LSN (time None: none
    could be taken now, try later)."""
    (exact,) = conn.execute(HAS_EXACT_MARK).fetchone()  # type: ignore[misc]
    at, lsn = conn.execute(EXACT_MARK if exact else WAL_MARK).fetchone()  # type: ignore[misc]
    return at, parse_lsn(lsn)


@dataclass
class Stored:
    through: int
    changes: int  # rows inserted into bemi.changes
    wal_end: int  # the server's current WAL position when it stored them
    newest_commit: int | None
    idle: bool = False  # an idle batch: the trail was complete up to ``through`` (caught up)


def stage(conn: psycopg.Connection[Any], batch: Batch, encoding: str = "UTF8") -> None:
    """Opens the batch's transaction and copies its rows (bytes in ``encoding``) into the staging tables."""
    with conn.cursor() as cur:
        if batch.relations:
            with cur.copy(STAGED_RELATIONS_COPY.format(encoding)) as copy:
                copy.write(b"".join(batch.relations.values()))
        if batch.rows:
            with cur.copy(STAGED_COPY.format(encoding)) as copy:
                copy.write(b"".join(batch.rows))


@dataclass(frozen=True)
class Source:
    """The database whose slot is read, when the trail is stored in another one."""
    conn: psycopg.Connection[Any]  # autocommit: WAL positions, and what it says of relations
    slot: str
    database: str


def store(conn: psycopg.Connection[Any], batch: Batch, caught_up_at: datetime.datetime | None = None,
          source: Source | None = None) -> Stored:
    """Stores what stage() staged with bemi.store, and commits."""
    with conn.cursor() as cur:
        cur.execute(STORE, [format_lsn(batch.through), None if batch.part_of is None else format_lsn(batch.part_of),
                            batch.part_stored, caught_up_at, source and source.slot, source and source.database])
        (inserted,) = cur.fetchone()  # type: ignore[misc]
    conn.commit()
    (wal_end,) = (source.conn if source else conn).execute("SELECT pg_current_wal_lsn()::text").fetchone()  # type: ignore[misc]
    if source is None:
        conn.commit()
    return Stored(batch.through, int(inserted), parse_lsn(wal_end), batch.newest_commit, batch.idle)


class Writer:
    """Stores the stream's batches while it goes on decoding, on two connections in turn:
    while one runs bemi.store for a batch, the other stages the next (COPY), each in a
    transaction of its own. Stores run one at a time and in order, and a batch is staged on
    a connection only once the batch before on it is committed, so a batch is never stored
    unless every batch before it was. ``stored`` is the position everything before which is
    durably in the trail.

    (bemi.store empties the staging tables with DELETE, which does not wait for the other
    connection's uncommitted rows: they are invisible to it.)"""

    def __init__(self, conns: list[psycopg.Connection[Any]], stored: int, source: Source | None = None,
                 encoding: str = "UTF8") -> None:
        self.conns, self.source, self.encoding = conns, source, encoding
        self.aborted = False  # stopping at once: store nothing more (abort)
        self.queue: queue.Queue[Batch | None] = queue.Queue(maxsize=1)  # from the stream
        # Staged batches, waiting for their store (at most one per connection).
        self.staged: queue.Queue[tuple[psycopg.Connection[Any], Batch] | None] = queue.Queue()
        self.free: queue.Queue[psycopg.Connection[Any] | None] = queue.Queue()  # no transaction open
        for conn in conns:
            self.free.put(conn)
        self.stored = stored
        self.results: queue.Queue[Stored] = queue.Queue()
        self.error: BaseException | None = None
        self.mark: tuple[datetime.datetime | None, int] | None = None  # (time, LSN) from wal_mark
        self.marked_at = 0.0  # when the last mark was taken (time.monotonic)
        self.in_flight = 0  # batches handed and not yet stored
        self.may_vacuum = bool(conns[0].execute(MAY_VACUUM).fetchone()[0])  # type: ignore[index]
        conns[0].commit()
        self.dead = 0  # staged rows stored since the stage was last vacuumed
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._stage_all, name="bemi-pg stage", daemon=True),
                        threading.Thread(target=self._store_all, name="bemi-pg store", daemon=True)]

    @property
    def idle(self) -> bool:
        return self.in_flight == 0

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def is_alive(self) -> bool:
        return any(thread.is_alive() for thread in self.threads)

    def join(self) -> None:
        for thread in self.threads:
            thread.join()

    def _stage_all(self) -> None:
        try:
            while (batch := self.queue.get()) is not None and (conn := self.free.get()) is not None \
                    and not self.aborted:
                stage(conn, batch, self.encoding)
                self.staged.put((conn, batch))
        except BaseException as error:  # handed to the stream's thread, which stops
            self.error = self.error or error
        finally:
            self.staged.put(None)

    def _store_all(self) -> None:
        try:
            while (item := self.staged.get()) is not None and self.error is None and not self.aborted:
                conn, batch = item
                self._store(conn, batch)
                self.free.put(conn)
                with self.lock:
                    self.in_flight -= 1
        except BaseException as error:
            self.error = self.error or error
        finally:
            self.free.put(None)  # the stage thread stops (a staged batch is never stored out of turn)

    def _store(self, conn: psycopg.Connection[Any], batch: Batch) -> None:
        # Every commit before batch.through is stored with this batch (the stream is in commit
        # order): a mark that far back is proven, whether the stream is idle or not.
        caught_up_at = None
        if self.mark is not None and self.mark[0] is not None and batch.through >= self.mark[1]:
            caught_up_at = self.mark[0]
        result = store(conn, batch, caught_up_at, self.source)
        self.stored = max(self.stored, result.through)
        self.results.put(result)
        self.dead += len(batch.rows)
        if self.may_vacuum and self.dead >= VACUUM_EVERY:
            conn.autocommit = True
            conn.execute(VACUUM)
            conn.autocommit = False
            self.dead = 0
        # A new mark once this one is used; one that could not be taken (a transaction was
        # committing for long) is tried again after a while, not at every store.
        if batch.idle or caught_up_at is not None or self.mark is None or (
                self.mark[0] is None and time.monotonic() - self.marked_at >= 1.0):
            marker = self.source.conn if self.source else conn
            self.mark, self.marked_at = wal_mark(marker), time.monotonic()  # type: ignore[assignment]
            if self.source is None:
                conn.commit()

    def abort(self) -> None:
        """Stops at once (SIGTERM), whatever the server is doing: cancels what the connections
        run, so a batch half staged or half stored is rolled back (the stream sends it again at
        the next start, from the progress row), and ends the threads without storing more."""
        self.aborted = True
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(None)
        self.free.put(None)
        self.staged.put(None)
        while self.is_alive():  # again until they end: a statement may begin just after a cancel
            for conn in self.conns:
                cancel(conn)
            for thread in self.threads:
                thread.join(timeout=1.0)
        for conn in self.conns:  # what was staged and not stored must not be committed on close
            with contextlib.suppress(psycopg.Error):
                conn.rollback()

    def put(self, batch: Batch | None, timeout: float) -> bool:
        """Hands a batch over (None: stop once the batches handed are stored); False when
        the writer is still busy after ``timeout`` seconds."""
        if batch is not None:
            with self.lock:
                self.in_flight += 1
        try:
            self.queue.put(batch, timeout=timeout)
            return True
        except queue.Full:
            if batch is not None:
                with self.lock:
                    self.in_flight -= 1
            return False


def cancel(conn: psycopg.Connection[Any]) -> None:
    """Cancels what ``conn`` runs, if anything (from another thread, or a signal's)."""
    with contextlib.suppress(psycopg.Error):
        if hasattr(conn, "cancel_safe"):  # psycopg 3.2
            conn.cancel_safe(timeout=10)
        else:
            conn.cancel()
