"""A pre-training step does not wait for the device: the loss, the gradient norm and the NaN guard are
read at logging steps only (one read there), so a GPU is never stalled by the loop between them.

Waits are counted as the calls that copy a tensor's value to the host (``item``, ``float``, ``int``,
``bool``, ``tolist``, ``numpy``, ``cpu``), made by anything during the step (loop, method, optimiser),
on any tensor but those the data pipeline makes on the host: the batch entries the loop leaves there
(``PretrainMethod.host_keys``) and torch's DataLoader and sampler's own seeds and permutations.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from tiny import TINY_CONVVIT_OVERRIDES, TINY_SECTIONS, TINY_VIT_OVERRIDES

from ultrassl.api import build_model, build_pretrain_data, prepare_config
from ultrassl.methods import build_pretrain_config
from ultrassl.training import Callback, StepInfo, Trainer

#: the Tensor methods that hand a value to the host
READS = ("item", "__float__", "__int__", "__bool__", "__index__", "tolist", "numpy", "cpu")


class CountReads(Callback):
    """Host reads per step: the calls counted since the previous step ended."""

    def __init__(self) -> None:
        self.calls = 0
        self.per_step: dict[int, int] = {}
        self.logged: set[int] = set()

    def on_start(self, info: StepInfo) -> None:
        self.calls = 0

    def on_step(self, info: StepInfo) -> None:
        self.per_step[info.step] = self.calls
        if info.logged:
            self.logged.add(info.step)
        self.calls = 0


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    from ultrassl.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("syncs")
    return make_synthetic_dataset(
        root / "data", n_patients=3, clips_per_patient=1, n_frames=8, size=(64, 64), n_lesion_images=2, seed=0
    )


@pytest.mark.parametrize("method", ["mae", "deblur-mae", "convmae", "ultramae", "uscl"])
def test_a_step_reads_the_device_only_at_logging_steps(tmp_path, monkeypatch, manifest, method):
    overrides = TINY_CONVVIT_OVERRIDES if "convmae" in method else TINY_VIT_OVERRIDES
    if method == "uscl":
        overrides = ["encoder.arch=resnet18", "encoder.img_size=[32, 32]"]
    overrides = overrides + TINY_SECTIONS.get(method.removeprefix("deblur-"), [])
    preset = "tiny" if method in ("mae", "deblur-mae", "convmae") else None
    flags = {
        "data": {"manifest": str(manifest), "num_workers": 0},
        "optim": {"clip_grad": 1.0},
        "train": {"batch_size": 2, "max_steps": 9, "log_every": 4, "precision": "fp32", "tensorboard": False},
    }
    cfg = prepare_config(build_pretrain_config(method, preset, flags=flags, overrides=overrides))
    model = build_model(cfg)
    data = build_pretrain_data(cfg, progress=False)
    counter = CountReads()
    trainer = Trainer(
        model,
        data.train,
        optim=cfg.optim,
        train=cfg.train,
        run_dir=tmp_path,
        config={},
        callbacks=[counter],
    )
    on_host: set[int] = set()  # the batch entries the loop left on the host
    moved = trainer.to_device

    def to_device(batch):
        out = moved(batch)
        on_host.update(id(v) for k, v in out.items() if k in model.host_keys)
        return out

    monkeypatch.setattr(trainer, "to_device", to_device)
    for name in READS:
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, **kwargs):
            data_pipeline = "torch/utils/data" in sys._getframe(1).f_code.co_filename
            counter.calls += id(self) not in on_host and not data_pipeline
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    result = trainer.fit()
    monkeypatch.undo()
    assert result.step == 9 and counter.logged == {1, 4, 8}
    quiet = {s: n for s, n in counter.per_step.items() if s not in counter.logged}
    assert quiet and all(n == 0 for n in quiet.values()), counter.per_step
    assert all(counter.per_step[s] <= 1 for s in counter.logged), dict(counter.per_step)
