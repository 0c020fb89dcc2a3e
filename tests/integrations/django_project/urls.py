from django.urls import path

from tests.integrations.django_project.todos import views

urlpatterns = [
    path("todo/", views.todos),
    path("todo/work/autocommit", views.work),
    path("todo/work/atomic", views.work_atomic),
    path("todo/work/async", views.work_async),
    path("todo/<int:todo_id>", views.create),
    path("todo/<int:todo_id>/async", views.create_async),
]
