"""The method contract, checked for every registered method (the built-ins and a user's toy module):
finite loss, gradients reach the encoder, same seed -> same loss, the export loads in plain timm, and
two steps resume bit-exactly. A new method gets all of this by registering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from crash import CrashAfter, seeded_trainer
from tiny import TINY_CONVVIT_OVERRIDES, TINY_SECTIONS, TINY_VIT_OVERRIDES
from torch.utils.data import DataLoader

import ultrassl.api as api
from ultrassl.checkpoint import safe_load
from ultrassl.data.epochs import EpochDataset
from ultrassl.methods import build_pretrain_config, load_plugin, method_names
from ultrassl.training import Trainer

TOY = Path(__file__).resolve().parents[1] / "toy_method.py"
load_plugin(str(TOY))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ultrassl.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("contract")
    return make_synthetic_dataset(
        root, n_patients=3, clips_per_patient=2, n_frames=8, size=(48, 64), n_lesion_images=6, seed=0
    )


def _cfg(method: str, manifest: Path, **train):
    probe = build_pretrain_config(method)
    if probe.encoder.arch.startswith("resnet"):
        overrides = ["encoder.img_size=[32, 32]"]
    elif probe.encoder.arch.startswith("convvit"):
        overrides = list(TINY_CONVVIT_OVERRIDES)
    else:
        overrides = list(TINY_VIT_OVERRIDES)
    for section in vars(probe):
        overrides += TINY_SECTIONS.get(section, [])
    flags = {
        "data": {"manifest": str(manifest)},
        "train": {"batch_size": 4, "precision": "fp32", "tensorboard": False, "log_every": 1, **train},
        "optim": {"warmup_steps": 1},
    }
    cfg = build_pretrain_config(method, flags=flags, overrides=overrides)
    return api.prepare_config(cfg)


def _batch(data: EpochDataset | torch.utils.data.Dataset, n: int = 4) -> dict[str, torch.Tensor]:
    own = data.batches(0, n) if isinstance(data, EpochDataset) else None
    loader = DataLoader(data, batch_sampler=own) if own else DataLoader(data, batch_size=n)
    return next(iter(loader))


@pytest.fixture(params=method_names())
def method(request: pytest.FixtureRequest) -> str:
    return request.param


def test_registry_holds_the_builtins_and_the_toy():
    assert {"mae", "deblur-mae", "convmae", "deblur-convmae", "ultramae", "uscl", "toy-patch-mean"} <= set(
        method_names()
    )


def test_loss_is_finite_gradients_reach_the_encoder_and_seeds_repeat(method: str, manifest: Path):
    cfg = _cfg(method, manifest)
    data = api.build_pretrain_data(cfg, progress=False)
    batch = _batch(data.train)
    models, losses = [], []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(api.build_model(cfg).train())
        torch.manual_seed(1)
        losses.append(models[-1](batch)["loss"])
    model, loss = models[-1], losses[-1]
    assert loss.ndim == 0 and torch.isfinite(loss), loss
    assert torch.equal(losses[0], losses[1])  # same seed, same loss
    loss.backward()
    grads = [p.grad for p in model.encoder.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_two_steps_resume_bit_exactly(method: str, manifest: Path, tmp_path: Path):
    cfg = _cfg(method, manifest, max_steps=2, checkpoint_every=1)
    data = api.build_pretrain_data(cfg, progress=False).train

    def trainer(run: str, dataset, resume: bool = False) -> Trainer:
        return seeded_trainer(cfg, tmp_path / run, dataset, resume)

    ref = trainer("ref", data).fit()
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer("run", CrashAfter(data, cfg.train.batch_size)).fit()  # dies in step 2
    assert safe_load(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 1
    resumed = trainer("run", data, resume=True).fit()
    assert resumed.step == ref.step == 2
    wa, wb = safe_load(ref.checkpoint)["model"], safe_load(resumed.checkpoint)["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_export_loads_in_plain_timm(method: str, manifest: Path, tmp_path: Path):
    cfg = _cfg(method, manifest, max_steps=1)
    api.pretrain(cfg, tmp_path / "run", progress=False)
    out = api.export(tmp_path / "run", tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    model = timm.create_model(
        config["architecture"],
        pretrained=True,
        **config["model_args"],
        pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")),
    ).eval()
    _, trained, _ = api.load_run(tmp_path / "run")
    encoder, spec = trained.exportable_encoder()
    x = torch.randn(2, spec.in_chans, *spec.img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), encoder.eval().forward_features(x))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ultrassl", "--plugin", str(TOY), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_a_method_from_a_user_module_runs_pretrain_export_and_finetune_through_the_cli(
    manifest: Path, tmp_path: Path
):
    run, export, evaluation = tmp_path / "run", tmp_path / "export", tmp_path / "eval"
    listed = _cli("methods")
    assert listed.returncode == 0 and "toy-patch-mean" in listed.stdout
    args = ["pretrain", "--method", "toy-patch-mean", "--data", str(manifest), "--out", str(run)]
    done = _cli(*args, "--max-steps", "3", "--batch-size", "4", "--set", "toy.sigma=2.0")
    assert done.returncode == 0, done.stderr
    assert safe_load(run / "checkpoints" / "last.pt")["config"]["toy"]["sigma"] == 2.0
    bad = _cli(*args, "--max-steps", "3", "--set", "toy.sigma=0", "--set", "train.tensorboard=false")
    assert bad.returncode == 2 and "toy.sigma must be > 0" in bad.stderr
    assert _cli("export", str(run), "-o", str(export)).returncode == 0
    assert (export / "model.safetensors").exists()
    tuned = _cli(
        "finetune", "classify", "--weights", str(run), "--data", str(manifest), "--out", str(evaluation),
        "--mode", "linear", "--folds", "3",
    )  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr
    report = json.loads((evaluation / "report.json").read_text())
    assert report["summary"]["accuracy"]["mean"] > 0
