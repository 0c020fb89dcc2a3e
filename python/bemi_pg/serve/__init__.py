"""bemi-pg serve: a web page over the trail, to browse, compare and revert history.

Pages (shareable URLs): recent changes with filters, one row's timeline with field-level diffs
and "as it was at", a transaction's and a request's changes grouped by table, a table as it was
at a moment, a live tail; revert previews and confirmation (--allow-revert). Every request is
signed in with a PostgreSQL role (its queries run with that role's privileges) or a read-only
token. docs/serve.md; ``bemi-pg serve`` runs it on uvicorn, ``create_app`` mounts it anywhere.
"""

from bemi_pg.serve.app import create_app
from bemi_pg.serve.web import Refused, Settings

__all__ = ["Refused", "Settings", "create_app"]
