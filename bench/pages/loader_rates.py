"""The LOADER_RATES section of docs/benchmarks.md, from ``bench/loader_rates.py``'s JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib import read_results, row_name

from .provenance import bench_command, machine


def section(results: Path) -> str | None:
    doc = read_results(results / "loader_rates.json")
    return table(doc) if doc else None


def table(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    omp = f"OMP_NUM_THREADS={m['omp_num_threads']} " if m.get("omp_num_threads") else ""
    lines = [
        f"## Data at GPU rates: per-core loader rates at {doc['img_size']} px",
        "",
        f"{bench_command(doc, 'python bench/loader_rates.py', omp)} on {machine(m)}, git {m.get('git', 'unknown')}: "
        "each method's "
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
    return "\n".join(lines + reading(doc))


#: a GPU node's CPU cores in the sentence that reads the table
NODE_CORES = 16


def reading(doc: dict[str, Any]) -> list[str]:
    """The table in words, computed from its rows."""
    rows = [r for r in doc["rows"] if r.get("samples_per_s_per_core")]
    if not rows:
        return []
    most = max(rows, key=lambda r: r["cores_for_gpu"])
    n = most["cores_for_gpu"]
    out = [
        "",
        f"At most {n} cores ({row_name(most)}) keep one GPU at {doc['gpu_rate']:,.0f} images/s fed with any "
        f"method, so a node of {NODE_CORES} cores feeds {NODE_CORES // n} GPU{'s' if NODE_CORES // n > 1 else ''} "
        "at that rate with every method, and the per-sample augmentation stays on the CPU.",
    ]
    rate = {r["method"]: r["samples_per_s_per_core"] for r in rows if not r.get("modality")}
    blur = [
        f"{rate[plain] / rate[blurred]:.1f}x"
        for plain, blurred in (("mae", "deblur-mae"), ("convmae", "deblur-convmae"))
        if plain in rate and blurred in rate
    ]
    if blur:
        out.append(
            "The blur of the deblurring methods is the costliest per-sample step: their per-sample work is "
            f"{' and '.join(blur)} that of MAE and ConvMAE. Rows move between runs on this shared machine: "
            "compare them within one run."
        )
    return out
