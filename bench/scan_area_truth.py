"""Hand annotations of the scan area (the ground truth for the scan-area detector), and the picture an
annotator checks them against.

One JSON file per annotated media file under ``bench/scan_area/``, in the pixel frame of the decoded
frame (origin top-left, x to the right, y down; the full frame, before any crop)::

    {"file": "pocus/videos/covid/X.mp4",        # relative to the data folder (../shared/data)
     "size": [H, W],                             # the decoded frame's size
     "kind": "fan" | "rect" | "polygon",
     "fan": {"apex": [x, y], "left": -0.6, "right": 0.6, "r_inner": 40, "r_outer": 500},
     "rect": [x0, y0, x1, y1],                   # inclusive pixel bounds
     "polygon": [[x, y], ...],
     "notes": "what was hard"}

A fan is every pixel whose distance from the apex lies in [r_inner, r_outer] and whose angle lies in
[left, right]; angles are radians from straight down (+y), positive towards +x, so a symmetric fan has
left = -right. The apex may lie above the frame (negative y) and a side or the outer arc may leave the
frame: the area is clipped to the frame. Only the data stays out of the repository; the annotations are
ours.

    python bench/scan_area_truth.py render FILE [--ann JSON] [--window X0 Y0 X1 Y1] -o PNG
        # the frame | its spread over time, the annotation's outline, a grid in frame pixels
    python bench/scan_area_truth.py mask JSON -o PNG                   # the annotation as a mask
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ANNOTATIONS = ROOT / "bench" / "scan_area"


def load(path: str | Path) -> dict[str, Any]:
    ann = json.loads(Path(path).read_text())
    if ann.get("kind") not in ("fan", "rect", "polygon") or ann["kind"] not in ann:
        raise ValueError(f"{path}: kind must be fan|rect|polygon with its own field")
    return ann


def fan_mask(fan: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dx, dy = xx - fan["apex"][0], yy - fan["apex"][1]
    r = np.hypot(dx, dy)
    theta = np.arctan2(dx, dy)  # 0 = straight down, positive towards +x
    return (r >= fan["r_inner"]) & (r <= fan["r_outer"]) & (theta >= fan["left"]) & (theta <= fan["right"])


def mask(ann: dict[str, Any]) -> np.ndarray:
    """The annotated area as a boolean ``[H, W]`` mask."""
    h, w = ann["size"]
    if ann["kind"] == "fan":
        return fan_mask(ann["fan"], (h, w))
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    if ann["kind"] == "rect":
        x0, y0, x1, y1 = ann["rect"]
        draw.rectangle([x0, y0, x1, y1], fill=1)
    else:
        draw.polygon([tuple(p) for p in ann["polygon"]], fill=1)
    return np.asarray(img, bool)


def frames_of(path: Path, n: int = 40) -> np.ndarray:
    """Up to ``n`` gray frames spread over the file, uint8 ``[T, H, W]`` (PyAV for clips, Pillow for
    stills, as the readers do; kept light on purpose: no torch import, a cache beside the renders)."""
    import hashlib
    import tempfile

    cache = (
        Path(tempfile.gettempdir())
        / "scan_area_truth"
        / (hashlib.sha1(str(path).encode()).hexdigest() + ".npy")
    )
    if cache.exists():
        return np.load(cache)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"):
        frames = np.asarray(Image.open(path).convert("L"))[None]
    else:
        import av
        from av.video.reformatter import VideoReformatter

        with av.open(str(path)) as container:
            reformatter = VideoReformatter()
            decoded = [reformatter.reformat(f, format="gray").to_ndarray() for f in container.decode(video=0)]
        idx = np.unique(np.linspace(0, len(decoded) - 1, min(n, len(decoded))).round().astype(int))
        frames = np.stack([decoded[i] for i in idx])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, frames)
    return frames


def outline(ann: dict[str, Any]) -> np.ndarray:
    """The boundary pixels of the annotated area."""
    from scipy import ndimage

    m = mask(ann)
    return m & ~ndimage.binary_erosion(m)


def _nice_step(side: float) -> int:
    """A round grid step giving about 8 lines across ``side`` pixels."""
    raw = side / 8
    return int(min((b * 10**e for e in range(0, 5) for b in (1, 2, 5) if b * 10**e >= raw), default=1000))


def render(
    path: Path,
    ann: dict[str, Any] | None,
    out: Path,
    window: tuple[int, int, int, int] | None = None,
    max_side: int = 760,
) -> Path:
    """Side by side: the middle frame, and each pixel's spread over time (std; a still shows its local
    contrast instead), with the annotation's outline in red and a grid labelled in the frame's own
    pixel coordinates. ``window`` (x0, y0, x1, y1) zooms into part of the frame; each panel is scaled
    to at most ``max_side`` pixels."""
    from scipy import ndimage

    frames = frames_of(path)
    mid = frames[len(frames) // 2]
    if len(frames) > 1:
        spread = frames.astype(np.float32).std(0)
    else:
        f = mid.astype(np.float32)
        spread = np.sqrt(np.maximum(ndimage.uniform_filter(f * f, 5) - ndimage.uniform_filter(f, 5) ** 2, 0))
    spread = np.clip(spread / max(np.percentile(spread, 99), 1e-6) * 255, 0, 255).astype(np.uint8)
    h, w = mid.shape
    x0, y0, x1, y1 = window or (0, 0, w, h)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    scale = min(1.0, max_side / max(x1 - x0, y1 - y0)) if window is None else max_side / max(x1 - x0, y1 - y0)
    size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    edge = outline(ann) if ann is not None else None
    step = _nice_step(max(x1 - x0, y1 - y0))
    panels = []
    for gray in (mid, spread):
        rgb = np.repeat(gray[y0:y1, x0:x1, None], 3, axis=-1)
        img = Image.fromarray(rgb).resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR)
        if edge is not None:
            e = Image.fromarray(edge[y0:y1, x0:x1].astype(np.uint8) * 255).resize(size, Image.BILINEAR)
            e = ndimage.binary_dilation(np.asarray(e) > 0, iterations=1)
            arr = np.asarray(img).copy()
            arr[e] = (255, 0, 0)
            img = Image.fromarray(arr)
        draw = ImageDraw.Draw(img)
        for x in range((x0 // step + 1) * step, x1, step):
            sx = round((x - x0) * scale)
            draw.line([(sx, 0), (sx, size[1])], fill=(0, 140, 255))
            draw.text((sx + 2, 2), str(x), fill=(255, 255, 0))
        for y in range((y0 // step + 1) * step, y1, step):
            sy = round((y - y0) * scale)
            draw.line([(0, sy), (size[0], sy)], fill=(0, 140, 255))
            draw.text((2, sy + 2), str(y), fill=(255, 255, 0))
        panels.append(img)
    both = Image.new("RGB", (2 * size[0] + 10, size[1]), (40, 40, 40))
    both.paste(panels[0], (0, 0))
    both.paste(panels[1], (size[0] + 10, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    both.save(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="the frame and its spread over time, with the annotation's outline")
    r.add_argument("file", type=Path, help="a media file (absolute, or relative to ../shared/data)")
    r.add_argument("--ann", type=Path, help="an annotation JSON to outline")
    r.add_argument("-o", "--out", type=Path, required=True)
    r.add_argument("--window", type=int, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), help="zoom into this box")
    m = sub.add_parser("mask", help="an annotation as a mask PNG")
    m.add_argument("ann", type=Path)
    m.add_argument("-o", "--out", type=Path, required=True)
    opt = ap.parse_args()
    if opt.cmd == "render":
        path = opt.file if opt.file.exists() else DATA / opt.file
        ann = load(opt.ann) if opt.ann else None
        out = render(path, ann, opt.out, tuple(opt.window) if opt.window else None)
        h, w = frames_of(path, 1).shape[1:3]
        print(f"{out} (frame size [H, W] = [{h}, {w}])")
    else:
        Image.fromarray(mask(load(opt.ann)).astype(np.uint8) * 255).save(opt.out)
        print(opt.out)


if __name__ == "__main__":
    main()
