"""What the online probe (issue #18) costs a CPU pre-training run at its default settings.

Runs the same ``ultrassl pretrain`` command with and without ``--probe-data``, alternating, ``--rounds``
times each, and writes the wall-clock times (the whole command: start-up, decoding the probe set, every
probe, the pictures both runs draw) into docs/benchmarks.md and bench/results/probe_overhead.json.

    OMP_NUM_THREADS=2 python bench/probe_overhead.py --steps 100 --batch-size 32 --rounds 1
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import ROOT, machine_info, write_doc_section


def run(
    manifest: Path, out: Path, steps: int, batch: int, probe: bool, preset: str, method: str
) -> tuple[float, float]:
    """(wall-clock seconds of the whole command, seconds it took to decode the probe set)."""
    cmd = [sys.executable, "-m", "ultrassl", "pretrain", "--method", method, "--preset", preset]
    cmd += ["--data", str(manifest), "--out", str(out), "--max-steps", str(steps), "--fresh"]
    cmd += ["--batch-size", str(batch)]
    cmd += ["--set", "train.tensorboard=false"]
    if probe:
        cmd += ["--probe-data", str(manifest)]
    t0 = time.monotonic()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
    seconds = time.monotonic() - t0
    found = re.search(r"decoded in ([0-9.]+) s", done.stderr)
    return seconds, float(found.group(1)) if found else 0.0


def probe_seconds(run_dir: Path) -> tuple[int, float]:
    """(probes, seconds they took in all) from the run's metrics.csv."""
    with (run_dir / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("probe_s")]
    return len(rows), sum(float(r["probe_s"]) for r in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--preset", default="cpu-vit-t112")
    p.add_argument("--method", default="deblur-mae")
    a = p.parse_args()
    from ultrassl.data.synthetic import make_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # ~500 labelled frames at 3 Hz (the probe's default cap is 512): 24 patients x 2 clips + 24 stills
        manifest = make_synthetic_dataset(
            tmp / "data", n_patients=24, clips_per_patient=2, n_frames=32, size=(128, 128), n_lesion_images=24
        )
        times: dict[str, list[float]] = {"without": [], "with": []}
        probes = (0, 0.0)
        decodes: list[float] = []
        for _ in range(a.rounds):
            for name in ("without", "with"):
                out = tmp / f"run-{name}"
                seconds, decode = run(
                    manifest, out, a.steps, a.batch_size, name == "with", a.preset, a.method
                )
                times[name].append(seconds)
                if name == "with":
                    probes = probe_seconds(out)
                    decodes.append(decode)
    base, probed = statistics.median(times["without"]), statistics.median(times["with"])
    result = {
        "machine": machine_info(),
        "command": f"ultrassl pretrain --method {a.method} --preset {a.preset} --max-steps {a.steps} "
        f"--batch-size {a.batch_size} [--probe-data LABELLED.csv]",
        "times_s": times,
        "overhead": probed / base - 1,
        "probes": probes[0],
        "probe_s_total": probes[1],
        "decode_s": decodes,
    }
    out_json = ROOT / "bench" / "results" / "probe_overhead.json"
    out_json.parent.mkdir(exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2))
    m = result["machine"]
    section = "\n".join(
        [
            "## Online probe: what it adds to a CPU pre-training run",
            "",
            f"`OMP_NUM_THREADS={m['omp_num_threads']} python bench/probe_overhead.py --preset {a.preset} "
            f"--method {a.method} --steps {a.steps} --batch-size {a.batch_size} --rounds {a.rounds}` on {m['cpu']} ({m['cores']} cores), torch {m['torch']}, git {m['git']}: "
            f"`{result['command']}` on synthetic data (24 lung patients x 2 clips of 32 frames + 24 lesion "
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
            f"**{100 * result['overhead']:+.1f}%**; the {probes[0]} probes themselves took {probes[1]:.1f} s "
            "in all (`probe_s` in metrics.csv, last round); decoding the probe set once at start-up took "
            f"{statistics.median(decodes):.1f} s (median; {len(decodes)} rounds).",
        ]
    )
    write_doc_section("PROBE_OVERHEAD", section)
    print(section)


if __name__ == "__main__":
    main()
