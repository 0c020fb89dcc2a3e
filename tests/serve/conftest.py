"""Fixtures of the bemi-pg serve tests: a database with a trail worth looking at (tables and
contexts with markup, quotes and control characters in them), people who sign in with their own
role and password, and the app (Starlette's TestClient, or real uvicorn for the browser).

The test server trusts every local connection (pytest-postgresql's initdb --auth=trust), and
bemi-pg serve refuses a sign-in the server did not check a password for: members of the role
bemi_serve_people get a scram-sha-256 line of their own at the top of pg_hba.conf."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn
from psycopg import sql
from psycopg.rows import dict_row
from starlette.testclient import TestClient

from bemi_pg.serve import Settings, create_app
from tests.helpers.trail import ingest

PEOPLE = "bemi_serve_people"
PASSWORD = "correct horse battery staple"
HOSTILE = "<script>alert(\"x\")</script>'\x1b[31m\x07"
HOSTILE_TABLE = "<img src=x onerror=alert(1)>\"t'"


@pytest.fixture(scope="session")
def password_sign_in(postgresql_proc: Any) -> str:
    """Members of PEOPLE must give their password over TCP; returns the group's name."""
    hba = Path(postgresql_proc.datadir) / "pg_hba.conf"
    line = f"host all +{PEOPLE} all scram-sha-256\n"
    admin = psycopg.conninfo.make_conninfo(host=postgresql_proc.host, port=postgresql_proc.port,
                                           user=postgresql_proc.user, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [PEOPLE]).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(PEOPLE)))
        if line not in hba.read_text():
            hba.write_text(line + hba.read_text())
            conn.execute("SELECT pg_reload_conf()")
    return PEOPLE


Person = Callable[..., str]


@pytest.fixture
def person(dsn: str, password_sign_in: str) -> Iterator[Person]:
    """Makes a role that signs in with PASSWORD, granted what is asked; returns its name."""
    made: list[str] = []

    def make(*grants: str, name: str | None = None) -> str:
        role = name or f"p_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                sql.Identifier(role), sql.Literal(PASSWORD), sql.Identifier(password_sign_in)))
            for grant in grants:
                conn.execute(sql.SQL(grant).format(role=sql.Identifier(role)))
        made.append(role)
        return role

    yield make
    with psycopg.connect(dsn, autocommit=True) as conn:
        for role in made:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role])
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


READER = ("GRANT SELECT ON bemi.changes TO {role}", "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
WRITER = (*READER, "GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")


@pytest.fixture
def seeded(admin: psycopg.Connection[Any]) -> dict[str, Any]:
    """todo (whose row 2 moves to key 20), and a table whose name and data hold markup: each
    change with a context, ingested. Returns the transaction ids by name."""
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL, done boolean NOT NULL DEFAULT false)")
    admin.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, note text)").format(sql.Identifier(HOSTILE_TABLE)))
    admin.execute("SELECT bemi.track('todo')")
    admin.execute("SELECT bemi.track(%s::regclass)", [sql.Identifier(HOSTILE_TABLE).as_string(admin)])
    xids: dict[str, int] = {}

    def write(name: str, context: dict[str, Any], *statements: sql.Composable | str, params: Any = None) -> None:
        with admin.transaction():
            admin.execute("SELECT bemi.set_context(%s::jsonb)", [psycopg.types.json.Jsonb(context)])
            for statement in statements:
                admin.execute(statement, params)
            xids[name] = int(admin.execute("SELECT txid_current() AS x").fetchone()["x"])  # type: ignore[index]

    write("create", {"user_id": 7, "request_id": "r-1", "endpoint": "/todo"},
          "INSERT INTO todo VALUES (1, 'Sleep'), (2, 'Eat'), (3, 'Repeat')")
    write("complete", {"user_id": 7, "request_id": "r-2"}, "UPDATE todo SET done = true WHERE id = 1")
    write("move", {"user_id": 8, "request_id": "r-3"}, "UPDATE todo SET id = 20, task = 'Eat more' WHERE id = 2")
    write("hostile", {HOSTILE: HOSTILE, "request_id": "r-4"},
          sql.SQL("INSERT INTO {} VALUES (1, %s)").format(sql.Identifier(HOSTILE_TABLE)), params=[HOSTILE])
    write("import", {"user_id": 9, "request_id": "r-5", "job": "import"},
          "UPDATE todo SET task = task || ' (imported)' WHERE id IN (1, 3)", "DELETE FROM todo WHERE id = 20")
    ingest(admin)
    return xids


Client = Callable[..., TestClient]


@pytest.fixture
def client(dsn: str) -> Iterator[Client]:
    """Makes a TestClient of the app over the test database; Settings fields as keywords."""
    made: list[TestClient] = []

    def make(**settings: Any) -> TestClient:
        tc = TestClient(create_app(Settings(dsn=dsn, **settings)), follow_redirects=False)
        tc.__enter__()
        made.append(tc)
        return tc

    yield make
    for tc in made:
        tc.__exit__(None, None, None)


def sign_in(tc: TestClient, role: str, password: str = PASSWORD) -> Any:
    """Signs in through the form (with its CSRF token); returns the response."""
    page = tc.get("/signin")
    return tc.post("/signin", data={"role": role, "password": password, "csrf": csrf_of(page.text), "next": "/"})


def csrf_of(html: str) -> str:
    marker = 'name="csrf" value="'
    start = html.index(marker) + len(marker)
    return html[start:html.index('"', start)]


@pytest.fixture
def served(dsn: str) -> Iterator[Callable[..., str]]:
    """Runs the app on real uvicorn on a free port of 127.0.0.1; returns its base URL."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(**settings: Any) -> str:
        config = uvicorn.Config(create_app(Settings(dsn=dsn, **settings)), host="127.0.0.1", port=0, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(30)


def table_rows(dsn: str, query: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(query).fetchall()
