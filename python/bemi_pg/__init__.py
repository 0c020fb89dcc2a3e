"""bemi for PostgreSQL: the Python client of the bemi extension.

    import bemi_pg
    with bemi_pg.with_context(conn, {"user_id": 7, "endpoint": "/todo"}):
        conn.execute("INSERT INTO todo (task) VALUES ('Sleep')")

The package: the transaction context (transaction), the ambient context (context) and the
statement comment that carries it (comment), time travel (timetravel) and revert (revert),
written once as steps (steps; trail_database for a trail kept in a database of its own); the
framework integrations (django/, sqlalchemy/, starlette); the ingest runtime (ingest/); the
command line (cli/); the shipped SQL scripts (scripts) and their plain install (install);
retention; and the demo (demo), loaded only when ``seed_example`` is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bemi_pg.context import context, current_context
from bemi_pg.revert import Previewed, Reverted, revert, revert_async, revert_preview
from bemi_pg.timetravel import (row_at, row_at_async, row_at_position, row_at_position_async, row_at_transaction,
                                row_at_transaction_async, row_versions, table_at, table_at_async, table_at_position,
                                table_at_position_async, table_at_transaction, table_at_transaction_async)
from bemi_pg.transaction import set_context, set_context_async, with_context

if TYPE_CHECKING:
    from bemi_pg.demo import seed_example

__all__ = [
    "context", "current_context", "seed_example", "set_context", "set_context_async", "with_context",
    "Previewed", "Reverted", "revert", "revert_async", "revert_preview", "row_at", "row_at_async",
    "row_at_position", "row_at_position_async", "row_at_transaction", "row_at_transaction_async", "row_versions",
    "table_at", "table_at_async", "table_at_position", "table_at_position_async", "table_at_transaction",
    "table_at_transaction_async",
]
__version__ = "1.0.0"


def __getattr__(name: str) -> Any:
    """``bemi_pg.seed_example``, imported from the demo on first use."""
    if name == "seed_example":
        from bemi_pg.demo import seed_example

        return seed_example
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
