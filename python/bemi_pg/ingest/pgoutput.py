"""pgoutput, protocol version 1: the logical replication messages a walsender sends (and
``pg_logical_slot_peek_binary_changes`` returns), parsed from bytes. No I/O.

Only the framing is parsed: column values stay the text bytes the server sent (its output
functions, in the decoding session's settings), to be converted by the server again on the
way into ``bemi.changes``. Message layouts: "Logical Replication Message Formats" in the
PostgreSQL documentation. This is the per-change hot path of the worker: plain functions,
precompiled ``struct`` formats, one pass over each message.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from collections.abc import Callable
from typing import Final, Union


class Unchanged:
    """An unchanged TOASTed value ('u'): the server did not send it again."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged()

# A column's value: its text bytes, None for NULL, UNCHANGED for an unchanged TOASTed value.
Value = Union[bytes, None, Unchanged]
Tuple = list[Value]


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int  # the commit record's LSN
    commit_time: int  # microseconds since 2000-01-01 UTC
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int  # the end of the commit record: a restart from here skips this transaction
    commit_time: int


@dataclass(frozen=True, slots=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Relation:
    relid: int
    namespace: str
    name: str
    replica_identity: str  # 'd', 'n', 'f' or 'i'
    columns: tuple[str, ...]
    types: tuple[int, ...]
    typmods: tuple[int, ...]
    identity: tuple[bool, ...]  # column flag 1: part of the replica identity key


@dataclass(frozen=True, slots=True)
class Type:
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relid: int
    new: Tuple


@dataclass(frozen=True, slots=True)
class Update:
    relid: int
    old: Tuple | None  # 'O' (the whole old row) or 'K' (the key), or None when not sent
    old_key_only: bool  # the old tuple was 'K'
    new: Tuple


@dataclass(frozen=True, slots=True)
class Delete:
    relid: int
    old: Tuple
    old_key_only: bool


@dataclass(frozen=True, slots=True)
class Truncate:
    options: int  # 1: CASCADE, 2: RESTART IDENTITY
    relids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Message:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Decoded = Union[Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate, Message]


class ProtocolError(ValueError):
    """Bytes that are not a pgoutput protocol 1 message."""


_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">BQQq")
_U64 = struct.Struct(">Q")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_RELATION_HEAD = struct.Struct(">I")
_COLUMN_TAIL = struct.Struct(">Ii")
_TRUNCATE_HEAD = struct.Struct(">IB")
_MESSAGE_HEAD = struct.Struct(">BQ")


def _string(data: bytes, offset: int) -> tuple[str, int]:
    """A NUL-terminated string at offset, and the offset after it. Bytes that are not UTF-8 (an
    SQL_ASCII database's names) are kept as they are: ``encode("utf-8", "surrogateescape")``
    gives them back."""
    end = data.index(b"\0", offset)
    return data[offset:end].decode("utf-8", "surrogateescape"), end + 1


def parse_tuple(data: bytes, offset: int) -> tuple[Tuple, int]:
    """TupleData at offset: the values, and the offset after them."""
    unpack_i32 = _I32.unpack_from
    (count,) = _U16.unpack_from(data, offset)
    offset += 2
    values: Tuple = []
    append = values.append
    for _ in range(count):
        kind = data[offset]
        if kind == 0x74:  # 't': text
            (length,) = unpack_i32(data, offset + 1)
            offset += 5
            append(data[offset:offset + length])
            offset += length
        elif kind == 0x6E:  # 'n': NULL
            append(None)
            offset += 1
        elif kind == 0x75:  # 'u': unchanged TOASTed value
            append(UNCHANGED)
            offset += 1
        else:
            raise ProtocolError(f"unexpected tuple value kind {chr(kind)!r} (binary mode is not used)")
    if offset > len(data):  # a value cut off (slicing past the end does not fail by itself)
        raise ProtocolError("a tuple value runs past the end of the message")
    return values, offset


def _begin(data: bytes) -> Begin:
    final_lsn, commit_time, xid = _BEGIN.unpack_from(data, 1)
    return Begin(final_lsn, commit_time, xid)


def _commit(data: bytes) -> Commit:
    flags, commit_lsn, end_lsn, commit_time = _COMMIT.unpack_from(data, 1)
    return Commit(flags, commit_lsn, end_lsn, commit_time)


def _origin(data: bytes) -> Origin:
    (lsn,) = _U64.unpack_from(data, 1)
    name, _ = _string(data, 9)
    return Origin(lsn, name)


def _relation(data: bytes) -> Relation:
    (relid,) = _RELATION_HEAD.unpack_from(data, 1)
    namespace, offset = _string(data, 5)
    name, offset = _string(data, offset)
    replica_identity = chr(data[offset])
    (count,) = _U16.unpack_from(data, offset + 1)
    offset += 3
    columns, types, typmods, identity = [], [], [], []
    for _ in range(count):
        flags = data[offset]
        column, offset = _string(data, offset + 1)
        type_oid, typmod = _COLUMN_TAIL.unpack_from(data, offset)
        offset += 8
        columns.append(column)
        types.append(type_oid)
        typmods.append(typmod)
        identity.append(bool(flags & 1))
    return Relation(relid, namespace, name, replica_identity, tuple(columns), tuple(types), tuple(typmods),
                    tuple(identity))


def _type(data: bytes) -> Type:
    (oid,) = _U32.unpack_from(data, 1)
    namespace, offset = _string(data, 5)
    name, _ = _string(data, offset)
    return Type(oid, namespace, name)


def _insert(data: bytes) -> Insert:
    (relid,) = _U32.unpack_from(data, 1)
    if data[5] != 0x4E:  # 'N'
        raise ProtocolError("Insert without a new tuple")
    new, _ = parse_tuple(data, 6)
    return Insert(relid, new)


def _update(data: bytes) -> Update:
    (relid,) = _U32.unpack_from(data, 1)
    kind = data[5]
    old: Tuple | None = None
    offset = 6
    if kind == 0x4B or kind == 0x4F:  # 'K' or 'O'
        old, offset = parse_tuple(data, 6)
        kind = data[offset]
        offset += 1
    if kind != 0x4E:
        raise ProtocolError("Update without a new tuple")
    new, _ = parse_tuple(data, offset)
    return Update(relid, old, data[5] == 0x4B, new)


def _delete(data: bytes) -> Delete:
    (relid,) = _U32.unpack_from(data, 1)
    kind = data[5]
    if kind != 0x4B and kind != 0x4F:
        raise ProtocolError("Delete without an old tuple")
    old, _ = parse_tuple(data, 6)
    return Delete(relid, old, kind == 0x4B)


def _truncate(data: bytes) -> Truncate:
    count, options = _TRUNCATE_HEAD.unpack_from(data, 1)
    relids = struct.unpack_from(f">{count}I", data, 6)
    return Truncate(options, relids)


def _message(data: bytes) -> Message:
    flags, lsn = _MESSAGE_HEAD.unpack_from(data, 1)
    prefix, offset = _string(data, 10)
    (length,) = _U32.unpack_from(data, offset)
    offset += 4
    if offset + length > len(data):
        raise ProtocolError("a message's content runs past its end")
    return Message(bool(flags & 1), lsn, prefix, data[offset:offset + length])


_PARSERS: dict[int, Callable[[bytes], Decoded]] = {
    ord("B"): _begin, ord("C"): _commit, ord("O"): _origin, ord("R"): _relation, ord("Y"): _type,
    ord("I"): _insert, ord("U"): _update, ord("D"): _delete, ord("T"): _truncate, ord("M"): _message,
}


def parse(data: bytes) -> Decoded:
    """One pgoutput message (a whole XLogData payload, or one binary peek row's data)."""
    try:
        parser = _PARSERS[data[0]]
    except (KeyError, IndexError):
        raise ProtocolError(f"unknown pgoutput message {data[:1]!r}") from None
    try:
        return parser(data)
    except (struct.error, IndexError, ValueError) as error:
        if isinstance(error, ProtocolError):
            raise
        raise ProtocolError(f"truncated or malformed pgoutput message {data[:1]!r}: {error}") from error
