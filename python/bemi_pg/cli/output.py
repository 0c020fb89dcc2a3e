"""What the command line prints: progress lines (unless -q; on stderr under --json), and rows
of the trail as psql prints them, fitted to the terminal, or as JSON lines whose numbers are
exactly those of the trail (Decimal, never float)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from bemi_pg.cli.errors import Failure

TRAIL_COLUMNS = ("primary_key", "table", "operation", "before", "after", "context", "committed_at")


def say(args: argparse.Namespace, message: str) -> None:
    """A progress line: on stdout, or on stderr when stdout is for --json; none with -q."""
    if not args.quiet:
        print(message, flush=True, file=sys.stderr if getattr(args, "json", False) else sys.stdout)


def confirm(args: argparse.Namespace, question: str) -> bool:
    """Asks on the terminal before something that cannot be undone; --yes answers for it.
    Without a terminal and without --yes it refuses (a script must say --yes)."""
    if getattr(args, "yes", False):
        return True
    if not sys.stdin.isatty():
        raise Failure(f"{question} Not confirmed: there is no terminal to ask on, pass --yes")
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def iso(value: Any) -> str | None:
    """A timestamp as ISO 8601 (None stays None)."""
    return None if value is None else value.isoformat()


def to_json(value: Any) -> str:
    """JSON text with numbers exactly as they are: a Decimal as written (10.50 stays 10.50,
    12345678901234567890.123456789 keeps every digit); timestamps in ISO 8601; anything else
    that JSON has no type for as its text."""
    if isinstance(value, Decimal):
        return str(value) if value.is_finite() else json.dumps(str(value))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    if value is None or isinstance(value, (str, int, float, bool)):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value.isoformat() if hasattr(value, "isoformat") else str(value), ensure_ascii=False)


def json_row(row: dict[str, Any]) -> str:
    """A stored change as one line of JSON: every column, timestamps in ISO 8601."""
    return to_json(row)


def print_trail(rows: Sequence[dict[str, Any]], as_json: bool = False, columns: Sequence[str] = TRAIL_COLUMNS) -> None:
    if as_json:
        for row in rows:
            print(json_row(row))
        return
    cells = [[cell(row[c]) for c in columns] for row in rows]
    widths = fit_widths([max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)],
                        [len(c) for c in columns], terminal_width())
    print(" " + " | ".join(clip(c, w).ljust(w) for c, w in zip(columns, widths)))
    print("-" + "-+-".join("-" * w for w in widths) + "-")
    for r in cells:
        print(" " + " | ".join(clip(v, w).ljust(w) for v, w in zip(r, widths)))
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


def terminal_width() -> int | None:
    """The width to fit tables in: $COLUMNS, else the terminal's; None when output goes to a pipe."""
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def fit_widths(widths: list[int], headers: list[int], total: int | None) -> list[int]:
    """Column widths whose table (" a | b ") fits in total characters: the widest column gives
    up a character at a time, down to its header's width, then (a narrow terminal) to 3."""
    widths = list(widths)
    if total is None:
        return widths
    for floor in (headers, [3] * len(widths)):
        while sum(widths) + 3 * len(widths) - 1 > total:
            shrinkable = [i for i, w in enumerate(widths) if w > max(floor[i], 3)]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda i: widths[i])
            widths[widest] -= 1
    return widths


def clip(value: str, width: int) -> str:
    return value if len(value) <= width else value[: width - 1] + "…"


def cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return to_json(value)
    return "" if value is None else str(value).replace("\n", "\\n")
