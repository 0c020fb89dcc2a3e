"""bemi-pg serve as a real process: it listens on 127.0.0.1, prints how to sign in, offers no
token where viewers would read as a superuser, and refuses a given one."""

from __future__ import annotations

import socket
import subprocess
from typing import Any

import httpx

from tests.helpers.commands import BEMI_PG, run
from tests.serve.conftest import READER, Person


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(dsn: str, *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    """Starts bemi-pg serve; returns it and the lines it printed before it listened."""
    process = subprocess.Popen([*BEMI_PG, "--dsn", dsn, "serve", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "Uvicorn running on" in line or process.poll() is not None:
            break
    return process, lines


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(30)


def test_serve_listens_on_localhost_and_prints_the_token(dsn: str, person: Person, seeded: Any) -> None:
    reader = person(*READER)
    port = free_port()
    process, lines = serve(dsn, "--listen-port", str(port), "--token-role", reader)
    try:
        printed = "".join(lines)
        assert f"bemi-pg serve on http://127.0.0.1:{port}/ (revert off)" in printed
        token = printed.split("read-only token: ")[1].split()[0]
        assert f"Uvicorn running on http://127.0.0.1:{port}" in printed
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/").status_code == 303
        page = httpx.get(base + "/", headers={"authorization": f"Bearer {token}"})
        assert page.status_code == 200 and "token viewer" in page.text
    finally:
        stop(process)


def test_no_token_for_a_superuser_and_a_given_one_refused(dsn: str, seeded: Any) -> None:
    port = free_port()
    process, lines = serve(dsn, "--listen-port", str(port))
    try:
        printed = "".join(lines)
        assert "token viewing is off: token viewers would read as" in printed
        assert "read-only token" not in printed
        assert httpx.get(f"http://127.0.0.1:{port}/signin").status_code == 200
    finally:
        stop(process)
    refused = run(dsn, "serve", "--token", "mine", "--listen-port", str(free_port()))
    assert refused.returncode == 1 and "error: token viewers would read as" in refused.stderr and "superuser" in refused.stderr
