"""The PRECISION_AUTO section of docs/benchmarks.md, from ``bench/precision_auto.py``'s JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib import read_results, row_name

from .provenance import bench_command, machine


def section(results: Path) -> str | None:
    doc = read_results(results / "precision_auto.json")
    return table(doc) if doc else None


def table(doc: dict[str, Any]) -> str:
    lines = [
        "## `--precision auto`: chosen by measurement",
        "",
        f"{bench_command(doc, 'python bench/precision_auto.py')} on {machine(doc['machine'])} "
        f"({doc['machine'].get('omp_num_threads') or doc['machine'].get('torch_threads', '?')} threads), "
        f"git {doc['machine'].get('git', 'unknown')}: each method's CPU preset at batch 32, 112 px. *auto*: what the loop's probe picked on "
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
    return "\n".join(lines + reading(doc))


#: pairs of presets that train the same network on the same batch shape (the blur is in the loader), so
#: the difference between their rows is the machine's noise
SAME_NETWORK = (("mae", "deblur-mae"), ("convmae", "deblur-convmae"))


def reading(doc: dict[str, Any]) -> list[str]:
    """How to read the table, in words computed from its rows."""
    rows = {(r["method"], r.get("modality")): r for r in doc["rows"] if "error" not in r}
    if not rows:
        return []
    out = ["", "How to read it:", ""]
    for a, b in SAME_NETWORK:
        ra, rb = rows.get((a, None)), rows.get((b, None))
        if not (ra and rb):
            continue
        spread = max(
            abs(ra["samples_per_s"][p] - rb["samples_per_s"][p])
            / max(ra["samples_per_s"][p], rb["samples_per_s"][p])
            for p in ("fp32", "bf16")
        )
        out.append(
            f"- {row_name(ra)} and {row_name(rb)} train the same network on the same batch shape, so the "
            f"spread between their rows is this machine's noise: {ra['samples_per_s']['fp32']:.0f} vs "
            f"{rb['samples_per_s']['fp32']:.0f} samples/s in fp32, {ra['samples_per_s']['bf16']:.0f} vs "
            f"{rb['samples_per_s']['bf16']:.0f} in bf16 ({100 * spread:.0f}% apart at most)."
        )
    best = [r for r in rows.values() if r["auto_over_best"] >= 1.0]
    worst = min(rows.values(), key=lambda r: r["auto_over_best"])
    out.append(
        f"- `auto` chose the faster precision of the timed steps on {len(best)} of {len(rows)} presets"
        + (
            "."
            if len(best) == len(rows)
            else f"; the worst choice, {row_name(worst)}, ran at {worst['auto_over_best']:.2f} of the faster."
        )
    )
    ratios = {row_name(r): r["samples_per_s"]["bf16"] / r["samples_per_s"]["fp32"] for r in rows.values()}
    out.append(
        "- bf16 against fp32 in these timed steps: "
        + ", ".join(f"{name} {ratio:.2f}x" for name, ratio in sorted(ratios.items(), key=lambda x: x[1]))
        + ". Side by side in one process, step by step, the same comparison is the *bf16 autocast* column of "
        "the defaults tables above."
    )
    return out
