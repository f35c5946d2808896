"""Segmentation downstream: fine-tune a ViT + segmentation head under grouped k-fold, report Dice / IoU.

Protocol (the same as classification, leakage-free by construction):
- the items are the manifest's still images with a mask (``mask_path``); foreground = mask > 0, or the
  mask values listed in ``foreground_ids`` (label-id masks);
- folds are made of whole groups (patients), stratified by "the group has foreground"; validation is
  carved by group from the training part only; early stopping looks at validation Dice alone; each
  fold's test images are read once, after selection (:attr:`Phase.TEST`);
- test Dice / IoU are computed per image at the mask's original resolution (logits upsampled), with an
  explicit policy for images whose prediction and mask are both empty (``empty_policy``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ultrassl.config import check
from ultrassl.data.manifest import read_manifest
from ultrassl.data.segdata import SegData, load_segdata, read_mask
from ultrassl.distributed import select_device
from ultrassl.errors import ConfigError
from ultrassl.finetune.backbones import Backbone, resolve_backbone, with_image_size
from ultrassl.finetune.fit import FitSettings, fit
from ultrassl.finetune.journal import RunJournal, evaluation_fingerprint, file_identity, results_config
from ultrassl.finetune.kfold import EvaluationResult, Fitted, Phase, run_kfold
from ultrassl.finetune.options import SegmentConfig
from ultrassl.finetune.report.segmentation import (
    SegRunResult,
    fmt_score,
    save_overlay,
    write_segmentation_report,
)
from ultrassl.finetune.saved import write_card
from ultrassl.finetune.splits import Fold, IndexedRun
from ultrassl.metrics import segmentation_metrics
from ultrassl.models.convvit import ConvViT
from ultrassl.models.seg_heads import SegModel, build_seg_head
from ultrassl.models.vit import EncoderSpec, create_encoder, is_vit
from ultrassl.transforms.finetune import apply_pair, augment_pair, draw_crop_flip

__all__ = [
    "SegData",
    "SegmentConfig",
    "Segmenter",
    "augment_pair",
    "dice_ce_loss",
    "finetune_segment",
    "load_segdata",
    "read_mask",
    "save_overlay",
]


# ----------------------------------------------------------------------------------------------------
# data


def dice_ce_loss(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, fg_weight: float = 1.0
) -> torch.Tensor:
    """Cross-entropy (foreground pixels weighted ``fg_weight``) + soft Dice of the foreground probability
    (pooled over the batch, so an image with an empty mask adds false-positive mass instead of an
    undefined ratio)."""
    weight = None
    if fg_weight != 1.0:  # filled on the device (a tensor copied from the host would wait for it)
        weight = torch.full((2,), float(fg_weight), device=logits.device, dtype=logits.dtype)
        weight[0] = 1.0
    ce = F.cross_entropy(logits, target.long(), weight=weight)
    prob = torch.softmax(logits.float(), dim=1)[:, 1:].sum(1)
    fg = (target > 0).float()
    dice = (2 * (prob * fg).sum() + smooth) / (prob.sum() + fg.sum() + smooth)
    return ce + (1 - dice)


# ----------------------------------------------------------------------------------------------------
# the engine


@dataclass
class SegmentOutput:
    results: list[SegRunResult] = field(default_factory=list)
    folds: list[Fold] = field(default_factory=list)
    overlays: list[Path] = field(default_factory=list)


class AugmentedPairs:
    """Training batches of segmentation (a :class:`~ultrassl.finetune.fit.BatchSource`): images and
    masks with the same random crop and flip."""

    def __init__(self, data: SegData, size: tuple[int, int], crop_scale: tuple[float, float]):
        self.data, self.size, self.crop_scale = data, size, crop_scale

    def draw(self, items: np.ndarray, generator: torch.Generator) -> list:
        return draw_crop_flip(len(items), self.size, generator, self.crop_scale)

    def make(self, items: np.ndarray, drawn: list) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data.batch(items, Phase.TRAIN)
        return apply_pair(x, y, drawn)


class Segmenter:
    """Runs one segmentation evaluation (all folds x seeds x label fractions)."""

    def __init__(self, backbone: Backbone, data: SegData, cfg: SegmentConfig, progress: bool = False):
        cfg.check()
        self.progress = progress
        self.cfg = cfg
        self.backbone = with_image_size(backbone, cfg.img_size) if cfg.img_size else backbone
        self.data = data
        self.size = tuple(self.backbone.spec.img_size)
        if tuple(data.masks.shape[-2:]) != self.size:
            raise ConfigError(
                f"data was loaded at {tuple(data.masks.shape[-2:])}, the encoder takes {self.size}"
            )
        self.device = select_device(cfg.device)
        #: the fold being evaluated (for access-recording data sets in tests)
        self.current_fold: int | None = None

    def run(self, out_dir: Path | None = None) -> SegmentOutput:
        """Every planned run; with ``out_dir``, finished runs are journalled and read back on a re-run."""
        self.out = SegmentOutput()
        self.out.folds = run_kfold(self, self.cfg.indexed_runs, out_dir, progress=self.progress)
        return self.out

    # -- what the k-fold engine asks of the task (finetune.kfold.KFoldTask) -----------------------------

    def plan_inputs(self) -> tuple[list[str], list[int]]:
        return self.data.groups, self.data.has_foreground

    def start(self, journal: RunJournal) -> None:
        pass

    def read_back(self, entry: Mapping[str, Any]) -> None:
        self.out.results.append(SegRunResult(**entry["result"]))
        self.out.overlays += [Path(p) for p in entry["overlays"]]

    def fit(self, train: np.ndarray, val: np.ndarray, seed: int) -> Fitted:
        model, best_epoch, val_dice = self._fit(train, val, seed)
        return Fitted(model, best_epoch, val_dice)

    def test(self, fitted: Fitted, planned: IndexedRun, out_dir: Path | None) -> dict[str, Any]:
        run, tr, va, te = planned.run, planned.train, planned.val, planned.test
        logits = self._predict(fitted.model, self.data.batch(te, Phase.TEST)[0])  # the one look at test
        preds = [self._full_res_pred(lg, self.data.full_masks[i]) for lg, i in zip(logits, te)]
        targets = [self.data.full_masks[i] for i in te]
        metrics = segmentation_metrics(preds, targets, empty=self.cfg.empty_policy)
        # for the report's warnings: a model that predicts no foreground (or only foreground) everywhere
        metrics["n_pred_empty"] = int(sum(not p.any() for p in preds))
        metrics["n_pred_full"] = int(sum(bool(p.all()) for p in preds))
        result = SegRunResult(
            run.fold,
            run.seed,
            run.label_fraction,
            metrics,
            len(tr),
            len(va),
            len(te),
            fitted.best_epoch,
            fitted.val_score,
            [self.data.rows[i].path for i in te],
        )
        self.out.results.append(result)
        overlays = self._overlays(out_dir, run.fold, te, logits) if out_dir is not None else []
        self.out.overlays += overlays
        return {"result": asdict(result), "overlays": overlays}

    def after_run(self, journal: RunJournal) -> None:
        pass

    def describe(self, entry: Mapping[str, Any]) -> str:
        r = entry["result"]
        return f"test dice {fmt_score(r['metrics']['dice'])} (best epoch {r['best_epoch']}, val dice {fmt_score(r['val_dice'])})"

    def write_card(self, out_dir: Path, folds: list[int]) -> None:
        write_card(
            out_dir,
            "segment",
            self.backbone.spec,
            folds,
            head=self.head_name,
            head_args=self.head_args(),
            mean=self.backbone.mean,
            std=self.backbone.std,
            foreground_ids=self.cfg.foreground_ids,
            weights=self.backbone.source,
        )

    def fingerprint(self) -> str:
        """What decides this evaluation's results: config, encoder weights, the images and masks."""
        files = file_identity(
            [str(r.path) for r in self.data.rows] + [str(r.mask_path) for r in self.data.rows]
        )
        data = (self.data.groups, files, list(map(bool, self.data.has_foreground)))
        return evaluation_fingerprint("segment", results_config(self.cfg), self.backbone.fingerprint, data)

    # -- model ---------------------------------------------------------------------------------------

    @property
    def head_name(self) -> str:
        if self.cfg.head != "auto":
            return self.cfg.head
        encoder = self.backbone.encoder
        if isinstance(encoder, ConvViT):
            return "upernet"  # its three stages are a pyramid (DeblurringMIM's UPerNet recipe)
        return "mae" if is_vit(encoder) else "unet"

    def head_args(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.head_name == "mae":
            return dict(decoder_dim=cfg.decoder_dim, depth=cfg.decoder_depth, num_heads=cfg.decoder_heads)
        if self.head_name == "upernet":
            return dict(channels=cfg.upernet_channels, indices=cfg.upernet_indices)
        return {}

    def _make_model(self) -> SegModel:
        cfg = self.cfg
        spec: EncoderSpec = self.backbone.spec
        encoder = create_encoder(spec, drop_path_rate=cfg.drop_path)
        encoder.load_state_dict(self.backbone.encoder.state_dict())
        head = build_seg_head(self.head_name, encoder, 2, **self.head_args())
        if cfg.freeze_encoder:
            encoder.requires_grad_(False)
        return SegModel(encoder, head).to(self.device)

    def _fit(self, tr: np.ndarray, va: np.ndarray, seed: int) -> tuple[SegModel, int, float | None]:
        """Train on ``tr``; keep the epoch with the best validation Dice; stop after ``patience`` bad ones."""
        cfg = self.cfg
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = self._make_model()
        optimizer = torch.optim.AdamW(
            model.param_groups(cfg.lr, cfg.weight_decay, cfg.encoder_lr_scale), lr=cfg.lr
        )
        xva, yva = self.data.batch(va, Phase.VALIDATE)
        fg_weight = self.foreground_weight(tr)

        def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            x, y = (t.to(self.device, non_blocking=True) for t in batch)
            return dice_ce_loss(model(x), y, fg_weight=fg_weight)

        def validate(model: nn.Module) -> tuple[float, float] | None:
            if not len(va):
                return None
            pred = self._predict(model, xva).argmax(1).numpy()
            score = segmentation_metrics(pred, yva.numpy(), empty=cfg.empty_policy)["dice"]
            return (-math.inf if score is None else score), 0.0

        settings = FitSettings.of(cfg)
        on_train = (lambda m: m.encoder.eval()) if cfg.freeze_encoder else None
        what = f"segmentation fine-tuning, fold {self.current_fold}"
        done = fit(
            model,
            optimizer,
            tr,
            loss_fn,
            validate,
            settings,
            gen,
            self.device,
            on_train=on_train,
            what=what,
            source=AugmentedPairs(self.data, self.size, cfg.crop_scale),
            workers=cfg.workers,
        )
        return model, done.epoch, done.score

    def foreground_weight(self, tr: np.ndarray) -> float:
        """``cfg.fg_weight``, or for ``None`` sqrt(background / foreground pixels) of the training masks,
        within [1, 10]: small lesions otherwise let the loss settle on "all background" (measured: a
        pre-trained ViT stayed there for 10 epochs at weight 1; weight 5 left it within 3)."""
        if self.cfg.fg_weight is not None:
            return float(self.cfg.fg_weight)
        fg = float(self.data.masks[torch.as_tensor(tr)].float().mean()) if len(tr) else 0.5
        if fg <= 0.0:
            return 1.0
        return float(np.clip(np.sqrt((1.0 - fg) / fg), 1.0, 10.0))

    @torch.no_grad()
    def _predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, 2, h, w]`` on the CPU, in chunks."""
        model.eval()
        out = [model(x[i : i + 64].to(self.device)).float().cpu() for i in range(0, len(x), 64)]
        return torch.cat(out) if out else torch.empty(0, 2, *self.size)

    @staticmethod
    def _full_res_pred(logits: torch.Tensor, mask: np.ndarray) -> np.ndarray:
        """The prediction at the mask's own resolution (logits upsampled bilinearly, then argmax)."""
        if tuple(logits.shape[-2:]) != mask.shape:
            logits = F.interpolate(logits[None], size=mask.shape, mode="bilinear", align_corners=False)[0]
        return logits.argmax(0).numpy().astype(bool)

    def _overlays(self, out_dir: Path, k: int, te: np.ndarray, logits: torch.Tensor) -> list[Path]:
        pred = logits.argmax(1).numpy().astype(bool)
        paths = []
        for i in range(min(self.cfg.n_overlays, len(te))):
            j = te[i]
            paths.append(
                save_overlay(
                    self.data.display[j],
                    pred[i],
                    self.data.masks[j].numpy(),
                    out_dir / "overlays" / f"fold{k}_{i}.png",
                    title=Path(self.data.rows[j].path).name,
                )
            )
        return paths


# ----------------------------------------------------------------------------------------------------
# the command


def finetune_segment(
    weights: str | Path,
    data: str | Path,
    out_dir: str | Path,
    cfg: SegmentConfig | None = None,
    *,
    scratch_spec: EncoderSpec | None = None,
    scratch_like: str | Path | None = None,
    progress: bool = True,
    segdata: SegData | None = None,
) -> EvaluationResult:
    """Fine-tune ``weights`` + a segmentation head on the masked images of ``data``; writes folds.json,
    report.json, report.md and overlays/ into ``out_dir``; returns the summary, the paths and ``n_images``.
    ``segdata`` (from :func:`load_segdata` at the encoder's size and normalisation) skips decoding."""
    cfg = check(cfg or SegmentConfig())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone = resolve_backbone(weights, scratch_spec=scratch_spec, scratch_like=scratch_like)
    if cfg.img_size:
        backbone = with_image_size(backbone, tuple(cfg.img_size))
    spec = backbone.spec
    if segdata is None:
        segdata = load_segdata(
            read_manifest(data),
            tuple(spec.img_size),
            spec.in_chans,
            backbone.mean,
            backbone.std,
            cfg.foreground_ids,
            progress=progress,
        )
    result = Segmenter(backbone, segdata, cfg, progress=progress).run(out)
    config = {"weights": str(weights), "data": str(data), **asdict(cfg), "encoder": asdict(spec)}
    summary, paths = write_segmentation_report(
        out, f"Segmentation of {weights}", result.results, cfg, config, len(segdata.rows)
    )
    return EvaluationResult("segment", summary, paths, len(segdata.rows))
