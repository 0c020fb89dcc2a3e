"""bemi-pg worker: keeps ingesting until SIGINT/SIGTERM (or, with --drain, until nothing is
pending), streaming the slot or through bemi.ingest(); see bemi_pg/ingest/worker.py.

Logs carry a timestamp and a level (--log-format text, or json: one object per line with ts,
level, msg and the line's fields); progress goes to stdout, warnings and errors to stderr.
--metrics-port serves Prometheus metrics. SIGHUP is logged and cuts a reconnect wait short;
the options come from the command line, so there is nothing else to reload."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import signal
import sys
import threading
import time
from typing import Any

from bemi_pg.cli.connection import source_dsn, trail_dsn, worker_dsn
from bemi_pg.cli.errors import Failure
from bemi_pg.ingest import coverage
from bemi_pg.ingest import worker as ingest_worker
from bemi_pg.ingest.metrics import Metrics


def add_arguments(w: argparse.ArgumentParser) -> None:
    w.add_argument("--batch", type=int, default=20000,
                   help="changes per store; larger transactions are stored in parts (default 20000)")
    w.add_argument("--interval", type=float, default=2.0,
                   help="seconds between checks when caught up (default 2)")
    w.add_argument("--drain", action="store_true", help="ingest until nothing is pending, print the totals, exit")
    w.add_argument("--sql", action="store_true",
                   help="ingest through SELECT bemi.ingest() instead of streaming (needs only EXECUTE on it)")
    w.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                   help="while another worker holds this database's lock, wait for it (the default) or exit "
                        "with an error (--no-wait; the default with --drain)")
    w.add_argument("--trail-here", action="store_true",
                   help="bring the trail back into this database from the trail database it is stored in, "
                        "then ingest here (bemi.trail_here(): the extension's owner, no worker running)")
    w.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on this port")
    w.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                   help="the address to serve metrics on (default 127.0.0.1; 0.0.0.0 for every interface)")
    w.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="text lines (timestamp, level, message) or JSON lines (ts, level, msg, fields)")


def timestamp(created: float) -> str:
    return datetime.datetime.fromtimestamp(created, datetime.timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{timestamp(record.created)} {record.levelname} {record.getMessage()}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        return json.dumps({"ts": timestamp(record.created), "level": record.levelname.lower(),
                           "msg": record.getMessage(), **fields}, default=str, ensure_ascii=False)


def configure_logging(log_format: str, quiet: bool) -> logging.Logger:
    """Info to stdout (unless -q), warnings and errors to stderr."""
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    out, err = logging.StreamHandler(sys.stdout), logging.StreamHandler(sys.stderr)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err.setLevel(logging.WARNING)
    logger = ingest_worker.log
    for handler in (out, err):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    return logger


def worker(args: argparse.Namespace) -> int:
    log = configure_logging(args.log_format, args.quiet)
    try:
        return work(args, log)
    except Failure as error:
        if args.log_format == "text":
            raise  # printed by bemi_pg.cli.main: "error: ...", exit status 1
        log.error(str(error))
        return 1


def work(args: argparse.Namespace, log: logging.Logger) -> int:
    if args.batch < 1 or not args.interval > 0:
        raise Failure("--batch must be a positive number of changes and --interval a positive number of seconds")
    if args.metrics_port is not None and not 0 < args.metrics_port < 65536:
        raise Failure("--metrics-port must be a port number (1-65535)")
    metrics = Metrics()
    if args.metrics_port is not None:
        try:
            metrics.serve(args.metrics_host, args.metrics_port)
        except OSError as error:
            raise Failure(f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {error}") from error
        log.info(f"worker: metrics on http://{args.metrics_host}:{args.metrics_port}/metrics",
                 extra={"fields": {"metrics_host": args.metrics_host, "metrics_port": args.metrics_port}})
    stop, wake = threading.Event(), threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    def hangup(*_: object) -> None:
        log.info("worker: SIGHUP: still running (the options come from the command line; nothing to reload)")
        wake.set()

    signal.signal(signal.SIGHUP, hangup)
    wait = not args.drain if args.wait is None else args.wait
    trail = trail_dsn(args)
    if trail and args.trail_here:
        raise Failure("--trail-here brings the trail into the source's own database: it does not go with --trail-dsn")
    options = ingest_worker.Options(dsn=worker_dsn(args, source_dsn(args)), batch=args.batch,
                                    interval=args.interval, drain=args.drain, sql=args.sql,
                                    trail_dsn=trail and worker_dsn(args, trail), wait=wait,
                                    trail_here=args.trail_here)
    try:
        totals = ingest_worker.run(options, stop, metrics=metrics, wake=wake)
    except ingest_worker.Failure as error:
        raise Failure(str(error)) from error
    except coverage.Stop as error:  # a lost slot (gap recorded), a trail stored elsewhere: its own exit status
        if args.log_format == "text":
            print(f"error: {error}", file=sys.stderr, flush=True)
        else:
            log.error(str(error))
        return error.exit_status
    seconds = time.monotonic() - totals.started
    log.info(f"worker: {'drained' if args.drain and not stop.is_set() else 'stopped after'} {totals.changes} changes "
             f"in {seconds:.1f} s ({totals.changes / max(seconds, 1e-6):,.0f}/s)",
             extra={"fields": {"total": totals.changes, "seconds": round(seconds, 3)}})
    return 0
