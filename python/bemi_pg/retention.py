"""Retention: old partitions of the trail archived, dropped and put back.

``bemi-pg prune`` drops whole partitions of ``bemi.changes`` through ``bemi.retain`` (detach,
then drop; never a DELETE), one partition per transaction, oldest first. With an archive
directory each partition is first written there, while a SHARE lock keeps ingest out of it:

- ``<database>.<partition>.copy``: its rows in COPY's binary format (``COPY ... FROM`` reads
  them back, ids included);
- ``<database>.<partition>.json``: the sidecar: bounds, columns and types, row count, size and
  SHA-256 of the ``.copy`` file.

Both are readable by their owner only (0600, in a directory made 0700): they hold the trail's
values. Both are written under a temporary name, fsynced, counted back from disk and only then renamed,
data first: a sidecar under its final name means a complete archive. ``bemi-pg
restore-archive`` checks the file against its sidecar, creates the partition again, copies the
rows in, attaches it and moves the retained horizon back over it when it adjoins.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import mmap
import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import psycopg
from psycopg import sql
from psycopg.rows import dict_row, tuple_row

ARCHIVE_FORMAT = "bemi-archive 1"
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
CHUNK = 1 << 20

DURATION = re.compile(r"^(\d+)(s|m|h|d|w)$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class RetentionError(Exception):
    """Pruning or restoring cannot go ahead; the message says why."""


def parse_duration(text: str) -> datetime.timedelta:
    """A relative duration: 90d, 12h, 2w, 30m, 45s."""
    match = DURATION.match(text)
    if match is None or int(match.group(1)) == 0:
        raise RetentionError(f"--older-than must be a duration above zero such as 90d, 12h or 2w "
                             f"(units s, m, h, d, w), not {text!r}")
    return datetime.timedelta(**{UNITS[match.group(2)]: int(match.group(1))})


@dataclass(frozen=True)
class Sidecar:
    """What the .json file next to an archive says about it."""

    format: str
    database: str
    partition: str  # schema-qualified, as archived
    from_at: str  # ISO 8601, inclusive
    to_at: str  # ISO 8601, exclusive
    rows: int
    bytes: int
    sha256: str
    columns: list[list[str]]  # [name, type] in COPY order
    archived_at: str

    @property
    def table(self) -> str:
        return self.partition.rpartition(".")[2].strip('"')

    @classmethod
    def read(cls, path: Path) -> Sidecar:
        try:
            data = json.loads(path.read_text())
            if data.get("format") != ARCHIVE_FORMAT:
                raise RetentionError(f"{path} is not a bemi archive sidecar (format {data.get('format')!r})")
            return cls(**data)
        except (OSError, ValueError, TypeError) as error:
            raise RetentionError(f"cannot read the archive sidecar {path}: {error}") from error


@dataclass(frozen=True)
class Pruned:
    partition: str
    from_at: datetime.datetime
    to_at: datetime.datetime
    rows: int
    archive: Path | None


# ---------------------------------------------------------------------------------------
# prune

def prune(conn: psycopg.Connection[Any], older_than: datetime.timedelta, archive_dir: Path | None,
          say: Callable[[str], None], lock_timeout: str = "30s") -> list[Pruned]:
    """Drops (after archiving, when archive_dir is given) every partition bemi.retain would drop
    for older_than; one transaction per partition, oldest first. Returns what was dropped."""
    if archive_dir is not None:
        archive_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT partition::text AS partition, from_at, to_at FROM bemi.retainable(%s)", [older_than])
        candidates = cur.fetchall()
        cur.execute("SELECT now() - %s::interval AS cut, bemi.ingested_until() AS until", [older_than])
        bounds = cur.fetchone() or {}
    if not candidates:
        until = bounds.get("until")
        held = f"; ingest has stored every change up to {until} only" if until and until < bounds["cut"] else ""
        say(f"prune: no partition holds only changes older than {bounds.get('cut')}{held}")
        return []
    done = []
    for n, part in enumerate(candidates, 1):
        say(f"prune: [{n}/{len(candidates)}] {part['partition']} ({part['from_at']} to {part['to_at']})")
        done.append(prune_one(conn, part["partition"], part["from_at"], part["to_at"], archive_dir, say, lock_timeout))
    return done


def prune_one(conn: psycopg.Connection[Any], partition: str, from_at: datetime.datetime, to_at: datetime.datetime,
              archive_dir: Path | None, say: Callable[[str], None], lock_timeout: str) -> Pruned:
    relation = sql.SQL(partition)  # regclass text: quoted as needed by the server
    with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        # UTC: now() - (now() - to_at) is to_at exactly, whatever daylight saving does.
        cur.execute("SET LOCAL TimeZone = 'UTC'")
        cur.execute("SELECT set_config('lock_timeout', %s, true)", [lock_timeout])
        # No change can be added to it between the archive and the drop.
        cur.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(relation))
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(relation))
        rows = int((cur.fetchone() or [0])[0])
        archive = None
        if archive_dir is not None:
            archive = write_archive(conn, partition, from_at, to_at, rows, archive_dir)
            say(f"prune:   archived {rows:,} rows to {archive} ({archive.stat().st_size:,} bytes, checked)")
        cur.execute("SELECT partition FROM bemi.retain(now() - %s::timestamptz)", [to_at])
        dropped = [r[0] for r in cur.fetchall()]
        if dropped != [partition]:
            # Rolled back: something changed under us (a partition attached meanwhile).
            raise RetentionError(f"bemi.retain would have dropped {dropped} instead of {partition}; nothing "
                                 "was dropped, run prune again")
    say(f"prune:   dropped {partition} ({rows:,} rows)")
    return Pruned(partition, from_at, to_at, rows, archive)


def archive_paths(archive_dir: Path, database: str, partition: str) -> tuple[Path, Path]:
    stem = f"{database}.{partition.replace('.', '_', 1)}".replace(os.sep, "_").replace('"', "")
    return archive_dir / f"{stem}.copy", archive_dir / f"{stem}.json"


def write_archive(conn: psycopg.Connection[Any], partition: str, from_at: datetime.datetime,
                  to_at: datetime.datetime, rows: int, archive_dir: Path) -> Path:
    """Writes the partition to archive_dir (data and sidecar); returns the data file's path once
    both are complete under their final names."""
    columns = trail_columns(conn)
    data_path, sidecar_path = archive_paths(archive_dir, conn.info.dbname, partition)
    temporary = data_path.with_name(data_path.name + ".tmp")
    digest = hashlib.sha256()
    statement = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT binary)").format(
        sql.SQL(", ").join(sql.Identifier(name) for name, _ in columns), sql.SQL(partition))
    with private(temporary) as out, conn.cursor(row_factory=tuple_row) as cur:
        with cur.copy(statement) as copy:
            for chunk in copy:
                out.write(chunk)
                digest.update(chunk)
        out.flush()
        os.fsync(out.fileno())
        copied = cur.rowcount
    written = Sidecar(format=ARCHIVE_FORMAT, database=conn.info.dbname, partition=partition,
                      from_at=from_at.isoformat(), to_at=to_at.isoformat(), rows=rows,
                      bytes=temporary.stat().st_size, sha256=digest.hexdigest(),
                      columns=[[n, t] for n, t in columns],
                      archived_at=datetime.datetime.now(datetime.timezone.utc).isoformat())
    # Read back from disk: the bytes hash the same and hold as many rows as the partition.
    check_file(temporary, written)
    if copied != rows:
        raise RetentionError(f"COPY wrote {copied} rows of {partition}, which holds {rows}")
    os.replace(temporary, data_path)
    write_durably(sidecar_path, json.dumps(asdict(written), indent=2).encode() + b"\n")
    return data_path


def private(path: Path) -> BinaryIO:
    """A new file (or one emptied) open for writing, readable and writable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


def write_durably(path: Path, content: bytes) -> None:
    """Writes a file under a temporary name, fsyncs it, renames it, fsyncs the directory."""
    temporary = path.with_name(path.name + ".tmp")
    with private(temporary) as out:
        out.write(content)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def trail_columns(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """The columns of bemi.changes in order, with their types."""
    return [(r[0], r[1]) for r in conn.cursor(row_factory=tuple_row).execute(
        "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'bemi.changes'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum")]


def check_file(path: Path, sidecar: Sidecar) -> None:
    """The file is the one the sidecar describes: its size, its hash and its row count."""
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        for chunk in iter(lambda: data.read(CHUNK), b""):
            digest.update(chunk)
    if path.stat().st_size != sidecar.bytes or digest.hexdigest() != sidecar.sha256:
        raise RetentionError(f"{path} does not match its sidecar: {path.stat().st_size} bytes, SHA-256 "
                             f"{digest.hexdigest()} (expected {sidecar.bytes} bytes, {sidecar.sha256})")
    counted = count_copy_rows(path)
    if counted != sidecar.rows:
        raise RetentionError(f"{path} holds {counted} rows, its sidecar says {sidecar.rows}")


def count_copy_rows(path: Path) -> int:
    """The rows in a file of COPY's binary format (header, tuples, trailer), read to its end."""
    int16, int32 = struct.Struct(">h").unpack_from, struct.Struct(">i").unpack_from
    with open(path, "rb") as data:
        if os.fstat(data.fileno()).st_size < len(COPY_SIGNATURE) + 10:
            raise RetentionError(f"{path} is not a file of COPY's binary format")
        with mmap.mmap(data.fileno(), 0, access=mmap.ACCESS_READ) as file:
            if file[:len(COPY_SIGNATURE)] != COPY_SIGNATURE:
                raise RetentionError(f"{path} is not a file of COPY's binary format")
            at = len(COPY_SIGNATURE) + 8 + int32(file, len(COPY_SIGNATURE) + 4)[0]  # flags, header extension
            rows = 0
            try:
                while (fields := int16(file, at)[0]) != -1:
                    at += 2
                    for _ in range(fields):
                        length = int32(file, at)[0]
                        at += 4 + max(length, 0)
                    rows += 1
            except struct.error as error:
                raise RetentionError(f"{path} ends in the middle of a row") from error
            if at + 2 != len(file):
                raise RetentionError(f"{path} has data after the end of its COPY")
    return rows


# ---------------------------------------------------------------------------------------
# restore-archive

def restore(conn: psycopg.Connection[Any], path: Path, say: Callable[[str], None]) -> Sidecar:
    """Puts one archived partition back (ids kept) and moves the retained horizon back over it
    when it adjoins. Refuses when a partition holds part of its range already."""
    data_path, sidecar_path = (path.with_suffix(".copy"), path) if path.suffix == ".json" else \
        (path, path.with_suffix(".json"))
    sidecar = Sidecar.read(sidecar_path)
    check_file(data_path, sidecar)
    columns = trail_columns(conn)
    missing = [f"{n} {t}" for n, t in sidecar.columns if [n, t] not in [[c, u] for c, u in columns]]
    if missing:
        raise RetentionError(f"bemi.changes has no columns {', '.join(missing)} of the archive (in those types)")
    table = sql.Identifier("bemi", sidecar.table)
    with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        cur.execute("SET LOCAL TimeZone = 'UTC'")
        cur.execute("SELECT partition::text FROM bemi.partitions WHERE from_at < %s AND to_at > %s ORDER BY from_at",
                    [sidecar.to_at, sidecar.from_at])
        overlapping = [r[0] for r in cur.fetchall()]
        if overlapping:
            raise RetentionError(f"{', '.join(overlapping)} already holds changes of {sidecar.from_at} to "
                                 f"{sidecar.to_at}: refusing to restore over it")
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", [f'bemi."{sidecar.table}"'])
        if (cur.fetchone() or [False])[0]:
            raise RetentionError(f"a table bemi.{sidecar.table} exists already: rename or drop it first")
        cur.execute(sql.SQL("CREATE TABLE {} (LIKE bemi.changes INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(table))
        with open(data_path, "rb") as data, cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
                table, sql.SQL(", ").join(sql.Identifier(n) for n, _ in sidecar.columns))) as copy:
            for chunk in iter(lambda: data.read(CHUNK), b""):
                copy.write(chunk)
        if cur.rowcount != sidecar.rows:
            raise RetentionError(f"restored {cur.rowcount} rows, the archive holds {sidecar.rows}")
        # A valid CHECK of the bounds lets ATTACH skip scanning the rows.
        cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT restored_bounds CHECK (committed_at >= {} AND committed_at < {})")
                    .format(table, sql.Literal(sidecar.from_at), sql.Literal(sidecar.to_at)))
        cur.execute(sql.SQL("ALTER TABLE bemi.changes ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
            table, sql.Literal(sidecar.from_at), sql.Literal(sidecar.to_at)))
        cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT restored_bounds").format(table))
        # From 1.2 on, a partition's keys and indexes are its own (docs/backup.md).
        cur.execute("SELECT to_regprocedure('bemi.index_partition(regclass)') IS NOT NULL")
        if (cur.fetchone() or [False])[0]:
            cur.execute(sql.SQL("SELECT bemi.index_partition({}::regclass)").format(sql.Literal(f'bemi."{sidecar.table}"')))
        cur.execute(WIDEN_HORIZON)
        horizon = cur.fetchone()
    say(f"restore-archive: restored {sidecar.rows:,} rows of {sidecar.from_at} to {sidecar.to_at} into "
        f"bemi.{sidecar.table}; the trail now holds every change from "
        f"{horizon[0] if horizon and horizon[0] else 'its start'}")
    return sidecar


# The horizon moves back over every partition that now adjoins it, one after another.
WIDEN_HORIZON = """
WITH RECURSIVE back(at) AS (
  SELECT retained_from FROM bemi.retention
  UNION
  SELECT p.from_at FROM back b JOIN bemi.partitions p ON p.to_at = b.at AND p.from_at < b.at
)
UPDATE bemi.retention SET retained_from = (SELECT min(at) FROM back)
RETURNING retained_from
"""


def archives(archive_dir: Path) -> Iterator[Path]:
    """The complete archives under a directory (those with a sidecar), oldest first."""
    sidecars = sorted(archive_dir.glob("*.json"), key=lambda p: Sidecar.read(p).from_at)
    yield from (p.with_suffix(".copy") for p in sidecars)
