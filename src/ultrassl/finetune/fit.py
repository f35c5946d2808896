"""The one supervised fit loop classification and segmentation fine-tuning share.

Per epoch: a seeded permutation of the training items, batches of ``batch_size``, the warm-up + cosine
schedule of the pre-training loop (:class:`~ultrassl.training.WarmupCosine`) applied per parameter
group, autocast in the chosen precision (fp16 with a gradient scaler on CUDA), gradient clipping, a NaN
guard, then validation and early stopping that keeps the best epoch's weights. The tasks supply only
what differs: how a batch is made, the loss, and the validation score.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ultrassl.attention import attention_kernel_for, fused_attention_of
from ultrassl.errors import UltrasslError
from ultrassl.finetune.selection import EarlyStopping
from ultrassl.precision import DTYPES, choose_precision, fixed_dtype
from ultrassl.progress import Ticker, current, duration
from ultrassl.training.optim import WarmupCosine

#: (model, batch) -> scalar loss (called under autocast); the batch is what the :class:`BatchSource`
#: made of the batch's indices (by default the indices themselves)
LossFn = Callable[[nn.Module, Any], torch.Tensor]
#: model -> (score, tie-break) on the validation items, or None when there are none
ValidateFn = Callable[[nn.Module], "tuple[float, float] | None"]


class FineTuneDivergedError(UltrasslError):
    """The fine-tuning loss became NaN/inf."""


class BatchSource(Protocol):
    """How a task turns a batch's item indices into a batch: ``draw`` takes the batch's random numbers
    (augmentation) from the fit's generator, in batch order, in the fit's own process; ``make`` does
    the work (decode, resize, augment with those numbers) and may run in a DataLoader worker. So the
    fit repeats with any number of workers."""

    def draw(self, items: np.ndarray, generator: torch.Generator) -> Any: ...

    def make(self, items: np.ndarray, drawn: Any) -> Any: ...


class IndicesOnly:
    """The default source: the batch is its indices (the loss function reads its data itself)."""

    def draw(self, items: np.ndarray, generator: torch.Generator) -> None:
        return None

    def make(self, items: np.ndarray, drawn: Any) -> np.ndarray:
        return items


class _EpochBatches(Dataset):
    """One epoch's batches for a DataLoader with ``batch_size=None``: item k is batch k, made."""

    def __init__(self, chunks: list[np.ndarray], drawn: list[Any], source: BatchSource):
        self.chunks, self.drawn, self.source = chunks, drawn, source

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> Any:
        return self.source.make(self.chunks[k], self.drawn[k])


def _as_made(batch: Any) -> Any:
    return batch


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # a worker per core; more threads each collapse throughput


def default_workers(device: torch.device) -> int:
    """``workers`` left unset: none on a CPU (the cores train), up to 4 feeding a GPU."""
    if device.type != "cuda":
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - 1))


@dataclass
class FitResult:
    #: the epoch whose weights the model holds (the best on validation, else the last)
    epoch: int
    #: its validation score (None without validation)
    score: float | None


@dataclass
class FitSettings:
    epochs: int
    batch_size: int
    patience: int
    warmup_epochs: float
    clip_grad: float | None = None
    #: fp32 | bf16 | fp16 | auto (as the pre-training loop's ``train.precision``)
    precision: str = "fp32"

    @classmethod
    def of(cls, cfg: Any) -> FitSettings:
        """The fit options of a task's config (ClassifyConfig, SegmentConfig)."""
        return cls(cfg.epochs, cfg.batch_size, cfg.patience, cfg.warmup_epochs, cfg.clip_grad, cfg.precision)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_items: np.ndarray,
    loss_fn: LossFn,
    validate: ValidateFn,
    settings: FitSettings,
    generator: torch.Generator,
    device: torch.device,
    *,
    on_train: Callable[[nn.Module], None] | None = None,
    what: str = "fine-tuning",
    source: BatchSource | None = None,
    workers: int | None = None,
) -> FitResult:
    """Train ``model`` on ``train_items``; returns the epoch it ends at (restored to the best one).

    ``on_train`` runs after ``model.train()`` each epoch (e.g. to keep a frozen encoder in eval mode).
    ``source`` makes each batch from its indices, in ``workers`` DataLoader processes (None:
    :func:`default_workers`). The loss is read from the device once per epoch (the NaN guard), not
    every step. The attention blocks run the kernel that is fast in the chosen precision while it
    trains (``ultrassl.attention``) and get their own setting back afterwards. A progress line (logger
    ``ultrassl.finetune.fit``) follows an epoch every ``ULTRASSL_PROGRESS_INTERVAL`` seconds (30 by
    default; at DEBUG after every epoch), naming the k-fold run being fitted.
    """
    source = source or IndicesOnly()
    if workers is None:  # no worker processes only to hand indices back
        workers = 0 if isinstance(source, IndicesOnly) else default_workers(device)

    dtype = (
        _measured_precision(model, optimizer, train_items, loss_fn, source, settings, generator, device, what)
        if settings.precision == "auto"
        else fixed_dtype(settings.precision, device)
    )
    with attention_kernel_for(model, device, dtype):
        s = settings
        steps_per_epoch = max(1, math.ceil(len(train_items) / s.batch_size))
        schedule = WarmupCosine(max(1, round(s.warmup_epochs * steps_per_epoch)), s.epochs * steps_per_epoch)
        # timm's layer-wise lr decay gives each group its factor as "lr_scale", which timm's own
        # schedulers apply; this loop is the scheduler here, so it applies it
        base_lrs = [g["lr"] * g.get("lr_scale", 1.0) for g in optimizer.param_groups]
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        stopper = EarlyStopping(s.patience)
        step, epoch = 0, 0
        #: (step, epoch, loss) of the first non-finite loss, kept on the device until the epoch ends
        bad = torch.zeros(3, dtype=torch.float64, device=device)
        lines = _EpochLines(what, s.epochs)
        for epoch in range(s.epochs):
            model.train()
            if on_train is not None:
                on_train(model)
            order = train_items[torch.randperm(len(train_items), generator=generator).numpy()]
            chunks = [order[i : i + s.batch_size] for i in range(0, len(order), s.batch_size)]
            drawn = [source.draw(c, generator) for c in chunks]  # in batch order, as one process would
            loader = DataLoader(
                _EpochBatches(chunks, drawn, source),
                batch_size=None,
                num_workers=workers,
                collate_fn=_as_made,
                pin_memory=device.type == "cuda",
                worker_init_fn=_one_thread if workers > 0 else None,
                generator=torch.Generator(),  # the global generator is the model's (dropout, drop path)
            )
            for batch in loader:
                for g, base in zip(optimizer.param_groups, base_lrs):
                    g["lr"] = base * schedule(step)
                autocast = (
                    torch.autocast(device.type, dtype=dtype)
                    if dtype is not None
                    else contextlib.nullcontext()
                )
                with autocast:
                    loss = loss_fn(model, batch)
                value = loss.detach().double().reshape(())
                # (step, epoch, loss) made on the device: no copy from the host, so no wait
                here = torch.full((3,), float(step + 1), dtype=torch.float64, device=device)
                here[1], here[2] = float(epoch + 1), value
                newly = (bad[0] == 0) & ~torch.isfinite(value)
                bad.copy_(torch.where(newly, here, bad))
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss.float()).backward()
                if s.clip_grad:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), s.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                step += 1
            bad_step, bad_epoch, bad_loss = bad.tolist()  # the one read of the epoch
            if bad_step:
                raise FineTuneDivergedError(
                    f"{what}: the loss became {bad_loss} at epoch {int(bad_epoch)}, step {int(bad_step)}; "
                    "lower the lr, set clip_grad, or use precision fp32"
                )
            scored = validate(model)
            stop = scored is not None and stopper.update(scored[0], epoch, model, tie_break=scored[1])
            lines.epoch_done(epoch, scored, stopper)
            if stop:
                break
        if not stopper.restore(model):  # no validation (or never a defined score): the last epoch
            return FitResult(epoch, None)
        return FitResult(int(stopper.best_epoch), float(stopper.best_score))


log = logging.getLogger(__name__)


class _EpochLines:
    """A fit's progress: after an epoch, every interval, a line such as ``classification fine-tuning
    fold 1 (2 of 5), seed 0 (run 3/10): epoch 4/20, val 0.8120, best 0.8300 (epoch 2), ETA 5m10s``. The ETA
    counts this run's epochs left (at most: early stopping may end it sooner) and, within the k-fold
    engine, the runs after it. The clock only: nothing is read from the device."""

    def __init__(self, what: str, epochs: int):
        part = current()
        self.on = part is None or part.on
        self.where = what if part is None else f"{what.split(',')[0]} {part.label}"
        self.after_s = None if part is None else part.after_s
        self.epochs = epochs
        self.ticker = Ticker() if self.on else None
        self.t0 = time.monotonic()

    def epoch_done(self, epoch: int, scored: tuple[float, float] | None, stopper: EarlyStopping) -> None:
        if self.ticker is None:
            return
        level = self.ticker.level()
        if not log.isEnabledFor(level):
            return
        parts = [f"{self.where}: epoch {epoch + 1}/{self.epochs}"]
        if scored is not None:
            parts.append(f"val {scored[0]:.4f}")
        if stopper.best_epoch is not None:
            parts.append(f"best {stopper.best_score:.4f} (epoch {stopper.best_epoch + 1})")
        left = (self.epochs - epoch - 1) * (time.monotonic() - self.t0) / (epoch + 1)
        if self.after_s is not None:
            parts.append(f"ETA {duration(left + self.after_s)}")
        else:
            parts.append(f"ETA {duration(left)} for this run")
        log.log(level, ", ".join(parts))


def _measured_precision(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_items: np.ndarray,
    loss_fn: LossFn,
    source: BatchSource,
    settings: FitSettings,
    generator: torch.Generator,
    device: torch.device,
    what: str,
) -> torch.dtype | None:
    """``precision=auto``: the faster of fp32 and bf16 (fp16 on CUDA without bf16) on a few steps of a
    copy of ``model`` over a batch made of the first ``batch_size`` items, as pre-training's ``auto``
    decides (its cache key holds the model and the batch's shapes). The model, the optimiser and every
    random stream (``generator`` included) are left as they were, so the fit is the one that precision
    given by hand would make."""
    items = train_items[: settings.batch_size]
    state = generator.get_state()
    try:
        batch = source.make(items, source.draw(items, generator))
        choice = choose_precision(
            model,
            batch,
            device,
            lambda m: _same_optimizer(optimizer, m),
            extra_key=f"finetune,{what.split(',')[0]},batch={len(items)},{type(optimizer).__name__}",
            fused_attn=bool(fused_attention_of(model)),
            loss_of=loss_fn,
        )
    finally:
        generator.set_state(state)
    return DTYPES[choice.chosen]


def _same_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer:
    """A throw-away optimiser of ``optimizer``'s class and options over ``model``'s parameters."""
    accepted = inspect.signature(type(optimizer).__init__).parameters
    options = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    return type(optimizer)(model.parameters(), **options)
