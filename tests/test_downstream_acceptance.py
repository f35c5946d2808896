"""Issue-level acceptance on the synthetic data (slow): pre-training helps a linear probe, fine-tuning
learns the task, segmentation learns the lesions. Each measured figure is in the docstring."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny import ACCEPTANCE_LUNG

from ultrassl import api
from ultrassl.finetune.classify import ClassifyConfig, finetune_classify
from ultrassl.finetune.segment import SegmentConfig, finetune_segment
from ultrassl.methods import build_pretrain_config
from ultrassl.models.vit import EncoderSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lung(tmp_path_factory) -> Path:
    from ultrassl.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("lung")
    return make_synthetic_dataset(root / "data", **ACCEPTANCE_LUNG)


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


def test_full_finetuning_learns_the_lung_patterns_on_unseen_patients(tmp_path):
    """ResNet-18 from scratch, full fine-tuning at 64 px, 3 folds of 45 patients (2 clips each, 6 frames
    per clip). Measured over three synthetic data seeds: 0.985, 0.956 and 0.957 frame accuracy (every
    fold >= 0.93; 6-16 min each with 2 threads on shared cores). With 30 patients the same recipe gave
    0.92, 0.85 and 0.97: one fold of 10 test patients with ~8 validation patients swung the mean, hence
    the larger set."""
    from ultrassl.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(
        tmp_path / "data", n_patients=45, clips_per_patient=2, n_frames=16, n_lesion_images=0, seed=1
    )
    cfg = ClassifyConfig(
        mode="full", folds=3, epochs=25, patience=12, frame_fps=None, max_frames_per_video=6, device="cpu"
    )
    spec = EncoderSpec("resnet18", (64, 64), 16, 1)
    out = finetune_classify("scratch", data, tmp_path / "eval", cfg, scratch_spec=spec, progress=False)
    assert out["summary"]["accuracy"]["mean"] >= 0.9, out["summary"]["accuracy"]


def test_segmentation_learns_the_lesions_on_unseen_patients(tmp_path):
    """ResNet-18 + U-Net from scratch at 96 px on 90 synthetic lesion stills (45 patients), 3 folds.

    Measured with 1 thread (as `make test` runs it) over three synthetic data seeds: Dice 0.850 ± 0.032
    (seed 3, this test's; 0.846 with 2 threads), 0.881 ± 0.020 and 0.878 ± 0.021, every fold >= 0.82;
    about 8.5 minutes each on shared cores. With 60 stills (~8 validation images per fold) the selected
    epoch moved with the thread count and Dice ranged 0.76-0.83, hence the larger set."""
    from ultrassl.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(
        tmp_path / "data", n_patients=1, clips_per_patient=0, n_lesion_images=90, seed=3
    )
    cfg = SegmentConfig(folds=3, epochs=50, patience=25, batch_size=8, lr=1e-3, n_overlays=1, device="cpu")
    spec = EncoderSpec("resnet18", (96, 96), 16, 1)
    out = finetune_segment("scratch", data, tmp_path / "eval", cfg, scratch_spec=spec, progress=False)
    assert out["summary"]["dice"]["mean"] >= 0.8, out["summary"]["dice"]
