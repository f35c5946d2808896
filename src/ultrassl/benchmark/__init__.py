"""``ultrassl benchmark``: encoders evaluated on public ultrasound tasks, with intervals and paired lifts.

Layers, lowest first: :mod:`~ultrassl.benchmark.tasks` (data layouts -> manifest and grouped folds),
:mod:`~ultrassl.benchmark.stats` (intervals, paired differences, detectable differences),
:mod:`~ultrassl.benchmark.encoders` (what is evaluated, and each encoder's random twin),
:mod:`~ultrassl.benchmark.pretrain` (per-fold pre-training for a calibrated budget),
:mod:`~ultrassl.benchmark.evaluate` (one evaluation), :mod:`~ultrassl.benchmark.record` (the results
JSON) and :mod:`~ultrassl.benchmark.runner` (the loop, :func:`run_benchmark`). Importing this package
loads no torch; :func:`run_benchmark` does when it is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ultrassl.benchmark.runner import BenchmarkOptions, BenchmarkResult, run_benchmark

__all__ = ["BenchmarkOptions", "BenchmarkResult", "run_benchmark"]


def __getattr__(name: str) -> Any:
    """The runner's names, imported on first use (so ``ultrassl --help`` and the tasks stay light)."""
    if name in __all__:
        from ultrassl.benchmark import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'ultrassl.benchmark' has no attribute {name!r}")
