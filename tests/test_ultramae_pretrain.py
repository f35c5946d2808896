"""UltraMAE end to end on tiny synthetic data: mixed image/clip batches train, resume, export, reconstruct."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from crash import CrashAfter, seeded_trainer

from ultrassl import api, confidence
from ultrassl.checkpoint import safe_load
from ultrassl.methods import build_pretrain_config
from ultrassl.training import Trainer

torch.set_num_threads(1)

TINY = [
    "encoder.arch=tiny",
    "encoder.img_size=[32, 32]",
    "encoder.patch_size=8",
    "encoder.model_args={embed_dim: 32, depth: 2, num_heads: 2}",
    "ultramae.decoder_dim=32",
    "ultramae.decoder_depth=1",
    "ultramae.decoder_heads=2",
    "ultramae.clip_frames=4",
    "ultramae.max_clips_per_video=2",
    "optim.lr=2e-3",
    "optim.warmup_steps=5",
    "train.batch_size=4",
    "train.log_every=1",
    "train.checkpoint_every=1000",
    "train.precision=fp32",
    "train.tensorboard=false",
]


def _fake_confidence_maps(
    frames: np.ndarray, alpha: float = 2.0, beta: float = 90.0, gamma: float = 0.05, **_
):
    """Depth ramp x a little image dependence: stands in for the random-walk solver in these tests."""
    ramp = np.linspace(1.0, 0.2, frames.shape[1], dtype=np.float32)[None, :, None]
    return np.clip(ramp * (0.8 + 0.2 * frames), 0.0, 1.0).astype(np.float32)


_REAL_CONFIDENCE_MAPS = confidence.confidence_maps


@pytest.fixture(autouse=True)
def fake_confidence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(confidence, "confidence_maps", _fake_confidence_maps)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ultrassl.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    # 6 stills + 4 videos of 16 frames at 12 fps -> 2 clips of 4 frames at 6 fps each: 6 images, 8 clips
    return make_synthetic_dataset(
        root, n_patients=2, clips_per_patient=2, n_frames=16, size=(48, 64), n_lesion_images=6, fps=12.0
    )


def _cfg(manifest: Path, *extra: str, max_steps: int | None = None):
    flags = {"data": {"manifest": str(manifest)}, "train": {"max_steps": max_steps}}
    return build_pretrain_config(method="ultramae", flags=flags, overrides=[*TINY, *extra])


def _losses(run: Path) -> list[float]:
    with (run / "metrics.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_mixed_batches_train_and_loss_falls_over_50_steps(manifest: Path, tmp_path: Path) -> None:
    cfg = _cfg(manifest, max_steps=50)
    dataset = api.build_pretrain_data(cfg, progress=False).train
    assert dataset.n_images == 6 and len(dataset) == 14
    kinds = {len(b) and (b[0] < dataset.n_images) for b in dataset.batches(0, 4)}
    assert kinds == {True, False}  # each epoch holds image batches and clip batches
    result = api.pretrain(cfg, tmp_path / "run", progress=False)
    losses = _losses(tmp_path / "run")
    assert result.step == 50 and len(losses) == 50 and all(np.isfinite(losses))
    first, last = np.mean(losses[:6]), np.mean(losses[-6:])  # two whole epochs each (3 batches an epoch)
    assert last < 0.7 * first, (first, last)

    # downstream: the export is a timm ViT without CLS token that loads like any other
    export_dir = api.export(tmp_path / "run", tmp_path / "export")
    from ultrassl.finetune.backbones import load_backbone
    from ultrassl.models.pooling import pooled_features

    backbone = load_backbone(export_dir)
    assert backbone.encoder.num_prefix_tokens == 0 and backbone.spec.img_size == (32, 32)
    _, model, _ = api.load_run(tmp_path / "run")
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            pooled_features(backbone.encoder, x), model.encoder(x.unsqueeze(2)).mean(1), atol=1e-5, rtol=1e-4
        )
    grid = api.reconstruct(tmp_path / "run", manifest, tmp_path / "rec.png", n=3)
    assert grid.exists() and grid.stat().st_size > 0


@pytest.mark.parametrize(("modality", "target"), [("images", "cwus"), ("videos", "raw")])
def test_ablation_switches_run(manifest: Path, tmp_path: Path, modality: str, target: str) -> None:
    cfg = _cfg(manifest, f"ultramae.modality={modality}", f"ultramae.target={target}", max_steps=2)
    dataset = api.build_pretrain_data(cfg, progress=False).train
    assert dataset.n_images == (6 if modality == "images" else 0)
    assert len(dataset) == (6 if modality == "images" else 8)
    assert api.pretrain(cfg, tmp_path / "run", progress=False).step == 2


def test_crash_mid_epoch_then_resume_is_bit_identical(manifest: Path, tmp_path: Path) -> None:
    cfg = _cfg(manifest, "train.checkpoint_every=4", max_steps=9)
    dataset = api.build_pretrain_data(cfg, progress=False).train

    def trainer(run: str, data, resume: bool = False) -> Trainer:
        return seeded_trainer(cfg, tmp_path / run, data, resume)

    ref = trainer("ref", dataset).fit()
    # 3 batches an epoch: the checkpoint at step 4 lies one batch into epoch 1; crash in step 6
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer("run", CrashAfter(dataset, 5 * 4)).fit()
    assert safe_load(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 4
    resumed = trainer("run", dataset, resume=True).fit()
    assert resumed.step == ref.step == 9
    wa, wb = safe_load(ref.checkpoint)["model"], safe_load(resumed.checkpoint)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _losses(tmp_path / "run") == _losses(tmp_path / "ref")


def test_real_confidence_maps_feed_the_target(manifest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(confidence, "confidence_maps", _REAL_CONFIDENCE_MAPS)
    cfg = _cfg(manifest, "ultramae.modality=images")
    ds = api.build_pretrain_data(cfg, progress=False).train
    conf = ds.cache.images[0].confidence.astype(np.float32) / 255
    assert conf.shape == ds.cache.images[0].frames.shape
    assert conf[0, :3].mean() > conf[0, -3:].mean()  # confidence falls with depth


def test_cli_pretrain_export_reconstruct(manifest: Path, tmp_path: Path) -> None:
    from ultrassl.cli import main

    sets = [a for item in TINY for a in ("--set", item)]
    run = tmp_path / "run"
    argv = [
        "pretrain",
        "--method",
        "ultramae",
        "--data",
        str(manifest),
        "--out",
        str(run),
        "--max-steps",
        "2",
    ]
    assert main([*argv, *sets]) == 0
    assert main(["export", str(run), "-o", str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "model.safetensors").exists()
    assert (
        main(["reconstruct", str(run), "--data", str(manifest), "-o", str(tmp_path / "r.png"), "-n", "2"])
        == 0
    )
    assert (tmp_path / "r.png").exists()


def test_downstream_classify_and_segment_from_an_ultramae_run(tmp_path: Path) -> None:
    """The run's encoder goes through `finetune classify` (frames of videos and stills) and `finetune
    segment` with the decoder-shaped head, as any other method's does."""
    from ultrassl.data.synthetic import make_synthetic_dataset
    from ultrassl.finetune.classify import ClassifyConfig, finetune_classify
    from ultrassl.finetune.segment import SegmentConfig, finetune_segment

    manifest = make_synthetic_dataset(
        tmp_path / "data", n_patients=6, clips_per_patient=1, n_frames=4, size=(48, 64), n_lesion_images=12
    )
    run = tmp_path / "run"
    api.pretrain(_cfg(manifest, max_steps=2), run, progress=False)
    cls_cfg = ClassifyConfig(mode="linear", folds=2, max_frames_per_video=2)
    out = finetune_classify(run, manifest, tmp_path / "cls", cls_cfg, progress=False)
    assert (tmp_path / "cls" / "report.json").exists() and out
    seg_cfg = SegmentConfig(
        head="mae",
        folds=2,
        epochs=1,
        batch_size=2,
        decoder_dim=32,
        decoder_depth=1,
        decoder_heads=2,
        device="cpu",
    )
    seg = finetune_segment(run, manifest, tmp_path / "seg", seg_cfg, progress=False)
    assert seg["n_images"] == 12
