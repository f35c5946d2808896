"""Scan-area detection: find the fan (sector) or rectangle that holds the ultrasound image.

Exported frames carry burned-in text, calipers, rulers and logos around the image, and the image itself
often has parts as dark as the export's background (rib shadows, a deep field past the gain, anechoic
fluid), so no pixel threshold alone sees the whole area. Three steps:

1. *Evidence*: pixels above the export's background level (the brightest value over a clip, lightly
   smoothed, a little above the frame's darkest level: the speckle floor) or that change over time.
2. *Region*: thin strokes (text, ruler ticks) are cut by an opening, components far smaller than the
   image dropped, gaps closed; the frame's border never counts as an edge (an image cut by the frame
   keeps its full extent).
3. *Geometry*: a region that fills its bounding box is a rectangle (linear probe), kept as its convex
   hull. Otherwise a fan is fitted: its two sides are straight lines fitted robustly on the upper part
   of the region (shadows grow with depth, so the sides are most visible near the skin), the apex is
   where they cross, and the side angles and the two arcs are the tightest that hold the whole region
   as seen from that apex. A side lost in shadow half-way down is thus drawn on from its visible top,
   and a fan cut by the frame stays a fan. A fit that would leave out region pixels or more than
   double-count the hull is refused, and the hull is used.

``bench/scan_area.py`` measures it against hand annotations of real exports (``bench/scan_area/``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage, stats
from scipy.spatial import ConvexHull, QhullError

#: a region smaller than this fraction of the frame is not trusted: the whole frame is used instead
MIN_AREA_FRACTION = 0.10
#: a hull filling at least this fraction of its bounding box is a rectangle (linear probe)
RECTANGLE_FILL = 0.95
#: detection runs on frames block-averaged down to at most this many pixels on a side
WORK_SIZE = 256
#: the speckle floor: this far above the frame's darkest (smoothed) level counts as image
SPECKLE_FLOOR = 0.01
#: a pixel whose value spreads this much over a clip (std, after a 3x3 mean) counts as image
MOTION_STD = 0.01
#: the share of the region's height, from its top, on which the fan's sides are fitted
SIDE_FIT_SHARE = 0.45


@dataclass(frozen=True)
class Fan:
    """A fan in frame pixels: apex ``(x, y)`` (may lie above the frame), side angles in radians from
    straight down (positive towards +x; ``left < right``) and the radii of the inner and outer arcs."""

    apex_x: float
    apex_y: float
    left: float
    right: float
    r_inner: float
    r_outer: float

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The fan clipped to a frame of ``shape`` (pixel centres tested)."""
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64) + 0.5
        dx, dy = xx - self.apex_x, yy - self.apex_y
        r, theta = np.hypot(dx, dy), np.arctan2(dx, dy)
        return (r >= self.r_inner) & (r <= self.r_outer) & (theta >= self.left) & (theta <= self.right)

    def scaled(self, factor: float) -> Fan:
        return Fan(
            self.apex_x * factor,
            self.apex_y * factor,
            self.left,
            self.right,
            self.r_inner * factor,
            self.r_outer * factor,
        )


@dataclass
class ScanArea:
    mask: np.ndarray  # bool [H, W]
    bbox: tuple[int, int, int, int]  # (y0, y1, x0, x1), end-exclusive
    shape: str  # "sector" | "rectangle" | "full"
    fan: Fan | None = None  # the fitted fan when shape == "sector"

    def apply(self, frames: np.ndarray) -> np.ndarray:
        """Zero outside the mask and crop to the bounding box; ``[H,W]``, ``[T,H,W]`` or ``[T,H,W,3]``."""
        y0, y1, x0, x1 = self.bbox
        h, w = self.mask.shape
        rgb_last = frames.ndim == 4 or (frames.ndim == 3 and frames.shape[:2] == (h, w))
        axis = frames.ndim - 3 if rgb_last else frames.ndim - 2  # the H axis
        if frames.shape[axis : axis + 2] != (h, w):
            raise ValueError(f"frames {frames.shape} do not match the scan-area mask {self.mask.shape}")
        mask = self.mask.reshape((h, w) + (1,) * (frames.ndim - axis - 2)).astype(frames.dtype)
        cropped = (frames * mask)[(slice(None),) * axis + (slice(y0, y1), slice(x0, x1))]
        return np.ascontiguousarray(cropped)


def full_area(h: int, w: int) -> ScanArea:
    return ScanArea(np.ones((h, w), bool), (0, h, 0, w), "full")


def area_from_mask(mask: np.ndarray, shape: str, fan: Fan | None = None) -> ScanArea:
    """A scan area from its mask (the bounding box is the mask's)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return full_area(*mask.shape)
    bbox = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    return ScanArea(mask, bbox, shape, fan)


def _gray_stack(frames: np.ndarray) -> np.ndarray:
    raw = np.asarray(frames)
    f = raw.astype(np.float32) / 255.0 if raw.dtype == np.uint8 else raw.astype(np.float32, copy=False)
    if f.ndim == 2:
        return f[None]
    if f.ndim == 3 and f.shape[-1] in (3, 4) and f.shape[0] > 4:
        return f[..., :3].mean(-1)[None]  # one RGB(A) frame
    if f.ndim == 4:
        return f[..., :3].mean(-1)
    return f


def _main_components(mask: np.ndarray, keep_fraction: float = 0.2) -> np.ndarray:
    """The largest component plus any other at least ``keep_fraction`` of its size.

    A-line bands or a dark pleural gap can split one image into stacked pieces of similar size;
    overlays (text, logos, ruler ticks) are far smaller than the image and are dropped.
    """
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    keep = np.flatnonzero(sizes >= keep_fraction * sizes.max()) + 1
    return np.isin(labels, keep)


def _evidence(stack: np.ndarray) -> np.ndarray:
    """Pixels above the speckle floor over the clip, or that change over time."""
    size = max(3, min(stack.shape[-2:]) // 50) | 1  # 5 px at the working size
    brightest = ndimage.median_filter(stack.max(axis=0), size=size)  # no halo at edges, unlike a blur
    image = brightest > float(np.percentile(brightest, 1)) + SPECKLE_FLOOR
    if stack.shape[0] >= 3:
        image |= ndimage.uniform_filter(stack.std(axis=0), size=3) > MOTION_STD
    return image


def _region(evidence: np.ndarray) -> np.ndarray:
    """Cut thin overlays (text strokes, ruler ticks), close gaps, keep the main region.

    The closing runs on a copy padded with the border's own values, so the frame's edge does not
    erode a region that runs into it.
    """
    size = max(1, min(evidence.shape) // 64)
    mask = ndimage.binary_opening(evidence, iterations=size)
    mask = _main_components(mask)  # drop overlays before closing could join them to the image
    pad = 2 * size
    mask = ndimage.binary_closing(np.pad(mask, pad, mode="edge"), iterations=2 * size)[pad:-pad, pad:-pad]
    return _main_components(ndimage.binary_fill_holes(mask))


def _downsample(stack: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return stack
    t, h, w = stack.shape
    h2, w2 = h // factor, w // factor
    return stack[:, : h2 * factor, : w2 * factor].reshape(t, h2, factor, w2, factor).mean(axis=(2, 4))


def _hull_polygon(mask: np.ndarray, scale: float) -> np.ndarray | None:
    """Convex hull (x, y vertices, in full-resolution pixels) of the mask's pixels (as unit squares)."""
    ys, xs = np.nonzero(mask)
    if len(ys) < 3:
        return None
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0.0, 1.0) for dy in (0.0, 1.0)])
    try:
        hull = ConvexHull(corners)
    except QhullError:  # degenerate (a line)
        return None
    return corners[hull.vertices] * scale


def _rasterize(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies in the polygon (vertices in pixel-edge coordinates)."""
    canvas = Image.new("1", (shape[1], shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in (polygon - 0.5).tolist()], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def _side_line(region: np.ndarray, side: str) -> tuple[float, float] | None:
    """``x = slope * y + intercept`` of one side, fitted (Theil-Sen) on the region's upper rows.

    Rows where the region runs into the frame's side are left out: there the frame, not the fan, ends it.
    """
    h, w = region.shape
    rows = np.flatnonzero(region.any(axis=1))
    ys = np.arange(rows[0], rows[0] + max(8, int(SIDE_FIT_SHARE * (rows[-1] - rows[0]))))
    ys = ys[(ys < h)]
    ys = ys[region[ys].any(axis=1)]
    if side == "left":
        x = np.argmax(region[ys], axis=1).astype(np.float64)
        ok = x > 1
    else:
        x = (w - np.argmax(region[ys, ::-1], axis=1)).astype(np.float64)  # the right edge of the last pixel
        ok = x < w - 1
    if ok.sum() < 6:
        return None
    slope, intercept, _, _ = stats.theilslopes(x[ok], ys[ok] + 0.5)
    return float(slope), float(intercept)


def _fit_fan(region: np.ndarray, hull: np.ndarray) -> Fan | None:
    """The tightest fan holding ``region`` whose apex is where the sides of ``hull`` cross, or None."""
    left, right = _side_line(hull, "left"), _side_line(hull, "right")
    if left is None or right is None or right[0] - left[0] < 0.1:  # (nearly) parallel sides: no fan
        return None
    apex_y = (left[1] - right[1]) / (right[0] - left[0])
    apex_x = left[0] * apex_y + left[1]
    ys, xs = np.nonzero(region)
    if apex_y > ys.min() + 2:  # the apex must be at or above the top of the image
        return None
    dx, dy = xs + 0.5 - apex_x, ys + 0.5 - apex_y
    r, theta = np.hypot(dx, dy), np.arctan2(dx, dy)
    lo, hi = np.percentile(theta, [0.05, 99.95])  # a stray pixel does not widen the fan
    r0, r1 = np.percentile(r, [0.05, 99.95])
    fan = Fan(float(apex_x), float(apex_y), float(lo), float(hi), float(r0), float(r1) + 0.5)
    drawn = fan.mask(region.shape)
    if (drawn & region).sum() < 0.99 * region.sum() or drawn.sum() > 1.6 * hull.sum():
        return None
    return fan


def detect_scan_area(frames: np.ndarray) -> ScanArea:
    """The scan area of one frame ``[H,W]`` (or ``[H,W,3]``) or a clip ``[T,H,W]`` (or ``[T,H,W,3]``).

    Float frames in [0, 1] or uint8. Works at most ``WORK_SIZE`` pixels wide (block means), so a 900-px
    frame costs what a 250-px one does; the fan or hull is drawn at full resolution.
    """
    stack = _gray_stack(frames)
    h, w = stack.shape[-2:]
    factor = max(1, -(-max(h, w) // WORK_SIZE))
    small = _downsample(stack, factor)
    region = _region(_evidence(small))
    if region.sum() < MIN_AREA_FRACTION * region.size:
        return full_area(h, w)
    polygon = _hull_polygon(region, 1.0)
    if polygon is None:
        return full_area(h, w)
    hull = _rasterize(polygon, region.shape)
    rows, cols = np.flatnonzero(hull.any(axis=1)), np.flatnonzero(hull.any(axis=0))
    fill = hull.sum() / ((rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1))
    fan = None if fill >= RECTANGLE_FILL else _fit_fan(region, hull)
    if fan is not None:
        fan = fan.scaled(factor)
        return area_from_mask(fan.mask((h, w)), "sector", fan)
    mask = _rasterize(polygon * factor, (h, w))
    return area_from_mask(mask, "rectangle" if fill >= RECTANGLE_FILL else "sector")
