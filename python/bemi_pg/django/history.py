"""Time travel and revert for Django models, on bemi.row_at, bemi.table_at and bemi.revert.

    from bemi_pg.django import as_of
    as_of(todo, at)              # the Todo as it was at ``at`` (unsaved; Todo.DoesNotExist if none)
    as_of(Todo, at)              # every Todo as of ``at``, a list of unsaved instances
    versions(todo)               # [{"valid_from", "valid_to", ..., "instance": Todo}, ...], oldest first
    BemiChange.objects.for_instance(todo).revert()   # see bemi_pg.django.models

Where the trail is kept in a database of its own (bemi-pg worker --trail-dsn), name its
alias: ``as_of(todo, at, trail="trail")``, ``BemiChange.objects.using("trail")...revert(source="default")``
(bemi_pg.trail_database does the work, on the psycopg connections under the aliases).

Values go through each field's own conversion (``from_db_value``), as for any query.
Importing this module loads no models, so the app package can re-export ``as_of``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any, TypeVar, overload

import psycopg
from django.db import connections, models, router, transaction

from bemi_pg.revert import revert as revert_changes
from bemi_pg.timetravel import VERSIONS_AS_ROWS, key_text, relation, row_at, version_of
from bemi_pg.steps import run
from bemi_pg.trail_database import DROP_ROWS, TABLE_FROM, copy_table_history

M = TypeVar("M", bound=models.Model)


def _table(model: type[models.Model], db: str) -> str:
    """The model's table as SQL names it, quoted by the database's own rules."""
    return str(connections[db].ops.quote_name(model._meta.db_table))


def _unsaved(instances: Iterable[M]) -> list[M]:
    """Instances read from the past that a save() would write as new rows."""
    result = list(instances)
    for instance in result:
        instance._state.adding = True
    return result


def _psycopg(alias: str) -> psycopg.Connection[Any]:
    """The psycopg connection under a database alias."""
    connections[alias].ensure_connection()
    return connections[alias].connection  # type: ignore[no-any-return]


@overload
def as_of(obj_or_model: type[M], at: datetime, using: str | None = None, trail: str | None = None) -> list[M]: ...
@overload
def as_of(obj_or_model: M, at: datetime, using: str | None = None, trail: str | None = None) -> M: ...
def as_of(obj_or_model: Any, at: datetime, using: str | None = None, trail: str | None = None) -> Any:
    """An instance as it was after every transaction committed at or before ``at``, or, for
    a model, all its rows then. Raises ``Model.DoesNotExist`` when the instance's row did not
    exist then; a moment before tracking began or past ingest raises the database's error.
    trail: the alias of the database that holds the trail, when it is not the model's."""
    model: Any = obj_or_model if isinstance(obj_or_model, type) else type(obj_or_model)
    db = using or router.db_for_read(model)
    table = _table(model, db)
    rows = model.objects.using(db)
    if isinstance(obj_or_model, type) and trail is not None:
        with transaction.atomic(using=db), connections[db].cursor() as cursor:
            moment, _ = run(copy_table_history(relation(table), at), _psycopg(db), _psycopg(trail))
            found = _unsaved(rows.raw(TABLE_FROM.format(table), [moment]))
            cursor.execute(DROP_ROWS.as_string(None))
        return found
    if isinstance(obj_or_model, type):
        return _unsaved(rows.raw(f"SELECT * FROM bemi.table_at(NULL::{table}, %s)", [at]))
    if trail is not None:
        image = row_at(_psycopg(db), table, obj_or_model.pk, at, trail=_psycopg(trail))
        found = [] if image is None else _unsaved(rows.raw(
            f"SELECT r.* FROM jsonb_populate_record(NULL::{table}, %s::jsonb) AS r", [json.dumps(image)]))
    else:
        found = _unsaved(rows.raw(
            f"SELECT r.* FROM bemi.row_at(%s::regclass, %s, %s) AS j(image), "
            f"jsonb_populate_record(NULL::{table}, j.image) AS r WHERE j.image IS NOT NULL",
            [table, key_text(obj_or_model.pk), at]))
    if not found:
        raise model.DoesNotExist(f"{model._meta.object_name} {obj_or_model.pk} did not exist at {at.isoformat()}")
    return found[0]


def trail_key(obj: models.Model, using: str | None = None) -> str:
    """The instance's primary key in the text form the trail writes (bemi.changes.primary_key),
    as the server reads it with the key columns' types (bemi.trail_key): a UUID, Decimal,
    date or datetime (in any time zone) key, or a composite one, names its row's changes."""
    model = type(obj)
    db = using or router.db_for_read(model)
    with connections[db].cursor() as cursor:
        cursor.execute("SELECT bemi.trail_key(%s::regclass, %s)", [_table(model, db), key_text(obj.pk)])
        (key,), = cursor.fetchall()
    return key  # type: ignore[no-any-return]


def versions(obj: M, using: str | None = None) -> list[dict[str, Any]]:
    """Every version of the instance's row, oldest first, following its key moves
    (bemi.row_versions): dicts with valid_from, valid_to, change_id, transaction_id and
    primary_key as the SQL gives them, and "instance": the row then, an unsaved instance."""
    model = type(obj)
    db = using or router.db_for_read(model)
    table = _table(model, db)
    found = model.objects.using(db).raw(VERSIONS_AS_ROWS.format(relation="%s::regclass", key="%s", table=table),
                                        [table, key_text(obj.pk)])
    return [version_of(vars(instance), instance) for instance in _unsaved(found)]


def revert(ids: list[int], on_conflict: str, using: str, source: str | None = None) -> list[dict[str, Any]]:
    """bemi.revert of these change ids on one database, in its current transaction (Django's
    autocommit makes it one of its own); what it did per row. source: the database of the
    tables, when the changes were read from a trail database (using)."""
    if source is not None and source != using:
        done = revert_changes(_psycopg(source), change_ids=ids, on_conflict=on_conflict,  # type: ignore[arg-type]
                              trail=_psycopg(using))
        return [vars(row) for row in done]
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT * FROM bemi.revert(%s::bigint[], %s)", [ids, on_conflict])
        names = [column.name for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]
