"""Downstream evaluation metrics as plain, JSON-ready Python values.

Why this module exists: fine-tuning reports must be comparable across folds, runs and papers, so every
number comes from scikit-learn (no home-made re-implementations) and every edge case (a class missing
from a test fold, an empty segmentation mask) has one documented policy instead of a silent NaN or a
crash in the middle of a cross-validation run.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from ultrassl.errors import UltrasslError

__all__ = [
    "EMPTY_POLICIES",
    "classification_metrics",
    "dice_iou",
    "segmentation_metrics",
    "summarize",
]

EMPTY_POLICIES = ("one", "nan", "zero")
"""What ``dice_iou`` scores an image whose prediction and target are both empty."""

_SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")


def _validate_classification(
    y_true: Sequence[int], prob: np.ndarray, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes and label range up front so a mismatch is reported clearly, not deep inside sklearn."""
    y = np.asarray(y_true)
    p = np.asarray(prob, dtype=np.float64)
    n_classes = len(class_names)
    if y.ndim != 1:
        raise UltrasslError(f"y_true must be 1-D (one label per sample); got shape {y.shape}")
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[1] != n_classes:
        raise UltrasslError(
            f"prob must have shape [N, C] = [{y.shape[0]}, {n_classes}] (N labels, C class names); "
            f"got {tuple(p.shape)}"
        )
    if y.size == 0:
        raise UltrasslError("no samples to evaluate (y_true is empty)")
    if n_classes < 2:
        raise UltrasslError(f"classification needs at least 2 classes; got class_names={list(class_names)}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise UltrasslError(f"y_true must hold integer class indices; got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= n_classes:
        raise UltrasslError(
            f"y_true holds class indices outside [0, {n_classes - 1}]: {sorted(set(y.tolist()))}"
        )
    if not np.all(np.isfinite(p)):
        raise UltrasslError("prob holds NaN or infinite values (did the model diverge?)")
    return y.astype(np.int64), p


def _binary_auroc(is_class: np.ndarray, score: np.ndarray) -> float | None:
    """One-vs-rest AUROC of one class; ``None`` when it is undefined (no positives or no negatives)."""
    if is_class.all() or not is_class.any():
        return None
    return float(roc_auc_score(is_class, score))


def classification_metrics(
    y_true: Sequence[int], prob: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1, one-vs-rest AUROC, per-class scores and the confusion matrix.

    Predictions are ``argmax(prob)``. Edge-case policies (a test fold often lacks a rare class):

    - ``macro_f1`` is sklearn's ``f1_score(average="macro", zero_division=0)``: it averages over the
      classes seen in ``y_true`` or in the predictions; a class predicted but absent from ``y_true``
      counts as F1 = 0 (its false positives are penalised), a class neither present nor predicted is
      not averaged (there is no evidence about it).
    - ``balanced_accuracy`` is the mean recall over the classes present in ``y_true``.
    - ``auroc`` is the macro mean of the per-class one-vs-rest AUROCs over the classes present in
      ``y_true`` (equal to ``roc_auc_score(multi_class="ovr")`` when all classes are present); an
      absent class gets ``per_class[name]["auroc"] = None`` and the macro is ``None`` when fewer than
      2 classes are present.
    - precision/recall/F1/specificity use ``zero_division=0`` (an undefined ratio is reported as 0.0).

    The confusion matrix has rows = true class, columns = predicted class, over all ``C`` classes.
    All values are plain Python ``float``/``int``/``None`` so the dict can be dumped to JSON as is.
    """
    y, p = _validate_classification(y_true, prob, class_names)
    n_classes = len(class_names)
    labels = list(range(n_classes))
    y_pred = p.argmax(axis=1)

    cm = confusion_matrix(y, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, y_pred, labels=labels, zero_division=0
    )
    with warnings.catch_warnings():
        # sklearn warns when a predicted class is absent from y_true; that class is simply not averaged.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = balanced_accuracy_score(y, y_pred)

    total = int(cm.sum())
    per_class: dict[str, dict[str, Any]] = {}
    class_aurocs: list[float] = []
    for c, name in enumerate(class_names):
        tp = int(cm[c, c])
        fp = int(cm[:, c].sum()) - tp
        fn = int(cm[c, :].sum()) - tp
        tn = total - tp - fp - fn
        auroc = _binary_auroc(y == c, p[:, c])
        if auroc is not None:
            class_aurocs.append(auroc)
        per_class[str(name)] = {
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "specificity": float(tn / (tn + fp)) if tn + fp > 0 else 0.0,
            "support": int(support[c]),
            "auroc": auroc,
        }
    if len(per_class) != n_classes:
        raise UltrasslError(f"class_names must be unique; got {list(class_names)}")

    n_present = len(np.unique(y))
    return {
        "accuracy": float(accuracy_score(y, y_pred)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(f1_score(y, y_pred, average="macro", zero_division=0)),
        "auroc": float(np.mean(class_aurocs)) if n_present >= 2 and class_aurocs else None,
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
    }


def summarize(
    per_fold: Sequence[Mapping[str, Any]], keys: Sequence[str] = _SUMMARY_KEYS
) -> dict[str, dict[str, Any]]:
    """Mean, spread and count of each metric over cross-validation folds.

    ``std`` is the *sample* standard deviation (``ddof=1``), the usual "mean ± std over folds" of
    papers; it is 0.0 when only one value is available. ``None``/NaN values and missing keys (e.g. an
    AUROC that was undefined in a fold) are skipped, so ``n`` says how many folds each number rests on;
    with ``n == 0`` mean and std are ``None``.
    """
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        values = [float(fold[key]) for fold in per_fold if fold.get(key) is not None]
        values = [v for v in values if not math.isnan(v)]
        n = len(values)
        if n == 0:
            out[key] = {"mean": None, "std": None, "n": 0}
            continue
        arr = np.asarray(values, dtype=np.float64)
        out[key] = {
            "mean": float(arr.mean()),
            "std": float(arr.std(ddof=1)) if n > 1 else 0.0,
            "n": n,
        }
    return out


def _as_binary_mask(mask: np.ndarray, what: str) -> np.ndarray:
    """Accept bool or 0/1 masks only: a 0/255 PNG or a label map would otherwise be scored silently wrong."""
    arr = np.asarray(mask)
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise UltrasslError(f"{what} must be a bool or 0/1 array; got dtype {arr.dtype}")
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        values = np.unique(arr[bad])[:5].tolist()
        raise UltrasslError(
            f"{what} must be binary (bool or 0/1); found values such as {values} "
            "(threshold probabilities / divide 0-255 masks / pick one class of a label map first)"
        )
    return arr.astype(bool)


def _mask_scores(
    pred: np.ndarray, target: np.ndarray, empty: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image dice, IoU and "both empty" flags of ``[N, H, W]`` masks (shared by both public functions)."""
    if empty not in EMPTY_POLICIES:
        raise UltrasslError(f"empty must be one of {EMPTY_POLICIES}; got {empty!r}")
    p = _as_binary_mask(pred, "pred")
    t = _as_binary_mask(target, "target")
    if p.shape != t.shape:
        raise UltrasslError(f"pred and target shapes differ: {p.shape} vs {t.shape}")
    if p.ndim != 3:
        raise UltrasslError(f"masks must be [H, W] or [N, H, W]; got shape {p.shape}")
    inter = np.logical_and(p, t).sum(axis=(1, 2)).astype(np.float64)
    union = np.logical_or(p, t).sum(axis=(1, 2)).astype(np.float64)
    sizes = p.sum(axis=(1, 2)).astype(np.float64) + t.sum(axis=(1, 2)).astype(np.float64)
    both_empty = union == 0
    fill = {"one": 1.0, "nan": np.nan, "zero": 0.0}[empty]
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(both_empty, fill, 2.0 * inter / sizes)
        iou = np.where(both_empty, fill, inter / union)
    return dice, iou, both_empty


def dice_iou(
    pred: np.ndarray, target: np.ndarray, empty: str = "one"
) -> tuple[float, float] | tuple[np.ndarray, np.ndarray]:
    """Dice and IoU of binary masks, per image, with an explicit policy for empty masks.

    ``pred``/``target`` are ``[H, W]`` (returns two floats) or ``[N, H, W]`` (returns two float64 arrays
    of length ``N``). When both masks of an image are empty the score is undefined, and papers differ;
    ``empty`` makes the choice visible: ``"one"`` -> 1.0 (correctly predicted "nothing there"),
    ``"nan"`` -> NaN (excluded from means), ``"zero"`` -> 0.0. An empty target with a non-empty
    prediction (or the reverse) always scores 0.0.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.ndim == 2 and target.ndim == 2:
        dice, iou, _ = _mask_scores(pred[None], target[None], empty)
        return float(dice[0]), float(iou[0])
    dice, iou, _ = _mask_scores(pred, target, empty)
    return dice, iou


def _nan_mean(values: np.ndarray) -> float | None:
    """Mean over the defined (non-NaN) values; ``None`` when there are none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else None


def segmentation_metrics(
    preds: np.ndarray | Sequence[np.ndarray], targets: np.ndarray | Sequence[np.ndarray], empty: str = "one"
) -> dict[str, Any]:
    """Mean Dice and IoU over images (NaN-aware), with per-image values and the empty-mask policy used.

    ``preds``/``targets`` are ``[N, H, W]`` arrays, one ``[H, W]`` mask each, or sequences of ``[H, W]``
    masks (sizes may differ between images). Scores are per image, then averaged (each image weighs the
    same, however large its structure). Images undefined under ``empty="nan"`` appear as ``None`` in the
    per-image lists (JSON has no NaN) and are left out of the means; ``n_both_empty`` counts images
    whose prediction and target were both empty, so the effect of the policy is visible in reports.
    """
    if isinstance(preds, np.ndarray) and isinstance(targets, np.ndarray):
        if preds.ndim == 2:
            preds, targets = preds[None], targets[None]
        pairs = [(preds, targets)]
    else:
        if len(preds) != len(targets):
            raise UltrasslError(f"got {len(preds)} predicted masks but {len(targets)} targets")
        pairs = [(np.asarray(p)[None], np.asarray(t)[None]) for p, t in zip(preds, targets)]
    if not pairs or sum(p.shape[0] for p, _ in pairs) == 0:
        raise UltrasslError("no masks to evaluate")

    scores = [_mask_scores(p, t, empty) for p, t in pairs]
    dice = np.concatenate([d for d, _, _ in scores])
    iou = np.concatenate([i for _, i, _ in scores])
    n_both_empty = int(sum(e.sum() for _, _, e in scores))

    def as_list(values: np.ndarray) -> list[float | None]:
        return [None if math.isnan(v) else float(v) for v in values.tolist()]

    return {
        "dice": _nan_mean(dice),
        "iou": _nan_mean(iou),
        "dice_per_image": as_list(dice),
        "iou_per_image": as_list(iou),
        "empty_policy": empty,
        "n_images": int(dice.size),
        "n_both_empty": n_both_empty,
    }
