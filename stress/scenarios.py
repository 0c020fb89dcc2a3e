"""Faults and load, counted: writers keep a log of every change they make, then the trail is
compared with it, change by change. Shared by the fast tests (tests/ingest/test_faults.py) and
by `make stress` (stress/run.py), which runs the same scenarios at full size.

The writers' log is the ground truth. A transaction interrupted by a crash may or may not
have committed, so each one also inserts its (writer, seq) into the untracked table
`ledger` in the same transaction: the ledger says which transactions committed, and the
plan of each committed transaction says exactly which changes it made.
"""

from __future__ import annotations

import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

import bemi_pg

SCHEMA = """
CREATE TABLE items (id bigint PRIMARY KEY, writer integer NOT NULL, seq integer NOT NULL, payload text NOT NULL);
CREATE TABLE ledger (writer integer, seq integer, PRIMARY KEY (writer, seq));
SELECT bemi.track('items');
"""

BINDIR = subprocess.check_output(["pg_config", "--bindir"], text=True).strip()

# A change as both sides describe it: (writer, seq, step, operation, primary key).
Change = tuple[int, int, str, str, str]


# ---------------------------------------------------------------------------------------
# The writers: transactions with their own contexts, planned so the log is exact.

def plan(writer: int, seq: int, sizes: tuple[int, ...]) -> list[Change]:
    """The changes transaction (writer, seq) makes, in order: insert a batch of rows, update
    the first under a second context, sometimes delete the last. The same every time."""
    rng = random.Random(writer * 1_000_003 + seq)
    first = (writer * 1_000_000 + seq) * 1000
    ids = range(first, first + rng.choice(sizes))
    made = [(writer, seq, "insert", "CREATE", str(i)) for i in ids]
    if rng.random() < 0.4:
        made.append((writer, seq, "update", "UPDATE", str(ids[0])))
    if len(ids) > 1 and rng.random() < 0.3:
        made.append((writer, seq, "delete", "DELETE", str(ids[-1])))
    return made


STEP_SQL = {
    "UPDATE": "UPDATE items SET payload = payload || 'u' WHERE id = %s",
    "DELETE": "DELETE FROM items WHERE id = %s",
}


def run_transaction(conn: psycopg.Connection[Any], writer: int, seq: int, sizes: tuple[int, ...]) -> None:
    """Makes the planned changes: the insert under one context, each later step under its own."""
    made = plan(writer, seq, sizes)
    inserted = [int(c[4]) for c in made if c[3] == "CREATE"]
    context = {"writer": writer, "seq": seq}
    with bemi_pg.with_context(conn, {**context, "step": "insert"}):
        conn.execute("INSERT INTO ledger VALUES (%s, %s)", [writer, seq])
        conn.execute("INSERT INTO items SELECT g, %s, %s, repeat('x', (g %% 97)::integer) FROM generate_series(%s::bigint, %s::bigint) g",
                     [writer, seq, inserted[0], inserted[-1]])
        for _, _, step, operation, key in made[len(inserted):]:
            bemi_pg.set_context(conn, {**context, "step": step})
            conn.execute(STEP_SQL[operation], [int(key)])


@dataclass
class Writers:
    """Writer threads, each on its own connection, until stopped or `transactions` done.
    They ride out server crashes: reconnect and go on with the next transaction."""

    dsn: str
    count: int
    transactions: int | None = None
    sizes: tuple[int, ...] = (1, 1, 2, 3, 5)
    pause: float = 0.0  # seconds between a writer's transactions: a steadier, lighter load
    stop: threading.Event = field(default_factory=threading.Event)
    acknowledged: list[set[int]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.acknowledged = [set() for _ in range(self.count)]
        self.threads = [threading.Thread(target=self._write, args=(w,), daemon=True) for w in range(self.count)]

    def _write(self, writer: int) -> None:
        seq, conn = 0, None
        try:
            while not self.stop.is_set() and (self.transactions is None or seq < self.transactions):
                try:
                    conn = conn if conn is not None and not conn.closed else psycopg.connect(self.dsn)
                    run_transaction(conn, writer, seq, self.sizes)
                    self.acknowledged[writer].add(seq)
                    self.stop.wait(self.pause)
                except (psycopg.OperationalError, psycopg.InterfaceError):  # the server went away
                    if conn is not None:
                        conn.close()
                    conn = None
                    self.stop.wait(0.2)
                seq += 1
        except BaseException as error:  # reported by join(), never swallowed
            self.errors.append(error)
        finally:
            if conn is not None:
                conn.close()

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.join()

    def join(self) -> None:
        if self.transactions is None:
            self.stop.set()
        for thread in self.threads:
            thread.join()
        if self.errors:
            raise self.errors[0]


# ---------------------------------------------------------------------------------------
# The count: changes made (the plans of the committed transactions) vs rows in bemi.changes.

@dataclass
class Tally:
    scenario: str
    trials: int
    made: int
    found: int
    missing: int
    duplicated: int

    ROW = "{:<34} {:>6} {:>12} {:>12} {:>8} {:>11}"

    @classmethod
    def header(cls) -> str:
        return cls.ROW.format("scenario", "trials", "changes made", "changes found", "missing", "duplicated")

    def row(self) -> str:
        return self.ROW.format(self.scenario, self.trials, self.made, self.found, self.missing, self.duplicated)


def tally(dsn: str, scenario: str, trials: int, writers: Writers, trail_dsn: str | None = None) -> Tally:
    """Compares the trail (in trail_dsn when it is kept in a database of its own) with what the
    committed transactions made; checks that every transaction a writer saw commit is in the ledger."""
    with psycopg.connect(dsn) as conn:
        committed = set(conn.execute("SELECT writer, seq FROM ledger").fetchall())
    with psycopg.connect(trail_dsn or dsn) as conn:
        found = Counter(
            (int(w), int(s), step, op, key) for w, s, step, op, key in conn.execute(
                "SELECT context ->> 'writer', context ->> 'seq', coalesce(context ->> 'step', ''), operation, "
                "primary_key FROM bemi.changes WHERE \"table\" = 'items'"))
    lost_acks = [(w, s) for w, seqs in enumerate(writers.acknowledged) for s in seqs if (w, s) not in committed]
    assert not lost_acks, f"transactions acknowledged to the writers but not committed: {lost_acks[:5]}"
    made = Counter(c for w, s in committed for c in plan(w, s, writers.sizes))
    return Tally(scenario, trials, sum(made.values()), sum(found.values()),
                 sum((made - found).values()), sum((found - made).values()))


# ---------------------------------------------------------------------------------------
# The worker and the server, as real processes.

def start_worker(dsn: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bemi_pg.cli", "--dsn", dsn, "-q", "worker", "--batch", "100",
         "--interval", "0.05", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_worker(worker: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM, then its exit status and what it said on stderr."""
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate()
    return worker.returncode, err


@contextmanager
def running_worker(dsn: str) -> Iterator[subprocess.Popen[str]]:
    """A worker; a worker just killed may hold its lock a moment longer, so retry while it does."""
    worker = start_worker(dsn)
    while wait_for(lambda: worker.poll() is not None, seconds=0.3):
        _, err = worker.communicate()
        assert "already ingesting" in err, err
        worker = start_worker(dsn)
    try:
        yield worker
    finally:
        if worker.poll() is None:
            code, err = stop_worker(worker)
            assert code == 0, err


def wait_for(condition: Callable[[], bool], seconds: float = 120.0) -> bool:
    """Polls a condition until it holds or the (generous) bound passes; whether it held."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def mark_end(dsn: str) -> str:
    """A transaction of its own after everything written so far; returns an LSN that ingest's
    progress passes only once it has stored every transaction that committed before it."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT pg_logical_emit_message(true, 'bemi-stress', 'end')")
        return str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])  # type: ignore[index]


def caught_up(dsn: str, end: str) -> bool:
    """Whether ingest has got past `end` (from mark_end). Cheap: it does not decode the slot."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            return bool(conn.execute("SELECT lsn >= %s::pg_lsn FROM bemi.progress", [end]).fetchone()[0])  # type: ignore[index]
    except psycopg.OperationalError:
        return False


def drain(dsn: str, batch: int = 10000) -> int:
    """Ingests by hand until everything written so far is stored."""
    end, total = mark_end(dsn), 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not caught_up(dsn, end):
            total += conn.execute("SELECT bemi.ingest(%s)", [batch]).fetchone()[0]  # type: ignore[index]
    return total


def crash_server(datadir: str) -> None:
    subprocess.run([os.path.join(BINDIR, "pg_ctl"), "stop", "-D", datadir, "-m", "immediate", "-w"],
                   check=True, stdout=subprocess.DEVNULL)


def start_server(datadir: str, logfile: str) -> None:
    """Starts a stopped server again with the options it last ran with (postmaster.opts)."""
    with open(os.path.join(datadir, "postmaster.opts"), encoding="utf-8") as opts:
        argv = shlex.split(opts.read())
    subprocess.run([os.path.join(BINDIR, "pg_ctl"), "start", "-D", datadir, "-w", "-l", logfile,
                    "-o", shlex.join(argv[1:])], check=True, stdout=subprocess.DEVNULL)


def ingest_running(dsn: str) -> bool:
    """Whether an ingest is storing now: bemi.ingest() (SQL path) or bemi.store() (the streaming worker)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return bool(conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND (query LIKE '%bemi.ingest(%' OR query LIKE '%bemi.store(%') "
            "AND pid <> pg_backend_pid()").fetchone()[0])  # type: ignore[index]


# ---------------------------------------------------------------------------------------
# The scenarios.

def prepare(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)


def worker_kills(dsn: str, kills: int, writers: int = 3, pause: float = 0.0, seed: int = 0) -> Tally:
    """kill -9 of the worker at random moments during a steady write load."""
    rng = random.Random(seed)
    prepare(dsn)
    with Writers(dsn, writers, pause=pause) as load:
        for _ in range(kills):
            with running_worker(dsn) as worker:
                time.sleep(rng.uniform(0.05, 0.6))
                worker.kill()
                worker.wait()
    end = mark_end(dsn)
    with running_worker(dsn):
        assert wait_for(lambda: caught_up(dsn, end), seconds=1800), "the worker did not drain the slot"
    return tally(dsn, "kill -9 worker under load", kills, load)


def server_crashes(dsn: str, datadir: str, logfile: str, crashes: int, writers: int = 3, pause: float = 0.0,
                   seed: int = 0) -> Tally:
    """pg_ctl stop -m immediate in the middle of an ingest and of a write load, restart, drain."""
    rng = random.Random(seed)
    prepare(dsn)
    with running_worker(dsn), Writers(dsn, writers, pause=pause) as load:
        for _ in range(crashes):
            time.sleep(rng.uniform(0.1, 0.5))
            assert wait_for(lambda: ingest_running(dsn)), "no ingest ever ran"
            crash_server(datadir)
            start_server(datadir, logfile)
        load.join()
        end = mark_end(dsn)
        assert wait_for(lambda: caught_up(dsn, end), seconds=1800), "the worker did not drain the slot after the restarts"
    return tally(dsn, "immediate stop mid-ingest and load", crashes, load)


def load(dsn: str, writers: int, transactions: int, sizes: tuple[int, ...] = (1, 1, 1, 1, 2, 3, 5, 12)) -> Tally:
    """Many connections with distinct contexts and a concurrent worker; then every change's
    context, replay of the trail and commit order are checked."""
    prepare(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", [audit_slot(dsn)])
    with running_worker(dsn), Writers(dsn, writers, transactions, sizes) as written:
        pass
    drain(dsn)
    result = tally(dsn, f"load {writers}x{transactions}", writers * transactions, written)
    assert_replay_reproduces(dsn)
    assert_commit_order(dsn)
    return result


def audit_slot(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        return f"audit_{conn.info.dbname}"[:63]


def assert_replay_reproduces(dsn: str) -> None:
    """Applying the trail in id order, starting from nothing, yields the table as it is."""
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        replayed: dict[str, Any] = {}
        for change in conn.execute(
                "SELECT primary_key, operation, after FROM bemi.changes WHERE \"table\" = 'items' ORDER BY id"):
            if change["operation"] == "DELETE":
                del replayed[change["primary_key"]]
            else:
                replayed[change["primary_key"]] = change["after"]
        actual = {r["id"]: r["row"] for r in conn.execute("SELECT id::text, to_jsonb(i) AS row FROM items i")}
    assert replayed == actual


def assert_commit_order(dsn: str) -> None:
    """bemi.changes.id follows commit order: the transactions of the trail, in id order, are
    the transactions an independent slot saw commit, in that order, each one contiguous."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        commits = [int(x) for (x,) in conn.execute(
            "SELECT xid::text FROM pg_logical_slot_get_changes(%s, NULL, NULL, 'include-xids', '1', "
            "'skip-empty-xacts', '1') WHERE data LIKE 'COMMIT %%'", [audit_slot(dsn)])]
        trail = [x for (x,) in conn.execute("SELECT transaction_id FROM bemi.changes ORDER BY id")]
        conn.execute("SELECT pg_drop_replication_slot(%s)", [audit_slot(dsn)])
    runs = [x for i, x in enumerate(trail) if i == 0 or trail[i - 1] != x]
    assert len(runs) == len(set(runs)), "a transaction's changes are not contiguous in id order"
    in_trail = set(runs)
    assert runs == [x for x in commits if x in in_trail]
