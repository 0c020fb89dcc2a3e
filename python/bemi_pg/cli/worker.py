"""bemi-pg worker: keeps ingesting until SIGINT/SIGTERM (or, with --drain, until nothing is
pending), streaming the slot or through bemi.ingest(); see bemi_pg/ingest/worker.py."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

from bemi_pg.cli.connection import source_dsn, trail_dsn, worker_dsn
from bemi_pg.cli.errors import Failure
from bemi_pg.cli.output import say
from bemi_pg.ingest import coverage
from bemi_pg.ingest import worker as ingest_worker


def worker(args: argparse.Namespace) -> int:
    if args.batch < 1 or not args.interval > 0:
        raise Failure("--batch must be a positive number of changes and --interval a positive number of seconds")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    trail = trail_dsn(args)
    options = ingest_worker.Options(dsn=worker_dsn(args, source_dsn(args)), batch=args.batch,
                                    interval=args.interval, drain=args.drain, sql=args.sql,
                                    trail_dsn=trail and worker_dsn(args, trail))
    try:
        totals = ingest_worker.run(options, stop, lambda line: say(args, line))
    except ingest_worker.Failure as error:
        raise Failure(str(error)) from error
    except coverage.SlotLost as error:  # the gap is recorded; a distinct exit status says so
        print(f"error: {error}", file=sys.stderr, flush=True)
        return coverage.EXIT_GAP
    seconds = time.monotonic() - totals.started
    say(args, f"worker: {'drained' if args.drain and not stop.is_set() else 'stopped after'} {totals.changes} changes "
              f"in {seconds:.1f} s ({totals.changes / max(seconds, 1e-6):,.0f}/s)")
    return 0
