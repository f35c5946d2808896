"""The CLI_STARTUP section of docs/benchmarks.md: how long ``ultrassl --help`` and each subcommand's
``--help`` take, from ``bench/cli_startup.py``'s JSON (this commit against a baseline commit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib import read_results

from .provenance import made_by

#: what every --help should stay under (the issue's goal)
GOAL_S = 1.0


def section(results: Path) -> str | None:
    doc = read_results(results / "cli_startup.json")
    return table(doc) if doc else None


def table(doc: dict[str, Any]) -> str:
    rows, this, base = doc["rows"], doc["commit"], doc["baseline_commit"]
    slowest = max(rows, key=lambda r: r["this_median_s"])
    load = (
        f" Load average (1, 5, 15 min) before {', '.join(f'{x:g}' for x in doc['load_average_before'])}, "
        f"after {', '.join(f'{x:g}' for x in doc['load_average_after'])}: other work on the machine "
        "slows every figure."
        if doc.get("load_average_before")
        else ""
    )
    lines = [
        "## Command line: `--help` start-up",
        "",
        f"{made_by(doc)} What: {doc['what']}; commit {this} against {base}.{load} `--help` needs no torch, "
        "scikit-learn or matplotlib: the command line imports them only when a command runs.",
        "",
        f"| command | {this} s (median) | {this} s (each run) | {base} s (median) |",
        "| --- | --- | --- | --- |",
        *(
            f"| `{r['command']}` | {r['this_median_s']:.2f} | {', '.join(f'{t:.2f}' for t in r['this_s'])} | "
            f"{r['baseline_median_s']:.2f} |"
            for r in rows
        ),
        "",
        f"The slowest at {this}: `{slowest['command']}`, {slowest['this_median_s']:.2f} s "
        + (
            f"(every `--help` under {GOAL_S:g} s)."
            if slowest["this_median_s"] < GOAL_S
            else f"(over the goal of {GOAL_S:g} s)."
        ),
    ]
    return "\n".join(lines)
