"""bemi_pg.django time travel and revert in the real Django project (tests/integrations/django_project)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from io import StringIO
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.db import connections, transaction
from django.test import Client

from bemi_pg.django import as_of, versions
from bemi_pg.django.models import BemiChange
from tests.helpers.history import TYPED_KEYS, moment
from tests.helpers.trail import drain, ingest
from tests.integrations.django_project.keys.models import ByDay, ByDecimal, ByMoment, ByPair, ByUuid
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


KEYS = list(zip((ByUuid, ByDecimal, ByMoment, ByDay), TYPED_KEYS))


@pytest.mark.parametrize(("model", "key"), KEYS, ids=[model.__name__ for model, _ in KEYS])
def test_typed_keys_as_of_changes_and_versions(project: dict[str, Any], admin: psycopg.Connection[Any],
                                               model: Any, key: Any) -> None:
    """UUID, Decimal, datetime and date primary keys name their row's history, however the
    instance holds its key: str(pk) is not the trail's text of it."""
    call_command("bemi_track", "keys", stdout=StringIO())
    before = moment(admin)
    obj = model.objects.create(id=key, v="first")
    at = moment(admin)
    model.objects.filter(pk=key).update(v="second")
    ingest(admin)

    until = admin.execute("SELECT bemi.ingested_until() AS u").fetchone()["u"]  # type: ignore[index]
    assert as_of(obj, at).v == "first" and as_of(model.objects.get(pk=key), until).v == "second"
    with pytest.raises(model.DoesNotExist):
        as_of(obj, before)
    assert [(c.operation, c.after["v"]) for c in BemiChange.objects.for_instance(obj).order_by("id")] == [
        ("CREATE", "first"), ("UPDATE", "second")]
    found = versions(obj)
    assert [(v["instance"].v, v["instance"].pk == key, v["valid_to"] is None) for v in found] == [
        ("first", True, False), ("second", True, True)]
    assert found[0]["valid_to"] == found[1]["valid_from"] > at
    assert found[0]["primary_key"] == found[1]["primary_key"] == BemiChange.objects.for_instance(obj)[0].primary_key
    assert found[0]["instance"]._state.adding


def test_changes_of_a_composite_key(project: dict[str, Any], admin: psycopg.Connection[Any]) -> None:
    call_command("bemi_track", "keys", stdout=StringIO())
    pair = ByPair.objects.create(day=date(2020, 1, 1), n=7, v="first")
    ByPair.objects.create(day=date(2020, 1, 1), n=8, v="other")
    ByPair.objects.filter(n=7).update(v="second")
    ingest(admin)
    history = BemiChange.objects.for_instance(pair).order_by("id")
    assert [(c.primary_key, c.after["v"]) for c in history] == [('["2020-01-01", 7]', "first"), ('["2020-01-01", 7]', "second")]
