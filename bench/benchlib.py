"""What the benchmarks share, and nothing else: where results go, the machine and commit a figure was
measured on, writing a results JSON, the names the tables give each method, the synthetic data every
speed figure runs on, and the measurements several scripts make (one model's training step, several
models' steps side by side, a plain ``ultrassl pretrain``, a data loader, ``precision auto``'s choice),
each runnable alone in a fresh process (``run_one``).

Measuring only: no script writes docs/*.md; ``bench/render_docs.py`` renders the pages from
``bench/results/*.json``. Only the public API of ``ultrassl`` is used (``tests/test_bench_public_api.py``).

    python bench/benchlib.py --one '{"kind": "step", "method": "mae", ...}'   # what run_one runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ultrassl.benchmark.encoders import METHOD_PRESETS

ROOT = Path(__file__).resolve().parents[1]
#: every script's figures (committed; the pages are rendered from them)
RESULTS = ROOT / "bench" / "results"
#: run folders and synthetic data (ignored by git)
WORK = ROOT / "bench" / "work"
#: the real data sets (outside the repository)
DATA = ROOT.parent / "shared" / "data"

# ----------------------------------------------------------------------------------------------------
# provenance: machine, commit, command


def cpu_name() -> str:
    from ultrassl.hardware import cpu_name as name

    return name()


def git_revision(where: Path = ROOT, *, short: bool = True, scope: str | None = None) -> str | None:
    """The commit checked out at ``where`` (``+dirty`` with uncommitted changes, under ``scope`` when
    given), or None outside a git checkout."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", *(["--short"] if short else []), "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", *(["--", scope] if scope else [])],
            cwd=where,
            capture_output=True,
            text=True,
        )
        return rev + ("+dirty" if dirty.stdout.strip() else "") if rev else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(**extra: Any) -> dict[str, Any]:
    """CPU, cores, threads, versions, GPU and git revision (plus ``extra``: versions a bench cares about,
    the ``command`` that measured)."""
    import timm
    import torch

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": str(torch.__version__),
        "timm": timm.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git": git_revision(),
        **extra,
    }


def command_line(script: str | Path, argv: Sequence[str] | None = None) -> str:
    """How a bench script was started, as a user would type it: ``python bench/NAME.py ARGS``."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", f"bench/{Path(script).name}", shlex.join(args)]).rstrip()


# ----------------------------------------------------------------------------------------------------
# results files


def read_results(path: Path) -> dict[str, Any]:
    """A results JSON, or {} when it is not there yet."""
    return json.loads(path.read_text()) if path.exists() else {}


def write_results(path: Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` (indented, one trailing newline) through a temporary file: a reader never sees half a
    file. Every script's ``doc`` carries ``machine`` (``machine_info``: the commit is its ``git``, the
    command that measured its ``command``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def record_run(doc: dict[str, Any], key: str, command: str, seconds: float) -> None:
    """Note in a results file merged from several invocations which command measured ``key`` (a part, or
    some of its rows) and how long it ran."""
    doc["commands"] = {**doc.get("commands", {}), key: command}
    doc["wall_s"] = {**doc.get("wall_s", {}), key.split(" (")[0]: round(seconds, 1)}


# ----------------------------------------------------------------------------------------------------
# names in the tables


#: how the benchmark tables name each pre-training method (the encoder where it is not a ViT-T)
METHOD_NAMES = {
    "mae": "MAE",
    "deblur-mae": "Deblurring MAE",
    "ultramae": "UltraMAE",
    "convmae": "ConvMAE (ConvViT-T)",
    "deblur-convmae": "Deblurring ConvMAE (ConvViT-T)",
    "uscl": "USCL (ResNet-18)",
}
#: the real-data tables' rows: the random-init baselines and the methods
ROW_NAMES = {
    "scratch-vit": "scratch (ViT-T)",
    "scratch-r18": "scratch (ResNet-18)",
    "scratch-convvit": "scratch (ConvViT-T)",
    **METHOD_NAMES,
}
#: the order of the real-data rows: each architecture's scratch baseline, then its SSL methods
ROW_ORDER = (
    "scratch-vit",
    "mae",
    "deblur-mae",
    "ultramae",
    "scratch-convvit",
    "convmae",
    "deblur-convmae",
    "scratch-r18",
    "uscl",
)
#: one of the random-init baselines alone
SCRATCH_ONLY = ("scratch-vit", "scratch-convvit", "scratch-r18")
#: the hybrid encoder's methods and the plain-ViT method each is compared with, fold by fold
HYBRID_VS_VIT = {"convmae": "mae", "deblur-convmae": "deblur-mae"}


#: the scan-area detector's targets (its issue's), for stills and clips alike
SCAN_AREA_TARGETS = {"median_iou": 0.95, "min_iou": 0.85, "median_lost": 0.01}


def scratch_of(method: str) -> str:
    """The random-init baseline with the method's architecture (USCL is a ResNet-18, the ConvMAEs
    ConvViT-T, the other MAEs ViT-T); a baseline is its own."""
    if method in ("uscl", "scratch-r18"):
        return "scratch-r18"
    if method in ("convmae", "deblur-convmae", "scratch-convvit"):
        return "scratch-convvit"
    return "scratch-vit"


def paired_diff(
    a: dict[str, Any], b: dict[str, Any], value: Callable[[dict[str, Any]], float]
) -> tuple[float | None, int]:
    """Mean difference (points) of ``value`` between two per-fold tables, over the folds both have run."""
    import numpy as np

    folds = sorted(set(a) & set(b))
    if not folds:
        return None, 0
    return round(100 * float(np.mean([value(a[k]) - value(b[k]) for k in folds])), 1), len(folds)


def label(row: dict[str, Any]) -> str:
    """A speed row's method as the tables name it (UltraMAE with its modality)."""
    out = METHOD_NAMES[row["method"]]
    if row.get("modality"):
        out += " " + ("images (T=1)" if row["modality"] == "images" else "clips")
    return out


def row_name(row: dict[str, Any]) -> str:
    """A row's method as most tables name it, UltraMAE's modality in brackets."""
    name = METHOD_NAMES.get(row["method"], row["method"])
    return name + (f" ({row['modality']})" if row.get("modality") else "")


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


# ----------------------------------------------------------------------------------------------------
# the models and data of the speed figures

#: each method's CPU preset: the benchmark suite's own table, so that the two cannot drift apart
PRESETS = METHOD_PRESETS
#: methods on ConvMAE's hybrid encoder (their preset's ConvViT-T, not ``arch``)
CONVVIT_METHODS = ("convmae", "deblur-convmae")
ARCHS = {"vit-t": "vit_tiny_patch16_224", "vit-s": "vit_small_patch16_224", "vit-b": "vit_base_patch16_224"}
#: every method (UltraMAE per modality) whose training step and data loader are measured
METHODS = (
    ("mae", None),
    ("deblur-mae", None),
    ("ultramae", "images"),
    ("ultramae", "videos"),
    ("convmae", None),
    ("deblur-convmae", None),
    ("uscl", None),
)


def speed_machine(command: str) -> dict[str, Any]:
    """``machine_info`` of a speed part: with the command and whether the CPU computes bf16 natively."""
    from ultrassl.precision import cpu_has_native_bf16

    return machine_info(command=command, native_bf16=cpu_has_native_bf16())


def synthetic_manifest(work: Path) -> Path:
    """Synthetic clips and stills (written once): a batch of 32 of any method (USCL: 32 videos + stills)."""
    from ultrassl.api import synth

    manifest = work / "synth" / "manifest.csv"
    if not manifest.exists():
        synth(
            work / "synth",
            n_patients=16,
            clips_per_patient=2,
            n_frames=96,
            size=(128, 128),
            n_lesion_images=40,
        )
    return manifest


def speed_arguments(p: argparse.ArgumentParser, out: Path) -> None:
    """The options every speed part takes."""
    p.add_argument("--quick", action="store_true", help="a smoke run: few steps, few rows, one round")
    p.add_argument("--steps", type=int, default=6, help="timed optimiser steps per row (after 2 warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="interleaved repeats of every model row")
    p.add_argument("--work", type=Path, default=WORK / "speed", help="synthetic data, frame store, runs")
    p.add_argument("--out", type=Path, default=out, help="results JSON (rows of some methods merge into it)")


def run_speed_part(
    part: str, script: str, description: str, title: str, measure: Callable[[argparse.Namespace], Any]
) -> None:
    """The ``main()`` of a speed part that writes one results file: the common options, ``measure``
    under the key ``part``, then ``speed_<part>.json`` with the machine, the command and the wall time."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    speed_arguments(p, RESULTS / f"speed_{part}.json")
    a = p.parse_args()
    t0 = time.monotonic()
    a.work.mkdir(parents=True, exist_ok=True)
    command = command_line(script)
    print(f"{title}:", flush=True)
    doc = {"machine": speed_machine(command), part: measure(a)}
    record_run(doc, part, command, time.monotonic() - t0)
    print(f"wrote {write_results(a.out, doc)}")


# ----------------------------------------------------------------------------------------------------
# measurements (each runs in a fresh process through run_one, or in this one)


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

    from ultrassl.api import build_model, build_pretrain_config, build_pretrain_data, prepare_config
    from ultrassl.host_allocator import set_host_allocator
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


def precision_name(trainer: Any) -> str:
    """The ``train.precision`` name (fp32, bf16, fp16) a set-up trainer runs in."""
    from ultrassl.precision import name_of

    return name_of(trainer.autocast_dtype)


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
    """Samples/s of the training loop's own optimiser step (``Trainer.train_step``: forward, backward,
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
            t.train_step(b)
    times: list[list[float]] = [[] for _ in trainers]
    faults = [0] * len(trainers)
    for i in range(steps):
        order = list(range(len(trainers)))
        order = order[i % len(order) :] + order[: i % len(order)]
        for k in order:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            trainers[k].train_step(batches[k])
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
    import dataclasses

    import torch

    from ultrassl.api import build_pretrain_config, build_pretrain_data, prepare_config
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


def auto_choice(
    method: str, manifest: str, work: str, modality: str | None = None, **_: Any
) -> dict[str, Any]:
    """What the loop's ``precision auto`` picks for the method at its CPU preset (batch 32, 112 px): its
    probe's figures from ``run_info``."""
    import torch

    from ultrassl.api import build_model, build_pretrain_config, build_pretrain_data, prepare_config
    from ultrassl.training import Trainer

    overrides = ["encoder.img_size=[112,112]"] + ([f"ultramae.modality={modality}"] if modality else [])
    flags = {
        "data": {"manifest": manifest, "frame_cache": str(Path(work) / "frame_store")},
        "train": {"batch_size": 32, "precision": "auto", "tensorboard": False, "max_steps": 0},
    }
    cfg = build_pretrain_config(method, PRESETS[method], flags=flags, overrides=overrides)
    prepare_config(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    dataset = build_pretrain_data(cfg, progress=False).train
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, dataset, optim=cfg.optim, train=cfg.train, run_dir=run_dir, config={})
        trainer.fit()  # max_steps 0: settles the precision, trains nothing
        return dict(trainer.run_info["precision"])


#: what ``run_one`` can run, by kind
MEASUREMENTS = {
    "step": step_rate,
    "paired": paired_rates,
    "pretrain": pretrain_rate,
    "loader": loader_rate,
    "auto": auto_choice,
}


def run_one(
    kind: str, spec: dict[str, Any], threads: int, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run one measurement (``MEASUREMENTS[kind](**spec)``) in a fresh subprocess with ``threads`` torch
    threads (and ``env`` set), so that its peak memory and allocator are its own; its result, or
    ``{"error": the last lines of its stderr}``."""
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


def run_models(
    rows: list[dict[str, Any]], manifest: Path, work: Path, steps: int, threads: int, rounds: int = 1
) -> list[dict[str, Any]]:
    """Each row's training step (``step_rate``, a process each) ``rounds`` times, the rows interleaved
    (A B C, A B C, ...) so that a slow spell of the machine hits every row alike; a row's figures are
    those of its median-speed round."""
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--one", required=True, help="a measurement as JSON: kind (one of MEASUREMENTS) and its spec"
    )
    spec = json.loads(p.parse_args().one)
    print(json.dumps(MEASUREMENTS[spec.pop("kind")](**spec)))


if __name__ == "__main__":
    main()
