"""The PROBE_OVERHEAD section of docs/benchmarks.md, from ``bench/probe_overhead.py``'s JSON."""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

from benchlib import read_results


def section(results: Path) -> str | None:
    doc = read_results(results / "probe_overhead.json")
    return table(doc) if doc else None


def bench_command(doc: dict[str, Any]) -> str:
    """The bench's command line: recorded since the split; before, read off the pre-training command it
    timed (the options the bench passed on) and its rounds."""
    if doc["machine"].get("command"):
        return doc["machine"]["command"]
    opt = dict(re.findall(r"--([a-z-]+) (\S+)", doc["command"]))
    return (
        f"python bench/probe_overhead.py --preset {opt['preset']} --method {opt['method']} "
        f"--steps {opt['max-steps']} --batch-size {opt['batch-size']} --rounds {len(doc['times_s']['with'])}"
    )


def table(doc: dict[str, Any]) -> str:
    m, times, decodes = doc["machine"], doc["times_s"], doc["decode_s"]
    omp = f"OMP_NUM_THREADS={m['omp_num_threads']} " if m.get("omp_num_threads") else ""
    return "\n".join(
        [
            "## Online probe: what it adds to a CPU pre-training run",
            "",
            f"`{omp}{bench_command(doc)}` on {m['cpu']} ({m['cores']} cores), torch {m['torch']}, git {m['git']}: "
            f"`{doc['command']}` on synthetic data (24 lung patients x 2 clips of 32 frames + 24 lesion "
            "stills, 128 px; the same manifest is the probe set), alternating runs, median wall-clock time of "
            "the whole command.",
            "",
            "| run | wall-clock s (each round) | median s |",
            "| --- | --- | --- |",
            *(
                f"| {n} probe | {', '.join(f'{t:.1f}' for t in ts)} | {statistics.median(ts):.1f} |"
                for n, ts in times.items()
            ),
            "",
            f"Overhead at the probe's defaults (512-frame cap, k-NN only, at most 10 probes per run and at "
            "most 5% of the training time between them, plus the start and the end): "
            f"**{100 * doc['overhead']:+.1f}%**; the {doc['probes']} probes themselves took "
            f"{doc['probe_s_total']:.1f} s in all (`probe_s` in metrics.csv, last round); decoding the probe "
            f"set once at start-up took {statistics.median(decodes):.1f} s (median; {len(decodes)} rounds).",
            *spread(doc),
        ]
    )


def spread(doc: dict[str, Any]) -> list[str]:
    """The overhead round by round (the noise it stands against) and the probes' own share of a run."""
    without, with_ = doc["times_s"].get("without", []), doc["times_s"].get("with", [])
    if not without or len(without) != len(with_):
        return []
    rounds = ", ".join(f"{100 * (w / wo - 1):+.1f}%" for w, wo in zip(with_, without, strict=True))
    return [
        "",
        f"Round by round (each with-probe run against the run without it beside it): {rounds}. The probes' "
        f"own time is {100 * doc['probe_s_total'] / statistics.median(with_):.1f}% of the median run with "
        "the probe.",
    ]
