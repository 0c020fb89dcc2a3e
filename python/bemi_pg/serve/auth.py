"""Who is looking: signing in with a PostgreSQL role and password, or with the read-only token;
the connections each viewer's queries run on; CSRF tokens.

A signed-in person's queries run on connections made with their own role and password (held in
this process's memory only, never in the cookie), so the database decides what they may read
and revert. A token viewer's queries run on the server's connection (--dsn), in read-only
transactions, as --token-role when given (SET LOCAL ROLE); token viewing is refused where that
would read as a superuser. The cookie is signed (Starlette's SessionMiddleware, itsdangerous)
and holds a session id and a CSRF token only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

APPLICATION_NAME = "bemi-pg serve"
IDLE_CONNECTIONS = 2  # per viewer, kept open between requests


class SignInRefused(Exception):
    """Signing in did not prove who the person is: shown on the sign-in page."""


@dataclass(frozen=True)
class Viewer:
    """Whose privileges a request's queries run with. conninfo: how to connect (a signed-in
    person's includes their password); role: SET LOCAL ROLE first (token viewers); may_write:
    signed in with a role, so reverting is possible (with --allow-revert)."""

    name: str
    conninfo: str
    role: str | None
    may_write: bool


class Connections:
    """A viewer's connections: one per request at a time, a few kept open between requests."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.idle: list[psycopg.Connection[dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.closed = False

    def connect(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self.conninfo, row_factory=dict_row, application_name=APPLICATION_NAME)

    @contextmanager
    def borrow(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        with self.lock:
            conn = self.idle.pop() if self.idle else None
        if conn is None or conn.broken or conn.closed:  # a server restart ends idle connections
            conn = self.connect()
        try:
            yield conn
        finally:
            healthy = not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            with self.lock:
                keep = healthy and not self.closed and len(self.idle) < IDLE_CONNECTIONS
                if keep:
                    self.idle.append(conn)
            if not keep:
                conn.close()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()


@dataclass
class Session:
    viewer: Viewer
    connections: Connections
    seen: float = field(default_factory=time.monotonic)


class Sessions:
    """Signed-in people by session id (the id is in the signed cookie; the rest stays here).
    A session unused for idle_seconds ends, and its connections close."""

    def __init__(self, idle_seconds: float) -> None:
        self.idle_seconds = idle_seconds
        self.by_id: dict[str, Session] = {}
        self.lock = threading.Lock()

    def start(self, viewer: Viewer) -> str:
        sid = secrets.token_urlsafe(32)
        with self.lock:
            self.by_id[sid] = Session(viewer, Connections(viewer.conninfo))
        return sid

    def get(self, sid: str | None) -> Session | None:
        now = time.monotonic()
        with self.lock:
            expired = [key for key, s in self.by_id.items() if now - s.seen > self.idle_seconds]
            ended = [self.by_id.pop(key) for key in expired]
            session = self.by_id.get(sid) if sid else None
            if session is not None:
                session.seen = now
        for s in ended:
            s.connections.close()
        return session

    def end(self, sid: str | None) -> None:
        with self.lock:
            session = self.by_id.pop(sid, None) if sid else None
        if session is not None:
            session.connections.close()

    def close(self) -> None:
        with self.lock:
            ended, self.by_id = list(self.by_id.values()), {}
        for s in ended:
            s.connections.close()


def sign_in(base_conninfo: str, role: str, password: str) -> Viewer:
    """A viewer with the role's own privileges, once the server has checked its password.
    Refused when the server did not ask for one (trust or peer authentication: nothing would be
    proved) and when the role or password is wrong."""
    if not role or not password:
        raise SignInRefused("Enter a role and its password.")
    conninfo = psycopg.conninfo.make_conninfo(base_conninfo, user=role, password=password, passfile="/dev/null")
    try:
        with psycopg.connect(conninfo, application_name=APPLICATION_NAME, connect_timeout=10) as conn:
            used_password = conn.pgconn.used_password
    except psycopg.OperationalError as error:
        raise SignInRefused("The database refused this role and password.") from error
    if not used_password:
        raise SignInRefused(
            "The database let this role in without checking its password (trust or peer authentication "
            "in pg_hba.conf), so signing in would prove nothing. Connect bemi-pg serve over TCP to a "
            "server that asks for passwords (scram-sha-256), or use the read-only token.")
    return Viewer(name=role, conninfo=conninfo, role=None, may_write=True)


def same(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison of a token or CSRF value; empty never matches."""
    return bool(given) and bool(expected) and hmac.compare_digest(str(given), str(expected))


def token_mark(token: str | None) -> str:
    """What a token viewer's cookie holds: a digest of the token, so a new token signs out
    everyone who signed in with the old one (and the cookie never holds the token)."""
    return hashlib.sha256(f"bemi-pg serve token {token}".encode()).hexdigest() if token else ""


def new_csrf() -> str:
    return secrets.token_urlsafe(24)
