"""The STEP_PROFILE section of docs/benchmarks.md: where a MAE step's time goes, from
``bench/step_profile.py``'s JSON (the loop's pieces timed around its real loader)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib import read_results

from .provenance import machine

#: the loop's pieces, in the order a step runs them, and how the table names them
PARTS = {
    "data": "data (main process)",
    "forward": "forward",
    "backward": "backward",
    "clip": "gradient clip",
    "optimiser": "optimiser",
}


def section(results: Path) -> str | None:
    doc = read_results(results / "step_profile.json")
    return table(doc) if doc else None


def bench_command(doc: dict[str, Any]) -> str:
    """The recorded command line; before the script recorded it, its options read off the figures'
    settings (all of them are in the JSON)."""
    m = doc["machine"]
    omp = f"OMP_NUM_THREADS={m['omp_num_threads']} " if m.get("omp_num_threads") else ""
    if m.get("command"):
        return f"`{omp}{m['command']}`"
    return (
        f"`{omp}python bench/step_profile.py --method {doc['method']} --precision {doc['precision']} "
        f"--fused-optim {str(doc['fused_optim']).lower()} --in-chans {doc['in_chans']} "
        f"--host-allocator {doc['host_allocator']} --steps {doc['steps']}` (options read off the JSON's "
        "settings: it predates the command line in it)"
    )


def table(doc: dict[str, Any]) -> str:
    m, ms = doc["machine"], doc["ms"]
    step = ms["step"]
    lines = [
        "### Where a MAE step's time goes (profile)",
        "",
        f"{bench_command(doc)} at git {m.get('git', 'unknown')} on {machine(m)}: {doc['method'].upper()} at "
        f"ViT-T/16 + 128x2 decoder, 112 px, batch 32, {doc['in_chans']} channels, {doc['precision']} "
        f"(under CPU autocast the loop's explicit attention), {'fused' if doc['fused_optim'] else 'per-tensor'} "
        f"AdamW, the {doc['host_allocator']} host allocator. The training loop's own pieces are timed around "
        f"its real loader: {doc['steps']} steps after 3 of warm-up, median of each piece (so the pieces need "
        "not add up to the step); page faults are the process's minor faults per timed step.",
        "",
        "| part | ms | share of the step |",
        "| --- | --- | --- |",
        *(
            f"| {name} | {ms[key]:.1f} | {100 * ms[key] / step:.0f}% |"
            for key, name in PARTS.items()
            if key in ms
        ),
        f"| step | {step:.0f} ({doc['samples_per_s']:.0f} samples/s) | |",
        f"| page faults per step | {doc['page_faults_per_step']:,.0f} | |",
        "",
        "`--ops` prints a `torch.profiler` table of 5 bare steps besides (not kept in the JSON). The same "
        "step on today's path (fp32, per-tensor AdamW, glibc's allocator as started) is the *baseline* row "
        "of the defaults table above, set against these speed-ups side by side.",
    ]
    return "\n".join(lines)
