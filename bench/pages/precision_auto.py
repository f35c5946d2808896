"""The PRECISION_AUTO section of docs/benchmarks.md, from ``bench/precision_auto.py``'s JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib import read_results, row_name


def section(results: Path) -> str | None:
    doc = read_results(results / "precision_auto.json")
    return table(doc) if doc else None


def table(doc: dict[str, Any]) -> str:
    lines = [
        "## `--precision auto`: chosen by measurement",
        "",
        f"`{doc['machine'].get('command', 'python bench/precision_auto.py')}` on {doc['machine']['cpu']} ({doc['machine'].get('omp_num_threads') or doc['machine'].get('torch_threads', '?')} "
        "threads): each method's CPU preset at batch 32, 112 px. *auto*: what the loop's probe picked on "
        "the first batch (its own figures beside it); then the loop's step timed in fp32 and bf16, "
        f"interleaved, median of {doc['rounds']} rounds; *auto / best*: the chosen precision's rate over "
        "the faster one (1.00: it chose the faster; the rounds differ from each other by a few %).",
        "",
        "| method | probe: fp32 / bf16 samples/s | auto | probe s | step fp32 | step bf16 | auto / best |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in doc["rows"]:
        name = row_name(r)
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:80]} | | | | | |")
            continue
        p, s = r["probe_samples_per_s"], r["samples_per_s"]
        lines.append(
            f"| {name} | {p.get('fp32', 0):.0f} / {p.get('bf16', 0):.0f} | {r['auto']} | "
            f"{r['probe_seconds']:.1f} | {s.get('fp32', 0):.0f} | {s.get('bf16', 0):.0f} | "
            f"{r['auto_over_best']:.2f} |"
        )
    return "\n".join(lines)
