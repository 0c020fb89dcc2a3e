"""The worker's Prometheus metrics (prometheus_client), served by ``bemi-pg worker
--metrics-port``: what it stored, how far behind it is, how often it reconnected or failed,
and its state. One registry per worker, so a process (or a test) may run several."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, start_http_server

# What a worker is doing; also in its session's application_name, "bemi-pg worker (<state>)".
STATES = ("starting", "waiting", "catching-up", "streaming", "reconnecting", "stopped")


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.changes = Counter("bemi_worker_changes_stored", "Changes stored in bemi.changes by this worker",
                               registry=registry)
        self.batches = Counter("bemi_worker_batches_stored", "Stores (bemi.store or bemi.ingest calls) committed, "
                               "empty ones included", registry=registry)
        self.lag_bytes = Gauge("bemi_worker_lag_bytes", "WAL written on the source and not yet stored, at the last "
                               "store", registry=registry)
        self.lag_seconds = Gauge("bemi_worker_lag_seconds", "Seconds between the commit of the newest change stored "
                                 "and its store; 0 once caught up", registry=registry)
        self.last_commit = Gauge("bemi_worker_last_stored_commit_timestamp_seconds", "Commit time (Unix seconds) "
                                 "of the newest change stored", registry=registry)
        self.reconnects = Counter("bemi_worker_reconnects", "Times the worker connected again after an error",
                                  registry=registry)
        self.errors = Counter("bemi_worker_errors", "Errors: transient ones are retried, a fatal one stops the worker",
                              ["kind"], registry=registry)
        self.state = Enum("bemi_worker_state", "What the worker is doing", states=list(STATES), registry=registry)
        for kind in ("transient", "fatal"):
            self.errors.labels(kind=kind)

    def serve(self, host: str, port: int) -> None:
        """Serves /metrics on host:port from a daemon thread (OSError when it cannot listen)."""
        start_http_server(port, addr=host, registry=self.registry)

    def stored(self, changes: int, pending_bytes: int | None, newest_commit_unix: float | None,
               caught_up: bool) -> None:
        self.changes.inc(changes)
        self.batches.inc()
        if pending_bytes is not None:
            self.lag_bytes.set(pending_bytes)
        if newest_commit_unix is not None:
            self.last_commit.set(newest_commit_unix)
            self.lag_seconds.set(max(0.0, time.time() - newest_commit_unix))
        if caught_up:
            self.lag_seconds.set(0)
