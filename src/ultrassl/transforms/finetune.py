"""Augmentations for supervised fine-tuning, drawn from one seeded generator so a run is reproducible:
grayscale-safe crops, flips and intensity changes for classification, and the same crop and flip for an
image and its mask for segmentation.

Each comes as a draw (``draw_*``: the random numbers, in a fixed order, cheap) and an apply (``apply_*``:
the pixel work): the fit draws in sequence in its own process and the apply may run in a DataLoader
worker, so a run repeats with any number of workers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF


@dataclass(frozen=True)
class Crop:
    """One sample's random resized crop (box ``top, left, height, width``) and horizontal flip."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


@dataclass(frozen=True)
class IntensityChange:
    """One sample's gamma (None: none) and gain and offset, in normalised units."""

    gamma: float | None
    gain: float
    bias: float


def draw_augment(
    n: int,
    size: tuple[int, int],
    gen: torch.Generator,
    scale: tuple[float, float] = (0.7, 1.0),
    intensity: float = 0.1,
    gamma: float = 0.0,
) -> list[tuple[Crop, IntensityChange]]:
    """The random draws of the classification augmentation for ``n`` images of ``size``, in a fixed
    order (cheap: the caller draws them in sequence, the work of :func:`apply_augment` may run elsewhere,
    e.g. in a worker). Grayscale-safe: a crop of ``scale`` of the area resized back, a flip, gain and
    offset of +-``intensity`` (normalised units) and, with ``gamma`` > 0, a gamma of exp(+-``gamma``) on
    the [0, 1]-range image (brightness curves vary between scanners and presets)."""
    h, w = size
    lo, hi = scale
    out = []
    for _ in range(n):
        area = lo + (hi - lo) * torch.rand(1, generator=gen).item()
        ch, cw = max(1, int(h * math.sqrt(area))), max(1, int(w * math.sqrt(area)))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
        flip = torch.rand(1, generator=gen).item() < 0.5
        g = math.exp(gamma * (2 * torch.rand(1, generator=gen).item() - 1)) if gamma > 0 else None
        gain = 1.0 + 2 * intensity * (torch.rand(1, generator=gen).item() - 0.5)
        bias = 2 * intensity * (torch.rand(1, generator=gen).item() - 0.5)
        out.append((Crop(top, left, ch, cw, flip), IntensityChange(g, gain, bias)))
    return out


def apply_augment(x: torch.Tensor, drawn: list[tuple[Crop, IntensityChange]]) -> torch.Tensor:
    """The classification augmentation with its draws given: crop resized back, flip, gamma, then gain
    and offset."""
    _, _, h, w = x.shape
    out = torch.empty_like(x)
    for i, (c, v) in enumerate(drawn):
        img = TF.resized_crop(x[i], c.top, c.left, c.height, c.width, [h, w], antialias=True)
        if c.flip:
            img = TF.horizontal_flip(img)
        if v.gamma is not None:
            lo_v, hi_v = img.amin(), img.amax()
            span = (hi_v - lo_v).clamp_min(1e-6)
            img = ((img - lo_v) / span).pow(v.gamma) * span + lo_v
        out[i] = img * v.gain + v.bias
    return out


def draw_crop_flip(
    n: int, size: tuple[int, int], gen: torch.Generator, scale: tuple[float, float] = (0.8, 1.0)
) -> list[Crop]:
    """The random draws of :func:`augment_pair` for ``n`` pairs of ``size``, in its order."""
    h, w = size
    lo, hi = scale
    out = []
    for _ in range(n):
        area = lo + (hi - lo) * torch.rand(1, generator=gen).item()
        ch, cw = max(1, round(h * math.sqrt(area))), max(1, round(w * math.sqrt(area)))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
        out.append(Crop(top, left, ch, cw, torch.rand(1, generator=gen).item() < 0.5))
    return out


def apply_pair(x: torch.Tensor, y: torch.Tensor, crops: list[Crop]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`augment_pair` with its draws given."""
    _, _, h, w = x.shape
    xs, ys = torch.empty_like(x), torch.empty_like(y)
    for i, c in enumerate(crops):
        img = TF.resized_crop(x[i], c.top, c.left, c.height, c.width, [h, w], antialias=True)
        msk = TF.resized_crop(
            y[i][None].to(torch.uint8),
            c.top,
            c.left,
            c.height,
            c.width,
            [h, w],
            interpolation=InterpolationMode.NEAREST,
        )[0].bool()
        if c.flip:
            img, msk = img.flip(-1), msk.flip(-1)
        xs[i], ys[i] = img, msk
    return xs, ys


def augment_pair(
    x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, scale: tuple[float, float] = (0.8, 1.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random resized crop (area ``scale``, aspect kept) and horizontal flip for image and mask;
    the image is resampled bilinearly, the mask by nearest neighbour so it stays binary."""
    return apply_pair(x, y, draw_crop_flip(x.shape[0], tuple(x.shape[-2:]), gen, scale))
