"""The root of the test suite: its plugins (tests/fixtures) and the hypothesis profile.

Tests are grouped by area (capture, ingest, history, operations, integrations); markers (see
pyproject.toml): ``slow``, and ``crash`` for the fault tests that kill processes or stop a
server. ``make test-quick`` leaves both out."""

from __future__ import annotations

from hypothesis import settings

pytest_plugins = ["tests.fixtures.database"]

# No example database: tests run as an unprivileged user from a read-only checkout.
settings.register_profile("bemi", database=None, deadline=None)
settings.load_profile("bemi")
