"""The report of a fine-tuning run: JSON for programs, Markdown + PNG figures for people and papers.

Why this module exists: ``ultrassl finetune classify`` runs grouped k-fold cross-validation, possibly
over several seeds and label fractions, at frame and video level. Users need one folder they can cite
from: every fold's metrics (``report.json``), mean ± std tables (``report.md``), the summed confusion
matrix, per-fold bars and a few-label curve, plus the per-sample predictions (``predictions.csv``).

Metrics come in as plain dicts (the layout of ``ultrassl.metrics.classification_metrics``), so this
module needs neither torch models nor the metrics code. Every file is written atomically (temp file +
``os.replace``): a crash leaves the old report or the new one, never half of one. Figures use the Agg
canvas directly, never pyplot's global state.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from ultrassl.atomic import atomic_write_text
from ultrassl.finetune.report.checks import ITEMS, baselines, training_counts, warnings
from ultrassl.finetune.report.formatting import (
    finite,
    flatten_config,
    fmt,
    fmt_fraction,
    format_mean_std,
    fraction_key,
    md_table,
    mean_std,
    save_figure,
)
from ultrassl.jsonable import jsonable

__all__ = [
    "LEVELS",
    "FoldResult",
    "build_summary",
    "format_mean_std",
    "fraction_key",
    "headline_setting",
    "write_classification_report",
]

LEVELS = ("frame", "video")

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CONFUSION_PNG = "confusion_matrix.png"
PER_FOLD_PNG = "per_fold.png"
CURVE_PNG = "few_label_curve.png"
PREDICTIONS_CSV = "predictions.csv"

#: Display names; metrics listed here come first in tables, in this order.
METRIC_NAMES = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro-F1",
    "auroc": "AUROC",
}
PER_FOLD_BARS = ("accuracy", "balanced_accuracy", "macro_f1")
#: Few-label curve panels: accuracy, and balanced accuracy (what fine-tuning selects on, chance 1/classes).
CURVE_METRICS = ("accuracy", "balanced_accuracy")
PER_CLASS_METRICS = ("precision", "recall", "f1", "specificity", "auroc")
PER_CLASS_NAMES = {"f1": "F1", "auroc": "AUROC"}
#: Config entries shown in report.md (the full config is in report.json).
MAX_CONFIG_LINES = 40

SummarizeFn = Callable[[list[dict[str, Any]]], dict[str, Any]]


@dataclass
class FoldResult:
    """One evaluated fold: which split/seed/label fraction/level, its metrics dict and split sizes."""

    fold: int
    seed: int
    label_fraction: float
    level: str
    metrics: dict[str, Any]
    n_train: int
    n_val: int
    n_test: int
    best_epoch: int | None = None
    val_score: float | None = None
    #: what the run trained on: ``{"groups": {class: n}, "frames": {class: n}}`` (None: not recorded)
    train_counts: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # Caught here rather than as a broken log-scale axis or a missing table column later.
        if self.level not in LEVELS:
            raise ValueError(f"FoldResult.level must be one of {LEVELS}, got {self.level!r}")
        self.label_fraction = float(self.label_fraction)
        if not 0.0 < self.label_fraction <= 1.0:
            raise ValueError(f"FoldResult.label_fraction must be in (0, 1], got {self.label_fraction}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (metrics included)."""
        return jsonable(dataclasses.asdict(self))


# --------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------


def headline_setting(results: Iterable[FoldResult]) -> tuple[str, float]:
    """(level, label fraction) of the headline numbers: frame level if present, else video; largest fraction."""
    results = list(results)
    if not results:
        raise ValueError("no fold results")
    levels = {r.level for r in results}
    level = next(lv for lv in LEVELS if lv in levels)
    return level, max(r.label_fraction for r in results if r.level == level)


def _group(results: Iterable[FoldResult]) -> dict[tuple[str, float], list[FoldResult]]:
    groups: dict[tuple[str, float], list[FoldResult]] = {}
    for r in results:
        groups.setdefault((r.level, r.label_fraction), []).append(r)
    return groups


def build_summary(results: Sequence[FoldResult], summarize_fn: SummarizeFn) -> dict[str, Any]:
    """``{level: {fraction_key: summarize_fn(metrics)}}`` plus the headline setting's metrics at top level.

    The top level (``summary["accuracy"] == {"mean", "std", "n"}``) is what the report spec and simple
    consumers read; the nested part keeps every level and label fraction.
    """
    groups = _group(results)
    if not groups:
        raise ValueError("no fold results to summarise")
    summary: dict[str, Any] = {}
    for level in LEVELS:
        fractions = sorted(f for lv, f in groups if lv == level)
        if fractions:
            summary[level] = {
                fraction_key(f): summarize_fn([r.metrics for r in groups[(level, f)]]) for f in fractions
            }
    level, frac = headline_setting(results)
    for name, value in summary[level][fraction_key(frac)].items():
        summary[name] = value
    return summary


def _lookup_fraction(by_fraction: Mapping[str, Any], label_fraction: float) -> Any:
    """Find a fraction's entry even if the caller keyed it ``"1"`` rather than ``"1.0"``."""
    key = fraction_key(label_fraction)
    if key in by_fraction:
        return by_fraction[key]
    for k, v in by_fraction.items():
        try:
            if math.isclose(float(k), label_fraction):
                return v
        except (TypeError, ValueError):
            continue
    return None


def _level_tables(summary: Mapping[str, Any]) -> dict[str, dict[float, dict[str, Any]]]:
    """``{level: {fraction: metric summary}}`` from a summary dict (keys that do not parse are ignored)."""
    out: dict[str, dict[float, dict[str, Any]]] = {}
    for level in LEVELS:
        by_fraction = summary.get(level)
        if not isinstance(by_fraction, Mapping):
            continue
        for k, v in by_fraction.items():
            try:
                frac = float(k)
            except (TypeError, ValueError):
                continue
            if isinstance(v, Mapping):
                out.setdefault(level, {})[frac] = dict(v)
    return {lv: dict(sorted(t.items())) for lv, t in out.items()}


def _is_stat(value: Any) -> bool:
    return isinstance(value, Mapping) and "mean" in value


def _metric_order(tables: Iterable[Mapping[str, Any]]) -> list[str]:
    """Known metrics first, then any other ``{"mean", ...}`` entries in first-seen order."""
    seen: list[str] = []
    for table in tables:
        for name, value in table.items():
            if _is_stat(value) and name not in seen:
                seen.append(name)
    known = [m for m in METRIC_NAMES if m in seen]
    return known + [m for m in seen if m not in METRIC_NAMES]


# --------------------------------------------------------------------------------------------------
# Formatting helpers
# --------------------------------------------------------------------------------------------------


def _metric_label(name: str) -> str:
    return METRIC_NAMES.get(name, name)


# --------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Aggregation over folds
# --------------------------------------------------------------------------------------------------


def _summed_confusion(group: Sequence[FoldResult], n_classes: int) -> list[list[int]] | None:
    """Confusion matrices (rows = true, columns = predicted) summed over folds; None if none given."""
    total: list[list[int]] | None = None
    for r in group:
        cm = r.metrics.get("confusion_matrix")
        if cm is None:
            continue
        cm = jsonable(cm)
        if len(cm) != n_classes or any(len(row) != n_classes for row in cm):
            raise ValueError(
                f"fold {r.fold} (seed {r.seed}, {r.level}, fraction {r.label_fraction}): confusion matrix "
                f"is not {n_classes}x{n_classes} for class_names of length {n_classes}"
            )
        if total is None:
            total = [[0] * n_classes for _ in range(n_classes)]
        for i in range(n_classes):
            for j in range(n_classes):
                total[i][j] += int(cm[i][j])
    return total


def _per_class(group: Sequence[FoldResult], class_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per-class metrics as mean ± std over folds (None entries skipped), support summed."""
    out: dict[str, dict[str, Any]] = {}
    for name in class_names:
        entries = [(r.metrics.get("per_class") or {}).get(name) for r in group]
        entries = [e for e in entries if isinstance(e, Mapping)]
        row: dict[str, Any] = {}
        for m in PER_CLASS_METRICS:
            row[m] = mean_std([v for e in entries if (v := finite(e.get(m))) is not None])
        supports = [finite(e.get("support")) for e in entries]
        row["support"] = int(sum(s for s in supports if s is not None))
        out[name] = row
    return out


def _metric_curve(
    results: Sequence[FoldResult], metric: str = "accuracy"
) -> dict[str, dict[float, dict[str, Any]]]:
    """``{level: {fraction: mean/std of metric}}`` computed from the folds (sample std)."""
    out: dict[str, dict[float, dict[str, Any]]] = {}
    for (level, frac), group in sorted(_group(results).items()):
        values = [v for r in group if (v := finite(r.metrics.get(metric))) is not None]
        out.setdefault(level, {})[frac] = mean_std(values)
    return out


def _fold_sort_key(r: FoldResult) -> tuple[int, float, int, int]:
    return (LEVELS.index(r.level), r.label_fraction, r.seed, r.fold)


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def _plot_confusion(cm: list[list[int]], class_names: Sequence[str], title: str, path: Path) -> Path:
    """Counts in the cells, colour = row-normalised (recall per true class), class names on both axes."""
    n = len(class_names)
    norm = []
    for row in cm:
        total = sum(row)
        norm.append([c / total if total else 0.0 for c in row])
    fig = Figure(figsize=(max(4.8, 0.9 * n + 2.8), max(4.2, 0.8 * n + 2.2)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    fontsize = 10 if n <= 6 else 8 if n <= 12 else 6
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{cm[i][j]}\n{norm[i][j]:.0%}",
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if norm[i][j] > 0.5 else "black",
            )
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    tilt = n > 3 or max(len(c) for c in class_names) > 10  # long names side by side overlap
    ax.set_xticklabels(class_names, rotation=45 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticklabels(class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _plot_per_fold(group: Sequence[FoldResult], title: str, path: Path) -> Path:
    """Grouped bars (accuracy, balanced accuracy, macro-F1) per fold; seed in the label when several."""
    group = sorted(group, key=_fold_sort_key)
    several_seeds = len({r.seed for r in group}) > 1
    labels = [f"s{r.seed}/f{r.fold}" if several_seeds else f"fold {r.fold}" for r in group]
    n = len(group)
    width = 0.8 / len(PER_FOLD_BARS)
    fig = Figure(figsize=(max(6.0, 0.8 * n + 2.5), 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for k, metric in enumerate(PER_FOLD_BARS):
        values = [finite(r.metrics.get(metric)) for r in group]
        xs = [i + (k - (len(PER_FOLD_BARS) - 1) / 2) * width for i in range(n)]
        ax.bar(xs, [math.nan if v is None else v for v in values], width, label=_metric_label(metric))
    ax.set_xticks(range(n))
    ax.set_xticklabels(labels, rotation=45 if n > 8 else 0, ha="right" if n > 8 else "center")
    ax.set_ylim(0.0, 1.15)  # headroom for the legend above the bars
    ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("score")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncol=len(PER_FOLD_BARS), fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _plot_curve(
    panels: Mapping[str, list[tuple[str, str, dict[float, dict[str, Any]]]]],
    fractions: Sequence[float],
    title: str,
    path: Path,
    references: Mapping[str, Sequence[tuple[str, float]]] | None = None,
) -> Path:
    """Mean ± std of each metric vs label fraction, one panel per metric (log x axis, ticks at the
    fractions used); ``references``: dotted horizontal lines per metric (label, value), e.g. chance.

    One line per (label, level, points) series; video level dashed so levels read apart in grey print.
    """
    fig = Figure(figsize=(5.0 * len(panels) + 1.0, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    for k, (metric, series) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for label, level, points in series:
            xs = sorted(f for f, p in points.items() if finite(p.get("mean")) is not None)
            if not xs:
                continue
            ys = [float(points[f]["mean"]) for f in xs]
            es = [finite(points[f].get("std")) or 0.0 for f in xs]
            style = "--" if level == "video" else "-"
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, linestyle=style, label=label)
        for label, value in (references or {}).get(metric, ()):
            ax.axhline(value, linestyle=":", color="grey", linewidth=1.2)
            ax.annotate(
                label,
                (0.01, value),
                xycoords=("axes fraction", "data"),
                fontsize=7,
                color="grey",
                va="bottom",
            )
        ax.set_xscale("log")
        ax.set_xticks(list(fractions), labels=[fmt_fraction(f) for f in fractions])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("label fraction (log scale)")
        ax.set_ylabel(f"{_metric_label(metric)} (mean ± std over folds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------


def _markdown(
    *,
    title: str,
    config: Mapping[str, Any],
    summary: Mapping[str, Any],
    results: Sequence[FoldResult],
    class_names: Sequence[str],
    headline: tuple[str, float],
    per_class: dict[str, dict[str, Any]],
    confusion: list[list[int]] | None,
    figures: Mapping[str, Path],
    has_predictions: bool,
    baselines: Mapping[str, Mapping[str, Any]] | None = None,
    warnings: Sequence[Mapping[str, Any]] = (),
    train: Mapping[str, Mapping[str, Any]] | None = None,
    selection: str | None = None,
) -> str:
    level, frac = headline
    group = [r for r in results if (r.level, r.label_fraction) == headline]
    n_seeds = len({r.seed for r in group})
    runs = f"{len({r.fold for r in group})} folds" + (f" × {n_seeds} seeds" if n_seeds > 1 else "")
    lines = [f"# {title}", ""]
    lines += _how_to_read(level, runs, selection, bool(train))

    headline_metrics = _metric_order([summary])
    lines += ["## Headline", ""]
    lines += [
        f"**{level.capitalize()} level, {fmt_fraction(frac)} of labels**, {runs} (mean ± std over folds):"
    ]
    lines += [""]
    lines += [f"- {_metric_label(m)}: {format_mean_std(summary[m])}" for m in headline_metrics]
    lines += _baseline_lines(baselines or {}, len(class_names))
    lines += ["", f"Classes: {', '.join(class_names)}", ""]

    lines += ["## Warnings", ""]
    if warnings:
        lines += [f"- {w['message']}" for w in warnings]
    else:
        lines += [
            "None: the headline is above the majority-class baseline and chance, every class is recalled "
            "in some fold, no fold predicts a single class, and the few-label curve (if any) rises beyond "
            "its spread."
        ]
    lines += [""]
    lines += _training_lines(train or {}, class_names)

    config_items = flatten_config(config)
    if config_items:
        lines += ["## Configuration", ""]
        lines += [f"- `{k}`: {v}" for k, v in config_items[:MAX_CONFIG_LINES]]
        if len(config_items) > MAX_CONFIG_LINES:
            lines += [f"- … {len(config_items) - MAX_CONFIG_LINES} more (see `{REPORT_JSON}`)"]
        lines += [""]

    tables = _level_tables(summary)
    if tables:
        lines += ["## Summary (mean ± std over folds)", ""]
        for lv, by_fraction in tables.items():
            lines += [f"### {lv.capitalize()} level", ""]
            fracs = list(by_fraction)
            metrics = _metric_order(by_fraction.values())
            header = ["metric"] + [fmt_fraction(f) + " labels" for f in fracs]
            rows = [
                [_metric_label(m)] + [format_mean_std(by_fraction[f].get(m)) for f in fracs] for m in metrics
            ]
            lines += md_table(header, rows) + [""]

    lines += ["## Folds", ""]
    header = [
        "fold",
        "seed",
        "fraction",
        "level",
        "accuracy",
        "balanced accuracy",
        "macro-F1",
        "AUROC",
        "n_test",
    ]
    rows = [
        [
            r.fold,
            r.seed,
            f"{r.label_fraction:g}",
            r.level,
            fmt(r.metrics.get("accuracy")),
            fmt(r.metrics.get("balanced_accuracy")),
            fmt(r.metrics.get("macro_f1")),
            fmt(r.metrics.get("auroc")),
            r.n_test,
        ]
        for r in sorted(results, key=_fold_sort_key)
    ]
    lines += md_table(header, rows) + [""]

    lines += [f"## Per class ({level} level, {fmt_fraction(frac)} labels; mean ± std over folds)", ""]
    header = ["class"] + [PER_CLASS_NAMES.get(m, m) for m in PER_CLASS_METRICS] + ["support (total)"]
    rows = [
        [name]
        + [format_mean_std(per_class[name][m]) for m in PER_CLASS_METRICS]
        + [per_class[name]["support"]]
        for name in class_names
    ]
    lines += md_table(header, rows) + [""]

    if confusion is not None:
        lines += [f"## Confusion matrix ({level} level, {fmt_fraction(frac)} labels; summed over folds)", ""]
        lines += ["Rows: true class; columns: predicted class.", ""]
        header = ["true \\ predicted"] + list(class_names) + ["total"]
        rows = [[name] + confusion[i] + [sum(confusion[i])] for i, name in enumerate(class_names)]
        lines += md_table(header, rows) + [""]

    lines += ["## Figures", ""]
    captions = {
        "confusion_matrix": "Confusion matrix",
        "per_fold": "Per-fold scores",
        "few_label_curve": "Few-label curve",
    }
    for key, caption in captions.items():
        if key in figures:
            lines += [f"![{caption}]({figures[key].name})", ""]
    files = f"Full results: [`{REPORT_JSON}`]({REPORT_JSON})"
    if has_predictions:
        files += f"; per-sample predictions: [`{PREDICTIONS_CSV}`]({PREDICTIONS_CSV})"
    lines += [files + ".", ""]
    return "\n".join(lines)


def _how_to_read(level: str, runs: str, selection: str | None, has_train: bool) -> list[str]:
    """The block at the top of report.md: what the levels, the ±, the selection and a label fraction mean."""
    lines = ["## How to read this", ""]
    lines += [
        "- **Frame level** scores every sampled frame on its own. **Video level** scores each video once: the "
        "mean of its frames' predicted class probabilities, then the most probable class (a still image is a "
        f"one-frame video). The headline is {level} level; the tables below give both.",
        f"- **±** is the spread over folds: the sample standard deviation of the per-fold scores ({runs}). "
        "Folds are made of whole groups (patients); each fold's test groups are used for nothing but its "
        "test scores. Folds are numbered from 0, as in `folds.json`, `runs/` and `models/`.",
        "- **Model selection**: "
        + (
            selection
            or "each fold's model is chosen on the validation split of its training groups, never on its test fold."
        ),
        "- **Label fraction** f: each fold trains on a share f of each class's training groups (at least one "
        "group per class; the smaller sets inside the larger); validation and test groups stay the same."
        + (
            " What that meant in groups and frames is under *Training data per label fraction*."
            if has_train
            else ""
        ),
        "- **Baselines**: the majority-class baseline is the accuracy of always predicting the class most common "
        "among the test labels (pooled over all folds); chance balanced accuracy is 1 / number of classes. A "
        "score not above them has learned nothing the class counts do not give.",
        "",
    ]
    return lines


def _baseline_lines(base: Mapping[str, Mapping[str, Any]], n_classes: int) -> list[str]:
    lines = []
    for lv, b in base.items():
        lines.append(
            f"- majority-class baseline ({lv} level): {fmt(b['majority_accuracy'])} (always predicting "
            f"{b['majority_class']!r}: {b['n_majority']} of {b['n_test']} test {ITEMS[lv]})"
        )
    lines.append(f"- chance balanced accuracy: {fmt(1.0 / n_classes)} (1 / {n_classes} classes)")
    return lines


def _span(stat: Mapping[str, Any]) -> str:
    lo, hi = stat["min"], stat["max"]
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def _training_lines(train: Mapping[str, Mapping[str, Any]], class_names: Sequence[str]) -> list[str]:
    """Per label fraction and class: training groups and frames per fold (min–max over the runs)."""
    if not train:
        return []
    lines = ["## Training data per label fraction", ""]
    lines += [
        "Training groups (patients; a group counts for its majority class) and frames per fold, "
        "min–max over the folds (validation and test sides not included).",
        "",
    ]
    header = ["label fraction"] + list(class_names) + ["all"]
    rows = []
    for key, entry in sorted(train.items(), key=lambda kv: float(kv[0])):
        row = [fmt_fraction(float(key))]
        for c in [*class_names, "all"]:
            counts = entry.get(c) or {}
            if "groups" in counts:
                row.append(f"{_span(counts['groups'])} groups, {_span(counts['frames'])} frames")
            else:
                row.append("—")
        rows.append(row)
    return lines + md_table(header, rows) + [""]


# --------------------------------------------------------------------------------------------------
# Public writers
# --------------------------------------------------------------------------------------------------


def _write_predictions(path: Path, predictions: Sequence[Mapping[str, Any]]) -> Path:
    """CSV with the union of keys (first-seen order) as columns; missing values are empty cells."""
    columns: dict[str, None] = {}
    for row in predictions:
        for k in row:
            columns.setdefault(str(k), None)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), restval="", lineterminator="\n")
    writer.writeheader()
    for row in predictions:
        writer.writerow({str(k): v for k, v in row.items()})
    return atomic_write_text(path, buf.getvalue())


def write_classification_report(
    out_dir: str | os.PathLike[str],
    *,
    results: list[FoldResult],
    summary: dict[str, Any],
    class_names: list[str],
    config: dict[str, Any],
    predictions: list[dict[str, Any]] | None = None,
    title: str = "Classification",
    curves: dict[str, list[FoldResult]] | None = None,
    run_name: str = "this run",
    selection: str | None = None,
) -> dict[str, Path]:
    """Write report.json, report.md, figures and (if given) predictions.csv into ``out_dir``.

    ``summary`` is :func:`build_summary`'s layout; if its top level lacks the headline metrics they are
    filled in from ``summary[level][fraction]``. ``curves`` adds other methods (e.g. ``{"scratch": [...]}``)
    to the few-label curve, where this run is labelled ``run_name``. ``selection``: how each fold's model
    was selected, for the "How to read this" block (a generic sentence when not given). Returns ``{name: path}`` of every
    file written (keys: report_json, report_md, confusion_matrix, per_fold, few_label_curve, predictions).
    """
    if not results:
        raise ValueError("write_classification_report: no fold results")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    class_names = [str(c) for c in class_names]
    headline = headline_setting(results)
    level, frac = headline
    head_group = [r for r in results if (r.level, r.label_fraction) == headline]

    summary = dict(summary)
    head_summary = _lookup_fraction(summary.get(level) or {}, frac)
    if isinstance(head_summary, Mapping):
        for name, value in head_summary.items():
            summary.setdefault(name, value)

    paths: dict[str, Path] = {}
    setting = f"{level} level, {fmt_fraction(frac)} labels"
    tables = _level_tables(summary)
    base = baselines(results, class_names, frac)
    train = training_counts(results, class_names)
    warns = warnings(results, class_names, tables, frac, base, train)

    confusion = _summed_confusion(head_group, len(class_names))
    if confusion is not None:
        n_seeds = len({r.seed for r in head_group})
        seeds = f" × {n_seeds} seeds" if n_seeds > 1 else ""
        paths["confusion_matrix"] = _plot_confusion(
            confusion,
            class_names,
            f"{title}: confusion matrix\n({setting}, {len({r.fold for r in head_group})} folds{seeds} summed)",
            out / CONFUSION_PNG,
        )
    paths["per_fold"] = _plot_per_fold(head_group, f"{title}: per fold ({setting})", out / PER_FOLD_PNG)

    extra = curves or {}
    fractions = sorted(
        {r.label_fraction for r in results} | {r.label_fraction for rs in extra.values() for r in rs}
    )
    if len(fractions) > 1:
        panels: dict[str, list[tuple[str, str, dict[float, dict[str, Any]]]]] = {}
        for metric in CURVE_METRICS:
            series = panels.setdefault(metric, [])
            for lv, points in _metric_curve(results, metric).items():
                # The run's own points come from the summary when present, so the plot matches the tables.
                for f in points:
                    stat = tables.get(lv, {}).get(f, {}).get(metric)
                    if _is_stat(stat):
                        points[f] = dict(stat)
                series.append((f"{run_name} ({lv})" if extra else lv, lv, points))
            for name, rs in extra.items():
                for lv, points in _metric_curve(rs, metric).items():
                    series.append((f"{name} ({lv})", lv, points))
        references = {"balanced_accuracy": [("chance", 1.0 / len(class_names))]}
        if level in base:
            references["accuracy"] = [(f"majority class ({level})", base[level]["majority_accuracy"])]
        paths["few_label_curve"] = _plot_curve(
            panels, fractions, f"{title}: scores vs labels", out / CURVE_PNG, references
        )

    if predictions is not None:
        paths["predictions"] = _write_predictions(out / PREDICTIONS_CSV, predictions)

    report = {
        "title": title,
        "class_names": class_names,
        "config": config,
        "headline": {"level": level, "label_fraction": frac},
        "summary": summary,
        "baselines": base,
        "warnings": warns,
        "training_counts": train,
        "folds": [r.to_dict() for r in results],
        "files": {k: p.name for k, p in paths.items()},
    }
    paths["report_json"] = atomic_write_text(
        out / REPORT_JSON, json.dumps(jsonable(report), indent=2, allow_nan=False) + "\n"
    )
    md = _markdown(
        title=title,
        config=config,
        summary=summary,
        results=results,
        class_names=class_names,
        headline=headline,
        per_class=_per_class(head_group, class_names),
        confusion=confusion,
        figures=paths,
        has_predictions=predictions is not None,
        baselines=base,
        warnings=warns,
        train=train,
        selection=selection,
    )
    paths["report_md"] = atomic_write_text(out / REPORT_MD, md)
    return paths
