"""Shortcut check: can the POCUS labels be read off what lies *outside* the scan area?

Burned-in text, logos, rulers and calipers differ by source video, and so by class. If a probe on the
pixels outside the detected area alone classifies well, a model that sees them (crop off, or a crop that
keeps overlays) can score without looking at tissue. For each labelled POCUS file, up to 8 frames spread
over it are read, the scan area is detected as pre-training detects it, and three 32x32 views of each
frame are made: the whole frame, the area only (outside zeroed), the outside only (area zeroed) and the
area's shape alone (its mask: a crop keeps it, and it tells probes, depths and sources apart). A
logistic regression on each view is scored on the data's own patient-grouped ``fold`` column (train on
four folds, test on the fifth); accuracy per frame and per file (mean of its frames' probabilities).
Chance is the majority class.

    python bench/scan_area_shortcut.py [--out FILE]     # -> bench/results/scan_area_shortcut.json

``python bench/render_docs.py`` renders the SCAN_AREA_SHORTCUT section of docs/benchmarks.md from it.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import DATA, RESULTS, command_line, machine_info, write_results  # noqa: E402

VIEWS = ("whole", "area", "outside", "shape")
SIDE = 32


def views_of(path: Path, frames_per_file: int) -> tuple[dict[str, np.ndarray], float]:
    """The three views ``[T, SIDE*SIDE]`` of a file's frames, and the share of the frame outside the area."""
    import torch
    import torch.nn.functional as F

    from ultrassl.data.readers import probe, read_frames
    from ultrassl.data.sampling import sample_indices_at_fps
    from ultrassl.data.scan_area import detect_scan_area

    info = probe(path)
    detect_idx = sample_indices_at_fps(info.n_frames, info.fps, None, max_frames=32, spread=True)
    frames = read_frames(path, [int(i) for i in detect_idx])
    area = detect_scan_area(frames)  # on the frames pre-training would read
    keep = np.linspace(0, len(frames) - 1, min(frames_per_file, len(frames))).round().astype(int)
    chosen = frames[keep]
    inside = area.mask.astype(np.float32)
    stacks = {
        "whole": chosen,
        "area": chosen * inside,
        "outside": chosen * (1 - inside),
        "shape": np.repeat(inside[None], len(chosen), axis=0),  # the outline alone: probe, depth, source
    }
    out = {}
    for name, stack in stacks.items():
        t = torch.from_numpy(np.ascontiguousarray(stack, np.float32))[:, None]
        out[name] = F.adaptive_avg_pool2d(t, SIDE).flatten(1).numpy()
    return out, float(1 - inside.mean())


def grouped_scores(x: np.ndarray, y: np.ndarray, fold: np.ndarray, file_id: np.ndarray) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame_hits, file_hits, files = 0, 0, 0
    for k in np.unique(fold):
        test = fold == k
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
        clf.fit(x[~test], y[~test])
        prob = clf.predict_proba(x[test])
        pred = clf.classes_[prob.argmax(1)]
        frame_hits += int((pred == y[test]).sum())
        for f in np.unique(file_id[test]):
            sel = file_id[test] == f
            file_hits += int(clf.classes_[prob[sel].mean(0).argmax()] == y[test][sel][0])
            files += 1
    return {"frame_accuracy": frame_hits / len(y), "file_accuracy": file_hits / files}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--frames-per-file", type=int, default=8)
    ap.add_argument("--out", type=Path, default=RESULTS / "scan_area_shortcut.json")
    opt = ap.parse_args()
    rows = list(csv.DictReader((opt.data / "pocus" / "manifest.csv").open()))
    feats: dict[str, list[np.ndarray]] = {v: [] for v in VIEWS}
    labels, folds, files, outside_share = [], [], [], []
    for i, row in enumerate(rows):
        views, share = views_of(opt.data / row["path"], opt.frames_per_file)
        n = len(views["whole"])
        for v in VIEWS:
            feats[v].append(views[v])
        labels += [row["class"]] * n
        folds += [int(row["fold"])] * n
        files += [i] * n
        outside_share.append(share)
    y, fold, file_id = np.array(labels), np.array(folds), np.array(files)
    classes, counts = np.unique([r["class"] for r in rows], return_counts=True)
    res: dict[str, Any] = {
        "machine": machine_info(command=command_line(__file__)),
        "files": len(rows),
        "frames": len(y),
        "chance_file_accuracy": float(counts.max() / counts.sum()),
        "median_outside_share": float(np.median(outside_share)),
        "views": {v: grouped_scores(np.concatenate(feats[v]), y, fold, file_id) for v in VIEWS},
    }
    print(json.dumps(res["views"], indent=1), "chance", res["chance_file_accuracy"])
    print(f"wrote {write_results(opt.out, res)}")


if __name__ == "__main__":
    main()
