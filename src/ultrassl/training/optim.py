"""The optimiser and the learning-rate schedule, shared by pre-training and fine-tuning.

AdamW (or Adam) without weight decay on biases, norms, tokens and position embeddings; the peak lr is
``base_lr x global batch / 256`` (the MAE recipe) unless given; per-step linear warm-up, an optional
constant stretch (USCL), then half-cycle cosine.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ultrassl.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool = False) -> list[dict[str, Any]]:
    """Weight decay on weights only: none on biases, norms, tokens and position embeddings.

    ``decay_all``: one group, every parameter decayed (USCL's ``Adam(model.parameters(), wd)``).
    """
    if decay_all:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    skip: set[str] = set()
    for name, module in model.named_modules():
        if hasattr(module, "no_weight_decay"):
            prefix = f"{name}." if name else ""
            skip |= {prefix + n for n in module.no_weight_decay()}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name in skip or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class WarmupCosine:
    """lr factor per optimiser step: linear warm-up, ``constant_steps`` at the peak (USCL's first 10
    epochs), then half-cycle cosine down to ``min_factor``."""

    def __init__(self, warmup_steps: int, total_steps: int, min_factor: float = 0.0, constant_steps: int = 0):
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.min_factor = float(min_factor)
        self.constant_steps = int(constant_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        start = self.warmup_steps + self.constant_steps
        if step < start:
            return 1.0
        span = max(1, self.total_steps - start)
        progress = min(1.0, (step - start) / span)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def fused_optimizer(ocfg: OptimConfig, device: torch.device) -> bool:
    """Whether Adam/AdamW runs torch's fused kernel: ``optim.fused``, by default where torch has it."""
    if ocfg.fused is not None:
        return ocfg.fused
    return device.type in ("cpu", "cuda")


def peak_lr(ocfg: OptimConfig, global_batch: int) -> float:
    """``optim.lr`` when given, else ``optim.base_lr`` scaled by the global batch over 256."""
    return ocfg.lr if ocfg.lr is not None else ocfg.base_lr * global_batch / 256


def build_optimizer(
    model: nn.Module, ocfg: OptimConfig, lr: float, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW (or Adam) over ``model``'s decay / no-decay groups at ``lr``.

    A checkpoint's optimiser state brings its ``fused`` flag back with it (torch restores every
    group's options), so a resumed run steps as it did before, whatever the default is now."""
    groups = param_groups(model, ocfg.weight_decay, decay_all=ocfg.decay_all)
    optimizer_cls = torch.optim.Adam if ocfg.name == "adam" else torch.optim.AdamW
    fused = fused_optimizer(ocfg, device)
    return optimizer_cls(groups, lr=lr, betas=tuple(ocfg.betas), fused=fused or None)


def build_schedule(
    optimizer: torch.optim.Optimizer,
    ocfg: OptimConfig,
    lr: float,
    steps_per_epoch: int,
    total_steps: int,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The warm-up + cosine schedule of ``optim`` (warm-up and constant stretch given in steps or epochs)."""
    warmup = (
        ocfg.warmup_steps if ocfg.warmup_steps is not None else round(ocfg.warmup_epochs * steps_per_epoch)
    )
    min_factor = ocfg.min_lr / lr if lr > 0 else 0.0
    constant = (
        ocfg.constant_steps
        if ocfg.constant_steps is not None
        else round(ocfg.constant_epochs * steps_per_epoch)
    )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(max(1, warmup), total_steps, min_factor, constant)
    )
