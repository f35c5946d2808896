"""The one k-fold engine both downstream tasks run through.

For every planned run (fold x seed x label fraction, :meth:`~ultrassl.finetune.splits.Protocol.indexed_runs`):
fit on the training groups with selection on the validation groups, look at the test groups once,
keep the fold model of the runs that are kept, and journal the run so that a killed evaluation reads
its finished runs back instead of training them again. Classification and segmentation supply only what
differs (a :class:`KFoldTask`: the model, its fit, what is measured on the test fold, the card that
``ultrassl evaluate`` reads).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import nn

from ultrassl.finetune.journal import RUNS_DIR, RunJournal
from ultrassl.finetune.saved import fold_model_path, save_fold_model
from ultrassl.finetune.splits import Fold, IndexedRun
from ultrassl.progress import duration, within

log = logging.getLogger(__name__)


class Phase(enum.Enum):
    """What the engine is doing; a data set may record it with every access (tests do)."""

    FEATURES = "features"
    TRAIN = "train"
    VALIDATE = "validate"
    TEST = "test"


@dataclass
class Fitted:
    """A run's fitted model, selected on validation: the epoch it holds and its validation score
    (None where there was no epoch, e.g. a linear probe, or no validation). ``predict`` (optional)
    gives test outputs when the model is not what predicts (a linear probe's scikit-learn model)."""

    model: nn.Module
    best_epoch: int | None
    val_score: float | None
    predict: Callable[[np.ndarray], Any] | None = None


class KFoldTask(Protocol):
    """What one downstream task adds to the engine."""

    #: the fold being evaluated (for access-recording data sets in tests)
    current_fold: int | None

    def plan_inputs(self) -> tuple[Sequence[str], Sequence[Any]]:
        """(group of each item, the label folds are stratified by)."""
        ...

    def fingerprint(self) -> str:
        """What decides this evaluation's results (a journal of another one is not read back)."""
        ...

    def start(self, journal: RunJournal) -> None:
        """Before the first run (e.g. read cached features back)."""
        ...

    def read_back(self, entry: Mapping[str, Any]) -> None:
        """Add a journalled run's results to the output."""
        ...

    def fit(self, train: np.ndarray, val: np.ndarray, seed: int) -> Fitted:
        """Fit on ``train``, select on ``val``."""
        ...

    def test(self, fitted: Fitted, planned: IndexedRun, out_dir: Path | None) -> dict[str, Any]:
        """The one look at ``planned.test``: record its results; returns the run's journal entry.
        ``out_dir`` is given for a kept run (pictures may be drawn there)."""
        ...

    def after_run(self, journal: RunJournal) -> None:
        """After a run is recorded, before it is journalled (e.g. store new features)."""
        ...

    def describe(self, entry: Mapping[str, Any]) -> str:
        """One line on a finished run's test result, for the progress output."""
        ...

    def write_card(self, out_dir: Path, folds: list[int]) -> None:
        """What ``ultrassl evaluate`` needs to rebuild the kept fold models and feed them like here."""
        ...


def run_kfold(
    task: KFoldTask,
    plan: Callable[..., tuple[list[Fold], list[IndexedRun]]],
    out_dir: Path | None,
    *,
    progress: bool = False,
) -> list[Fold]:
    """Every planned run of ``task`` (``plan``: the protocol's ``indexed_runs``); with ``out_dir``,
    finished runs are journalled and read back on a re-run, and kept fold models saved. Returns the folds.

    ``progress``: a line per finished run (logger ``ultrassl.finetune.kfold``, INFO) with the time left
    at the pace of the runs fitted so far, and the fit's own lines within a run (``finetune.fit``)."""
    groups, labels = task.plan_inputs()
    folds, runs = plan(groups, labels, out_dir)
    journal = RunJournal(out_dir, task.fingerprint())
    task.start(journal)
    saved: list[int] = []
    fitted_s: list[float] = []  # seconds of each run fitted here (not read back)
    for i, planned in enumerate(runs):
        run = planned.run
        keep = planned.keep and out_dir is not None
        kept_model = fold_model_path(out_dir, run.fold) if keep else None
        stored = journal.get(run, kept_model)
        if stored is not None:
            task.read_back(stored)
            saved += [run.fold] if planned.keep else []
            continue
        task.current_fold = run.fold
        t0 = time.monotonic()
        left = len(runs) - i - 1
        after = sum(fitted_s) / len(fitted_s) * left if fitted_s else None
        # fold numbers are 0-based as in folds.json, runs/ and the report; the count says how far along
        where = f"fold {run.fold} ({run.fold + 1} of {len(folds)}), seed {run.seed}"
        where += f", fraction {run.label_fraction:g}" if run.label_fraction != 1 else ""
        with within(f"{where} (run {i + 1}/{len(runs)})", after_s=after, on=progress):
            fitted = task.fit(planned.train, planned.val, run.seed)
        entry = task.test(fitted, planned, out_dir if keep else None)
        if keep:
            save_fold_model(out_dir, run.fold, fitted.model)
            saved.append(run.fold)
        task.after_run(journal)
        journal.put(run, entry, kept_model)
        fitted_s.append(time.monotonic() - t0)
        if progress:
            eta = f"; ETA {duration(sum(fitted_s) / len(fitted_s) * left)}" if left else ""
            log.info(f"run {i + 1}/{len(runs)}: {where}: {task.describe(entry)}{eta}")
    if journal.read_back:
        log.info(f"read back {journal.read_back} finished runs from {out_dir}/{RUNS_DIR}")
    if out_dir is not None and saved:
        task.write_card(out_dir, saved)
    return folds


@dataclass(frozen=True)
class EvaluationResult(Mapping[str, Any]):
    """What ``finetune classify`` / ``finetune segment`` return: the headline summary, the files
    written, and how many labelled items were evaluated (frames for classification, images for
    segmentation). Reads as the dict it replaced (``result["summary"]``, ``["n_frames"]`` /
    ``["n_images"]``)."""

    task: str
    summary: dict[str, Any]
    paths: dict[str, Any]
    n_items: int

    @property
    def _items_key(self) -> str:
        return "n_frames" if self.task == "classify" else "n_images"

    def _as_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "paths": self.paths, self._items_key: self.n_items}

    def __getitem__(self, key: str) -> Any:
        return self._as_dict()[key]

    def __iter__(self):
        return iter(self._as_dict())

    def __len__(self) -> int:
        return 3
