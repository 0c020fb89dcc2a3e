"""pgoutput's framing (python/bemi_pg/ingest/pgoutput.py) and the COPY text the worker stages
(python/bemi_pg/ingest/staging.py), as properties: messages built by an independent encoder parse
back to what was encoded; cut-off messages are refused with ProtocolError, never misread;
any values survive text_array through a real COPY into text[]."""

from __future__ import annotations

import struct
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bemi_pg.ingest import pgoutput
from bemi_pg.ingest.staging import text_array

U64 = st.integers(0, 2**64 - 1)
NAMES = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=12)
VALUES = st.one_of(st.none(), st.just(pgoutput.UNCHANGED), st.binary(max_size=40))
TUPLES = st.lists(VALUES, max_size=8)


def tuple_data(values: pgoutput.Tuple) -> bytes:
    out = struct.pack(">H", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is pgoutput.UNCHANGED:
            out += b"u"
        else:
            assert isinstance(value, bytes)
            out += b"t" + struct.pack(">I", len(value)) + value
    return out


def cstring(text: str) -> bytes:
    return text.encode() + b"\0"


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, pgoutput.Decoded]:
    """A message as the server would send it, and what it says."""
    kind = draw(st.sampled_from("BCORIUDTMY"))
    relid = draw(st.integers(1, 2**32 - 1))
    if kind == "B":
        final, at, xid = draw(U64), draw(st.integers(-2**63, 2**63 - 1)), draw(st.integers(0, 2**32 - 1))
        return b"B" + struct.pack(">QqI", final, at, xid), pgoutput.Begin(final, at, xid)
    if kind == "C":
        commit, end, at = draw(U64), draw(U64), draw(st.integers(-2**63, 2**63 - 1))
        return b"C\0" + struct.pack(">QQq", commit, end, at), pgoutput.Commit(0, commit, end, at)
    if kind == "O":
        lsn, name = draw(U64), draw(NAMES)
        return b"O" + struct.pack(">Q", lsn) + cstring(name), pgoutput.Origin(lsn, name)
    if kind == "R":
        namespace, name = draw(NAMES), draw(NAMES)
        columns = draw(st.lists(st.tuples(NAMES, st.integers(0, 2**32 - 1), st.integers(-1, 2**31 - 1), st.booleans()),
                                max_size=6))
        body = b"".join(bytes([int(key)]) + cstring(c) + struct.pack(">Ii", t, m) for c, t, m, key in columns)
        return (b"R" + struct.pack(">I", relid) + cstring(namespace) + cstring(name) + b"f"
                + struct.pack(">H", len(columns)) + body,
                pgoutput.Relation(relid, namespace, name, "f", tuple(c[0] for c in columns),
                                  tuple(c[1] for c in columns), tuple(c[2] for c in columns),
                                  tuple(c[3] for c in columns)))
    if kind == "I":
        new = draw(TUPLES)
        return b"I" + struct.pack(">I", relid) + b"N" + tuple_data(new), pgoutput.Insert(relid, new)
    if kind == "U":
        old, new, old_kind = draw(st.none() | TUPLES), draw(TUPLES), draw(st.sampled_from(b"KO"))
        head = b"" if old is None else bytes([old_kind]) + tuple_data(old)
        return (b"U" + struct.pack(">I", relid) + head + b"N" + tuple_data(new),
                pgoutput.Update(relid, old, old is not None and old_kind == ord("K"), new))
    if kind == "D":
        old, old_kind = draw(TUPLES), draw(st.sampled_from(b"KO"))
        return (b"D" + struct.pack(">I", relid) + bytes([old_kind]) + tuple_data(old),
                pgoutput.Delete(relid, old, old_kind == ord("K")))
    if kind == "T":
        relids = draw(st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=5))
        return (b"T" + struct.pack(">IB", len(relids), 0) + struct.pack(f">{len(relids)}I", *relids),
                pgoutput.Truncate(0, tuple(relids)))
    if kind == "M":
        transactional, lsn, prefix, content = draw(st.booleans()), draw(U64), draw(NAMES), draw(st.binary(max_size=30))
        return (b"M" + bytes([transactional]) + struct.pack(">Q", lsn) + cstring(prefix)
                + struct.pack(">I", len(content)) + content, pgoutput.Message(transactional, lsn, prefix, content))
    namespace, name = draw(NAMES), draw(NAMES)
    return b"Y" + struct.pack(">I", relid) + cstring(namespace) + cstring(name), pgoutput.Type(relid, namespace, name)


@given(messages())
def test_messages_parse_to_what_was_encoded(message: tuple[bytes, pgoutput.Decoded]) -> None:
    data, expected = message
    assert pgoutput.parse(data) == expected


@given(messages(), st.data())
def test_cut_off_messages_are_refused(message: tuple[bytes, pgoutput.Decoded], data: st.DataObject) -> None:
    raw, _ = message
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(pgoutput.ProtocolError):
        pgoutput.parse(raw[:cut])


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.none() | st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]),
                                             max_size=10), max_size=5), min_size=1, max_size=5))
def test_text_arrays_survive_copy(admin: psycopg.Connection[Any], rows: list[list[str | None]]) -> None:
    admin.execute("CREATE TEMP TABLE IF NOT EXISTS arrays (n integer, v text[])")
    admin.execute("TRUNCATE arrays")
    with admin.cursor().copy("COPY arrays (n, v) FROM STDIN") as copy:
        copy.write(b"".join(b"%d\t%s\n" % (n, text_array([None if v is None else v.encode() for v in row]))
                            for n, row in enumerate(rows)))
    stored = [r["v"] for r in admin.execute("SELECT v FROM arrays ORDER BY n")]
    assert stored == rows
