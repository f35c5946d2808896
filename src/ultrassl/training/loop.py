"""The one training loop every method runs through.

A method is any ``nn.Module`` whose ``forward(batch: dict) -> dict`` returns at least ``{"loss": scalar}``
(:class:`~ultrassl.methods.base.PretrainMethod` spells out the rest of the contract; a method's
``after_step`` hook runs after every optimiser step).

The run is settled once before the first step (``training.setup``: sizes, precision, attention kernel,
the checkpoint resumed from, ``run_info.json``); then each step is: micro-batches with gradient
accumulation under autocast, clipping, the optimiser, the schedule (``training.optim``). Progress,
metrics, stop requests (``training.callbacks``) and the watchers (probe, pictures) follow the run from
outside; checkpoints and ``best.pt`` live in ``training.checkpoints``. The loss is read from the device
only at logging steps, validation, watchers and checkpoints: that is where the NaN guard looks.

Determinism does not depend on process count or worker count: the sample order is a seeded permutation
per epoch (sharded like ``DistributedSampler``), and each sample's randomness comes from a seed derived
from (run seed, epoch, sample index), so a resumed run replays exactly what an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ultrassl import distributed
from ultrassl.checkpoint.store import CheckpointStore, CheckpointWriteError
from ultrassl.config import OptimConfig, TrainConfig
from ultrassl.errors import UltrasslError
from ultrassl.methods.base import PretrainMethod
from ultrassl.precision import DTYPES, PrecisionChoice, choose_precision
from ultrassl.rng import capture_rng, preserved_rng, seed_everything
from ultrassl.training import checkpoints as ckpts
from ultrassl.training import setup
from ultrassl.training.callbacks import (
    Callback,
    MetricsWriter,
    ProgressBar,
    ProgressLog,
    StepInfo,
    StopOnSignal,
    TimeLimit,
    Watcher,
)
from ultrassl.training.data_order import ResumableSampler, batch_size_of, epoch_loader, own_batches
from ultrassl.training.metrics_log import MetricsLog
from ultrassl.training.optim import build_optimizer, build_schedule, fused_optimizer

log = logging.getLogger(__name__)


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
    #: the steps the run is set to reach (``train.max_steps``, else the epochs' steps)
    total_steps: int | None = None


class Trainer:
    """Runs ``model`` over ``dataset``; rank-0 I/O into ``run_dir``.

    An :class:`~ultrassl.data.epochs.EpochDataset` is told the epoch before each epoch's loader starts,
    so it can draw each sample's augmentation from :func:`sample_seed` (run seed, epoch, index) alone,
    and may cut its own batches (this process's share, the same count every epoch), e.g. UltraMAE's
    image-only and clip-only batches. Any other map-style data set is sampled by the loop.

    ``resume_state``: the checkpoint to resume from, already chosen (``api.pretrain`` decides it once);
    ``resume=True`` without it looks the newest good one up in ``run_dir``. ``callbacks`` are added
    to the built-in ones (progress bar on a terminal, a progress line every ``train.log_interval_s``
    seconds elsewhere, metrics.csv, stop on SIGTERM/SIGINT, ``train.time_limit``).
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
        callbacks: Sequence[Callback] = (),
    ):
        self.model = model
        self.dataset = dataset
        self.optim_cfg = optim
        self.cfg = train
        self.run_dir = Path(run_dir)
        self.config = config
        self.resume = resume or resume_state is not None
        self.resume_state = resume_state
        self.run_info = run_info or {}
        #: why the run stopped, once it has (saved in the last checkpoint: ``export`` says so when the run
        #: ended before its total steps); None while it runs
        self.stopped_by: str | None = None
        self.collate_fn = collate_fn
        self.num_workers = num_workers
        self.dist, self.device = distributed.init_distributed(train.device)
        self.store = CheckpointStore(self.run_dir / "checkpoints", keep=train.keep_checkpoints)
        self.ckpt_path = self.store.last
        #: held-out data: its mean ``val_key`` output is logged and the best model kept in best.pt
        self.val_dataset = val_dataset if val_dataset is not None and len(val_dataset) > 0 else None
        self.val_key = val_key
        self.watchers = list(watchers)
        self.best = ckpts.BestModel(self.run_dir / "checkpoints" / "best.pt", select_key, select_id)
        self.metrics = MetricsWriter(self.run_dir, train.tensorboard)
        self.signals = StopOnSignal()
        self.callbacks: list[Callback] = [
            ProgressBar(),
            ProgressLog(train.log_interval_s),
            self.metrics,
            self.signals,
            *callbacks,
        ]
        if train.time_limit is not None:
            self.callbacks.append(TimeLimit(train.time_limit))
        self.step = 0
        self.last_loss = float("nan")

    @property
    def best_info(self) -> dict[str, Any] | None:
        """What best.pt holds: {"key", "value", "step"} (None: no best.pt was written)."""
        return self.best.info

    # -- set-up, once --------------------------------------------------------------------------------

    def prepare(self, found: setup.Found | None = None) -> None:
        """Everything settled before the first step: sizes, optimiser, schedule, memory layout,
        process wrapping, precision (``auto``: the checkpoint's record or a probe) and attention kernel."""
        cfg, ocfg = self.cfg, self.optim_cfg
        setup.check_epoch_datasets(self.dataset, self.val_dataset)
        batches = own_batches(self.dataset, 0, cfg.batch_size, self.dist.rank, self.dist.world_size)
        sizes = setup.plan_sizes(self.dataset, cfg, ocfg, self.dist.world_size, batches)
        self.steps_per_epoch, self.total_steps, self.lr = sizes.steps_per_epoch, sizes.total_steps, sizes.lr
        self.model.to(self.device)
        self.autocast_dtype = setup.requested_dtype(cfg.precision, self.device)
        self.optimizer = self._make_optimizer(self.model)
        self.scheduler = build_schedule(self.optimizer, ocfg, self.lr, self.steps_per_epoch, self.total_steps)
        self.channels_last = setup.use_channels_last(cfg.channels_last, self.model, self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.ddp_model: nn.Module = self.model
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=device_ids)
        if cfg.compile:  # the (DDP-wrapped) forward; state_dict() and checkpoints still use self.model
            self.ddp_model = torch.compile(self.ddp_model)
        # the kernel of the requested precision (auto: fp32 until settled); again once it is settled
        self.run_info.update(
            setup.settle_attention(self.model, cfg.fused_attn, self.device, self.autocast_dtype, None)
        )
        self.sampler = ResumableSampler(self.dataset, self.dist.world_size, self.dist.rank, cfg.seed)
        #: (first step with a non-finite loss, that loss), kept on the device until the loss is read
        self._bad = torch.zeros(2, dtype=torch.float64, device=self.device)
        if cfg.precision == "auto":
            choice = setup.settle_auto_precision(found, self.device, self.dist.is_main, self._probe_precision)
            self.autocast_dtype = DTYPES[choice.chosen]
            self.run_info["precision"] = {"requested": "auto", **choice.as_dict()}
            if self.dist.is_main:
                log.info(choice.describe(cfg.batch_size))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.run_info.update(
            setup.settle_attention(self.model, cfg.fused_attn, self.device, self.autocast_dtype, found)
        )

    def _probe_precision(self) -> PrecisionChoice:
        batch = self.to_device(next(iter(self.loader(0, 0))))
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
        return build_optimizer(model, self.optim_cfg, self.lr, self.device)

    def _restore(self, found: setup.Found) -> None:
        """Model, optimiser, schedule, scaler, step, best.pt's record and random streams of ``found``."""
        state = found[1]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.best.restore(state, self.dist.is_main)
        ckpts.restore_rng_of_rank(state, self.dist, self.cfg.seed, self.step)

    # -- the loop ------------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        found = (self.resume_state or ckpts.agreed_latest(self.store, self.dist)) if self.resume else None
        self.resume_state = None  # the trainer holds no second copy of the weights while it runs
        self.prepare(found)
        if self.dist.is_main:  # what the run settled on (precision, attention kernel) beside its versions
            setup.write_run_info(self.run_dir, self.run_info)
        if found is not None:
            self._restore(found)
            if self.dist.is_main:
                log.info(f"resumed from {found[0]} at step {self.step}")
        else:
            seed_everything(self.cfg.seed + self.dist.rank)
        resumed = found is not None
        del found
        spe, total = self.steps_per_epoch, self.total_steps
        info = StepInfo(self.step, total, spe, self.dist.is_main)
        t_start = time.monotonic()
        started: list[Callback] = []
        stopped_by = "done"
        window_t, window_n = time.monotonic(), 0
        loss: torch.Tensor | None = None
        grad_norm: torch.Tensor | None = None
        try:
            for cb in self.callbacks:
                cb.on_start(info)
                started.append(cb)
            if not resumed:  # the untrained model's score: where the curves start
                window_t += self._watch(0, distributed.broadcast_flags(self._due(total == 0), self.device))
            while self.step < total and stopped_by == "done":
                epoch = self.step // spe
                start = (self.step % spe) * self.optim_cfg.accum_steps * self.cfg.batch_size
                batches = iter(self.loader(epoch, start))
                for _ in range(spe - self.step % spe):
                    loss, grad_norm, n = self.train_step(batches)
                    self.step += 1
                    if isinstance(self.model, PretrainMethod):
                        self.model.after_step(self.step)
                    window_n += n * self.dist.world_size
                    now = time.monotonic()
                    info = StepInfo(self.step, total, spe, self.dist.is_main, now - t_start)
                    if self.step % self.cfg.log_every == 0 or self.step == 1:
                        info.loss, info.grad_norm = self._read(loss, grad_norm)
                        info.lr = self.optimizer.param_groups[0]["lr"]
                        info.samples_per_s = window_n / max(now - window_t, 1e-9)
                        window_t, window_n = now, 0
                    for cb in self.callbacks:
                        cb.on_step(info)
                    if self._validation_due():
                        self._read(loss, grad_norm)
                        self._validate_and_keep_best(epoch)
                    reasons = [r for r in (cb.stop_reason() for cb in self.callbacks) if r is not None]
                    due = self._due(self.step >= total or bool(reasons))
                    stop_now, *due = distributed.broadcast_flags([bool(reasons), *due], self.device)
                    if any(due):
                        self._read(loss, grad_norm)
                    window_t += self._watch(epoch, due)  # its time is not training's
                    if self.step >= total or stop_now:
                        if stop_now:
                            stopped_by = reasons[0] if reasons else "time_limit"
                        elif self.cfg.max_steps is not None:
                            stopped_by = "max_steps"
                        break
                    if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                        self._read(loss, grad_norm)
                        self.save(epoch)
            if loss is not None:
                self.last_loss = self._read(loss, grad_norm)[0]
            self.stopped_by = stopped_by
            self.save(self.step // spe)
        finally:
            for cb in started:
                cb.on_end(info)
        return TrainResult(
            step=self.step,
            epoch=self.step // spe,
            last_loss=self.last_loss,
            stopped_by=stopped_by,
            checkpoint=self.ckpt_path,
            seconds=time.monotonic() - t_start,
            best=self.best.info,
            total_steps=self.total_steps,
        )

    def train_step(self, batches: Iterator) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """One optimiser step over ``accum_steps`` micro-batches: (mean loss, grad norm, samples), the
        first two left on the device (reading them waits for the device)."""
        accum = self.optim_cfg.accum_steps
        self.optimizer.zero_grad(set_to_none=True)
        total_loss = torch.zeros((), device=self.device)
        n_samples = 0
        for i in range(accum):
            batch = self.to_device(next(batches))
            sync = i == accum - 1 or not self.dist.enabled
            ctx = contextlib.nullcontext() if sync else self.ddp_model.no_sync()
            with ctx:
                with self.autocast():
                    out = self.ddp_model(batch)
                loss = out["loss"].float()
                self.scaler.scale(loss / accum).backward()
            total_loss += loss.detach()
            n_samples += batch_size_of(batch)
        mean_loss = distributed.all_reduce_mean(total_loss / accum)
        # the first non-finite step and its loss, noted without waiting for the device
        newly = (self._bad[0] == 0) & ~torch.isfinite(mean_loss)
        step = torch.full((), float(self.step + 1), dtype=torch.float64, device=self.device)  # no copy
        here = torch.stack([step, mean_loss.double()])
        self._bad.copy_(torch.where(newly, here, self._bad))
        grad_norm = None
        if self.optim_cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim_cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return mean_loss, grad_norm, n_samples

    def _read(self, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> tuple[float, float | None]:
        """The loss and grad norm as numbers, in one wait for the device; stops the run (before any
        checkpoint is written) when a step since the last read had a non-finite loss."""
        parts = [loss.detach().double().reshape(1), self._bad]
        if grad_norm is not None:
            parts.append(grad_norm.detach().double().reshape(1))
        values = torch.cat(parts).tolist()
        if values[1] != 0:
            raise TrainingDivergedError(
                f"loss became {values[2]} at step {int(values[1])}; stopped without saving. The last good "
                f"checkpoint ({self.ckpt_path}) is intact: resume from it with a lower lr or --precision fp32."
            )
        return values[0], (values[3] if grad_norm is not None else None)

    # -- pieces the loop (and the benchmarks) use ----------------------------------------------------

    def loader(self, epoch: int, start_sample: int) -> DataLoader:
        """This process's batches of ``epoch`` from sample ``start_sample`` on."""
        return epoch_loader(
            self.dataset,
            self.sampler,
            epoch,
            start_sample,
            batch_size=self.cfg.batch_size,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.device.type == "cuda",
        )

    def to_device(self, batch: Any) -> Any:
        """``batch`` on the run's device (images channels-last where the run uses it); the entries a
        method reads on the host (``PretrainMethod.host_keys``) stay there."""
        keep = getattr(self.model, "host_keys", ())
        if isinstance(batch, dict) and keep:
            return {k: v if k in keep else self._moved(v) for k, v in batch.items()}
        return self._moved(batch)

    def _moved(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            batch = batch.to(self.device, non_blocking=True)
            if self.channels_last and batch.ndim == 4 and batch.is_floating_point():
                batch = batch.contiguous(memory_format=torch.channels_last)
            return batch
        if isinstance(batch, dict):
            return {k: self._moved(v) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return type(batch)(self._moved(v) for v in batch)
        return batch

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

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
            # the steps the run is set to reach and, in the checkpoint written at its end, why it stopped
            "total_steps": self.total_steps,
            "stopped_by": self.stopped_by,
            "rng": rng,
            # every process's generators: a restarted multi-process job resumes each rank's own
            "rng_ranks": rng_ranks or [rng],
            "config": self.config,
            "run_info": self.run_info,
            "format": ckpts.FORMAT,
            **self.best.state(),
        }

    def save(self, epoch: int) -> None:
        """Write the checkpoint on rank 0; a failed write stops every process with rank 0's error."""
        rng_ranks = ckpts.every_rank_rng()
        distributed.on_main(
            lambda: self.store.save(self.state_dict(epoch, rng_ranks)),
            self.device,
            CheckpointWriteError(
                f"{self.ckpt_path}: rank 0 could not write the checkpoint (its log says why); the run stopped"
            ),
        )

    def _write_best(self, epoch: int, key: str, value: float) -> None:
        extra = {"config": self.config, "run_info": self.run_info}
        self.best.write(self.model, self.step, epoch, key, value, extra, self.device)

    # -- validation ----------------------------------------------------------------------------------

    def _validation_due(self) -> bool:
        if self.val_dataset is None:
            return False
        every = self.cfg.val_every or self.steps_per_epoch
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
                batch = self.to_device(batch)
                with self.autocast():
                    out = self.model(batch)
                n = batch_size_of(batch)
                total += torch.stack([out[self.val_key].detach().double() * n, torch.tensor(n).to(total)])
        finally:
            self.model.train(was_training)
        total = distributed.all_reduce_sum(total)
        return float(total[0] / total[1].clamp_min(1))

    def _validate_and_keep_best(self, epoch: int) -> None:
        """Validate; log it; write ``best.pt`` when it is the lowest (unless a probe picks best.pt)."""
        value = self.validate()
        if self.metrics.log is not None:
            self.metrics.log.write(
                {"step": self.step, "epoch": self.step / self.steps_per_epoch, "val_loss": value}
            )
        if self.dist.is_main:
            self._scores({"val_loss": value})
        if value < self.best.val:
            self.best.val = value
            if self.best.select_key is None:
                self._write_best(epoch, "val_loss", value)

    def _scores(self, values: dict[str, float]) -> None:
        """Tell the callbacks validation's or the watchers' values (numbers already on the host)."""
        if values:
            for cb in self.callbacks:
                cb.on_scores(self.step, values)

    # -- watchers ------------------------------------------------------------------------------------

    def _due(self, final: bool) -> list[bool]:
        """Which watchers are due now, by rank 0's answer (the others' is replaced by the broadcast)."""
        if not self.dist.is_main:
            return [False] * len(self.watchers)
        return [w.due(self.step, self.total_steps, final) for w in self.watchers]

    def _watch(self, epoch: int, due_flags: list[bool]) -> float:
        """Run the watchers due now on rank 0, log their values, keep best.pt by ``select_key``.

        Returns the seconds it took (left out of the throughput figure). Every process takes part in
        the one decision afterwards (a broadcast), so none runs ahead into a checkpoint write alone.
        """
        due = [w for w, flag in zip(self.watchers, due_flags) if flag]
        if not due:
            return 0.0
        t0 = time.monotonic()
        values: dict[str, float] = {}
        metrics: MetricsLog | None = self.metrics.log
        if self.dist.is_main:
            was_training = self.model.training
            self.model.eval()
            try:
                with preserved_rng(), torch.no_grad(), self.autocast():
                    for watcher in due:
                        try:
                            values.update(watcher.watch(self.model, self.step, metrics))
                        except Exception as exc:  # watching must never end a run
                            log.warning(f"{type(watcher).__name__} failed at step {self.step}: {exc}")
            finally:
                self.model.train(was_training)
            if metrics is not None and values:
                metrics.write({"step": self.step, "epoch": self.step / self.steps_per_epoch, **values})
            self._scores(values)
        select_key = self.best.select_key
        score = values.get(select_key) if select_key is not None else None
        better = score is not None and math.isfinite(score) and score > self.best.score
        if select_key is not None and distributed.broadcast_flag(better, self.device):
            if score is not None:
                self.best.score = score
            self._write_best(epoch, select_key, score if score is not None else math.nan)
        return time.monotonic() - t0
