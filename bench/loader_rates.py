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
            row = {
                "method": method,
                "modality": modality,
                "samples_per_s_per_core": rate,
                "cores_for_gpu": math.ceil(a.gpu_rate / rate) if rate else None,
                **({"error": r["error"]} if "error" in r else {}),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    doc = {"machine": machine_info(), "img_size": a.img_size, "gpu_rate": a.gpu_rate, "rows": rows}
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    if not a.no_doc:
        write_doc_section("LOADER_RATES", section(doc))
    print(section(doc))


def section(doc: dict[str, Any]) -> str:
    lines = [
        f"## Data at GPU rates: per-core loader rates at {doc['img_size']} px",
        "",
        f"`OMP_NUM_THREADS=1 python bench/loader_rates.py` on {doc['machine']['cpu']}: each method's "
        "per-sample work (crop, flip, blur, confidence lookup, clip assembly, pair generation; frames from "
        "the memory-mapped store) on one core, and the cores that keep a GPU consuming "
        f"{doc['gpu_rate']:,.0f} images/s fed (samples for UltraMAE clips and USCL pairs).",
        "",
        "| method | samples/s per core | cores for one GPU |",
        "| --- | --- | --- |",
    ]
    for r in doc["rows"]:
        name = METHOD_NAMES.get(r["method"], r["method"]) + (f" ({r['modality']})" if r["modality"] else "")
        rate = r.get("samples_per_s_per_core")
        lines.append(f"| {name} | {rate:.0f} | {r['cores_for_gpu']} |" if rate else f"| {name} | error | - |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
