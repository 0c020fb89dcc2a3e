"""Staging: the messages of the replication stream become rows for bemi.staged and
bemi.staged_relations, in COPY text format (values still text, as the server sent them), a
batch at a time. The Stager keeps the relations the stream described, the open transaction
(its context and ordinals) and the batch being built; bemi_pg.ingest.writer stores each batch.

A transaction larger than a batch is stored in parts: each part records the transaction's
commit LSN and how many of its changes are stored, so a restart skips exactly those.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional, cast

import psycopg

from bemi_pg.ingest import pgoutput
from bemi_pg.ingest.stream import format_lsn

POSTGRES_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)

# What a trail in another database needs to know of a relation, asked of the source database.
DESCRIBE = "SELECT type_names, key_columns, ignore_columns, mask_columns FROM bemi.describe_relation(%s, %s, %s, %s::pg_lsn)"
LOCAL = b"\\N\t\\N\t\\N\t\\N"  # the relation is described by this database's own catalog


# ---------------------------------------------------------------------------------------
# COPY text format: arrays of text, escaped for an array literal and then for COPY.

def copy_escape(value: bytes) -> bytes:
    if b"\\" in value or b"\n" in value or b"\r" in value or b"\t" in value:
        return (value.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
                .replace(b"\t", b"\\t"))
    return value


def _element(value: bytes | None) -> bytes:
    if value is None:
        return b"NULL"
    if b'"' in value or b"\\" in value:
        value = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + value + b'"'


def text_array(values: list[bytes | None]) -> bytes:
    """A COPY field holding ``values`` as a text[] literal (NULL elements for None)."""
    if not values:
        return b"{}"
    if None not in values:
        joined = b'","'.join(values)  # type: ignore[arg-type]
        if b"\\" not in joined and joined.count(b'"') == 2 * (len(values) - 1):  # the fast path
            return copy_escape(b'{"' + joined + b'"}')
    return copy_escape(b"{" + b",".join([_element(v) for v in values]) + b"}")


def number_array(values: list[int]) -> bytes:
    return b"{" + b",".join(b"%d" % v for v in values) + b"}"


def timestamp(us_since_2000: int) -> bytes:
    return (POSTGRES_EPOCH + datetime.timedelta(microseconds=us_since_2000)).isoformat().encode()


def relation_row(number: int, relation: pgoutput.Relation, described: bytes = LOCAL) -> bytes:
    columns = text_array([c.encode() for c in relation.columns])
    return b"%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" % (
        number, relation.relid, copy_escape(relation.namespace.encode()), copy_escape(relation.name.encode()),
        columns, number_array(list(relation.types)), number_array(list(relation.typmods)),
        b"{" + b",".join(b"t" if i else b"f" for i in relation.identity) + b"}", described)


def describe(source: psycopg.Connection[Any], relation: pgoutput.Relation, position: int) -> bytes:
    """The COPY fields type_names, key_columns, ignore_columns, mask_columns of a relation,
    from the source database, for a trail in another database (bemi.describe_relation)."""
    row = source.execute(DESCRIBE, [relation.relid, list(relation.types), list(relation.typmods),
                                    format_lsn(position)]).fetchone()
    assert row is not None
    return b"\t".join(b"\\N" if v is None else text_array([x.encode() for x in v]) for v in row)


# ---------------------------------------------------------------------------------------
# Batches: what one bemi.store call stores.

@dataclass
class Batch:
    through: int  # the end of the last transaction all of whose changes are stored with this batch
    relations: dict[int, bytes] = field(default_factory=dict)  # relation number -> staged_relations row
    rows: list[bytes] = field(default_factory=list)  # staged rows, in seq order
    part_of: int | None = None  # a transaction stored in parts: its commit LSN
    part_stored: int = 0  # ...and how many of its changes are stored with this batch
    newest_commit: int | None = None  # microseconds since 2000-01-01
    idle: bool = False  # nothing pending: also record how current the trail is (caught_up_at)


@dataclass
class _Transaction:
    xid: int
    final_lsn: int
    commit_time: int
    fields: bytes  # the COPY fields transaction_id, committed_at, context of its next change
    skip: int  # changes already stored by an earlier run (a transaction stored in parts)
    count: int = 0  # changes seen so far, stored or skipped
    position: int = -1
    ordinal: int = 0


@dataclass
class _Shape:
    number: int
    relation: pgoutput.Relation
    row: bytes


class Stager:
    """Turns the messages of the stream into staged rows. Keeps the relations the stream
    described, the open transaction (its context and ordinals) and the batch being built."""

    def __init__(self, start: int, part_of: int | None = None, part_stored: int = 0,
                 described: Callable[[pgoutput.Relation, int], bytes] | None = None) -> None:
        self.received_end = start  # everything before this is in a batch (or was stored)
        self.described = described  # for a trail in another database: what the source says of a relation
        self.resume = (part_of, part_stored)
        self.shapes: dict[int, _Shape] = {}
        self.next_shape = 1
        self.transaction: _Transaction | None = None
        self.batch = Batch(start)
        self.seq = 0

    @property
    def in_transaction(self) -> bool:
        return self.transaction is not None

    def add(self, position: int, message: pgoutput.Decoded) -> None:
        """One message of the stream, at its WAL position (XLogData dataStart)."""
        kind = type(message)
        if kind is pgoutput.Insert:
            self._change(position, b"I", message.relid, None, False, message.new)  # type: ignore[union-attr]
        elif kind is pgoutput.Update:
            if message.old is None:  # type: ignore[union-attr]
                # No old tuple (not REPLICA IDENTITY FULL, key unchanged): the key is in the new
                # tuple, so it stands as the old image, key only (the ingest contract).
                self._change(position, b"U", message.relid, message.new, True, message.new)  # type: ignore[union-attr]
            else:
                self._change(position, b"U", message.relid, message.old, message.old_key_only,  # type: ignore[union-attr]
                             message.new)  # type: ignore[union-attr]
        elif kind is pgoutput.Delete:
            self._change(position, b"D", message.relid, message.old, message.old_key_only, None)  # type: ignore[union-attr]
        elif kind is pgoutput.Begin:
            self._begin(message)  # type: ignore[arg-type]
        elif kind is pgoutput.Commit:
            self._commit(message)  # type: ignore[arg-type]
        elif kind is pgoutput.Relation:
            self._relation(position, message)  # type: ignore[arg-type]
        elif kind is pgoutput.Message:
            self._message(message)  # type: ignore[arg-type]
        elif kind is pgoutput.Truncate:
            for relid in message.relids:  # type: ignore[union-attr]
                self._change(position, b"T", relid, None, False, None)
        # Origin and Type messages carry nothing the trail needs.

    def keepalive(self, end: int) -> None:
        """The server has sent everything before ``end``."""
        if self.transaction is None:
            self.received_end = max(self.received_end, end)

    def _begin(self, begin: pgoutput.Begin) -> None:
        part_of, part_stored = self.resume
        skip = part_stored if begin.final_lsn == part_of else 0
        self.transaction = _Transaction(begin.xid, begin.final_lsn, begin.commit_time,
                                        b"%d\t%s\t\\N" % (begin.xid, timestamp(begin.commit_time)), skip)

    def _commit(self, commit: pgoutput.Commit) -> None:
        transaction = self.transaction
        if transaction is not None:
            self.batch.newest_commit = transaction.commit_time
        self.transaction = None
        self.received_end = max(self.received_end, commit.end_lsn)
        self.batch.through = self.received_end
        self.batch.part_of, self.batch.part_stored = None, 0

    def _relation(self, position: int, relation: pgoutput.Relation) -> None:
        number = self.next_shape
        self.next_shape += 1
        described = LOCAL if self.described is None else self.described(relation, position)
        self.shapes[relation.relid] = _Shape(number, relation, relation_row(number, relation, described))

    def _message(self, message: pgoutput.Message) -> None:
        transaction = self.transaction
        if transaction is None or not message.transactional or message.prefix != "bemi":
            return
        transaction.fields = b"%d\t%s\t%s" % (transaction.xid, timestamp(transaction.commit_time),
                                              copy_escape(message_text(message.content)))

    def _change(self, position: int, operation: bytes, relid: int, old: pgoutput.Tuple | None,
                old_key_only: bool, new: pgoutput.Tuple | None) -> None:
        transaction = self.transaction
        if transaction is None:
            raise pgoutput.ProtocolError("a change outside a transaction")
        if position == transaction.position:
            transaction.ordinal += 1
        else:
            transaction.position, transaction.ordinal = position, 1
        transaction.count += 1
        if transaction.count <= transaction.skip:  # stored by an earlier run
            return
        try:
            shape = self.shapes[relid]
        except KeyError:
            raise pgoutput.ProtocolError(f"a change to relation {relid} before its Relation message") from None
        batch = self.batch
        batch.relations.setdefault(shape.number, shape.row)
        self.seq += 1
        batch.rows.append(b"%d\t%d\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n" % (
            self.seq, shape.number, operation, format_lsn(position).encode(), transaction.ordinal,
            transaction.fields, *image_fields(old, old_key_only, new, shape.relation.identity)))
        batch.part_of, batch.part_stored = transaction.final_lsn, transaction.count

    def take(self, idle: bool = False) -> Batch:
        """The batch built so far (a part of the open transaction, if one is open); starts the next."""
        batch, self.batch = self.batch, Batch(self.received_end)
        batch.idle = idle
        if self.transaction is None:
            batch.through = self.received_end
        return batch


def message_text(content: bytes) -> bytes:
    """A bemi message's content as text, as bemi.message_text has it: content that is not
    text (invalid UTF-8, a NUL byte: a message no bemi trigger wrote) is kept as its hex form
    ("\\x..."), which is not JSON, so it is stored as {"invalid_context": ...}."""
    try:
        if b"\0" not in content:
            content.decode("utf-8")
            return content
    except UnicodeDecodeError:
        pass
    return b"\\x" + content.hex().encode()


def image_fields(old: pgoutput.Tuple | None, old_key_only: bool, new: pgoutput.Tuple | None,
                 identity: tuple[bool, ...]) -> tuple[bytes, bytes, bytes, bytes]:
    """The COPY fields old_values, old_key_only, new_values, new_missing of a change."""
    old_field = new_field = missing = b"\\N"
    if new is not None:
        if pgoutput.UNCHANGED in new:
            filled, missing = fill_unchanged(new, old, old_key_only, identity)
            new_field = text_array(filled)
        else:
            new_field = text_array(cast(list[Optional[bytes]], new))
    if old is not None:
        if pgoutput.UNCHANGED in old:  # the key columns of an UPDATE without old tuple (see add)
            old = [None if v is pgoutput.UNCHANGED else v for v in old]
        old_field = text_array(cast(list[Optional[bytes]], old))
    return old_field, b"t" if old_key_only else b"f", new_field, missing


def fill_unchanged(new: pgoutput.Tuple, old: pgoutput.Tuple | None, old_key_only: bool,
                   identity: tuple[bool, ...]) -> tuple[list[bytes | None], bytes]:
    """New values with unchanged TOASTed ones taken from the old tuple where it has them; and
    the COPY field listing the (1-based) columns that could not be filled."""
    filled: list[bytes | None] = []
    missing: list[int] = []
    for i, value in enumerate(new):
        if value is pgoutput.UNCHANGED:
            known = old is not None and i < len(old) and old[i] is not pgoutput.UNCHANGED \
                and (not old_key_only or identity[i])
            value = old[i] if known else None  # type: ignore[index]
            if not known:
                missing.append(i + 1)
        filled.append(cast(Optional[bytes], value))
    return filled, number_array(missing) if missing else b"\\N"
