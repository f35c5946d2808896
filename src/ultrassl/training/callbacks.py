"""What watches a run without being its arithmetic: progress, metrics, stop requests, and watchers
(the online probe, pictures).

A :class:`Callback` is told when the run starts, after every optimiser step and when it ends, and may
ask it to stop. The loop reads the loss and gradient norm from the device only at logging steps
(``StepInfo.loss`` is None elsewhere), so a callback never forces a host synchronisation. Progress is a
bar on a terminal (:class:`ProgressBar`) and a plain logged line every ``train.log_interval_s`` seconds
elsewhere (:class:`ProgressLog`).

A :class:`Watcher` looks at the model itself now and then; its contract (rank 0 alone, eval mode,
``no_grad``, random streams restored) is kept by the loop, so watching never changes the run.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from torch import nn
from tqdm.auto import tqdm

from ultrassl.progress import Ticker, duration, interval_s, on_terminal
from ultrassl.training.metrics_log import MetricsLog

log = logging.getLogger(__name__)


@dataclass
class StepInfo:
    """Where the run stands after a step (or at its start)."""

    step: int
    total_steps: int
    steps_per_epoch: int
    is_main: bool
    #: seconds since this start of the run (watchers' time included)
    elapsed_s: float = 0.0
    #: the step's mean loss, grad norm, lr and the samples/s since the last logging step: read at
    #: logging steps only (None elsewhere)
    loss: float | None = None
    grad_norm: float | None = None
    lr: float | None = None
    samples_per_s: float | None = None

    @property
    def epoch(self) -> float:
        return self.step / self.steps_per_epoch

    @property
    def logged(self) -> bool:
        return self.loss is not None


class Callback:
    """One thing that follows a run; every hook does nothing unless overridden."""

    def on_start(self, info: StepInfo) -> None:
        """Before the first step (``info.step`` is the step resumed from)."""

    def on_step(self, info: StepInfo) -> None:
        """After each optimiser step."""

    def stop_reason(self) -> str | None:
        """A reason to stop after this step (``signal``, ``time_limit``), asked on every process."""
        return None

    def on_scores(self, step: int, values: dict[str, float]) -> None:
        """Validation's or the watchers' values at ``step`` (rank 0; numbers already on the host)."""

    def on_end(self, info: StepInfo) -> None:
        """When the run ends, normally or by an error."""


class ProgressBar(Callback):
    """A tqdm bar on rank 0 when stderr is a terminal; the loss shown is the last logged one."""

    def on_start(self, info: StepInfo) -> None:
        self.bar = tqdm(
            total=info.total_steps,
            initial=info.step,
            disable=not info.is_main or not on_terminal(),
            desc="train",
            dynamic_ncols=True,
        )

    def on_step(self, info: StepInfo) -> None:
        self.bar.update(1)
        if info.logged:
            self.bar.set_postfix(loss=f"{info.loss:.4f}")

    def on_end(self, info: StepInfo) -> None:
        self.bar.close()


class ProgressLog(Callback):
    """The run's progress as a plain line every ``interval`` seconds on rank 0 when stderr is not a
    terminal (logger ``ultrassl.training.callbacks``, INFO; DEBUG at the logging steps in between)::

        train: step STEP/TOTAL (epoch EPOCH), loss LOSS (step LOGGED), lr LR, RATE samples/s,
        ETA 12m05s, probe_knn SCORE (step SCORED)

    Loss, lr and samples/s are those of the last logging step (the loop reads the device only there),
    the scores the last validation's or watcher's. ``interval`` None: ``ULTRASSL_PROGRESS_INTERVAL``,
    else 30 s. It reads the clock only.
    """

    def __init__(self, interval: float | None = None):
        # resolved here, on every process alike: a bad $ULTRASSL_PROGRESS_INTERVAL stops all ranks at
        # once, not rank 0 alone while the others wait in a collective
        self.interval = interval_s(interval)

    def on_start(self, info: StepInfo) -> None:
        self.on = info.is_main and not on_terminal()
        self.ticker = Ticker(self.interval) if self.on else None
        self.first = info.step
        self.logged: StepInfo | None = None
        self.scores: dict[str, float] = {}
        self.scored_at = 0

    def on_step(self, info: StepInfo) -> None:
        if self.ticker is None:
            return
        if info.logged:
            self.logged = info
        level = self.ticker.level()
        if level == logging.DEBUG and not info.logged:
            return  # -v: a line at each logging step
        if log.isEnabledFor(level):
            log.log(level, self.line(info))

    def on_scores(self, step: int, values: dict[str, float]) -> None:
        shown = {k: v for k, v in values.items() if not k.endswith("_s")}  # not the seconds they took
        if shown:
            self.scores.update(shown)
            self.scored_at = step

    def line(self, info: StepInfo) -> str:
        parts = [f"train: step {info.step}/{info.total_steps} (epoch {info.epoch:.2f})"]
        last = self.logged
        if last is not None and last.loss is not None:
            parts.append(f"loss {last.loss:.4f} (step {last.step})")
            if last.lr is not None:
                parts.append(f"lr {last.lr:.2e}")
            if last.samples_per_s is not None:
                parts.append(f"{last.samples_per_s:.1f} samples/s")
        done = info.step - self.first
        if done > 0 and info.total_steps > info.step:
            parts.append(f"ETA {duration((info.total_steps - info.step) * info.elapsed_s / done)}")
        if self.scores:
            scores = " ".join(f"{k} {v:.4g}" for k, v in self.scores.items())
            parts.append(f"{scores} (step {self.scored_at})")
        return ", ".join(parts)


class MetricsWriter(Callback):
    """metrics.csv (and TensorBoard) on rank 0: a row at every logging step; ``log`` is shared with
    validation and the watchers, which write their own rows."""

    def __init__(self, run_dir: Path, tensorboard: bool):
        self.run_dir = run_dir
        self.tensorboard = tensorboard
        self.log: MetricsLog | None = None

    def on_start(self, info: StepInfo) -> None:
        if info.is_main:
            self.log = MetricsLog(self.run_dir, info.step, self.tensorboard)

    def on_step(self, info: StepInfo) -> None:
        if self.log is not None and info.logged:
            self.log.write(
                {
                    "step": info.step,
                    "epoch": info.epoch,
                    "loss": info.loss,
                    "lr": info.lr,
                    "grad_norm": info.grad_norm,
                    "samples_per_s": info.samples_per_s,
                    "elapsed_s": info.elapsed_s,
                }
            )

    def on_end(self, info: StepInfo) -> None:
        if self.log is not None:
            self.log.close()


class StopOnSignal(Callback):
    """SIGTERM/SIGINT finish the current step, write a checkpoint and stop (a scheduler's pre-emption);
    a second one interrupts at once."""

    def __init__(self) -> None:
        self.hit = False
        self._old: dict[Any, Any] = {}

    def on_start(self, info: StepInfo) -> None:
        self.hit = False
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):  # noqa: ARG001
            if self.hit:
                raise KeyboardInterrupt
            self.hit = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, handler)

    def stop_reason(self) -> str | None:
        return "signal" if self.hit else None

    def on_end(self, info: StepInfo) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)
        self._old = {}


class TimeLimit(Callback):
    """Stop once ``minutes`` of this start of the run have passed (the run's checkpoint is written)."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60

    def on_start(self, info: StepInfo) -> None:
        self.t0 = time.monotonic()

    def stop_reason(self) -> str | None:
        return "time_limit" if time.monotonic() - self.t0 > self.seconds else None


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

    def watch(self, model: nn.Module, step: int, log: MetricsLog | None) -> dict[str, float]: ...
