"""The extension's SQL scripts as shipped inside this package, cut and checked with pglast.

A script is named as PostgreSQL names it: ``bemi--1.0.sql`` installs version 1.0,
``bemi--1.0--1.1.sql`` updates 1.0 to 1.1. ``install_path`` gives the scripts CREATE EXTENSION
or ALTER EXTENSION UPDATE would run, and ``plain_statements`` their statements made runnable
without CREATE EXTENSION (what ``bemi-pg install`` runs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import pglast
from pglast import ast

EXTENSION = "bemi"
SCHEMA = "bemi"
EXTENSION_ONLY = ("\\echo",)
SCRIPT_NAME = re.compile(rf"^{EXTENSION}--([0-9.]+)(?:--([0-9.]+))?\.sql$")


def script(version: str = "1.0") -> str:
    """The text of ``bemi--VERSION.sql`` (VERSION may be an update, such as ``1.0--1.1``)."""
    return (resources.files("bemi_pg") / "sql" / f"{EXTENSION}--{version}.sql").read_text(encoding="utf-8")


def statements(version: str = "1.0") -> list[str]:
    """The script's SQL statements, without the psql-only guard line."""
    body = "\n".join(line for line in script(version).splitlines() if not line.startswith(EXTENSION_ONLY))
    return [s.strip() for s in pglast.split(body)]


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def scripts() -> list[str]:
    """Every shipped script, by its version part (``1.0``, ``1.0--1.1``), oldest first."""
    found = []
    for entry in (resources.files("bemi_pg") / "sql").iterdir():
        if match := SCRIPT_NAME.match(entry.name):
            found.append((version_key(match.group(2) or match.group(1)), match.group(2) is not None, entry.name))
    return [name[len(EXTENSION) + 2:-4] for *_, name in sorted(found)]


def updates() -> dict[str, str]:
    """The update scripts, as {from version: to version}."""
    return dict(tuple(name.split("--")) for name in scripts() if "--" in name)  # type: ignore[misc]


def latest_version() -> str:
    """The newest version the shipped scripts reach."""
    versions = {v for name in scripts() for v in name.split("--")}
    return max(versions, key=version_key)


def install_path(installed: str | None = None, target: str | None = None) -> list[str]:
    """The scripts that take an install from ``installed`` (None: nothing yet) to ``target``
    (default: the latest), in order: the newest base script at or below the target for a fresh
    install, then one update script per step. Raises ValueError when no path exists."""
    target = target or latest_version()
    steps = updates()
    if installed is None:
        bases = [name for name in scripts() if "--" not in name and version_key(name) <= version_key(target)]
        if not bases:
            raise ValueError(f"no script installs {EXTENSION} {target}")
        path, installed = [bases[-1]], bases[-1]
    else:
        path = []
    while installed != target:
        if installed not in steps or version_key(installed) > version_key(target):
            raise ValueError(f"no update path from {EXTENSION} {installed} to {target}")
        path.append(f"{installed}--{steps[installed]}")
        installed = steps[installed]
    return path


# pg_extension_config_dump() runs only inside CREATE EXTENSION: a plain install calls a harmless
# function of the same arity in its place, so statements that do more than mark a table (such
# as SELECT pg_extension_config_dump(p, '') FROM create_partitions(...)) keep their effects.
CONFIG_DUMP = re.compile(r"\b(?:pg_catalog\s*\.\s*)?pg_extension_config_dump\s*\(")
CONFIG_DUMP_STANDIN = "pg_catalog.num_nonnulls("


def plain_statements(version: str) -> list[str]:
    """The script's statements as a plain install runs them: without the guard line, with
    ``pg_extension_config_dump`` calls made harmless and ``@extschema@`` replaced by the schema."""
    return [CONFIG_DUMP.sub(CONFIG_DUMP_STANDIN, s).replace("@extschema@", SCHEMA) for s in statements(version)]


def check_plpgsql(sql: str) -> None:
    """Parses a PL/pgSQL function, so a syntax error fails here, not at install time.

    pglast's PL/pgSQL parser resolves schema-qualified types in pg_catalog and public only, so
    for that check the extension's own types (``bemi.staged_relations``) are named in public;
    it takes them for record, and refuses arrays of record, so their arrays are read as text[]."""
    try:
        pglast.parse_plpgsql(sql)
    except pglast.parser.ParseError as error:
        if "LookupExplicitNamespace" not in str(error):
            raise
        pglast.parse_plpgsql(re.sub(rf"\b{SCHEMA}\.", "public.", re.sub(rf"\b{SCHEMA}\.\w+\[\]", "pg_catalog.text[]", sql)))


@dataclass(frozen=True)
class Function:
    name: str
    language: str
    security_definer: bool
    settings: tuple[str, ...]


def functions(version: str = "1.0") -> list[Function]:
    """Every function the script creates, with its language, security and SET clauses.

    PL/pgSQL bodies are parsed too, so a syntax error in one fails here, not at install time.
    """
    found = []
    for sql in statements(version):
        stmt = pglast.parse_sql(sql)[0].stmt
        if not isinstance(stmt, ast.CreateFunctionStmt):
            continue
        options = {o.defname: o.arg for o in stmt.options or ()}
        language = options["language"].sval if "language" in options else "sql"
        if language == "plpgsql":
            check_plpgsql(sql)
        settings = tuple(o.arg.name for o in stmt.options or () if o.defname == "set")
        found.append(Function(
            name=".".join(n.sval for n in stmt.funcname or ()),
            language=language,
            security_definer=bool(options.get("security") and options["security"].boolval),
            settings=settings,
        ))
    return found
