"""Speed, every part in one go (``make bench``): each part is a script of its own, run here one after the
other with the same options, each writing its JSON under ``--out-dir``.

    defaults   bench/speed_defaults.py   the defaults against today's path (MAE headline; UltraMAE, USCL)
    step       bench/speed_step.py       every method's training step, fp32 and each speed option alone
    scaling    bench/speed_scaling.py    step time against model size, image size, batch, clip length
    data       bench/speed_loader.py     per-step loaders with N workers, against the model's step
               bench/speed_decode.py     start-up decoding of mp4 and DICOM, the memory-mapped frame store
    torchrun   bench/speed_torchrun.py   1 vs 2 processes under torchrun

Then ``python bench/render_docs.py`` writes the figures into docs/benchmarks.md.

    python bench/speed.py                      # everything (about 25 minutes on 2 cores)
    python bench/speed.py --parts step,scaling # some parts only
    python bench/speed.py --quick --out-dir /tmp/speed   # a smoke run: few steps, few rows
    python bench/speed.py --parts step --methods mae,convmae  # some methods' step rows (merged in)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: part -> its scripts
PARTS = {
    "defaults": ("speed_defaults",),
    "step": ("speed_step",),
    "scaling": ("speed_scaling",),
    "data": ("speed_loader", "speed_decode"),
    "torchrun": ("speed_torchrun",),
}


def commands(a: argparse.Namespace, parts: list[str]) -> list[list[str]]:
    """The scripts to run, each with the options given here that it takes (the others keep its defaults,
    so the command each records is the one that matters)."""
    common: list[str] = ["--quick"] if a.quick else []
    for flag in ("steps", "threads", "rounds", "work"):
        if getattr(a, flag) is not None:
            common += [f"--{flag}", str(getattr(a, flag))]
    out = []
    for part in parts:
        for script in PARTS[part]:
            cmd = [sys.executable, str(HERE / f"{script}.py"), *common]
            if a.out_dir is not None:
                cmd += ["--out", str(a.out_dir / f"{script}.json")]
            if part in ("step", "defaults") and a.methods:
                cmd += ["--methods", a.methods]
            if part == "step" and a.options:
                cmd += ["--options", a.options]
            out.append(cmd)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default=",".join(PARTS), help=",".join(PARTS))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--methods", default="", help="step and defaults parts: these methods' rows, merged in")
    p.add_argument("--options", default="", help="step part: these option rows (e.g. 'fp32,bf16 autocast')")
    p.add_argument("--steps", type=int, help="timed optimiser steps per row (after 2 warm-up; default 6)")
    p.add_argument("--threads", type=int, help="torch threads of the model rows (default 2)")
    p.add_argument("--rounds", type=int, help="interleaved repeats of every model row (default 3)")
    p.add_argument("--work", type=Path, help="synthetic data, frame store, runs (default bench/work/speed)")
    p.add_argument(
        "--out-dir", type=Path, help="where each part writes speed_<part>.json (default bench/results)"
    )
    a = p.parse_args()
    parts = [s for s in a.parts.split(",") if s]
    unknown = set(parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    failed = []
    for cmd in commands(a, parts):
        print("$", " ".join(cmd[1:]), flush=True)
        if subprocess.run(cmd).returncode != 0:
            failed.append(Path(cmd[1]).name)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")
    print("render the pages: python bench/render_docs.py")


if __name__ == "__main__":
    main()
