"""The LOADER_RATES section of docs/benchmarks.md, from ``bench/loader_rates.py``'s JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib import read_results, row_name


def section(results: Path) -> str | None:
    doc = read_results(results / "loader_rates.json")
    return table(doc) if doc else None


def table(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    omp = f"OMP_NUM_THREADS={m['omp_num_threads']} " if m.get("omp_num_threads") else ""
    lines = [
        f"## Data at GPU rates: per-core loader rates at {doc['img_size']} px",
        "",
        f"`{omp}{m.get('command', 'python bench/loader_rates.py')}` on {m['cpu']}: each method's "
        "per-sample work (crop, flip, blur, confidence lookup, clip assembly, pair generation; frames from "
        "the memory-mapped store) on one core, and the cores that keep a GPU consuming "
        f"{doc['gpu_rate']:,.0f} images/s fed. A sample counts as the images it costs the model: an "
        "UltraMAE clip of T frames over tubelets of t as T/t images (as many tokens before masking; its decoder sees them all), a USCL pair as two.",
        "",
        "| method | samples/s per core | images per sample | cores for one GPU |",
        "| --- | --- | --- | --- |",
    ]
    for r in doc["rows"]:
        name = row_name(r)
        rate = r.get("samples_per_s_per_core")
        per = r.get("images_per_sample", 1.0)
        lines.append(
            f"| {name} | {rate:.0f} | {per:g} | {r['cores_for_gpu']} |"
            if rate
            else f"| {name} | error | - | - |"
        )
    return "\n".join(lines)
