"""The replication stream: a logical slot read over the streaming replication protocol, and
the feedback that tells the server how far the trail is stored.

psycopg 3 has no replication API, but a replication connection accepts START_REPLICATION
and enters COPY_BOTH mode, which the libpq-level ``conn.pgconn`` drives directly: CopyData
messages in (XLogData 'w', keepalive 'k'), Standby Status Updates ('r') out. The position
confirmed is only ever what the caller says is stored (see writer.py): feedback never runs
ahead of the progress row.

A server shutting down (fast or smart) sends what WAL is left, then waits until the client
has confirmed all it was sent before it ends the stream (CopyDone) and exits: the worker
confirms it as soon as it has stored it (worker.py), and StreamEnded tells it to reconnect.
"""

from __future__ import annotations

import os
import select
import struct
import time
from dataclasses import dataclass
from typing import Any, Union

import psycopg
from psycopg import errors, pq

# Every reader of the slot decodes values with these settings, exactly those bemi.stage_from_slot
# pins (the ingest contract, docs/ingest.md): the text of dates, intervals, floats, bytea, times
# with time zone, money, and of regclass/regtype values (names qualified unless in pg_catalog).
DECODING_OPTIONS = ("-c datestyle=ISO,YMD -c intervalstyle=postgres -c extra_float_digits=3 -c bytea_output=hex "
                    "-c timezone=UTC -c lc_monetary=C -c search_path=pg_catalog,pg_temp")
# And every session of the worker pins these, so that no setting of the database or the role
# can change what it stages or stop it: array_nulls (staged values are text[] literals, whose
# NULL elements would otherwise be read as the string "NULL"); no timeouts; no JIT: bemi.store
# builds one query with a branch per relation of the batch, and when the planner's estimate of
# the stage passes jit_above_cost, compiling it takes far longer than running it (storing a
# 1,000-table TRUNCATE: 29 s and 47 s with JIT, 2 s without).
SESSION_OPTIONS = ("-c array_nulls=on -c statement_timeout=0 -c lock_timeout=0 "
                   "-c idle_in_transaction_session_timeout=0 -c idle_session_timeout=0 -c jit=off")
PGOUTPUT_OPTIONS = "proto_version '1', publication_names 'bemi', messages 'true'"

POSTGRES_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in microseconds since the Unix epoch

_XLOG_HEADER = struct.Struct(">QQq")
_KEEPALIVE = struct.Struct(">QqB")
_STATUS_UPDATE = struct.Struct(">cQQQqB")


@dataclass(frozen=True, slots=True)
class XLogData:
    start: int  # the WAL position of the change (dataStart)
    end: int  # walEnd
    time: int  # server clock, microseconds since 2000-01-01
    payload: bytes  # one pgoutput message


@dataclass(frozen=True, slots=True)
class Keepalive:
    end: int  # everything before this position has been sent
    time: int
    reply_requested: bool


Received = Union[XLogData, Keepalive]


class StreamEnded(psycopg.OperationalError):
    """The server ended the stream without an error: it is shutting down (or the walsender was
    stopped). Reconnecting later resumes from the progress row."""


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def now_us() -> int:
    """Now, in the protocol's clock: microseconds since 2000-01-01 UTC."""
    return time.time_ns() // 1000 - POSTGRES_EPOCH_US


def session_options(dsn: str) -> str:
    """The connection's own options (from the DSN or PGOPTIONS), then the decoding and session
    settings (given last, they win; options in the startup packet win over the database's and
    the role's settings)."""
    own = psycopg.conninfo.conninfo_to_dict(dsn).get("options") or os.environ.get("PGOPTIONS", "")
    return f"{own} {DECODING_OPTIONS} {SESSION_OPTIONS}".strip()


def stream_encoding(server_encoding: str) -> str:
    """The encoding the stream is read in, and its values staged in: UTF8, except in an
    SQL_ASCII database, whose bytes have no encoding to convert from (and which PostgreSQL
    would check as UTF8 before sending them)."""
    return "SQL_ASCII" if server_encoding == "SQL_ASCII" else "UTF8"


# TCP keepalives: a server that vanishes without closing the connection (a failover, a
# network partition) is noticed within about a minute, not after the system's two hours.
KEEPALIVES = {"keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10", "keepalives_count": "3"}


def keepalives(dsn: str) -> dict[str, Any]:
    """KEEPALIVES, except what the DSN sets itself."""
    own = psycopg.conninfo.conninfo_to_dict(dsn)
    return {name: value for name, value in KEEPALIVES.items() if name not in own}


def parse_copy_data(data: bytes) -> Received:
    """One CopyData message of a logical replication stream."""
    kind = data[0]
    if kind == 0x77:  # 'w'
        start, end, clock = _XLOG_HEADER.unpack_from(data, 1)
        return XLogData(start, end, clock, data[25:])
    if kind == 0x6B:  # 'k'
        end, clock, reply = _KEEPALIVE.unpack_from(data, 1)
        return Keepalive(end, clock, bool(reply))
    raise psycopg.OperationalError(f"unexpected replication message {data[:1]!r}")


def status_update(lsn: int, reply_requested: bool = False) -> bytes:
    """A Standby Status Update: written, flushed and applied all up to ``lsn`` (what is stored)."""
    return _STATUS_UPDATE.pack(b"r", lsn, lsn, lsn, now_us(), int(reply_requested))


class ReplicationStream:
    """START_REPLICATION of a slot from an LSN, read message by message."""

    def __init__(self, dsn: str, slot: str, start: int, *, connect_timeout: int = 10,
                 encoding: str = "UTF8") -> None:
        self.conn = psycopg.connect(
            dsn, replication="database", autocommit=True, options=session_options(dsn),
            client_encoding=encoding, application_name="bemi-pg stream", connect_timeout=connect_timeout,
            **keepalives(dsn))
        self.pgconn = self.conn.pgconn
        self.confirmed = start
        quoted = pq.Escaping(self.pgconn).escape_identifier(slot.encode()).decode()
        self.pgconn.send_query(
            f"START_REPLICATION SLOT {quoted} LOGICAL {format_lsn(start)} ({PGOUTPUT_OPTIONS})".encode())
        self._wait_readable_until_result()
        result = self.pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            self.close()
            raise self._error(result)
        self.socket = self.pgconn.socket

    def _wait_readable_until_result(self) -> None:
        while True:
            self.pgconn.consume_input()
            if not self.pgconn.is_busy():
                return
            select.select([self.pgconn.socket], [], [], 1.0)

    def _error(self, result: Any) -> psycopg.Error:
        if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
            return errors.error_from_result(result, encoding="utf-8")
        message = str(self.pgconn.get_error_message()).strip()
        return psycopg.OperationalError(message or "the replication stream ended")

    def read(self, timeout: float) -> Received | None:
        """The next message, or None when nothing arrived within ``timeout`` seconds."""
        pgconn = self.pgconn
        nbytes, data = pgconn.get_copy_data(1)
        if nbytes == 0:
            deadline = time.monotonic() + timeout
            while nbytes == 0:
                readable, _, _ = select.select([self.socket], [], [], max(0.0, deadline - time.monotonic()))
                if not readable:
                    return None
                pgconn.consume_input()
                nbytes, data = pgconn.get_copy_data(1)
        if nbytes == -1:  # the server ended the stream (shutdown, or an error)
            result = pgconn.get_result()
            if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
                raise self._error(result)
            raise StreamEnded("the server ended the replication stream (shutting down)")
        return parse_copy_data(bytes(data))

    def confirm(self, lsn: int, reply_requested: bool = False) -> None:
        """Tells the server that everything before ``lsn`` is stored (never further)."""
        self.confirmed = max(self.confirmed, lsn)
        self.pgconn.put_copy_data(status_update(self.confirmed, reply_requested))
        self.pgconn.flush()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ReplicationStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
