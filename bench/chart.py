"""The chart of a run: each variant's cost relative to plain, from results JSON.

    python -m bench.chart bench/results/latest.json bench/results/latest.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"plain": "#9e9e9e", "full_identity": "#607d8b", "bemi": "#2e7d32",
          "row_trigger": "#ef6c00", "audit": "#c62828"}


def bars(ax: Any, rows: list[dict[str, Any]], labels: dict[str, str], title: str, ylabel: str,
         log: bool = False) -> None:
    keys = [k for k in COLORS if any(k in r["cells"] for r in rows)]
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        values = [r["cells"].get(key, {}).get("ratios", {}).get("plain", float("nan")) for r in rows]
        positions = [x + (i - (len(keys) - 1) / 2) * width for x in range(len(rows))]
        drawn = ax.bar(positions, values, width, label=labels.get(key, key), color=COLORS[key])
        ax.bar_label(drawn, labels=["" if v != v else f"{v:.2f}" for v in values], fontsize=6, padding=1)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)), [short(r["label"]) for r in rows], fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.legend(fontsize=7, ncols=len(keys), loc="upper left")
    if log:
        ax.set_yscale("log")
        ax.set_ylim(0.3, ax.get_ylim()[1] * 3)
    else:
        ax.set_ylim(0, max(1.3, ax.get_ylim()[1] * 1.15))


def short(label: str) -> str:
    return (label.replace("W1 OLTP tps, ", "W1 ").replace("W1-py tps, with_context vs conn.transaction()", "W1-py")
            .replace("W2 ", "").replace("INSERT multi-VALUES", "multi-VALUES").replace(" rows", "")
            .replace("synchronous_commit=off", "sync off").replace(", ", "\n"))


def draw(results: dict[str, Any], path: Path) -> None:
    labels = {"plain": "plain", "full_identity": "full identity", "bemi": "bemi",
              "row_trigger": "row-trigger emit", "audit": "audit table"}
    throughput = [r for r in results["rows"] if r["key"] in ("w1_sync_off", "w1_durable", "w1_py")]
    bulk = [r for r in results["rows"] if r["key"].startswith("w2_")]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 8))
    bars(top, throughput, labels, "Transactions per second relative to plain (higher is better)", "tps / plain")
    bars(bottom, bulk, labels, "Bulk statement time relative to plain (lower is better, log scale)", "time / plain",
         log=True)
    machine = results["machine"]
    figure.suptitle(f"bemi benchmark, {results['date']}, {machine['cores']} cores, PostgreSQL {machine['postgresql']}"
                    f"{' (quick run)' if results['mode'] == 'quick' else ''}", fontsize=11)
    figure.tight_layout()
    temporary = path.with_name(path.name + ".tmp")
    figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)
    temporary.replace(path)


if __name__ == "__main__":
    draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
