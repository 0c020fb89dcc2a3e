"""Time travel and revert for Django models, on bemi.row_at, bemi.table_at and bemi.revert.

    from bemi_pg.django import as_of
    as_of(todo, at)              # the Todo as it was at ``at`` (unsaved; Todo.DoesNotExist if none)
    as_of(Todo, at)              # every Todo as of ``at``, a list of unsaved instances
    BemiChange.objects.for_instance(todo).revert()   # see bemi_pg.django.models

Values go through each field's own conversion (``from_db_value``), as for any query.
Importing this module loads no models, so the app package can re-export ``as_of``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, TypeVar, overload

from django.db import connections, models, router

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


@overload
def as_of(obj_or_model: type[M], at: datetime, using: str | None = None) -> list[M]: ...
@overload
def as_of(obj_or_model: M, at: datetime, using: str | None = None) -> M: ...
def as_of(obj_or_model: Any, at: datetime, using: str | None = None) -> Any:
    """An instance as it was after every transaction committed at or before ``at``, or, for
    a model, all its rows then. Raises ``Model.DoesNotExist`` when the instance's row did not
    exist then; a moment before tracking began or past ingest raises the database's error."""
    model: Any = obj_or_model if isinstance(obj_or_model, type) else type(obj_or_model)
    db = using or router.db_for_read(model)
    table = _table(model, db)
    if isinstance(obj_or_model, type):
        return _unsaved(model.objects.using(db).raw(f"SELECT * FROM bemi.table_at(NULL::{table}, %s)", [at]))
    found = _unsaved(model.objects.using(db).raw(
        f"SELECT r.* FROM bemi.row_at(%s::regclass, %s, %s) AS j(image), "
        f"jsonb_populate_record(NULL::{table}, j.image) AS r WHERE j.image IS NOT NULL",
        [table, str(obj_or_model.pk), at]))
    if not found:
        raise model.DoesNotExist(f"{model._meta.object_name} {obj_or_model.pk} did not exist at {at.isoformat()}")
    return found[0]


def revert(ids: list[int], on_conflict: str, using: str) -> list[dict[str, Any]]:
    """bemi.revert of these change ids on one database, in its current transaction (Django's
    autocommit makes it one of its own); what it did per row."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT * FROM bemi.revert(%s::bigint[], %s)", [ids, on_conflict])
        names = [column.name for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]
