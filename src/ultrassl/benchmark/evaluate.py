"""One (task, encoder, fold, seed) evaluation: frozen linear probe (also on few-label subsets of the
training groups) and k-NN for classification, optionally classification fine-tuning, and a fine-tuned
segmentation head for segmentation.

The frozen probes freeze the encoder, so its features are computed once per encoder and reused by every
fold, seed and label fraction; a seed then changes what is cheap to repeat: the validation groups carved
from the fold's training groups (which pick the probe's regularisation and k), the few-label subsets and,
for a random encoder, its initialisation. Fine-tuning (classification and segmentation) trains the
encoder through fine-tuning's engine (:class:`~ultrassl.finetune.classify.Classifier`,
:class:`~ultrassl.finetune.segment.Segmenter`) on the same folds, journalled in its own folder so a
killed run resumes inside the fold too. Frames, images and masks are decoded once per task and input size.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ultrassl.benchmark.protocols import fraction_protocol
from ultrassl.benchmark.tasks import PreparedTask
from ultrassl.data.frameset import FrameSet, load_frameset
from ultrassl.data.group_folds import Fold, folds_from_assignment, group_majority_labels, subsample_groups
from ultrassl.data.manifest import read_manifest
from ultrassl.feature_scores import balanced_accuracy, fit_linear_probe, knn_votes
from ultrassl.finetune.backbones import Backbone
from ultrassl.finetune.options import ClassifyConfig, SegmentConfig
from ultrassl.finetune.splits import group_indices
from ultrassl.metrics import classification_metrics
from ultrassl.models.pooling import pooled_features
from ultrassl.transforms.model_input import to_tensor_batch

__all__ = ["CLASSIFY_METRICS", "SEGMENT_METRICS", "Evaluator", "ProbeSettings", "fraction_protocol"]

CLASSIFY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
SEGMENT_METRICS = ("dice", "iou")


@dataclass(frozen=True)
class ProbeSettings:
    """The frozen probes' choices (each picked on the fold's validation groups by balanced accuracy),
    the few-label fractions and the fine-tunings' budgets."""

    linear_c: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    knn_k: tuple[int, ...] = (10, 20)
    seg_epochs: int = 10
    seg_batch: int = 16
    device: str = "auto"
    #: the few-label curve of the linear probe: fractions of each class's training groups (1 is "linear")
    label_fractions: tuple[float, ...] = ()
    #: classification fine-tuning (:meth:`Evaluator.classify_finetune`): ClassifyConfig's mode and epochs
    ft_mode: str = "full"
    ft_epochs: int = 15


def finetune_revision(entry: dict[str, Any]) -> int | None:
    """The fine-tuning revision (:data:`~ultrassl.finetune.classify.FINETUNE_REVISION`) of a
    classification entry's "finetune" result (1 when it records none); None when the entry has none
    (segmentation's "finetune" has no revision: its training did not change)."""
    tuned = (entry.get("metrics") or {}).get("finetune")
    if not tuned or "balanced_accuracy" not in (entry.get("metric_names") or ()):
        return None
    return int(tuned.get("revision", 1))


def finetune_outdated(entry: dict[str, Any]) -> bool:
    """Whether a classification entry's "finetune" result comes from fine-tuning code of an earlier
    revision: the benchmark measures it again, and a page of such results says so."""
    from ultrassl.finetune.classify import FINETUNE_REVISION

    revision = finetune_revision(entry)
    return revision is not None and revision < FINETUNE_REVISION


class Evaluator:
    """Evaluates encoders on one prepared task; holds the task's decoded data and the encoders' features."""

    def __init__(self, task: PreparedTask, settings: ProbeSettings):
        self.task, self.settings = task, settings
        self._framesets: dict[Any, FrameSet] = {}
        self._segdata: dict[Any, Any] = {}
        self._features: dict[str, np.ndarray] = {}
        self._folds: dict[int, list[Fold]] = {task.seed: task.folds}
        self._group_label: dict[str, Any] | None = None

    # -- folds per seed ------------------------------------------------------------------------------

    def folds(self, seed: int) -> list[Fold]:
        """The task's test folds, with validation groups carved by ``seed`` (the task's own seed gives
        the folds file's)."""
        if seed not in self._folds:
            rows = [
                r for r in self.task.rows if (r.label if self.task.spec.kind == "classify" else r.mask_path)
            ]
            labels = [r.label or "" for r in rows] if self.task.spec.kind == "classify" else [""] * len(rows)
            test_of = {g: k for k, f in enumerate(self.task.folds) for g in f.test_groups}
            self._folds[seed] = folds_from_assignment([r.group_id for r in rows], labels, test_of, seed=seed)
        return self._folds[seed]

    # -- classification ------------------------------------------------------------------------------

    def frameset(self, backbone: Backbone) -> FrameSet:
        size = tuple(backbone.spec.img_size)
        key = (backbone.spec.in_chans, size)
        if key not in self._framesets:
            cfg = ClassifyConfig()  # POCUS' sampling: 3 Hz, at most 30 frames a video; the scan-area crop
            self._framesets[key] = load_frameset(
                read_manifest(self.task.manifest), cfg, backbone.spec.in_chans, progress=False, size=size
            )
        return self._framesets[key]

    @torch.no_grad()
    def features(self, backbone: Backbone) -> np.ndarray:
        """Pooled frozen features of every labelled frame (cached by the weights' fingerprint)."""
        if backbone.fingerprint not in self._features:
            data = self.frameset(backbone)
            from ultrassl.distributed import select_device

            device = select_device(self.settings.device)
            enc = backbone.encoder.to(device).eval()
            out = []
            for start in range(0, len(data.labels), 64):
                idx = np.arange(start, min(start + 64, len(data.labels)))
                x = to_tensor_batch(
                    data.frames(idx, "features"),
                    tuple(backbone.spec.img_size),
                    backbone.spec.in_chans,
                    backbone.mean,
                    backbone.std,
                )
                out.append(pooled_features(enc, x.to(device)).float().cpu().numpy())
            backbone.encoder.cpu()
            while len(self._features) >= 4:  # a few encoders' features at a time (one per seed of scratch)
                self._features.pop(next(iter(self._features)))
            self._features[backbone.fingerprint] = np.concatenate(out)
        return self._features[backbone.fingerprint]

    def few_label_groups(self, fold: int, seed: int) -> dict[float, list[str]]:
        """Fraction -> the training groups of fold ``fold`` (seed ``seed``'s carve) the few-label probe
        trains on: whole groups, at least one per class, one seeded permutation per class whose prefixes
        are taken (:func:`~ultrassl.data.group_folds.subsample_groups`, as ``finetune --label-fractions``
        draws them), so for one seed each subset lies inside the larger ones."""
        if self._group_label is None:
            rows = [r for r in self.task.rows if r.label]
            self._group_label = group_majority_labels([r.group_id for r in rows], [r.label for r in rows])
        train = [g for g in self.folds(seed)[fold].train_groups if g in self._group_label]
        return {
            fr: subsample_groups(train, self._group_label, fr, seed)
            for fr in sorted(set(self.settings.label_fractions))
            if fr < 1
        }

    def classify(self, backbone: Backbone, fold: int, seed: int) -> dict[str, dict[str, Any]]:
        """``{"linear", "knn", "linear@<fraction>" ...: metrics}`` on fold ``fold``'s test groups (frame
        level); each few-label probe picks its C on the same validation groups as "linear"."""
        data = self.frameset(backbone)
        x = self.features(backbone)
        f = self.folds(seed)[fold]
        tr, va, te = (group_indices(data.groups, g) for g in (f.train_groups, f.val_groups, f.test_groups))
        y = data.labels
        names = data.class_names
        n = len(names)
        sizes = {"n_val": len(va), "n_test": len(te)}
        out: dict[str, dict[str, Any]] = {"linear": self._linear(x, y, tr, va, te, names, seed)}
        out["linear"].update(n_train=len(tr), **sizes)
        for fr, groups in self.few_label_groups(fold, seed).items():
            sub = group_indices(data.groups, groups)
            m = self._linear(x, y, sub, va, te, names, seed)
            out[fraction_protocol(fr)] = m | {"n_train": len(sub), "n_train_groups": len(groups), **sizes}

        best_k: tuple[float, int] | None = None
        for k in self.settings.knn_k:
            s = balanced_accuracy(y[va], knn_votes(x[tr], y[tr], x[va], k, n).argmax(1))
            if best_k is None or s > best_k[0]:
                best_k = (s, k)
        score, k = best_k
        votes = knn_votes(x[tr], y[tr], x[te], k, n)
        out["knn"] = _metrics(y[te], votes, names) | {"k": k, "val_balanced_accuracy": score}
        out["knn"].update(n_train=len(tr), **sizes)
        return out

    def _linear(
        self,
        x: np.ndarray,
        y: np.ndarray,
        tr: np.ndarray,
        va: np.ndarray,
        te: np.ndarray,
        names: list[str],
        seed: int,
    ) -> dict[str, Any]:
        """The linear probe fitted on ``tr`` with its C picked on ``va``, measured on ``te``."""
        best: tuple[float, Any, Any, float] | None = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence notes of small probes
            for c in self.settings.linear_c:
                scaler, clf = fit_linear_probe(x[tr], y[tr], c, max_iter=3000, seed=seed)
                score = balanced_accuracy(y[va], clf.predict(scaler.transform(x[va])))
                if best is None or score > best[0]:
                    best = (score, scaler, clf, c)
        score, scaler, clf, c = best
        prob = np.zeros((len(te), len(names)))  # a class absent from a few-label subset gets 0
        prob[:, clf.classes_] = clf.predict_proba(scaler.transform(x[te]))
        return _metrics(y[te], prob, names) | {"c": c, "val_balanced_accuracy": score}

    def classify_finetune(
        self, backbone: Backbone, fold: int, seed: int, out_dir: Path
    ) -> dict[str, dict[str, Any]]:
        """``{"finetune": metrics}``: the encoder and a linear head fine-tuned (``ClassifyConfig.mode``
        ``ft_mode``) on the fold's training groups, its epoch selected on the validation groups of seed
        ``seed``, measured on the same test frames as the frozen probes. Fine-tuning trains a copy of the
        encoder (:func:`~ultrassl.finetune.backbones.classification_model`), so ``backbone`` stays as
        loaded."""
        from ultrassl.finetune.classify import FINETUNE_REVISION, Classifier

        cfg = ClassifyConfig(
            mode=self.settings.ft_mode,
            folds_file=str(self._folds_file(out_dir, seed)),
            only_folds=(fold,),
            seeds=(seed,),
            epochs=self.settings.ft_epochs,
            device=self.settings.device,
        )
        out = Classifier(backbone, self.frameset(backbone), cfg, progress=False).run(out_dir)
        r = next(r for r in out.results if r.level == "frame")  # frame level, as the frozen probes
        return {
            "finetune": {k: r.metrics[k] for k in CLASSIFY_METRICS}
            | {
                "val_balanced_accuracy": r.val_score,
                "best_epoch": r.best_epoch,
                "n_train": r.n_train,
                "n_val": r.n_val,
                "n_test": r.n_test,
                "revision": FINETUNE_REVISION,
            }
        }

    def _folds_file(self, out_dir: Path, seed: int) -> Path:
        """The folds of seed ``seed`` as fine-tuning's engine reads them (written once per folder)."""
        from ultrassl.data.group_folds import write_folds

        folds_file = out_dir / "benchmark_folds.json"
        if not folds_file.exists():
            out_dir.mkdir(parents=True, exist_ok=True)
            write_folds(folds_file, self.folds(seed), meta={"seed": seed})
        return folds_file

    # -- segmentation --------------------------------------------------------------------------------

    def segment(self, backbone: Backbone, fold: int, seed: int, out_dir: Path) -> dict[str, dict[str, Any]]:
        """``{"finetune": {"dice", "iou", ...}}``: the encoder and the architecture's default head
        fine-tuned on the fold's training groups, selected on its validation groups."""
        from ultrassl.data.segdata import load_segdata
        from ultrassl.finetune.segment import Segmenter

        s = backbone.spec
        key = (tuple(s.img_size), s.in_chans, tuple(backbone.mean), tuple(backbone.std))
        if key not in self._segdata:
            self._segdata[key] = load_segdata(
                read_manifest(self.task.manifest),
                tuple(s.img_size),
                s.in_chans,
                backbone.mean,
                backbone.std,
                progress=False,
            )
        cfg = SegmentConfig(
            folds_file=str(self._folds_file(out_dir, seed)),
            only_folds=(fold,),
            seeds=(seed,),
            epochs=self.settings.seg_epochs,
            batch_size=self.settings.seg_batch,
            n_overlays=0,
            device=self.settings.device,
        )
        result = Segmenter(backbone, self._segdata[key], cfg, progress=False).run(out_dir).results[0]
        m = result.metrics
        return {
            "finetune": {
                "dice": m["dice"],
                "iou": m["iou"],
                "best_epoch": result.best_epoch,
                "n_train": result.n_train,
                "n_val": result.n_val,
                "n_test": result.n_test,
            }
        }


def _metrics(y: np.ndarray, prob: np.ndarray, names: list[str]) -> dict[str, Any]:
    m = classification_metrics(y.tolist(), prob, names)
    return {k: m[k] for k in CLASSIFY_METRICS}
