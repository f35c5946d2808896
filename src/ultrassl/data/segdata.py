"""The images and masks of a segmentation evaluation: every still image with a mask, decoded once and
resized to the model's input size (images bicubic, masks nearest), plus each mask at its own resolution
for the final metrics. Unreadable or mismatched pairs are skipped with the reason."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ultrassl.data.manifest import ManifestRow
from ultrassl.data.readers import read_frames
from ultrassl.data.skipped import report_skipped
from ultrassl.errors import UltrasslError, UnreadableFileError


def read_mask(path: str | Path, foreground_ids: Sequence[int] | None = None) -> np.ndarray:
    """A mask file -> bool ``[H, W]``: ``> 0`` (0/255 or 0/1 PNGs, any label map) or ``isin(foreground_ids)``.

    Palette and gray images keep their stored values (label ids); colour masks count any non-black pixel.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA"):
                if foreground_ids is not None:
                    raise UnreadableFileError(path, f"foreground_ids need a label-id mask, not {img.mode}")
                arr = np.asarray(img.convert("RGB")).max(axis=-1)
            else:
                arr = np.asarray(img)
    except (OSError, SyntaxError, ValueError) as e:
        raise UnreadableFileError(path, f"not a readable mask image ({e})") from e
    if arr.ndim != 2:
        raise UnreadableFileError(path, f"mask must be a single-channel image; got shape {arr.shape}")
    if foreground_ids is None:
        return arr > 0
    return np.isin(arr, np.asarray(list(foreground_ids)))


@dataclass
class SegData:
    """Every image with a mask, decoded once and resized to the model's size (``record``: told the phase
    and indices of every access, e.g. fine-tuning's ``Phase``; tests check test images are read once).

    ``images`` are normalised ``[N, C, h, w]`` (bicubic), ``masks`` bool ``[N, h, w]`` (nearest);
    ``full_masks`` keep each mask at its own resolution for the final test metrics; ``display`` is the
    resized gray image in [0, 1] for overlays.
    """

    images: torch.Tensor
    masks: torch.Tensor
    full_masks: list[np.ndarray]
    display: np.ndarray
    groups: list[str]
    rows: list[ManifestRow]
    record: Callable[[Any, np.ndarray], None] | None = None

    @property
    def has_foreground(self) -> list[int]:
        return [int(m.any()) for m in self.full_masks]

    def batch(self, index: np.ndarray, phase: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self.record is not None:
            self.record(phase, np.asarray(index))
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return self.images[idx], self.masks[idx]


def load_segdata(
    rows: Sequence[ManifestRow],
    size: tuple[int, int],
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    foreground_ids: Sequence[int] | None = None,
    progress: bool = True,
) -> SegData:
    """Read the rows that have a mask (first frame of still images); unreadable pairs are skipped, said why."""
    rows = [r for r in rows if r.mask_path]
    if not rows:
        raise UltrasslError("the manifest has no rows with a mask (mask_path column empty)")
    images, masks, full, display, groups, kept = [], [], [], [], [], []
    skipped: list[tuple[str, str]] = []
    for r in rows:
        if r.n_frames > 1:
            skipped.append((r.path, f"{r.n_frames} frames but one mask (only still images are segmented)"))
            continue
        try:
            img = read_frames(r.path, [0], rgb=in_chans == 3)[0]
            mask = read_mask(r.mask_path, foreground_ids)
        except (UnreadableFileError, IndexError) as e:
            skipped.append((r.path, str(e)))
            continue
        if mask.shape != img.shape[:2]:
            skipped.append(
                (
                    r.path,
                    f"mask {r.mask_path} is {mask.shape[1]}x{mask.shape[0]} but the image is "
                    f"{img.shape[1]}x{img.shape[0]}",
                )
            )
            continue
        t = torch.from_numpy(np.ascontiguousarray(img)).float()
        t = t.permute(2, 0, 1) if t.ndim == 3 else t.unsqueeze(0)
        if t.shape[0] != in_chans:
            t = t.mean(0, keepdim=True) if in_chans == 1 else t.expand(in_chans, -1, -1)
        t = TF.resize(t, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True).clamp_(0, 1)
        m = TF.resize(
            torch.from_numpy(mask)[None].to(torch.uint8), list(size), interpolation=InterpolationMode.NEAREST
        )[0].bool()
        images.append(t)
        masks.append(m)
        full.append(mask)
        display.append(t.mean(0).numpy())
        groups.append(r.group_id)
        kept.append(r)
    if progress or not kept:
        report_skipped(skipped)
    if not kept:
        raise UltrasslError(f"none of the {len(rows)} rows with a mask could be used (see the reasons above)")
    x = torch.stack(images)
    m_ = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s_ = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return SegData((x - m_) / s_, torch.stack(masks), full, np.stack(display), groups, kept)
