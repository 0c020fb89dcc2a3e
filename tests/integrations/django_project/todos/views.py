"""Views that write in each of Django's transaction modes, and one that only reads."""

from django.db import connection, transaction
from django.http import HttpRequest, JsonResponse

from tests.integrations.django_project.todos.models import Todo


def work(request: HttpRequest) -> JsonResponse:
    """Creates, updates and deletes rows: in autocommit mode unless ATOMIC_REQUESTS is on."""
    sleep = Todo.objects.create(id=1, task="Sleep")
    Todo.objects.create(id=2, task="Eat")
    sleep.is_completed = True
    sleep.save()
    Todo.objects.get(id=2).delete()
    return JsonResponse({"ok": True})


def work_atomic(request: HttpRequest) -> JsonResponse:
    with transaction.atomic():
        return work(request)


async def work_async(request: HttpRequest) -> JsonResponse:
    sleep = await Todo.objects.acreate(id=1, task="Sleep")
    await Todo.objects.acreate(id=2, task="Eat")
    await Todo.objects.filter(id=sleep.id).aupdate(is_completed=True)
    await (await Todo.objects.aget(id=2)).adelete()
    return JsonResponse({"ok": True})


def create(request: HttpRequest, todo_id: int) -> JsonResponse:
    Todo.objects.create(id=todo_id, task=f"user {request.headers['X-User-Id']}")
    return JsonResponse({"id": todo_id})


async def create_async(request: HttpRequest, todo_id: int) -> JsonResponse:
    todo = await Todo.objects.acreate(id=todo_id, task=f"user {request.headers['X-User-Id']}")
    todo.is_completed = True
    await todo.asave()
    return JsonResponse({"id": todo_id})


def todos(request: HttpRequest) -> JsonResponse:
    """Reads only; also says which context the current transaction holds (if any)."""
    tasks = list(Todo.objects.values_list("task", flat=True))
    with connection.cursor() as cursor:
        cursor.execute("SELECT bemi.context()")
        (context,) = cursor.fetchone()
    return JsonResponse({"tasks": tasks, "context": context})
