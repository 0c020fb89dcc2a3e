"""bemi_pg.django in a real Django project (tests/integrations/django_project), through Django's test
clients: every write of a request carries the request's context in each transaction mode."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from io import StringIO
from typing import Any

import psycopg
import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.db import connection, connections, transaction
from django.test import AsyncClient, Client

import bemi_pg
from bemi_pg.django.models import BemiChange
from bemi_pg.install import install
from tests.helpers.trail import changes, ingest
from tests.integrations.django_project.todos.models import Todo

Trail = list[tuple[str, str, dict[str, Any]]]


def trail(admin: psycopg.Connection[Any]) -> Trail:
    ingest(admin)
    return [(r["operation"], r["primary_key"], r["context"]) for r in changes(admin, "operation", "primary_key", "context")]


def work_trail(context: dict[str, Any]) -> Trail:
    return [("CREATE", "1", context), ("CREATE", "2", context), ("UPDATE", "1", context), ("DELETE", "2", context)]


def user(user_id: int, endpoint: str, method: str = "POST") -> dict[str, Any]:
    return {"user_id": user_id, "endpoint": endpoint, "method": method}


@pytest.fixture
def sent() -> Iterator[list[str]]:
    """The statements this thread's Django connection sends (after bemi's wrapper)."""
    statements: list[str] = []

    def record(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        yield statements


def run_async(requests: Callable[[], Awaitable[Any]]) -> Any:
    """Runs async requests, then closes the connection of the thread the ORM ran them in."""

    async def run() -> Any:
        try:
            return await requests()
        finally:
            await sync_to_async(connections.close_all)()

    return asyncio.run(run())


def test_migrate_creates_the_extension(database: dict[str, Any], admin: psycopg.Connection[Any]) -> None:
    admin.execute("DROP EXTENSION bemi CASCADE")
    call_command("migrate", verbosity=0)
    installed = admin.execute("SELECT extversion FROM pg_extension WHERE extname = 'bemi'").fetchone()
    assert installed == admin.execute(
        "SELECT default_version AS extversion FROM pg_available_extensions WHERE name = 'bemi'").fetchone()
    call_command("migrate", "bemi", "zero", verbosity=0)
    call_command("migrate", verbosity=0)


def test_migrate_leaves_a_plain_install_as_it_is(database: dict[str, Any], admin: psycopg.Connection[Any]) -> None:
    admin.execute("SELECT bemi.drop_slot()")
    admin.execute("DROP EXTENSION bemi CASCADE")
    admin.execute("DROP SCHEMA IF EXISTS bemi CASCADE")
    install(admin)
    call_command("migrate", verbosity=0)
    assert admin.execute("SELECT count(*) AS n FROM pg_extension WHERE extname = 'bemi'").fetchone() == {"n": 0}
    assert admin.execute("SELECT max(version) AS v FROM bemi.plain_install").fetchone() == {"v": "1.2"}
    assert BemiChange.objects.count() == 0


def test_bemi_track_command(database: dict[str, Any], admin: psycopg.Connection[Any]) -> None:
    call_command("migrate", verbosity=0)
    out = StringIO()
    call_command("bemi_track", "todos.Todo", stdout=out)
    assert out.getvalue() == "tracked todos_todo\n"
    call_command("bemi_track", "todos", stdout=StringIO())
    tracked = admin.execute('SELECT "table" FROM bemi.tracked ORDER BY 1').fetchall()
    assert [row["table"] for row in tracked] == ["todos_tag", "todos_todo", "todos_todo_tags"]
    call_command("bemi_track", "todos.Tag", "--untrack", stdout=StringIO())
    tracked = admin.execute('SELECT "table" FROM bemi.tracked ORDER BY 1').fetchall()
    assert [row["table"] for row in tracked] == ["todos_todo", "todos_todo_tags"]


@pytest.mark.parametrize("mode", ["autocommit", "atomic"])
def test_a_request_writes_with_its_context(
    project: dict[str, Any], admin: psycopg.Connection[Any], sent: list[str], mode: str
) -> None:
    response = Client().post(f"/todo/work/{mode}", headers={"X-User-Id": "7"})
    assert response.status_code == 200
    assert trail(admin) == work_trail(user(7, f"/todo/work/{mode}"))
    writes = [sql for sql in sent if sql.lstrip().startswith(("INSERT", "UPDATE", "DELETE"))]
    reads = [sql for sql in sent if sql.lstrip().startswith("SELECT")]
    assert writes and reads
    # A write in autocommit mode carries the context as a comment. In a transaction (atomic(),
    # and Django's own around delete()) the statements go out as they are: the context went
    # with the transaction's BEGIN, sent by bemi's wrapper in its own round trip.
    commented = [sql.split()[0] for sql in writes if "/*Bemi " in sql]
    assert commented == {"autocommit": ["INSERT", "INSERT", "UPDATE"], "atomic": []}[mode]
    assert not any("set_context" in sql for sql in sent)
    assert not any("/*Bemi" in sql for sql in reads)


def test_atomic_requests(project: dict[str, Any], admin: psycopg.Connection[Any]) -> None:
    project["ATOMIC_REQUESTS"] = True
    assert Client().post("/todo/work/autocommit", headers={"X-User-Id": "8"}).status_code == 200
    assert trail(admin) == work_trail(user(8, "/todo/work/autocommit"))


@pytest.mark.parametrize("atomic_requests", [False, True])
def test_reads_carry_no_comment(project: dict[str, Any], sent: list[str], atomic_requests: bool,
                               admin: psycopg.Connection[Any]) -> None:
    project["ATOMIC_REQUESTS"] = atomic_requests
    Todo.objects.create(id=1, task="Sleep")
    before = trail(admin)
    sent.clear()
    response = Client().get("/todo/", headers={"X-User-Id": "7"})
    # A request's transaction (ATOMIC_REQUESTS) has its context from BEGIN on, reads included;
    # in autocommit mode a read is sent as it is, and nothing sets a context.
    context = response.json()["context"]
    assert (context and json.loads(context)) == (user(7, "/todo/", "GET") if atomic_requests else None)
    assert response.json()["tasks"] == ["Sleep"]
    assert not any("/*Bemi" in sql for sql in sent)
    assert trail(admin) == before


def test_async_views(project: dict[str, Any], admin: psycopg.Connection[Any]) -> None:
    async def request() -> int:
        response = await AsyncClient().post("/todo/work/async", headers={"X-User-Id": "9"})
        return response.status_code

    assert run_async(request) == 200
    assert trail(admin) == work_trail(user(9, "/todo/work/async"))


def test_concurrent_async_requests_never_swap_contexts(project: dict[str, Any], admin: psycopg.Connection[Any]) -> None:
    # The ORM calls of all these requests share one thread, hence one connection, interleaved.
    async def requests() -> list[int]:
        client = AsyncClient()
        responses = await asyncio.gather(
            *(client.post(f"/todo/{n}/async", headers={"X-User-Id": str(n)}) for n in range(1, 11))
        )
        return [r.status_code for r in responses]

    assert run_async(requests) == [200] * 10
    rows = trail(admin)
    assert sorted((op, key) for op, key, _ in rows) == sorted(
        (op, str(n)) for n in range(1, 11) for op in ("CREATE", "UPDATE")
    )
    assert all(context == user(int(key), f"/todo/{key}/async") for _, key, context in rows)


def test_concurrent_threads_never_swap_contexts(project: dict[str, Any], admin: psycopg.Connection[Any]) -> None:
    barrier = threading.Barrier(8)
    failures: list[BaseException] = []

    def request(n: int) -> None:
        try:
            barrier.wait()
            assert Client().post(f"/todo/{n}", headers={"X-User-Id": str(n)}).status_code == 200
        except BaseException as error:  # reported below, in the test's thread
            failures.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=request, args=(n,)) for n in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sorted(trail(admin)) == sorted(("CREATE", str(n), user(n, f"/todo/{n}")) for n in range(1, 9))


def test_context_outside_requests(project: dict[str, Any], admin: psycopg.Connection[Any]) -> None:
    @bemi_pg.context(command="import_todos")
    def import_todos() -> None:
        Todo.objects.create(id=1, task="Sleep")
        with transaction.atomic(), bemi_pg.context({"batch": 2}):
            Todo.objects.create(id=2, task="Eat")
        Todo.objects.filter(id=1).update(task="Nap")

    with bemi_pg.context(worker="celery"):
        import_todos()
    Todo.objects.filter(id=2).delete()
    command = {"worker": "celery", "command": "import_todos"}
    assert trail(admin) == [
        ("CREATE", "1", command), ("CREATE", "2", {**command, "batch": 2}), ("UPDATE", "1", command), ("DELETE", "2", {}),
    ]


def test_a_reused_connection_carries_no_context(project: dict[str, Any], admin: psycopg.Connection[Any]) -> None:
    project["CONN_MAX_AGE"] = None
    assert Client().post("/todo/work/atomic", headers={"X-User-Id": "7"}).status_code == 200
    with transaction.atomic():
        Todo.objects.create(id=3, task="Repeat")
        with connection.cursor() as cursor:
            cursor.execute("SELECT bemi.context()")
            assert cursor.fetchone() == (None,)
    assert trail(admin)[-1] == ("CREATE", "3", {})


def test_bemi_change_queries(project: dict[str, Any], admin: psycopg.Connection[Any]) -> None:
    Client().post("/todo/work/atomic", headers={"X-User-Id": "7"})
    Client().post("/todo/3", headers={"X-User-Id": "5"})
    ingest(admin)
    sleep = Todo.objects.get(id=1)
    assert [c.operation for c in BemiChange.objects.for_instance(sleep)] == ["CREATE", "UPDATE"]
    update = BemiChange.objects.for_instance(sleep).updated().get()
    assert update.diff() == {"is_completed": (False, True)}
    assert update.context == user(7, "/todo/work/atomic")
    deleted = BemiChange.objects.for_model(Todo).deleted().get()
    assert (deleted.primary_key, deleted.before["task"], deleted.after) == ("2", "Eat", {})
    assert BemiChange.objects.for_model(Todo).created().with_context(user_id=5).get().after["task"] == "user 5"
    assert BemiChange.objects.with_before(task="Sleep", is_completed=False).get() == update
    assert BemiChange.objects.with_after(is_completed=True).count() == 1
    assert str(update) == "UPDATE public.todos_todo 1"
