"""The evaluation plan classification and segmentation share: folds (by group, from
:mod:`ultrassl.data.group_folds`) x seeds x label fractions, each run with the sample indices of its
training, validation and test sides. Each fold's test groups are looked at once, after selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ultrassl.data.group_folds import (
    Fold,
    check_no_leakage,
    group_majority_labels,
    make_folds,
    read_folds,
    restrict_folds,
    subsample_groups,
    write_folds,
)
from ultrassl.errors import ConfigError, UltrasslError

__all__ = ["Fold", "IndexedRun", "Protocol", "Run", "group_indices", "plan_runs"]


@dataclass
class Run:
    """One evaluation: a fold, a seed and a label fraction, with the groups of each side."""

    fold: int
    seed: int
    label_fraction: float
    train_groups: list[str]
    val_groups: list[str]
    test_groups: list[str]


def plan_runs(
    groups: Sequence[str],
    labels: Sequence[Any],
    *,
    n_folds: int,
    seeds: Sequence[int],
    label_fractions: Sequence[float],
    val_fraction: float = 0.2,
    out_dir: str | Path | None = None,
    folds: Sequence[Fold] | None = None,
    only_folds: Sequence[int] | None = None,
) -> tuple[list[Fold], list[Run]]:
    """The whole protocol's plan: leakage-checked folds (written to ``out_dir/folds.json``) and one
    :class:`Run` per fold x seed x label fraction, with few-label training groups sub-sampled per class.
    ``folds`` (e.g. from :func:`read_folds`) replaces the seeded grouped k-fold; every group of the data
    must then sit in exactly one test fold. ``only_folds`` keeps the runs of those fold numbers (to run
    folds apart, e.g. with an encoder pre-trained per fold on that fold's training part)."""
    if folds is None:
        folds = make_folds(groups, labels, n_folds=n_folds, seed=seeds[0], val_fraction=val_fraction)
    else:  # groups of the file absent from the data (skipped files) drop out
        folds = restrict_folds(folds, groups)
    check_no_leakage(folds, all_groups=set(groups))
    if out_dir is not None:
        write_folds(Path(out_dir) / "folds.json", folds, meta={"seed": seeds[0], "n_folds": n_folds})
    group_label = group_majority_labels(groups, labels)
    runs = [
        Run(
            k,
            seed,
            fraction,
            subsample_groups(fold.train_groups, group_label, fraction, seed),
            fold.val_groups,
            fold.test_groups,
        )
        for k, fold in enumerate(folds)
        for seed in seeds
        for fraction in label_fractions
        if only_folds is None or k in only_folds
    ]
    if only_folds is not None and not runs:
        raise UltrasslError(f"only_folds={list(only_folds)} matches none of the {len(folds)} folds")
    return folds, runs


def group_indices(sample_groups: Sequence[str], wanted: Sequence[str]) -> np.ndarray:
    """Indices of the samples (frames, images) whose group is in ``wanted``."""
    keep = set(wanted)
    return np.array([i for i, g in enumerate(sample_groups) if g in keep], dtype=int)


@dataclass
class IndexedRun:
    """A planned :class:`Run` with the sample indices of each side; ``keep`` marks the run whose model
    is kept for ``ultrassl evaluate`` (the first seed at the largest label fraction)."""

    run: Run
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    keep: bool


@dataclass
class Protocol:
    """The evaluation protocol classification and segmentation share: which folds, seeds and label
    fractions, and how much of each training part becomes validation."""

    folds: int = field(
        default=5,
        metadata={"help": "folds of the grouped k-fold (whole groups per fold; not with --folds-file)"},
    )
    folds_file: str | None = field(
        default=None,
        metadata={
            "help": 'a folds.json ({"folds": [{"train_groups", "val_groups", "test_groups"}, ...]}) to use '
            "instead of the seeded grouped k-fold, e.g. a data set's official split; checked for leakage"
        },
    )
    only_folds: tuple[int, ...] | None = field(
        default=None, metadata={"help": "run only these fold numbers (None: all)"}
    )
    seeds: tuple[int, ...] = field(
        default=(0,),
        metadata={
            "help": "each seed repeats every fold (its few-label subset and its training); the first also "
            "draws the folds"
        },
    )
    label_fractions: tuple[float, ...] = field(
        default=(1.0,),
        metadata={
            "help": "few-label curve: train on these fractions of each class's training groups, one run "
            "each (the smaller subsets inside the larger)"
        },
    )
    val_fraction: float = field(
        default=0.2,
        metadata={
            "help": "share of each fold's training groups held out for validation (model selection, early "
            "stopping)"
        },
    )

    def check(self) -> None:
        """The protocol's own values (a task's ``check`` calls this first)."""
        if self.folds_file is None and self.folds < 2:
            raise ConfigError(f"folds must be >= 2 (or a folds_file), got {self.folds}")
        if not self.seeds or not self.label_fractions:
            raise ConfigError("seeds and label_fractions must not be empty")
        if any(not 0.0 < f <= 1.0 for f in self.label_fractions):
            raise ConfigError(f"label_fractions must be in (0, 1], got {list(self.label_fractions)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    def plan(
        self, groups: Sequence[str], labels: Sequence[Any], out_dir: str | Path | None = None
    ) -> tuple[list[Fold], list[Run]]:
        """:func:`plan_runs` under this protocol (``folds_file`` replaces the seeded k-fold)."""
        return plan_runs(
            groups,
            labels,
            n_folds=self.folds,
            seeds=self.seeds,
            label_fractions=self.label_fractions,
            val_fraction=self.val_fraction,
            out_dir=out_dir,
            folds=read_folds(self.folds_file) if self.folds_file else None,
            only_folds=self.only_folds,
        )

    def indexed_runs(
        self, groups: Sequence[str], labels: Sequence[Any], out_dir: str | Path | None = None
    ) -> tuple[list[Fold], list[IndexedRun]]:
        """:meth:`plan`, each run with the indices of its train/val/test samples (the one fold loop
        both tasks iterate: fit on train, select on val, look at test once)."""
        folds, runs = self.plan(groups, labels, out_dir)
        top = max(self.label_fractions)
        out = [
            IndexedRun(
                r,
                *(group_indices(groups, g) for g in (r.train_groups, r.val_groups, r.test_groups)),
                keep=r.seed == self.seeds[0] and r.label_fraction == top,
            )
            for r in runs
        ]
        return folds, out
