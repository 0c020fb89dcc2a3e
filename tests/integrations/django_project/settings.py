"""The Django project of the tests: a todo app behind BemiMiddleware.

The database settings are filled in per test (a fresh database each time)."""

SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
USE_TZ = True
# Django exports TIME_ZONE as TZ for the whole test process; keep it UTC for every server and tool.
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.integrations.django_project.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = ["bemi_pg.django", "tests.integrations.django_project.todos", "tests.integrations.django_project.keys"]
MIDDLEWARE = ["bemi_pg.django.BemiMiddleware"]
BEMI_CONTEXT_FUNCTION = "tests.integrations.django_project.context.get_bemi_context"
# The tests check contexts exactly, so without the statement's SQL (on by default);
# tests/integrations/test_round_trips.py turns it on.
BEMI_CONTEXT_SQL = False

DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "set_per_test"}}
