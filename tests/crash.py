"""A data set wrapper that crashes part-way into a run, and the trainer the resume tests build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ultrassl import api
from ultrassl.data.epochs import EpochDataset
from ultrassl.training import Trainer


class CrashAfter(EpochDataset):
    """Wraps a data set and raises when item number ``n + 1`` is loaded (a crash mid-epoch)."""

    def __init__(self, data: Any, n: int):
        self.data, self.n, self.loaded = data, n, 0

    def set_epoch(self, epoch: int) -> None:
        if isinstance(self.data, EpochDataset):
            self.data.set_epoch(epoch)

    def batches(self, *args: Any, **kwargs: Any) -> list[list[int]] | None:
        return self.data.batches(*args, **kwargs) if isinstance(self.data, EpochDataset) else None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Any:
        self.loaded += 1
        if self.loaded > self.n:
            raise RuntimeError("simulated crash")
        return self.data[i]


def seeded_trainer(cfg: Any, run_dir: Path, data: Any, resume: bool = False) -> Trainer:
    """The method's model (seed 0) in the loop over ``data``: the same run every time it is built."""
    torch.manual_seed(0)
    model = api.build_model(cfg)
    return Trainer(model, data, optim=cfg.optim, train=cfg.train, run_dir=run_dir, config={}, resume=resume)
