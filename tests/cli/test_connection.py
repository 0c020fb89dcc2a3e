"""bemi-pg connects as psql does: -h/-p/-U/-d (and --help for help), the documented precedence
of flags, --dsn, PG* and DATABASE_URL, BEMI_TRAIL_DSN, a password asked for on a real terminal
(-W forces it, -w forbids it), and exit statuses that tell usage from warnings."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.fixtures.database import NewDatabase
from tests.helpers.commands import BEMI_PG
from tests.helpers.trail import changes

CONNECTION_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE", "PGPASSWORD",
                        "DATABASE_URL", "BEMI_TRAIL_DSN")


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without any connection variable, plus variables."""
    env = {k: v for k, v in os.environ.items() if k not in CONNECTION_VARIABLES}
    return {**env, **variables}


def bemi_pg(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BEMI_PG, *args], capture_output=True, text=True, env=env or clean_env(),
                          stdin=subprocess.DEVNULL)


def reported_database(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode in (0, 2), done.stderr
    return str(json.loads(done.stdout)["database"])


def parts(dsn: str) -> dict[str, str]:
    return {k: str(v) for k, v in conninfo_to_dict(dsn).items()}


def test_help_is_only_help_and_usage_errors_have_their_own_status() -> None:
    helped = bemi_pg("--help")
    assert helped.returncode == 0
    assert "-h HOST, --host HOST" in helped.stdout and "-U USERNAME" in helped.stdout
    assert "exit status:" in helped.stdout and "3    usage" in helped.stdout and "2    done, with warnings" in helped.stdout
    assert "DATABASE_URL only when neither --dsn" in helped.stdout and "BEMI_TRAIL_DSN" in helped.stdout
    assert bemi_pg("status", "--help").returncode == 0
    for args in (["-h"], ["status", "--bogus"], ["prune", "--older-than", "1d"], ["frobnicate"]):
        refused = bemi_pg(*args)
        assert refused.returncode == 3, (args, refused.stderr)
        assert "error:" in refused.stderr and "Traceback" not in refused.stderr


def test_psql_flags_connect(dsn: str) -> None:
    given = parts(dsn)
    flags = ["-h", given["host"], "-p", given["port"], "-U", given["user"], "-d", given["dbname"]]
    # bemi-pg -h dbhost status: -h is the host, before or after the subcommand.
    assert reported_database(bemi_pg(*flags, "status", "--json")) == given["dbname"]
    assert reported_database(bemi_pg("status", "--json", *flags)) == given["dbname"]
    assert reported_database(bemi_pg("--host", given["host"], "--port", given["port"], "--username", given["user"],
                                     "--dbname", given["dbname"], "status", "--json")) == given["dbname"]
    # A -d holding a whole connection string is one, as in psql.
    assert reported_database(bemi_pg("-d", dsn, "status", "--json")) == given["dbname"]


def test_flags_then_dsn_then_pg_variables_then_database_url(new_database: NewDatabase) -> None:
    first, second = new_database(bemi=True), new_database(bemi=True)
    a, b = parts(first), parts(second)
    url = f"postgresql://{a['user']}@{a['host']}:{a['port']}/{a['dbname']}"
    pg_b = {"PGHOST": b["host"], "PGPORT": b["port"], "PGUSER": b["user"], "PGDATABASE": b["dbname"]}
    # DATABASE_URL alone is used...
    assert reported_database(bemi_pg("status", "--json", env=clean_env(DATABASE_URL=url))) == a["dbname"]
    # ...but any PG* variable naming a server, database or role wins over it, as psql users expect.
    assert reported_database(bemi_pg("status", "--json", env=clean_env(DATABASE_URL=url, **pg_b))) == b["dbname"]
    # Not mixed: a PG* variable set means DATABASE_URL is left out whole (here the database is
    # libpq's default, the user's name).
    mixed = bemi_pg("status", "--json", env=clean_env(DATABASE_URL=url, PGHOST=b["host"], PGPORT=b["port"],
                                                        PGUSER=b["user"]))
    assert mixed.returncode == 1 and f"bemi is not installed in database {b['user']}" in mixed.stderr
    # --dsn wins over PG* (which fill in only what it leaves out), and a flag over --dsn.
    assert reported_database(bemi_pg("--dsn", f"dbname={a['dbname']}", "status", "--json", env=clean_env(**pg_b))) \
        == a["dbname"]
    assert reported_database(bemi_pg("--dsn", second, "-d", a["dbname"], "status", "--json")) == a["dbname"]


def test_bemi_trail_dsn_names_the_trail_database(dsn: str, trail: str, admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE t (id int PRIMARY KEY); SELECT bemi.track('t'); INSERT INTO t VALUES (1), (2)")
    env = clean_env(BEMI_TRAIL_DSN=trail)
    stored = bemi_pg("--dsn", dsn, "worker", "--drain", env=env)
    assert stored.returncode == 0, stored.stderr
    assert changes(admin) == []  # nothing went to the source's own trail
    listed = bemi_pg("--dsn", dsn, "changes", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["primary_key"] for line in listed.stdout.splitlines()] == ["1", "2"]
    # --trail-dsn wins over the variable.
    assert bemi_pg("--dsn", dsn, "changes", "--json", "--trail-dsn", dsn, env=env).stdout == ""


@pytest.fixture
def password_role(dsn: str, admin: psycopg.Connection[Any]) -> Iterator[str]:
    """A role that must give its password (scram-sha-256) over TCP: "pw_user", password "secret"."""
    hba = Path(admin.execute("SHOW hba_file").fetchone()["hba_file"])  # type: ignore[index]
    before = hba.read_text()
    admin.execute("CREATE ROLE pw_user LOGIN SUPERUSER PASSWORD 'secret'")
    hba.write_text("host all pw_user 0.0.0.0/0 scram-sha-256\nhost all pw_user ::/0 scram-sha-256\n" + before)
    admin.execute("SELECT pg_reload_conf()")
    try:
        yield "pw_user"
    finally:
        hba.write_text(before)
        admin.execute("SELECT pg_reload_conf()")
        admin.execute("DROP ROLE pw_user")


def on_terminal(args: list[str], answer: str | None) -> tuple[int, str]:
    """Runs bemi-pg with a pseudo-terminal as its controlling terminal, stdin and stdout; types
    answer when it asks for a password. Returns its exit status and everything it printed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: bemi-pg on the terminal
        os.execve(sys.executable, [sys.executable, "-m", "bemi_pg.cli", *args], clean_env())
    seen = b""
    answered = False
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
        if answer is not None and not answered and b"Password for user" in seen:
            os.write(fd, answer.encode() + b"\n")
            answered = True
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")


def test_a_password_is_asked_for_on_a_terminal(dsn: str, password_role: str) -> None:
    given = parts(dsn)
    flags = ["-h", given["host"], "-p", given["port"], "-U", password_role, "-d", given["dbname"]]
    code, printed = on_terminal([*flags, "status", "--json"], "secret")
    assert code == 0, printed
    assert printed.count(f"Password for user {password_role}:") == 1
    assert '"database": "' + given["dbname"] + '"' in printed and "secret" not in printed
    # A wrong one is an error, not a second prompt.
    code, printed = on_terminal([*flags, "status"], "wrong")
    assert code == 1 and 'password authentication failed for user "pw_user"' in printed
    # -w never asks; without a terminal nothing is asked either.
    code, printed = on_terminal(["-w", *flags, "status"], None)
    assert code == 1 and "Password for user" not in printed and "no password supplied" in printed
    piped = bemi_pg(*flags, "status")
    assert piped.returncode == 1 and "no password supplied" in piped.stderr
    # The worker asks once, then reconnects with it as often as it needs.
    code, printed = on_terminal([*flags, "worker", "--drain"], "secret")
    assert code == 0 and printed.count("Password for user") == 1 and "drained" in printed, printed


def test_dash_capital_w_asks_before_connecting(dsn: str) -> None:
    given = parts(dsn)
    code, printed = on_terminal(["-W", "-h", given["host"], "-p", given["port"], "-U", given["user"],
                                 "-d", given["dbname"], "status", "--json"], "anything")
    assert code == 0, printed  # the server (trust) did not need it, and was not asked twice
    assert printed.count(f"Password for user {given['user']}:") == 1
