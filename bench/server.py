"""The throwaway server every variant runs on, and the processes the bench drives against it:
pgbench, the bemi-pg worker, and /proc for memory."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from bemi_pg.demo import throwaway_server

# One configuration for every variant. Checkpoints and autovacuum run only when the bench
# asks for them, so they never land in one variant's measurement and not another's.
SERVER_OPTIONS = {
    "shared_buffers": "512MB",
    "max_wal_size": "16GB",
    "checkpoint_timeout": "1h",
    "autovacuum": "off",
    "max_replication_slots": "10",
    "max_connections": "50",
}

DATABASE = "bench"


@contextmanager
def bench_server() -> Iterator[str]:
    """Starts the server, creates the bench database; yields the database's DSN."""
    options = " ".join(f"-c {name}={value}" for name, value in SERVER_OPTIONS.items())
    with throwaway_server(options) as dsn:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {DATABASE}")
        yield psycopg.conninfo.make_conninfo(dsn, dbname=DATABASE)


def connect(dsn: str, *, search_path: str | None = None, synchronous_commit: str | None = None,
            **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, options=pg_options(search_path, synchronous_commit), **kwargs)


def pg_options(search_path: str | None, synchronous_commit: str | None) -> str:
    options = []
    if search_path:
        options.append(f"-c search_path={search_path}")
    if synchronous_commit:
        options.append(f"-c synchronous_commit={synchronous_commit}")
    return " ".join(options)


def bindir() -> str:
    return subprocess.check_output(["pg_config", "--bindir"], text=True).strip()


# ---------------------------------------------------------------------------------------
# pgbench

def pgbench(dsn: str, script: Path, *, seconds: float, clients: int = 2, rate: float | None = None,
            search_path: str, synchronous_commit: str) -> float:
    """Runs a pgbench script; returns transactions per second."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    command = [os.path.join(bindir(), "pgbench"), "-n", "-f", str(script), "-c", str(clients),
               "-j", str(clients), "-T", str(max(1, round(seconds))),
               "-h", str(params["host"]), "-p", str(params["port"]), "-U", str(params["user"])]
    if rate:
        command += ["-R", f"{rate:.0f}"]
    env = {**os.environ, "PGOPTIONS": pg_options(search_path, synchronous_commit)}
    done = subprocess.run([*command, str(params["dbname"])], env=env, capture_output=True, text=True)
    match = re.search(r"^tps = ([0-9.]+)", done.stdout, re.MULTILINE)
    failed = re.search(r"number of failed transactions: ([1-9][0-9]*)", done.stdout)
    if done.returncode != 0 or not match or failed:
        raise RuntimeError(f"pgbench {script.name} failed:\n{done.stdout}\n{done.stderr}")
    return float(match.group(1))


# ---------------------------------------------------------------------------------------
# the worker, as users run it

def start_worker(dsn: str, *args: str, quiet: bool = False) -> subprocess.Popen[str]:
    """Starts ``bemi-pg worker``; its progress lines are on stdout."""
    executable = shutil.which("bemi-pg", path=os.path.dirname(sys.executable)) or "bemi-pg"
    return subprocess.Popen([executable, "--dsn", dsn, *(["-q"] if quiet else []), "worker", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)


def stop(process: subprocess.Popen[str]) -> str:
    """Stops a worker cleanly (SIGTERM); returns what it printed."""
    process.terminate()
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out or ""


# ---------------------------------------------------------------------------------------
# memory, from /proc

def memory_kb(pid: int) -> dict[str, int]:
    """VmHWM (peak resident), VmRSS and RssAnon (private, not shared buffers) of a process."""
    fields: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return fields
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS", "RssAnon"):
            fields[name] = int(value.split()[0])
    return fields


# ---------------------------------------------------------------------------------------
# the machine, for the report

def machine(dsn: str) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    with psycopg.connect(dsn) as conn:
        version = conn.execute("SELECT current_setting('server_version')").fetchone()[0]  # type: ignore[index]
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(memory_gb, 1),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "postgresql": version, "server_options": SERVER_OPTIONS,
    }


def describe(info: dict[str, Any]) -> str:
    return (f"{info['cores']} cores ({info['cpu']}), {info['memory_gb']} GB, {info['os']}, "
            f"PostgreSQL {info['postgresql']}")

