"""examples/node (node-postgres) against the extension: set_context in a transaction and the
/*Bemi ... Bemi*/ comment both reach bemi.changes. `make test` installs its npm packages."""

import os
import subprocess
from pathlib import Path
from typing import Any

import psycopg

from tests.helpers.trail import changes, ingest


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node"
POST = {"user_id": 187234, "endpoint": "/todo", "method": "POST"}


def test_node_example(dsn: str, admin: psycopg.Connection[Any]) -> None:
    assert (EXAMPLE / "node_modules" / "pg").is_dir(), "run `make node-deps` (npm ci in examples/node) first"
    admin.execute("CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL, is_completed boolean NOT NULL)")
    admin.execute("SELECT bemi.track('todo')")
    p = psycopg.conninfo.conninfo_to_dict(dsn)
    url = f"postgresql://{p['user']}@{p['host']}:{p['port']}/{p['dbname']}"
    subprocess.run(["node", "todo.js"], cwd=EXAMPLE, env={**os.environ, "DATABASE_URL": url}, check=True)
    ingest(admin)
    rows = changes(admin, "primary_key", "operation", "after", "context")
    assert [(r["primary_key"], r["operation"], r["context"]) for r in rows] == [
        ("26", "CREATE", POST), ("27", "CREATE", POST), ("28", "CREATE", POST),
        ("26", "UPDATE", {"user_id": 187234, "endpoint": "/todo/complete", "method": "PUT"}),
        ("27", "DELETE", {"user_id": 187234, "endpoint": "/todo/27", "method": "DELETE", "note": "a */ in a value"}),
    ]
    assert rows[3]["after"] == {"id": 26, "task": "Sleep", "is_completed": True}
