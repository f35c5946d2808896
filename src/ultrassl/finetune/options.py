"""The fine-tuning options: :class:`ClassifyConfig` and :class:`SegmentConfig` (each a
:class:`~ultrassl.finetune.splits.Protocol` plus its task's fields) and the checks they share. Plain
dataclasses that import neither torch nor sklearn, so ``ultrassl finetune ... --help`` makes one flag
per field (its help the field's ``metadata["help"]``) without loading a deep-learning library; the
engines (:mod:`~ultrassl.finetune.classify`, :mod:`~ultrassl.finetune.segment`) import them from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ultrassl.config import check, load_preset, merge, parse_set
from ultrassl.errors import ConfigError
from ultrassl.finetune.splits import Protocol
from ultrassl.models.spec import EncoderSpec

__all__ = [
    "COMMON_RANGES",
    "TASKS",
    "ClassifyConfig",
    "SegmentConfig",
    "check_device_and_precision",
    "check_ranges",
    "scratch_encoder",
    "task_config",
]


def check_device_and_precision(device: str, precision: str) -> None:
    """The ``device`` and ``precision`` options every fine-tuning config has."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"device must be auto|cpu|cuda, got {device!r}")
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"precision must be auto|fp32|bf16|fp16, got {precision!r}")
    if precision == "fp16" and device == "cpu":
        raise ConfigError("precision fp16 needs CUDA (a gradient scaler); use bf16 or fp32 on the CPU")


def check_ranges(cfg: object, **ranges: tuple[float | None, float | None]) -> None:
    """Numeric options within (low, high), both ends included; None leaves an end open, and an option
    whose value is None (off) is not checked. Names the option and its value in the error."""
    for name, (low, high) in ranges.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        if not ((low is None or value >= low) and (high is None or value <= high)):  # NaN fails too
            lo = "-inf" if low is None else f"{low:g}"
            hi = "inf" if high is None else f"{high:g}"
            raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value}")


#: the optimisation options both fine-tuning tasks have, and their ranges
COMMON_RANGES: dict[str, tuple[float | None, float | None]] = {
    "lr": (1e-12, None),
    "weight_decay": (0.0, None),
    "warmup_epochs": (0.0, None),
    "patience": (1, None),
    "clip_grad": (1e-12, None),
    "drop_path": (0.0, 0.99),
}


@dataclass
class ClassifyConfig(Protocol):
    """Classification fine-tuning options; ``ultrassl finetune classify`` makes one flag per field, its
    help the field's ``metadata["help"]``."""

    mode: str = field(
        default="linear",
        metadata={"help": "linear (probe) | partial (last blocks) | full (layer-wise lr decay)"},
    )
    frame_fps: float | None = field(
        default=3.0, metadata={"help": "frames sampled per second of video (None: every frame)"}
    )
    max_frames_per_video: int | None = field(
        default=30, metadata={"help": "at most this many frames per video (None: no limit)"}
    )
    scan_area: bool = field(
        default=True, metadata={"help": "crop to the detected fan/rectangle (as pre-training does)"}
    )
    img_size: tuple[int, int] | None = field(
        default=None, metadata={"help": "input size H W (None: the encoder's own size)"}
    )
    linear_c: tuple[float, ...] = field(
        default=(0.01, 0.1, 1.0, 10.0),
        metadata={"help": "linear probe: inverse L2 strengths tried on validation"},
    )
    train_blocks: int = field(default=1, metadata={"help": "--mode partial: trainable last blocks"})
    epochs: int = field(
        default=30, metadata={"help": "--mode partial/full: training epochs (early stopping may end sooner)"}
    )
    batch_size: int = field(default=32, metadata={"help": "frames per batch"})
    lr: float = field(
        default=1e-3,
        metadata={"help": "--mode partial/full: AdamW learning rate (after warm-up, then cosine)"},
    )
    weight_decay: float = field(default=0.05, metadata={"help": "--mode partial/full: AdamW weight decay"})
    layer_decay: float = field(default=0.65, metadata={"help": "--mode full: layer-wise lr decay"})
    drop_path: float = field(default=0.1, metadata={"help": "--mode full: stochastic depth rate"})
    label_smoothing: float = field(default=0.1, metadata={"help": "label smoothing of the cross-entropy"})
    mixup: float = field(default=0.0, metadata={"help": "mixup alpha (0: off)"})
    cutmix: float = field(default=0.0, metadata={"help": "cutmix alpha (0: off)"})
    class_weighting: bool = field(
        default=True, metadata={"help": "class-weighted cross-entropy (off: plain)"}
    )
    # fine-tuning augmentation: crop area range, gain/offset range, gamma range (log; 0 = off). Measured
    # on the synthetic lung clips (ResNet-18 from scratch, 3 folds): (0.7-1, 0.1, 0) gave 0.85 accuracy,
    # these defaults 0.93: patients differ in depth, gain and probe, and few patients show little of it.
    aug_scale: tuple[float, float] = field(
        default=(0.4, 1.0), metadata={"help": "crop area range of the fine-tuning augmentation"}
    )
    aug_intensity: float = field(default=0.25, metadata={"help": "gain/offset jitter (normalised units)"})
    aug_gamma: float = field(default=0.4, metadata={"help": "gamma jitter exp(+-x); 0 turns it off"})
    patience: int = field(default=8, metadata={"help": "early stopping on validation, in epochs"})
    warmup_epochs: float = field(default=2.0, metadata={"help": "learning-rate warm-up, in epochs"})
    clip_grad: float | None = field(default=None, metadata={"help": "max gradient norm (None: no clipping)"})
    precision: str = field(
        default="fp32",
        metadata={
            "help": "fp32 | bf16 | fp16 (CUDA, with a gradient scaler) | auto, as pre-training's "
            "train.precision"
        },
    )
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    workers: int | None = field(
        default=None,
        metadata={
            "help": "DataLoader processes that decode and augment training batches (unset: none on a CPU, "
            "up to 4 feeding a GPU); results are the same with any number"
        },
    )

    def check(self) -> None:
        """Fail before any data is read, naming the bad option."""
        super().check()
        if self.mode not in ("linear", "partial", "full"):
            raise ConfigError(f"mode must be linear|partial|full, got {self.mode!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.train_blocks < 1:
            raise ConfigError("epochs, batch_size and train_blocks must be >= 1")
        if self.frame_fps is not None and self.frame_fps <= 0:
            raise ConfigError(f"frame_fps must be > 0 or null, got {self.frame_fps}")
        if not self.linear_c or any(c <= 0 for c in self.linear_c):
            raise ConfigError(f"linear_c must be positive values, got {list(self.linear_c)}")
        lo, hi = self.aug_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"aug_scale must satisfy 0 < low <= high <= 1; got {self.aug_scale}")
        check_device_and_precision(self.device, self.precision)
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"workers must be >= 0 (or unset), got {self.workers}")
        check_ranges(
            self,
            **COMMON_RANGES,
            layer_decay=(1e-6, 1.0),
            label_smoothing=(0.0, 0.99),
            mixup=(0.0, None),
            cutmix=(0.0, None),
            max_frames_per_video=(1, None),
            aug_intensity=(0.0, None),
            aug_gamma=(0.0, None),
        )


@dataclass
class SegmentConfig(Protocol):
    """Segmentation fine-tuning options; ``ultrassl finetune segment`` makes one flag per field, its
    help the field's ``metadata["help"]``."""

    head: str = field(
        default="auto",
        metadata={
            "help": "auto (mae for ViTs, upernet for ConvViTs, unet for ResNets) | mae | upernet | unet"
        },
    )
    epochs: int = field(default=40, metadata={"help": "training epochs (early stopping may end sooner)"})
    batch_size: int = field(default=8, metadata={"help": "images per batch"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (after warm-up, then cosine)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    freeze_encoder: bool = field(
        default=False, metadata={"help": "train the head only, the encoder kept as loaded (in eval mode)"}
    )
    img_size: tuple[int, int] | None = field(
        default=None, metadata={"help": "input size H W (None: the encoder's own size)"}
    )
    empty_policy: str = field(
        default="one",
        metadata={"help": "one | nan | zero: Dice/IoU of an image whose prediction and mask are empty"},
    )
    # patience: at 10, one synthetic-lesion fold stopped at epoch 16 with test Dice 0.60; at 25 it
    # reached 0.79 (validation sets are a few images)
    patience: int = field(
        default=20,
        metadata={
            "help": "epochs without a better validation Dice before stopping (kept long: validation sets "
            "are a few images)"
        },
    )
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    workers: int | None = field(
        default=None,
        metadata={
            "help": "DataLoader processes that decode and augment training batches (unset: none on a CPU, "
            "up to 4 feeding a GPU); results are the same with any number"
        },
    )
    precision: str = field(
        default="fp32",
        metadata={
            "help": "fp32 | bf16 | fp16 (CUDA, with a gradient scaler) | auto, as pre-training's "
            "train.precision"
        },
    )
    foreground_ids: tuple[int, ...] | None = field(
        default=None,
        metadata={"help": "mask values that are foreground, for label-id masks (None: mask > 0)"},
    )
    encoder_lr_scale: float = field(
        default=1.0,
        metadata={"help": "encoder lr = lr * this (pre-trained encoders often like < 1)"},
    )
    warmup_epochs: float = field(default=2.0, metadata={"help": "learning-rate warm-up, in epochs"})
    drop_path: float = field(default=0.0, metadata={"help": "stochastic depth rate of the encoder"})
    fg_weight: float | None = field(
        default=None,
        metadata={
            "help": "cross-entropy weight of foreground pixels (None: sqrt(background/foreground) of the "
            "training masks)"
        },
    )
    clip_grad: float | None = field(
        default=1.0,
        metadata={"help": "max gradient norm (None: no clipping); keeps scratch ViTs from collapsing"},
    )
    decoder_dim: int = field(
        default=128, metadata={"help": "mae head (MAE-style decoder): width (kept small: CPU-friendly)"}
    )
    decoder_depth: int = field(default=2, metadata={"help": "mae head: transformer blocks"})
    decoder_heads: int = field(default=4, metadata={"help": "mae head: attention heads"})
    upernet_channels: int = field(
        default=64, metadata={"help": "upernet head: width (kept small: CPU-friendly)"}
    )
    upernet_indices: tuple[int, ...] | None = field(
        default=None,
        metadata={"help": "upernet head: the 4 ViT blocks it reads (None: 4 evenly spaced blocks)"},
    )
    crop_scale: tuple[float, float] = field(
        default=(0.8, 1.0),
        metadata={
            "help": "augmentation (identical for image and mask): horizontal flip + random resized crop "
            "of this area range"
        },
    )
    n_overlays: int = field(
        default=3, metadata={"help": "test images drawn per fold (first seed, largest label fraction)"}
    )

    def check(self) -> None:
        """Fail before any data is read, naming the bad option."""
        from ultrassl.metrics import EMPTY_POLICIES  # here: the command line builds its flags without
        from ultrassl.models.seg_heads import HEADS  # torch or sklearn

        super().check()
        if self.head not in (*HEADS, "auto"):
            raise ConfigError(f"head must be auto or one of {HEADS} (segmentation heads); got {self.head!r}")
        if self.empty_policy not in EMPTY_POLICIES:
            raise ConfigError(f"empty_policy must be one of {EMPTY_POLICIES}; got {self.empty_policy!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        check_device_and_precision(self.device, self.precision)
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"workers must be >= 0 (or unset), got {self.workers}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"crop_scale must satisfy 0 < low <= high <= 1; got {self.crop_scale}")
        check_ranges(
            self,
            **COMMON_RANGES,
            encoder_lr_scale=(0.0, None),
            fg_weight=(1e-12, None),
            decoder_dim=(1, None),
            decoder_depth=(1, None),
            decoder_heads=(1, None),
            upernet_channels=(1, None),
            n_overlays=(0, None),
        )


#: the downstream tasks and their options
TASKS: dict[str, type[ClassifyConfig] | type[SegmentConfig]] = {
    "classify": ClassifyConfig,
    "segment": SegmentConfig,
}

_Options = TypeVar("_Options", ClassifyConfig, SegmentConfig)


def task_config(
    cls: type[_Options],
    preset: str | None = None,
    options: Mapping[str, Any] | None = None,
    overrides: Sequence[str] | None = None,
) -> _Options:
    """A task's options in layers: defaults <- ``preset`` (a fine-tuning preset's name or a YAML file) <-
    ``options`` (field name -> value) <- ``overrides`` (``["lr=1e-4", ...]``, as ``--set``), then one
    check of the final values. ``ultrassl finetune TASK`` (its flags are the options) and
    ``ultrassl.finetune`` both build their config here; an unknown name is a ConfigError listing the
    valid ones."""
    cfg = cls()
    if preset:
        merge(cfg, load_preset(preset, "finetune"), "")
    merge(cfg, dict(options or {}))
    merge(cfg, parse_set(list(overrides or [])))
    return check(cfg)


def scratch_encoder(
    weights: str | Path,
    arch: str | None,
    *,
    patch_size: int = 16,
    in_chans: int = 1,
    img_size: Sequence[int] | None = None,
) -> EncoderSpec | None:
    """The encoder ``weights="scratch"`` builds when ``arch`` names one (a timm architecture or
    tiny|small|base), at ``img_size`` (default 224 x 224); None without ``arch``."""
    if not arch:
        return None
    if str(weights) != "scratch":
        raise ConfigError(
            "arch (--arch) only applies to weights 'scratch' (pre-trained weights bring their own)"
        )
    size = (int(img_size[0]), int(img_size[1])) if img_size else (224, 224)
    return EncoderSpec(arch=arch, img_size=size, patch_size=patch_size, in_chans=in_chans)
