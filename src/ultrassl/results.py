"""What the one-call Python API (:mod:`ultrassl.workflow`) returns: frozen dataclasses with typed fields
and a short repr, so a notebook shows what a step did and a script reads it without dictionary keys.

Plain Python only (no torch): ``from ultrassl import PretrainResult`` stays quick.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ultrassl.finetune.kfold import EvaluationResult

__all__ = ["EvaluateResult", "FinetuneResult", "PretrainResult", "Score"]


def _show(value: Any) -> str:
    """A path as its plain string in quotes (not ``PosixPath('...')``), anything else as its repr."""
    return repr(str(value)) if isinstance(value, Path) else repr(value)


@dataclass(frozen=True, repr=False)
class PretrainResult:
    """What :func:`ultrassl.pretrain` did.

    Attributes:
        run_dir: The run folder (``config.yaml``, ``metrics.csv``, ``checkpoints/``, ``summary.md``).
        method: The pre-training method that ran.
        last_checkpoint: ``checkpoints/last.pt``, the state at the last step (what ``resume`` continues).
        best_checkpoint: ``checkpoints/best.pt`` (the best online-probe score, or the lowest validation
            loss of a method that holds data out), or None where the run wrote none.
        steps: Optimisation steps done, counted from the run's start (a resumed run included).
        total_steps: The steps the run was set to reach (``train.max_steps`` or the epochs' steps).
        stopped_by: Why it stopped: ``done``, ``max_steps``, ``time_limit`` or ``signal``.
        seconds: Wall-clock seconds of this call's training (not of earlier calls on the same run).
        final_loss: The training loss at the last step of this call; None when this call trained no
            step (the run had already reached its end).
    """

    run_dir: Path
    method: str
    last_checkpoint: Path
    best_checkpoint: Path | None
    steps: int
    total_steps: int | None
    stopped_by: str
    seconds: float
    final_loss: float | None

    @property
    def finished(self) -> bool:
        """Whether the run reached its planned length (``done`` or ``max_steps``); a ``time_limit`` or a
        ``signal`` leaves it to be continued by the same call again."""
        return self.stopped_by in ("done", "max_steps")

    def __repr__(self) -> str:
        total = "?" if self.total_steps is None else self.total_steps
        loss = "None" if self.final_loss is None else f"{self.final_loss:.4g}"
        return (
            f"PretrainResult(method={self.method!r}, run_dir={_show(self.run_dir)}, "
            f"steps={self.steps}/{total}, stopped_by={self.stopped_by!r}, seconds={self.seconds:.1f}, "
            f"final_loss={loss}, last_checkpoint={_show(self.last_checkpoint)}, "
            f"best_checkpoint={_show(self.best_checkpoint)})"
        )


@dataclass(frozen=True)
class Score:
    """One metric over the cross-validation runs (folds x seeds).

    Attributes:
        mean: The mean over the runs; None where no run could compute it (e.g. an undefined AUROC).
        std: The sample standard deviation over the runs (0.0 for a single run); None as ``mean``.
        n: How many runs the numbers rest on.
    """

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def from_summary(cls, stat: Mapping[str, Any]) -> Score:
        """A score from the reports' ``{"mean", "std", "n"}``."""
        mean, std = stat.get("mean"), stat.get("std")
        return cls(None if mean is None else float(mean), None if std is None else float(std), int(stat["n"]))

    def __str__(self) -> str:
        if self.mean is None or math.isnan(self.mean):
            return f"n/a (n={self.n})"
        return f"{self.mean:.3f} ± {self.std or 0.0:.3f} (n={self.n})"


def _is_stat(value: Any) -> bool:
    return isinstance(value, Mapping) and {"mean", "std", "n"} <= set(value)


def headline_scores(summary: Mapping[str, Any]) -> dict[str, Score]:
    """The summary's top-level metrics (the headline setting's) as :class:`Score` values; the nested
    per-level and per-fraction tables stay in the report."""
    return {name: Score.from_summary(stat) for name, stat in summary.items() if _is_stat(stat)}


@dataclass(frozen=True, repr=False)
class FinetuneResult(Mapping[str, Any]):
    """What :func:`ultrassl.finetune` did: the grouped k-fold evaluation's headline scores and files.

    It also reads as the dict the fine-tuning engines returned before (``result["summary"]``,
    ``result["paths"]``, ``result["n_frames"]`` or ``result["n_images"]``), so code written against
    :func:`~ultrassl.finetune.classify.finetune_classify` takes it unchanged.

    Attributes:
        task: ``classify`` or ``segment``.
        out_dir: The evaluation folder.
        scores: The headline scores by metric name: ``accuracy``, ``balanced_accuracy``, ``macro_f1``,
            ``auroc`` (classification, at the headline level and the largest label fraction) or
            ``dice``, ``iou`` (segmentation, at the largest label fraction).
        n_items: Labelled items evaluated: frames (classification) or images (segmentation).
        report: ``report.md``, the human-readable report.
        report_json: ``report.json``, every fold's numbers and the config.
        models: The folder of the kept fold models that :func:`ultrassl.evaluate` predicts with; None
            where none was kept.
        predictions: ``predictions.csv`` (classification: each test frame's fold, label and
            probabilities); None for segmentation.
        paths: Every file written, by name (``report_md``, ``report_json``, figures, ...).
        evaluation: The engine's own result (summary dict, paths, count).
    """

    task: str
    out_dir: Path
    scores: Mapping[str, Score]
    n_items: int
    report: Path
    report_json: Path
    models: Path | None
    predictions: Path | None
    paths: Mapping[str, Path]
    evaluation: EvaluationResult = field(compare=False)

    @property
    def summary(self) -> dict[str, Any]:
        """The engine's summary dict (every level and label fraction, as in ``report.json``)."""
        return self.evaluation.summary

    # the dict the engines returned before (``result["summary"]``): read through to it
    def __getitem__(self, key: str) -> Any:
        return self.evaluation[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.evaluation)

    def __len__(self) -> int:
        return len(self.evaluation)

    def __repr__(self) -> str:
        scores = ", ".join(f"{name}: {score}" for name, score in self.scores.items())
        return (
            f"FinetuneResult(task={self.task!r}, out_dir={_show(self.out_dir)}, n_items={self.n_items}, "
            f"scores={{{scores}}}, report={_show(self.report)}, models={_show(self.models)})"
        )


@dataclass(frozen=True, repr=False)
class EvaluateResult:
    """What :func:`ultrassl.evaluate` did: predictions for every usable row of the manifest, and
    metrics where its rows carry labels (classification) or masks (segmentation).

    Attributes:
        task: ``classify`` or ``segment`` (the task of the fine-tuning that saved the model).
        out_dir: The folder written.
        n_items: Items predicted: frames (classification) or images (segmentation).
        predictions: One row per file: ``predictions_videos.csv`` (classification: the file's mean
            probabilities and predicted class) or ``predictions.csv`` (segmentation: the predicted mask's
            path and foreground fraction).
        frame_predictions: ``predictions_frames.csv``, one row per frame (classification); None for
            segmentation.
        metrics_file: ``metrics.json``, the metrics and what was predicted and skipped.
        metrics: The metrics, or None when no row carries a label or mask. Classification:
            ``{"frame": {...}, "video": {...}}`` (``accuracy``, ``balanced_accuracy``, ``macro_f1``,
            ...); segmentation: ``{"dice": ..., "iou": ..., ...}``.
        paths: Every file written, by name.
    """

    task: str
    out_dir: Path
    n_items: int
    predictions: Path
    frame_predictions: Path | None
    metrics_file: Path
    metrics: Mapping[str, Any] | None
    paths: Mapping[str, Path]

    def _headline(self) -> dict[str, Any]:
        """The few numbers a repr shows: accuracy per frame and per file (classification), or Dice and
        IoU (segmentation); empty without metrics."""
        m = self.metrics or {}
        if self.task == "classify":
            return {
                f"{level}_accuracy": m[level].get("accuracy") for level in ("frame", "video") if level in m
            }
        return {k: m[k] for k in ("dice", "iou") if k in m}

    def __repr__(self) -> str:
        numbers = ", ".join(
            f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v!r}" for k, v in self._headline().items()
        )
        shown = f"{{{numbers}}}" if self.metrics else "None"
        return (
            f"EvaluateResult(task={self.task!r}, out_dir={_show(self.out_dir)}, n_items={self.n_items}, "
            f"metrics={shown}, predictions={_show(self.predictions)})"
        )
