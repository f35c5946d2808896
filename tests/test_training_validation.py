"""Trainer options USCL needs: Adam with decay on every parameter, constant-then-cosine lr, and a held-out
validation set that keeps best.pt beside last.pt."""

import csv

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from ultrassl.checkpoint import safe_load
from ultrassl.config import OptimConfig, TrainConfig
from ultrassl.training import Trainer, WarmupCosine, param_groups

torch.set_num_threads(1)


class Pairs(Dataset):
    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.x[i].sum(0, keepdim=True)}


class Scripted(nn.Module):
    """A regression whose validation score follows a script (so 'best' is known in advance)."""

    def __init__(self, script=(3.0, 1.0, 2.0)):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
        self.script, self.evals, self.modes = list(script), 0, []

    def forward(self, batch):
        loss = ((self.net(batch["x"]) - batch["y"]) ** 2).mean()
        out = {"loss": loss}
        if not self.training:
            self.modes.append(torch.is_grad_enabled())
            out["score"] = torch.tensor(self.script[min(self.evals, len(self.script) - 1)])
        return out


def _fit(tmp_path, model, val=None, steps=6, **optim_kw):
    optim = OptimConfig(**{"lr": 1e-2, "warmup_steps": 1, **optim_kw})
    train = TrainConfig(
        batch_size=4, epochs=100, max_steps=steps, log_every=1, tensorboard=False, val_every=2
    )

    class Counting(Trainer):
        def validate(self):
            value = super().validate()
            model.evals += 1
            return value

    trainer = Counting(
        model,
        Pairs(16),
        optim=optim,
        train=train,
        run_dir=tmp_path,
        config={"toy": 1},
        val_dataset=val,
        val_key="score",
    )
    return trainer, trainer.fit()


def test_constant_then_cosine_schedule():
    f = WarmupCosine(warmup_steps=2, total_steps=12, min_factor=0.0, constant_steps=4)
    factors = [f(s) for s in range(12)]
    assert factors[:2] == [0.5, 1.0] and factors[2:6] == [1.0] * 4
    assert factors[6] == pytest.approx(1.0) and all(a > b for a, b in zip(factors[6:], factors[7:]))
    assert f(12) == pytest.approx(0.0)
    assert WarmupCosine(2, 12)(6) < 1.0  # without constant steps the cosine starts right after warm-up


def test_adam_with_weight_decay_on_every_parameter(tmp_path):
    model = Scripted()
    assert len(param_groups(model, 1e-4, decay_all=True)) == 1
    trainer, _ = _fit(tmp_path, model, name="adam", weight_decay=1e-4, decay_all=True, steps=2)
    assert type(trainer.optimizer) is torch.optim.Adam
    (group,) = trainer.optimizer.param_groups
    assert group["weight_decay"] == 1e-4 and len(group["params"]) == len(list(model.parameters()))
    trainer, _ = _fit(tmp_path / "b", Scripted(), steps=2)
    assert type(trainer.optimizer) is torch.optim.AdamW


def test_constant_epochs_hold_the_lr(tmp_path):
    trainer, _ = _fit(
        tmp_path, Scripted(), steps=12, warmup_steps=None, warmup_epochs=0.0, constant_epochs=2.0
    )
    with (tmp_path / "metrics.csv").open() as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f) if r["lr"]]
    # 1 warm-up step at the peak + 4 steps per epoch x 2 constant epochs, then the cosine starts at the peak
    assert lrs[:9] == [1e-2] * 9 and 0 < lrs[9] < 1e-2 and lrs[-1] < lrs[9]


def test_validation_keeps_the_best_model_and_logs_every_evaluation(tmp_path):
    model = Scripted((3.0, 1.0, 2.0))
    trainer, result = _fit(tmp_path, model, val=Pairs(6, seed=1), steps=6)
    assert model.evals == 3 and not any(model.modes)  # no grad during validation
    with (tmp_path / "metrics.csv").open() as f:
        val = [(int(r["step"]), float(r["val_loss"])) for r in csv.DictReader(f) if r["val_loss"]]
    assert val == [(2, 3.0), (4, 1.0), (6, 2.0)]
    best, last = (
        safe_load(tmp_path / "checkpoints" / "best.pt"),
        safe_load(tmp_path / "checkpoints" / "last.pt"),
    )
    assert best["step"] == 4 and best["val_loss"] == 1.0 and best["config"] == {"toy": 1}
    assert last["step"] == 6 and last["best_val"] == 1.0
    assert not torch.equal(best["model"]["net.0.weight"], last["model"]["net.0.weight"])
    assert model.training  # back in train mode after validating


def test_without_validation_nothing_changes(tmp_path):
    model = Scripted()
    _fit(tmp_path, model, steps=4)
    assert model.evals == 0 and not (tmp_path / "checkpoints" / "best.pt").exists()
    with (tmp_path / "metrics.csv").open() as f:
        assert all(r["val_loss"] == "" for r in csv.DictReader(f))
