"""The report of a segmentation evaluation: ``report.json`` for programs, ``report.md`` for people,
and the overlays drawn of a few test images per kept fold (prediction red, truth green)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ultrassl.atomic import atomic_write_text
from ultrassl.finetune.report.formatting import format_mean_std
from ultrassl.jsonable import jsonable
from ultrassl.metrics import summarize

SUMMARY_KEYS = ("dice", "iou")


@dataclass
class SegRunResult:
    """One segmentation run's test metrics (fold x seed x label fraction) and what it was fitted on."""

    fold: int
    seed: int
    label_fraction: float
    metrics: dict[str, Any]
    n_train: int
    n_val: int
    n_test: int
    best_epoch: int
    val_dice: float | None
    test_paths: list[str] = field(default_factory=list)


def fmt_score(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def save_overlay(
    image: np.ndarray, pred: np.ndarray, target: np.ndarray, path: str | Path, title: str = ""
) -> Path:
    """Gray image, prediction filled + outlined in red, ground truth outlined in green (Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    h, w = image.shape
    fig = Figure(figsize=(3.2, 3.2 * h / w + 0.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
    ax.imshow(np.ma.masked_where(~pred, pred), cmap=ListedColormap(["red"]), alpha=0.3, vmin=0, vmax=1)
    for m, colour in ((pred, "red"), (target, "lime")):
        if m.any() and not m.all():
            ax.contour(m.astype(float), levels=[0.5], colors=[colour], linewidths=1.2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(
        handles=[
            Line2D([], [], color="red", label="prediction"),
            Line2D([], [], color="lime", label="truth"),
        ],
        loc="lower right",
        fontsize=6,
        framealpha=0.6,
    )
    if title:
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def build_seg_summary(results: Sequence[SegRunResult]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(headline summary at the largest label fraction over folds x seeds, the same per label fraction)."""
    fractions = sorted({r.label_fraction for r in results})
    by_fraction = {
        f"{f:g}": summarize([r.metrics for r in results if r.label_fraction == f], SUMMARY_KEYS)
        for f in fractions
    }
    return by_fraction[f"{fractions[-1]:g}"], by_fraction


def seg_warnings(results: Sequence[SegRunResult]) -> list[str]:
    """Runs whose predicted masks are empty (or full) for every test image: the model predicts no
    foreground (or nothing else) there. Runs journalled before the counts were recorded are skipped."""
    out = []
    for what, key in (("empty (no foreground)", "n_pred_empty"), ("full (all foreground)", "n_pred_full")):
        runs = [r for r in results if r.n_test and r.metrics.get(key) == r.n_test]
        if runs:
            several_seeds = len({r.seed for r in results}) > 1
            names = ", ".join(
                f"fold {r.fold}"
                + (f" seed {r.seed}" if several_seeds else "")
                + f" ({r.label_fraction * 100:g}% labels)"
                for r in runs
            )
            out.append(f"the predicted masks are {what} for every test image in {names}.")
    return out


def _markdown(title: str, summary: dict, by_fraction: dict, results: Sequence[SegRunResult], cfg: Any) -> str:
    lines = [f"# {title}", ""]
    lines += [
        "How to read this: Dice and IoU are computed per test image (at the mask's own resolution), "
        "averaged over the images of a fold; the ± is the sample standard deviation of those fold means "
        "over folds x seeds. Folds are numbered from 0, as in `folds.json` and `runs/`; each fold's model is "
        "selected on the validation Dice of its training groups, never on its test fold.",
        "",
        "## Warnings",
        "",
    ]
    warnings = seg_warnings(results)
    lines += (
        [f"- {w}" for w in warnings]
        if warnings
        else ["None: no fold has all-empty or all-full predicted masks."]
    )
    lines += [
        "",
        "## Results",
        "",
        f"Grouped {cfg.folds}-fold cross-validation, head `{cfg.head}`, empty-mask policy `{cfg.empty_policy}` "
        f"(Dice/IoU per image at the mask's resolution, then averaged; mean ± sample std over folds x seeds).",
        "",
        "| label fraction | Dice | IoU | n |",
        "|---|---|---|---|",
    ]
    for f, s in by_fraction.items():
        lines.append(
            f"| {float(f) * 100:g}% | {format_mean_std(s['dice'])} | {format_mean_std(s['iou'])} | {s['dice']['n']} |"
        )
    lines += [
        "",
        "## Per fold",
        "",
        "| fold | seed | fraction | Dice | IoU | test images | both empty | best epoch | val Dice |",
    ]
    lines.append("|" + "---|" * 9)
    for r in results:
        m = r.metrics
        lines.append(
            f"| {r.fold} | {r.seed} | {r.label_fraction * 100:g}% | {fmt_score(m['dice'])} | {fmt_score(m['iou'])} | "
            f"{r.n_test} | {m['n_both_empty']} | {r.best_epoch} | {fmt_score(r.val_dice)} |"
        )
    lines += [
        "",
        f"Headline: Dice {format_mean_std(summary['dice'])}, IoU {format_mean_std(summary['iou'])}.",
        "",
    ]
    return "\n".join(lines)


def write_segmentation_report(
    out: Path,
    title: str,
    results: Sequence[SegRunResult],
    cfg: Any,
    config: dict[str, Any],
    n_images: int,
) -> tuple[dict[str, Any], dict[str, str]]:
    """``report.json`` and ``report.md`` of the runs in ``out`` (``cfg``: the evaluation's
    SegmentConfig, of which the Markdown states folds, head and empty-mask policy); returns
    (headline summary, paths)."""
    summary, by_fraction = build_seg_summary(results)
    folds = [{k: v for k, v in asdict(r).items() if k != "metrics"} | {"metrics": r.metrics} for r in results]
    report = {
        "summary": summary,
        "by_label_fraction": by_fraction,
        "warnings": seg_warnings(results),
        "folds": folds,
        "n_images": n_images,
        "config": config,
    }
    paths = {
        "folds": out / "folds.json",
        "report_json": atomic_write_text(
            out / "report.json", json.dumps(jsonable(report), indent=2, allow_nan=False) + "\n"
        ),
        "report_md": atomic_write_text(
            out / "report.md", _markdown(title, summary, by_fraction, results, cfg)
        ),
        "overlays": out / "overlays",
    }
    return summary, {k: str(v) for k, v in paths.items()}
