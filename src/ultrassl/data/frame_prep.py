"""How one file's decoded frames become training frames: cropped to the scan area, then resampled.

The scan area is the manifest row's ``scan_area`` rectangles when it has them (a DICOM's 2-D tissue
regions, written at indexing, or an area given by hand), else what the heuristic detector finds
(:func:`~ultrassl.data.scan_area.detect_scan_area`); the loaders' ``scan_area=False`` keeps whole
frames. Given rectangles are used as they are, without the detector inside them: a region is the
scanner's own statement of where the image is, and the corners of a fan inside it are black already.

With a target spacing (``data.spacing_mm``), frames of files whose spacing is known (the manifest's
``spacing_x_mm``/``spacing_y_mm``) are resampled to that many millimetres per pixel, so a model sees
the same anatomy at the same size from every scanner. Resampling follows the scan-area crop (the
rectangles are in the file's own pixels; resampling only what is kept is cheaper and gives the same
pixels) and precedes the training crop. Files without a spacing keep their pixels, and the loaders
say so once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ultrassl.data.dicom_regions import Rect
from ultrassl.data.readers import DEFAULT_LIMITS
from ultrassl.data.scan_area import ScanArea, detect_scan_area

log = logging.getLogger(__name__)

__all__ = [
    "FramePrep",
    "area_from_rects",
    "format_rects",
    "frame_preps",
    "parse_rects",
    "prep_params",
    "resample_to_spacing",
]


# ------------------------------------------------------------------------------ the scan_area column


def parse_rects(text: str, width: int, height: int) -> tuple[Rect, ...]:
    """``x0,y0,x1,y1`` rectangles (pixels, end-exclusive), ``;`` between several, or ``full``.

    Raises ValueError saying what is wrong; the caller adds the file and line.
    """
    text = text.strip()
    if text.lower() == "full":
        return ((0, 0, width, height),)
    rects = []
    for part in text.split(";"):
        fields = [f.strip() for f in part.split(",")]
        try:
            x0, y0, x1, y1 = (int(f) for f in fields)
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not x0,y0,x1,y1 (four integers) or 'full'") from None
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ValueError(
                f"rectangle {x0},{y0},{x1},{y1} is empty or outside the {width}x{height} frame "
                "(x0,y0,x1,y1 with x0 < x1 <= width, y0 < y1 <= height)"
            )
        rects.append((x0, y0, x1, y1))
    return tuple(rects)


def format_rects(rects: Sequence[Rect]) -> str:
    """The ``scan_area`` column's text for ``rects`` (the inverse of :func:`parse_rects`)."""
    return ";".join(",".join(str(int(v)) for v in r) for r in rects)


def area_from_rects(rects: Sequence[Rect], height: int, width: int) -> ScanArea:
    """The scan area made of rectangles: their union as the mask, their joint extent as the bbox.

    Rectangles are clipped to the frame (a manifest older than the file may be larger); one that
    falls outside entirely is a ValueError, which skips the file with that reason.
    """
    mask = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in rects:
        mask[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)] = True
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        raise ValueError(f"scan_area {format_rects(rects)} lies outside the {width}x{height} frames")
    bbox = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    return ScanArea(mask, bbox, "full" if mask.all() else "rectangle")


# -------------------------------------------------------------------------------------- resampling


def resample_to_spacing(stack: np.ndarray, spacing_mm: tuple[float, float], target_mm: float) -> np.ndarray:
    """Float frames ``[T,H,W]`` or ``[T,H,W,3]`` of ``spacing_mm`` (x, y) resampled to ``target_mm``
    per pixel (Pillow's bilinear, whose support widens when shrinking: no ringing, no aliased speckle)."""
    t, h, w = stack.shape[:3]
    out_h = max(1, round(h * spacing_mm[1] / target_mm))
    out_w = max(1, round(w * spacing_mm[0] / target_mm))
    if (out_h, out_w) == (h, w):
        return stack
    if out_h * out_w > DEFAULT_LIMITS.max_pixels:
        raise ValueError(
            f"resampling {w}x{h} frames of {spacing_mm[0]:.4g} mm to {target_mm:g} mm per pixel would make "
            f"them {out_w}x{out_h}; choose a coarser data.spacing_mm"
        )
    planes = np.asarray(stack, dtype=np.float32).reshape(t, h, w, -1)
    out = np.empty((t, out_h, out_w, planes.shape[-1]), np.float32)
    for i in range(t):
        for c in range(planes.shape[-1]):
            image = Image.fromarray(np.ascontiguousarray(planes[i, :, :, c]))  # float32: mode F
            out[i, :, :, c] = np.asarray(image.resize((out_w, out_h), Image.Resampling.BILINEAR))
    return np.clip(out.reshape((t, out_h, out_w) + stack.shape[3:]), 0.0, 1.0)


# ------------------------------------------------------------------------------------------ per file


@dataclass(frozen=True)
class FramePrep:
    """What happens to one file's frames after decoding (plain values: it travels to decode workers)."""

    #: crop to the scan area at all
    scan_area: bool = True
    #: the scan area as rectangles; None: detect it (only read when ``scan_area``)
    rects: tuple[Rect, ...] | None = None
    #: the file's (x, y) mm per pixel, when frames are to be resampled to ``target_mm``
    spacing_mm: tuple[float, float] | None = None
    target_mm: float | None = None

    @property
    def plain(self) -> bool:
        """Whether this is the crop of old: detected (or off), no resampling."""
        return self.rects is None and self.spacing_mm is None

    def area(self, frames: np.ndarray, rgb: bool) -> ScanArea | None:
        """The scan area of decoded frames ``[T,H,W(,3)]`` (None: no crop)."""
        if not self.scan_area:
            return None
        if self.rects is not None:
            return area_from_rects(self.rects, *frames.shape[1:3])
        return detect_scan_area(frames.mean(axis=-1) if rgb else frames)

    def apply(self, stack: np.ndarray, area: ScanArea | None) -> np.ndarray:
        """``stack`` (frames, or their gray twin) cropped to ``area``, then resampled."""
        if area is not None:
            stack = area.apply(stack)
        if self.spacing_mm is not None and self.target_mm is not None:
            stack = resample_to_spacing(stack, self.spacing_mm, self.target_mm)
        return stack


def frame_preps(
    rows: Sequence[Any],  # manifest rows (typed loosely: manifest imports this module)
    scan_area: bool = True,
    spacing_mm: float | None = None,
) -> list[FramePrep]:
    """One :class:`FramePrep` per row; with ``spacing_mm``, a line on stderr when some rows have no
    spacing (their frames keep their own pixel size)."""
    preps = [
        FramePrep(
            scan_area=scan_area,
            rects=row.scan_area if scan_area and row.scan_area else None,
            spacing_mm=row.spacing_mm if spacing_mm is not None else None,
            target_mm=spacing_mm,
        )
        for row in rows
    ]
    if spacing_mm is not None:
        missing = sum(p.spacing_mm is None for p in preps)
        if missing:
            log.warning(
                f"data.spacing_mm={spacing_mm:g}: {missing} of {len(rows)} files have no pixel spacing in the "
                "manifest (spacing_x_mm/spacing_y_mm); their frames are not resampled"
            )
    return preps


def prep_params(preps: Sequence[FramePrep]) -> dict[str, str]:
    """What the preps add to a frame store's key: nothing when every file is cropped as before, else a
    digest of each file's rectangles and spacing with the target, so a changed area, spacing or
    ``data.spacing_mm`` never reuses stale frames."""
    if all(p.plain for p in preps):
        return {}
    text = json.dumps([[p.rects, p.spacing_mm, p.target_mm] for p in preps])
    return {"frame_prep": hashlib.sha256(text.encode()).hexdigest()}
