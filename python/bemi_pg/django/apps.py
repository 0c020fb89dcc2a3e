"""The app: once Django is ready, every new PostgreSQL connection gets the context wrapper."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

from bemi_pg.django.statements import install


class BemiConfig(AppConfig):
    name = "bemi_pg.django"
    label = "bemi"
    verbose_name = "bemi change tracking"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        connection_created.connect(_on_connection_created, dispatch_uid="bemi_pg.django")


def _on_connection_created(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    install(connection)
