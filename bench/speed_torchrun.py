"""1 vs 2 processes on the CPU: MAE ViT-T/16 at 112 px, global batch 64, one process with 2 threads
against 2 processes (torchrun, gloo) with 1 thread and batch 32 each; the median ``samples_per_s`` a
plain ``ultrassl pretrain`` logs, and its wall time with start-up.

Writes ``bench/results/speed_torchrun.json``; ``python bench/render_docs.py`` puts it in
docs/benchmarks.md.

    python bench/speed_torchrun.py                     # about a minute on 2 cores
    python bench/speed_torchrun.py --quick --out /tmp/speed_torchrun.json
"""

from __future__ import annotations

import csv
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    run_speed_part,
    synthetic_manifest,
)


def torchrun_rates(manifest: Path, work: Path, steps: int) -> list[dict[str, Any]]:
    """MAE ViT-T 112, global batch 64: one process with 2 threads vs 2 processes (gloo) with 1 thread."""
    rows: list[dict[str, Any]] = []
    for procs in (1, 2):
        run = work / f"torchrun{procs}"
        shutil.rmtree(run, ignore_errors=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(2 // procs), "PYTHONWARNINGS": "ignore"}
        launcher = [sys.executable, "-m", "ultrassl"]
        if procs > 1:
            launcher = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={procs}",
            ]
            launcher += ["-m", "ultrassl"]
        cmd = [*launcher, "pretrain", "--method", "mae", "--preset", "cpu-vit-t112", "--data", str(manifest)]
        cmd += ["--out", str(run), "--max-steps", str(steps), "--batch-size", str(64 // procs)]
        cmd += ["--device", "cpu", "--precision", "fp32", "--set", "train.log_every=2"]
        cmd += ["--set", "train.tensorboard=false", "--set", f"data.frame_cache={work / 'frame_store'}"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            rows.append({"processes": procs, "error": " | ".join(proc.stderr.strip().splitlines()[-3:])})
            continue
        with open(run / "metrics.csv") as f:
            rates = [float(r["samples_per_s"]) for r in csv.DictReader(f) if r.get("samples_per_s")]
        rate = statistics.median(rates[2:] or rates)
        rows.append({"processes": procs, "threads_each": 2 // procs, "samples_per_s": rate, "wall_s": wall})
        print(f"  torchrun {procs} process(es): {rate:.1f} samples/s", flush=True)
    return rows


def main() -> None:
    run_speed_part(
        "torchrun",
        __file__,
        __doc__,
        "torchrun",
        lambda a: torchrun_rates(synthetic_manifest(a.work), a.work, 10 if a.quick else 30),
    )


if __name__ == "__main__":
    main()
