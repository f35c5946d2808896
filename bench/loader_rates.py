"""Data at GPU rates: each method's per-sample work at 224 px on one CPU core, and the cores a GPU needs.

A ViT-B MAE step on a current GPU eats about 3,000 images/s. The per-step work of each method's
loader (random crop and flip, blur for the deblurring methods, the confidence-map lookup and clip
assembly for UltraMAE, sample-pair generation for USCL; frames come decoded from the memory-mapped
frame store, as in a run) is timed in the main process (0 workers: one core, no worker start-up) at
224 px, and ``3000 / rate`` is the number of cores that keeps one GPU fed. Writes
``bench/results/loader_rates.json`` and the LOADER_RATES section of ``docs/benchmarks.md``.

    OMP_NUM_THREADS=1 python bench/loader_rates.py [--gpu-rate 3000]
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

import speed  # noqa: E402
from benchlib import METHOD_NAMES, ROOT, machine_info, write_doc_section  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "loader_rates.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu-rate", type=float, default=3000.0, help="images/s one GPU consumes")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batches", type=int, default=24)
    ap.add_argument("--no-doc", action="store_true")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = str(speed.synthetic_manifest(Path(tmp)))
        for method, modality in speed.METHODS:
            spec: dict[str, Any] = {
                "method": method,
                "modality": modality,
                "manifest": manifest,
                "work": str(Path(tmp) / f"{method}-{modality}"),
                "workers": 0,
                "img_size": a.img_size,
                "batches": a.batches,
            }
            r = speed.run_one("loader", spec, threads=1)
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
    doc = {"machine": machine_info(), "img_size": a.img_size, "gpu_rate": a.gpu_rate, "rows": rows}
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    if not a.no_doc:
        write_doc_section("LOADER_RATES", section(doc))
    print(section(doc))


def images_per_sample(method: str, modality: str | None) -> float:
    """A sample's share of the GPU's appetite, in images: an UltraMAE clip of T frames over tubelets of
    t costs the encoder T/t images' tokens; a USCL pair is two images; everything else one."""
    if method == "ultramae" and modality == "videos":
        from ultrassl.methods import build_pretrain_config

        cfg = build_pretrain_config(method, speed.PRESETS[method])
        return cfg.ultramae.clip_frames / cfg.ultramae.tubelet
    return 2.0 if method == "uscl" else 1.0


def section(doc: dict[str, Any]) -> str:
    lines = [
        f"## Data at GPU rates: per-core loader rates at {doc['img_size']} px",
        "",
        f"`OMP_NUM_THREADS=1 python bench/loader_rates.py` on {doc['machine']['cpu']}: each method's "
        "per-sample work (crop, flip, blur, confidence lookup, clip assembly, pair generation; frames from "
        "the memory-mapped store) on one core, and the cores that keep a GPU consuming "
        f"{doc['gpu_rate']:,.0f} images/s fed. A sample counts as the images it costs the model: an "
        "UltraMAE clip of T frames over tubelets of t as T/t images (as many tokens before masking; its decoder sees them all), a USCL pair as two.",
        "",
        "| method | samples/s per core | images per sample | cores for one GPU |",
        "| --- | --- | --- | --- |",
    ]
    for r in doc["rows"]:
        name = METHOD_NAMES.get(r["method"], r["method"]) + (f" ({r['modality']})" if r["modality"] else "")
        rate = r.get("samples_per_s_per_core")
        per = r.get("images_per_sample", 1.0)
        lines.append(
            f"| {name} | {rate:.0f} | {per:g} | {r['cores_for_gpu']} |"
            if rate
            else f"| {name} | error | - | - |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
