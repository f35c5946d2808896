"""Shared spatial augmentation for (input, target) pairs: one crop/flip for both, blur on the input only.

Deblurring MAE reconstructs the *sharp* frame from a *blurred* view of it, so the two must be the same
crop of the same frame; the blur is applied on the fly after the crop (no blurred copy of the data set).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop parameter draw, from a numpy Generator (seedable per sample)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # fall back to a central crop with the ratio clamped into range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class PairTransform:
    """frame [C,H,W] in [0,1] -> {"input": blurred & normalised, "target": sharp & normalised}."""

    def __init__(
        self,
        size: tuple[int, int],
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        mean: tuple[float, ...] = (0.5,),
        std: tuple[float, ...] = (0.25,),
        degrade: Callable[..., torch.Tensor] | None = None,
    ):
        self.size = tuple(size)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.hflip = hflip
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.degrade = degrade

    def crop(self, frame: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        _, h, w = frame.shape
        top, left, ch, cw = random_resized_crop_params(h, w, self.scale, self.ratio, rng)
        out = TF.resized_crop(
            frame, top, left, ch, cw, list(self.size), interpolation=InterpolationMode.BICUBIC, antialias=True
        )
        if self.hflip and rng.random() < 0.5:
            out = TF.horizontal_flip(out)
        return out.clamp_(0.0, 1.0)

    def __call__(self, frame: torch.Tensor, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        target = self.crop(frame, rng)
        if self.degrade is not None:
            gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
            inp = self.degrade(target, generator=gen).clamp(0.0, 1.0)
        else:
            inp = target
        return {"input": (inp - self.mean) / self.std, "target": (target - self.mean) / self.std}
