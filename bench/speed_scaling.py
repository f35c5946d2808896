"""How the training step scales, fp32, one axis changed at a time from MAE at ViT-T/16, 112 px, batch 32:
model size (ViT-T/S/B), image size (64-224 px), batch (8-64); and UltraMAE's clip length (2-16 frames,
batch 8).

Each row runs in its own subprocess (``benchlib.step_rate``), ``--rounds`` times interleaved; a row
keeps its median round. Writes ``bench/results/speed_scaling.json``; ``python bench/render_docs.py``
puts it in docs/benchmarks.md.

    python bench/speed_scaling.py                      # about 8 minutes on 2 cores
    python bench/speed_scaling.py --quick --out /tmp/speed_scaling.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    run_models,
    run_speed_part,
    synthetic_manifest,
)


def scaling_rows(quick: bool) -> list[dict[str, Any]]:
    """MAE (ViT) step time against model size, image size and batch; UltraMAE against clip length."""
    if quick:
        return [{"method": "mae", "axis": "model", "arch": "vit-t"}]
    rows: list[dict[str, Any]] = [
        {"method": "mae", "axis": "model", "arch": a} for a in ("vit-t", "vit-s", "vit-b")
    ]
    rows += [{"method": "mae", "axis": "image size", "img_size": s} for s in (64, 112, 160, 224)]
    rows += [{"method": "mae", "axis": "batch", "batch": b} for b in (8, 16, 32, 64)]
    rows += [
        {"method": "ultramae", "axis": "clip length", "modality": "videos", "clip_frames": t, "batch": 8}
        for t in (2, 4, 8, 16)
    ]
    return rows


def main() -> None:
    def measure(a: argparse.Namespace) -> list[dict[str, Any]]:
        steps, rounds = (2, 1) if a.quick else (a.steps, a.rounds)
        return run_models(scaling_rows(a.quick), synthetic_manifest(a.work), a.work, steps, a.threads, rounds)

    run_speed_part("scaling", __file__, __doc__, "scaling", measure)


if __name__ == "__main__":
    main()
