"""The GPU_CHECK section of docs/benchmarks.md, from ``bench/gpu_check.py``'s JSON on a GPU machine
(``bench/results/gpu_check.json``; a smoke run's figures mean nothing and are never rendered), and the
table it prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib import read_results, row_name

from .provenance import made_by


def section(results: Path) -> str | None:
    doc = read_results(results / "gpu_check.json")
    return page(doc) if doc and not doc.get("smoke") else None


def num(x: float | None, fmt: str = ".0f") -> str:
    return "-" if x is None else format(x, fmt)


def line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['method']}: error {r['error']}"
    return (
        f"{r['method']}{'/' + r['modality'] if r['modality'] else ''}: {r['samples_per_s']:.1f} samples/s, "
        f"peak {r['peak_memory_mb']:.0f} MiB, MFU {num(r.get('mfu'), '.1%')}"
    )


def table(doc: dict[str, Any]) -> str:
    workers = sorted({w for r in doc["steps"] for w in r.get("loader_samples_per_s", {})}, key=int)
    head = "| method | preset | step samples/s | peak MiB | TFLOP/s | MFU | " + " | ".join(
        f"loader {w} workers" for w in workers
    )
    lines = [head + " |", "|" + " --- |" * (6 + len(workers))]
    for r in doc["steps"]:
        name = row_name(r)
        if "error" in r:
            lines.append(f"| {name} | {r['preset']} | error: {r['error'][:80]} |")
            continue
        loaders = " | ".join(num(r["loader_samples_per_s"].get(w), ".0f") for w in workers)
        lines.append(
            f"| {name} | `{r['preset']}` | {r['samples_per_s']:.1f} | {r['peak_memory_mb']:.0f} | "
            f"{num(r.get('tflops'), '.1f')} | {num(r.get('mfu'), '.1%')} | {loaders} |"
        )
    return "\n".join(lines)


def page(doc: dict[str, Any]) -> str:
    tests = doc.get("cuda_tests", {}).get("summary", "not run")
    return "\n".join(
        [
            f"## GPU check: {doc['device']}",
            "",
            f"`bash bench/gpu_check.sh` ({doc['seconds'] / 60:.1f} min). {made_by(doc)} CUDA tests: {tests}. "
            "Each method's "
            "step at its paper preset, 224 px, batch 64, bf16; MFU against a dense bf16 peak of "
            f"{num(doc['peak_bf16_tflops'])} TFLOP/s; loaders in samples/s per worker count (one CPU "
            "thread each) at 224 px.",
            "",
            table(doc),
            "",
            f"Confidence maps on the GPU: {doc['confidence']['ms_per_frame']:.1f} ms/frame "
            f"({doc['confidence']['frames']}-frame clip, {doc['confidence']['size']} px).",
        ]
    )
