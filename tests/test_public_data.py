"""Smoke runs on the real data beside the repository (../shared/data); skipped when it is absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import tiny_vit_spec

from ultrassl import api
from ultrassl.data.manifest import read_manifest
from ultrassl.data.public import write_pocus_labels
from ultrassl.finetune.classify import ClassifyConfig, finetune_classify

POCUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pocus"


@pytest.mark.slow
@pytest.mark.skipif(not (POCUS / "manifest.csv").exists(), reason="../shared/data/pocus is not here")
def test_pocus_five_fold_linear_probe_smoke(tmp_path):
    labels = tmp_path / "pocus_labels.csv"
    n_labelled = write_pocus_labels(POCUS, labels)
    assert n_labelled == 110  # convex covid/pneumonia/regular, as the data README counts
    manifest = tmp_path / "pocus.csv"
    summary = api.index(POCUS, manifest, labels_csv=labels)
    assert summary.by_kind.get("video", 0) >= 90
    rows = [r for r in read_manifest(manifest) if r.label]
    assert len(rows) == 110 and len({r.group_id for r in rows}) == 70
    spec = tiny_vit_spec((64, 64))
    cfg = ClassifyConfig(mode="linear", folds=5)
    out = finetune_classify("scratch", manifest, tmp_path / "eval", cfg, scratch_spec=spec, progress=False)
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["summary"]["accuracy"]["n"] == 5
    assert 0.0 <= report["summary"]["accuracy"]["mean"] <= 1.0
    assert out["n_frames"] >= 1400  # 3 Hz, at most 30 frames per video, plus the stills
    assert (tmp_path / "eval" / "report.md").exists()
