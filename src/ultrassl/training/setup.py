"""What a run settles once, before its first step: its sizes, precision, attention kernel and memory
layout, and the record of them in ``run_info.json``.

Each decision is a function of the config, the device and the checkpoint being resumed (if any), so the
loop itself only runs steps. A resumed run keeps what its checkpoint recorded, so it replays bit-exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ultrassl import distributed
from ultrassl.atomic import atomic_write_text
from ultrassl.attention import fused_attention_for, set_fused_attention
from ultrassl.config import OptimConfig, TrainConfig
from ultrassl.data.epochs import EpochDataset
from ultrassl.errors import ConfigError
from ultrassl.precision import DTYPES, PrecisionChoice, fixed_dtype, flag_rule_dtype, name_of
from ultrassl.training.optim import peak_lr

#: a checkpoint read for resuming: its path and its state
Found = tuple[Path, dict[str, Any]]


@dataclass(frozen=True)
class RunSizes:
    """How many samples a step takes, how many steps an epoch and the run hold, and the peak lr."""

    global_batch: int
    steps_per_epoch: int
    total_steps: int
    lr: float


def check_epoch_datasets(*datasets: Dataset | None) -> None:
    """A data set written for the loop's epochs must say so by subclassing EpochDataset; one that only
    looks like it would silently replay epoch 0's randomness every epoch."""
    for ds in datasets:
        if ds is None or isinstance(ds, EpochDataset):
            continue
        hooks = [h for h in ("set_epoch", "batches") if callable(getattr(type(ds), h, None))]
        if hooks:
            raise ConfigError(
                f"{type(ds).__name__} defines {' and '.join(hooks)} but is not an "
                "ultrassl.data.epochs.EpochDataset: subclass it so the loop calls them"
            )


def plan_sizes(
    dataset: Dataset,
    train: TrainConfig,
    optim: OptimConfig,
    world_size: int,
    own_batches: list[list[int]] | None,
) -> RunSizes:
    """Steps per epoch from the data set (or its own batches for this process), the run's length and lr."""
    global_batch = train.batch_size * optim.accum_steps * world_size
    if own_batches is not None:  # the data set cuts its own batches (e.g. one modality each)
        steps_per_epoch = len(own_batches) // optim.accum_steps
    else:
        steps_per_epoch = (len(dataset) // world_size) // (train.batch_size * optim.accum_steps)
    if steps_per_epoch < 1:
        raise ConfigError(
            f"the data set has {len(dataset)} samples, fewer than one global batch "
            f"({global_batch} = batch {train.batch_size} x accum {optim.accum_steps} x {world_size} "
            "processes); lower train.batch_size"
        )
    total = train.max_steps if train.max_steps is not None else train.epochs * steps_per_epoch
    return RunSizes(global_batch, steps_per_epoch, total, peak_lr(optim, global_batch))


def use_channels_last(setting: str, model: nn.Module, device: torch.device) -> bool:
    """``train.channels_last``: on/off, or auto = on for a model with convolutions beyond a patch
    embedding (a CNN encoder): the layout oneDNN's and cuDNN's fast convolution kernels want (its
    measured effect is in docs/benchmarks.md). ``device`` is kept for a backend where it does not pay."""
    if setting in ("on", "off"):
        return setting == "on"
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    return device.type in ("cuda", "cpu") and n_conv > 2


def requested_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision given by name; ``auto`` starts at fp32 until it is settled."""
    return None if precision == "auto" else fixed_dtype(precision, device)


def recorded_precision(found: Found, device: torch.device) -> PrecisionChoice:
    """The precision a resumed ``auto`` run chose before: its checkpoint's record, or for a checkpoint
    saved before the probe existed, the rule of that time (bf16 where the device has it natively)."""
    recorded = (found[1].get("run_info") or {}).get("precision") or {}
    if recorded.get("chosen") in DTYPES:
        choice = PrecisionChoice(recorded["chosen"], recorded.get("seconds_per_step", {}), 0.0)
    else:
        choice = PrecisionChoice(name_of(flag_rule_dtype(device)))
    choice.source = "checkpoint"
    return choice


def settle_auto_precision(
    found: Found | None,
    device: torch.device,
    is_main: bool,
    probe: Callable[[], PrecisionChoice],
) -> PrecisionChoice:
    """``auto``: the checkpoint's record when resuming, else rank 0's probe, shared with every process."""
    if found is not None:
        return recorded_precision(found, device)
    mine = probe() if is_main else None
    return PrecisionChoice(**distributed.broadcast_object(mine.as_dict() if mine else None))


def settle_attention(
    model: nn.Module,
    requested_fused: bool,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    found: Found | None,
) -> dict[str, str]:
    """Set the attention kernel for the run's precision (``attention.fused_attention_for``); a run
    resumed on the same kind of device keeps the one its checkpoint recorded (one recorded before the
    choice existed ran ``train.fused_attn`` as given), so it replays bit-exactly. Returns the record:
    ``attention`` is ``none`` for a model without attention blocks."""
    fused = fused_attention_for(requested_fused, device, autocast_dtype)
    if found is not None:
        info = found[1].get("run_info") or {}
        recorded = info.get("attention")
        if recorded is None:
            fused = requested_fused
        elif recorded in ("fused", "explicit") and info.get("attention_device", device.type) == device.type:
            fused = recorded == "fused"
    n = set_fused_attention(model, fused)
    return {"attention": ("fused" if fused else "explicit") if n else "none", "attention_device": device.type}


def write_run_info(run_dir: Path, info: dict[str, Any]) -> None:
    """``run_info.json``: versions and what the run settled on (rank 0 only, written once per start)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "run_info.json", json.dumps(info, indent=2))
