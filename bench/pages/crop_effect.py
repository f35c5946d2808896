"""The SCAN_AREA_MODELS and PROBE_POCUS sections of docs/benchmarks.md: what the scan-area crop does to
the models, and which checkpoint the online probe picks (POCUS), from three runs of
``bench/real_data.py`` on POCUS (Deblurring MAE and a random ViT-T, 5 patient-grouped folds, 4-minute
pre-training budget at the stored step counts, linear probe):

- ``real_data.json``: the stored figures (the detector before the fan fit);
- ``real_data_crop_new.json``: the current detector, with the online probe on each fold's labelled
  *training* groups (``--probe``), so ``deblur-mae@best`` is the checkpoint it picked;
- ``real_data_crop_off.json``: ``--no-scan-area`` (whole frames, overlays and all);
- ``real_data_probe_cv.json``: Deblurring MAE again with the probe as it is now (scores averaged over
  group folds), for the best.pt figures.

The commands::

    python bench/real_data.py --tasks pocus --methods scratch-vit,deblur-mae --modes linear \\
        --pretrain-minutes 4 --work bench/work/crop_new --out bench/results/real_data_crop_new.json --probe
    python bench/real_data.py ... --no-scan-area --work bench/work/crop_off \\
        --out bench/results/real_data_crop_off.json
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchlib import read_results

from .provenance import merged_runs

#: the rows of the crop table and the file each reads
RUNS = {
    "before (stored)": "real_data.json",
    "new detector": "real_data_crop_new.json",
    "crop off": "real_data_crop_off.json",
}
FOLDS = ("0", "1", "2", "3", "4")


def accuracies(doc: dict[str, Any], name: str, level: str = "frame") -> list[float] | None:
    per_fold = doc.get("pocus", {}).get(name, {}).get("linear", {})
    if not all(k in per_fold for k in FOLDS):
        return None
    return [100 * per_fold[k][level]["accuracy"] for k in FOLDS]


def mean_sd(values: list[float] | None) -> str:
    if values is None:
        return "-"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def source(label: str, doc: dict[str, Any]) -> str:
    """Where a row's figures come from: the stored rows are the real-data section's (its commands and
    machines are listed there); the others, their own file's commands, commits and machines."""
    if RUNS.get(label) == "real_data.json":
        return "`real_data.json`, the POCUS rows of the real-data section (its commands, commits and machines there)"
    return f"`{RUNS.get(label, label)}`, {merged_runs(doc)}"


def crop_section(docs: dict[str, dict[str, Any]]) -> str:
    lines = [
        "## What the scan-area crop does to the models (POCUS)",
        "",
        "Deblurring MAE and a random ViT-T, 5 patient-grouped folds (pre-training on the other folds' files "
        "at the stored step counts: the 4-minute budget), linear probe on the test fold; frame accuracy "
        "% and per-video accuracy %, mean ± std over the folds. *Lift*: Deblurring MAE minus the random "
        "encoder, paired by fold. The runs: "
        + "; ".join(f"*{label}*: {source(label, doc)}" for label, doc in docs.items())
        + ".",
        "",
        "| crop | random ViT-T (frames) | Deblurring MAE (frames) | lift (points) | random (videos) | "
        "Deblurring MAE (videos) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, doc in docs.items():
        scratch, deblur = accuracies(doc, "scratch-vit"), accuracies(doc, "deblur-mae")
        lift = [d - s for d, s in zip(deblur, scratch, strict=True)] if scratch and deblur else None
        lines.append(
            f"| {label} | {mean_sd(scratch)} | {mean_sd(deblur)} | {mean_sd(lift)} | "
            f"{mean_sd(accuracies(doc, 'scratch-vit', 'video'))} | {mean_sd(accuracies(doc, 'deblur-mae', 'video'))} |"
        )
    lifts = {}
    for label, doc in docs.items():
        scratch, deblur = accuracies(doc, "scratch-vit"), accuracies(doc, "deblur-mae")
        if scratch and deblur:
            lifts[label] = [d - s for d, s in zip(deblur, scratch, strict=True)]
    if len(lifts) >= 2:
        errors = {k: statistics.stdev(v) / len(v) ** 0.5 for k, v in lifts.items()}
        lines += [
            "",
            "Standard error of each row's mean lift (fold-to-fold spread / sqrt 5): "
            + ", ".join(f"{k} {e:.1f}" for k, e in errors.items())
            + " points. One seed per fold at a 4-minute budget: differences between rows smaller than about "
            "twice these are not told apart by this run.",
        ]
    return "\n".join(lines)


def probe_rows(doc: dict[str, Any]) -> list[str]:
    last, best = accuracies(doc, "deblur-mae"), accuracies(doc, "deblur-mae@best")
    lines = [
        "| fold | steps | k-NN at the end | k-NN at best.pt | best.pt step | linear, last % | linear, best.pt % |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, k in enumerate(FOLDS):
        info = doc.get("pretrain", {}).get(f"pretrain/pocus/fold{k}/deblur-mae", {})
        lines.append(
            f"| {k} | {info.get('steps', '-')} | {info.get('probe_knn_last', float('nan')):.3f} | "
            f"{info.get('probe_knn_best', float('nan')):.3f} | {info.get('probe_best_step', '-')} | "
            f"{last[i] if last else float('nan'):.1f} | {best[i] if best else float('nan'):.1f} |"
        )
    if last and best:
        diff = [b - a for a, b in zip(last, best, strict=True)]
        verdict = "at least" if statistics.mean(diff) >= 0 else "below"
        lines += [
            "",
            f"Mean over the folds: last {mean_sd(last)}, best.pt {mean_sd(best)} ({statistics.mean(diff):+.1f} points, "
            f"best.pt {verdict} the last checkpoint on average; better on "
            f"{sum(d > 0 for d in diff)}, equal on {sum(d == 0 for d in diff)} of 5 folds).",
        ]
    return lines


def probe_section(cv: dict[str, Any] | None, single: dict[str, Any] | None) -> str:
    lines = [
        "## The online probe on POCUS: best.pt against the last checkpoint",
        "",
        "Deblurring MAE with `--probe-data` set to each fold's labelled *training* groups (never its "
        "validation or test groups), the new scan-area detector, 588 steps per fold: the probe's k-NN "
        "balanced accuracy at the end and at its best step, and the linear probe on the test fold from "
        "`best.pt` and from the last checkpoint (the probe never changes the weights: the last checkpoint "
        "is the same run with or without it).",
    ]
    if cv:
        lines += [
            "",
            "The probe as it is now (scores averaged over 4 group folds of the probe set; "
            f"`real_data_probe_cv.json`, {merged_runs(cv)}):",
            "",
        ]
        lines += probe_rows(cv)
    if single:
        lines += [
            "",
            "The first version (one held-out quarter of the probe set's groups; `real_data_crop_new.json`, "
            f"{merged_runs(single)}), whose noise led to averaging over the folds:",
            "",
        ]
        lines += probe_rows(single)
    return "\n".join(lines)


def runs(results: Path) -> dict[str, dict[str, Any]]:
    return {label: doc for label, name in RUNS.items() if (doc := read_results(results / name))}


def models_section(results: Path) -> str | None:
    docs = runs(results)
    return crop_section(docs) if docs else None


def probe_pocus_section(results: Path) -> str | None:
    cv, single = read_results(results / "real_data_probe_cv.json"), runs(results).get("new detector")
    return probe_section(cv or None, single) if cv or single else None
