"""The README's BENCHMARK_HEADLINE section: what pre-training is worth per task, drawn from the full
table of ``ultrassl benchmark`` (``bench/results/benchmark_suite.json``) and nothing else.

One row per task: its main protocol (the linear probe for classification, fine-tuning for segmentation),
the pre-trained encoder with the largest lift over its random twin, that lift with its interval and
verdict, and how many methods' lifts hold across the task's table (Holm). A ``--quick`` run is a first
look, not a result: it draws no headline, and the section says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib import read_results

from . import benchmark_suite as suite

#: the protocol a task's headline is read from, by kind of task
MAIN_PROTOCOL = {"classify": "linear", "segment": "finetune"}
#: the results page, from the README
PAGE_LINK = "docs/benchmark-results.md"


def section(results: Path) -> str | None:
    doc = read_results(results / suite.RESULTS_NAME)
    return markdown(doc) if doc else None


def markdown(doc: dict[str, Any]) -> str:
    design = doc.get("design") or {}
    if (doc.get("design_options") or {}).get("quick") or design.get("quick"):
        return (
            f"The [results page]({PAGE_LINK}) holds `--quick` runs so far: a first look, not a result, "
            "so this README draws no headline from them yet."
        )
    rows = [row(doc, task) for task in tasks(doc)]
    folds = design.get("folds") or []
    lines = [
        f"What pre-training is worth, from the [benchmark's full table]({PAGE_LINK}): on "
        f"{len(folds)} folds that keep patients (BUSI: its duplicate groups) apart, each method's lift over a "
        "random encoder of its architecture, paired by fold, in points with its 95 % interval; "
        "'holds' counts the lifts above zero after Holm's correction over the task's table.",
        "",
        *suite.table(["task", "best pre-trained encoder", "its lift", "methods whose lift holds"], rows),
    ]
    return "\n".join(lines)


def tasks(doc: dict[str, Any]) -> list[str]:
    """The tasks with lifts, in the JSON's order."""
    lifts = doc.get("lifts") or {}
    order = [*(doc.get("tasks") or {}), *sorted(lifts)]
    return [t for t in dict.fromkeys(order) if lifts.get(t)]


def row(doc: dict[str, Any], task: str) -> list[str]:
    """``task (protocol, metric) | encoder | lift cell | k of n`` for one task."""
    protocol = MAIN_PROTOCOL[suite.task_kind(doc, task)]
    found = {
        enc: lift
        for enc in (doc.get("lifts") or {}).get(task, {})
        if (lift := suite.lift_of(doc, task, enc, protocol)) and lift.get("mean") is not None
    }
    label = f"`{task}` ({suite.PROTOCOL_NAMES[protocol]}, {suite.METRIC_NAMES[suite.headline(doc, task)]})"
    if not found:
        return [label, "-", "-", "-"]
    best = max(found, key=lambda e: found[e]["mean"])
    holds = sum(bool(x.get("resolved_holm")) and x["low"] > 0 for x in found.values())
    return [label, suite.name(best), suite.lift_cell(found[best]), f"{holds} of {len(found)}"]
