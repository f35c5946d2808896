"""Saved fold models and ``ultrassl evaluate``: what the evaluation selected is what new data meet."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from tiny import tiny_vit_spec
from torch import nn

from ultrassl.errors import CheckpointError, UltrasslError
from ultrassl.finetune.classify import ClassifyConfig, finetune_classify
from ultrassl.finetune.evaluate import evaluate
from ultrassl.finetune.saved import linear_probe_head, read_card
from ultrassl.finetune.segment import SegmentConfig, finetune_segment

SPEC = tiny_vit_spec((32, 32))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_linear_probe_folds_into_a_head_with_sklearns_probabilities(n_classes):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (120, 16))
    y = rng.integers(0, n_classes, 120)
    x[np.arange(120), y] += 2.0
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(x), y)
    head = nn.Linear(16, n_classes)
    linear_probe_head(head, clf.coef_, clf.intercept_, clf.classes_, scaler.mean_, scaler.scale_)
    with torch.no_grad():
        ours = torch.softmax(head(torch.tensor(x, dtype=torch.float32)), -1).numpy()
    np.testing.assert_allclose(ours, clf.predict_proba(scaler.transform(x)), atol=1e-4)


def test_a_class_the_probe_never_saw_gets_probability_zero():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(60, 4)), np.repeat([0, 2], 30)  # class 1 is missing
    x[y == 2] += 1.5
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression().fit(scaler.transform(x), y)
    head = nn.Linear(4, 3)
    linear_probe_head(head, clf.coef_, clf.intercept_, clf.classes_, scaler.mean_, scaler.scale_)
    with torch.no_grad():
        p = torch.softmax(head(torch.tensor(x, dtype=torch.float32)), -1).numpy()
    assert p[:, 1].max() < 1e-6
    np.testing.assert_allclose(p[:, [0, 2]], clf.predict_proba(scaler.transform(x)), atol=1e-4)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("mode", ["linear", "full"])
def test_saved_fold_models_reproduce_the_cross_validation_predictions(manifest, tmp_path, mode):
    cfg = ClassifyConfig(mode=mode, folds=3, epochs=2, batch_size=16, max_frames_per_video=3)
    finetune_classify("scratch", manifest, tmp_path, cfg, scratch_spec=SPEC, progress=False)
    folder, card = read_card(tmp_path)
    assert card["task"] == "classify" and card["folds"] == [0, 1, 2]
    assert sorted(p.name for p in folder.glob("fold*.safetensors")) == [
        f"fold{k}.safetensors" for k in range(3)
    ]
    cv = _read_csv(tmp_path / "predictions.csv")
    names = card["class_names"]
    # each fold's saved model, given only its own test rows, must give the probabilities the CV reported
    for k in range(3):
        rows = [r for r in cv if int(r["fold"]) == k]
        sub = tmp_path / f"fold{k}.csv"
        _write_subset_manifest(manifest, {r["path"] for r in rows}, sub)
        single = tmp_path / f"single{k}"
        single.mkdir()
        (single / "model.json").write_text(json.dumps(card | {"folds": [k]}))
        (single / f"fold{k}.safetensors").write_bytes((folder / f"fold{k}.safetensors").read_bytes())
        out = evaluate(single, sub, tmp_path / f"out{k}", device="cpu", progress=False)
        got = {(r["path"], r["frame_index"]): r for r in _read_csv(Path(out["paths"]["predictions_frames"]))}
        for r in rows:
            g = got[(r["path"], r["frame_index"])]
            for c in names:
                assert float(g[f"prob_{c}"]) == pytest.approx(float(r[f"prob_{c}"]), abs=2e-4)


def _write_subset_manifest(manifest: Path, paths: set[str], out: Path) -> None:
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if str(Path(manifest).parent / r["path"]) in paths or r["path"] in paths]
        fields = reader.fieldnames
    for r in rows:  # absolute paths, since the subset lives elsewhere
        r["path"] = str(Path(manifest).parent / r["path"]) if not Path(r["path"]).is_absolute() else r["path"]
    assert rows, "no manifest row matched the predictions' paths"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def test_evaluate_writes_predictions_and_metrics_for_labelled_data(manifest, tmp_path):
    cfg = ClassifyConfig(mode="linear", folds=3, max_frames_per_video=3)
    finetune_classify("scratch", manifest, tmp_path / "eval", cfg, scratch_spec=SPEC, progress=False)
    out = evaluate(tmp_path / "eval", manifest, device="cpu", progress=False)
    assert Path(out["paths"]["metrics"]).parent == tmp_path / "eval" / f"evaluate_{manifest.stem}"
    metrics = json.loads(Path(out["paths"]["metrics"]).read_text())["metrics"]
    for level in ("frame", "video"):
        assert 0.0 <= metrics[level]["accuracy"] <= 1.0
    frames = _read_csv(Path(out["paths"]["predictions_frames"]))
    videos = _read_csv(Path(out["paths"]["predictions_videos"]))
    assert len(frames) == out["n"] and len(videos) < len(frames)
    probs = np.array([[float(r[k]) for k in r if k.startswith("prob_")] for r in frames])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_evaluate_refuses_labels_the_model_does_not_know(manifest, tmp_path):
    cfg = ClassifyConfig(mode="linear", folds=3, max_frames_per_video=2)
    finetune_classify("scratch", manifest, tmp_path / "eval", cfg, scratch_spec=SPEC, progress=False)
    text = manifest.read_text().replace(",a_lines,", ",pneumothorax,")
    other = manifest.parent / "renamed.csv"
    other.write_text(text)
    with pytest.raises(UltrasslError, match="pneumothorax"):
        evaluate(tmp_path / "eval", other, tmp_path / "out", device="cpu", progress=False)


def test_evaluate_names_a_folder_without_a_model(tmp_path):
    with pytest.raises(CheckpointError, match="model.json"):
        evaluate(tmp_path, tmp_path / "m.csv")


def test_segmentation_models_are_saved_and_evaluate_writes_masks(manifest, tmp_path):
    cfg = SegmentConfig(folds=3, epochs=2, batch_size=4, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    finetune_segment("scratch", manifest, tmp_path / "seg", cfg, scratch_spec=SPEC, progress=False)
    out = evaluate(tmp_path / "seg", manifest, device="cpu", progress=False)
    assert out["task"] == "segment" and out["n"] == 12
    assert 0.0 <= out["metrics"]["dice"] <= 1.0
    rows = _read_csv(Path(out["paths"]["predictions"]))
    mask = Path(out["paths"]["predictions"]).parent / rows[0]["pred_mask"]
    assert mask.exists()


def test_cli_finetune_then_evaluate(manifest, tmp_path, capsys):
    from ultrassl.cli import main

    common = ["--weights", "scratch", "--arch", "tiny", "--img-size", "32", "32", "--patch-size", "8"]
    assert (
        main(
            [
                "finetune",
                "classify",
                *common,
                "--data",
                str(manifest),
                "--out",
                str(tmp_path / "e"),
                "--folds",
                "3",
                "--label-fraction",
                "0.5",
                "1.0",
                "--max-frames",
                "2",
            ]
        )
        == 0
    )
    assert "accuracy" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(tmp_path / "e"), "--data", str(manifest), "--device", "cpu"]) == 0
    assert "per video" in capsys.readouterr().out


def test_evaluate_warns_about_patients_the_fold_models_were_trained_on(manifest, tmp_path, caplog):
    cfg = ClassifyConfig(mode="linear", folds=3, max_frames_per_video=2)
    finetune_classify("scratch", manifest, tmp_path / "eval", cfg, scratch_spec=SPEC, progress=False)
    lung = [r for r in _read_csv(manifest) if r["path"].endswith(".mp4")]
    n_groups = len({r["group_id"] for r in lung})
    subset = tmp_path / "lung.csv"
    _write_subset_manifest(manifest, {r["path"] for r in lung}, subset)

    # the evaluation's own patients: every one was in some fold model's training data
    with caplog.at_level("WARNING", logger="ultrassl"):
        out = evaluate(tmp_path / "eval", subset, tmp_path / "same", device="cpu", progress=False)
    (warning,) = [r.getMessage() for r in caplog.records if "not a fair estimate" in r.getMessage()]
    assert warning.startswith(
        f"{n_groups} of the {n_groups} groups (patients) in {subset} were in the training"
    )
    saved = json.loads(Path(out["paths"]["metrics"]).read_text())
    assert (saved["groups_seen_in_training"], saved["n_groups"]) == (n_groups, n_groups)

    # the same clips under new patient ids: nothing to warn about
    renamed = tmp_path / "new_patients.csv"
    text = subset.read_text()
    for g in {r["group_id"] for r in lung}:
        text = text.replace(f",{g},", f",new-{g},")
    renamed.write_text(text)
    caplog.clear()
    with caplog.at_level("WARNING", logger="ultrassl"):
        out = evaluate(tmp_path / "eval", renamed, tmp_path / "new", device="cpu", progress=False)
    assert not [r for r in caplog.records if "not a fair estimate" in r.getMessage()]
    assert json.loads(Path(out["paths"]["metrics"]).read_text())["groups_seen_in_training"] == 0

    # one fold's model alone has not seen that fold's test patients
    folds = json.loads((tmp_path / "eval" / "folds.json").read_text())["folds"]
    test0 = set(folds[0]["test_groups"])
    single = tmp_path / "single" / "models"
    single.mkdir(parents=True)
    folder, card = read_card(tmp_path / "eval")
    (single / "model.json").write_text(json.dumps(card | {"folds": [0]}))
    (single / "fold0.safetensors").write_bytes((folder / "fold0.safetensors").read_bytes())
    (tmp_path / "single" / "folds.json").write_text(json.dumps({"folds": folds}))
    fold0 = tmp_path / "fold0.csv"
    _write_subset_manifest(manifest, {r["path"] for r in lung if r["group_id"] in test0}, fold0)
    out = evaluate(single, fold0, tmp_path / "f0", device="cpu", progress=False)
    assert json.loads(Path(out["paths"]["metrics"]).read_text())["groups_seen_in_training"] == 0

    # without folds.json nothing can be checked: recorded as unknown (None)
    (tmp_path / "single" / "folds.json").unlink()
    out = evaluate(single, fold0, tmp_path / "f0", device="cpu", progress=False)
    assert json.loads(Path(out["paths"]["metrics"]).read_text())["groups_seen_in_training"] is None
