"""Augmentations for supervised fine-tuning, drawn from one seeded generator so a run is reproducible:
grayscale-safe crops, flips and intensity changes for classification, and the same crop and flip for an
image and its mask for segmentation."""

from __future__ import annotations

import math

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF


def augment(
    x: torch.Tensor,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.7, 1.0),
    intensity: float = 0.1,
    gamma: float = 0.0,
) -> torch.Tensor:
    """Grayscale-safe augmentation for fine-tuning: a crop of ``scale`` of the area resized back, flip,
    gain and offset of +-``intensity`` (in normalised units) and, with ``gamma`` > 0, a gamma of
    exp(+-``gamma``) on the [0, 1]-range image (brightness curves vary between scanners and presets)."""
    b, _, h, w = x.shape
    out = torch.empty_like(x)
    lo, hi = scale
    for i in range(b):
        area = lo + (hi - lo) * torch.rand(1, generator=gen).item()
        ch, cw = max(1, int(h * math.sqrt(area))), max(1, int(w * math.sqrt(area)))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
        img = TF.resized_crop(x[i], top, left, ch, cw, [h, w], antialias=True)
        if torch.rand(1, generator=gen).item() < 0.5:
            img = TF.horizontal_flip(img)
        if gamma > 0:
            g = math.exp(gamma * (2 * torch.rand(1, generator=gen).item() - 1))
            lo_v, hi_v = img.amin(), img.amax()
            span = (hi_v - lo_v).clamp_min(1e-6)
            img = ((img - lo_v) / span).pow(g) * span + lo_v
        gain = 1.0 + 2 * intensity * (torch.rand(1, generator=gen).item() - 0.5)
        bias = 2 * intensity * (torch.rand(1, generator=gen).item() - 0.5)
        out[i] = img * gain + bias
    return out


def augment_pair(
    x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, scale: tuple[float, float] = (0.8, 1.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random resized crop (area ``scale``, aspect kept) and horizontal flip for image and mask;
    the image is resampled bilinearly, the mask by nearest neighbour so it stays binary."""
    b, _, h, w = x.shape
    xs, ys = torch.empty_like(x), torch.empty_like(y)
    lo, hi = scale
    for i in range(b):
        area = lo + (hi - lo) * torch.rand(1, generator=gen).item()
        ch, cw = max(1, round(h * math.sqrt(area))), max(1, round(w * math.sqrt(area)))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
        img = TF.resized_crop(x[i], top, left, ch, cw, [h, w], antialias=True)
        msk = TF.resized_crop(
            y[i][None].to(torch.uint8), top, left, ch, cw, [h, w], interpolation=InterpolationMode.NEAREST
        )[0].bool()
        if torch.rand(1, generator=gen).item() < 0.5:
            img, msk = img.flip(-1), msk.flip(-1)
        xs[i], ys[i] = img, msk
    return xs, ys
