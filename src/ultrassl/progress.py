"""Progress that reaches a log as well as a terminal.

On a terminal a long loop draws a tqdm bar. When stderr is not a terminal (``nohup``, a SLURM batch
script, torchrun, ``> log 2>&1``) a bar would write nothing useful, so the loop logs a plain line every
:func:`interval_s` seconds instead (at INFO through :mod:`logging`; at DEBUG, shown by ``-v``, at the
steps in between). The interval is ``ULTRASSL_PROGRESS_INTERVAL`` (seconds) when set, else
:data:`INTERVAL_S`; pre-training has its own ``train.log_interval_s``.

Progress reads the clock only: never a device, never a random stream, so a run is the same with or
without it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from ultrassl import logs
from ultrassl.errors import ConfigError

#: the environment variable that sets the interval of every progress line (seconds, >= 0)
ENV = "ULTRASSL_PROGRESS_INTERVAL"
#: seconds between progress lines when stderr is not a terminal and ``ULTRASSL_PROGRESS_INTERVAL`` is unset
INTERVAL_S = 30.0


def interval_s(value: float | None = None) -> float:
    """``value`` when given, else ``$ULTRASSL_PROGRESS_INTERVAL``, else :data:`INTERVAL_S`."""
    if value is not None:
        return float(value)
    text = os.environ.get(ENV, "").strip()
    if not text:
        return INTERVAL_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ConfigError(f"{ENV} must be a number of seconds >= 0, got {text!r}")
    return seconds


def on_terminal() -> bool:
    """Whether stderr is a terminal (a bar is drawn there; elsewhere plain lines are logged); False
    under ``ultrassl -q``, whose level leaves the lines out too."""
    if logs.quiet():
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h04m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta(done: float, total: float, elapsed: float) -> str | None:
    """The time left at the pace so far (``done`` of ``total`` in ``elapsed`` seconds); None before any."""
    if done <= 0:
        return None
    return duration(max(0.0, total - done) * elapsed / done)


class Ticker:
    """Says when the next plain progress line is due: once per ``interval`` seconds (None: the
    default, :func:`interval_s`), counted from the ticker's start."""

    def __init__(self, interval: float | None = None):
        self.interval = interval_s(interval)
        self.last = time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            return True
        return False

    def level(self) -> int:
        """INFO when a line is due, else DEBUG (the steps in between, for ``-v``)."""
        return logging.INFO if self.due() else logging.DEBUG


class Progress:
    """A counted loop's progress: a tqdm bar on a terminal, else a plain line such as
    ``decode: 120/500 files, 3 skipped, ETA 2m10s`` every interval. ``enabled=False``: neither."""

    def __init__(
        self,
        logger: logging.Logger,
        desc: str,
        total: int,
        *,
        unit: str = "file",
        enabled: bool = True,
        interval: float | None = None,
    ):
        self.logger, self.desc, self.total, self.unit = logger, desc, total, unit
        self.lines = enabled and not on_terminal()
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled or self.lines)
        self.ticker = Ticker(interval) if self.lines else None
        self.t0 = time.monotonic()
        self.done = 0
        #: counts shown after done/total (e.g. ``skipped``), in the order first given
        self.counts: dict[str, Any] = {}

    def update(self, n: int = 1, **counts: Any) -> None:
        """``n`` more done; ``counts``: running totals to show (``skipped=3``)."""
        self.done += n
        self.counts.update(counts)
        self.bar.update(n)
        if self.ticker is not None:
            level = self.ticker.level()
            if self.logger.isEnabledFor(level):
                self.logger.log(level, self.line())

    def line(self) -> str:
        parts = [f"{self.desc}: {self.done}/{self.total} {self.unit}s"]
        parts += [f"{v} {k}" for k, v in self.counts.items()]
        left = eta(self.done, self.total, time.monotonic() - self.t0)
        if left is not None:
            parts.append(f"ETA {left}")
        return ", ".join(parts)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Within:
    """What an inner loop is a part of, for its progress lines (the k-fold engine tells fine-tuning's
    epoch loop which run it is fitting)."""

    #: e.g. ``fold 1 (2 of 5), seed 0 (run 3/10)``
    label: str
    #: seconds the work after this part is expected to take (None: not known yet)
    after_s: float | None = None
    #: False: the caller asked for no progress
    on: bool = True


_WITHIN: ContextVar[Within | None] = ContextVar("ultrassl_progress_within", default=None)


@contextlib.contextmanager
def within(label: str, after_s: float | None = None, on: bool = True) -> Iterator[Within]:
    """Inner loops' progress lines name ``label`` (and count ``after_s`` into their ETA) in this block."""
    part = Within(label, after_s, on)
    token = _WITHIN.set(part)
    try:
        yield part
    finally:
        _WITHIN.reset(token)


def current() -> Within | None:
    """What the running loop is a part of (None: it runs on its own)."""
    return _WITHIN.get()
