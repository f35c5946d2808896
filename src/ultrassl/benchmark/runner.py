"""``ultrassl benchmark``: every chosen encoder on every chosen task, fold by fold and seed by seed, into
one results JSON.

Resumable at the grain of one (task, encoder, fold, seed): a finished evaluation is kept in the JSON and
read back by the next run of the same command (pre-training runs are resumed from their run folders).
The options that decide the numbers (budget, input size, epochs, probes) are stored with the results; a
later run with other values is refused rather than mixing two designs in one table. Tasks, encoders,
folds and seeds may grow between runs.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ultrassl.benchmark.encoders import EncoderChoice, choose_encoders
from ultrassl.benchmark.evaluate import CLASSIFY_METRICS, SEGMENT_METRICS, Evaluator, ProbeSettings
from ultrassl.benchmark.pretrain import PretrainBudget, calibrate, pretrain_fold
from ultrassl.benchmark.record import ResultsFile, result_key
from ultrassl.benchmark.tasks import TASKS, PreparedTask, prepare_task
from ultrassl.errors import ConfigError, UltrasslError

__all__ = ["BenchmarkOptions", "BenchmarkResult", "run_benchmark"]

log = logging.getLogger("ultrassl.benchmark")

#: what ``--quick`` changes (a first look in minutes: few folds, a small budget); stated in the JSON
QUICK = {"folds": (0, 1), "seeds": (0, 1), "pretrain_minutes": 0.5, "seg_epochs": 3, "calib_steps": 6}
FULL = {
    "folds": (0, 1, 2, 3, 4),
    "seeds": (0, 1, 2),
    "pretrain_minutes": 4.0,
    "seg_epochs": 10,
    "calib_steps": 12,
}
#: options that decide the numbers: results made with other values are not mixed into one file
DESIGN_KEYS = (
    "quick",
    "pretrain_minutes",
    "seg_epochs",
    "seg_seeds",
    "img_size",
    "seed",
    "calib_steps",
    "pretrain_set",
    "pretrain_batch",
    "linear_c",
    "knn_k",
)
RESULTS_NAME = "benchmark.json"


@dataclass
class BenchmarkOptions:
    """What ``ultrassl benchmark`` runs; None takes the ``--quick`` or full default (``QUICK``/``FULL``)."""

    data: Path
    out: Path
    tasks: tuple[str, ...] = tuple(TASKS)
    methods: tuple[str, ...] = ()
    weights: tuple[str, ...] = ()
    quick: bool = False
    folds: tuple[int, ...] | None = None
    #: probe seeds (classification); segmentation runs the first ``seg_seeds`` of them
    seeds: tuple[int, ...] | None = None
    seg_seeds: int = 1
    pretrain_minutes: float | None = None
    seg_epochs: int | None = None
    calib_steps: int | None = None
    img_size: int = 112
    #: the seed of the folds (BUSI's draw, every validation carve of seed 0) and of pre-training
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    pretrain_set: tuple[str, ...] = ()
    pretrain_batch: int | None = None
    linear_c: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    knn_k: tuple[int, ...] = (10, 20)
    #: the command line as typed (recorded)
    command: str = ""

    def resolved(self) -> BenchmarkOptions:
        """The options with every None replaced by its ``--quick`` or full default, checked."""
        defaults = QUICK if self.quick else FULL
        out = replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})
        unknown = [t for t in out.tasks if t not in TASKS]
        if unknown:
            raise ConfigError(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
        if not out.seeds or not out.folds or out.seg_seeds < 1 or out.img_size < 16:
            raise ConfigError("folds and seeds must not be empty; seg_seeds >= 1; img_size >= 16")
        if out.pretrain_minutes <= 0 or out.seg_epochs < 1 or out.calib_steps < 1:
            raise ConfigError("pretrain_minutes must be > 0; seg_epochs and calib_steps >= 1")
        return out

    def design(self) -> dict[str, Any]:
        return {k: _plain(getattr(self, k)) for k in DESIGN_KEYS}


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` did: the results JSON, its summaries, and how many evaluations ran
    now or were read back from an earlier run."""

    results_file: Path
    summary: dict[str, Any]
    lifts: dict[str, Any]
    evaluated: int
    read_back: int
    seconds: float
    skipped: list[str] = field(default_factory=list)


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def machine() -> dict[str, Any]:
    """Where the numbers were measured: versions and git hash (as every run folder records), CPU, GPU."""
    import torch

    from ultrassl.runs import run_info

    info = run_info()
    info.pop("argv", None)
    return {
        **info,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _design_statement(opt: BenchmarkOptions) -> dict[str, Any]:
    return {
        "folds": list(opt.folds),
        "seeds": list(opt.seeds),
        "segmentation_seeds": list(opt.seeds[: opt.seg_seeds]),
        "repeats": (
            "each (fold, seed) is one value; a seed re-draws the validation groups carved from the fold's "
            "training groups (they pick the probe's C and k, and segmentation's epoch) and a random "
            "encoder's initialisation. Pre-training runs once per fold (seed "
            f"{opt.seed}): its own run-to-run spread is not in the intervals."
        ),
        "intervals": "95 % Student-t over the folds, each fold's seeds averaged first (they share the fold's "
        "test patients); lifts paired by fold with the random encoder of the same architecture, over the "
        "seeds both have; 'detectable' = smallest true lift a paired t-test (two-sided alpha 0.05) finds "
        "with power 0.8 given the observed spread and number of folds. Folds share training patients, so "
        "the intervals still lean narrow",
        "quick": (
            f"--quick: folds {list(opt.folds)}, seeds {list(opt.seeds)}, {opt.pretrain_minutes:g} min "
            f"pre-training per fold, {opt.seg_epochs} segmentation epochs: a first look, not a result"
            if opt.quick
            else None
        ),
    }


class _Encoders:
    """Backbones of the chosen encoders: loaded fresh for every evaluation (segmentation trains the
    encoder it is given), pre-trained per fold on first use."""

    def __init__(self, opt: BenchmarkOptions, store: ResultsFile):
        self.opt, self.store = opt, store
        self.budget = PretrainBudget(
            opt.pretrain_minutes,
            opt.calib_steps,
            opt.img_size,
            opt.seed,
            opt.device,
            opt.precision,
            opt.pretrain_set,
            opt.pretrain_batch,
        )

    def backbone(self, enc: EncoderChoice, task: PreparedTask, fold: int, seed: int) -> Any:
        from ultrassl.finetune.backbones import load_backbone
        from ultrassl.models.spec import EncoderSpec

        s = self.opt.img_size
        if enc.source == "scratch":
            spec = EncoderSpec(enc.arch, (s, s), 16, 1)
            return load_backbone("scratch", scratch_spec=spec, seed=seed)
        if enc.source == "scratch-like":
            like = load_backbone(enc.weights)
            return load_backbone(
                "scratch", scratch_spec=like.spec, scratch_mean=like.mean, scratch_std=like.std, seed=seed
            )
        if enc.source == "weights":
            return load_backbone(enc.weights)
        return load_backbone(self.pretrained(enc.name, task, fold))

    def pretrained(self, name: str, task: PreparedTask, fold: int) -> Path:
        work = self.opt.out / "work" / task.name
        calib = self.store.doc.setdefault("calibration", {})
        key = f"{task.name}/{name}"
        if key not in calib:
            t0 = time.monotonic()
            calib[key] = calibrate(task, name, self.budget, work, log.info)
            self.store.doc.setdefault("steps", {})[f"calibrate/{key}"] = round(time.monotonic() - t0, 1)
            self.store.save()
        run, info = pretrain_fold(task, fold, name, calib[key]["steps"], self.budget, work, log.info)
        self.store.doc.setdefault("pretrain", {})[f"{task.name}/fold{fold}/{name}"] = info
        self.store.save()
        return run


def _check_design(store: ResultsFile, opt: BenchmarkOptions) -> None:
    old = store.doc.get("design_options")
    new = opt.design()
    if old and store.results:
        changed = [k for k in DESIGN_KEYS if k in old and old[k] != new[k]]
        if changed:
            detail = ", ".join(f"{k} {old[k]} -> {new[k]}" for k in changed)
            raise UltrasslError(
                f"{store.path} holds results of another design ({detail}); run with the same options or "
                "choose another --out"
            )
    store.doc["design_options"] = new


def run_benchmark(options: BenchmarkOptions) -> BenchmarkResult:
    """Evaluate the chosen encoders on the chosen tasks into ``options.out/benchmark.json``; returns
    its summaries and what ran. Re-running the same call reads finished evaluations back."""
    from ultrassl.methods import method_names

    t_start = time.monotonic()
    opt = options.resolved()
    encoders = choose_encoders(opt.methods, opt.weights, opt.pretrain_set, tuple(method_names()))
    store = ResultsFile(opt.out / RESULTS_NAME)
    _check_design(store, opt)
    store.doc["machine"] = machine()
    store.doc["commit"] = store.doc["machine"].get("git_hash")
    commands = store.doc.setdefault("commands", [])
    store.doc["command"] = opt.command
    if opt.command and opt.command not in commands:
        commands.append(opt.command)
    store.doc["options"] = {k: _plain(v) for k, v in asdict(opt).items() if k != "command"}
    store.doc["options"]["data"], store.doc["options"]["out"] = str(opt.data), str(opt.out)
    store.doc["design"] = _design_statement(opt)
    store.doc["encoders"] = {e.name: {k: v for k, v in asdict(e).items() if k != "name"} for e in encoders}
    store.save()

    settings = ProbeSettings(opt.linear_c, opt.knn_k, opt.seg_epochs, device=opt.device)
    loader = _Encoders(opt, store)
    evaluated = read_back = 0
    skipped: list[str] = []
    for name in opt.tasks:
        t0 = time.monotonic()
        task = prepare_task(name, opt.data, opt.out / "work", seed=opt.seed)
        store.doc.setdefault("tasks", {})[name] = {
            "kind": task.spec.kind,
            "files": task.n_files,
            "evaluated_files": task.n_evaluated,
            "groups": task.n_groups,
            "folds": len(task.folds),
            "manifest": str(task.manifest),
            "folds_file": str(task.folds_file),
        }
        store.doc.setdefault("steps", {})[f"prepare/{name}"] = round(time.monotonic() - t0, 1)
        store.save()
        ev = Evaluator(task, settings)
        classify = task.spec.kind == "classify"
        seeds = opt.seeds if classify else opt.seeds[: opt.seg_seeds]
        for k in opt.folds:
            if k >= len(task.folds):
                skipped.append(f"{name} fold {k}: the task has {len(task.folds)} folds")
                continue
            for enc in encoders:
                for seed in seeds:
                    key = result_key(name, enc.name, k, seed)
                    if key in store.results:
                        read_back += 1
                        continue
                    t0 = time.monotonic()
                    backbone = loader.backbone(enc, task, k, seed)
                    t1 = time.monotonic()
                    if classify:
                        metrics = ev.classify(backbone, k, seed)
                    else:
                        folder = opt.out / "work" / name / "eval" / enc.name / f"fold{k}_seed{seed}"
                        metrics = ev.segment(backbone, k, seed, folder)
                    store.put(
                        key,
                        {
                            "task": name,
                            "encoder": enc.name,
                            "twin": enc.twin,
                            "fold": k,
                            "seed": seed,
                            "metric_names": list(CLASSIFY_METRICS if classify else SEGMENT_METRICS),
                            "metrics": metrics,
                            "seconds": round(time.monotonic() - t1, 2),
                            "seconds_with_encoder": round(time.monotonic() - t0, 2),
                        },
                    )
                    evaluated += 1
                    log.info(f"{key}: " + _describe(metrics))
    store.summarize()
    store.doc["seconds_last_run"] = round(time.monotonic() - t_start, 1)
    store.save()
    return BenchmarkResult(
        store.path,
        store.doc.get("summary", {}),
        store.doc.get("lifts", {}),
        evaluated,
        read_back,
        time.monotonic() - t_start,
        skipped,
    )


def _describe(metrics: dict[str, dict[str, Any]]) -> str:
    parts = []
    for protocol, m in metrics.items():
        shown = [f"{k} {m[k]:.3f}" for k in (*CLASSIFY_METRICS, *SEGMENT_METRICS) if m.get(k) is not None]
        parts.append(f"{protocol}: " + ", ".join(shown))
    return "; ".join(parts)
