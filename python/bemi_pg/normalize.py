"""The text of a write statement as it may go into a context: normalized by pglast, so
literals become placeholders ($1, $2, ...) and no value of the statement reaches the trail.

    normalized("INSERT INTO todo (task) VALUES (%s)", bound=True)
    -> 'INSERT INTO todo (task) VALUES ($1)'

Driver placeholders (``%s``, ``%(name)s``, psycopg's ``%b``/``%t``) are numbered the way
PostgreSQL numbers parameters before pglast reads the text. Results are cached per text, so
an ORM's repeated statements are normalized once.
"""

from __future__ import annotations

import functools
import itertools
import re

from pglast.parser import ParseError, normalize

# Longer normalized statements are cut here (a multi-row INSERT of an ORM's bulk create can
# be megabytes); cutting a normalized text can reveal nothing.
MAX_CHARACTERS = 2000

_PLACEHOLDER = re.compile(r"%(?:\(([^)]*)\))?[sbt]|%%")


def _numbered(statement: str) -> str:
    """Driver placeholders as $n, in order of first appearance; %% as %."""
    numbers = itertools.count(1)
    names: dict[str, str] = {}

    def number(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        name = match.group(1)
        if name is None:
            return f"${next(numbers)}"
        if name not in names:
            names[name] = f"${next(numbers)}"
        return names[name]

    return _PLACEHOLDER.sub(number, statement)


@functools.lru_cache(maxsize=512)
def normalized(statement: str, bound: bool) -> str | None:
    """The statement with every literal replaced by a placeholder; None when pglast cannot
    parse it (then nothing of it is kept). ``bound``: the statement has driver placeholders
    (it is sent with parameters), so ``%s`` and ``%%`` are the driver's, not SQL."""
    try:
        text = normalize(_numbered(statement) if bound else statement).strip()
    except ParseError:
        return None
    return text if len(text) <= MAX_CHARACTERS else text[:MAX_CHARACTERS] + "..."
