"""bemi_pg.django time travel and revert in the real Django project (tests/integrations/django_project)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connections, transaction
from django.test import Client

from bemi_pg.django import as_of
from bemi_pg.django.models import BemiChange
from tests.helpers.history import moment
from tests.helpers.trail import drain, ingest
from tests.integrations.django_project.todos.models import Todo


def test_as_of_an_instance_and_a_model(project: dict[str, Any], admin: psycopg.Connection[Any]) -> None:
    before = moment(admin)
    Todo.objects.create(id=1, task="Sleep")
    Todo.objects.create(id=2, task="Eat")
    at = moment(admin)
    Todo.objects.filter(id=1).update(task="Nap", is_completed=True)
    Todo.objects.filter(id=2).delete()
    ingest(admin)
    todo = Todo.objects.get(id=1)

    then = as_of(todo, at)
    assert (then.pk, then.task, then.is_completed) == (1, "Sleep", False)
    assert then._state.adding and todo.task == "Nap"
    assert sorted((t.pk, t.task) for t in as_of(Todo, at)) == [(1, "Sleep"), (2, "Eat")]
    with pytest.raises(Todo.DoesNotExist, match="did not exist at"):
        as_of(todo, before)
    # Saving what was read from the past writes it back.
    then.save()
    assert Todo.objects.get(id=1).task == "Sleep"


def test_change_revert_and_queryset_revert(project: dict[str, Any], admin: psycopg.Connection[Any]) -> None:
    assert Client().post("/todo/work/atomic", headers={"X-User-Id": "7"}).status_code == 200
    Todo.objects.create(id=5, task="Keep")
    ingest(admin)
    todo1 = Todo(id=1)
    history = BemiChange.objects.for_instance(todo1)
    assert [c.operation for c in history] == ["CREATE", "UPDATE"]
    assert [(c.problem, c.partial, c.previous_key) for c in history] == [(None, False, None)] * 2
    with transaction.atomic():
        done = history.last().revert()  # type: ignore[union-attr]
    assert [(d["primary_key"], d["action"]) for d in done] == [("1", "updated")]
    assert Todo.objects.get(id=1).is_completed is False

    # The whole request: todo 1 goes, todo 2 (created and deleted by it) stays gone, 5 stays.
    request = BemiChange.objects.with_context(user_id=7).exclude(table="todos_todo_tags")
    done = request.revert(on_conflict="overwrite")
    assert sorted((d["primary_key"], d["action"]) for d in done if d["table"] == "todos_todo") == [
        ("1", "deleted"), ("2", "unchanged")]
    assert sorted(Todo.objects.values_list("id", flat=True)) == [5]
    ingest(admin)
    reverts = BemiChange.objects.filter(context__has_key="bemi_revert")
    assert reverts.count() == 2


@pytest.fixture
def trail_alias(project: dict[str, Any], trail: str) -> Iterator[str]:
    """The database alias "trail": a trail database of its own."""
    connections.settings["trail"] = {**connections.settings["default"],
                                     "NAME": psycopg.conninfo.conninfo_to_dict(trail)["dbname"]}
    yield "trail"
    connections["trail"].close()
    del connections["trail"]
    del connections.settings["trail"]


def test_as_of_and_revert_with_a_trail_database(trail_alias: str, dsn: str, trail: str,
                                                admin: psycopg.Connection[Any]) -> None:
    Todo.objects.create(id=1, task="Sleep")
    Todo.objects.create(id=2, task="Eat")
    at = moment(admin)
    Todo.objects.filter(id=1).update(task="Nap", is_completed=True)
    Todo.objects.filter(id=2).delete()
    drain(dsn, trail)
    assert BemiChange.objects.count() == 0  # the source keeps no trail

    then = as_of(Todo.objects.get(id=1), at, trail=trail_alias)
    assert (then.pk, then.task, then.is_completed, then._state.adding) == (1, "Sleep", False, True)
    assert sorted((t.pk, t.task) for t in as_of(Todo, at, trail=trail_alias)) == [(1, "Sleep"), (2, "Eat")]
    with pytest.raises(Todo.DoesNotExist):
        as_of(Todo(id=3), at, trail=trail_alias)

    later = BemiChange.objects.using(trail_alias).filter(committed_at__gt=at)
    done = later.revert(source="default")
    assert sorted((r["primary_key"], r["action"]) for r in done) == [("1", "updated"), ("2", "inserted")]
    assert sorted(Todo.objects.values_list("id", "task", "is_completed")) == [(1, "Sleep", False), (2, "Eat", False)]
