"""Scan-area detection: find the fan (sector) or rectangle that holds the ultrasound image.

Exported frames carry burned-in text, calipers, rulers and logos around the image. For clips, the
scan area is where pixels change over time (overlays are static), joined with the static bright parts
that touch it (chest wall, pleura); for stills (or clips without motion), it is the large connected
non-dark region. The region is cleaned with morphology, reduced to its main components and filled to
its convex hull (fans and rectangles are convex, so dark speckle, shadows and anechoic regions inside
stay in), then everything outside is zeroed and the frame is cropped to its bounding box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

#: a region smaller than this fraction of the frame is not trusted: the whole frame is used instead
MIN_AREA_FRACTION = 0.10
#: a mask filling at least this fraction of its bounding box is a rectangle (linear probe)
RECTANGLE_FILL = 0.95
#: detection runs on frames block-averaged down to at most this many pixels on a side
WORK_SIZE = 192


@dataclass
class ScanArea:
    mask: np.ndarray  # bool [H, W]
    bbox: tuple[int, int, int, int]  # (y0, y1, x0, x1), end-exclusive
    shape: str  # "sector" | "rectangle" | "full"

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


def _clean(mask: np.ndarray) -> np.ndarray:
    """Cut thin overlays (text strokes, ruler ticks), close gaps, keep the main region."""
    size = max(1, min(mask.shape) // 48)
    mask = ndimage.binary_opening(mask, iterations=size)
    mask = _main_components(mask)  # drop overlays before closing could join them to the image
    mask = ndimage.binary_closing(mask, iterations=2 * size, border_value=0)
    return _main_components(ndimage.binary_fill_holes(mask))


def _motion_mask(stack: np.ndarray) -> np.ndarray:
    std = ndimage.uniform_filter(stack.std(axis=0), size=3)
    threshold = max(0.01, 0.25 * float(np.percentile(std, 90)))
    return std > threshold


def _still_mask(stack: np.ndarray) -> np.ndarray:
    sigma = max(0.5, min(stack.shape[-2:]) / 100)  # smooth speckle without joining nearby text
    image = ndimage.gaussian_filter(stack.mean(axis=0), sigma=sigma)
    threshold = max(0.04, 0.25 * float(np.percentile(image, 75)))
    return image > threshold


def _downsample(stack: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return stack
    t, h, w = stack.shape
    h2, w2 = h // factor, w // factor
    return stack[:, : h2 * factor, : w2 * factor].reshape(t, h2, factor, w2, factor).mean(axis=(2, 4))


def _hull_polygon(mask: np.ndarray, scale: float) -> np.ndarray | None:
    """Convex hull (x, y vertices, in full-resolution pixels) of the mask's pixels."""
    ys, xs = np.nonzero(mask)
    if len(ys) < 3:
        return None
    # the block's corners when downsampled (it may be covered to its edge); pixel centres at full size
    offsets = (0.0, 1.0) if scale > 1 else (0.0,)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in offsets for dy in offsets])
    try:
        hull = ConvexHull(corners)
    except QhullError:  # degenerate (a line)
        return None
    return corners[hull.vertices] * scale


def _rasterize(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    canvas = Image.new("1", (shape[1], shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in polygon.tolist()], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def detect_scan_area(frames: np.ndarray) -> ScanArea:
    """The scan area of one frame ``[H,W]`` (or ``[H,W,3]``) or a clip ``[T,H,W]`` (or ``[T,H,W,3]``).

    Float frames in [0, 1] or uint8. Works at most ``WORK_SIZE`` pixels wide (block means), so a 900-px
    frame costs what a 200-px one does; the hull is drawn at full resolution.
    """
    stack = _gray_stack(frames)
    h, w = stack.shape[-2:]
    factor = max(1, -(-max(h, w) // WORK_SIZE))
    small = _downsample(stack, factor)
    min_area = MIN_AREA_FRACTION * small.shape[-2] * small.shape[-1]
    region = _clean(_still_mask(small))
    if small.shape[0] >= 3:
        moving = _clean(_motion_mask(small))
        if moving.sum() >= min_area:
            # static bright parts that touch the moving image (chest wall, pleura) belong to it;
            # static parts apart from it (text, logos) do not
            labels, _ = ndimage.label(region)
            touching = np.unique(labels[moving & (labels > 0)])
            region = moving | np.isin(labels, touching[touching > 0])
    polygon = _hull_polygon(region, factor) if region.sum() >= min_area else None
    if polygon is None:
        return ScanArea(np.ones((h, w), bool), (0, h, 0, w), "full")
    mask = _rasterize(polygon, (h, w))
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    bbox = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    fill = mask.sum() / ((bbox[1] - bbox[0]) * (bbox[3] - bbox[2]))
    return ScanArea(mask, bbox, "rectangle" if fill >= RECTANGLE_FILL else "sector")
