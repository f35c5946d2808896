"""Fine-tuning report: summary layout, files, figures, predictions CSV and comparison table."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from ultrassl.finetune.report import (
    FoldResult,
    build_summary,
    format_mean_std,
    fraction_key,
    headline_setting,
    write_classification_report,
)

CLASSES = ["normal", "lesion"]
#: mean accuracy of each (level, label fraction); folds deviate by -0.1, 0, +0.1 (sample std 0.1)
BASE = {("frame", 1.0): 0.8, ("frame", 0.1): 0.6, ("video", 1.0): 0.85, ("video", 0.1): 0.65}
ACC_DELTA = (-0.1, 0.0, 0.1)
BACC_DELTA = (-0.02, 0.0, 0.02)  # sample std 0.02
F1_DELTA = (0.0, 0.0, 0.06)  # mean +0.02, sample std sqrt(0.0012)


def make_metrics(level: str, frac: float, fold: int) -> dict[str, Any]:
    """A classification_metrics-style dict with known values."""
    base = BASE[(level, frac)]
    acc = base + ACC_DELTA[fold]
    return {
        "accuracy": acc,
        "balanced_accuracy": base - 0.05 + BACC_DELTA[fold],
        "macro_f1": base - 0.1 + F1_DELTA[fold],
        "auroc": acc + 0.1 if level == "frame" else None,
        "per_class": {
            "normal": {
                "precision": 0.9,
                "recall": 0.8,
                "f1": 0.85,
                "specificity": 0.9,
                "support": 10,
                "auroc": 0.9 if level == "frame" else None,
            },
            "lesion": {
                "precision": 0.8,
                "recall": 0.9,
                "f1": 0.85,
                "specificity": 0.8,
                "support": 10,
                "auroc": 0.9 if level == "frame" else None,
            },
        },
        "confusion_matrix": [[8 + fold, 2], [1, 9]],
    }


def make_results(fractions: tuple[float, ...] = (1.0, 0.1), levels: tuple[str, ...] = ("frame", "video")):
    return [
        FoldResult(
            fold=fold,
            seed=0,
            label_fraction=frac,
            level=level,
            metrics=make_metrics(level, frac, fold),
            n_train=60,
            n_val=20,
            n_test=20,
            best_epoch=3,
            val_score=0.75,
        )
        for level in levels
        for frac in fractions
        for fold in range(3)
    ]


def summarize(per_fold: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and sample std of every scalar metric (None values skipped)."""
    out = {}
    for key, value in per_fold[0].items():
        if isinstance(value, (dict, list)):
            continue
        values = [m[key] for m in per_fold if m[key] is not None]
        if not values:
            out[key] = {"mean": None, "std": None, "n": 0}
            continue
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        out[key] = {"mean": statistics.fmean(values), "std": std, "n": len(values)}
    return out


def write(tmp_path: Path, results=None, **kwargs) -> dict[str, Path]:
    results = make_results() if results is None else results
    kwargs.setdefault("summary", build_summary(results, summarize))
    kwargs.setdefault("class_names", CLASSES)
    kwargs.setdefault("config", {"model": {"arch": "vit_tiny", "ckpt": tmp_path / "enc"}, "folds": 3})
    return write_classification_report(tmp_path / "report", results=results, **kwargs)


def test_build_summary_numbers_and_headline_layout():
    summary = build_summary(make_results(), summarize)
    assert set(summary["frame"]) == {"1.0", "0.1"} and set(summary["video"]) == {"1.0", "0.1"}
    for (level, frac), base in BASE.items():
        s = summary[level][fraction_key(frac)]
        assert s["accuracy"] == {"mean": pytest.approx(base), "std": pytest.approx(0.1), "n": 3}
        assert s["balanced_accuracy"]["mean"] == pytest.approx(base - 0.05)
        assert s["balanced_accuracy"]["std"] == pytest.approx(0.02)
        assert s["macro_f1"]["mean"] == pytest.approx(base - 0.08)
        assert s["macro_f1"]["std"] == pytest.approx(math.sqrt(0.0012))
    assert summary["video"]["1.0"]["auroc"] == {"mean": None, "std": None, "n": 0}
    # headline: frame level, largest fraction, at the top level
    for metric in ("accuracy", "balanced_accuracy", "macro_f1", "auroc"):
        assert summary[metric] == summary["frame"]["1.0"][metric]
    assert summary["accuracy"]["mean"] == pytest.approx(0.8)
    assert summary["auroc"]["mean"] == pytest.approx(0.9)


def test_headline_falls_back_to_video():
    results = make_results(levels=("video",))
    assert headline_setting(results) == ("video", 1.0)
    summary = build_summary(results, summarize)
    assert "frame" not in summary
    assert summary["accuracy"]["mean"] == pytest.approx(0.85)


def test_fold_result_validation():
    with pytest.raises(ValueError, match="level"):
        FoldResult(0, 0, 1.0, "clip", {}, 1, 1, 1)
    with pytest.raises(ValueError, match="label_fraction"):
        FoldResult(0, 0, 0.0, "frame", {}, 1, 1, 1)


def test_format_mean_std():
    assert format_mean_std({"mean": 0.9123, "std": 0.0312, "n": 3}) == "0.912 ± 0.031"
    assert format_mean_std({"mean": 0.5, "std": None}) == "0.500"
    assert format_mean_std({"mean": 0.5, "std": float("nan")}) == "0.500"
    assert format_mean_std({"mean": None}) == "—"
    assert format_mean_std(None) == "—"


def test_report_files_and_json_round_trip(tmp_path):
    paths = write(tmp_path)
    assert set(paths) == {"report_json", "report_md", "confusion_matrix", "per_fold", "few_label_curve"}
    for p in paths.values():
        assert p.is_file() and p.parent == tmp_path / "report"
    assert not [p for p in (tmp_path / "report").iterdir() if ".tmp-" in p.name]
    report = json.loads(paths["report_json"].read_text(encoding="utf-8"))
    assert report["title"] == "Classification"
    assert report["class_names"] == CLASSES
    assert report["config"]["model"]["ckpt"] == str(tmp_path / "enc")
    assert report["summary"]["accuracy"]["mean"] == pytest.approx(0.8)
    assert report["summary"]["accuracy"]["std"] == pytest.approx(0.1)
    assert report["summary"]["video"]["0.1"]["accuracy"]["mean"] == pytest.approx(0.65)
    assert report["headline"] == {"level": "frame", "label_fraction": 1.0}
    assert len(report["folds"]) == 12
    fold = report["folds"][0]
    assert fold["metrics"]["confusion_matrix"] == [[8, 2], [1, 9]]
    assert fold["n_test"] == 20 and fold["best_epoch"] == 3 and fold["val_score"] == 0.75


def test_summary_without_top_level_is_completed(tmp_path):
    results = make_results()
    nested = {k: v for k, v in build_summary(results, summarize).items() if k in ("frame", "video")}
    paths = write(tmp_path, results, summary=nested)
    report = json.loads(paths["report_json"].read_text(encoding="utf-8"))
    assert report["summary"]["accuracy"]["mean"] == pytest.approx(0.8)


def test_figures_are_valid_pngs(tmp_path):
    paths = write(tmp_path)
    for key in ("confusion_matrix", "per_fold", "few_label_curve"):
        with Image.open(paths[key]) as img:
            assert img.format == "PNG"
            assert img.width > 200 and img.height > 200
            img.verify()


def test_few_label_curve_needs_two_fractions(tmp_path):
    single = make_results(fractions=(1.0,))
    paths = write(tmp_path / "one", single)
    assert "few_label_curve" not in paths
    assert not (tmp_path / "one" / "report" / "few_label_curve.png").exists()
    # another method's curve over two fractions on the same plot
    paths = write(tmp_path / "two", make_results(), curves={"scratch": make_results()}, run_name="pretrained")
    assert paths["few_label_curve"].is_file()


def test_predictions_csv_columns(tmp_path):
    predictions = [
        {
            "fold": 0,
            "seed": 0,
            "label_fraction": 1.0,
            "path": "a.png",
            "label": 0,
            "pred": 0,
            "prob_normal": 0.9,
        },
        {
            "fold": 0,
            "seed": 0,
            "label_fraction": 1.0,
            "path": "b.png",
            "label": 1,
            "pred": 1,
            "prob_lesion": 0.7,
        },
    ]
    paths = write(tmp_path, predictions=predictions)
    with open(paths["predictions"], newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == [
        "fold",
        "seed",
        "label_fraction",
        "path",
        "label",
        "pred",
        "prob_normal",
        "prob_lesion",
    ]
    assert rows[0]["path"] == "a.png" and rows[0]["prob_lesion"] == ""
    assert rows[1]["prob_lesion"] == "0.7"
    assert "predictions.csv" in paths["report_md"].read_text(encoding="utf-8")


def test_markdown_content(tmp_path):
    paths = write(tmp_path, title="Liver lesions")
    md = paths["report_md"].read_text(encoding="utf-8")
    assert md.startswith("# Liver lesions")
    # per-fold rows: fold, seed, fraction, level, acc, bacc, macro-F1, AUROC, n_test
    assert "| 0 | 0 | 1 | frame | 0.700 | 0.730 | 0.700 | 0.800 | 20 |" in md
    assert "| 2 | 0 | 0.1 | video | 0.750 | 0.620 | 0.610 | — | 20 |" in md
    # summary table: mean ± std per fraction column
    assert "| accuracy | 0.600 ± 0.100 | 0.800 ± 0.100 |" in md
    assert "| accuracy | 0.650 ± 0.100 | 0.850 ± 0.100 |" in md
    # per class (headline) and summed confusion matrix
    assert (
        "| normal | 0.900 ± 0.000 | 0.800 ± 0.000 | 0.850 ± 0.000 | 0.900 ± 0.000 | 0.900 ± 0.000 | 30 |"
        in md
    )
    assert "| normal | 27 | 6 | 33 |" in md and "| lesion | 3 | 27 | 30 |" in md
    assert "`model.arch`: vit_tiny" in md
    for name in ("confusion_matrix.png", "per_fold.png", "few_label_curve.png"):
        assert f"]({name})" in md


def test_bad_confusion_matrix_shape(tmp_path):
    with pytest.raises(ValueError, match="confusion matrix"):
        write(tmp_path, class_names=["a", "b", "c"])


# --------------------------------------------------------------------------------------------------
# Baselines, warnings, training data per label fraction ("what a user sees")
# --------------------------------------------------------------------------------------------------

THREE = ["a-lines", "b-lines", "effusion"]


def guessing_results(
    fractions: tuple[float, ...] = (0.25, 1.0), seeds: tuple[int, ...] = (0,)
) -> list[FoldResult]:
    """Three classes, four folds whose test labels are 5/3/2 per fold (pooled 20/12/8: majority 'a-lines',
    share 0.5): folds 1 and 3 predict 'a-lines' for everything, no fold ever gets 'effusion' right, and
    the scores do not change with the label fraction."""
    out = []
    for seed in seeds:
        for frac in fractions:
            for fold in range(4):
                if fold % 2:
                    cm = [[5, 0, 0], [3, 0, 0], [2, 0, 0]]  # one class predicted: accuracy 0.5, bacc 1/3
                else:
                    cm = [[2, 3, 0], [1, 2, 0], [1, 1, 0]]  # accuracy 0.4, bacc (0.4 + 2/3 + 0) / 3
                correct = sum(cm[i][i] for i in range(3))
                recalls = [cm[i][i] / sum(cm[i]) for i in range(3)]
                metrics = {
                    "accuracy": correct / 10,
                    "balanced_accuracy": sum(recalls) / 3,
                    "macro_f1": 0.3,
                    "confusion_matrix": cm,
                }
                counts = {
                    "groups": {"a-lines": 4, "b-lines": 2, "effusion": 1},
                    "frames": dict.fromkeys(THREE, 0),
                }
                counts["frames"] = {"a-lines": 40, "b-lines": 20 + fold, "effusion": 10}
                if frac < 1:
                    counts = {
                        "groups": dict.fromkeys(THREE, 1),
                        "frames": {"a-lines": 10, "b-lines": 10, "effusion": 9},
                    }
                for level in ("frame", "video"):
                    out.append(FoldResult(fold, seed, frac, level, metrics, 70, 10, 10, train_counts=counts))
    return out


def test_majority_and_chance_baselines_are_computed_from_the_test_labels(tmp_path):
    paths = write(tmp_path, guessing_results(seeds=(0, 1)), class_names=THREE)
    report = json.loads(paths["report_json"].read_text(encoding="utf-8"))
    frame = report["baselines"]["frame"]
    # pooled over the 4 test folds, each item once although there are two seeds: 20 / 12 / 8
    assert frame["test_counts"] == {"a-lines": 20, "b-lines": 12, "effusion": 8}
    assert (frame["majority_class"], frame["n_majority"], frame["n_test"]) == ("a-lines", 20, 40)
    assert frame["majority_accuracy"] == pytest.approx(0.5)
    assert frame["chance_balanced_accuracy"] == pytest.approx(1 / 3)
    assert set(report["baselines"]) == {"frame", "video"}
    md = paths["report_md"].read_text(encoding="utf-8")
    assert (
        "- majority-class baseline (frame level): 0.500 (always predicting 'a-lines': 20 of 40 test frames)"
        in md
    )
    assert (
        "- majority-class baseline (video level): 0.500 (always predicting 'a-lines': 20 of 40 test videos)"
        in md
    )
    assert "- chance balanced accuracy: 0.333 (1 / 3 classes)" in md


def test_baseline_falls_back_to_per_class_support_without_confusion_matrices(tmp_path):
    results = make_results()
    for r in results:
        r.metrics = {k: v for k, v in r.metrics.items() if k != "confusion_matrix"}
        r.metrics["per_class"]["lesion"] = {**r.metrics["per_class"]["lesion"], "support": 30}
    paths = write(tmp_path, results)
    frame = json.loads(paths["report_json"].read_text(encoding="utf-8"))["baselines"]["frame"]
    assert (frame["majority_class"], frame["n_majority"], frame["n_test"]) == ("lesion", 90, 120)
    assert frame["majority_accuracy"] == pytest.approx(0.75)


def test_each_warning_fires_on_a_model_no_better_than_guessing(tmp_path):
    paths = write(
        tmp_path, guessing_results(), class_names=THREE, title="Classification by full fine-tuning of x"
    )
    report = json.loads(paths["report_json"].read_text(encoding="utf-8"))
    checks = [(w["check"], w["level"]) for w in report["warnings"]]
    for level in ("frame", "video"):
        # mean accuracy (0.4 + 0.5 + 0.4 + 0.5) / 4 = 0.45 <= 0.5; mean bacc 0.3444 is above 1/3
        assert ("below_majority", level) in checks
        assert ("below_chance", level) not in checks
        assert ("class_never_recalled", level) in checks
        assert ("flat_curve", level) in checks
    assert checks.count(("single_class_folds", "frame")) == 1  # once per level, every fraction named
    md = paths["report_md"].read_text(encoding="utf-8")
    warnings_block = md.split("## Warnings")[1].split("\n## ")[0]
    assert (
        "- frame level: accuracy 0.450 ± 0.058 is not above the majority-class baseline 0.500 "
        "(always predicting 'a-lines')." in warnings_block
    )
    assert "class 'effusion' has recall 0: none of its 8 test frames" in warnings_block
    assert (
        "- frame level: the model predicts one class for every test frame at 100% labels in fold 1 (all "
        "'a-lines', balanced accuracy 0.333), fold 3 (all 'a-lines', balanced accuracy 0.333); at 25% labels "
        "in fold 1" in warnings_block
    )
    assert "the few-label curve does not rise beyond its spread over folds" in warnings_block
    assert "with 7 training groups per fold at 100%" in warnings_block
    # the blocks come first, in this order
    assert md.index("## How to read this") < md.index("## Headline") < md.index("## Warnings")
    assert md.index("## Warnings") < md.index("## Training data per label fraction") < md.index("## Summary")


def test_below_chance_and_near_majority(tmp_path):
    results = guessing_results(fractions=(1.0,))
    for r in results:  # a fold-to-fold spread that reaches the baseline, and balanced accuracy at chance
        r.metrics = {**r.metrics, "accuracy": 0.5 + 0.1 * (r.fold % 2), "balanced_accuracy": 1 / 3}
    paths = write(tmp_path, results, class_names=THREE)
    report = json.loads(paths["report_json"].read_text(encoding="utf-8"))
    checks = {w["check"] for w in report["warnings"]}
    assert {"near_majority", "below_chance"} <= checks and "below_majority" not in checks
    assert "flat_curve" not in checks  # one label fraction: no curve
    md = paths["report_md"].read_text(encoding="utf-8")
    assert (
        "is above the majority-class baseline 0.500 (always predicting 'a-lines') by no more than its spread"
        in md
    )
    assert "balanced accuracy 0.333 ± 0.000 is not above chance (0.333 = 1 / 3 classes)." in md


def test_a_clear_result_has_no_warnings_and_says_how_to_read_it(tmp_path):
    paths = write(tmp_path, selection="the epoch with the best balanced accuracy on validation.")
    report = json.loads(paths["report_json"].read_text(encoding="utf-8"))
    assert report["warnings"] == [] and report["training_counts"] == {}
    md = paths["report_md"].read_text(encoding="utf-8")
    assert "## Warnings\n\nNone: " in md
    how = md.split("## How to read this")[1].split("\n## ")[0]
    for words in ("**Frame level**", "**Video level**", "mean of its frames' predicted class probabilities",
                  "spread over folds", "**Label fraction**", "majority-class baseline"):  # fmt: skip
        assert words in how, words
    assert "- **Model selection**: the epoch with the best balanced accuracy on validation." in how
    assert "Training data per label fraction" not in md  # nothing recorded: no table, no pointer to it


def test_training_data_per_label_fraction(tmp_path):
    paths = write(tmp_path, guessing_results(), class_names=THREE)
    report = json.loads(paths["report_json"].read_text(encoding="utf-8"))
    top = report["training_counts"]["1.0"]
    assert top["n_runs"] == 4
    assert top["b-lines"]["frames"] == {"min": 20, "max": 23, "mean": 21.5}
    assert top["all"]["groups"] == {"min": 7, "max": 7, "mean": 7.0}
    md = paths["report_md"].read_text(encoding="utf-8")
    assert (
        "| 25% | 1 groups, 10 frames | 1 groups, 10 frames | 1 groups, 9 frames | 3 groups, 29 frames |" in md
    )
    assert (
        "| 100% | 4 groups, 40 frames | 2 groups, 20–23 frames | 1 groups, 10 frames | 7 groups, 70–73 frames |"
        in md
    )
    assert report["folds"][0]["train_counts"]["groups"]["a-lines"] == 1


def test_few_label_curve_has_a_balanced_accuracy_panel(tmp_path):
    paths = write(tmp_path)
    with Image.open(paths["few_label_curve"]) as im:
        width, height = im.size
    assert width > 1.5 * height  # two panels side by side: accuracy and balanced accuracy
