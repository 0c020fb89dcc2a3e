"""SQLAlchemy integration: the writes of an Engine or AsyncEngine carry the ambient context,
the trail as a mapped class, and time travel.

    engine = create_engine("postgresql+psycopg://...")
    bemi_pg.sqlalchemy.register(engine)
    with bemi_pg.context({"user_id": 7}):
        with Session(engine) as session, session.begin():
            session.add(Todo(task="Sleep"))

- ``register(engine)`` / ``unregister(engine)``: each write carries the context as a trailing
  comment (bemi_pg.sqlalchemy.statements). Needs the psycopg (3) dialect.
- ``Change``: one row of bemi.changes as a mapped class (bemi_pg.sqlalchemy.models).
- ``as_of(session, Model, key, at)``: a row as it was; ``table_as_of(session, Model, at)``:
  the whole table; ``revert(session, transaction_id=...)``: changes undone in the session's
  transaction; ``versions(session, Model, key)``: a row's versions (bemi_pg.sqlalchemy.history).
"""

from bemi_pg.sqlalchemy.history import as_of, revert, table_as_of, versions
from bemi_pg.sqlalchemy.models import Change
from bemi_pg.sqlalchemy.statements import register, unregister

__all__ = ["Change", "as_of", "register", "revert", "table_as_of", "unregister", "versions"]
