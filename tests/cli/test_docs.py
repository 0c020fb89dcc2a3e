"""The README's and docs' snippets, run as written, as a newcomer copies them.

Every fenced ```sql, ```sh, ```bash and ```console block of README.md and docs/*.md runs, in
the order of its document, against a database named ``app`` prepared as that document says it
starts, and made again where a section says it starts afresh (DOCS below): SQL through psql (``ON_ERROR_STOP``), shell through bash (``-e``), and the
``$ `` lines of a console block as commands. The connection is in the ``PG*`` variables, as
the docs say (psql and bemi-pg read them); ``$SOURCE`` and ``$TRAIL`` name the two databases of
docs/trail-database.md. A block is left out only when an HTML comment ``<!-- not-run: why -->``
stands right before its fence; NOT_RUN pins that list, so a new one is a decision.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

import bemi_pg
from bemi_pg.install import install
from tests.fixtures.database import BINDIR, conninfo

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"(?:<!--\s*not-run:\s*(?P<why>.*?)\s*-->\s*\n)?^(?P<indent>[ ]*)```(?P<lang>sql|sh|bash|console)\n"
                   r"(?P<body>.*?)^(?P=indent)```", re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    lang: str
    body: str
    not_run: str | None
    section: str  # the heading it is under


def blocks(doc: str) -> list[Block]:
    text = (ROOT / doc).read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        prose = re.sub(r"^[ ]*```.*?^[ ]*```", "", text[:m.start()], flags=re.DOTALL | re.MULTILINE)
        headings = re.findall(r"^#+ (.*)$", prose, re.MULTILINE)
        found.append(Block(doc, text[:m.start("lang")].count("\n") + 1, m["lang"], textwrap.dedent(m["body"]),
                           m["why"], headings[-1] if headings else ""))
    return found


def bare(conn: psycopg.Connection[Any]) -> None:
    """The application's database before bemi: the example's todo table and its rows."""
    conn.execute("CREATE TABLE todo (id serial PRIMARY KEY, task text NOT NULL, is_completed boolean NOT NULL "
                 "DEFAULT false); SELECT setval('todo_id_seq', 25); "
                 "INSERT INTO todo (task) VALUES ('Sleep'), ('Eat'), ('Repeat')")


def extension(conn: psycopg.Connection[Any]) -> None:
    """bemi installed (CREATE EXTENSION), nothing tracked, no slot, the todo table."""
    conn.execute("CREATE EXTENSION bemi")
    bare(conn)


def example(conn: psycopg.Connection[Any]) -> None:
    """What bemi-pg demo leaves: the example's five changes in the trail."""
    conn.execute("CREATE EXTENSION bemi")
    conn.execute("SELECT bemi.create_slot()")
    with psycopg.connect(conn.info.dsn) as app:
        bemi_pg.seed_example(app)
    conn.execute("SELECT bemi.ingest()")


def with_request(conn: psycopg.Connection[Any]) -> None:
    """The example, then a request with an id in its context (docs/frameworks.md's request ids)."""
    example(conn)
    conn.execute("BEGIN; SELECT bemi.set_context('{\"request_id\": \"9f2c4c1e-0f5e-4c38-9d55-3f1c0d8f3a10\"}'); "
                 "INSERT INTO todo (task) VALUES ('Call mum'); COMMIT")
    conn.execute("SELECT bemi.ingest()")


def with_roles(conn: psycopg.Connection[Any]) -> None:
    """The example, and the roles of docs/security.md."""
    example(conn)
    security = [b for b in blocks("docs/security.md") if b.lang == "sql"]
    conn.execute(security[0].body)


def plain_1_1(conn: psycopg.Connection[Any]) -> None:
    """bemi 1.1 installed by bemi-pg install (a plain install, before an upgrade)."""
    bare(conn)
    install(conn, target="1.1")


Setup = Callable[[psycopg.Connection[Any]], None]

# Each document, the state it starts from, and the sections that start afresh (by heading).
DOCS: dict[str, tuple[Setup, dict[str, Setup]]] = {
    "README.md": (example, {"Running the worker against an existing database": bare,
                            "Install on managed PostgreSQL": bare}),
    "docs/backup.md": (example, {}),
    "docs/benchmarks.md": (example, {}),
    "docs/frameworks.md": (with_request, {}),
    "docs/ingest.md": (example, {}),
    "docs/install.md": (bare, {"With CREATE EXTENSION": bare, "Upgrade": plain_1_1, "In SQL": example}),
    "docs/managed-postgres.md": (bare, {}),
    "docs/monitoring.md": (example, {}),
    "docs/retention.md": (with_roles, {}),
    "docs/security.md": (example, {}),
    "docs/serve.md": (example, {}),
    "docs/time-travel.md": (with_request, {}),
    "docs/trail-database.md": (extension, {"Moving an existing trail out without losing changes": example}),
}

# The blocks left out, by document and section: each says why in its comment.
NOT_RUN = {
    ("docs/serve.md", "`bemi-pg serve`: a web page over the trail"):
        "starts a web server that runs until stopped; tests/serve/test_cli.py starts it",
    ("docs/serve.md", "Next to an application"): "starts a web server behind a proxy; tests/serve/test_cli.py starts it",
    ("docs/serve.md", "Tests"): "runs the browser tests, which need Chromium; make test runs them (tests/serve)",
    ("README.md", "Two commands"):
        "make test runs this very test, and make demo starts a server of its own "
        "(tests/operations/test_cli.py runs the demo)",
    ("docs/frameworks.md", "Django"):
        "needs your Django project; tests/integrations/test_django.py runs migrate and bemi_track on a test project",
    ("docs/install.md", "pg_tle (RDS, Aurora)"): "an outline for pg_tle, which this project does not ship or test",
    ("docs/install.md", "Scheduling ingest with pg_cron (no worker)"):
        "needs pg_cron in shared_preload_libraries; tests/ingest/test_cron.py runs this schedule against a real pg_cron",
    ("docs/retention.md", "Retention: bemi.retain"):
        "needs pg_cron in shared_preload_libraries; tests/ingest/test_cron.py runs a schedule_in_database job "
        "against a real pg_cron",
    ("docs/retention.md", "bemi-pg prune: archive, then drop"):
        "names the archive of one month of a real trail; tests/operations/test_retention.py restores archives "
        "prune wrote",
    ("docs/retention.md", "bemi-pg restore-archive"):
        "names the archive of one month of a real trail; tests/operations/test_retention.py restores archives "
        "prune wrote",
}


def test_every_document_is_listed() -> None:
    assert sorted(DOCS) == sorted(["README.md", *(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))])
    left_out = {(b.doc, b.section): b.not_run for doc in DOCS for b in blocks(doc) if b.not_run}
    assert left_out == NOT_RUN


class Databases:
    """The databases app (and app_trail) on the session's server; roles the docs create are
    dropped with them."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc
        self.admin = psycopg.connect(conninfo(proc, "postgres"), autocommit=True)
        self.roles = self.role_names()

    def role_names(self) -> set[str]:
        return {r[0] for r in self.admin.execute("SELECT rolname FROM pg_roles")}

    def fresh(self, name: str) -> str:
        self.drop(name)
        self.admin.execute(f"CREATE DATABASE {name}")
        return conninfo(self.proc, name)

    def drop(self, name: str) -> None:
        self.admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
        self.admin.execute("SELECT pg_drop_replication_slot(s.slot_name) FROM pg_replication_slots s "
                           "WHERE s.database = %s", [name])
        self.admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def close(self) -> None:
        for name in ("app", "app_trail", "new"):
            self.drop(name)
        for role in self.role_names() - self.roles:
            self.admin.execute(f'DROP ROLE "{role}"')
        self.admin.close()


@pytest.fixture
def databases(postgresql_proc: Any) -> Iterator[Databases]:
    made = Databases(postgresql_proc)
    yield made
    made.close()


def run_block(block: Block, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    if block.lang == "sql":
        script = cwd / "block.sql"
        script.write_text(block.body)
        command = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(script)]
    elif block.lang == "console":
        lines = [line[2:] for line in block.body.splitlines() if line.startswith("$ ")]
        command = ["bash", "-e", "-o", "pipefail", "-c", "\n".join(lines)]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", block.body]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def prepare(databases: Databases, setup: Setup) -> tuple[str, str]:
    """The databases app, made by setup, and app_trail, empty."""
    dsn = databases.fresh("app")
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn)
    return dsn, databases.fresh("app_trail")


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_the_snippets_run_as_written(doc: str, databases: Databases, tmp_path: Path) -> None:
    start, afresh = DOCS[doc]
    dsn, trail = prepare(databases, start)
    proc = databases.proc
    venv_bin = os.path.dirname(sys.executable)  # bemi-pg: the command the package installs
    env = {"PATH": os.pathsep.join([venv_bin, BINDIR, "/usr/bin", "/bin"]), "HOME": str(tmp_path),
           "LANG": "C.UTF-8", "PGHOST": proc.host, "PGPORT": str(proc.port), "PGUSER": proc.user,
           "PGDATABASE": "app", "SOURCE": dsn, "TRAIL": trail}
    ran, section = 0, ""
    for block in blocks(doc):
        if block.section != section and block.section in afresh:
            prepare(databases, afresh[block.section])
        section = block.section
        if block.not_run:
            continue
        done = run_block(block, env, tmp_path)
        assert done.returncode == 0, (f"{doc}:{block.line} ({block.lang}) exited {done.returncode}\n"
                                      f"{block.body}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}")
        assert "Traceback" not in done.stderr, done.stderr
        ran += 1
    assert ran == len([b for b in blocks(doc) if not b.not_run])
