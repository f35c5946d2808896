"""Pre-training inside the benchmark: per test fold, on the training folds' files only, for a wall-clock
budget turned into a step count.

Why steps and not a time limit: a schedule (warm-up, cosine) must know its length in advance, and every
fold should train the same number of steps. A short calibration run measures the method's samples per
second on this machine once per corpus, and the budget becomes ``minutes x rate / batch`` steps; the wall
time each run took is recorded beside it (a cap, :func:`time_cap`, stops a run that a shared machine
slows down; the same command again continues it). A step count given outright (``--pretrain-steps``) replaces the calibration and the cap:
the same steps on any machine. Labels of the fold's training groups stay in its pre-training manifest (a method that learns
from labels, as USCL, sees only those); validation and test groups are unlabelled or absent.

What a pre-training reads is its :class:`Corpus`: by default the evaluated task's own data set (one
pre-training per fold then serves every task of that data set, which share their test folds), or
several data sets together (``multi``: POCUS, BUSI and HC18), each with its fold-``k`` test groups left
out, so that the encoder evaluated on fold ``k`` of any task has never seen that task's test groups.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ultrassl import time_budget
from ultrassl.atomic import atomic_write_text
from ultrassl.benchmark.encoders import METHOD_CACHES, METHOD_PRESETS
from ultrassl.benchmark.tasks import PreparedTask
from ultrassl.data.manifest import read_manifest, write_manifest

__all__ = ["Corpus", "PretrainBudget", "calibrate", "cut_short", "pretrain_fold", "pretrain_manifest"]


@dataclass(frozen=True)
class PretrainBudget:
    """How much each pre-training may take, and what it runs at."""

    minutes: float
    calib_steps: int = 12
    img_size: int = 112
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    #: ``--set`` items for every pre-training (after the preset), e.g. a smaller model in tests
    overrides: tuple[str, ...] = ()
    batch_size: int | None = None
    #: the steps every run takes, given rather than calibrated from ``minutes`` (then no time cap)
    steps: int | None = None


@dataclass(frozen=True)
class Corpus:
    """What a pre-training reads: ``name`` (a data set's folder, or ``multi``) and the tasks through
    which its data sets are read (:data:`~ultrassl.benchmark.tasks.CORPUS_TASKS`)."""

    name: str
    tasks: tuple[PreparedTask, ...]


def pretrain_manifest(corpus: PreparedTask | Sequence[PreparedTask], k: int, out: Path) -> Path:
    """Every file of the corpus' tasks whose group is not tested in their fold ``k``, without masks;
    labels only on each task's fold-``k`` training groups (never its validation or test groups)."""
    tasks = [corpus] if isinstance(corpus, PreparedTask) else list(corpus)
    rows = []
    for task in tasks:
        train_groups = set(task.folds[k].train_groups) if k < len(task.folds) else set()
        rows += [
            dataclasses.replace(r, label=r.label if r.group_id in train_groups else None, mask_path=None)
            for r in read_manifest(task.manifest)
            if task.fold_of.get(r.group_id, -1) != k
        ]
    if not out.exists():
        write_manifest(rows, out)
    return out


def _run(
    name: str,
    manifest: Path,
    run: Path,
    budget: PretrainBudget,
    max_steps: int,
    calibration: bool,
    caches: Path,
) -> Any:
    from ultrassl import workflow
    from ultrassl.methods import build_pretrain_config

    preset = METHOD_PRESETS.get(name)
    # the schedule's shares, read from the preset with the user's --pretrain-set on top and scaled to the
    # budget's steps (a short warm-up, USCL's constant stretch); steps given in --pretrain-set are kept
    cfg = build_pretrain_config(name, preset, None, list(budget.overrides))
    shares = time_budget.scaled_shares(cfg.optim, cfg.train.epochs, max_steps, keep_given=True)
    names = ("warmup_steps", "constant_steps")
    optim = {
        k: v for k, v in zip(names, shares, strict=True) if v is not None and getattr(cfg.optim, k) is None
    }
    s = budget.img_size
    # a method's shareable cache in one folder for every corpus (``caches/<key>``), so that e.g.
    # UltraMAE solves each file's confidence map once for all runs of the benchmark
    cache = METHOD_CACHES.get(name)
    shared = [f"{cache}={caches / cache}"] if cache else []
    return workflow.pretrain(
        name,
        # decoded frames in one on-disk store per manifest and decode setting, mapped again by the
        # calibration, the fold's run and every method that decodes the same way
        {
            "manifest": str(manifest),
            "num_workers": 0,
            "scan_area": True,
            "frame_cache": str(caches / "frames"),
        },
        run,
        preset=preset,
        resume="fresh" if calibration else "auto",
        set=[*shared, *budget.overrides],
        max_steps=max_steps,
        seed=budget.seed,
        device=budget.device,
        precision=budget.precision,
        batch_size=budget.batch_size,
        checkpoint_every=0 if calibration else 50,
        time_limit=None if calibration or budget.steps else time_cap(budget.minutes),
        encoder={"img_size": [s, s]},
        train={"tensorboard": False, "log_every": 1 if calibration else 10},
        previews={"every": 0} if calibration else {},
        **({"optim": optim} if optim else {}),
    )


def time_cap(minutes: float) -> float:
    """The minutes a pre-training of a ``minutes`` budget may take before it is stopped: three times the
    budget, and at least a minute more than it (so that a budget of seconds, as a test's, is not cut by
    a moment's load)."""
    return max(3 * minutes, minutes + 1.0)


def calibrate(
    corpus: Corpus, name: str, budget: PretrainBudget, work: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Samples per second of method ``name`` on this machine (a short run on fold 0's training part of
    the corpus), and the step count the budget buys."""
    manifest = pretrain_manifest(corpus.tasks, 0, work / "manifests" / f"fold0_{name}.csv")
    run = work / "calibration" / name
    shutil.rmtree(run, ignore_errors=True)

    # the measurement and the step count are pretrain --schedule-to-time-limit's (ultrassl.time_budget)
    def brief(where: Path, steps: int) -> Any:
        return _run(name, manifest, where, budget, steps, calibration=True, caches=work.parent / "caches")

    measured = time_budget.calibrate(brief, run, budget.calib_steps)
    rate, batch, seconds = measured.samples_per_s, measured.batch, measured.seconds
    steps = time_budget.steps_for(budget.minutes, rate, batch)
    log(f"calibrated {corpus.name}/{name}: {rate:.1f} samples/s, batch {batch} -> {steps} steps")
    return {"samples_per_s": rate, "batch": batch, "steps": steps, "seconds_with_setup": round(seconds, 1)}


def pretrain_fold(
    corpus: Corpus,
    k: int,
    name: str,
    steps: int,
    budget: PretrainBudget,
    work: Path,
    log: Callable[[str], None],
    continue_short: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Pre-train method ``name`` on the corpus' fold-``k`` training part for ``steps`` steps (resumable:
    a run folder marked done is read back) in ``work`` (the corpus' folder; its parent keeps the caches
    every corpus shares); returns the run folder and what the run did.

    A run marked done short of its steps (:func:`cut_short`: a busy machine slowed it past its time
    cap) is continued from its last checkpoint to them, as the same schedule resumed, so the next
    invocation heals it; its seconds add up over the starts. ``continue_short=False`` reads it back as it
    is (the caller continues a run at most once per invocation, so that the seeds and tasks of one
    invocation measure the same run)."""
    run = work / "runs" / f"fold{k}" / name
    done = run / "benchmark_done.json"
    before: dict[str, Any] = json.loads(done.read_text()) if done.exists() else {}
    if before and not (continue_short and cut_short(before)):
        return run, before
    manifest = pretrain_manifest(corpus.tasks, k, work / "manifests" / f"fold{k}_{name}.csv")
    given = "given" if budget.steps else f"{budget.minutes:g} min budget"
    if before:
        log(
            f"continuing {name} on {corpus.name} fold {k} from step {before.get('steps', 0)} to its {steps} "
            f"steps (it stopped short: {before.get('stopped_by')})"
        )  # its record stays until the continuation's replaces it: a kill now loses no seconds
    else:
        log(f"pre-training {name} on {corpus.name} fold {k}: {steps} steps ({given})")
    t0 = time.monotonic()
    result = _run(name, manifest, run, budget, steps, calibration=False, caches=work.parent / "caches")
    info = {
        "steps": result.steps,
        "planned_steps": steps,
        "train_seconds": round(result.seconds + before.get("train_seconds", 0.0), 1),
        "seconds_with_setup": round(time.monotonic() - t0 + before.get("seconds_with_setup", 0.0), 1),
        "stopped_by": result.stopped_by,
        "final_loss": result.final_loss,
        "corpus": [t.spec.folder for t in corpus.tasks],
        "files": sum(1 for _ in read_manifest(manifest)),
        **({"starts": before.get("starts", 1) + 1} if before else {}),
    }
    if result.steps < steps:
        log(
            f"WARNING: {name} on {corpus.name} fold {k} stopped after {result.steps} of {steps} steps "
            f"({result.stopped_by}): a machine busy with other work slows a run past its time cap; "
            "the same command again continues it (and evaluates its rows again), and until then the "
            "results page names it"
        )
    atomic_write_text(done, json.dumps(info, indent=2) + "\n")
    return run, info


def cut_short(info: dict[str, Any]) -> bool:
    """Whether a pre-training run's record (``benchmark_done.json``, the JSON's ``pretrain``) says it
    stopped before its planned steps."""
    planned = info.get("planned_steps")
    return planned is not None and int(info.get("steps") or 0) < int(planned)
