"""Classification evaluation: the protocol (test folds read once, after selection) and the outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from tiny import tiny_vit_spec

from ultrassl.data.frameset import load_frameset
from ultrassl.data.group_folds import read_folds
from ultrassl.data.manifest import read_manifest
from ultrassl.finetune.backbones import load_backbone
from ultrassl.finetune.classify import Classifier, ClassifyConfig, Phase, finetune_classify
from ultrassl.finetune.splits import group_indices

SPEC = tiny_vit_spec((32, 32))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    from ultrassl.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("cls")
    return make_synthetic_dataset(
        root / "data", n_patients=9, clips_per_patient=1, n_frames=8, size=(64, 64), n_lesion_images=0, seed=1
    )


def _recorded_run(manifest: Path, cfg: ClassifyConfig):
    backbone = load_backbone("scratch", scratch_spec=SPEC)
    data = load_frameset(read_manifest(manifest), cfg, in_chans=1, progress=False)
    clf = Classifier(backbone, data, cfg)
    log: list[tuple[int | None, Phase, set[int]]] = []
    data.record = lambda phase, index: log.append((clf.current_fold, phase, set(index.tolist())))
    out = clf.run()
    return clf, data, out, log


@pytest.mark.parametrize("mode", ["linear", "full"])
def test_test_fold_is_read_only_after_model_selection(manifest, mode):
    cfg = ClassifyConfig(mode=mode, folds=3, epochs=2, batch_size=8, max_frames_per_video=3, patience=5)
    clf, data, out, log = _recorded_run(manifest, cfg)
    assert log, "the data set recorded no access"
    for k, fold in enumerate(out.folds):
        test = set(group_indices(data.groups, fold.test_groups).tolist())
        events = [(phase, idx) for f, phase, idx in log if f == k]
        # before this fold's test phase, none of its test frames is read
        for phase, idx in events:
            if phase is not Phase.TEST:
                assert not (idx & test), f"fold {k}: test frames read during {phase}"
        test_events = [i for i, (phase, _) in enumerate(events) if phase is Phase.TEST]
        other_events = [i for i, (phase, _) in enumerate(events) if phase is not Phase.TEST]
        if mode == "full":  # fine-tuning reads test frames exactly once, after all training/validation
            assert len(test_events) == 1 and test_events[0] > max(other_events)
            assert events[test_events[0]][1] == test
        else:  # frozen features: a test frame may have been embedded earlier as another fold's training frame
            for i in test_events:
                assert events[i][1] <= test and i > max(other_events)


def test_linear_probe_writes_folds_report_and_predictions(manifest, tmp_path):
    cfg = ClassifyConfig(mode="linear", folds=3, seeds=(0, 1), label_fractions=(0.5, 1.0))
    out = finetune_classify("scratch", manifest, tmp_path, cfg, scratch_spec=SPEC, progress=False)
    folds = read_folds(tmp_path / "folds.json")  # refuses a leaky file
    assert len(folds) == 3
    report = json.loads((tmp_path / "report.json").read_text())
    summary = report["summary"]
    for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert set(summary[metric]) >= {"mean", "std"}
        assert 0.0 <= summary[metric]["mean"] <= 1.0
    assert summary["accuracy"]["n"] == 3 * 2  # folds x seeds at the headline fraction
    assert set(summary["video"]) == {"0.5", "1.0"}
    for name in (
        "report.md",
        "confusion_matrix.png",
        "per_fold.png",
        "few_label_curve.png",
        "predictions.csv",
    ):
        assert (tmp_path / name).exists(), name
    with (tmp_path / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    # every frame is predicted exactly once per (seed, label fraction): the test folds partition the data
    assert len(rows) == out["n_frames"] * 2 * 2
    per_setting = {}
    for r in rows:
        per_setting.setdefault((r["seed"], r["label_fraction"]), []).append((r["path"], r["frame_index"]))
    assert all(len(v) == len(set(v)) == out["n_frames"] for v in per_setting.values())
    probs = np.array([[float(r[k]) for k in r if k.startswith("prob_")] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    # what a new user reads first: how to read it, the baselines, the warnings, the training data used
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# Classification by linear probe of scratch")
    for block in ("## How to read this", "## Headline", "## Warnings", "## Training data per label fraction"):
        assert block in md, block
    assert "- chance balanced accuracy: " in md and "- majority-class baseline (frame level): " in md
    # the majority baseline is the most common label's share among the test frames (each tested once)
    labels = [r["label"] for r in rows if r["seed"] == "0" and float(r["label_fraction"]) == 1.0]
    top = max(set(labels), key=labels.count)
    assert report["baselines"]["frame"]["majority_accuracy"] == pytest.approx(labels.count(top) / len(labels))
    assert isinstance(report["warnings"], list)
    for fold in report["folds"]:  # every run recorded the groups and frames per class it trained on
        assert sum(fold["train_counts"]["frames"].values()) == fold["n_train"]
        assert all(n >= 1 for n in fold["train_counts"]["groups"].values())


def test_partial_mode_trains_only_the_last_blocks(manifest):
    cfg = ClassifyConfig(mode="partial", train_blocks=1, folds=3, epochs=1, max_frames_per_video=2)
    backbone = load_backbone("scratch", scratch_spec=SPEC)
    data = load_frameset(read_manifest(manifest), cfg, in_chans=1, progress=False)
    model = Classifier(backbone, data, cfg)._make_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("blocks.1.", "norm.", "head.")) for n in trainable)
    assert any(n.startswith("head.") for n in trainable)
