"""The scan-area detector against the hand annotations of ``bench/scan_area/`` (see
``bench/scan_area_truth.py``): IoU per file, the share of the annotated area the detector loses (tissue
no model will see) and the share it adds (background, overlays), for stills and clips separately.

Frames are read as pre-training reads them (gray, up to 32 spread over a clip); the detected mask is
the one ``detect_scan_area`` crops with. Writes ``bench/results/scan_area.json`` (``python
bench/render_docs.py``: the SCAN_AREA section of ``docs/benchmarks.md``) and the picture that section
shows, ``docs/scan_area_overlays.png`` (the worst files: detected outline in yellow, annotated in red;
drawn here, as it needs the data).

    python bench/scan_area.py [--out FILE] [--figure PNG]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scan_area_truth as truth  # noqa: E402
from benchlib import RESULTS, ROOT, command_line, machine_info, write_results  # noqa: E402
from benchlib import SCAN_AREA_TARGETS as TARGETS  # noqa: E402

FIGURE = ROOT / "docs" / "scan_area_overlays.png"


def detected_mask(path: Path) -> tuple[np.ndarray, str, np.ndarray]:
    """(the detector's mask, its shape label, the middle frame) on the frames pre-training would read."""
    from ultrassl.data.readers import probe, read_frames
    from ultrassl.data.sampling import sample_indices_at_fps
    from ultrassl.data.scan_area import detect_scan_area

    info = probe(path)
    idx = sample_indices_at_fps(info.n_frames, info.fps, None, max_frames=32, spread=True)
    frames = read_frames(path, [int(i) for i in idx])
    area = detect_scan_area(frames)
    return area.mask, area.shape, frames[len(frames) // 2]


def score(ann: dict[str, Any], found: np.ndarray) -> dict[str, float]:
    want = truth.mask(ann)
    inter, union = float((want & found).sum()), float((want | found).sum())
    return {
        "iou": inter / union if union else 1.0,
        "lost": float((want & ~found).sum()) / max(float(want.sum()), 1.0),
        "extra": float((found & ~want).sum()) / max(float(found.sum()), 1.0),
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {}
    ious, lost = [r["iou"] for r in rows], [r["lost"] for r in rows]
    out = {
        "files": len(rows),
        "median_iou": statistics.median(ious),
        "min_iou": min(ious),
        "median_lost": statistics.median(lost),
        "below_0.85": sum(i < 0.85 for i in ious),
    }
    out["meets_targets"] = (
        out["median_iou"] >= TARGETS["median_iou"]
        and out["min_iou"] >= TARGETS["min_iou"]
        and out["median_lost"] < TARGETS["median_lost"]
    )
    return out


def overlay(frame: np.ndarray, ann: dict[str, Any], found: np.ndarray, side: int = 300) -> Image.Image:
    from scipy import ndimage

    gray = np.clip(frame * 255, 0, 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    it = max(1, frame.shape[1] // 250)
    for m, color in ((truth.mask(ann), (255, 0, 0)), (found, (255, 220, 0))):
        edge = m & ~ndimage.binary_erosion(m)
        rgb[ndimage.binary_dilation(edge, iterations=it)] = color
    img = Image.fromarray(rgb)
    img.thumbnail((side, side))
    return img


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotations", type=Path, default=truth.ANNOTATIONS)
    ap.add_argument("--out", type=Path, default=RESULTS / "scan_area.json")
    ap.add_argument("--figure", type=Path, default=FIGURE, help="the overlays of the worst files (PNG)")
    opt = ap.parse_args()
    rows, pictures = [], []
    for path in sorted(opt.annotations.glob("*.json")):
        ann = truth.load(path)
        t0 = time.perf_counter()
        found, shape, frame = detected_mask(truth.DATA / ann["file"])
        if list(found.shape) != list(ann["size"]):
            raise SystemExit(f"{path}: annotated size {ann['size']}, decoded frames {list(found.shape)}")
        row = {
            "file": ann["file"],
            "kind": "clip" if Path(ann["file"]).parts[1] == "videos" else "still",
            "annotated": ann["kind"],
            "detected": shape,
            **score(ann, found),
            "seconds": time.perf_counter() - t0,
        }
        rows.append(row)
        pictures.append((row["iou"], overlay(frame, ann, found)))
        print(f"{row['iou']:.3f} lost {row['lost']:.3f} extra {row['extra']:.3f}  {ann['file']}", flush=True)
    res = {
        "machine": machine_info(command=command_line(__file__)),
        "rows": rows,
        "stills": summary([r for r in rows if r["kind"] == "still"]),
        "clips": summary([r for r in rows if r["kind"] == "clip"]),
    }
    write_results(opt.out, res)
    worst = sorted(pictures, key=lambda p: p[0])[:8]
    tile = max(p.size[1] for _, p in worst)
    sheet = Image.new("RGB", (4 * 300, 2 * tile), (30, 30, 30))
    for k, (_, img) in enumerate(worst):
        sheet.paste(img, ((k % 4) * 300, (k // 4) * tile))
    sheet.save(opt.figure)
    for kind in ("stills", "clips"):
        print(kind, json.dumps(res[kind]))


if __name__ == "__main__":
    main()
