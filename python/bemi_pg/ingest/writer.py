"""Storing: a writer thread stores each staged batch with ``bemi.store`` in one transaction,
which converts the values with the server's own input functions, inserts the trail and moves
the progress row. Only then is the position reported as stored (and the stream confirms it to
the server).
"""

from __future__ import annotations

import datetime
import queue
import threading
from dataclasses import dataclass
from typing import Any

import psycopg

from bemi_pg.ingest.staging import Batch
from bemi_pg.ingest.stream import format_lsn, parse_lsn

STAGED_RELATIONS_COPY = (
    'COPY bemi.staged_relations (relation, relid, schema, "table", columns, types, typmods, identity, '
    'type_names, key_columns, ignore_columns, mask_columns) FROM STDIN')
STAGED_COPY = ("COPY bemi.staged (seq, relation, operation, position, ordinal, transaction_id, committed_at, "
               "context, old_values, old_key_only, new_values, new_missing) FROM STDIN")
STORE = "SELECT bemi.store(%s::pg_lsn, %s::pg_lsn, %s, %s, %s, %s)"
# An LSN past every commit made before the returned time: once that much is stored, the
# trail is complete up to that time (bemi.store's caught_up_at).
WAL_MARK = "SELECT clock_timestamp(), pg_current_wal_insert_lsn()::text"
# Every store leaves its staged rows dead, and every store reads the whole stage: a writer that
# may vacuum the stage (its owner's role, or a superuser) does so after this many rows, instead
# of waiting for autovacuum (a minute at least), during which stores slow down under load.
VACUUM_EVERY = 50_000
MAY_VACUUM = """SELECT bool_and(pg_has_role(c.relowner, 'USAGE')) FROM pg_class c
WHERE c.oid IN ('bemi.staged'::regclass, 'bemi.staged_relations'::regclass)"""
# Without TRUNCATE: giving the empty end of the table back needs a lock that the other
# connection's open transaction holds off for up to five seconds.
VACUUM = "VACUUM (TRUNCATE false) bemi.staged, bemi.staged_relations"


@dataclass
class Stored:
    through: int
    changes: int  # rows inserted into bemi.changes
    wal_end: int  # the server's current WAL position when it stored them
    newest_commit: int | None
    idle: bool = False  # an idle batch: the trail was complete up to ``through`` (caught up)


def stage(conn: psycopg.Connection[Any], batch: Batch) -> None:
    """Opens the batch's transaction and copies its rows into the staging tables."""
    with conn.cursor() as cur:
        if batch.relations:
            with cur.copy(STAGED_RELATIONS_COPY) as copy:
                copy.write(b"".join(batch.relations.values()))
        if batch.rows:
            with cur.copy(STAGED_COPY) as copy:
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

    def __init__(self, conns: list[psycopg.Connection[Any]], stored: int, source: Source | None = None) -> None:
        self.source = source
        self.queue: queue.Queue[Batch | None] = queue.Queue(maxsize=1)  # from the stream
        # Staged batches, waiting for their store (at most one per connection).
        self.staged: queue.Queue[tuple[psycopg.Connection[Any], Batch] | None] = queue.Queue()
        self.free: queue.Queue[psycopg.Connection[Any] | None] = queue.Queue()  # no transaction open
        for conn in conns:
            self.free.put(conn)
        self.stored = stored
        self.results: queue.Queue[Stored] = queue.Queue()
        self.error: BaseException | None = None
        self.mark: tuple[datetime.datetime, int] | None = None  # (time, LSN) from WAL_MARK
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
            while (batch := self.queue.get()) is not None and (conn := self.free.get()) is not None:
                stage(conn, batch)
                self.staged.put((conn, batch))
        except BaseException as error:  # handed to the stream's thread, which stops
            self.error = self.error or error
        finally:
            self.staged.put(None)

    def _store_all(self) -> None:
        try:
            while (item := self.staged.get()) is not None and self.error is None:
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
        caught_up_at = None
        if batch.idle and self.mark is not None and batch.through >= self.mark[1]:
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
        if batch.idle:
            marker = self.source.conn if self.source else conn
            at, lsn = marker.execute(WAL_MARK).fetchone()  # type: ignore[misc]
            if self.source is None:
                conn.commit()
            self.mark = (at, parse_lsn(lsn))

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
