"""Prepares an extension script for pgspot, which reads plain SQL only.

Drops the psql guard line (``\\echo ... \\quit``) and rewrites SQL-standard function bodies
(``RETURN expr`` and ``BEGIN ATOMIC ... END``, which pgspot 0.9 cannot parse) into the
equivalent ``AS $$ ... $$`` bodies, so pgspot still checks every statement inside them.
Usage: python tools/pgspot_input.py SCRIPT > OUTPUT
"""

from __future__ import annotations

import re
import sys

import pglast

GUARD = re.compile(r"^\\echo .*\\quit$", re.MULTILINE)
ATOMIC = re.compile(r"^BEGIN ATOMIC\n(.*)^END$", re.MULTILINE | re.DOTALL)
RETURN = re.compile(r"^RETURN (.*)$", re.MULTILINE | re.DOTALL)


def plain_body(statement: str) -> str:
    if not re.search(r"^CREATE (FUNCTION|PROCEDURE) ", statement, re.MULTILINE):
        return statement
    statement = ATOMIC.sub(lambda m: f"AS $pgspot$\n{m.group(1)}$pgspot$", statement, count=1)
    return RETURN.sub(lambda m: f"AS $pgspot$ SELECT {m.group(1)} $pgspot$", statement, count=1)


def main(path: str) -> None:
    with open(path, encoding="utf-8") as script:
        text = GUARD.sub("", script.read())
    for statement in pglast.split(text):
        print(plain_body(statement) + ";\n")


if __name__ == "__main__":
    main(sys.argv[1])
