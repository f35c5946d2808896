"""``ultrassl benchmark``: every chosen encoder on every chosen task, fold by fold and seed by seed, into
one results JSON.

Resumable at the grain of one (task, encoder, fold, seed): a finished evaluation is kept in the JSON and
read back by the next run of the same command (pre-training runs are resumed from their run folders).
An entry stored without a protocol it should have (one added to ultrassl since, such as classification
fine-tuning) is completed: only the missing protocol runs and is merged in.
The options that decide the numbers (budget, input size, epochs, probes) are stored with the results; a
later run with other values is refused rather than mixing two designs in one table. Tasks, encoders,
folds and seeds may grow between runs.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ultrassl.benchmark.encoders import EncoderChoice, choose_encoders
from ultrassl.benchmark.evaluate import (
    CLASSIFY_METRICS,
    SEGMENT_METRICS,
    Evaluator,
    ProbeSettings,
    finetune_outdated,
    fraction_protocol,
)
from ultrassl.benchmark.pretrain import Corpus, PretrainBudget, calibrate, cut_short, pretrain_fold
from ultrassl.benchmark.record import ResultsFile, result_key
from ultrassl.benchmark.tasks import CORPUS_TASKS, TASKS, PreparedTask, prepare_task
from ultrassl.errors import ConfigError, UltrasslError
from ultrassl.hardware import cpu_name

__all__ = ["BenchmarkOptions", "BenchmarkResult", "run_benchmark"]

log = logging.getLogger("ultrassl.benchmark")

#: the methods of the whole table (each with its random twin): every registered method on each task's
#: own data set, and Deblurring MAE pre-trained on every data set together
TABLE_METHODS = ("mae", "deblur-mae", "convmae", "deblur-convmae", "ultramae", "uscl", "deblur-mae@multi")
#: what ``--quick`` changes (a first look in minutes: the package's main method against its random
#: twin on every task, three folds so that an interval has two degrees of freedom, a small budget);
#: stated in the JSON
QUICK = {
    "methods": ("deblur-mae",),
    "folds": (0, 1, 2),
    "seeds": (0, 1),
    "pretrain_minutes": 0.5,
    "seg_epochs": 3,
    "calib_steps": 6,
    "ft_epochs": 3,
    "label_fractions": (0.1, 0.25, 0.5),
}
#: the whole table in a working night on 2 CPU cores: 95 pre-training runs of 2 min (the budget of the
#: BUSI recipes, bench/busi_recipes.py), then every encoder evaluated on every task and fold
FULL = {
    "methods": TABLE_METHODS,
    "folds": (0, 1, 2, 3, 4),
    "seeds": (0, 1, 2),
    "pretrain_minutes": 2.0,
    "seg_epochs": 10,
    "calib_steps": 12,
    "ft_epochs": 15,
    "label_fractions": (0.1, 0.25, 0.5),
}
#: fine-tuning modes of classification's "finetune" protocol (ClassifyConfig.mode without the probe)
FT_MODES = ("full", "partial")
#: options that decide the numbers: results made with other values are not mixed into one file. Which
#: tasks are fine-tuned, with how many seeds, and the few-label fractions only add protocols to entries
#: (an entry stored without one is completed), so they may grow between runs like tasks and folds
DESIGN_KEYS = (
    "quick",
    "pretrain_minutes",
    "pretrain_steps",
    "seg_epochs",
    "seg_seeds",
    "img_size",
    "seed",
    "calib_steps",
    "pretrain_set",
    "pretrain_batch",
    "linear_c",
    "knn_k",
    "ft_mode",
    "ft_epochs",
)
#: recorded with the design, but free to grow (see above)
GROWING_KEYS = ("label_fractions", "ft_tasks", "ft_seeds")
RESULTS_NAME = "benchmark.json"


@dataclass
class BenchmarkOptions:
    """What ``ultrassl benchmark`` runs; None takes the ``--quick`` or full default (``QUICK``/``FULL``)."""

    data: Path
    out: Path
    tasks: tuple[str, ...] = tuple(TASKS)
    #: registered methods (``method@corpus`` too) and ``scratch*``; with neither ``methods`` nor
    #: ``weights``, the ``--quick`` or full default (``QUICK["methods"]``, :data:`TABLE_METHODS`)
    methods: tuple[str, ...] = ()
    weights: tuple[str, ...] = ()
    quick: bool = False
    folds: tuple[int, ...] | None = None
    #: probe seeds (classification); segmentation runs the first ``seg_seeds`` of them
    seeds: tuple[int, ...] | None = None
    seg_seeds: int = 1
    pretrain_minutes: float | None = None
    #: every pre-training runs this many steps instead of a calibrated time budget: the same steps on
    #: any machine, and recipes compared at equal steps however busy the machine is
    pretrain_steps: int | None = None
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
    #: the linear probe's few-label curve: fractions of each class's training groups (1 is "linear")
    label_fractions: tuple[float, ...] | None = None
    #: classification tasks also fine-tuned (protocol "finetune"); POCUS' thousands of frames would take
    #: hours on a CPU, so BUSI alone by default
    ft_tasks: tuple[str, ...] = ("busi-classify",)
    #: ClassifyConfig.mode of that fine-tuning: full (layer-wise lr decay, as MAE fine-tunes) | partial
    ft_mode: str = "full"
    ft_epochs: int | None = None
    #: classification fine-tuning runs the first ``ft_seeds`` probe seeds (as ``seg_seeds``)
    ft_seeds: int = 1
    #: the command line as typed (recorded)
    command: str = ""

    def resolved(self) -> BenchmarkOptions:
        """The options with every None replaced by its ``--quick`` or full default, checked."""
        defaults = QUICK if self.quick else FULL
        out = replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})
        if not out.methods and not out.weights:
            out = replace(out, methods=defaults["methods"])
        unknown = [t for t in out.tasks if t not in TASKS]
        if unknown:
            raise ConfigError(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
        if not out.seeds or not out.folds or out.seg_seeds < 1 or out.img_size < 16:
            raise ConfigError("folds and seeds must not be empty; seg_seeds >= 1; img_size >= 16")
        if out.pretrain_minutes <= 0 or out.seg_epochs < 1 or out.calib_steps < 1:
            raise ConfigError("pretrain_minutes must be > 0; seg_epochs and calib_steps >= 1")
        if out.pretrain_steps is not None and out.pretrain_steps < 1:
            raise ConfigError(f"pretrain_steps must be >= 1, got {out.pretrain_steps}")
        not_classify = [t for t in out.ft_tasks if t not in TASKS or TASKS[t].kind != "classify"]
        if not_classify:
            choose = ", ".join(t for t, s in TASKS.items() if s.kind == "classify")
            raise ConfigError(
                f"ft_tasks: {not_classify[0]!r} is not a classification task; choose from {choose}"
            )
        if out.ft_mode not in FT_MODES or out.ft_epochs < 1 or out.ft_seeds < 1:
            raise ConfigError(
                f"ft_mode must be {' | '.join(FT_MODES)} (got {out.ft_mode!r}); ft_epochs and ft_seeds >= 1"
            )
        if any(not 0 < f <= 1 for f in out.label_fractions):
            raise ConfigError(f"label_fractions must be in (0, 1], got {list(out.label_fractions)}")
        return out

    def design(self) -> dict[str, Any]:
        return {k: _plain(getattr(self, k)) for k in (*DESIGN_KEYS, *GROWING_KEYS)}


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` did: the results JSON, its summaries, and how many evaluations ran
    now or were read back from an earlier run. ``completed`` counts the evaluated entries that an
    earlier run had stored without every protocol (e.g. before "finetune" existed): only their missing
    protocols ran."""

    results_file: Path
    summary: dict[str, Any]
    lifts: dict[str, Any]
    evaluated: int
    read_back: int
    seconds: float
    skipped: list[str] = field(default_factory=list)
    completed: int = 0


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
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def pretraining_runs(opt: BenchmarkOptions, encoders: list[EncoderChoice]) -> list[str]:
    """The pre-training runs the design needs (``corpus/method``, once per fold): one per method and
    corpus, the tasks of one data set sharing it."""
    own = sorted({TASKS[t].folder for t in opt.tasks})
    pairs = {
        f"{corpus}/{enc.method}"
        for enc in encoders
        if enc.source == "method"
        for corpus in ([enc.corpus] if enc.corpus else own)
    }
    return sorted(pairs)


def _design_statement(opt: BenchmarkOptions, encoders: list[EncoderChoice]) -> dict[str, Any]:
    runs = len(pretraining_runs(opt, encoders)) * len(opt.folds)
    each = (
        f"{opt.pretrain_steps} steps (given, not calibrated)"
        if opt.pretrain_steps
        else f"{opt.pretrain_minutes:g} min: at least {runs * opt.pretrain_minutes / 60:.1f} h before any "
        "evaluation"
    )
    return {
        "pretraining_runs": runs,
        "pretraining": (
            f"{runs} pre-training runs (each method once per data set it is evaluated on, or per named "
            f"corpus, and fold) of {each}"
        ),
        "folds": list(opt.folds),
        "seeds": list(opt.seeds),
        "segmentation_seeds": list(opt.seeds[: opt.seg_seeds]),
        "finetune_tasks": [t for t in opt.tasks if t in opt.ft_tasks],
        "finetune_seeds": list(opt.seeds[: opt.ft_seeds]),
        "finetune": (
            f"classification fine-tuning ('finetune'; mode {opt.ft_mode}, {opt.ft_epochs} epochs, its epoch "
            "picked on the seed's validation groups) on "
            + (", ".join(t for t in opt.tasks if t in opt.ft_tasks) or "no task")
            + f", seeds {list(opt.seeds[: opt.ft_seeds])}: the same folds and test frames as the frozen "
            "probes, on fewer tasks and seeds because it costs far more time than a probe"
        ),
        "label_fractions": [f for f in opt.label_fractions if f < 1] + [1.0],
        "few_labels": (
            "'linear@f': the linear probe trained on a fraction f of each class's training groups (whole "
            "groups, at least one per class; one seeded permutation per class and seed, so the smaller "
            "subsets lie inside the larger), its C picked on the same validation groups; 'linear' is f = 1. "
            "Not for a method that pre-trains on the training labels (USCL): it saw every label of the fold"
        ),
        "repeats": (
            "each (fold, seed) is one value; a seed re-draws the validation groups carved from the fold's "
            "training groups (they pick the probe's C and k, and segmentation's epoch) and a random "
            "encoder's initialisation. Pre-training runs once per corpus and fold (seed "
            f"{opt.seed}; the tasks of one data set share it): its own run-to-run spread is not in the "
            "intervals."
        ),
        "intervals": "95 % Student-t over the folds, each fold's seeds averaged first (they share the fold's "
        "test patients); lifts paired by fold with the random encoder of the same architecture, over the "
        "seeds both have; 'detectable' = smallest true lift a paired t-test (two-sided alpha 0.05) finds "
        "with power 0.8 given the observed spread and number of folds. Folds share training patients, so "
        "the intervals still lean narrow",
        "quick": (
            f"--quick: folds {list(opt.folds)}, seeds {list(opt.seeds)}, {opt.pretrain_minutes:g} min "
            f"pre-training per fold, {opt.seg_epochs} segmentation epochs, {opt.ft_epochs} classification "
            "fine-tuning epochs: a first look, not a result"
            if opt.quick
            else None
        ),
    }


class _Encoders:
    """Backbones of the chosen encoders: loaded fresh for every evaluation (segmentation trains the
    encoder it is given), pre-trained per corpus and fold on first use (so the tasks of one data set
    share their pre-training runs)."""

    def __init__(self, opt: BenchmarkOptions, store: ResultsFile):
        self.opt, self.store = opt, store
        #: the pre-training run behind the backbone :meth:`backbone` returned last (None: not pre-trained
        #: here); kept in each result entry, so that completing an entry never mixes two pre-trainings
        self.identity: dict[str, Any] | None = None
        #: the prepared tasks pre-training corpora are read through, by task name
        self._tasks: dict[str, PreparedTask] = {}
        #: the pre-training runs this invocation has asked for: a run cut short is continued once per
        #: invocation, so that its seeds and tasks here all measure the same run
        self._asked: set[str] = set()
        self.budget = PretrainBudget(
            opt.pretrain_minutes,
            opt.calib_steps,
            opt.img_size,
            opt.seed,
            opt.device,
            opt.precision,
            opt.pretrain_set,
            opt.pretrain_batch,
            opt.pretrain_steps,
        )

    def backbone(self, enc: EncoderChoice, task: PreparedTask, fold: int, seed: int) -> Any:
        from ultrassl.finetune.backbones import load_backbone
        from ultrassl.models.spec import EncoderSpec

        s = self.opt.img_size
        self.identity = None
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
        return load_backbone(self.pretrained(enc, task, fold))

    def corpus(self, enc: EncoderChoice, task: PreparedTask) -> Corpus:
        """What ``enc`` pre-trains on for ``task``: the task's data set, the one named after ``@``, or
        every data set (``@multi``), each read through its :data:`CORPUS_TASKS` task."""
        name = enc.corpus or task.spec.folder
        folders = list(CORPUS_TASKS) if name == "multi" else [name]
        tasks = []
        for folder in folders:
            corpus_task = CORPUS_TASKS[folder]
            if corpus_task not in self._tasks:
                self._tasks[corpus_task] = (
                    task
                    if corpus_task == task.name
                    else prepare_task(corpus_task, self.opt.data, self.opt.out / "work", seed=self.opt.seed)
                )
            tasks.append(self._tasks[corpus_task])
        return Corpus(name, tuple(tasks))

    def pretrained(self, enc: EncoderChoice, task: PreparedTask, fold: int) -> Path:
        corpus = self.corpus(enc, task)
        work = self.opt.out / "work" / "pretrain" / corpus.name
        calib = self.store.doc.setdefault("calibration", {})
        key = f"{corpus.name}/{enc.method}"
        if self.opt.pretrain_steps:
            calib[key] = {"steps": self.opt.pretrain_steps, "given": True}
        elif key not in calib:
            t0 = time.monotonic()
            calib[key] = calibrate(corpus, enc.method, self.budget, work, log.info)
            self.store.doc.setdefault("steps", {})[f"calibrate/{key}"] = round(time.monotonic() - t0, 1)
            self.store.save()
        name = f"{corpus.name}/fold{fold}/{enc.method}"
        run, info = pretrain_fold(
            corpus,
            fold,
            enc.method,
            calib[key]["steps"],
            self.budget,
            work,
            log.info,
            name not in self._asked,
        )
        self._asked.add(name)
        self.store.doc.setdefault("pretrain", {})[name] = info
        self.store.save()
        self.identity = {"run": name, "steps": info.get("steps"), "final_loss": info.get("final_loss")}
        return run


def _pretraining_outdated(store: ResultsFile, entry: dict[str, Any]) -> bool:
    """Whether ``entry`` rests on a pre-training run that stopped before its planned steps (the next
    :func:`pretrain_fold` continues it) or that has changed since (continued for another task of its
    data set): either way it is evaluated again, on the run as it is now."""
    ident = entry.get("pretrain") or {}
    record = (store.doc.get("pretrain") or {}).get(ident.get("run")) if ident else None
    if not record:
        return False
    now = (record.get("steps"), record.get("final_loss"))
    return cut_short(record) or now != (ident.get("steps"), ident.get("final_loss"))


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
    # a full run may span several invocations (stopped, resumed, even on another machine): each one's
    # command, machine, wall time and evaluations, kept up to date as it goes
    invocation: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": opt.command,
        "machine": store.doc["machine"],
        "seconds": 0.0,
        "evaluated": 0,
    }
    store.doc.setdefault("invocations", []).append(invocation)
    commands = store.doc.setdefault("commands", [])
    store.doc["command"] = opt.command
    if opt.command and opt.command not in commands:
        commands.append(opt.command)
    store.doc["options"] = {k: _plain(v) for k, v in asdict(opt).items() if k != "command"}
    store.doc["options"]["data"], store.doc["options"]["out"] = str(opt.data), str(opt.out)
    store.doc["design"] = _design_statement(opt, encoders)
    log.info(f"design: {store.doc['design']['pretraining']}")
    store.doc["encoders"] = {
        e.name: {
            **{k: v for k, v in asdict(e).items() if k != "name"},
            "learns_from_labels": learns_from_labels(e),
        }
        for e in encoders
    }
    store.save()

    settings = ProbeSettings(
        opt.linear_c,
        opt.knn_k,
        opt.seg_epochs,
        device=opt.device,
        label_fractions=opt.label_fractions,
        ft_mode=opt.ft_mode,
        ft_epochs=opt.ft_epochs,
    )
    loader = _Encoders(opt, store)
    evaluated = read_back = completed = 0
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
                    stored = store.results.get(key)
                    # an entry of an earlier run may lack a protocol added since (e.g. "finetune"), hold
                    # a fine-tuning of earlier code, or rest on a pre-training cut short, which is
                    # continued now (its entries anew, below)
                    missing = [
                        p
                        for p in expected_protocols(opt, task, seed, enc)
                        if not stored
                        or p not in stored["metrics"]
                        or (p == "finetune" and finetune_outdated(stored))
                        or _pretraining_outdated(store, stored)
                    ]
                    if not missing:
                        read_back += 1
                        continue
                    t0 = time.monotonic()
                    backbone = loader.backbone(enc, task, k, seed)
                    encoder_s = time.monotonic() - t0
                    if stored and stored.get("pretrain", loader.identity) != loader.identity:
                        # pre-trained again since (its run folder was removed): every protocol anew
                        log.info(f"{key}: its pre-training changed since it was stored; evaluating it again")
                        stored, missing = None, list(expected_protocols(opt, task, seed, enc))
                    work = opt.out / "work" / name / "eval" / enc.name
                    entry = stored or {
                        "task": name,
                        "encoder": enc.name,
                        "twin": enc.twin,
                        "fold": k,
                        "seed": seed,
                        "metric_names": list(CLASSIFY_METRICS if classify else SEGMENT_METRICS),
                        "metrics": {},
                    }
                    if loader.identity is not None:
                        entry["pretrain"] = loader.identity
                    for part in _parts(missing, classify):
                        t1 = time.monotonic()
                        if part == "frozen":
                            metrics = ev.classify(backbone, k, seed)
                        elif part == "finetune":
                            metrics = ev.classify_finetune(backbone, k, seed, work / f"ft_fold{k}_seed{seed}")
                        else:
                            metrics = ev.segment(backbone, k, seed, work / f"fold{k}_seed{seed}")
                        metrics = {p: m for p, m in metrics.items() if p in missing}  # stored ones stay
                        seconds = time.monotonic() - t1
                        entry = {
                            **entry,
                            "metrics": {**entry["metrics"], **metrics},
                            "seconds": round(entry.get("seconds", 0.0) + seconds, 2),
                            "seconds_with_encoder": round(
                                entry.get("seconds_with_encoder", 0.0) + seconds + encoder_s, 2
                            ),
                        }
                        encoder_s = 0.0
                        invocation["seconds"] = round(time.monotonic() - t_start, 1)
                        invocation["evaluated"] = evaluated + 1  # this one, in part at least
                        store.put(key, entry)  # after each part: a kill in fine-tuning keeps the probes
                        log.info(f"{key}: " + _describe(metrics))
                    evaluated += 1
                    invocation["evaluated"] = evaluated
                    completed += stored is not None
        store.summarize()  # every task's summaries (the whole file), once this task's evaluations are in
        store.save()
    store.doc["seconds_last_run"] = invocation["seconds"] = round(time.monotonic() - t_start, 1)
    store.save()
    return BenchmarkResult(
        store.path,
        store.doc.get("summary", {}),
        store.doc.get("lifts", {}),
        evaluated,
        read_back,
        time.monotonic() - t_start,
        skipped,
        completed,
    )


def expected_protocols(
    opt: BenchmarkOptions, task: PreparedTask, seed: int, enc: EncoderChoice | None = None
) -> tuple[str, ...]:
    """The protocols the result entry of (``task``, ``seed``, ``enc``) holds under ``opt`` (resolved): a
    stored entry without one of them is completed rather than read back as finished. A method that
    pre-trains on the training labels (USCL) has no few-label curve: it saw every label of the fold."""
    if task.spec.kind != "classify":
        return ("finetune",)
    few = tuple(fraction_protocol(f) for f in sorted(set(opt.label_fractions)) if f < 1)
    if enc is not None and learns_from_labels(enc):
        few = ()
    tuned = task.name in opt.ft_tasks and seed in opt.seeds[: opt.ft_seeds]
    return ("linear", "knn", *few, *(("finetune",) if tuned else ()))


def learns_from_labels(enc: EncoderChoice) -> bool:
    """Whether ``enc`` is a registered method that pre-trains on the manifest's labels."""
    from ultrassl.methods import get_method

    return enc.source == "method" and get_method(enc.method).uses_labels


def _parts(missing: list[str], classify: bool) -> list[str]:
    """What to run for the ``missing`` protocols: the frozen probes (all in one, cheap), classification
    fine-tuning, or segmentation."""
    if not classify:
        return ["segment"]
    frozen = ["frozen"] if any(p != "finetune" for p in missing) else []
    return frozen + (["finetune"] if "finetune" in missing else [])


def _describe(metrics: dict[str, dict[str, Any]]) -> str:
    parts = []
    for protocol, m in metrics.items():
        shown = [f"{k} {m[k]:.3f}" for k in (*CLASSIFY_METRICS, *SEGMENT_METRICS) if m.get(k) is not None]
        parts.append(f"{protocol}: " + ", ".join(shown))
    return "; ".join(parts)
