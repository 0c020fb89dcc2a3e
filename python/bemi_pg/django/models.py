"""BemiChange: the audit trail (bemi.changes) as an unmanaged, read-only model.

    BemiChange.objects.for_instance(todo)             # every change of one row, oldest first
    BemiChange.objects.for_model(Todo).updated()       # created() / updated() / deleted()
    BemiChange.objects.with_context(user_id=7)         # context @> {...}, served by its GIN index
    BemiChange.objects.with_before(task="Sleep")       # and with_after(...)
    change.diff()                                      # {"is_completed": (False, True)}
    change.revert()                                    # undoes it (bemi.revert; docs/time-travel.md)
    BemiChange.objects.with_context(request_id="r-42").revert()   # undoes a whole request
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import models

from bemi_pg.django.history import revert, trail_key


class BemiChangeQuerySet(models.QuerySet["BemiChange"]):
    def for_model(self, model: type[models.Model]) -> BemiChangeQuerySet:
        """The changes of a model's table."""
        return self.filter(table=model._meta.db_table)

    def for_instance(self, instance: models.Model) -> BemiChangeQuerySet:
        """The changes of one row, identified by its model's table and primary key, compared as
        values of the key's types (its text as the trail writes it: bemi_pg.django.history.trail_key,
        read in the model's database)."""
        return self.for_model(type(instance)).filter(primary_key=trail_key(instance))

    def created(self) -> BemiChangeQuerySet:
        return self.filter(operation=BemiChange.Operation.CREATE)

    def updated(self) -> BemiChangeQuerySet:
        return self.filter(operation=BemiChange.Operation.UPDATE)

    def deleted(self) -> BemiChangeQuerySet:
        return self.filter(operation=BemiChange.Operation.DELETE)

    def with_context(self, match_all: bool = False, **values: Any) -> BemiChangeQuerySet:
        """Changes whose context holds all these keys and values. With no values it would match
        every change (and a revert of it would undo the whole trail): refused unless match_all."""
        if not values and not match_all:
            raise ValueError("bemi: with_context() with no values matches every change; "
                             "name the context (with_context(request_id=...)) or pass match_all=True")
        return self.filter(context__contains=values)

    def with_before(self, **values: Any) -> BemiChangeQuerySet:
        """Changes whose row before held all these column values."""
        return self.filter(before__contains=values)

    def with_after(self, **values: Any) -> BemiChangeQuerySet:
        """Changes whose row after held all these column values."""
        return self.filter(after__contains=values)

    def revert(self, on_conflict: str = "error", source: str | None = None, match_all: bool = False) -> list[dict[str, Any]]:
        """Undoes the net effect of these changes on each row (bemi.revert), in the current
        transaction; what it did per row: change_id, schema, table, primary_key, action.
        source: the alias of the tables' database, when these changes are read from a trail
        database (``BemiChange.objects.using("trail")``). An unfiltered queryset (the whole
        trail) is refused unless match_all."""
        if not self.query.where and not match_all:
            raise ValueError("bemi: this queryset is not filtered, so its revert would undo the whole trail; "
                             "filter it or pass match_all=True")
        return revert(list(self.values_list("id", flat=True)), on_conflict, self.db, source)


class BemiChange(models.Model):
    class Operation(models.TextChoices):
        CREATE = "CREATE"
        UPDATE = "UPDATE"
        DELETE = "DELETE"
        TRUNCATE = "TRUNCATE"

    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    database: models.TextField[str, str] = models.TextField()
    schema: models.TextField[str, str] = models.TextField()
    table: models.TextField[str, str] = models.TextField()
    primary_key: models.TextField[str | None, str | None] = models.TextField(null=True)
    operation: models.TextField[str, str] = models.TextField(choices=Operation.choices)
    before = models.JSONField()
    after = models.JSONField()
    context = models.JSONField()
    committed_at: models.DateTimeField[datetime, datetime] = models.DateTimeField()
    queued_at: models.DateTimeField[datetime, datetime] = models.DateTimeField()
    transaction_id: models.BigIntegerField[int, int] = models.BigIntegerField()
    position: models.TextField[str, str] = models.TextField()
    ordinal: models.IntegerField[int, int] = models.IntegerField()
    problem: models.TextField[str | None, str | None] = models.TextField(null=True)
    partial: models.BooleanField[bool, bool] = models.BooleanField(default=False)
    previous_key: models.TextField[str | None, str | None] = models.TextField(null=True)

    objects = BemiChangeQuerySet.as_manager()

    class Meta:
        managed = False
        db_table = '"bemi"."changes"'
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.operation} {self.schema}.{self.table} {self.primary_key}"

    def diff(self) -> dict[str, tuple[Any, Any]]:
        """The columns that differ between before and after: {column: (before, after)}."""
        keys = list(self.before) + [key for key in self.after if key not in self.before]
        return {
            key: (self.before.get(key), self.after.get(key))
            for key in keys
            if self.before.get(key) != self.after.get(key)
        }

    def revert(self, on_conflict: str = "error", source: str | None = None) -> list[dict[str, Any]]:
        """Undoes this change (bemi.revert), in the current transaction (source: as for the
        queryset's revert)."""
        return revert([self.id], on_conflict, self._state.db or "default", source)
