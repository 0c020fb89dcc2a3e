"""Helpers the time-travel and revert tests share: moments, tables as rows, error checks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest

# Primary keys of types whose text the trail writes its own way (bemi.trail_key), for tables
# keyed by uuid, numeric(10, 2), timestamptz and date: an upper-case UUID, a Decimal with fewer
# places than its column (the trail writes 12.50), a datetime in another time zone (2020-01-01
# 00:00 UTC), a date.
TYPED_KEYS = (uuid.UUID("6F9619FF-8B86-D011-B42D-00C04FC964FF"), Decimal("12.5"),
              datetime(2020, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2))), date(2020, 1, 1))


def moment(admin: psycopg.Connection[Any]) -> datetime:
    """Now, by the server's clock: after every commit so far, before every later one."""
    row = admin.execute("SELECT clock_timestamp() AS t").fetchone()
    assert row is not None
    return row["t"]  # type: ignore[no-any-return, call-overload]


def rows(admin: psycopg.Connection[Any], query: str, params: Any = None) -> list[dict[str, Any]]:
    """The rows of a query, sorted by their text so that order does not matter."""
    return sorted(admin.execute(query, params).fetchall(), key=repr)  # type: ignore[arg-type]


@contextmanager
def fails(sqlstate: str, *fragments: str) -> Iterator[None]:
    """Expects a psycopg error with this SQLSTATE whose message holds every fragment."""
    with pytest.raises(psycopg.Error) as caught:
        yield
    assert caught.value.sqlstate == sqlstate, str(caught.value)
    message = str(caught.value)
    assert message.startswith("bemi: "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
