"""The extension's SQL script as shipped inside this package, cut and checked with pglast."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import pglast
from pglast import ast

EXTENSION_ONLY = ("\\echo",)


def script(version: str = "1.0") -> str:
    """The text of ``bemi--VERSION.sql``."""
    return (resources.files("bemi_pg") / "sql" / f"bemi--{version}.sql").read_text(encoding="utf-8")


def statements(version: str = "1.0") -> list[str]:
    """The script's SQL statements, without the psql-only guard line."""
    body = "\n".join(line for line in script(version).splitlines() if not line.startswith(EXTENSION_ONLY))
    return [s.strip() for s in pglast.split(body)]


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
            pglast.parse_plpgsql(sql)
        settings = tuple(o.arg.name for o in stmt.options or () if o.defname == "set")
        found.append(Function(
            name=".".join(n.sval for n in stmt.funcname or ()),
            language=language,
            security_definer=bool(options.get("security") and options["security"].boolval),
            settings=settings,
        ))
    return found
