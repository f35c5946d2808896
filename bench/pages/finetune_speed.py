"""The FINETUNE_SPEED section of docs/benchmarks.md: the fine-tuning loop of one checkout against another
on a CPU, from ``bench/finetune_speed.py``'s JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib import read_results

from .provenance import made_by


def section(results: Path) -> str | None:
    doc = read_results(results / "finetune_speed.json")
    return table(doc) if doc else None


def table(doc: dict[str, Any]) -> str:
    this, base = doc["commit"], doc["baseline_commit"]
    lines = [
        "## Fine-tuning speed: one checkout against another",
        "",
        f"{made_by(doc)} What: {doc['what']}. Each round runs the same evaluation once with each source "
        "tree, in turn, in fresh processes (imports and data synthesis left out of the time); the figure is "
        "the median of the per-round ratios, so a machine that drifts between rounds cancels out of it. "
        "Why: the fine-tuning loop was reshaped for GPUs (batches through a DataLoader, augmentation drawn "
        "apart from the pixel work, one read of the loss per epoch) and must be no slower on a CPU.",
        "",
        f"| task | {base} s (each round) | {this} s (each round) | speed ratio, median ({base} s / {this} s) |",
        "| --- | --- | --- | --- |",
        *(
            f"| {r['task']} | {', '.join(f'{t:.2f}' for t in r['baseline_s'])} | "
            f"{', '.join(f'{t:.2f}' for t in r['this_s'])} | {r['speed_ratio_median']:.2f}x |"
            for r in doc["rows"]
        ),
    ]
    return "\n".join(lines)
