"""Training batches made in DataLoader workers give the same evaluation as made in the fitting process:
the augmentation's random numbers are drawn in batch order by the fit itself, the pixel work is done
wherever the batch is made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import tiny_vit_spec

from ultrassl.finetune.classify import ClassifyConfig, finetune_classify
from ultrassl.finetune.segment import SegmentConfig, finetune_segment

SPEC = tiny_vit_spec((32, 32))


def _results(out: Path) -> tuple:
    report = json.loads((out / "report.json").read_text())
    report["config"].pop("workers")
    predictions = (out / "predictions.csv").read_text() if (out / "predictions.csv").exists() else ""
    models = {p.name: p.read_bytes() for p in sorted((out / "models").glob("*.safetensors"))}
    return report, predictions, models


@pytest.mark.slow
def test_classification_is_the_same_with_workers(manifest, tmp_path):
    cfg = dict(mode="full", folds=2, epochs=2, max_frames_per_video=2, aug_gamma=0.2)
    for workers in (0, 2):
        finetune_classify(
            "scratch",
            manifest,
            tmp_path / str(workers),
            ClassifyConfig(**cfg, workers=workers),
            scratch_spec=SPEC,
            progress=False,
        )
    zero, two = _results(tmp_path / "0"), _results(tmp_path / "2")
    assert zero[2] and zero == two


@pytest.mark.slow
def test_segmentation_is_the_same_with_workers(manifest, tmp_path):
    cfg = dict(folds=2, epochs=2, batch_size=4, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    for workers in (0, 2):
        finetune_segment(
            "scratch",
            manifest,
            tmp_path / str(workers),
            SegmentConfig(**cfg, workers=workers),
            scratch_spec=SPEC,
            progress=False,
        )
    zero, two = _results(tmp_path / "0"), _results(tmp_path / "2")
    assert zero[2] and zero == two


def test_workers_must_not_be_negative():
    with pytest.raises(Exception, match="workers must be >= 0"):
        ClassifyConfig(workers=-1).check()
    with pytest.raises(Exception, match="workers must be >= 0"):
        SegmentConfig(workers=-1).check()
