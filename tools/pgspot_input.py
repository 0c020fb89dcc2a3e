"""Prepares an extension script for pgspot, which reads plain SQL only.

Drops the psql guard line (``\\echo ... \\quit``) and rewrites SQL-standard function bodies
(``RETURN expr`` and ``BEGIN ATOMIC ... END``, which pgspot 0.9 cannot parse) into the
equivalent ``AS $$ ... $$`` bodies, so pgspot still checks every statement inside them.

CREATE EXTENSION runs the script with the extension's schema created (``schema = bemi`` in
the control file) and ``search_path`` set to it, after the implicit pg_catalog: the input
starts with exactly that, so pgspot judges the statements under the path they really run
with. An update script (``bemi--1.0--1.1.sql``) is not standalone: ALTER EXTENSION UPDATE runs
it under the same path, in the schema the extension already owns, which the same first lines
stand for; objects it only alters or calls come from the earlier scripts, which are linted
on their own. A SQL-standard body is bound when it is created, under that path, not the caller's;
a ``$$`` body is bound at each call. So a rewritten body carries the path it was bound
under as a SET clause, and ``$$`` bodies keep whatever the script gave them.
Usage: python tools/pgspot_input.py SCRIPT > OUTPUT
"""

from __future__ import annotations

import re
import sys

import pglast

GUARD = re.compile(r"^\\echo .*\\quit$", re.MULTILINE)
ATOMIC = re.compile(r"^BEGIN ATOMIC\n(.*)^END$", re.MULTILINE | re.DOTALL)
RETURN = re.compile(r"^RETURN (.*)$", re.MULTILINE | re.DOTALL)
SEARCH_PATH = re.compile(r"SET search_path = ([^;\n]*)")
# What CREATE EXTENSION does before it runs the script.
EXTENSION_SCHEMA = "bemi"
CREATE_EXTENSION_PATH = f"pg_catalog, {EXTENSION_SCHEMA}, pg_temp"


def plain_body(statement: str, search_path: str | None) -> str:
    if not re.search(r"^CREATE (OR REPLACE )?(FUNCTION|PROCEDURE) ", statement, re.MULTILINE):
        return statement
    pinned = SEARCH_PATH.search(statement)  # a SET clause of its own already binds the body
    bound = f"SET search_path = {search_path}\n" if search_path and not pinned else ""
    statement = ATOMIC.sub(lambda m: f"{bound}AS $pgspot$\n{m.group(1)}$pgspot$", statement, count=1)
    return RETURN.sub(lambda m: f"{bound}AS $pgspot$ SELECT {m.group(1)} $pgspot$", statement, count=1)


def main(path: str) -> None:
    with open(path, encoding="utf-8") as script:
        text = GUARD.sub("", script.read())
    print(f"CREATE SCHEMA {EXTENSION_SCHEMA};\nSET search_path = {CREATE_EXTENSION_PATH};\n")
    search_path = CREATE_EXTENSION_PATH
    for statement in pglast.split(text):
        code = "\n".join(line for line in statement.splitlines() if not line.startswith("--")).strip()
        if pinned := SEARCH_PATH.fullmatch(code):
            search_path = pinned.group(1)
        print(plain_body(statement, search_path) + ";\n")


if __name__ == "__main__":
    main(sys.argv[1])
