"""bemi-pg as a real process: run to completion, or started and left running."""

from __future__ import annotations

import subprocess
import sys

BEMI_PG = [sys.executable, "-m", "bemi_pg.cli"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """bemi-pg, run as a command."""
    return subprocess.run([*BEMI_PG, *args], capture_output=True, text=True)


def run(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """bemi-pg --dsn DSN ARGS, run as a command (two minutes at most)."""
    return subprocess.run([*BEMI_PG, "--dsn", dsn, *args], capture_output=True, text=True, timeout=120)


def start(dsn: str, *args: str) -> subprocess.Popen[str]:
    """bemi-pg --dsn DSN worker ARGS, started (its output piped)."""
    return subprocess.Popen([*BEMI_PG, "--dsn", dsn, "worker", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
