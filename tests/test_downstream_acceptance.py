"""Issue-level acceptance on the synthetic data (slow): pre-training helps a linear probe, fine-tuning
learns the task, segmentation learns the lesions. Each measured figure is in the docstring."""

from __future__ import annotations

from pathlib import Path

import pytest

from ultrassl import api
from ultrassl.config import build_pretrain_config
from ultrassl.finetune.classify import ClassifyConfig, finetune_classify

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lung(tmp_path_factory) -> Path:
    from ultrassl.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("lung")
    return make_synthetic_dataset(
        root / "data",
        n_patients=18,
        clips_per_patient=1,
        n_frames=8,
        size=(64, 64),
        n_lesion_images=0,
        seed=4,
    )


def test_deblurring_mae_linear_probe_beats_scratch(lung, tmp_path):
    """Deblurring MAE (tiny ViT, 1500 steps, as the demo) vs the same ViT at random init, 5-fold linear
    probe. Measured in the demo: 0.591 ± 0.210 vs 0.319 ± 0.257 frame accuracy (600 steps on 18
    one-clip patients gave only 0.576 vs 0.556: too few steps and patients for a reliable gap)."""
    cfg = build_pretrain_config(
        method="deblur-mae",
        preset="tiny",
        flags={"data": {"manifest": str(lung)}, "train": {"max_steps": 1500, "seed": 0, "log_every": 100}},
    )
    api.pretrain(cfg, tmp_path / "run", progress=False)
    probe = ClassifyConfig(mode="linear", folds=5, frame_fps=None, max_frames_per_video=8, device="cpu")
    acc = {}
    for name, weights in (("pretrained", tmp_path / "run"), ("scratch", "scratch")):
        out = finetune_classify(
            weights, lung, tmp_path / name, probe, scratch_like=tmp_path / "run", progress=False
        )
        acc[name] = out["summary"]["accuracy"]["mean"]
    assert acc["pretrained"] > acc["scratch"] + 0.1, acc
