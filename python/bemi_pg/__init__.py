"""bemi for PostgreSQL: the Python client of the bemi extension.

    import bemi_pg
    with bemi_pg.with_context(conn, {"user_id": 7, "endpoint": "/todo"}):
        conn.execute("INSERT INTO todo (task) VALUES ('Sleep')")
"""

from bemi_pg.client import set_context, set_context_async, with_context
from bemi_pg.context import context, current_context
from bemi_pg.demo import seed_example
from bemi_pg.revert import Reverted, revert, revert_async
from bemi_pg.timetravel import row_at, row_at_async, table_at, table_at_async

__all__ = [
    "context", "current_context", "seed_example", "set_context", "set_context_async", "with_context",
    "Reverted", "revert", "revert_async", "row_at", "row_at_async", "table_at", "table_at_async",
]
__version__ = "1.0.0"
