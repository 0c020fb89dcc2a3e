"""python manage.py bemi_track APP_LABEL|APP_LABEL.Model ...: tracks the models' tables.

An app label tracks every concrete model of the app (many-to-many tables included); a
model label tracks that model's table. Idempotent; ``--untrack`` stops tracking.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections, models


class Command(BaseCommand):
    help = "Tracks the tables of an app's models, or of named models, with bemi."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("labels", nargs="+", metavar="app_label[.ModelName]")
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)
        parser.add_argument("--untrack", action="store_true", help="stop tracking instead")

    def handle(self, *args: Any, **options: Any) -> None:
        connection = connections[options["database"]]
        function = "bemi.untrack" if options["untrack"] else "bemi.track"
        with connection.cursor() as cursor:
            for model in tracked_models(options["labels"]):
                table = connection.ops.quote_name(model._meta.db_table)
                cursor.execute(f"SELECT {function}(%s::regclass)", [table])
                self.stdout.write(f"{'untracked' if options['untrack'] else 'tracked'} {model._meta.db_table}")


def tracked_models(labels: list[str]) -> list[type[models.Model]]:
    """The concrete, managed models the labels name, each once, in order."""
    found: dict[str, type[models.Model]] = {}
    for label in labels:
        try:
            if "." in label:
                chosen = [apps.get_model(label)]
            else:
                chosen = list(apps.get_app_config(label).get_models(include_auto_created=True))
        except LookupError as error:
            raise CommandError(f"bemi: {error}") from error
        for model in chosen:
            if model._meta.managed and not model._meta.proxy:
                found.setdefault(model._meta.db_table, model)
    return list(found.values())
