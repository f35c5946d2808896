"""What a classification score has to beat, and warnings computed by rule from the fold results.

A new user reads a headline accuracy as a result; it is one only next to what guessing scores on the
same test labels. This module computes those baselines (the majority class, chance balanced
accuracy), the training data each label fraction meant, and the warnings the report puts at its top:
a headline not above its baseline, a class never recalled, folds whose predictions are all one class,
a few-label curve that does not rise beyond its spread over folds. Plain functions over the report's
:class:`~ultrassl.finetune.report.classification.FoldResult` list (duck-typed here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ultrassl.finetune.report.formatting import (
    finite,
    fmt,
    fmt_fraction,
    format_mean_std,
    fraction_key,
    mean_std,
)

__all__ = ["baselines", "test_label_counts", "training_counts", "warnings"]

#: What a level's items are called in sentences.
ITEMS = {"frame": "frames", "video": "videos"}


def _of(results: Sequence[Any], level: str, fraction: float) -> list[Any]:
    return [r for r in results if r.level == level and r.label_fraction == fraction]


def _first_seed(group: Sequence[Any]) -> list[Any]:
    """The runs of the first seed: every seed tests the same folds, so one seed counts each test item once."""
    if not group:
        return []
    seed = min(r.seed for r in group)
    return [r for r in group if r.seed == seed]


def _confusion(r: Any, n_classes: int) -> list[list[int]] | None:
    cm = r.metrics.get("confusion_matrix")
    if cm is None or len(cm) != n_classes or any(len(row) != n_classes for row in cm):
        return None
    return [[int(c) for c in row] for row in cm]


def test_label_counts(group: Sequence[Any], class_names: Sequence[str]) -> list[int] | None:
    """Test items per class over the folds of one (level, label fraction), each item once (first seed):
    the confusion matrices' row sums, else the per-class supports; None when neither is recorded."""
    n = len(class_names)
    total = [0] * n
    for r in _first_seed(group):
        cm = _confusion(r, n)
        if cm is not None:
            row_sums = [sum(row) for row in cm]
        else:
            per_class = r.metrics.get("per_class") or {}
            supports = [finite((per_class.get(c) or {}).get("support")) for c in class_names]
            if any(s is None for s in supports):
                return None
            row_sums = [int(s) for s in supports]
        total = [a + b for a, b in zip(total, row_sums)]
    return total if sum(total) > 0 else None


def baselines(
    results: Sequence[Any], class_names: Sequence[str], fraction: float
) -> dict[str, dict[str, Any]]:
    """``{level: {...}}`` at ``fraction``: the majority-class baseline (the accuracy of always predicting
    the class most common among all test items, pooled over the folds) and chance balanced accuracy
    (1 / number of classes). Levels without recorded test labels are left out."""
    out: dict[str, dict[str, Any]] = {}
    for level in ITEMS:
        counts = test_label_counts(_of(results, level, fraction), class_names)
        if counts is None:
            continue
        top = max(range(len(counts)), key=lambda i: counts[i])
        out[level] = {
            "majority_class": class_names[top],
            "majority_accuracy": counts[top] / sum(counts),
            "n_majority": counts[top],
            "n_test": sum(counts),
            "test_counts": dict(zip(class_names, counts)),
            "chance_balanced_accuracy": 1.0 / len(class_names),
            "how": "majority_accuracy: share of the most common class among the test labels pooled over "
            "the folds (always predicting it); chance_balanced_accuracy: 1 / number of classes",
        }
    return out


def training_counts(results: Sequence[Any], class_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{fraction_key: {class: {"groups": {min, max, mean}, "frames": {...}}, "n_runs": n}}`` over the
    runs that recorded what they trained on (one level: both levels train on the same frames)."""
    recorded = [r for r in results if getattr(r, "train_counts", None)]
    if not recorded:
        return {}
    level = next(lv for lv in ITEMS if any(r.level == lv for r in recorded))
    out: dict[str, dict[str, Any]] = {}
    for fraction in sorted({r.label_fraction for r in recorded}):
        runs = _of(recorded, level, fraction)
        entry: dict[str, Any] = {"n_runs": len(runs)}
        for c in list(class_names) + ["all"]:
            entry[c] = {}
            for kind in ("groups", "frames"):
                per_run = [
                    sum(r.train_counts[kind].values()) if c == "all" else int(r.train_counts[kind].get(c, 0))
                    for r in runs
                ]
                entry[c][kind] = {
                    "min": min(per_run),
                    "max": max(per_run),
                    "mean": sum(per_run) / len(per_run),
                }
        out[fraction_key(fraction)] = entry
    return out


def _stat(
    tables: Mapping[str, Mapping[float, Mapping[str, Any]]],
    results: Sequence[Any],
    level: str,
    fraction: float,
    metric: str,
) -> dict[str, Any] | None:
    """A metric's mean/std at (level, fraction): the summary's, else computed from the folds."""
    stat = tables.get(level, {}).get(fraction, {}).get(metric)
    if isinstance(stat, Mapping) and finite(stat.get("mean")) is not None:
        return dict(stat)
    values = [v for r in _of(results, level, fraction) if (v := finite(r.metrics.get(metric))) is not None]
    return mean_std(values) if values else None


def _warn(check: str, level: str | None, message: str) -> dict[str, Any]:
    return {"check": check, "level": level, "message": message}


def warnings(
    results: Sequence[Any],
    class_names: Sequence[str],
    tables: Mapping[str, Mapping[float, Mapping[str, Any]]],
    fraction: float,
    base: Mapping[str, Mapping[str, Any]],
    train: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The report's warnings, each ``{"check", "level", "message"}``, in the order they are listed:

    - ``below_majority`` / ``near_majority``: mean accuracy at ``fraction`` not above the majority-class
      baseline / above it by no more than its std over folds;
    - ``below_chance``: mean balanced accuracy not above 1 / number of classes;
    - ``class_never_recalled``: a class with test items of which none was predicted right in any fold;
    - ``single_class_folds``: runs (any label fraction) whose test predictions are all one class (one
      warning per level);
    - ``flat_curve``: balanced accuracy at the largest label fraction not above the smallest one's by more
      than the larger of their stds over folds.

    ``tables``: ``{level: {fraction: {metric: {mean, std}}}}``; ``base``: :func:`baselines`;
    ``train``: :func:`training_counts` (for the groups per fold named in ``flat_curve``)."""
    n = len(class_names)
    out: list[dict[str, Any]] = []
    for level in ITEMS:
        group = _of(results, level, fraction)
        if not group:
            continue
        items = ITEMS[level]
        b = base.get(level)
        acc = _stat(tables, results, level, fraction, "accuracy")
        if b is not None and acc is not None:
            mean, std = float(acc["mean"]), finite(acc.get("std")) or 0.0
            guess = f"{fmt(b['majority_accuracy'])} (always predicting {b['majority_class']!r})"
            if mean <= b["majority_accuracy"]:
                out.append(
                    _warn(
                        "below_majority",
                        level,
                        f"{level} level: accuracy {format_mean_std(acc)} is not above the majority-class "
                        f"baseline {guess}.",
                    )
                )
            elif mean - std <= b["majority_accuracy"]:
                out.append(
                    _warn(
                        "near_majority",
                        level,
                        f"{level} level: accuracy {format_mean_std(acc)} is above the majority-class baseline "
                        f"{guess} by no more than its spread over folds.",
                    )
                )
        bacc = _stat(tables, results, level, fraction, "balanced_accuracy")
        if bacc is not None and float(bacc["mean"]) <= 1.0 / n:
            out.append(
                _warn(
                    "below_chance",
                    level,
                    f"{level} level: balanced accuracy {format_mean_std(bacc)} is not above chance "
                    f"({fmt(1.0 / n)} = 1 / {n} classes).",
                )
            )
        cms = [cm for r in _first_seed(group) if (cm := _confusion(r, n)) is not None]
        if cms:
            for c, name in enumerate(class_names):
                support = sum(cm[c][j] for cm in cms for j in range(n))
                if support and not sum(cm[c][c] for cm in cms):
                    out.append(
                        _warn(
                            "class_never_recalled",
                            level,
                            f"{level} level: class {name!r} has recall 0: none of its {support} test {items} "
                            f"was predicted as {name!r}, in any fold.",
                        )
                    )
    several_seeds = len({r.seed for r in results}) > 1
    for level in ITEMS:
        parts = []
        for frac in sorted({r.label_fraction for r in results if r.level == level}, reverse=True):
            collapsed = []
            for r in sorted(_of(results, level, frac), key=lambda r: (r.seed, r.fold)):
                cm = _confusion(r, n)
                predicted = [j for j in range(n) if cm is not None and any(cm[i][j] for i in range(n))]
                if len(predicted) == 1:
                    seed = f" seed {r.seed}" if several_seeds else ""
                    bacc_r = fmt(r.metrics.get("balanced_accuracy"))
                    collapsed.append(
                        f"fold {r.fold}{seed} (all {class_names[predicted[0]]!r}, balanced accuracy {bacc_r})"
                    )
            if collapsed:
                parts.append(f"at {fmt_fraction(frac)} labels in {', '.join(collapsed)}")
        if parts:
            out.append(
                _warn(
                    "single_class_folds",
                    level,
                    f"{level} level: the model predicts one class for every test {ITEMS[level][:-1]} "
                    f"{'; '.join(parts)}.",
                )
            )
    for level in ITEMS:
        fractions = sorted({r.label_fraction for r in results if r.level == level})
        if len(fractions) < 2:
            continue
        lo = _stat(tables, results, level, fractions[0], "balanced_accuracy")
        hi = _stat(tables, results, level, fractions[-1], "balanced_accuracy")
        if lo is None or hi is None:
            continue
        spread = max(finite(lo.get("std")) or 0.0, finite(hi.get("std")) or 0.0)
        if float(hi["mean"]) - float(lo["mean"]) <= spread:
            groups = ""
            top = (train or {}).get(fraction_key(fractions[-1]), {}).get("all")
            if top:
                g = top["groups"]
                count = f"{g['min']}" if g["min"] == g["max"] else f"{g['min']}–{g['max']}"
                groups = f"with {count} training groups per fold at {fmt_fraction(fractions[-1])}, "
            out.append(
                _warn(
                    "flat_curve",
                    level,
                    f"{level} level: the few-label curve does not rise beyond its spread over folds: balanced "
                    f"accuracy {format_mean_std(lo)} at {fmt_fraction(fractions[0])} labels, "
                    f"{format_mean_std(hi)} at {fmt_fraction(fractions[-1])}; {groups}differences of this "
                    "size are within the fold-to-fold spread.",
                )
            )
    return out
