"""The scan area and pixel spacing a DICOM states itself, from its Sequence of Ultrasound Regions.

Scanners that fill (0018,6011) say where each region of the frame lies and what it shows (DICOM PS3.3
C.8.5.5). The 2-D tissue regions (spatial format 1, data type 1) are the B-mode image: their
rectangles are the scan area, exact where a detector from pixels only guesses, and their physical
deltas give the millimetres per pixel. Doppler, M-mode, waveform and graphics regions are left out (a
spectrum is not anatomy). Without a usable 2-D tissue region the spacing falls back to PixelSpacing,
then ImagerPixelSpacing, and the scan area to the heuristic detector (``data.scan_area``).

Read once, at indexing: the manifest keeps the rectangles (``scan_area``) and the spacing
(``spacing_x_mm``, ``spacing_y_mm``), so training never opens a header again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["DicomGeometry", "Rect", "dicom_geometry"]

#: (x0, y0, x1, y1) in pixels, end-exclusive (DICOM's inclusive bounds + 1)
Rect = tuple[int, int, int, int]

SPATIAL_2D = 1  # RegionSpatialFormat
TISSUE = 1  # RegionDataType
UNITS_CM = 3  # PhysicalUnitsX/YDirection
#: a region smaller than this on a side is not an image (readers.MIN_SIDE)
MIN_REGION_SIDE = 8
#: 2-D tissue regions whose spacings differ by more than this fraction give no single spacing
SPACING_TOLERANCE = 0.01
_BOUNDS = ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1")


@dataclass(frozen=True)
class DicomGeometry:
    """What a DICOM header says about its frames' geometry."""

    #: the 2-D tissue regions, end-exclusive and clipped to the frame; () when there is none usable
    rects: tuple[Rect, ...] = ()
    #: (x, y) millimetres per pixel; None when the file does not say
    spacing_mm: tuple[float, float] | None = None
    #: one line each: a region that was left out, and why
    problems: tuple[str, ...] = ()


def _int(item: Any, keyword: str) -> int | None:
    try:
        value = item.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _spacing(dx: Any, dy: Any, scale: float) -> tuple[float, float] | None:
    """(x, y) mm per pixel from two deltas in units of ``scale`` mm, or None unless both are > 0."""
    try:
        x, y = float(dx) * scale, float(dy) * scale
    except (TypeError, ValueError, OverflowError):
        return None
    return (x, y) if all(math.isfinite(v) and v > 0 for v in (x, y)) else None


def _region_spacing(item: Any) -> tuple[float, float] | None:
    """A region's mm per pixel, when both directions are in centimetres (a 2-D region's units)."""
    if _int(item, "PhysicalUnitsXDirection") != UNITS_CM or _int(item, "PhysicalUnitsYDirection") != UNITS_CM:
        return None
    return _spacing(item.get("PhysicalDeltaX"), item.get("PhysicalDeltaY"), 10.0)


def _region_rect(item: Any, n: int, rows: int, cols: int) -> tuple[Rect | None, str | None]:
    """(rectangle, None) or (None, why region ``n`` cannot be the scan area)."""
    x0, y0, x1, y1 = (_int(item, k) for k in _BOUNDS)
    if None in (x0, y0, x1, y1):
        return None, f"ultrasound region {n} has no or non-integer location bounds (left out)"
    if x1 < x0 or y1 < y0:
        return None, f"ultrasound region {n} has reversed bounds x {x0}..{x1}, y {y0}..{y1} (left out)"
    # inclusive -> end-exclusive, clipped: some scanners write MaxX1 = Columns
    rect = (max(x0, 0), max(y0, 0), min(x1 + 1, cols), min(y1 + 1, rows))
    w, h = rect[2] - rect[0], rect[3] - rect[1]
    if w <= 0 or h <= 0:
        return None, (
            f"ultrasound region {n} (x {x0}..{x1}, y {y0}..{y1}) lies outside the {cols}x{rows} frame (left out)"
        )
    if w < MIN_REGION_SIDE or h < MIN_REGION_SIDE:
        return None, f"ultrasound region {n} is only {w}x{h} pixels (left out)"
    return rect, None


def _agree(spacings: list[tuple[float, float]]) -> bool:
    first = spacings[0]
    return all(abs(s[i] - first[i]) <= SPACING_TOLERANCE * first[i] for s in spacings for i in (0, 1))


def _header_spacing(ds: Any) -> tuple[float, float] | None:
    """PixelSpacing, else ImagerPixelSpacing: (row, column) spacing in mm, returned as (x, y)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = ds.get(keyword)
            if value is not None and len(value) == 2:
                spacing = _spacing(value[1], value[0], 1.0)
                if spacing is not None:
                    return spacing
        except Exception:  # noqa: BLE001 - a garbled value is no spacing, never an unreadable file
            continue
    return None


def dicom_geometry(ds: Any, rows: int, cols: int) -> DicomGeometry:
    """The 2-D tissue regions of a pydicom dataset (frames of ``rows`` x ``cols``) and its spacing.

    Several 2-D tissue regions (a dual view) are all kept: the scan area is their union. Their
    spacing is recorded when they agree (within 1%), since one resampling serves the whole frame.
    A malformed region is left out with a one-line reason in ``problems``, never an error: the
    pixels are still usable, and the detector or the other regions take its place.
    """
    rects: list[Rect] = []
    spacings: list[tuple[float, float]] = []
    problems: list[str] = []
    try:
        regions = list(ds.get("SequenceOfUltrasoundRegions") or [])
    except Exception:  # noqa: BLE001 - a garbled sequence is no regions; the pixels may still be fine
        regions = []
        problems.append("unreadable Sequence of Ultrasound Regions (left out)")
    for n, item in enumerate(regions):
        if _int(item, "RegionSpatialFormat") != SPATIAL_2D or _int(item, "RegionDataType") != TISSUE:
            continue  # Doppler, M-mode, waveforms, graphics
        rect, problem = _region_rect(item, n, rows, cols)
        if rect is None:
            problems.append(str(problem))
            continue
        rects.append(rect)
        spacing = _region_spacing(item)
        if spacing is not None:
            spacings.append(spacing)
    if problems and not rects:
        problems.append("no usable 2-D tissue region: the scan area is detected from the pixels")
    spacing_mm: tuple[float, float] | None = None
    if spacings and _agree(spacings):
        spacing_mm = spacings[0]
    elif spacings:
        shown = ", ".join(f"{x:.4g}x{y:.4g}" for x, y in spacings)
        problems.append(f"2-D tissue regions disagree on the pixel spacing ({shown} mm): none recorded")
    else:
        spacing_mm = _header_spacing(ds)
    return DicomGeometry(tuple(dict.fromkeys(rects)), spacing_mm, tuple(problems))
