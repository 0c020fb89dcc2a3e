"""Steps: a query-by-query conversation with one database, or with two (a source and the
database that holds its trail), written once and carried out on ``Connection``s or
``AsyncConnection``s.

Steps are a generator of queries, each for one of the two connections, that is sent back
each query's rows (psycopg's transaction.py writes its logic once the same way). ``run`` and
``run_async`` carry the steps out; a ``Copy`` streams rows from the trail's connection into a
table of the source's (binary COPY). JSON values come back with their numbers exact (Decimal,
never float), as the trail holds them.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import RowFactory, tuple_row
from psycopg.types.json import set_json_loads

T = TypeVar("T")


@dataclass(frozen=True)
class Query:
    """A query for the source's connection (on_trail: the trail's); its rows are sent back
    (None for a query that returns none)."""

    query: sql.SQL | sql.Composed
    params: list[Any] | None
    on_trail: bool = False
    rows: RowFactory[Any] = tuple_row


@dataclass(frozen=True)
class Copy:
    """Copies the rows a query selects on the trail's connection into a table of the source's
    (``target``: the table and its column list)."""

    query: sql.Composable
    params: list[Any]
    target: sql.Composable


Steps = Generator[Query | Copy, Any, T]

COPY_OUT = "COPY ({}) TO STDOUT (FORMAT binary)"
EXACT_JSON = partial(json.loads, parse_float=Decimal)
COPY_IN = "COPY {} FROM STDIN (FORMAT binary)"


def pipe(out: psycopg.Connection[Any], query: sql.Composable, params: list[Any] | None,
         into: psycopg.Connection[Any], target: sql.Composable) -> None:
    """Streams the rows of a query on one connection (binary COPY) into a table of another."""
    with out.cursor().copy(sql.SQL(COPY_OUT).format(query), params) as rows, \
            into.cursor().copy(sql.SQL(COPY_IN).format(target)) as copy:
        for data in rows:
            copy.write(data)


class Drive:
    """Goes through steps: iterate for each step, set ``answer`` to what it gave; ``result`` is
    what the steps returned."""

    def __init__(self, steps: Steps[Any]) -> None:
        self.steps = steps
        self.answer: Any = None
        self.result: Any = None

    def __iter__(self) -> Iterator[Query | Copy]:
        try:
            step = next(self.steps)
            while True:
                yield step
                step = self.steps.send(self.answer)
        except StopIteration as done:
            self.result = done.value


Connection = TypeVar("Connection", psycopg.Connection[Any], psycopg.AsyncConnection[Any])


def _connection(step: Query | Copy, source: Connection, trail: Connection | None) -> Connection:
    """The connection a step is for: a Copy reads from the trail's."""
    if isinstance(step, Query) and not step.on_trail:
        return source
    assert trail is not None, "a step for the trail's connection, and no trail connection"
    return trail


def run(steps: Steps[T], source: psycopg.Connection[Any], trail: psycopg.Connection[Any] | None = None) -> T:
    """Carries out steps on a source connection and, for a trail in a database of its own, a
    trail connection. Steps on two connections are one transaction on an autocommit source;
    else they are part of the source's transaction, as the one-database functions are."""
    drive = Drive(steps)
    with source.transaction() if trail is not None and source.autocommit else nullcontext():
        for step in drive:
            if isinstance(step, Query):
                with _connection(step, source, trail).cursor(row_factory=step.rows) as cur:
                    set_json_loads(EXACT_JSON, cur)
                    cur.execute(step.query, step.params)
                    drive.answer = cur.fetchall() if cur.description else None
                continue
            pipe(_connection(step, source, trail), step.query, step.params, source, step.target)
    return drive.result  # type: ignore[no-any-return]


async def run_async(steps: Steps[T], source: psycopg.AsyncConnection[Any],
                    trail: psycopg.AsyncConnection[Any] | None = None) -> T:
    """``run`` for ``AsyncConnection``s."""
    drive = Drive(steps)
    async with source.transaction() if trail is not None and source.autocommit else nullcontext():
        for step in drive:
            if isinstance(step, Query):
                async with _connection(step, source, trail).cursor(row_factory=step.rows) as cur:
                    set_json_loads(EXACT_JSON, cur)
                    await cur.execute(step.query, step.params)
                    drive.answer = await cur.fetchall() if cur.description else None
                continue
            async with _connection(step, source, trail).cursor().copy(
                    sql.SQL(COPY_OUT).format(step.query), step.params) as out, \
                    source.cursor().copy(sql.SQL(COPY_IN).format(step.target)) as into:
                async for data in out:
                    await into.write(data)
    return drive.result  # type: ignore[no-any-return]
