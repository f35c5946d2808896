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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import ROOT, machine_info, write_doc_section


def run(manifest: Path, out: Path, steps: int, batch: int, probe: bool, preset: str, method: str) -> float:
    cmd = [sys.executable, "-m", "ultrassl", "pretrain", "--method", method, "--preset", preset]
    cmd += ["--data", str(manifest), "--out", str(out), "--max-steps", str(steps), "--fresh"]
    cmd += ["--batch-size", str(batch)]
    cmd += ["--set", "train.tensorboard=false"]
    if probe:
        cmd += ["--probe-data", str(manifest)]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
    return time.monotonic() - t0


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
        for _ in range(a.rounds):
            for name in ("without", "with"):
                out = tmp / f"run-{name}"
                times[name].append(
                    run(manifest, out, a.steps, a.batch_size, name == "with", a.preset, a.method)
                )
                if name == "with":
                    probes = probe_seconds(out)
    base, probed = statistics.median(times["without"]), statistics.median(times["with"])
    result = {
        "machine": machine_info(),
        "command": f"ultrassl pretrain --method {a.method} --preset {a.preset} --max-steps {a.steps} "
        f"--batch-size {a.batch_size} [--probe-data LABELLED.csv]",
        "times_s": times,
        "overhead": probed / base - 1,
        "probes": probes[0],
        "probe_s_total": probes[1],
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
            "in all (`probe_s` in metrics.csv); the rest is decoding the probe set once at start-up.",
        ]
    )
    write_doc_section("PROBE_OVERHEAD", section)
    print(section)


if __name__ == "__main__":
    main()
