"""Speed, side by side in one run: every method's training step (fp32 / bf16, torch.compile, fused
attention, channels-last), how step time scales (model size, image size, batch, clip length), the data
pipeline against the model's appetite (decoding mp4 and DICOM with N workers, the memory-mapped frame
store, the per-step loader), and 1 vs 2 processes under torchrun.

Each model configuration runs in its own subprocess (so peak memory is its own) on the same synthetic
data; all rows of one invocation share the machine and the moment. Writes ``bench/results/speed.json``
and the SPEED_* sections of ``docs/benchmarks.md``.

    python bench/speed.py                      # everything (about 25 minutes on 2 cores)
    python bench/speed.py --parts step,scaling # some parts only (step, scaling, data, torchrun)
    python bench/speed.py --quick              # a smoke run: few steps, few rows
    python bench/speed.py --parts step --methods mae,convmae  # some methods' step rows (merged in)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import METHOD_NAMES, machine_info, write_doc_section

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "work" / "speed"
RESULTS = ROOT / "bench" / "results" / "speed.json"
POCUS = ROOT.parent / "shared" / "data" / "pocus"
PRESETS = {
    "mae": "cpu-vit-t112",
    "deblur-mae": "cpu-vit-t112",
    "ultramae": "ultramae-cpu",
    "convmae": "cpu-convvit-t112",
    "deblur-convmae": "cpu-convvit-t112",
    "uscl": "uscl-cpu",
}
#: methods on ConvMAE's hybrid encoder (their preset's ConvViT-T, not ``arch``)
CONVVIT_METHODS = ("convmae", "deblur-convmae")
ARCHS = {"vit-t": "vit_tiny_patch16_224", "vit-s": "vit_small_patch16_224", "vit-b": "vit_base_patch16_224"}
PARTS = ("defaults", "step", "scaling", "data", "torchrun")
#: every method (UltraMAE per modality) whose training step and data loader are measured; each loader
#: is set against its own model's fp32 step rate
METHODS = (
    ("mae", None),
    ("deblur-mae", None),
    ("ultramae", "images"),
    ("ultramae", "videos"),
    ("convmae", None),
    ("deblur-convmae", None),
    ("uscl", None),
)


# ----------------------------------------------------------------------------------------------------
# data shared by every row


def synthetic_manifest(work: Path) -> Path:
    """Synthetic clips and stills (written once): a batch of 32 of any method (USCL: 32 videos + stills)."""
    from ultrassl.data.synthetic import make_synthetic_dataset

    manifest = work / "synth" / "manifest.csv"
    if not manifest.exists():
        make_synthetic_dataset(
            work / "synth",
            n_patients=16,
            clips_per_patient=2,
            n_frames=96,
            size=(128, 128),
            n_lesion_images=40,
        )
    return manifest


# ----------------------------------------------------------------------------------------------------
# one model configuration (runs in a subprocess)


def build_trainer(
    method: str,
    manifest: str,
    work: str,
    run_dir: str,
    *,
    preset: str | None = None,
    arch: str | None = None,
    img_size: int = 112,
    batch: int = 32,
    precision: str = "fp32",
    fused_optim: bool | None = None,
    modality: str | None = None,
    clip_frames: int | None = None,
    in_chans: int | None = None,
    dense_stages: bool = False,
    train: dict[str, Any] | None = None,
) -> Any:
    """A set-up ``Trainer`` of the method at its CPU preset (or ``preset``) on the bench's data, seeded
    model, ``auto`` precision settled on the first batch as ``fit()`` does; ``train``: more
    ``train.*`` options (unset ones keep the loop's defaults)."""
    import torch

    from ultrassl.api import build_model, build_pretrain_data, prepare_config
    from ultrassl.host_allocator import set_host_allocator
    from ultrassl.methods import build_pretrain_config
    from ultrassl.training import Trainer

    overrides = [f"encoder.img_size=[{img_size},{img_size}]"]
    if arch is not None:
        overrides.append(f"encoder.arch={ARCHS[arch]}")
    if modality:
        overrides.append(f"ultramae.modality={modality}")
    if clip_frames:
        overrides.append(f"ultramae.clip_frames={clip_frames}")
    if in_chans:
        overrides.append(f"encoder.in_chans={in_chans}")
    flags = {
        "optim": {"fused": fused_optim},
        "data": {"manifest": manifest, "frame_cache": str(Path(work) / "frame_store")},
        "train": {
            "batch_size": batch,
            "precision": precision,
            "tensorboard": False,
            "max_steps": 10**6,
            **(train or {}),
        },
    }
    cfg = build_pretrain_config(method, preset or PRESETS[method], flags=flags, overrides=overrides)
    prepare_config(cfg)
    set_host_allocator(cfg.train.host_allocator)  # as ``ultrassl pretrain`` does: process-wide
    torch.manual_seed(0)
    model = build_model(cfg)
    if dense_stages:  # ConvMAE's reference computation: stages 1-2 over masked patches too
        model.encoder.skip_masked = False
    dataset = build_pretrain_data(cfg, progress=False).train
    trainer = Trainer(model, dataset, optim=cfg.optim, train=cfg.train, run_dir=run_dir, config={})
    trainer.prepare()  # auto: the loop's own choice, measured on the first batch, with its kernel
    return trainer


def step_rate(
    method: str,
    manifest: str,
    work: str,
    *,
    arch: str = "vit-t",
    img_size: int = 112,
    batch: int = 32,
    precision: str = "fp32",
    compile: bool = False,
    fused_attn: bool = True,
    channels_last: str = "off",
    dense_stages: bool = False,
    modality: str | None = None,
    clip_frames: int | None = None,
    steps: int = 6,
    warmup: int = 2,
    preset: str | None = None,
    flops: bool = False,
    in_chans: int | None = None,
    fused_optim: bool | None = None,
    host_allocator: str = "tuned",
    **_: Any,
) -> dict[str, Any]:
    """Samples/s of the training loop's own optimiser step (``Trainer._train_step``: forward, backward,
    AdamW/Adam, autocast and grad-scaling as configured) on one real batch of the method's data set,
    repeated; data loading is measured apart (``loader_rate``)."""
    import itertools

    import torch

    train = {
        "compile": compile,
        "fused_attn": fused_attn,
        "channels_last": channels_last,
        "device": "auto",
        "host_allocator": host_allocator,
    }
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = build_trainer(
            method,
            manifest,
            work,
            run_dir,
            preset=preset,
            arch=None if preset is not None or method == "uscl" or method in CONVVIT_METHODS else arch,
            img_size=img_size,
            batch=batch,
            precision=precision,
            fused_optim=fused_optim,
            modality=modality,
            clip_frames=clip_frames,
            in_chans=in_chans,
            dense_stages=dense_stages,
            train=train,
        )
        first = next(iter(trainer.loader(0, 0)))
        batches = itertools.repeat(first)
        t0 = time.perf_counter()
        for _ in range(warmup):
            trainer.train_step(batches)
        warmup_s = time.perf_counter() - t0
        step_flops = None
        if flops:  # one more step under the FLOP counter (matmuls and convolutions, forward + backward)
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                trainer.train_step(batches)
            step_flops = counter.get_total_flops()
        cuda = trainer.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        n = 0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(steps):
            t = time.perf_counter()
            n = trainer.train_step(batches)[2]
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    per_step = statistics.median(times)
    x = first.get("input", first.get("view1"))
    frames = int(x.shape[2]) if x.ndim == 5 else 1  # [B, C, T, H, W] clips
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "samples_per_s": n / per_step,
        "frames_per_s": n * frames / per_step,
        "step_ms": per_step * 1000,
        "warmup_s": warmup_s,
        "frames_per_sample": frames,
        "batch": n,
        "peak_memory_mb": peak,
        "peak_memory_kind": "cuda max allocated" if cuda else "process max RSS",
        "device": str(trainer.device),
        "step_flops": step_flops,
        "precision_used": precision_name(trainer),
        "fused_optim": bool(trainer.optimizer.param_groups[0].get("fused")),
        "page_faults_per_step": faults,
        "attention": trainer.run_info.get("attention"),
        "host_allocator": host_allocator,
    }


def precision_name(trainer: Any) -> str:
    """The ``train.precision`` name (fp32, bf16, fp16) a set-up trainer runs in."""
    from ultrassl.precision import DTYPES

    return next(k for k, v in DTYPES.items() if v == trainer.autocast_dtype)


def paired_rates(
    method: str, manifest: str, work: str, variants: list[dict[str, Any]], steps: int = 20, **common: Any
) -> dict[str, Any]:
    """Bare-step samples/s of several variants of one model in one process, taking turns step by step
    (the order rotating), each variant judged by the median ratio of its step time to the first
    variant's step in the same turn: a shared machine's load swings (15% between rounds of separate
    processes here) cancel out of the ratios. Each variant has its own model copy and optimiser. The
    host allocator is the process's: every variant of one call must ask for the same. A variant with
    ``fused_attention_forced`` runs the fused attention kernel whatever its precision (the loop's
    choice before ``ultrassl.attention``)."""
    import itertools

    from ultrassl.attention import set_fused_attention

    allocators = {v.get("host_allocator", "tuned") for v in variants}
    if len(allocators) != 1:
        raise ValueError(f"one host allocator per process, got {sorted(allocators)}")
    trainers, batches, tmp = [], [], tempfile.TemporaryDirectory()
    for k, v in enumerate(variants):
        trainer = build_trainer(
            method,
            manifest,
            work,
            f"{tmp.name}/{k}",
            precision=v["precision"],
            fused_optim=v.get("fused_optim"),
            train={"host_allocator": v.get("host_allocator", "tuned")},
            **{key: common[key] for key in ("img_size", "in_chans", "modality") if common.get(key)},
        )
        if v.get("fused_attention_forced"):
            set_fused_attention(trainer.model, True)
            trainer.run_info["attention"] = "fused"
        trainers.append(trainer)
        batches.append(itertools.repeat(next(iter(trainer.loader(0, 0)))))
    for _ in range(3):  # warm-up
        for t, b in zip(trainers, batches):
            t._train_step(b)
    times: list[list[float]] = [[] for _ in trainers]
    faults = [0] * len(trainers)
    for i in range(steps):
        order = list(range(len(trainers)))
        order = order[i % len(order) :] + order[: i % len(order)]
        for k in order:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            trainers[k]._train_step(batches[k])
            times[k].append(time.perf_counter() - t0)
            faults[k] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    tmp.cleanup()
    base = statistics.median(times[0])
    out = []
    for v, t, trainer, f in zip(variants, times, trainers, faults):
        ratio = statistics.median(a / b for a, b in zip(t, times[0]))
        out.append(
            {
                **v,
                "samples_per_s": 32 / (base * ratio),
                "vs_first": 1 / ratio,
                "median_step_ms": 1000 * statistics.median(t),
                "page_faults_per_step": f / steps,
                "precision_used": precision_name(trainer),
                "attention": trainer.run_info.get("attention"),
            }
        )
    return {"rows": out}


def pretrain_rate(
    method: str, manifest: str, work: str, steps: int = 150, in_chans: int | None = None, **_: Any
) -> dict[str, Any]:
    """What a user sees: a plain ``ultrassl pretrain`` at the method's CPU preset, batch 32: the median
    ``samples_per_s`` it logs after step 20 (data loading, logging and checkpoint writes included), and
    the same from its clock over steps 20 to the end (the pictures it draws included too)."""
    import csv

    from ultrassl.cli import main as cli

    out = Path(work) / f"pretrain_{method}"
    args = [
        "pretrain",
        "--method",
        method,
        "--preset",
        PRESETS[method],
        "--data",
        manifest,
        "--out",
        str(out),
    ]
    args += ["--batch-size", "32", "--max-steps", str(steps), "--fresh", "--set", "train.tensorboard=false"]
    args += ["--set", "train.log_every=5"]
    if in_chans:
        args += ["--set", f"encoder.in_chans={in_chans}"]
    t0 = time.perf_counter()
    if cli(args) != 0:
        raise RuntimeError("ultrassl pretrain failed")
    wall = time.perf_counter() - t0
    with (out / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("samples_per_s")]
    first = next(r for r in rows if int(r["step"]) >= 20)
    last = rows[-1]
    seconds = float(last["elapsed_s"]) - float(first["elapsed_s"])
    info = json.loads((out / "run_info.json").read_text())
    return {
        # what the run logs (its windows leave out the pictures it draws, 0.6 s each, 7 per run)
        "samples_per_s": statistics.median(float(r["samples_per_s"]) for r in rows if int(r["step"]) > 20),
        "wall_samples_per_s": 32 * (int(last["step"]) - int(first["step"])) / seconds,
        "wall_s": wall,
        "steps": steps,
        "precision_used": (info.get("precision") or {}).get("chosen"),
        "attention": info.get("attention"),
        "host_allocator": info.get("host_allocator"),
    }


def loader_rate(
    method: str,
    manifest: str,
    work: str,
    workers: int,
    modality: str | None = None,
    batches: int = 32,
    preset: str | None = None,
    img_size: int | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Steady-state samples/s of the method's DataLoader (augmentation, blur, sample pairs, collation)
    with N workers; the first batch of each epoch (worker start-up) is reported apart."""

    import torch

    from ultrassl.api import build_pretrain_data, prepare_config
    from ultrassl.methods import build_pretrain_config
    from ultrassl.training import Trainer, batch_size_of

    flags = {
        "data": {
            "manifest": manifest,
            "num_workers": workers,
            "frame_cache": str(Path(work) / "frame_store"),
        },
        # batch 8: the bench's small data set still gives several batches per epoch to time
        "train": {"batch_size": 8, "tensorboard": False, "max_steps": 10**6, "device": "cpu"},
    }
    overrides = [f"ultramae.modality={modality}"] if modality else []
    if img_size:
        overrides.append(f"encoder.img_size=[{img_size},{img_size}]")
    cfg = build_pretrain_config(method, preset or PRESETS[method], flags=flags, overrides=overrides)
    prepare_config(cfg)
    dataset = build_pretrain_data(cfg, progress=False).train
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(
            torch.nn.Linear(1, 1),
            dataset,
            optim=cfg.optim,
            train=dataclasses.replace(cfg.train, precision="fp32"),  # a stand-in model: nothing to measure
            run_dir=run_dir,
            config={},
            num_workers=workers,
        )
        trainer.prepare()
        # steady state: the first batch of each epoch (worker start-up, first prefetch) is timed apart,
        # as a long epoch of a real data set pays it once
        n, seconds, starts = 0, 0.0, []
        for epoch in range(100):
            if n >= batches * 8:
                break
            t = time.perf_counter()
            for i, batch in enumerate(trainer.loader(epoch, 0)):
                now = time.perf_counter()
                if i == 0:
                    starts.append(now - t)
                else:
                    n, seconds = n + batch_size_of(batch), seconds + (now - t)
                t = time.perf_counter()
    return {
        "samples_per_s": n / seconds if seconds else None,
        "workers": workers,
        "epoch_start_s": statistics.median(starts),
    }


def run_one(
    kind: str, spec: dict[str, Any], threads: int, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run one measurement in a fresh subprocess with ``threads`` torch threads (and ``env`` set)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore", **(env or {})}
    out = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps({"kind": kind, **spec})],
        capture_output=True,
        text=True,
        env=env,
    )
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------
# the parts


def step_rows(quick: bool, methods: set[str] | None = None) -> list[dict[str, Any]]:
    """Each method at its CPU preset size, batch 32, with each speed option changed alone."""
    rows = []
    for method, modality in METHODS:
        if methods and method not in methods:
            continue
        base = {"method": method, "modality": modality}
        variants = [{"option": "fp32"}, {"option": "bf16 autocast", "precision": "bf16"}]
        if method in CONVVIT_METHODS:
            variants.append({"option": DENSE, "dense_stages": True})
        if not quick:
            variants.append({"option": "torch.compile", "compile": True})
        if method == "uscl":
            variants.append({"option": "channels-last", "channels_last": "on"})
        else:
            variants.append({"option": "no fused attention", "fused_attn": False})
        rows += [{**base, **v} for v in variants]
    return rows


#: the issue's headline model: MAE at ViT-T/16, 112 px, batch 32, 3 channels (the reference's input)
HEADLINE = {"method": "mae", "in_chans": 3}
#: today's path (every speed-up off; the reference MAE code's speed), each kept speed-up alone, and the
#: defaults a plain run gets. ``lone`` rows run in a process of their own, as a user's run does: the
#: allocator's effect shows only there (models side by side in one process keep each other's freed
#: memory in use, so glibc's trimming, and its page faults, all but vanish). ``paired`` rows run side by
#: side with the baseline in one process, taking turns step by step (``paired_rates``)
DEFAULT_ROWS = (
    {
        "option": "baseline: fp32, per-tensor AdamW",
        "precision": "fp32",
        "fused_optim": False,
        "host_allocator": "default",
        "how": "lone",
    },
    {
        "option": "fused AdamW",
        "precision": "fp32",
        "fused_optim": True,
        "host_allocator": "default",
        "how": "paired",
    },
    {
        "option": "bf16 autocast, fused attention",
        "precision": "bf16",
        "fused_optim": False,
        "host_allocator": "default",
        "fused_attention_forced": True,
        "how": "paired",
    },
    {
        "option": "bf16 autocast",
        "precision": "bf16",
        "fused_optim": False,
        "host_allocator": "default",
        "how": "paired",
    },
    {
        "option": "tuned allocator",
        "precision": "fp32",
        "fused_optim": False,
        "host_allocator": "tuned",
        "how": "lone",
    },
    {
        "option": "default: precision auto, fused AdamW, tuned allocator",
        "precision": "auto",
        "fused_optim": None,
        "host_allocator": "tuned",
        "how": "lone",
    },
)


def defaults_round(spec: dict[str, Any], steps: int, threads: int) -> list[dict[str, Any]] | str:
    """One round of DEFAULT_ROWS: each ``lone`` row in its own process (in turn, a few seconds apart:
    hence the rounds), set against the lone baseline; the ``paired`` rows in one process beside a copy
    of the baseline, each by its paired ratio. Returns the rows with ``vs_baseline``, or the error."""
    out: dict[str, dict[str, Any]] = {}
    for v in DEFAULT_ROWS:
        if v["how"] == "lone":
            res = run_one("step", {**spec, **v, "steps": steps}, threads, NO_PRECISION_CACHE)
            if "error" in res:
                return str(res["error"])
            out[v["option"]] = {**v, **res}
    base = out[DEFAULT_ROWS[0]["option"]]
    paired = [DEFAULT_ROWS[0]] + [v for v in DEFAULT_ROWS if v["how"] == "paired"]
    res = run_one("paired", {**spec, "steps": steps, "variants": paired}, threads, NO_PRECISION_CACHE)
    if "rows" not in res:
        return str(res.get("error"))
    for row in res["rows"][1:]:
        out[row["option"]] = {**row, "samples_per_s": base["samples_per_s"] * row["vs_first"]}
    rows = [out[v["option"]] for v in DEFAULT_ROWS]
    for row in rows:
        row["vs_baseline"] = row.get("vs_first") or row["samples_per_s"] / base["samples_per_s"]
    return rows


#: the defaults part's subprocesses: ``auto`` measures in every round, no cached figures
NO_PRECISION_CACHE = {"ULTRASSL_PRECISION_CACHE": "off"}
#: the other methods' steps, the same variants side by side (their CPU presets, 112 px, batch 32)
DEFAULT_OTHERS = (("ultramae", "images"), ("ultramae", "videos"), ("uscl", None))


def defaults_others(
    manifest: Path, work: Path, steps: int, threads: int, rounds: int, methods: set[str] | None = None
) -> list[dict[str, Any]]:
    """DEFAULT_ROWS side by side (``defaults_round``) for UltraMAE and USCL: medians over ``rounds``."""
    out = []
    for method, modality in DEFAULT_OTHERS:
        if methods and method not in methods:
            continue
        spec = {"manifest": str(manifest), "work": str(work), "method": method, "modality": modality}
        per_round = []
        for r in range(rounds):
            res = defaults_round(spec, steps, threads)
            if isinstance(res, str):
                print(f"  [{r + 1}/{rounds}] {method} {modality or ''}: {res}")
                continue
            per_round.append(res)
            ratios = ", ".join(f"{row['vs_baseline']:.2f}x" for row in res)
            print(f"  [{r + 1}/{rounds}] {label(spec)}: {ratios}", flush=True)
        if per_round:
            out.append(
                {
                    "method": method,
                    "modality": modality,
                    "baseline_samples_per_s": statistics.median(x[0]["samples_per_s"] for x in per_round),
                    "vs_baseline": {
                        v["option"]: statistics.median(x[i]["vs_baseline"] for x in per_round)
                        for i, v in enumerate(DEFAULT_ROWS)
                    },
                    "rounds_vs_baseline": {
                        v["option"]: [round(x[i]["vs_baseline"], 3) for x in per_round]
                        for i, v in enumerate(DEFAULT_ROWS)
                    },
                    "auto_chose": sorted({x[-1]["precision_used"] for x in per_round}),
                }
            )
    return out


def others_table(rows: list[dict[str, Any]]) -> str:
    names = [v["option"] for v in DEFAULT_ROWS]
    lines = [
        "| method | baseline samples/s | " + " | ".join(names[1:]) + " | auto chose |",
        "| --- | --- | " + " | ".join("---" for _ in names[1:]) + " | --- |",
    ]
    for r in rows:
        cells = [
            f"{r['vs_baseline'][n]:.2f}x ({', '.join(f'{x:.2f}' for x in r['rounds_vs_baseline'][n])})"
            if n in r["vs_baseline"]
            else "-"  # a row measured before this variant existed
            for n in names[1:]
        ]
        lines.append(
            f"| {label(r)} | {_f(r['baseline_samples_per_s'])} | "
            + " | ".join(cells)
            + f" | {', '.join(r['auto_chose'])} |"
        )
    return "\n".join(lines)


def defaults_part(
    manifest: Path, work: Path, steps: int, threads: int, rounds: int, quick: bool = False
) -> dict[str, Any]:
    """Per round: the DEFAULT_ROWS variants side by side (``defaults_round``), then a plain
    ``ultrassl pretrain`` run; each figure is the median over the rounds, the run set against the
    baseline's bare step of the same round."""
    spec = {"manifest": str(manifest), "work": str(work), **HEADLINE}
    paired, runs = [], []
    for r in range(rounds):
        res = defaults_round(spec, steps, threads)
        if isinstance(res, str):
            print(f"  [{r + 1}/{rounds}] paired steps: {res}")
        else:
            paired.append(res)
            for row in res:
                print(
                    f"  [{r + 1}/{rounds}] {row['option']}: {_f(row['samples_per_s'])} "
                    f"({row['vs_baseline']:.2f}x, {row['page_faults_per_step']:.0f} page faults/step)"
                )
        run = run_one("pretrain", {**spec, "steps": 40 if quick else 150}, threads, NO_PRECISION_CACHE)
        runs.append((run, None if isinstance(res, str) else res[0]["samples_per_s"]))
        print(f"  [{r + 1}/{rounds}] ultrassl pretrain: {run.get('error') or _f(run['samples_per_s'])}")
    rows = []
    for i, variant in enumerate(DEFAULT_ROWS):
        per_round = [p[i] for p in paired]
        rows.append(
            {
                **HEADLINE,
                **variant,
                "samples_per_s": statistics.median(x["samples_per_s"] for x in per_round),
                "vs_baseline": statistics.median(x["vs_baseline"] for x in per_round),
                "rounds_samples_per_s": [round(x["samples_per_s"], 1) for x in per_round],
                "rounds_vs_baseline": [round(x["vs_baseline"], 3) for x in per_round],
                "page_faults_per_step": statistics.median(x["page_faults_per_step"] for x in per_round),
                "precision_used": ",".join(sorted({x["precision_used"] for x in per_round})),
                "attention": ",".join(sorted({str(x["attention"]) for x in per_round})),
            }
        )
    good = [(run, base) for run, base in runs if "error" not in run and base]
    rows.append(
        {
            **HEADLINE,
            "option": "plain ultrassl pretrain",
            "samples_per_s": statistics.median(run["samples_per_s"] for run, _ in good) if good else None,
            "wall_samples_per_s": statistics.median(run["wall_samples_per_s"] for run, _ in good)
            if good
            else None,
            "vs_baseline": statistics.median(run["samples_per_s"] / base for run, base in good)
            if good
            else None,
            "rounds_samples_per_s": [round(run["samples_per_s"], 1) for run, _ in good],
            "rounds_vs_baseline": [round(run["samples_per_s"] / base, 3) for run, base in good],
            "precision_used": ",".join(sorted({str(run.get("precision_used")) for run, _ in good})),
            "attention": ",".join(sorted({str(run.get("attention")) for run, _ in good})),
        }
    )
    return {"rows": rows, "rounds": rounds, "steps": steps}


def defaults_table(part: dict[str, Any]) -> str:
    lines = [
        "| path | samples/s | vs baseline (each round) | vs baseline | page faults/step | precision | attention |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in part["rows"]:
        rel = f"{r['vs_baseline']:.2f}x" if r.get("vs_baseline") else "-"
        rounds = ", ".join(f"{x:.2f}" for x in r.get("rounds_vs_baseline", []))
        # paired rows share a process whose models keep each other's memory: their faults mean nothing
        faults = r.get("page_faults_per_step") if r.get("how") == "lone" else None
        lines.append(
            f"| {r['option']} | {_f(r.get('samples_per_s'))} | {rounds} | {rel} | "
            f"{'-' if faults is None else f'{faults:,.0f}'} | {r.get('precision_used', '')} | "
            f"{r.get('attention', '')} |"
        )
    return "\n".join(lines)


def scaling_rows(quick: bool) -> list[dict[str, Any]]:
    """MAE (ViT) step time against model size, image size and batch; UltraMAE against clip length."""
    if quick:
        return [{"method": "mae", "axis": "model", "arch": "vit-t"}]
    rows = [{"method": "mae", "axis": "model", "arch": a} for a in ("vit-t", "vit-s", "vit-b")]
    rows += [{"method": "mae", "axis": "image size", "img_size": s} for s in (64, 112, 160, 224)]
    rows += [{"method": "mae", "axis": "batch", "batch": b} for b in (8, 16, 32, 64)]
    rows += [
        {"method": "ultramae", "axis": "clip length", "modality": "videos", "clip_frames": t, "batch": 8}
        for t in (2, 4, 8, 16)
    ]
    return rows


#: the option row of ConvMAE's reference computation (stages 1-2 over the masked patches too)
DENSE = "dense stages 1-2 (reference)"


def label(row: dict[str, Any]) -> str:
    out = METHOD_NAMES[row["method"]]
    if row.get("modality"):
        out += " " + ("images (T=1)" if row["modality"] == "images" else "clips")
    return out


def run_models(
    rows: list[dict[str, Any]], manifest: Path, work: Path, steps: int, threads: int, rounds: int = 1
) -> list[dict]:
    """Each row ``rounds`` times, the rows interleaved (A B C, A B C, ...) so that a slow spell of the
    machine hits every row alike; a row's figures are those of its median-speed round."""
    runs: list[list[dict[str, Any]]] = [[] for _ in rows]
    for r in range(rounds):
        for i, row in enumerate(rows):
            spec = {"manifest": str(manifest), "work": str(work), "steps": steps, **row}
            res = run_one("step", spec, threads)
            runs[i].append(res)
            msg = (
                res.get("error")
                or f"{res['samples_per_s']:.1f} samples/s, peak {res['peak_memory_mb']:.0f} MB"
            )
            print(
                f"  [{r + 1}/{rounds}] {label(row):28s} {row.get('option') or row.get('axis')}: {msg}",
                flush=True,
            )
    done = []
    for row, results in zip(rows, runs):
        ok = sorted((x for x in results if "error" not in x), key=lambda x: x["samples_per_s"])
        if not ok:
            done.append({**row, **results[-1]})
            continue
        mid = ok[(len(ok) - 1) // 2]
        done.append({**row, **mid, "rounds_samples_per_s": [round(x["samples_per_s"], 1) for x in ok]})
    return done


def decode_rates(work: Path, quick: bool) -> dict[str, Any]:
    """Frames/s decoding real mp4s (POCUS when present) and the same frames as DICOM cines, serially and
    with 2 worker processes, and reading them back from the memory-mapped frame store."""
    import numpy as np

    from ultrassl.data.datasets import load_frame_cache
    from ultrassl.data.manifest import index_folder, read_manifest

    sys.path.insert(0, str(ROOT / "tests"))
    from media_helpers import write_dicom  # the test suite's minimal DICOM writer

    src = POCUS / "videos" if (POCUS / "videos").exists() else None
    videos = sorted(src.rglob("*.mp4"))[: 4 if quick else 12] if src else []
    if not videos:  # no real data: the synthetic clips
        videos = sorted((work / "synth").rglob("*.mp4"))[:12]
    mp4_dir, dcm_dir = work / "decode" / "mp4", work / "decode" / "dicom"
    mp4_dir.mkdir(parents=True, exist_ok=True)
    dcm_dir.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(videos):
        link = mp4_dir / f"v{i:02d}.mp4"
        if not link.exists():
            link.symlink_to(v.resolve())
    mp4_rows = read_manifest(index_folder(mp4_dir, work / "decode" / "mp4.csv").manifest_path)
    limit = 60  # frames per video: contiguous decoding from the start, as pre-training samples them
    for i, row in enumerate(mp4_rows):
        dcm = dcm_dir / f"v{i:02d}.dcm"
        if not dcm.exists():
            frames = load_frame_cache(
                [row], max_frames_per_video=limit, spread=False, scan_area=False, progress=False
            )
            write_dicom(dcm, np.stack(frames.frames), frame_time_ms=1000.0 / (row.fps or 30.0))
    dcm_rows = read_manifest(index_folder(dcm_dir, work / "decode" / "dicom.csv").manifest_path)
    out: dict[str, Any] = {"videos": len(mp4_rows), "source": "POCUS" if src else "synthetic"}
    for name, rows in (("mp4", mp4_rows), ("dicom", dcm_rows)):
        for workers in (0, 2):
            t0 = time.perf_counter()
            cache = load_frame_cache(
                rows, max_frames_per_video=limit, spread=False, progress=False, workers=workers
            )
            sec = time.perf_counter() - t0
            out[f"{name}/workers{workers}"] = {"frames": len(cache), "frames_per_s": len(cache) / sec}
            print(f"  decode {name} workers={workers}: {len(cache) / sec:.0f} frames/s", flush=True)
        h, w = cache.frames[0].shape[:2]
        out[f"{name}/frame_hw"] = [int(h), int(w)]
    store = work / "decode" / "store"
    load_frame_cache(mp4_rows, max_frames_per_video=limit, spread=False, progress=False, cache_dir=store)
    secs = []
    for _ in range(3):  # median of 3 warm reads
        t0 = time.perf_counter()
        cache = load_frame_cache(
            mp4_rows, max_frames_per_video=limit, spread=False, progress=False, cache_dir=store
        )
        total = sum(int(f.sum(dtype=np.uint64) > 0) for f in cache.frames)  # touch every frame's pages
        secs.append(time.perf_counter() - t0)
    sec = statistics.median(secs)
    out["store/warm"] = {"frames": len(cache), "frames_per_s": len(cache) / sec, "touched": total}
    print(f"  frame store (warm): {len(cache) / sec:.0f} frames/s", flush=True)
    return out


def torchrun_rates(manifest: Path, work: Path, steps: int) -> list[dict[str, Any]]:
    """MAE ViT-T 112, global batch 64: one process with 2 threads vs 2 processes (gloo) with 1 thread."""
    rows = []
    for procs in (1, 2):
        run = work / f"torchrun{procs}"
        subprocess.run(["rm", "-rf", str(run)], check=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(2 // procs), "PYTHONWARNINGS": "ignore"}
        launcher = (
            [sys.executable, "-m", "ultrassl"]
            if procs == 1
            else [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={procs}",
                "-m",
                "ultrassl",
            ]
        )
        cmd = [
            *launcher,
            "pretrain",
            "--method",
            "mae",
            "--preset",
            "cpu-vit-t112",
            "--data",
            str(manifest),
            "--out",
            str(run),
            "--max-steps",
            str(steps),
            "--batch-size",
            str(64 // procs),
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--set",
            "train.log_every=2",
            "--set",
            "train.tensorboard=false",
            "--set",
            f"data.frame_cache={work / 'frame_store'}",
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            rows.append({"processes": procs, "error": " | ".join(proc.stderr.strip().splitlines()[-3:])})
            continue
        import csv

        with open(run / "metrics.csv") as f:
            rates = [float(r["samples_per_s"]) for r in csv.DictReader(f) if r.get("samples_per_s")]
        rate = statistics.median(rates[2:] or rates)
        rows.append({"processes": procs, "threads_each": 2 // procs, "samples_per_s": rate, "wall_s": wall})
        print(f"  torchrun {procs} process(es): {rate:.1f} samples/s", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------------
# tables


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def step_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | option | samples/s | frames/s | ms/step | vs fp32 | peak memory (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    machines = list(dict.fromkeys(r["machine"] for r in rows if r.get("machine")))
    bases = {m: fp32_rates({"step": rows}, m) for m in machines} or {None: fp32_rates({"step": rows})}
    marks = {m: "*" * (i + 1) for i, m in enumerate(machines)} if len(machines) > 1 else {}
    for r in rows:
        mark = marks.get(r.get("machine"), "")
        if "error" in r:
            lines.append(f"| {label(r)}{mark} | {r['option']} | failed: {r['error'][:80]} | | | | |")
            continue
        ref = bases.get(r.get("machine"), {}).get(label(r))
        ratio = f"{r['samples_per_s'] / ref:.2f}x" if ref else ""
        lines.append(
            f"| {label(r)}{mark} | {r['option']} | {_f(r['samples_per_s'])} | {_f(r['frames_per_s'])} | "
            f"{_f(r['step_ms'], 0)} | {ratio} | {_f(r['peak_memory_mb'], 0)} |"
        )
    if marks:
        lines.append("")
        lines.append(
            "Rows measured on different machines (ratios only within one machine's rows): "
            + "; ".join(f"{m}: {k}" for k, m in marks.items())
            + "."
        )
    return "\n".join(lines)


def scaling_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | axis | value | samples/s | ms/step | peak memory (MB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        value = {
            "model": r.get("arch"),
            "image size": f"{r.get('img_size')} px",
            "batch": r.get("batch"),
            "clip length": f"{r.get('clip_frames')} frames",
        }[r["axis"]]
        if "error" in r:
            lines.append(f"| {label(r)} | {r['axis']} | {value} | failed: {r['error'][:80]} | | |")
            continue
        lines.append(
            f"| {label(r)} | {r['axis']} | {value} | {_f(r['samples_per_s'])} | {_f(r['step_ms'], 0)} | "
            f"{_f(r['peak_memory_mb'], 0)} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default=",".join(PARTS), help=",".join(PARTS))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--methods", default="", help="step part only: these methods' rows, merged into --out")
    p.add_argument(
        "--options", default="", help="step part only: these option rows (e.g. 'fp32,bf16 autocast')"
    )
    p.add_argument("--steps", type=int, default=6, help="timed optimiser steps per row (after 2 warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="interleaved repeats of every model row")
    p.add_argument("--work", type=Path, default=WORK)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-doc", action="store_true")
    p.add_argument("--doc-only", action="store_true", help="rewrite the docs section from --out and stop")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one measurement as JSON
    a = p.parse_args()
    if a.doc_only:
        write_docs(json.loads(a.out.read_text()))
        return
    if a.one:
        spec = json.loads(a.one)
        kinds = {"step": step_rate, "loader": loader_rate, "pretrain": pretrain_rate, "paired": paired_rates}
        fn = kinds[spec.pop("kind")]
        print(json.dumps(fn(**spec)))
        return
    parts = [s for s in a.parts.split(",") if s]
    unknown = set(parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    steps = 2 if a.quick else a.steps
    rounds = 1 if a.quick else a.rounds
    a.work.mkdir(parents=True, exist_ok=True)
    manifest = synthetic_manifest(a.work)
    doc = json.loads(a.out.read_text()) if a.out.exists() else {}
    from ultrassl.precision import cpu_has_native_bf16

    for r in doc.get("step", []):  # rows from an earlier run keep the machine they were measured on
        r.setdefault("machine", doc.get("machine", {}).get("cpu"))
    current = machine_info(native_bf16=cpu_has_native_bf16())
    partial = bool(a.methods or a.options)  # some step rows merged in: the other parts keep their machine
    if not partial or "machine" not in doc:
        doc["machine"] = current
    t_start = time.monotonic()
    if "defaults" in parts:
        print("defaults against today's path (MAE, ViT-T/16, 112 px, batch 32, 3 channels):", flush=True)
        chosen = {m for m in a.methods.split(",") if m}
        part = doc.get("defaults", {})
        if not chosen or "mae" in chosen:
            part = {**part, **defaults_part(manifest, a.work, steps, a.threads, rounds, quick=a.quick)}
        others = defaults_others(manifest, a.work, steps, a.threads, rounds, chosen or None)
        done = {(r["method"], r["modality"]) for r in others}
        kept = [r for r in part.get("others", []) if (r["method"], r["modality"]) not in done]
        part["others"] = sorted(
            kept + others, key=lambda r: DEFAULT_OTHERS.index((r["method"], r["modality"]))
        )
        part["git"] = current.get("git")  # the defaults' own: the other parts keep the hash they ran at
        doc["defaults"] = part
    if "step" in parts:
        print("training step, per method and option:", flush=True)
        chosen = {m for m in a.methods.split(",") if m}
        options = {o for o in a.options.split(",") if o}
        todo = [r for r in step_rows(a.quick, chosen) if not options or r["option"] in options]
        rows = run_models(todo, manifest, a.work, steps, a.threads, rounds)
        for r in rows:  # rows merged from runs on other machines say so in the table
            r["machine"] = current["cpu"]
            r["git"] = current.get("git")
        if partial:  # replace the rows measured now, keep the others (in METHODS order)

            def key(r: dict[str, Any]) -> tuple[Any, ...]:
                return r.get("method"), r.get("modality"), r.get("option"), r.get("machine")

            new = {key(r) for r in rows}
            kept = [r for r in doc.get("step", []) if key(r) not in new]
            order = {m: i for i, (m, _) in enumerate(METHODS)}
            opts = ["fp32", "bf16 autocast", DENSE, "torch.compile", "no fused attention", "channels-last"]
            rows = sorted(
                kept + rows,
                key=lambda r: (
                    order.get(r.get("method"), len(order)),
                    str(r.get("modality")),
                    opts.index(r["option"]) if r.get("option") in opts else len(opts),
                ),
            )
        doc["step"] = rows
    if "scaling" in parts:
        print("scaling:", flush=True)
        doc["scaling"] = run_models(scaling_rows(a.quick), manifest, a.work, steps, a.threads, rounds)
    if "data" in parts:
        print("data:", flush=True)
        loaders = []
        for method, modality in METHODS:
            for workers in (0, 2):
                spec = {
                    "method": method,
                    "modality": modality,
                    "manifest": str(manifest),
                    "work": str(a.work),
                }
                res = run_one("loader", {**spec, "workers": workers}, 1 if workers else a.threads)
                loaders.append({"method": method, "modality": modality, **res})
                print(
                    f"  loader {label(loaders[-1])} workers={workers}: {_f(res.get('samples_per_s'))}",
                    flush=True,
                )
        doc["loader"] = loaders
        doc["decode"] = decode_rates(a.work, a.quick)
    if "torchrun" in parts:
        print("torchrun:", flush=True)
        doc["torchrun"] = torchrun_rates(manifest, a.work, 10 if a.quick else 30)
    command = " ".join(["python bench/speed.py", *sys.argv[1:]])
    keys = [
        f"{part} ({a.methods})" if part in ("step", "defaults") and (a.methods or a.options) else part
        for part in parts
    ]
    doc["commands"] = {**doc.get("commands", {}), **{key: command for key in keys}}
    doc["wall_s"] = {**doc.get("wall_s", {}), ",".join(parts): round(time.monotonic() - t_start, 1)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    if not a.no_doc:
        write_docs(doc)
    print(f"wrote {a.out}")


def fp32_rates(doc: dict[str, Any], machine: str | None = None) -> dict[str, float]:
    """Each model's fp32 step rate by row label, on one machine (default: the doc's; Deblurring MAE,
    the same network, falls back to MAE's)."""
    machine = machine or (doc.get("machine") or {}).get("cpu")
    rates = {
        label(r): r["samples_per_s"]
        for r in doc.get("step", [])
        if r.get("option") == "fp32" and "samples_per_s" in r and r.get("machine", machine) == machine
    }
    for same, net in (("deblur-mae", "mae"), ("deblur-convmae", "convmae")):
        if label({"method": net}) in rates:
            rates.setdefault(label({"method": same}), rates[label({"method": net})])
    return rates


def data_table(doc: dict[str, Any]) -> str:
    """Loader samples/s against the model's fp32 step rate for the same method (the need: >= 3x)."""
    model = fp32_rates(doc)
    lines = [
        "| method | loader workers | loader samples/s | epoch start s | model samples/s (fp32 step) "
        "| loader / model |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in doc.get("loader", []):
        m = model.get(label(r))
        rate = r.get("samples_per_s")
        ratio = f"{rate / m:.1f}x" if rate and m else "-"
        lines.append(
            f"| {label(r)} | {r.get('workers', '-')} | {_f(rate)} | {_f(r.get('epoch_start_s'), 2)} | "
            f"{_f(m)} | {ratio} |"
        )
    return "\n".join(lines)


def decode_table(doc: dict[str, Any]) -> str:
    dec = doc.get("decode") or {}
    lines = ["| source | how | frames/s |", "| --- | --- | --- |"]
    for key in ("mp4/workers0", "mp4/workers2", "dicom/workers0", "dicom/workers2", "store/warm"):
        if key in dec:
            src, how = key.split("/")
            how = {"workers0": "decode, 1 process", "workers2": "decode, 2 worker processes"}.get(
                how, "memory-mapped frame store, warm"
            )
            lines.append(
                f"| {src if src != 'store' else 'mp4 -> frame store'} | {how} | {_f(dec[key]['frames_per_s'], 0)} |"
            )
    return "\n".join(lines)


def torchrun_table(doc: dict[str, Any]) -> str:
    lines = [
        "| processes | threads each | samples/s | wall s (incl. start-up) |",
        "| --- | --- | --- | --- |",
    ]
    for r in doc.get("torchrun", []):
        if "error" in r:
            lines.append(f"| {r['processes']} | failed: {r['error'][:80]} | | |")
        else:
            lines.append(
                f"| {r['processes']} | {r['threads_each']} | {_f(r['samples_per_s'])} | {_f(r['wall_s'], 0)} |"
            )
    return "\n".join(lines)


def findings(doc: dict[str, Any]) -> str:
    """The measured answers in words (computed from the rows, so they follow the numbers)."""
    out = []
    steps = [r for r in doc.get("step", []) if "samples_per_s" in r]
    base = fp32_rates(doc)
    machines = list(dict.fromkeys(r.get("machine") for r in steps))
    per_machine = {m: fp32_rates(doc, m) for m in machines}

    def rel(r: dict[str, Any]) -> float | None:
        ref = per_machine.get(r.get("machine"), base).get(label(r))
        return r["samples_per_s"] / ref if ref else None

    def where(r: dict[str, Any]) -> str:
        return f" ({r['machine']})" if len(machines) > 1 and r.get("machine") else ""

    for option in ("bf16 autocast", "torch.compile", "no fused attention", "channels-last"):
        ratios = [
            f"{label(r)}{where(r)} {rel(r):.2f}x" for r in steps if r.get("option") == option and rel(r)
        ]
        if ratios:
            out.append(f"- {option} vs fp32: " + ", ".join(ratios) + ".")
    dense = [f"{label(r)}{where(r)} {1 / rel(r):.2f}x" for r in steps if r.get("option") == DENSE and rel(r)]
    if dense:
        out.append(
            "- ConvMAE, stages 1-2 on the visible patches only (the default) vs the reference's dense "
            "stages (same loss and gradients to float rounding, tested): " + ", ".join(dense) + "."
        )
    model = base
    loader = [
        (label(r), r["workers"], r["samples_per_s"] / model[label(r)])
        for r in doc.get("loader", [])
        if r.get("samples_per_s") and model.get(label(r))
    ]
    if loader:
        worst = min(loader, key=lambda x: x[2])
        best_per = {}
        for name, _, ratio in loader:
            best_per[name] = max(best_per.get(name, 0.0), ratio)
        out.append(
            "- Per-step loading against the model (best worker count per method): "
            + ", ".join(f"{n} {v:.1f}x" for n, v in best_per.items())
            + f"; the slowest setting is {worst[0]} with {worst[1]} workers at {worst[2]:.1f}x "
            + ("(every loader keeps >= 3x ahead)." if min(best_per.values()) >= 3 else "(below the 3x goal).")
        )
    dec = doc.get("decode") or {}
    mp4 = max((dec.get(k, {}).get("frames_per_s", 0) for k in ("mp4/workers0", "mp4/workers2")), default=0)
    frames_needed = max((r.get("frames_per_s", 0) for r in steps if r.get("option") == "fp32"), default=0)
    if mp4 and frames_needed:
        store = dec.get("store/warm", {}).get("frames_per_s", 0)
        ratio = mp4 / frames_needed
        out.append(
            f"- Decoding the real mp4s (scan-area crop and resize included) runs at {mp4:.0f} frames/s, "
            f"{ratio:.1f}x the fastest frame consumer ({frames_needed:.0f} frames/s). "
            + (
                "Decoding per step would be the limit here, which is why"
                if ratio < 3
                else "Decoding per step would keep up; still,"
            )
            + " every run decodes each sampled frame once at start-up and trains from memory, and with "
            f"`data.frame_cache` once per data set: the warm store reads {store:.0f} frames/s, "
            f"{store / mp4:.0f}x decoding."
        )
    tr = {r["processes"]: r for r in doc.get("torchrun", []) if "samples_per_s" in r}
    if 1 in tr and 2 in tr:
        out.append(
            f"- torchrun, 2 processes x 1 thread vs 1 process x 2 threads: "
            f"{tr[2]['samples_per_s'] / tr[1]['samples_per_s']:.2f}x."
        )
    return "\n".join(out)


def defaults_section(doc: dict[str, Any]) -> list[str]:
    """The headline: today's path against the defaults and what a plain pre-training run logs."""
    part = doc.get("defaults")
    if not part:
        return []
    rows = part["rows"]
    ratio = f"{rows[-1]['vs_baseline']:.2f}x" if rows[-1].get("vs_baseline") else "-"
    return [
        "### Defaults against today's path (MAE, ViT-T/16 + 128x2 decoder, 112 px, batch 32, 3 channels)\n",
        "The bare optimiser step on one repeated in-memory batch for the baseline (every speed-up off: "
        "fp32, torch's per-tensor AdamW, the fused attention kernel, glibc's allocator as the process "
        "starts: the path that ran at the reference MAE code's speed), each kept speed-up alone, and the "
        "defaults. The baseline, the tuned allocator and the defaults each run in a process of their own, "
        "as a user's run does (several models in one process keep each other's freed memory in use, which "
        "hides the allocator's page faults), one after the other, each set against the baseline of its "
        "round. The other speed-ups run side by side with a copy of the baseline in one process, taking "
        f"turns step by step ({part['steps']} steps each, the order rotating), each judged by the median "
        "ratio of its step time to the baseline copy's in the same turn; their samples/s is the lone "
        "baseline's times that ratio (the ratio is measured without the page faults a lone process "
        "takes, so it is the speed-up's own effect). *page faults/step* are a lone process's minor page "
        "faults per timed step. Then a plain `ultrassl pretrain --method mae --preset cpu-vit-t112 --batch-size 32 --set "
        "encoder.in_chans=3` (150 steps; the median `samples_per_s` it logs after step 20: data "
        "loading, logging and checkpoint writes included), set against the baseline's bare step of the "
        f"same round. {part['rounds']} rounds (git {part.get('git', '?')}); *samples/s* and *vs baseline* are "
        "medians over them; "
        "`precision` and `attention` are what the row ran with (auto measures in every round, no "
        "cache). *bf16 autocast* runs the attention as the loop now does under CPU bf16 "
        "(`ultrassl.attention`: the explicit path), *bf16 autocast, fused attention* as it did before.\n",
        defaults_table(part),
        f"\nThe plain run against the baseline's bare step: **{ratio}** (the issue's target: 1.3x)."
        + (
            f" By the run's own clock from step 20 to the end, the reconstruction pictures it draws "
            f"included (7 per run, ~0.6 s each, left out of the logged figure): {_f(wall)} samples/s.\n"
            if (wall := rows[-1].get("wall_samples_per_s"))
            else "\n"
        ),
    ]


def defaults_others_section(doc: dict[str, Any]) -> list[str]:
    others = (doc.get("defaults") or {}).get("others")
    if not others:
        return []
    lone = [v["option"] for v in DEFAULT_ROWS[1:] if v["how"] == "lone"]
    spreads = [
        max(r["rounds_vs_baseline"][n]) / min(r["rounds_vs_baseline"][n])
        for r in others
        for n in lone
        if n in r["rounds_vs_baseline"] and min(r["rounds_vs_baseline"][n]) > 0
    ]
    return [
        "\nThe same rows for the other methods' steps, measured the same way (CPU presets, 112 px, batch "
        "32; each cell the median ratio to the baseline over the rounds, the rounds in brackets). The "
        f"{' and '.join(f'*{n}*' for n in lone)} cells are separate processes set against the lone baseline "
        "a few seconds apart"
        + (
            f": their rounds disagree by up to {max(spreads):.1f}x here, so read them as rough"
            if spreads
            else ""
        )
        + "; the other cells are paired step by step and agree within a few %.\n",
        others_table(others),
        "",
    ]


def write_docs(doc: dict[str, Any]) -> None:
    info = doc["machine"]
    machine = (
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['gpu'] or 'no GPU'}, native bf16: "
        f"{'yes' if info.get('native_bf16') else 'no'}; torch {info['torch']}, timm {info['timm']}, "
        f"Python {info['python']}, git {info['git']}."
    )
    commands = doc.get("commands") or {"all": doc.get("command", "")}
    dec = doc.get("decode") or {}
    parts = [
        "## Speed: training step, scaling, data pipeline, processes\n",
        "Commands (part: command): "
        + ", ".join(f"{k}: `{v.strip()}`" for k, v in commands.items())
        + f" (wall time per invocation, s: {doc.get('wall_s')}). {machine} "
        "Model rows: one subprocess each, the training loop's own optimiser step (forward, backward, "
        "optimiser, autocast) on one real batch of the method's synthetic data, median of the timed "
        "steps after 2 warm-up steps (`torch.compile` compiles during the warm-up); 2 torch threads. "
        "Every row runs in several rounds, the rows interleaved, and shows its median round (all rounds "
        "in the JSON): the cores of this virtual machine are shared, and one round alone has been seen "
        "40% off. Peak memory is the process's max RSS on a CPU (data set included), "
        "`max_memory_allocated` on CUDA. `--precision auto` (the default) times fp32 and bf16 on the "
        "run's first batch and keeps fp32 unless the other is more than 3% faster (this CPU "
        + ("has" if info.get("native_bf16") else "has no")
        + " native bf16). The defaults tables and this machine's step rows are current (each step row's "
        "git hash is in the JSON); the scaling, data and torchrun tables were measured at the git hash "
        "above, with fused AdamW, the fused attention kernel in every precision and glibc's allocator as "
        "started.\n",
        *defaults_section(doc),
        *defaults_others_section(doc),
        "### Training step per method and option (batch 32, CPU presets: 112 px, ViT-T/16, ConvViT-T/16 or ResNet-18; "
        "UltraMAE clips are its preset's 8 frames)\n",
        step_table(doc.get("step", [])),
        "\n### Scaling (fp32; one axis changed at a time from ViT-T/16, 112 px, batch 32; UltraMAE clips "
        "batch 8)\n",
        scaling_table(doc.get("scaling", [])),
        "\n### Data pipeline against the model\n",
        "Per-step loading (augmentation, Deblurring MAE's blur, USCL's sample pairs, collation) from the "
        "decoded frames, batches of 8, with N DataLoader workers (1 torch thread each), steady state (the first batch of "
        "each epoch, when workers start, is timed apart), against the same method's fp32 step rate above:\n",
        data_table(doc),
        f"\nStart-up decoding of {dec.get('videos', '?')} {dec.get('source', '')} videos (first 60 frames "
        f"each, contiguous; frames {dec.get('mp4/frame_hw')} px), the same frames as uncompressed DICOM "
        "cines, and the memory-mapped uint8 frame store (`data.frame_cache`) that later runs read "
        "instead of decoding:\n",
        decode_table(doc),
        "\n### 1 vs 2 processes (torchrun, gloo, CPU)\n",
        "MAE ViT-T/16 at 112 px, global batch 64 (one process with 2 threads, or 2 processes with 1 "
        "thread and batch 32 each), median samples/s over the logged windows of 30 steps:\n",
        torchrun_table(doc),
        "\n### What the numbers say (this machine)\n",
        findings(doc),
        "\nThe defaults follow these rows: `--precision auto` (measured per run, see above), fused AdamW, "
        "the tuned host allocator, fused attention on (the explicit path under bf16 on a CPU), "
        "`torch.compile` off (4-60 s of compilation per input shape at start-up for 1.0-1.3x in fp32 in "
        "the rows above, where bf16 autocast alone gives 1.2-2x; the two together were not measured), channels-last on for CNN encoders. GPU rows are not in this table: no GPU was "
        "available to this project's runs; the same script writes them on a CUDA machine.",
    ]
    write_doc_section("SPEED", "\n".join(parts))


if __name__ == "__main__":
    main()
