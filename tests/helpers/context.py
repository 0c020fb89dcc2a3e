"""The two ways SQL sets the context of a transaction: ``bemi.set_context`` (a function taking
jsonb) and ``bemi.use_context`` (the procedure bemi_pg.with_context sends, taking text). The
tests of what a context means run with each (``@setters``)."""

from __future__ import annotations

import pytest

SET_CONTEXT = "SELECT bemi.set_context(%s)"
USE_CONTEXT = "CALL bemi.use_context(%s)"

setters = pytest.mark.parametrize("setter", [SET_CONTEXT, USE_CONTEXT], ids=["set_context", "use_context"])
