"""Metrics agree with scikit-learn, edge cases follow their documented policy, outputs are JSON-ready."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from ultrassl.errors import UltrasslError
from ultrassl.metrics import classification_metrics, dice_iou, segmentation_metrics, summarize

NAMES = ["benign", "malignant", "normal"]


def _random_probs(n: int, c: int, seed: int) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(n, c))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_classification_matches_sklearn_all_classes_present() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=60)
    prob = _random_probs(60, 3, seed=1)
    pred = prob.argmax(1)
    m = classification_metrics(y.tolist(), prob, NAMES)

    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, prob, multi_class="ovr"))
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    rec = recall_score(y, pred, labels=[0, 1, 2], average=None, zero_division=0)
    prec = precision_score(y, pred, labels=[0, 1, 2], average=None, zero_division=0)
    for c, name in enumerate(NAMES):
        pc = m["per_class"][name]
        assert pc["recall"] == pytest.approx(rec[c])
        assert pc["precision"] == pytest.approx(prec[c])
        assert pc["support"] == int((y == c).sum())
        assert pc["auroc"] == pytest.approx(roc_auc_score(y == c, prob[:, c]))
    json.dumps(m, allow_nan=False)  # plain Python values only


def test_classification_with_class_absent_from_y_true() -> None:
    rng = np.random.default_rng(3)
    y = rng.choice([0, 2], size=40)  # class 1 ("malignant") absent from this fold
    prob = _random_probs(40, 3, seed=4)
    pred = prob.argmax(1)
    assert 1 in pred  # the absent class is still predicted sometimes, so it shows up in F1
    m = classification_metrics(y, prob, NAMES)

    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    with pytest.warns(UserWarning):  # sklearn warns; our wrapper must not
        expected_bacc = balanced_accuracy_score(y, pred)
    assert m["balanced_accuracy"] == pytest.approx(expected_bacc)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    # Macro AUROC over the present classes only; the absent class reports None.
    expected_auroc = np.mean([roc_auc_score(y == c, prob[:, c]) for c in (0, 2)])
    assert m["auroc"] == pytest.approx(expected_auroc)
    assert m["per_class"]["malignant"]["auroc"] is None
    assert m["per_class"]["malignant"]["support"] == 0
    assert m["per_class"]["malignant"]["recall"] == 0.0
    cm = m["confusion_matrix"]
    assert len(cm) == 3 and all(len(r) == 3 for r in cm)
    assert cm[1] == [0, 0, 0]
    assert cm == confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    json.dumps(m, allow_nan=False)


def test_classification_single_class_has_no_auroc() -> None:
    prob = _random_probs(10, 3, seed=5)
    m = classification_metrics([2] * 10, prob, NAMES)
    assert m["auroc"] is None
    assert all(pc["auroc"] is None for pc in m["per_class"].values())


def test_specificity_hand_checked() -> None:
    # y_true = [0, 0, 1, 1, 2], y_pred = [0, 1, 1, 1, 0]
    y = [0, 0, 1, 1, 2]
    prob = np.eye(3)[[0, 1, 1, 1, 0]] * 0.8 + 0.2 / 3
    m = classification_metrics(y, prob, ["a", "b", "c"])
    # class a: TP=1, FP=1 (the c sample), TN = samples neither true a nor predicted a = 2 (the two b's)
    assert m["per_class"]["a"]["specificity"] == pytest.approx(2 / 3)
    # class b: TP=2, FP=1, negatives = {0, 0, 2} -> TN = 2 -> 2/3
    assert m["per_class"]["b"]["specificity"] == pytest.approx(2 / 3)
    # class c: never predicted -> TN = 4 of 4 negatives
    assert m["per_class"]["c"]["specificity"] == pytest.approx(1.0)
    assert m["per_class"]["c"]["recall"] == 0.0
    assert m["per_class"]["c"]["precision"] == 0.0  # zero_division=0
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_classification_rejects_bad_shapes() -> None:
    with pytest.raises(UltrasslError, match="shape"):
        classification_metrics([0, 1], np.zeros((3, 2)), ["a", "b"])
    with pytest.raises(UltrasslError, match="outside"):
        classification_metrics([0, 5], np.full((2, 2), 0.5), ["a", "b"])


def test_summarize_mean_sample_std_and_skips_none() -> None:
    folds = [
        {"accuracy": 0.5, "auroc": 0.7},
        {"accuracy": 0.7, "auroc": None},
        {"accuracy": 0.9, "auroc": 0.9},
    ]
    s = summarize(folds, keys=("accuracy", "auroc", "macro_f1"))
    assert s["accuracy"]["mean"] == pytest.approx(0.7)
    assert s["accuracy"]["std"] == pytest.approx(0.2)  # sample std (ddof=1) of 0.5, 0.7, 0.9
    assert s["accuracy"]["n"] == 3
    assert s["auroc"] == {
        "mean": pytest.approx(0.8),
        "std": pytest.approx(np.std([0.7, 0.9], ddof=1)),
        "n": 2,
    }
    assert s["macro_f1"] == {"mean": None, "std": None, "n": 0}
    one = summarize([{"accuracy": 0.4}], keys=("accuracy",))
    assert one["accuracy"] == {"mean": pytest.approx(0.4), "std": 0.0, "n": 1}


def test_summarize_default_keys() -> None:
    folds = [{"accuracy": 1.0, "balanced_accuracy": 1.0, "macro_f1": 1.0, "auroc": 1.0}] * 2
    assert set(summarize(folds)) == {"accuracy", "balanced_accuracy", "macro_f1", "auroc"}


def _square(y0: int, x0: int, h: int, w: int, size: int = 8) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[y0 : y0 + h, x0 : x0 + w] = True
    return m


def test_dice_iou_hand_made_masks() -> None:
    target = _square(0, 0, 4, 4)  # 16 px
    assert dice_iou(target, target) == (1.0, 1.0)
    half = _square(0, 0, 4, 2)  # 8 px, inside the target
    d, i = dice_iou(half, target)
    assert d == pytest.approx(2 * 8 / (8 + 16))
    assert i == pytest.approx(8 / 16)
    shifted = _square(0, 2, 4, 4)  # half overlap of two 16-px squares
    d, i = dice_iou(shifted, target)
    assert d == pytest.approx(0.5)
    assert i == pytest.approx(8 / 24)
    d, i = dice_iou(_square(4, 4, 4, 4), target)  # disjoint
    assert (d, i) == (0.0, 0.0)
    # int 0/1 masks are accepted and give the same answer
    assert dice_iou(shifted.astype(np.uint8), target.astype(np.int64)) == pytest.approx((0.5, 8 / 24))


@pytest.mark.parametrize(("policy", "expected"), [("one", 1.0), ("zero", 0.0), ("nan", math.nan)])
def test_dice_iou_empty_policies(policy: str, expected: float) -> None:
    empty = np.zeros((8, 8), dtype=bool)
    d, i = dice_iou(empty, empty, empty=policy)
    if math.isnan(expected):
        assert math.isnan(d) and math.isnan(i)
    else:
        assert (d, i) == (expected, expected)
    # target empty but prediction not (and the reverse): always 0, whatever the policy
    assert dice_iou(_square(0, 0, 2, 2), empty, empty=policy) == (0.0, 0.0)
    assert dice_iou(empty, _square(0, 0, 2, 2), empty=policy) == (0.0, 0.0)


def test_dice_iou_batch_and_errors() -> None:
    target = np.stack([_square(0, 0, 4, 4), np.zeros((8, 8), bool)])
    pred = np.stack([_square(0, 2, 4, 4), np.zeros((8, 8), bool)])
    d, i = dice_iou(pred, target, empty="nan")
    assert d.shape == (2,) and d[0] == pytest.approx(0.5) and math.isnan(d[1])
    with pytest.raises(UltrasslError, match="binary"):
        dice_iou(target.astype(np.uint8) * 255, target)
    with pytest.raises(UltrasslError, match="differ"):
        dice_iou(pred[0], target[0, :4])
    with pytest.raises(UltrasslError, match="empty must be"):
        dice_iou(pred, target, empty="ignore")


def test_segmentation_metrics_policies() -> None:
    empty = np.zeros((8, 8), dtype=bool)
    preds = np.stack([_square(0, 2, 4, 4), _square(0, 0, 4, 4), empty])
    targets = np.stack([_square(0, 0, 4, 4), _square(0, 0, 4, 4), empty])

    one = segmentation_metrics(preds, targets, empty="one")
    assert one["dice_per_image"] == pytest.approx([0.5, 1.0, 1.0])
    assert one["dice"] == pytest.approx(2.5 / 3)
    assert one["iou"] == pytest.approx((1 / 3 + 1 + 1) / 3)
    assert one["empty_policy"] == "one" and one["n_both_empty"] == 1 and one["n_images"] == 3

    nan = segmentation_metrics(preds, targets, empty="nan")
    assert nan["dice_per_image"][:2] == pytest.approx([0.5, 1.0]) and nan["dice_per_image"][2] is None
    assert nan["dice"] == pytest.approx(0.75)  # the empty image is excluded from the mean
    json.dumps(nan, allow_nan=False)

    zero = segmentation_metrics(preds, targets, empty="zero")
    assert zero["dice"] == pytest.approx(0.5)

    all_empty = segmentation_metrics([empty], [empty], empty="nan")
    assert all_empty["dice"] is None and all_empty["iou"] is None


def test_segmentation_metrics_list_of_different_sizes() -> None:
    preds = [_square(0, 0, 4, 4, size=8), _square(0, 0, 2, 2, size=16)]
    targets = [_square(0, 2, 4, 4, size=8), _square(0, 0, 2, 2, size=16)]
    m = segmentation_metrics(preds, targets)
    assert m["dice_per_image"] == pytest.approx([0.5, 1.0])
    with pytest.raises(UltrasslError, match="targets"):
        segmentation_metrics(preds, targets[:1])
