"""What a run found: rows of (workload x variant) values with their ratios, and the targets.

The same data is printed as a table, written as JSON and drawn as a chart.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.variants import ALL


@dataclass
class Cell:
    value: float
    ratios: dict[str, float] = field(default_factory=dict)  # {"plain": 0.93, ...}
    samples: list[float] = field(default_factory=list)  # every round, when there were rounds


@dataclass
class Row:
    key: str  # stable name, e.g. "w1_sync_off"
    label: str  # as printed, e.g. "W1 OLTP tps, synchronous_commit=off"
    unit: str
    better: str  # "higher" or "lower"
    ratio_to: str = ""  # what the ratios in the cells are to, e.g. "plain, full identity"
    cells: dict[str, Cell] = field(default_factory=dict)  # variant key (or another column) -> cell


@dataclass
class Target:
    workload: str
    goal: str
    measured: str
    met: bool
    missed_by: str = ""  # for a bound on one number: how far short of it, e.g. "0.05 (6 %)"


@dataclass
class Results:
    mode: str
    date: str
    machine: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def row(self, key: str, label: str, unit: str, better: str = "higher", ratio_to: str = "") -> Row:
        row = Row(key, label, unit, better, ratio_to)
        self.rows.append(row)
        return row

    def target(self, workload: str, goal: str, measured: str, met: bool) -> None:
        self.targets.append(Target(workload, goal, measured, met))

    def bound(self, workload: str, goal: str, measured: str, value: float, limit: float, *,
              at_most: bool = False) -> None:
        """A target that bounds one number (at least ``limit``, or at most): met, or missed by
        how much, as a difference and as a share of the limit."""
        met = value <= limit if at_most else value >= limit
        gap = abs(value - limit)
        missed_by = "" if met else f"{format_value(gap, '')} ({gap / abs(limit):.0%})"
        self.targets.append(Target(workload, goal, measured, met, missed_by))

    def write_json(self, path: Path) -> None:
        write_atomically(path, json.dumps(asdict(self), indent=2, default=float) + "\n")


def write_atomically(path: Path, text: str) -> None:
    """Writes through a temporary file, so a reader never sees half a file (and a file
    owned by another user in a directory we own is replaced, not refused)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------
# the table

def format_value(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.3f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def format_cell(cell: Cell | None, unit: str) -> str:
    if cell is None:
        return "-"
    ratios = " ".join(f"x{r:.2f}" for r in cell.ratios.values())
    return f"{format_value(cell.value, unit)} ({ratios})" if ratios else format_value(cell.value, unit)


def columns(results: Results) -> list[tuple[str, str]]:
    """(key, label) of the table's columns: the variants, then any other column used."""
    keys = [(v.key, v.label) for v in ALL]
    extra = [k for row in results.rows for k in row.cells if k not in {v.key for v in ALL}]
    return keys + [(k, k) for k in dict.fromkeys(extra)]


def table(results: Results) -> str:
    cols = columns(results)
    header = ["workload", "unit", "(ratio to)", *(label for _, label in cols)]
    body = [[row.label, row.unit, row.ratio_to, *(format_cell(row.cells.get(k), row.unit) for k, _ in cols)]
            for row in results.rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(header, widths)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def targets_table(results: Results) -> str:
    rows = [["target", "goal", "measured", "", "missed by"]] + [
        [t.workload, t.goal, t.measured, "met" if t.met else "MISSED", t.missed_by] for t in results.targets]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join(" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def markdown(results: Results) -> str:
    """The results as Markdown tables, for docs/benchmarks.md."""
    cols = columns(results)
    out = [f"| workload | unit | (ratio to) | {' | '.join(label for _, label in cols)} |",
           "|---|---|---|" + "---|" * len(cols)]
    for row in results.rows:
        out.append(f"| {row.label} | {row.unit} | {row.ratio_to} | "
                   + " | ".join(format_cell(row.cells.get(k), row.unit) for k, _ in cols) + " |")
    out += ["", "| target | goal | measured | | missed by |", "|---|---|---|---|---|"]
    out += [f"| {t.workload} | {t.goal} | {t.measured} | {'met' if t.met else '**missed**'} | {t.missed_by} |"
            for t in results.targets]
    return "\n".join(out) + "\n"
