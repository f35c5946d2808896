"""A wall-clock budget turned into a schedule: how many steps ``minutes`` buy on this machine.

A warm-up and cosine schedule must know its length before the first step, and a preset counts it in
epochs, which say nothing about time. So a short throwaway run of the same config (the same model,
batch and data) measures the samples per second of this machine, and ``minutes x rate / batch`` steps
become the schedule's length. The one implementation serves ``ultrassl pretrain --time-limit M
--schedule-to-time-limit`` (:func:`fit_schedule`, called by :func:`ultrassl.api.pretrain`) and the
benchmark's per-corpus calibration (:mod:`ultrassl.benchmark.pretrain`).

This module runs no training itself: the caller passes the function that runs the short run (the
facade's ``pretrain``), so the layers stay as they are (the facade calls down into this module, the
benchmark calls it from above); it imports no torch itself.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import logging
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ultrassl.atomic import atomic_write_text
from ultrassl.config import OptimConfig, PretrainConfig
from ultrassl.errors import ConfigError, UltrasslError

log = logging.getLogger(__name__)

__all__ = [
    "CALIBRATION_STEPS",
    "RECORD",
    "SCHEDULE_SHARE",
    "Calibration",
    "calibrate",
    "calibration_config",
    "constant_steps",
    "fit_schedule",
    "measured_rate",
    "steps_for",
    "warmup_steps",
]

#: optimiser steps of a calibration run
CALIBRATION_STEPS = 12
#: the first steps' rates are left out of the measurement: they pay for allocations and kernel choice
SKIP_STEPS = 2
#: the share of ``--time-limit`` the fitted schedule fills: the rest is for what the calibration does
#: not time (checkpoint writes, validation, the online probe, pictures) and a machine that slows down;
#: the time limit itself still stops the run
SCHEDULE_SHARE = 0.9
#: the fewest steps a budget buys, however short
MIN_STEPS = 10
#: the warm-up, as a share of the steps, of a config that has one (as the presets' 5 of 100 epochs)
WARMUP_SHARE = 0.05
#: the run folder's record of the fitted schedule (what was measured and chosen)
RECORD = "schedule.json"
#: the calibration run's folder inside the run folder, removed once measured
CALIBRATION_DIR = "calibration"


@dataclass(frozen=True)
class Calibration:
    """What a calibration run measured: samples per second (of all processes together), samples per
    optimiser step (the global batch), its steps and its wall time, set-up included."""

    samples_per_s: float
    batch: int
    steps: int
    seconds: float


def measured_rate(metrics_csv: Path) -> float:
    """The median ``samples_per_s`` of a run's ``metrics.csv`` after its first :data:`SKIP_STEPS`
    steps (all of its rows when there are no others): a median, as one slow step of a shared machine
    should not set the schedule."""
    with Path(metrics_csv).open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("samples_per_s")]
    rates = [float(r["samples_per_s"]) for r in rows if int(r["step"]) > SKIP_STEPS]
    rates = rates or [float(r["samples_per_s"]) for r in rows]
    if not rates:
        raise UltrasslError(f"{metrics_csv}: the calibration run logged no samples/s to measure")
    return statistics.median(rates)


def samples_per_step(config_yaml: Path, world_size: int = 1) -> int:
    """The global batch of a run from its resolved ``config.yaml``: batch x accumulation x processes."""
    config = yaml.safe_load(Path(config_yaml).read_text()) or {}
    batch = int((config.get("train") or {}).get("batch_size", 1))
    return batch * int((config.get("optim") or {}).get("accum_steps", 1)) * world_size


def calibrate(
    train_briefly: Callable[[Path, int], object],
    folder: Path,
    steps: int | None = None,
    *,
    world_size: int = 1,
    is_main: bool = True,
) -> Calibration:
    """Run ``train_briefly(folder, steps)`` (a throwaway run of ``steps`` steps that logs every step
    into ``folder``) and measure it. Under torchrun every process takes part in the run; rank 0 reads
    the measurement and every process gets the same one."""
    steps = CALIBRATION_STEPS if steps is None else steps
    t0 = time.monotonic()
    train_briefly(folder, steps)
    seconds = time.monotonic() - t0
    measured = None
    if is_main:
        rate = measured_rate(folder / "metrics.csv")
        measured = Calibration(rate, samples_per_step(folder / "config.yaml", world_size), steps, seconds)
    if world_size > 1:
        from ultrassl import distributed

        measured = distributed.broadcast_object(measured)
    assert isinstance(measured, Calibration)
    return measured


def steps_for(minutes: float, samples_per_s: float, batch: int) -> int:
    """The optimiser steps of ``batch`` samples that ``minutes`` buy at ``samples_per_s`` (at least
    :data:`MIN_STEPS`)."""
    return max(MIN_STEPS, round(minutes * 60 * samples_per_s / batch))


def warmup_steps(steps: int) -> int:
    """The warm-up of a schedule of ``steps`` steps whose config has one: :data:`WARMUP_SHARE` of it."""
    return max(1, round(WARMUP_SHARE * steps))


def constant_steps(constant_epochs: float, epochs: float, steps: int) -> int | None:
    """The constant stretch (USCL's 10 of 100 epochs) of a schedule of ``steps`` steps: the same share of
    it as the config's ``constant_epochs`` of its ``epochs``; None where the config has none."""
    if constant_epochs <= 0 or epochs <= 0:
        return None
    return round(min(1.0, constant_epochs / epochs) * steps)


def scaled_shares(
    optim: OptimConfig, epochs: float, steps: int, *, keep_given: bool
) -> tuple[int | None, int | None]:
    """``(warmup_steps, constant_steps)`` of a schedule of ``steps`` steps, the shares of ``optim``
    scaled to it: a warm-up of :data:`WARMUP_SHARE` where the config warms up, USCL's constant stretch
    as the same share of the steps as its ``constant_epochs`` of ``epochs``; None where it has none.

    ``keep_given``: a step count already in the config stays as it is. The benchmark keeps them (its
    presets count in epochs, so a step count there is one the user gave); ``--schedule-to-time-limit``
    does not (a preset's step count, as ``tiny``'s 10 warm-up steps, was sized for its own length, and
    a 12-step fitted run would spend 10 of them warming up)."""
    warmup = optim.warmup_steps
    if not (keep_given and warmup is not None) and has_warmup(optim):
        warmup = warmup_steps(steps)
    constant = constant_steps(optim.constant_epochs, epochs, steps)
    if constant is None or (keep_given and optim.constant_steps is not None):
        constant = optim.constant_steps
    return warmup, constant


def has_warmup(optim: OptimConfig) -> bool:
    """Whether a config warms up at all (a constant start, as USCL's, keeps its own schedule)."""
    return (optim.warmup_steps if optim.warmup_steps is not None else optim.warmup_epochs) > 0


def calibration_config(cfg: PretrainConfig, steps: int) -> PretrainConfig:
    """``cfg`` as a throwaway run of ``steps`` steps that logs every step: the same model, batch, data,
    device and precision, without what only watches a run or keeps it (probe, pictures, TensorBoard,
    checkpoints on the way, time limit) and without ``init_from``, which costs loading time only."""
    out = copy.deepcopy(cfg)
    out.init_from = None
    out.train.max_steps = steps
    out.train.time_limit = None
    out.train.schedule_to_time_limit = False
    out.train.checkpoint_every = 0
    out.train.keep_checkpoints = 1
    out.train.log_every = 1
    out.train.tensorboard = False
    out.probe.data = ""
    out.previews.every = 0
    return out


def _with_schedule(
    cfg: PretrainConfig, max_steps: int, warmup: int | None, constant: int | None
) -> PretrainConfig:
    """``cfg`` with the schedule's length, warm-up and constant stretch set (new sections: the caller's
    stay as they are)."""
    return dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, max_steps=max_steps),
        optim=dataclasses.replace(cfg.optim, warmup_steps=warmup, constant_steps=constant),
    )


def fit_schedule(
    cfg: PretrainConfig,
    run_dir: Path,
    found: tuple[Path, dict[str, Any]] | None,
    train: Callable[[PretrainConfig, Path], object],
    *,
    world_size: int = 1,
    is_main: bool = True,
) -> PretrainConfig:
    """``cfg`` (with ``train.schedule_to_time_limit``) with ``train.max_steps`` set to fill
    :data:`SCHEDULE_SHARE` of ``train.time_limit`` at the rate a calibration run measures (``train(cfg,
    folder)`` runs it), and ``optim.warmup_steps`` to :func:`warmup_steps` of it where the config
    warms up. What was measured and chosen is written to ``RUN/schedule.json``.

    A run that resumes (``found``: the checkpoint it continues) takes its checkpoint's schedule and
    calibrates nothing: the schedule is part of what makes a resumed run replay bit-exactly, and a new
    measurement would differ. A checkpoint of a run started without the option is left to the resume
    check, which names the difference.
    """
    if cfg.train.max_steps is not None:
        raise ConfigError(
            f"train.max_steps ({cfg.train.max_steps}) and train.schedule_to_time_limit both set the "
            "schedule's length; give one of them"
        )
    if found is not None:
        saved = found[1].get("config") or {}
        if not (saved.get("train") or {}).get("schedule_to_time_limit"):
            return cfg
        steps = int(saved["train"]["max_steps"])
        optim = saved.get("optim") or {}
        fitted = _with_schedule(cfg, steps, optim.get("warmup_steps"), optim.get("constant_steps"))
        if is_main:
            log.info(
                f"schedule: {steps:,} steps, as fitted when this run started ({RECORD}); no new calibration"
            )
        return fitted
    minutes = float(cfg.train.time_limit or 0)
    folder = Path(run_dir) / CALIBRATION_DIR
    if is_main:  # a calibration killed before its end left a run here that must not be resumed
        shutil.rmtree(folder, ignore_errors=True)
        log.info(
            f"schedule: a {CALIBRATION_STEPS}-step calibration run of this config measures samples/s on "
            f"this machine ({folder}, removed after)"
        )
    measured = calibrate(
        lambda where, n: train(calibration_config(cfg, n), where),
        folder,
        world_size=world_size,
        is_main=is_main,
    )
    steps = steps_for(minutes * SCHEDULE_SHARE, measured.samples_per_s, measured.batch)
    warmup, constant = scaled_shares(cfg.optim, cfg.train.epochs, steps, keep_given=False)
    if is_main:
        shutil.rmtree(folder, ignore_errors=True)
        record = {
            "time_limit_minutes": minutes,
            "schedule_share": SCHEDULE_SHARE,
            "samples_per_s": measured.samples_per_s,
            "samples_per_step": measured.batch,
            "calibration_steps": measured.steps,
            "calibration_seconds": round(measured.seconds, 1),
            "max_steps": steps,
            "warmup_steps": warmup,
            "constant_steps": constant,
        }
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(run_dir) / RECORD, json.dumps(record, indent=2) + "\n")
        warm = f", warm-up {warmup:,}" if warmup else ""
        warm += f", constant lr {constant:,}" if constant else ""
        log.info(
            f"schedule: {measured.samples_per_s:.1f} samples/s on this machine ({measured.steps}-step "
            f"calibration) -> {steps:,} steps of {measured.batch} samples{warm} "
            f"({SCHEDULE_SHARE:.0%} of the {minutes:g} min time limit; {RECORD})"
        )
    return _with_schedule(cfg, steps, warmup, constant)
