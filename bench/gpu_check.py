"""One short check of a GPU machine (run by ``bench/gpu_check.sh``; under 8 minutes on one GPU).

1. The CUDA-marked tests (``tests/test_cuda.py``: device placement, autocast dtypes, fp16 with the
   loss scaler, channels-last, ``precision auto``, a 2-process DDP step over NCCL when two GPUs are there).
2. Each method's pre-training step at its paper preset (ViT-B/16 at 224 px for the MAE family and
   ConvMAE's ConvViT-B, ResNet-18 at 224 px for USCL) in bf16: images/s, peak memory, and model-FLOP
   utilisation (the step's matmul and convolution FLOPs, counted by ``torch.utils.flop_counter``, per
   second, over the GPU's dense bf16 peak).
3. Each method's loader at 224 px with N workers, against that step rate: how many workers keep the GPU fed.
4. Confidence maps (UltraMAE's target weights) per frame on the GPU, for a 16-frame 256-px clip.

Without CUDA (or with ``--smoke``) every part runs small on the CPU (tiny images, few steps), so CI
keeps the script working; its figures there mean nothing. Writes ``--out`` (JSON; on a GPU by default
``bench/results/gpu_check.json``, from which ``python bench/render_docs.py`` renders the GPU_CHECK
section of docs/benchmarks.md) and prints a table.

    bash bench/gpu_check.sh                     # on a GPU machine
    bash bench/gpu_check.sh --smoke --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    RESULTS,
    ROOT,
    command_line,
    loader_rate,
    machine_info,
    run_one,
    step_rate,
    synthetic_manifest,
    write_results,
)
from pages.gpu_check import line, table  # noqa: E402

#: method (UltraMAE per modality) -> its paper preset
PAPER_PRESETS = (
    ("mae", None, "mae-vit-b16"),
    ("deblur-mae", None, "deblur-mae-vit-b16"),
    ("ultramae", "images", "ultramae-vit-b16"),
    ("ultramae", "videos", "ultramae-vit-b16"),
    ("convmae", None, "convmae-convvit-b16"),
    ("deblur-convmae", None, "deblur-convmae-convvit-b16"),
    ("uscl", None, "uscl-r18"),
)
#: dense bf16 tensor-core peaks (TFLOP/s, no sparsity) of common training GPUs, by a part of their name
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
    "V100": 125.0,  # fp16 tensor cores (no bf16): the step falls back to fp16 there
}


def peak_tflops(device_name: str) -> float | None:
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):  # "L40S" before "L40" before "L4"
        if key in device_name:
            return PEAK_BF16_TFLOPS[key]
    return None


def cuda_tests(smoke: bool) -> dict[str, Any]:
    """Run the CUDA-marked tests; their counts (on a CPU machine they are all skipped)."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests/test_cuda.py"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    tail = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr.strip()[-200:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", tail)}
    return {"summary": tail, "returncode": out.returncode, **counts, "seconds": time.perf_counter() - t0}


def confidence_rate(device: str, size: int, frames: int) -> dict[str, Any]:
    import numpy as np

    from ultrassl.confidence import confidence_maps
    from ultrassl.data.synthetic import synth_clip

    clip = synth_clip("b_lines", np.random.default_rng(0), (size, size), frames, probe="sector")
    confidence_maps(clip[:2], sector="auto", device=device, batch=2)  # warm-up (plans, kernels)
    t0 = time.perf_counter()
    confidence_maps(clip, sector="auto", device=device, batch=frames)
    seconds = time.perf_counter() - t0
    return {"device": device, "size": size, "frames": frames, "ms_per_frame": 1000 * seconds / frames}


def measure(kind: str, spec: dict[str, Any], threads: int, smoke: bool) -> dict[str, Any]:
    """One step or loader measurement: in a fresh subprocess on a GPU (its own peak memory), in this
    process in smoke mode (the figures are not kept; 21 interpreter start-ups cost CI minutes)."""
    if not smoke:
        return run_one(kind, spec, threads)
    fn = {"step": step_rate, "loader": loader_rate}[kind]
    try:
        return fn(**spec)
    except Exception as exc:  # noqa: BLE001 - reported in the table like a failed subprocess
        return {"error": f"{type(exc).__name__}: {exc}"}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="small, on any device (the default without CUDA)")
    ap.add_argument("--workers", default=None, help="loader worker counts, e.g. 0,2,4,8")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--methods", default=None, help="a subset, e.g. mae,uscl")
    ap.add_argument(
        "--out", type=Path, default=None, help=f"results JSON (default {RESULTS / 'gpu_check.json'} on a GPU)"
    )
    ap.add_argument("--skip-tests", action="store_true")
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    smoke = a.smoke or not cuda
    size = 64 if smoke else 224
    steps = a.steps or (2 if smoke else 10)
    workers = [int(w) for w in (a.workers or ("0,1" if smoke else "0,2,4,8")).split(",")]
    wanted = set(a.methods.split(",")) if a.methods else None
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = None if smoke or not cuda else peak_tflops(device_name)
    doc: dict[str, Any] = {
        "machine": machine_info(command=command_line(__file__)),
        "device": device_name,
        "smoke": smoke,
        "peak_bf16_tflops": peak,
    }
    t_start = time.perf_counter()
    if not a.skip_tests:
        doc["cuda_tests"] = cuda_tests(smoke)
        print(f"CUDA tests: {doc['cuda_tests']['summary']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = str(synthetic_manifest(work))
        rows = []
        for method, modality, preset in PAPER_PRESETS:
            if wanted and method not in wanted:
                continue
            spec: dict[str, Any] = {
                "method": method,
                "modality": modality,
                "manifest": manifest,
                "work": str(work / f"{method}-{modality}"),
                "img_size": size,
                "preset": "tiny" if smoke else preset,
                "batch": 4 if smoke else 64,
                "precision": "bf16" if not cuda or torch.cuda.is_bf16_supported() else "fp16",
                "steps": steps,
                "warmup": 1 if smoke else 3,
                "flops": True,
            }
            if smoke and method in ("convmae", "deblur-convmae"):
                spec["preset"] = "cpu-convvit-t112"
            if smoke and method == "uscl":
                spec["preset"] = "uscl-cpu"
            if smoke and method == "ultramae":
                spec["preset"] = "ultramae-cpu"
            step = measure("step", spec, os.cpu_count() or 1, smoke)
            row: dict[str, Any] = {"method": method, "modality": modality, "preset": spec["preset"], **step}
            if step.get("step_flops") and step.get("step_ms"):
                achieved = step["step_flops"] / (step["step_ms"] / 1000)
                row["tflops"] = achieved / 1e12
                row["mfu"] = achieved / (peak * 1e12) if peak else None
            loaders = {}
            for w in workers:
                lspec = {
                    "method": method,
                    "modality": modality,
                    "manifest": manifest,
                    "work": spec["work"],
                    "workers": w,
                    "preset": spec["preset"],
                    "img_size": size,
                    "batches": 4 if smoke else 24,
                }
                loaders[str(w)] = measure("loader", lspec, 1, smoke).get("samples_per_s")
            row["loader_samples_per_s"] = loaders
            rows.append(row)
            print(line(row), flush=True)
        doc["steps"] = rows
    conf_device = "cuda" if cuda else "cpu"
    doc["confidence"] = confidence_rate(conf_device, 64 if smoke else 256, 4 if smoke else 16)
    print(
        f"confidence maps on {conf_device}: {doc['confidence']['ms_per_frame']:.1f} ms/frame "
        f"({doc['confidence']['frames']} frames of {doc['confidence']['size']} px)"
    )
    doc["seconds"] = time.perf_counter() - t_start
    print(table(doc))
    out = a.out or (None if smoke else RESULTS / "gpu_check.json")
    if out is not None:
        print(f"wrote {write_results(out, doc)}")


if __name__ == "__main__":
    main()
