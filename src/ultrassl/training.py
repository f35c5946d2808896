"""The one training loop every method runs through.

A method is any ``nn.Module`` whose ``forward(batch: dict) -> dict`` returns at least ``{"loss": scalar}``
(:class:`~ultrassl.methods.base.PretrainMethod` spells out the rest of the contract; a method's
``after_step`` hook runs after every optimiser step).
The loop owns what is common: AdamW without weight decay on biases/norms, lr = base_lr x global
batch / 256, per-step warm-up then half-cycle cosine, gradient accumulation, clipping, autocast (bf16 on
CPU/GPU, fp16 with a scaler on CUDA; ``auto`` times fp32 and bf16 on the first batch and keeps the
faster) with the attention kernel that is fast in it (``ultrassl.attention``), a NaN guard, progress,
CSV/TensorBoard metrics, atomic checkpoints and bit-exact resume, and torchrun (DDP) from the
environment.

Determinism does not depend on process count or worker count: the sample order is a seeded permutation
per epoch (sharded like ``DistributedSampler``), and each sample's randomness comes from a seed derived
from (run seed, epoch, sample index), so a resumed run replays exactly what an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from ultrassl import distributed
from ultrassl.atomic import atomic_write_text
from ultrassl.attention import fused_attention_for, set_fused_attention
from ultrassl.checkpoint import atomic_save
from ultrassl.checkpoint.store import CheckpointStore, CheckpointWriteError, load_checkpoint, seal
from ultrassl.config import OptimConfig, TrainConfig
from ultrassl.data.epochs import EpochDataset
from ultrassl.errors import CheckpointError, ConfigError, UltrasslError
from ultrassl.methods.base import PretrainMethod
from ultrassl.precision import DTYPES, PrecisionChoice, choose_precision
from ultrassl.rng import capture_rng, preserved_rng, restore_rng, seed_everything


class TrainingDivergedError(UltrasslError):
    """The loss became NaN/inf; the last good checkpoint is left as it was."""


@dataclass
class TrainResult:
    step: int
    epoch: int
    last_loss: float
    stopped_by: str  # "done" | "max_steps" | "time_limit" | "signal"
    checkpoint: Path
    seconds: float
    #: what best.pt holds: {"key", "value", "step"} (None: no best.pt was written)
    best: dict[str, Any] | None = None


# ----------------------------------------------------------------------------------------------------
# optimiser and schedule


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


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: fp32). ``auto`` = bf16 where the device computes it natively."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("fp16 autocast needs CUDA; use --precision bf16 or fp32 on the CPU")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def use_channels_last(setting: str, model: nn.Module, device: torch.device) -> bool:
    """``train.channels_last``: on/off, or auto = on for a model with convolutions beyond a patch
    embedding (a CNN encoder). Measured on a 2-core CPU (docs/benchmarks.md): ResNet-18 USCL steps
    1.13x faster in fp32 and 1.06-1.13x with bf16; on CUDA it is the layout cuDNN's fast convolution
    kernels want. ``device`` is kept for a backend where it does not pay."""
    if setting in ("on", "off"):
        return setting == "on"
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    return device.type in ("cuda", "cpu") and n_conv > 2


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX).

    Without it, bf16 autocast is emulated and slower than fp32: measured 2.6x slower for ViT-T MAE
    on a 2-core AVX-512 Xeon without AVX512-BF16 (see docs/benchmarks.md).
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


# ----------------------------------------------------------------------------------------------------
# data order


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start part-way into an epoch (for resume)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # two threads per worker on shared cores collapse throughput


# ----------------------------------------------------------------------------------------------------
# the loop


def agreed_latest(store: CheckpointStore, dist: distributed.DistInfo) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to resume from, the same on every process: rank 0 (the writer) picks the newest
    good one, setting corrupt ones aside; the others load exactly that file (a read error there is an
    error, not a silent fallback to another step)."""
    found, error = None, None
    if dist.is_main:
        try:
            found = store.latest(owner=True)
        except CheckpointError as exc:  # every checkpoint corrupt: all ranks stop, none waits for ever
            error = exc
    if not dist.enabled:
        if error is not None:
            raise error
        return found
    chosen = distributed.broadcast_object(
        ("error", str(error)) if error is not None else (str(found[0]) if found is not None else None)
    )
    if error is not None:
        raise error
    if isinstance(chosen, tuple):
        raise CheckpointError(store.directory, f"rank 0 found no loadable checkpoint ({chosen[1]})")
    if dist.is_main:
        return found
    return (Path(chosen), load_checkpoint(chosen)) if chosen is not None else None


class MetricsLog:
    """metrics.csv (rank 0) plus TensorBoard when installed; a resumed run drops rows past its step."""

    FIELDS = (
        "step",
        "epoch",
        "loss",
        "lr",
        "grad_norm",
        "samples_per_s",
        "elapsed_s",
        "val_loss",
        "probe_knn",
        "probe_linear",
        "probe_s",
    )

    def __init__(self, run_dir: Path, resume_step: int, tensorboard: bool):
        self.path = run_dir / "metrics.csv"
        rows = []
        if resume_step > 0 and self.path.exists():
            with self.path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        # the kept rows are rewritten atomically (a kill here loses no row), then appended to
        head = io.StringIO()
        writer = csv.DictWriter(head, fieldnames=self.FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, head.getvalue())
        self.file = self.path.open("a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.FIELDS)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                self.tb = None

    def write(self, row: dict[str, float]) -> None:
        self.writer.writerow({k: row.get(k, "") for k in self.FIELDS})
        self.file.flush()
        if self.tb is not None:
            for key in ("loss", "lr", "grad_norm", "samples_per_s"):
                if key in row and row[key] is not None:
                    self.tb.add_scalar(f"train/{key}", row[key], int(row["step"]))
            if row.get("val_loss") is not None:
                self.tb.add_scalar("val/loss", row["val_loss"], int(row["step"]))
            for key in ("probe_knn", "probe_linear"):
                if row.get(key) is not None:
                    self.tb.add_scalar(f"probe/{key.removeprefix('probe_')}", row[key], int(row["step"]))

    def image(self, tag: str, image: Any, step: int) -> None:
        """An ``[H, W, 3]`` uint8 picture to TensorBoard (nothing without it)."""
        if self.tb is not None:
            self.tb.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


class Watcher(Protocol):
    """Something that looks at the model now and then without changing the run: an online probe, pictures.

    ``due`` is asked on rank 0 only (``final``: this is the run's last step) and its answer is shared
    with the other processes in the loop's per-step broadcast, so it may depend on time, e.g. to keep a
    probe under a share of the training time. ``watch`` runs on rank 0 alone, under ``no_grad``, in
    eval mode, with every random generator restored afterwards (so training replays bit-exactly with or
    without it); it returns values for metrics.csv. It holds no collective: the other processes go on
    to the next one (the best-checkpoint broadcast right after it, or the next step's gradient
    all-reduce) and wait there for the watcher's seconds.
    """

    def due(self, step: int, total_steps: int, final: bool) -> bool: ...

    def watch(self, model: nn.Module, step: int, log: MetricsLog) -> dict[str, float]: ...


class Trainer:
    """Runs ``model`` over ``dataset``; rank-0 I/O into ``run_dir``.

    An :class:`~ultrassl.data.epochs.EpochDataset` is told the epoch before each epoch's loader starts,
    so it can draw each sample's augmentation from :func:`sample_seed` (run seed, epoch, index) alone,
    and may cut its own batches (this process's share, the same count every epoch), e.g. UltraMAE's
    image-only and clip-only batches. Any other map-style data set is sampled by the loop.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        *,
        optim: OptimConfig,
        train: TrainConfig,
        run_dir: str | Path,
        config: dict[str, Any],
        resume: bool = False,
        resume_state: tuple[Path, dict[str, Any]] | None = None,
        run_info: dict[str, Any] | None = None,
        collate_fn: Callable | None = None,
        num_workers: int = 0,
        val_dataset: Dataset | None = None,
        val_key: str = "loss",
        watchers: Sequence[Watcher] = (),
        select_key: str | None = None,
        select_id: str = "",
    ):
        self.model = model
        self.dataset = dataset
        self.optim_cfg = optim
        self.cfg = train
        self.run_dir = Path(run_dir)
        self.config = config
        #: load the newest good checkpoint of ``run_dir`` first (``resume_state``: one already read)
        self.resume = resume
        self.resume_state = resume_state
        self.run_info = run_info or {}
        self.collate_fn = collate_fn
        self.num_workers = num_workers
        self.dist, self.device = distributed.init_distributed(train.device)
        self.store = CheckpointStore(self.run_dir / "checkpoints", keep=train.keep_checkpoints)
        self.ckpt_path = self.store.last
        #: held-out data: its mean ``val_key`` output is logged and the best model kept in best.pt
        self.val_dataset = val_dataset if val_dataset is not None and len(val_dataset) > 0 else None
        self.val_key = val_key
        self.best_path = self.run_dir / "checkpoints" / "best.pt"
        self.best_val = math.inf
        #: watchers (an online probe, pictures) and the value of theirs whose highest picks best.pt
        #: instead of validation; ``select_id`` names what it measures (a changed probe set starts over)
        self.watchers = list(watchers)
        self.select_key = select_key
        self.select_id = select_id
        self.best_score = -math.inf
        #: what best.pt holds now: {"key", "value", "step"}
        self.best_info: dict[str, Any] | None = None

    # -- set-up --------------------------------------------------------------------------------------

    def _setup(self) -> None:
        self._check_dataset()
        cfg, ocfg = self.cfg, self.optim_cfg
        world = self.dist.world_size
        self.global_batch = cfg.batch_size * ocfg.accum_steps * world
        own_batches = self._own_batches(0)
        if own_batches is not None:  # the data set cuts its own batches (e.g. one modality each)
            self.steps_per_epoch = len(own_batches) // ocfg.accum_steps
        else:
            per_rank = len(self.dataset) // world
            self.steps_per_epoch = per_rank // (cfg.batch_size * ocfg.accum_steps)
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"the data set has {len(self.dataset)} samples, fewer than one global batch "
                f"({self.global_batch} = batch {cfg.batch_size} x accum {ocfg.accum_steps} x {world} "
                "processes); lower train.batch_size"
            )
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * self.steps_per_epoch
        self.lr = ocfg.lr if ocfg.lr is not None else ocfg.base_lr * self.global_batch / 256
        warmup = (
            ocfg.warmup_steps
            if ocfg.warmup_steps is not None
            else round(ocfg.warmup_epochs * self.steps_per_epoch)
        )
        self.warmup_steps = max(1, warmup)
        self.model.to(self.device)
        # ``auto`` is settled in fit(), by the checkpoint's record or a probe on the first batch
        self.autocast_dtype = (
            None if cfg.precision == "auto" else resolve_precision(cfg.precision, self.device)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.optimizer = self._make_optimizer(self.model)
        min_factor = ocfg.min_lr / self.lr if self.lr > 0 else 0.0
        constant = round(ocfg.constant_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(self.warmup_steps, self.total_steps, min_factor, constant)
        )
        self._settle_attention(None)  # again once ``auto`` precision is settled, in fit()
        self.channels_last = use_channels_last(cfg.channels_last, self.model, self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.ddp_model: nn.Module = self.model
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=device_ids)
        if cfg.compile:
            # compile the (DDP-wrapped) forward; state_dict() and checkpoints still use self.model
            self.ddp_model = torch.compile(self.ddp_model)
        self.sampler = ResumableSampler(self.dataset, world, self.dist.rank, cfg.seed)
        self.step = 0
        self.last_loss = float("nan")

    def _check_dataset(self) -> None:
        """A data set written for the loop's epochs must say so by subclassing EpochDataset; one that
        only looks like it would silently replay epoch 0's randomness every epoch."""
        for ds in (self.dataset, self.val_dataset):
            if ds is None or isinstance(ds, EpochDataset):
                continue
            hooks = [h for h in ("set_epoch", "batches") if callable(getattr(type(ds), h, None))]
            if hooks:
                raise ConfigError(
                    f"{type(ds).__name__} defines {' and '.join(hooks)} but is not an "
                    "ultrassl.data.epochs.EpochDataset: subclass it so the loop calls them"
                )

    def _own_batches(self, epoch: int) -> list[list[int]] | None:
        """The data set's own batches for this process, or None when the loop's sampler cuts them."""
        if not isinstance(self.dataset, EpochDataset):
            return None
        return self.dataset.batches(epoch, self.cfg.batch_size, self.dist.rank, self.dist.world_size)

    def _loader(self, epoch: int, start_sample: int) -> DataLoader:
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(start_sample)
        if isinstance(self.dataset, EpochDataset):
            self.dataset.set_epoch(epoch)
        batches = self._own_batches(epoch)
        if batches is not None:
            return DataLoader(
                self.dataset,
                batch_sampler=batches[start_sample // self.cfg.batch_size :],
                num_workers=self.num_workers,
                collate_fn=self.collate_fn,
                pin_memory=self.device.type == "cuda",
                worker_init_fn=_worker_init if self.num_workers > 0 else None,
            )
        return DataLoader(
            self.dataset,
            batch_size=self.cfg.batch_size,
            sampler=self.sampler,
            drop_last=True,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_worker_init if self.num_workers > 0 else None,
            persistent_workers=False,
        )

    # -- checkpoints ---------------------------------------------------------------------------------

    def state_dict(self, epoch: int, rng_ranks: list[Any] | None = None) -> dict[str, Any]:
        rng = capture_rng()
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": epoch,
            "rng": rng,
            # every process's generators: a restarted multi-process job resumes each rank's own
            "rng_ranks": rng_ranks or [rng],
            "config": self.config,
            "run_info": self.run_info,
            "format": "ultrassl-train/1",
            "best_val": self.best_val,
            "best_score": self.best_score,
            "best_info": self.best_info,
            "best_select_id": self.select_id,
        }

    def save(self, epoch: int) -> None:
        """Write the checkpoint on rank 0; a failed write stops every process with rank 0's error."""
        rng_ranks = distributed.gather_objects(capture_rng())
        distributed.on_main(
            lambda: self.store.save(self.state_dict(epoch, rng_ranks)),
            self.device,
            CheckpointWriteError(
                f"{self.ckpt_path}: rank 0 could not write the checkpoint (its log says why); the run stopped"
            ),
        )

    def _load(self, found: tuple[Path, dict[str, Any]] | None) -> Path | None:
        """Restore the newest good checkpoint (``found``, else looked up); None when there is none."""
        found = found or agreed_latest(self.store, self.dist)
        if found is None:
            return None
        path, state = found
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.best_val = float(state.get("best_val", math.inf))
        self.best_info = state.get("best_info")
        self.best_score = float(state.get("best_score", -math.inf))
        if self.select_key is not None and state.get("best_select_id", "") != self.select_id:
            if self.dist.is_main and self.best_info is not None:
                print(
                    "the probe changed since the last checkpoint: best.pt is chosen afresh", file=sys.stderr
                )
            self.best_score = -math.inf
        ranks = state.get("rng_ranks") or [state["rng"]]
        if len(ranks) == self.dist.world_size:
            restore_rng(ranks[self.dist.rank])
        else:  # another process count: exactness is gone anyway; keep each rank's generators distinct
            seed_everything(self.cfg.seed + self.dist.rank + 1_000_003 * self.step)
        return path

    # -- precision ---------------------------------------------------------------------------------

    def _settle_precision(self, found: tuple[Path, dict[str, Any]] | None) -> None:
        """``auto``: the precision the run's checkpoint recorded, else the faster on a probe (rank 0's)."""
        if found is not None:
            recorded = (found[1].get("run_info") or {}).get("precision") or {}
            if recorded.get("chosen") in DTYPES:
                choice = PrecisionChoice(recorded["chosen"], recorded.get("seconds_per_step", {}), 0.0)
            else:  # saved before the probe existed: the rule of that time (bf16 where the CPU has it)
                dtype = resolve_precision("auto", self.device)
                choice = PrecisionChoice(next(k for k, v in DTYPES.items() if v == dtype))
            choice.source = "checkpoint"
        else:
            mine = self._probe_precision() if self.dist.is_main else None
            choice = PrecisionChoice(**distributed.broadcast_object(mine.as_dict() if mine else None))
        self.autocast_dtype = DTYPES[choice.chosen]
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.run_info["precision"] = {"requested": "auto", **choice.as_dict()}
        if self.dist.is_main:
            print(choice.describe(self.cfg.batch_size), file=sys.stderr)

    def _settle_attention(self, found: tuple[Path, dict[str, Any]] | None) -> None:
        """The attention kernel for the run's precision (``attention.fused_attention_for``); a run
        resumed on the same kind of device keeps the one its checkpoint recorded (one recorded before
        the choice existed ran ``train.fused_attn`` as given), so it replays bit-exactly. Recorded as
        ``none`` for a model without attention blocks."""
        fused = fused_attention_for(self.cfg.fused_attn, self.device, self.autocast_dtype)
        if found is not None:
            info = found[1].get("run_info") or {}
            recorded = info.get("attention")
            if recorded is None:
                fused = self.cfg.fused_attn
            elif (
                recorded in ("fused", "explicit")
                and info.get("attention_device", self.device.type) == self.device.type
            ):
                fused = recorded == "fused"
        n = set_fused_attention(self.model, fused)
        self.run_info["attention"] = ("fused" if fused else "explicit") if n else "none"
        self.run_info["attention_device"] = self.device.type

    def _probe_precision(self) -> PrecisionChoice:
        batch = self._to_device(next(iter(self._loader(0, 0))))
        extra = f"fused_attn={self.cfg.fused_attn},channels_last={self.channels_last}"
        extra += f",fused_optim={fused_optimizer(self.optim_cfg, self.device)}"
        return choose_precision(
            self.model,
            batch,
            self.device,
            self._make_optimizer,
            extra_key=extra,
            fused_attn=self.cfg.fused_attn,
        )

    def _make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """AdamW (or Adam) over ``model``'s decay / no-decay groups at the run's lr.

        A checkpoint's optimiser state brings its ``fused`` flag back with it (torch restores every
        group's options), so a resumed run steps as it did before, whatever the default is now."""
        ocfg = self.optim_cfg
        groups = param_groups(model, ocfg.weight_decay, decay_all=ocfg.decay_all)
        optimizer_cls = torch.optim.Adam if ocfg.name == "adam" else torch.optim.AdamW
        fused = fused_optimizer(ocfg, self.device)
        return optimizer_cls(groups, lr=self.lr, betas=tuple(ocfg.betas), fused=fused or None)

    # -- run -----------------------------------------------------------------------------------------

    def _to_device(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            batch = batch.to(self.device, non_blocking=True)
            if self.channels_last and batch.ndim == 4 and batch.is_floating_point():
                batch = batch.contiguous(memory_format=torch.channels_last)
            return batch
        if isinstance(batch, dict):
            return {k: self._to_device(v) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return type(batch)(self._to_device(v) for v in batch)
        return batch

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def fit(self) -> TrainResult:
        self._setup()
        is_main = self.dist.is_main
        self.run_dir.mkdir(parents=True, exist_ok=True)
        found = (self.resume_state or agreed_latest(self.store, self.dist)) if self.resume else None
        self.resume_state = None  # the trainer holds no second copy of the weights while it runs
        if self.cfg.precision == "auto":
            self._settle_precision(found)
        self._settle_attention(found)
        if is_main:  # what the run settled on (precision, attention kernel) beside its versions
            atomic_write_text(self.run_dir / "run_info.json", json.dumps(self.run_info, indent=2))
        resumed = self._load(found) if found is not None else None
        del found
        if resumed is not None:
            if is_main:
                print(f"resumed from {resumed} at step {self.step}", file=sys.stderr)
        else:
            seed_everything(self.cfg.seed + self.dist.rank)
        log = MetricsLog(self.run_dir, self.step, self.cfg.tensorboard) if is_main else None
        stop_signal = {"hit": False}
        old_handlers = _install_stop_handlers(stop_signal)
        t_start = time.monotonic()
        stopped_by = "done"
        spe, accum = self.steps_per_epoch, self.optim_cfg.accum_steps
        micro = self.cfg.batch_size
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not is_main or not sys.stderr.isatty(),
            desc="train",
            dynamic_ncols=True,
        )
        window_t, window_n = time.monotonic(), 0
        epoch = self.step // spe
        try:
            if resumed is None:  # the untrained model's score: where the curves start
                due = distributed.broadcast_flags(self._due(self.total_steps == 0), self.device)
                window_t += self._watch(log, 0, due)
            while self.step < self.total_steps:
                epoch = self.step // spe
                loader = self._loader(epoch, (self.step % spe) * accum * micro)
                batches = iter(loader)
                for _ in range(spe - self.step % spe):
                    loss_value, grad_norm, n = self._train_step(batches)
                    self.step += 1
                    if isinstance(self.model, PretrainMethod):
                        self.model.after_step(self.step)
                    window_n += n * self.dist.world_size
                    self.last_loss = loss_value
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4f}")
                    if log is not None and (self.step % self.cfg.log_every == 0 or self.step == 1):
                        now = time.monotonic()
                        rate = window_n / max(now - window_t, 1e-9)
                        log.write(self._log_row(loss_value, grad_norm, rate, now - t_start))
                        window_t, window_n = now, 0
                    if self._validation_due(spe):
                        self._validate_and_keep_best(log, epoch)
                    out_of_time = (
                        self.cfg.time_limit is not None
                        and time.monotonic() - t_start > self.cfg.time_limit * 60
                    )
                    stop_here = out_of_time or stop_signal["hit"]
                    due = self._due(self.step >= self.total_steps or stop_here)
                    stop_now, *due = distributed.broadcast_flags([stop_here, *due], self.device)
                    last = self.step >= self.total_steps or stop_now
                    window_t += self._watch(log, epoch, due)  # its time is not training's
                    if last:
                        if stop_now:
                            stopped_by = "signal" if stop_signal["hit"] else "time_limit"
                        elif self.cfg.max_steps is not None:
                            stopped_by = "max_steps"
                        break
                    if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                        self.save(epoch)
                if stopped_by != "done":
                    break
            self.save(self.step // spe)
        finally:
            bar.close()
            if log is not None:
                log.close()
            _restore_handlers(old_handlers)
        return TrainResult(
            step=self.step,
            epoch=self.step // spe,
            last_loss=self.last_loss,
            stopped_by=stopped_by,
            checkpoint=self.ckpt_path,
            seconds=time.monotonic() - t_start,
            best=self.best_info,
        )

    def _log_row(self, loss: float, grad_norm: float | None, rate: float, elapsed: float) -> dict[str, Any]:
        """One metrics.csv row for the step just taken."""
        return {
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "loss": loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": grad_norm,
            "samples_per_s": rate,
            "elapsed_s": elapsed,
        }

    # -- validation ----------------------------------------------------------------------------------

    def _validation_due(self, steps_per_epoch: int) -> bool:
        if self.val_dataset is None:
            return False
        every = self.cfg.val_every or steps_per_epoch
        return self.step % every == 0 or self.step == self.total_steps

    @torch.no_grad()
    def validate(self) -> float:
        """Mean ``val_key`` over the held-out set, in eval mode, the same samples every time.

        Each process takes an equal share (padded like ``DistributedSampler``), so losses that gather
        across processes see equal batches; its own generator keeps the training RNG untouched.
        """
        assert self.val_dataset is not None
        sampler = DistributedSampler(
            self.val_dataset, self.dist.world_size, self.dist.rank, shuffle=False, drop_last=False
        )
        loader = DataLoader(
            self.val_dataset,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            collate_fn=self.collate_fn,
            num_workers=0,
            generator=torch.Generator().manual_seed(0),
        )
        was_training = self.model.training
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        try:
            for batch in loader:
                batch = self._to_device(batch)
                with self._autocast():
                    out = self.model(batch)
                n = _batch_size(batch)
                total += torch.stack([out[self.val_key].detach().double() * n, torch.tensor(n).to(total)])
        finally:
            self.model.train(was_training)
        total = distributed.all_reduce_sum(total)
        return float(total[0] / total[1].clamp_min(1))

    def _validate_and_keep_best(self, log: MetricsLog | None, epoch: int) -> None:
        """Validate; log it; write ``best.pt`` when it is the lowest (unless a probe picks best.pt)."""
        value = self.validate()
        if log is not None:
            log.write({"step": self.step, "epoch": self.step / self.steps_per_epoch, "val_loss": value})
        if value < self.best_val:
            self.best_val = value
            if self.select_key is None:
                self._write_best(epoch, "val_loss", value)

    def _write_best(self, epoch: int, key: str, value: float) -> None:
        """``best.pt`` (model, config, step, the value that chose it) written atomically on rank 0."""
        self.best_info = {"key": key, "value": float(value), "step": self.step}

        def write_best() -> None:
            best = {
                "model": self.model.state_dict(),
                "step": self.step,
                "epoch": epoch,
                key: float(value),
                "best": self.best_info,
                "config": self.config,
                "run_info": self.run_info,
                "format": "ultrassl-train/1",
            }
            atomic_save(seal(best), self.best_path)

        distributed.on_main(
            write_best, self.device, CheckpointWriteError(f"{self.best_path}: rank 0 could not write it")
        )

    # -- watchers ------------------------------------------------------------------------------------

    def _due(self, final: bool) -> list[bool]:
        """Which watchers are due now, by rank 0's answer (the others' is replaced by the broadcast)."""
        if not self.dist.is_main:
            return [False] * len(self.watchers)
        return [w.due(self.step, self.total_steps, final) for w in self.watchers]

    def _watch(self, log: MetricsLog | None, epoch: int, due_flags: list[bool]) -> float:
        """Run the watchers due now on rank 0, log their values, keep best.pt by ``select_key``.

        Returns the seconds it took (left out of the throughput figure). Every process takes part in
        the one decision afterwards (a broadcast), so none runs ahead into a checkpoint write alone.
        """
        due = [w for w, flag in zip(self.watchers, due_flags) if flag]
        if not due:
            return 0.0
        t0 = time.monotonic()
        values: dict[str, float] = {}
        if self.dist.is_main:
            was_training = self.model.training
            self.model.eval()
            try:
                with preserved_rng(), torch.no_grad(), self._autocast():
                    for watcher in due:
                        try:
                            values.update(watcher.watch(self.model, self.step, log))
                        except Exception as exc:  # watching must never end a run
                            print(
                                f"{type(watcher).__name__} failed at step {self.step}: {exc}", file=sys.stderr
                            )
            finally:
                self.model.train(was_training)
            if log is not None and values:
                log.write({"step": self.step, "epoch": self.step / self.steps_per_epoch, **values})
        score = values.get(self.select_key) if self.select_key is not None else None
        better = score is not None and math.isfinite(score) and score > self.best_score
        if self.select_key is not None and distributed.broadcast_flag(better, self.device):
            if score is not None:
                self.best_score = score
            self._write_best(epoch, self.select_key, score if score is not None else math.nan)
        return time.monotonic() - t0

    def _train_step(self, batches: Iterator) -> tuple[float, float | None, int]:
        """One optimiser step over ``accum_steps`` micro-batches. Returns (mean loss, grad norm, samples)."""
        accum = self.optim_cfg.accum_steps
        self.optimizer.zero_grad(set_to_none=True)
        total_loss = torch.zeros((), device=self.device)
        n_samples = 0
        for i in range(accum):
            batch = self._to_device(next(batches))
            sync = i == accum - 1 or not self.dist.enabled
            ctx = contextlib.nullcontext() if sync else self.ddp_model.no_sync()
            with ctx:
                with self._autocast():
                    out = self.ddp_model(batch)
                loss = out["loss"].float()
                self.scaler.scale(loss / accum).backward()
            total_loss += loss.detach()
            n_samples += _batch_size(batch)
        mean_loss = distributed.all_reduce_mean(total_loss / accum)
        loss_value = float(mean_loss)
        if not math.isfinite(loss_value):
            raise TrainingDivergedError(
                f"loss became {loss_value} at step {self.step + 1}; stopped without saving. The last good "
                f"checkpoint ({self.ckpt_path}) is intact: resume from it with a lower lr or --precision fp32."
            )
        grad_norm = None
        if self.optim_cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim_cfg.clip_grad)
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss_value, grad_norm, n_samples


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        return _batch_size(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        return _batch_size(batch[0])
    return 1


def _install_stop_handlers(flag: dict[str, bool]) -> dict:
    """SIGTERM/SIGINT finish the current step, write a checkpoint and stop (a scheduler's pre-emption)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):  # noqa: ARG001
        if flag["hit"]:
            raise KeyboardInterrupt
        flag["hit"] = True

    old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        old[sig] = signal.signal(sig, handler)
    return old


def _restore_handlers(old: dict) -> None:
    for sig, h in old.items():
        signal.signal(sig, h)
