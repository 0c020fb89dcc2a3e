"""bemi-pg serve at scale: each page of the web viewer rendered through Starlette's TestClient
on the trail bench.scale builds (CHANGES[mode] changes in ten monthly partitions, 100 changes
of each of 100,000 rows), next to the SQL query that finds the same rows, on the same server.

The rows' table is made as the trail leaves it and tracked, and the trail is marked ingested
up to now, so time travel answers. Pages are read as a token viewer whose role may read only
the trail and the table (SET ROLE, as bemi-pg serve --token-role does). Medians of ROUNDS.

    python -m bench.serve --quick    # this workload (and bench.scale's) alone, on a throwaway server
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import psycopg
from psycopg.types.json import Jsonb
from starlette.testclient import TestClient

from bench import server
from bench.report import Cell, Results
from bench.timetravel import median_ms

ROUNDS = 20
TARGET_MS = 200
ROLE = "bemi_bench_viewer"
TOKEN = "bench-token"

SETUP = [
    "CREATE TABLE todo (id bigint PRIMARY KEY, task text NOT NULL, owner text NOT NULL, is_completed boolean NOT NULL, "
    "priority integer NOT NULL)",
    # The rows as the generated changes leave them (bench.prune.GENERATE: every update sets is_completed).
    "INSERT INTO todo SELECT k, 'task of ' || k, 'user ' || k %% 1000, true, 0 FROM generate_series(0, %(keys)s - 1) AS k",
    "VACUUM ANALYZE todo",
    "SELECT bemi.create_slot()",
    "SELECT bemi.track('todo')",
    "UPDATE bemi.tracking SET tracked_at = %(start)s::timestamptz - interval '1 day'",
    "SELECT bemi.ingest()",  # nothing to store: the trail is current up to now
    f"CREATE ROLE {ROLE} NOLOGIN",
    f"GRANT SELECT ON bemi.changes, todo TO {ROLE}",
]

CHANGE = ('c.id, c.committed_at, c.schema, c."table", c.primary_key, c.previous_key, c.operation, c.context, '
          "c.transaction_id, c.problem, c.partial, bemi.diff(c.before, c.after) AS diff")


def pages(dsn: str, results: Results, keys: int, start: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Times every page and its query on the scale database at dsn; adds a row per page and a
    target to results."""
    from bemi_pg.serve import Settings, create_app

    with server.connect(dsn) as conn:
        for statement in SETUP:
            conn.execute(statement, {"keys": keys, "start": start})
        try:
            facts = conn.execute(
                "SELECT max(id) AS newest, min(id) AS oldest, max(committed_at) AS last, "
                "(SELECT transaction_id FROM bemi.changes ORDER BY id DESC LIMIT 1) AS xid FROM bemi.changes").fetchone()
            assert facts is not None
            newest, oldest, last, xid = facts
            middle = (newest + oldest) // 2
            month = ("2025-04-01 00:00+00", "2025-05-01 00:00+00")
            recently = conn.execute("SELECT committed_at FROM bemi.changes WHERE id = %s", [newest - 1000]).fetchone()[0]  # type: ignore[index]
            cases = [
                ("recent changes", "/", f"SELECT {CHANGE} FROM bemi.changes AS c ORDER BY c.id DESC LIMIT 51", []),
                ("an older page (keyset)", f"/?before={middle}",
                 f"SELECT {CHANGE} FROM bemi.changes AS c WHERE c.id < %s ORDER BY c.id DESC LIMIT 51", [middle]),
                ("filter: table and operation", "/?table=todo&operation=UPDATE",
                 f"SELECT {CHANGE} FROM bemi.changes AS c WHERE c.\"table\" = 'todo' AND c.operation = 'UPDATE' "
                 "ORDER BY c.id DESC LIMIT 51", []),
                ("filter: context user_id = 42", "/?key=user_id&value=42",
                 f"SELECT {CHANGE} FROM bemi.changes AS c WHERE (c.context @> %s OR c.context @> %s) "
                 "ORDER BY c.id DESC LIMIT 51", [Jsonb({"user_id": "42"}), Jsonb({"user_id": 42})]),
                ("filter: one month", "/?" + urlencode({"since": month[0], "until": month[1]}),
                 f"SELECT {CHANGE} FROM bemi.changes AS c WHERE c.committed_at >= %s AND c.committed_at < %s "
                 "ORDER BY c.id DESC LIMIT 51", list(month)),
                ("one change", f"/change/{middle}",
                 f"SELECT {CHANGE}, c.before, c.after FROM bemi.changes AS c WHERE c.id = %s", [middle]),
                ("a row's timeline (100 changes)", "/row?table=todo&key=4242",
                 f"SELECT {CHANGE}, c.before, c.after FROM bemi.changes AS c WHERE c.schema = 'public' "
                 "AND c.\"table\" = 'todo' AND (c.primary_key = '4242' OR c.previous_key = '4242') "
                 "ORDER BY c.committed_at, c.id", []),
                ("a row as it was", "/row/at?" + urlencode({"table": "todo", "key": "4242", "at": month[0]}),
                 "SELECT bemi.row_at('todo', '4242', %s)", [month[0]]),
                ("a transaction", f"/transaction/{xid}",
                 f"SELECT {CHANGE} FROM bemi.changes AS c WHERE c.transaction_id = %s AND c.id > 0 ORDER BY c.id LIMIT 501",
                 [xid]),
                ("a request (100 changes)", "/context?key=endpoint&value=/todo/4242",
                 f"SELECT {CHANGE} FROM bemi.changes AS c WHERE (c.context @> %s) AND c.id > 0 ORDER BY c.id LIMIT 501",
                 [Jsonb({"endpoint": "/todo/4242"})]),
                (f"the table at a moment ({keys:,} rows, 1,000 changes since)",
                 "/table?" + urlencode({"table": "todo", "at": recently.isoformat()}),
                 "SELECT to_jsonb(t.*) FROM bemi.table_page_at(NULL::todo, %s, NULL, 51) AS t",
                 [recently]),
                ("live tail: page", "/tail", f"SELECT {CHANGE} FROM bemi.changes AS c ORDER BY c.id DESC LIMIT 51", []),
            ]
            measured: dict[str, Any] = {"changes": newest - oldest + 1, "pages": {}}
            app = create_app(Settings(dsn=dsn, token=TOKEN, token_role=ROLE))
            with TestClient(app, headers={"authorization": f"Bearer {TOKEN}"}) as client:
                for name, url, query, params in cases:
                    def get(url: str = url) -> None:
                        response = client.get(url)
                        if response.status_code != 200:
                            raise AssertionError(f"{url}: {response.status_code} {response.text[-500:]}")

                    def run(query: str = query, params: list[Any] = params) -> None:
                        with conn.transaction():
                            conn.execute(f"SET LOCAL ROLE {ROLE}")
                            conn.execute(query, params).fetchall()

                    measured["pages"][name] = {"page": median_ms(get, ROUNDS), "sql": median_ms(run, ROUNDS), "url": url}
                    log(f"  {name}: page {measured['pages'][name]['page']:.1f} ms, SQL {measured['pages'][name]['sql']:.1f} ms")
                # The tail's poll, as the stream runs it every second.
                def poll() -> None:
                    with conn.transaction():
                        conn.execute(f"SET LOCAL ROLE {ROLE}")
                        conn.execute(f"SELECT {CHANGE} FROM bemi.changes AS c WHERE c.id > %s ORDER BY c.id LIMIT 100",
                                     [newest - 10]).fetchall()
                measured["pages"]["live tail: a poll"] = {"page": float("nan"), "sql": median_ms(poll, ROUNDS), "url": ""}
            app.state.bemi.close()
        finally:
            conn.execute(f"DROP OWNED BY {ROLE}")
            conn.execute(f"DROP ROLE {ROLE}")
    for name, m in measured["pages"].items():
        row = results.row(f"serve {name}", f"bemi-pg serve: {name}, a {measured['changes']:,}-change trail", "ms",
                          better="lower", ratio_to="SQL")
        if m["page"] == m["page"]:
            row.cells["page"] = Cell(m["page"], {"SQL": m["page"] / m["sql"]})
        row.cells["SQL"] = Cell(m["sql"])
    slowest = max((m["page"], name) for name, m in measured["pages"].items() if m["page"] == m["page"])
    results.target("bemi-pg serve", f"every page < {TARGET_MS} ms", f"slowest: {slowest[1]}, {slowest[0]:.0f} ms",
                   slowest[0] < TARGET_MS)
    return measured


def main(argv: list[str] | None = None) -> int:
    from bench import scale

    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"{scale.CHANGES['quick']:,} changes instead of {scale.CHANGES['latest']:,}")
    args = p.parse_args(argv)
    results = Results(mode="quick" if args.quick else "full", date="", machine={})
    with server.bench_server() as dsn:
        scale.scale(dsn, results, "quick" if args.quick else "latest", lambda line: print(line, flush=True))
    from bench.report import table, targets_table

    print(table(results))
    print(targets_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
