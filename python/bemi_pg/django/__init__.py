"""Django integration: an installable app (``INSTALLED_APPS += ["bemi_pg.django"]``).

- ``python manage.py migrate`` creates the extension; ``python manage.py bemi_track`` tracks
  the tables of an app's models (or of named models).
- ``MIDDLEWARE += ["bemi_pg.django.BemiMiddleware"]`` with ``BEMI_CONTEXT_FUNCTION`` (the
  dotted path of a function of the request returning a dict): every write a request makes
  carries its result, in autocommit mode, in ``transaction.atomic()`` and under
  ``ATOMIC_REQUESTS``. Outside requests, ``bemi_pg.context({...})`` does the same.
- ``bemi_pg.django.models.BemiChange``: the audit trail as an unmanaged model, with
  ``change.revert()``; ``bemi_pg.django.as_of(obj_or_model, at)``: time travel;
  ``bemi_pg.django.versions(obj)``: a row's versions.
"""

from bemi_pg.django.history import as_of, versions
from bemi_pg.django.middleware import BemiMiddleware

__all__ = ["BemiMiddleware", "as_of", "versions"]
