"""USCL's sample pair generation: three frames of one video, each augmented, mixed around a shared anchor.

Reference: 983632847/USCL, ``train_USCL/data_aug/dataset_wrapper_Ultrasound_Video_Mixup.py``. For a video
with at least three frames it draws three distinct frames (``random.sample``, so in random order),
augments each independently, draws ``lam ~ Beta(0.5, 0.5)`` once and returns the positive pair
``(lam*f1 + (1-lam)*f2, lam*f3 + (1-lam)*f2)``: the second frame is the anchor both views share. Two frames
give the two augmented frames unmixed; one frame gives two augmentations of it. Its validation loss uses
the unmixed augmented ``(f1, f2)``, which ``mix=False`` returns.

The augmentation is its SimCLR pipeline: Resize to the input size, RandomResizedCrop(scale 0.8-1, ratio
0.8-1.25), horizontal flip, ColorJitter(0.8, 0.8, 0.8, 0.2), normalise (0.5, 0.25). Resize-then-crop is
done as one crop of the original frame (the crop box drawn on the resized canvas, mapped back), so pixels
are interpolated once. On one channel, saturation and hue are skipped: on a gray image they do nothing,
as in the reference, which converts gray frames to RGB. All randomness comes from one numpy Generator
per sample, so resume is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ultrassl.errors import ConfigError
from ultrassl.transforms.pairs import random_resized_crop_params


@dataclass
class USCLAugment:
    """One frame ``[C, H, W]`` in [0, 1] -> one augmented, normalised view ``[C, *size]``."""

    size: tuple[int, int]
    scale: tuple[float, float] = (0.8, 1.0)
    ratio: tuple[float, float] = (0.8, 1.25)
    hflip: bool = True
    #: ColorJitter strengths (brightness, contrast, saturation, hue); USCL's s = 1
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)

    def __post_init__(self) -> None:
        b, c, s, h = self.jitter
        if min(b, c, s, h) < 0 or h > 0.5:
            raise ConfigError(f"colour jitter strengths must be >= 0 and hue <= 0.5, got {self.jitter}")
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def crop(self, frame: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        _, h, w = frame.shape
        out_h, out_w = self.size
        top, left, ch, cw = random_resized_crop_params(out_h, out_w, self.scale, self.ratio, rng)
        sy, sx = h / out_h, w / out_w  # the box was drawn on the frame resized to (out_h, out_w)
        top, left = round(top * sy), round(left * sx)
        ch, cw = max(1, min(h - top, round(ch * sy))), max(1, min(w - left, round(cw * sx)))
        out = TF.resized_crop(
            frame, top, left, ch, cw, [out_h, out_w], interpolation=InterpolationMode.BILINEAR, antialias=True
        )
        if self.hflip and rng.random() < 0.5:
            out = TF.horizontal_flip(out)
        return out.clamp_(0.0, 1.0)

    def color_jitter(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """torchvision's ColorJitter: four factors drawn, applied in a random order."""
        b, c, s, h = self.jitter
        factors = (
            rng.uniform(max(0.0, 1 - b), 1 + b),
            rng.uniform(max(0.0, 1 - c), 1 + c),
            rng.uniform(max(0.0, 1 - s), 1 + s),
            rng.uniform(-h, h),
        )
        gray = x.shape[0] == 1
        for op in rng.permutation(4):
            if op == 0 and b > 0:
                x = TF.adjust_brightness(x, factors[0])
            elif op == 1 and c > 0:
                x = TF.adjust_contrast(x, factors[1])
            elif op == 2 and s > 0 and not gray:
                x = TF.adjust_saturation(x, factors[2])
            elif op == 3 and h > 0 and not gray:
                x = TF.adjust_hue(x, factors[3])
        return x.clamp_(0.0, 1.0)

    def __call__(self, frame: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        x = self.color_jitter(self.crop(frame, rng), rng)
        return (x - self._mean) / self._std


def choose_frames(n: int, rng: np.random.Generator, k: int = 3, window: int | None = None) -> list[int]:
    """Up to ``k`` distinct positions out of ``n`` frames, in random order (``random.sample``).

    ``window``: the frames are drawn from a random run of ``window`` consecutive frames (so they are at
    most ``window - 1`` apart); ``None`` draws from the whole video, as USCL.
    """
    if n < 1:
        raise ValueError("a video item needs at least one frame")
    span = n if window is None else max(1, min(n, int(window)))
    start = int(rng.integers(0, n - span + 1))
    picks = rng.choice(span, size=min(k, span), replace=False)
    return [start + int(p) for p in picks]


class USCLPairs:
    """Frames of one video (1, 2 or 3 of them, ``[C, H, W]`` in [0, 1]) -> the positive pair.

    Returns ``view1``, ``view2`` and ``lam`` (the mixing weight; 1.0 when nothing was mixed).
    """

    def __init__(
        self,
        augment: USCLAugment,
        beta: tuple[float, float] = (0.5, 0.5),
        window: int | None = None,
        mix: bool = True,
    ):
        if min(beta) <= 0:
            raise ConfigError(f"Beta parameters must be > 0, got {beta}")
        if window is not None and window < 1:
            raise ConfigError(f"frame_window must be >= 1 (frames), got {window}")
        self.augment = augment
        self.beta = (float(beta[0]), float(beta[1]))
        self.window = window
        self.mix = mix

    def choose(self, n: int, rng: np.random.Generator) -> list[int]:
        """Which of a video's ``n`` frames to use: three to mix, two for the unmixed (validation) pair."""
        return choose_frames(n, rng, k=3 if self.mix else 2, window=self.window)

    def __call__(self, frames: list[torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        if not 1 <= len(frames) <= 3:
            raise ValueError(f"USCL pairs are made from 1-3 frames, got {len(frames)}")
        if len(frames) == 1:
            frames = [frames[0], frames[0]]  # two augmentations of the only frame
        views = [self.augment(f, rng) for f in frames]
        if len(views) == 3 and self.mix:
            lam = float(rng.beta(*self.beta))
            v1 = lam * views[0] + (1.0 - lam) * views[1]
            v2 = lam * views[2] + (1.0 - lam) * views[1]
        else:
            lam, v1, v2 = 1.0, views[0], views[1]
        return {"view1": v1, "view2": v2, "lam": torch.tensor(lam, dtype=torch.float32)}
