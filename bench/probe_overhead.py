"""What the online probe (issue #18) costs a CPU pre-training run at its default settings.

Runs the same ``ultrassl pretrain`` command with and without ``--probe-data``, alternating, ``--rounds``
times each, and writes the wall-clock times (the whole command: start-up, decoding the probe set, every
probe, the pictures both runs draw) into ``bench/results/probe_overhead.json`` (``python
bench/render_docs.py``: the PROBE_OVERHEAD section of docs/benchmarks.md).

    OMP_NUM_THREADS=2 python bench/probe_overhead.py --steps 100 --batch-size 32 --rounds 1 [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import RESULTS, command_line, machine_info, write_results
from pages.probe_overhead import table


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
    p.add_argument("--out", type=Path, default=RESULTS / "probe_overhead.json")
    a = p.parse_args()
    from ultrassl.api import synth

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # ~500 labelled frames at 3 Hz (the probe's default cap is 512): 24 patients x 2 clips + 24 stills
        manifest = synth(
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
        "machine": machine_info(command=command_line(__file__)),
        "command": f"ultrassl pretrain --method {a.method} --preset {a.preset} --max-steps {a.steps} "
        f"--batch-size {a.batch_size} [--probe-data LABELLED.csv]",
        "times_s": times,
        "overhead": probed / base - 1,
        "probes": probes[0],
        "probe_s_total": probes[1],
        "decode_s": decodes,
    }
    print(table(result))
    print(f"wrote {write_results(a.out, result)}")


if __name__ == "__main__":
    main()
