"""Classification downstream: linear probe, partial and full fine-tuning under grouped k-fold.

Protocol (leakage-free by construction):
- frames are sampled from each video at ``frame_fps`` (3 Hz, at most 30 per video: POCUS' convention);
  stills are 1-frame items; every frame carries its manifest row's ``group_id`` (patient / video);
- folds are made of whole groups (StratifiedGroupKFold); validation is carved by group from the training
  part only; model selection and early stopping look at validation alone; each fold's test frames are
  read once, after selection (:attr:`Phase.TEST`);
- predictions are reported per frame and per video (mean probability over the video's frames).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ultrassl.config import check
from ultrassl.data.frameset import FrameSet, load_frameset
from ultrassl.data.group_folds import group_majority_labels
from ultrassl.data.manifest import read_manifest
from ultrassl.distributed import select_device
from ultrassl.feature_scores import balanced_accuracy, fit_linear_probe
from ultrassl.finetune.backbones import (
    Backbone,
    classification_model,
    resolve_backbone,
    trainable_tail,
    with_image_size,
)
from ultrassl.finetune.fit import FitSettings, fit
from ultrassl.finetune.journal import RunJournal, evaluation_fingerprint, file_identity, results_config
from ultrassl.finetune.kfold import EvaluationResult, Fitted, Phase, run_kfold
from ultrassl.finetune.options import ClassifyConfig
from ultrassl.finetune.report import FoldResult, build_summary, write_classification_report
from ultrassl.finetune.saved import linear_probe_head, write_card
from ultrassl.finetune.splits import Fold, IndexedRun
from ultrassl.jsonable import jsonable
from ultrassl.metrics import classification_metrics, summarize
from ultrassl.models.pooling import pooled_features
from ultrassl.models.vit import EncoderSpec
from ultrassl.transforms.finetune import apply_augment, draw_augment
from ultrassl.transforms.model_input import to_tensor_batch

# ----------------------------------------------------------------------------------------------------
# the engine

#: the revision of fine-tuning's training (``--mode partial/full``): part of the journal's fingerprint and
#: recorded with the benchmark's "finetune" results, so that results of code that trained differently
#: are not read back as current. 2: ``--mode full`` applies its layer-wise lr decay (revision 1 trained
#: every layer at the head's lr, ignoring it)
FINETUNE_REVISION = 2


@dataclass
class RunResult:
    fold: int
    seed: int
    label_fraction: float
    level: str
    metrics: dict
    n_train: int
    n_val: int
    n_test: int
    best_epoch: int | None = None
    val_score: float | None = None
    #: what the run trained on, per class: ``{"groups": {class: n}, "frames": {class: n}}`` (a group
    #: counts for its majority class); None in journals written before it was recorded
    train_counts: dict | None = None


@dataclass
class ClassifyOutput:
    results: list[RunResult] = field(default_factory=list)
    predictions: list[dict] = field(default_factory=list)
    folds: list[Fold] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)


class Classifier:
    """Runs one classification evaluation (all folds x seeds x label fractions)."""

    def __init__(self, backbone: Backbone, data: FrameSet, cfg: ClassifyConfig, progress: bool = False):
        self.cfg = check(cfg)
        self.progress = progress
        self.backbone = with_image_size(backbone, cfg.img_size) if cfg.img_size else backbone
        self.data = data
        self.size = tuple(self.backbone.spec.img_size)
        self.in_chans = self.backbone.spec.in_chans
        self.device = select_device(cfg.device)
        self._features: dict[int, np.ndarray] = {}
        #: the fold being evaluated (for access-recording data sets in tests)
        self.current_fold: int | None = None

    # -- data helpers --------------------------------------------------------------------------------

    def _tensor(self, index: np.ndarray, phase: Phase) -> torch.Tensor:
        frames = self.data.frames(index, phase)
        return to_tensor_batch(frames, self.size, self.in_chans, self.backbone.mean, self.backbone.std)

    @torch.no_grad()
    def features(self, index: np.ndarray, phase: Phase) -> np.ndarray:
        """Frozen-encoder features, computed once per frame (cached) and only when first asked for."""
        todo = np.array([i for i in index if i not in self._features], dtype=int)
        if len(todo):
            enc = self.backbone.encoder.to(self.device).eval()
            for start in range(0, len(todo), 64):
                chunk = todo[start : start + 64]
                feats = pooled_features(enc, self._tensor(chunk, phase).to(self.device)).float().cpu().numpy()
                for i, f in zip(chunk, feats):
                    self._features[int(i)] = f
        return np.stack([self._features[int(i)] for i in index])

    # -- protocol ------------------------------------------------------------------------------------

    def run(self, out_dir: Path | None = None) -> ClassifyOutput:
        """Every planned run; with ``out_dir``, finished runs are journalled and read back on a re-run."""
        self.out = ClassifyOutput(class_names=self.data.class_names)
        self.out.folds = run_kfold(self, self.cfg.indexed_runs, out_dir, progress=self.progress)
        return self.out

    # -- what the k-fold engine asks of the task (finetune.kfold.KFoldTask) -----------------------------

    def plan_inputs(self) -> tuple[list[str], list[int]]:
        return self.data.groups, self.data.labels.tolist()

    def start(self, journal: RunJournal) -> None:
        if self.cfg.mode == "linear":
            self._features.update(journal.load_arrays("features"))

    def read_back(self, entry: Mapping[str, Any]) -> None:
        self.out.results += [RunResult(**r) for r in entry["results"]]
        self.out.predictions += entry["predictions"]

    def fit(self, train: np.ndarray, val: np.ndarray, seed: int) -> Fitted:
        if self.cfg.mode == "linear":
            return self._fit_linear(train, val, seed)
        return self._fit_finetune(train, val, seed)

    def test(self, fitted: Fitted, planned: IndexedRun, out_dir: Path | None) -> dict[str, Any]:
        run, tr, va, te = planned.run, planned.train, planned.val, planned.test
        prob = fitted.predict(te)  # the one and only look at this fold's test frames
        n_results, n_predictions = len(self.out.results), len(self.out.predictions)
        self._record(
            self.out,
            run.fold,
            run.seed,
            run.label_fraction,
            tr,
            va,
            te,
            prob,
            fitted.best_epoch,
            fitted.val_score,
        )
        results = [asdict(r) for r in self.out.results[n_results:]]
        return {"results": results, "predictions": self.out.predictions[n_predictions:]}

    def after_run(self, journal: RunJournal) -> None:
        if self.cfg.mode == "linear":
            journal.save_arrays("features", self._features)

    def describe(self, entry: Mapping[str, Any]) -> str:
        frame = entry["results"][0]
        m, score = frame["metrics"], frame["val_score"]
        val = "-" if score is None else f"{score:.3f}"
        return f"test balanced accuracy {m['balanced_accuracy']:.3f} per frame (val {val})"

    def fingerprint(self) -> str:
        """What decides this evaluation's results: config, encoder weights, the labelled frames."""
        data = (
            self.data.class_names,
            self.data.labels.tolist(),
            self.data.groups,
            self.data.row_ids.tolist(),
            file_identity([str(r.path) for r in self.data.rows]),
        )
        trained = () if self.cfg.mode == "linear" else (FINETUNE_REVISION,)
        return evaluation_fingerprint(
            "classify", results_config(self.cfg), self.backbone.fingerprint, data, *trained
        )

    def write_card(self, out_dir: Path, folds: list[int]) -> None:
        """What ``ultrassl evaluate`` needs to rebuild the fold models and feed them like here."""
        cfg = self.cfg
        write_card(
            out_dir,
            "classify",
            self.backbone.spec,
            folds,
            mode=cfg.mode,
            class_names=self.data.class_names,
            mean=self.backbone.mean,
            std=self.backbone.std,
            frame_fps=cfg.frame_fps,
            max_frames_per_video=cfg.max_frames_per_video,
            scan_area=cfg.scan_area,
            weights=self.backbone.source,
        )

    def _record(self, out, k, seed, fraction, tr, va, te, prob, best_epoch, val_score) -> None:
        names = self.data.class_names
        y = self.data.labels[te]
        counts = self._train_counts(tr)
        frame_metrics = classification_metrics(y.tolist(), prob, names)
        out.results.append(
            RunResult(
                k,
                seed,
                fraction,
                "frame",
                frame_metrics,
                len(tr),
                len(va),
                len(te),
                best_epoch,
                val_score,
                counts,
            )
        )
        rows = self.data.row_ids[te]
        video_ids = sorted(set(rows.tolist()))
        vprob = np.stack([prob[rows == r].mean(axis=0) for r in video_ids])
        vy = np.array([y[rows == r][0] for r in video_ids])
        video_metrics = classification_metrics(vy.tolist(), vprob, names)
        out.results.append(
            RunResult(
                k,
                seed,
                fraction,
                "video",
                video_metrics,
                len(tr),
                len(va),
                len(video_ids),
                best_epoch,
                val_score,
                counts,
            )
        )
        for j, i in enumerate(te):
            row = self.data.rows[self.data.row_ids[i]]
            entry = {
                "fold": k,
                "seed": seed,
                "label_fraction": fraction,
                "path": str(row.path),
                "group_id": row.group_id,
                "frame_index": self.data.cache.frame_index[i],
                "label": names[int(y[j])],
                "pred": names[int(prob[j].argmax())],
            }
            entry.update({f"prob_{c}": float(p) for c, p in zip(names, prob[j])})
            out.predictions.append(entry)

    def _train_counts(self, tr: np.ndarray) -> dict[str, dict[str, int]]:
        """Training groups (by their majority class) and frames per class of one run."""
        names = self.data.class_names
        labels = self.data.labels[tr].tolist()
        group_label = group_majority_labels([self.data.groups[i] for i in tr], labels)
        groups = Counter(group_label.values())
        frames = Counter(labels)
        return {
            "groups": {c: int(groups.get(i, 0)) for i, c in enumerate(names)},
            "frames": {c: int(frames.get(i, 0)) for i, c in enumerate(names)},
        }

    # -- linear probe --------------------------------------------------------------------------------

    def _fit_linear(self, tr: np.ndarray, va: np.ndarray, seed: int) -> Fitted:
        xtr, xva = self.features(tr, Phase.TRAIN), self.features(va, Phase.VALIDATE)
        ytr, yva = self.data.labels[tr], self.data.labels[va]
        best = None
        for c in self.cfg.linear_c:
            scaler, clf = fit_linear_probe(xtr, ytr, c, max_iter=3000, seed=seed)
            # quiet when a small validation split misses a class
            score = balanced_accuracy(yva, clf.predict(scaler.transform(xva)))
            if best is None or score > best[0]:
                best = (score, scaler, clf)
        score, scaler, clf = best
        n_classes = len(self.data.class_names)

        def predict(te: np.ndarray) -> np.ndarray:
            p = clf.predict_proba(scaler.transform(self.features(te, Phase.TEST)))
            full = np.zeros((len(te), n_classes))
            full[:, clf.classes_] = p  # classes absent from a few-label training set get 0
            return full

        model = classification_model(self.backbone, n_classes)
        linear_probe_head(
            model.get_classifier(), clf.coef_, clf.intercept_, clf.classes_, scaler.mean_, scaler.scale_
        )
        return Fitted(model.eval(), None, float(score), predict)

    # -- fine-tuning ---------------------------------------------------------------------------------

    def _make_model(self) -> nn.Module:
        import timm.optim  # noqa: F401  (imported for create_optimizer_v2 below)

        n_classes = len(self.data.class_names)
        drop_path = self.cfg.drop_path if self.cfg.mode == "full" else 0.0
        model = classification_model(self.backbone, n_classes, drop_path)
        if self.cfg.mode == "partial":
            for p in model.parameters():
                p.requires_grad_(False)
            keep = [*trainable_tail(model, self.cfg.train_blocks), model.get_classifier()]
            for m in keep:
                for p in m.parameters():
                    p.requires_grad_(True)
        return model.to(self.device)

    def _fit_finetune(self, tr: np.ndarray, va: np.ndarray, seed: int) -> Fitted:
        from timm.optim import create_optimizer_v2

        cfg = self.cfg
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = self._make_model()
        layer_decay = cfg.layer_decay if cfg.mode == "full" else None
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = (
            create_optimizer_v2(
                model, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=layer_decay
            )
            if cfg.mode == "full"
            else torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        )
        n_classes = len(self.data.class_names)
        ytr = self.data.labels[tr]
        weight = None
        if cfg.class_weighting:
            counts = np.bincount(ytr, minlength=n_classes).astype(float)
            weight = torch.tensor(
                np.where(counts > 0, len(ytr) / (n_classes * np.maximum(counts, 1)), 0.0), dtype=torch.float32
            ).to(self.device)
        mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            from timm.data import Mixup

            mixup = Mixup(
                mixup_alpha=cfg.mixup,
                cutmix_alpha=cfg.cutmix,
                label_smoothing=cfg.label_smoothing,
                num_classes=n_classes,
            )
        xva_cache = self._tensor(va, Phase.VALIDATE)

        def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            x, y = (t.to(self.device, non_blocking=True) for t in batch)
            if mixup is not None and len(y) % 2 == 0:
                x, soft = mixup(x, y)
                return torch.sum(-soft * F.log_softmax(model(x).float(), dim=-1), dim=-1).mean()
            return F.cross_entropy(model(x).float(), y, weight=weight, label_smoothing=cfg.label_smoothing)

        def validate(model: nn.Module) -> tuple[float, float]:
            prob_va = self._predict(model, xva_cache)
            yva = self.data.labels[va]
            score = balanced_accuracy(yva, prob_va.argmax(1))
            val_loss = float(-np.log(np.clip(prob_va[np.arange(len(va)), yva], 1e-12, None)).mean())
            return score, -val_loss

        settings = FitSettings.of(cfg)
        what = f"classification fine-tuning, fold {self.current_fold}"
        source = AugmentedFrames(
            self.data, self.size, self.in_chans, self.backbone.mean, self.backbone.std, cfg
        )
        done = fit(
            model,
            optimizer,
            tr,
            loss_fn,
            validate,
            settings,
            gen,
            self.device,
            what=what,
            source=source,
            workers=cfg.workers,
        )

        def predict(te: np.ndarray) -> np.ndarray:
            return self._predict(model, self._tensor(te, Phase.TEST))

        return Fitted(model.eval(), done.epoch, done.score, predict)

    @torch.no_grad()
    def _predict(self, model: nn.Module, x: torch.Tensor) -> np.ndarray:
        model.eval()
        out = [
            torch.softmax(model(x[i : i + 128].to(self.device)).float(), -1).cpu()
            for i in range(0, len(x), 128)
        ]
        return torch.cat(out).numpy()


# ----------------------------------------------------------------------------------------------------
# the command


class AugmentedFrames:
    """Training batches of classification (a :class:`~ultrassl.finetune.fit.BatchSource`): the frames
    at the encoder's size, normalised, augmented, and their labels. Holds only the data, so it is
    cheap to send to DataLoader workers."""

    def __init__(
        self,
        data: FrameSet,
        size: tuple[int, int],
        in_chans: int,
        mean: Sequence[float],
        std: Sequence[float],
        cfg: ClassifyConfig,
    ):
        self.data, self.size, self.in_chans, self.mean, self.std = data, size, in_chans, mean, std
        self.scale, self.intensity, self.gamma = cfg.aug_scale, cfg.aug_intensity, cfg.aug_gamma

    def draw(self, items: np.ndarray, generator: torch.Generator) -> list:
        return draw_augment(len(items), self.size, generator, self.scale, self.intensity, self.gamma)

    def make(self, items: np.ndarray, drawn: list) -> tuple[torch.Tensor, torch.Tensor]:
        frames = self.data.frames(items, Phase.TRAIN)
        x = to_tensor_batch(frames, self.size, self.in_chans, self.mean, self.std)
        return apply_augment(x, drawn), torch.as_tensor(self.data.labels[items])


#: ``--mode`` in words, for the report's title
MODE_WORDS = {"linear": "linear probe", "partial": "partial fine-tuning", "full": "full fine-tuning"}


def selection_text(cfg: ClassifyConfig) -> str:
    """How each fold's model is selected, for the report's "How to read this" block."""
    where = "on the validation split of the fold's training groups (never on its test fold)"
    if cfg.mode == "linear":
        cs = ", ".join(f"{c:g}" for c in cfg.linear_c)
        return f"the linear probe's regularisation C (one of {cs}) with the best balanced accuracy {where}."
    return (
        f"the epoch with the best frame balanced accuracy {where}, ties broken by the lower validation loss; "
        f"training stops after {cfg.patience} epochs without a better one."
    )


def finetune_classify(
    weights: str | Path,
    data: str | Path,
    out_dir: str | Path,
    cfg: ClassifyConfig | None = None,
    *,
    scratch_like: str | Path | None = None,
    scratch_spec: EncoderSpec | None = None,
    progress: bool = True,
    frameset: FrameSet | None = None,
) -> EvaluationResult:
    """Evaluate ``weights`` on the labelled rows of ``data``; writes folds, report and predictions.

    ``frameset`` (from :func:`load_frameset` on ``data`` with this config) skips decoding, for callers
    that evaluate many encoders on the same data."""
    cfg = check(cfg or ClassifyConfig())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone = resolve_backbone(weights, scratch_spec=scratch_spec, scratch_like=scratch_like)
    if frameset is None:
        size = tuple(cfg.img_size or backbone.spec.img_size)
        frameset = load_frameset(
            read_manifest(data), cfg, backbone.spec.in_chans, progress=progress, size=size
        )
    result = Classifier(backbone, frameset, cfg, progress=progress).run(out)
    fold_results = [FoldResult(**asdict(r)) for r in result.results]
    summary = build_summary(fold_results, summarize)
    config = {
        "weights": str(weights),
        "data": str(data),
        **jsonable(asdict(cfg)),
        "encoder": jsonable(asdict(backbone.spec)),
    }
    paths = write_classification_report(
        out,
        results=fold_results,
        summary=summary,
        class_names=result.class_names,
        config=config,
        predictions=result.predictions,
        title=f"Classification by {MODE_WORDS.get(cfg.mode, cfg.mode)} of {weights}",
        selection=selection_text(cfg),
    )
    return EvaluationResult("classify", summary, paths, len(frameset.labels))
