"""What only a GPU can check: device placement, autocast dtypes, fp16 with the loss scaler, channels-last,
``precision auto`` and a 2-process DDP step over NCCL. Skipped without CUDA; ``bench/gpu_check.sh`` runs
them on a GPU machine (``pytest -m cuda tests/test_cuda.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ultrassl.checkpoint import safe_load
from ultrassl.config import OptimConfig, TrainConfig
from ultrassl.training import Trainer, use_channels_last

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


class Pairs(torch.utils.data.Dataset):
    """64 (image, target) pairs; the image is 3x32x32 so convolutions and channels-last apply."""

    def __init__(self, n: int = 64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 32, 32, generator=g)
        self.y = self.x.mean(dim=(1, 2, 3))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


class ConvRegressor(nn.Module):
    """Records what it saw: the device and memory format of its input, the dtype autocast gave."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 1)
        self.seen: dict[str, object] = {}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]
        self.seen = {
            "device": x.device.type,
            "channels_last": x.is_contiguous(memory_format=torch.channels_last),
        }
        h = self.conv(x)
        self.seen["dtype"] = h.dtype
        loss = ((self.head(h.mean(dim=(2, 3))).squeeze(-1) - batch["y"]) ** 2).mean()
        return {"loss": loss}


def _fit(tmp_path: Path, model: nn.Module, **train_kw) -> Trainer:
    train = TrainConfig(
        **{"batch_size": 8, "epochs": 1, "tensorboard": False, "device": "cuda", "log_every": 1, **train_kw}
    )
    trainer = Trainer(
        model, Pairs(), optim=OptimConfig(lr=1e-2, warmup_steps=1), train=train, run_dir=tmp_path, config={}
    )
    result = trainer.fit()
    assert result.step == 8 and torch.isfinite(torch.tensor(result.last_loss))
    return trainer


def test_model_and_batches_go_to_the_gpu(tmp_path):
    model = ConvRegressor()
    _fit(tmp_path, model, precision="fp32")
    assert next(model.parameters()).device.type == "cuda" and model.seen["device"] == "cuda"
    assert model.seen["dtype"] == torch.float32
    # the checkpoint loads on a CPU-only reader
    assert safe_load(tmp_path / "checkpoints" / "last.pt")["model"]["conv.weight"].device.type == "cpu"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_runs_the_convolutions_in_the_asked_dtype(tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model = ConvRegressor()
    trainer = _fit(tmp_path, model, precision=precision)
    assert model.seen["dtype"] == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert next(model.parameters()).dtype == torch.float32  # master weights stay fp32
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    if precision == "fp16":
        assert trainer.scaler.get_scale() > 0


def test_channels_last_is_used_for_cnns_and_trains_like_contiguous(tmp_path):
    assert use_channels_last("auto", ConvRegressor(), torch.device("cuda"))
    cl, plain = ConvRegressor(), ConvRegressor()
    _fit(tmp_path / "cl", cl, precision="fp32", channels_last="on")
    _fit(tmp_path / "plain", plain, precision="fp32", channels_last="off")
    assert cl.seen["channels_last"] and not plain.seen["channels_last"]
    a = safe_load(tmp_path / "cl" / "checkpoints" / "last.pt")["model"]
    b = safe_load(tmp_path / "plain" / "checkpoints" / "last.pt")["model"]
    for k in a:  # cuDNN picks other kernels for the other layout: equal up to their rounding
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)


def test_precision_auto_times_the_candidates_on_the_gpu(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("ULTRASSL_PRECISION_CACHE", "off")
    _fit(tmp_path, ConvRegressor(), precision="auto")
    chosen = json.loads((tmp_path / "run_info.json").read_text())["precision"]
    expected = {"fp32", "bf16"} if torch.cuda.is_bf16_supported() else {"fp32", "fp16"}
    assert set(chosen["seconds_per_step"]) == expected and chosen["chosen"] in expected


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_process_ddp_step_over_nccl(tmp_path):
    from ultrassl.data.synthetic import make_synthetic_dataset

    manifest = make_synthetic_dataset(
        tmp_path / "data", n_patients=4, clips_per_patient=1, n_frames=6, size=(64, 64), n_lesion_images=4
    )
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        + ["-m", "ultrassl", "pretrain", "--method", "mae", "--preset", "tiny", "--data", str(manifest)]
        + ["--max-steps", "3", "--batch-size", "4", "--precision", "bf16", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    state = safe_load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 3  # both ranks stepped together (a lost rank hangs or fails the job)
