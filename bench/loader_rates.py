"""Data at GPU rates: each method's per-sample work at 224 px on one CPU core, and the cores a GPU needs.

A ViT-B MAE step on a current GPU eats about 3,000 images/s. The per-step work of each method's
loader (random crop and flip, blur for the deblurring methods, the confidence-map lookup and clip
assembly for UltraMAE, sample-pair generation for USCL; frames come decoded from the memory-mapped
frame store, as in a run) is timed in the main process (0 workers: one core, no worker start-up) at
224 px, and ``3000 / rate`` is the number of cores that keeps one GPU fed. Writes
``bench/results/loader_rates.json`` (``python bench/render_docs.py``: the LOADER_RATES section of
docs/benchmarks.md).

    OMP_NUM_THREADS=1 python bench/loader_rates.py [--gpu-rate 3000] [--out FILE]
    OMP_NUM_THREADS=1 python bench/loader_rates.py --quick --out /tmp/loader_rates.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    METHODS,
    PRESETS,
    RESULTS,
    command_line,
    machine_info,
    run_one,
    synthetic_manifest,
    write_results,
)
from pages.loader_rates import table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu-rate", type=float, default=3000.0, help="images/s one GPU consumes")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batches", type=int, default=24)
    ap.add_argument("--quick", action="store_true", help="MAE only, 4 batches: a smoke run")
    ap.add_argument("--out", type=Path, default=RESULTS / "loader_rates.json")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = str(synthetic_manifest(Path(tmp)))
        for method, modality in METHODS[:1] if a.quick else METHODS:
            spec: dict[str, Any] = {
                "method": method,
                "modality": modality,
                "manifest": manifest,
                "work": str(Path(tmp) / f"{method}-{modality}"),
                "workers": 0,
                "img_size": a.img_size,
                "batches": 4 if a.quick else a.batches,
            }
            r = run_one("loader", spec, threads=1)
            rate = r.get("samples_per_s")
            per_sample = images_per_sample(method, modality)
            row = {
                "method": method,
                "modality": modality,
                "samples_per_s_per_core": rate,
                "images_per_sample": per_sample,
                "cores_for_gpu": math.ceil(a.gpu_rate / (rate * per_sample)) if rate else None,
                **({"error": r["error"]} if "error" in r else {}),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    machine = machine_info(command=command_line(__file__))
    doc = {"machine": machine, "img_size": a.img_size, "gpu_rate": a.gpu_rate, "rows": rows}
    print(table(doc))
    print(f"wrote {write_results(a.out, doc)}")


def images_per_sample(method: str, modality: str | None) -> float:
    """A sample's share of the GPU's appetite, in images: an UltraMAE clip of T frames over tubelets of
    t costs the encoder T/t images' tokens; a USCL pair is two images; everything else one."""
    if method == "ultramae" and modality == "videos":
        from ultrassl.methods import build_pretrain_config

        cfg = build_pretrain_config(method, PRESETS[method])
        return cfg.ultramae.clip_frames / cfg.ultramae.tubelet
    return 2.0 if method == "uscl" else 1.0


if __name__ == "__main__":
    main()
