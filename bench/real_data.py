"""The project's evidence on real data: POCUS classification, HC18 segmentation, a few-label curve.

For each test fold k of the data's own ``fold`` column (patient-grouped, seed 42), every self-supervised
method is pre-trained on the dev files whose patient is *not* in fold k (any class or probe; labels
unused, except USCL's semi-supervised cross-entropy, which sees the labels of fold k's *training* groups
only, never its validation or test groups), for the same wall-clock budget, and fold k alone is then
evaluated (linear probe, and full fine-tuning for the ViTs or the last block for ResNet-18 as in
USCL's protocol; Dice/IoU on HC18). Scratch baselines use the same architectures (ViT-T/16 for the
MAEs, ResNet-18 for USCL).

Budget: ``--pretrain-minutes`` per method per fold. Each method's throughput is measured once per data
set (a short calibration run on fold 0's data) and the minutes become a step count, so the learning-rate
schedule (5 % warm-up, cosine) ends with the budget and every fold trains the same number of steps;
the measured wall time of every run is recorded next to it (a cap of 3x the budget stops a run that
the shared machine slows down).

Resumable: pre-training resumes from its run folder's checkpoint, an evaluation whose ``report.json``
exists is read instead of re-run, and the results JSON is rewritten atomically after every step.

    OMP_NUM_THREADS=2 python bench/real_data.py --pretrain-minutes 1 --finetune-epochs 3 --folds 0,1

Outputs: ``bench/results/real_data.json`` (``python bench/render_docs.py`` renders the REAL_DATA section
of ``docs/benchmarks.md`` and ``docs/real_data_fewlabel.png`` from it). Run folders go to ``--work``
(default ``bench/work/``, ignored by git; never commit data or runs).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import (
    DATA,
    HYBRID_VS_VIT,
    PRESETS,
    RESULTS,
    ROOT,
    SCRATCH_ONLY,
    command_line,
    machine_info,
    paired_diff,
    scratch_of,
)

from ultrassl.jsonable import jsonable

SSL_METHODS = ("mae", "deblur-mae", "ultramae", "convmae", "deblur-convmae", "uscl")
ALL_METHODS = ("scratch", *SSL_METHODS)
#: POCUS evaluation modes per architecture unless ``--modes`` names them: the ViTs are probed and fully
#: fine-tuned (the MAE papers' protocols), ResNet-18 probed and fine-tuned from its last block (USCL's)
MODES_BY_ARCH = {
    "scratch-vit": ("linear", "full"),
    "scratch-convvit": ("linear", "full"),
    "scratch-r18": ("linear", "partial"),
}
#: HC18 heads per architecture (ResNet-18: U-Net; ConvViT: UPerNet on its stages and U-Net, as
#: DeblurringMIM); the plain ViTs take ``--seg-heads``
SEG_HEADS_BY_ARCH = {"scratch-convvit": ("upernet", "unet"), "scratch-r18": ("unet",)}
CLS_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
#: options that define the budget: runs merged into one results file must share them
BUDGET_KEYS = (
    "pretrain_minutes",
    "finetune_epochs",
    "seg_epochs",
    "img_size",
    "seed",
    "scan_area",
    "calib_steps",
    "pretrain_batch",
)


@dataclass
class Options:
    data: Path = DATA
    out: Path = RESULTS / "real_data.json"
    work: Path = ROOT / "bench" / "work" / "real_data"
    tasks: tuple[str, ...] = ("pocus", "hc18", "fewlabel")
    methods: tuple[str, ...] = ALL_METHODS
    folds: tuple[int, ...] = (0, 1, 2, 3, 4)
    hc18_folds: tuple[int, ...] | None = None  # None: the same as folds
    pretrain_minutes: float = 4.0
    finetune_epochs: int = 10
    seg_epochs: int = 10
    img_size: int = 112
    modes: tuple[str, ...] | None = None  # None: MODES_BY_ARCH
    fewlabel_fractions: tuple[float, ...] = (0.1, 0.25, 0.5)
    fewlabel_modes: tuple[str, ...] | None = None  # None: the POCUS modes of each encoder
    seg_heads: tuple[str, ...] = ("mae", "upernet")
    seed: int = 0
    calib_steps: int = 12
    #: pre-training batch size for every method (None: the presets', UltraMAE 16)
    pretrain_batch: int | None = None
    #: pre-training precision (``auto``: the library's default); recorded with each calibration
    precision: str = "auto"
    #: the scan-area crop for pre-training and evaluation (off: whole frames, overlays and all)
    scan_area: bool = True
    #: the online probe (k-NN on fold k's labelled training groups) during pre-training; best.pt is then
    #: evaluated beside the last checkpoint as "<method>@best"
    probe: bool = False
    command: str = ""
    progress: bool = False
    log: Callable[[str], None] = field(default=lambda s: print(s, flush=True))


# ----------------------------------------------------------------------------------------------------
# results file (rewritten atomically after every step)


class Results:
    def __init__(self, path: Path):
        self.path = path
        self.doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        self.doc.setdefault("steps", {})

    def save(self) -> None:
        from ultrassl.atomic import atomic_write_text

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(jsonable(self.doc), indent=2) + "\n")

    def step(self, name: str, seconds: float, **extra: Any) -> None:
        """Wall time of one step (the first run's time is kept when a resumed run only reads it back)."""
        old = self.doc["steps"].get(name)
        if old is None or not extra.get("cached"):
            self.doc["steps"][name] = {"seconds": round(seconds, 2), **extra}
        self.save()


# ----------------------------------------------------------------------------------------------------
# data: manifests, folds, per-fold pre-training manifests


@dataclass
class Dataset:
    name: str  # pocus | hc18
    manifest: Path  # every dev file, indexed
    folds_file: Path
    fold_of: dict[str, int]  # group -> test fold
    folds: list[Any]  # splits.Fold per fold number


def _fold_column(csv_path: Path, prefix: str) -> tuple[dict[str, int], dict[str, str], dict[str, str]]:
    """({group: fold}, {path below the data set folder: group}, {path: mask path}) from a data set's own
    manifest."""
    fold_of: dict[str, int] = {}
    group_of: dict[str, str] = {}
    mask_of: dict[str, str] = {}
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            g, k = row["source_id"], int(row["fold"])
            if fold_of.setdefault(g, k) != k:
                raise SystemExit(f"{csv_path}: group {g} sits in folds {fold_of[g]} and {k}")
            group_of[row["path"].removeprefix(prefix)] = g
            if row.get("mask_path"):
                mask_of[row["path"].removeprefix(prefix)] = row["mask_path"].removeprefix(prefix)
    return fold_of, group_of, mask_of


def prepare_pocus(opt: Options) -> Dataset:
    from ultrassl import api
    from ultrassl.data.group_folds import folds_from_assignment, read_folds, write_folds
    from ultrassl.data.manifest import read_manifest
    from ultrassl.data.public import write_pocus_labels

    src = opt.data / "pocus"
    work = opt.work / "pocus"
    work.mkdir(parents=True, exist_ok=True)
    labels, manifest = work / "labels.csv", work / "manifest.csv"
    if not manifest.exists():
        write_pocus_labels(src, labels)
        api.index(src, manifest, labels_csv=labels)
    fold_of, _, _ = _fold_column(src / "manifest.csv", "pocus/")
    folds_file = work / "folds.json"
    if not folds_file.exists():
        rows = [r for r in read_manifest(manifest) if r.label]
        folds = folds_from_assignment(
            [r.group_id for r in rows], [r.label for r in rows], fold_of, seed=opt.seed
        )
        write_folds(folds_file, folds, meta={"source": "pocus/manifest.csv fold column", "seed": opt.seed})
    return Dataset("pocus", manifest, folds_file, fold_of, read_folds(folds_file))


def prepare_hc18(opt: Options) -> Dataset:
    from ultrassl import api
    from ultrassl.data.group_folds import folds_from_assignment, read_folds, write_folds
    from ultrassl.data.manifest import read_manifest, write_manifest

    src = opt.data / "hc18"
    work = opt.work / "hc18"
    work.mkdir(parents=True, exist_ok=True)
    fold_of, group_of, mask_of = _fold_column(src / "manifest.csv", "hc18/")
    labels, manifest = work / "labels.csv", work / "manifest.csv"
    if not manifest.exists():
        with labels.open("w", newline="") as f:  # group ids (subjects) only; no class labels
            w = csv.writer(f)
            w.writerow(["path", "label", "group_id"])
            w.writerows([(p, "", g) for p, g in sorted(group_of.items())])
        api.index(src, manifest, labels_csv=labels)
        # HC18 keeps its masks in a sibling folder (hc18/masks/), which `index` does not look in
        rows = []
        for r in read_manifest(manifest):
            rel = Path(r.path).resolve().relative_to(src.resolve()).as_posix()
            if rel in group_of:  # the masks folder's PNGs are not images to segment
                rows.append(_replace(r, mask_path=str(src / mask_of[rel])))
        write_manifest(rows, manifest)
    folds_file = work / "folds.json"
    if not folds_file.exists():
        rows = [r for r in read_manifest(manifest) if r.mask_path]
        folds = folds_from_assignment([r.group_id for r in rows], [1] * len(rows), fold_of, seed=opt.seed)
        write_folds(folds_file, folds, meta={"source": "hc18/manifest.csv fold column", "seed": opt.seed})
    return Dataset("hc18", manifest, folds_file, fold_of, read_folds(folds_file))


def pretrain_manifest(ds: Dataset, k: int, method: str, out: Path) -> Path:
    """Every dev file whose group is not in test fold k, without masks; labels kept for USCL only, and
    only for fold k's training groups (never validation or test)."""
    from ultrassl.data.manifest import read_manifest, write_manifest

    train_groups = set(ds.folds[k].train_groups)
    rows = []
    for r in read_manifest(ds.manifest):
        if ds.fold_of.get(r.group_id, -1) == k:
            continue
        keep_label = method == "uscl" and r.group_id in train_groups
        rows.append(_replace(r, label=r.label if keep_label else None, mask_path=None))
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(rows, out)
    return out


def probe_manifest(ds: Dataset, k: int, out: Path) -> Path:
    """Fold k's labelled *training* groups (never its validation or test groups): what the online probe
    may score checkpoints on without seeing what fold k is evaluated on."""
    from ultrassl.data.manifest import read_manifest, write_manifest

    train_groups = set(ds.folds[k].train_groups)
    rows = [_replace(r, mask_path=None) for r in read_manifest(ds.manifest) if r.group_id in train_groups]
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        write_manifest(rows, out)
    return out


def _replace(row: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(row, **changes)


# ----------------------------------------------------------------------------------------------------
# pre-training


def method_config(
    method: str, manifest: Path, opt: Options, max_steps: int, calib: bool = False, probe: Path | None = None
):
    from ultrassl.methods import build_pretrain_config

    s = opt.img_size
    flags: dict[str, Any] = {
        "encoder": {"img_size": [s, s]},
        "data": {"manifest": str(manifest), "num_workers": 0, "scan_area": opt.scan_area},
        "train": {
            "max_steps": max_steps,
            "seed": opt.seed,
            "tensorboard": False,
            "device": "cpu" if calib else "auto",
            "log_every": 1 if calib else 10,
            "checkpoint_every": 0 if calib else 50,
            "time_limit": None if calib else 3 * opt.pretrain_minutes,
            "precision": opt.precision,
        },
    }
    if method != "uscl":
        # a short warm-up (5 %, as the presets' 5 of 100 epochs), then cosine to the end of the budget
        flags["optim"] = {"warmup_steps": max(1, round(0.05 * max_steps))}
    if method == "ultramae":
        # batch 16: with 32 the few stills of a fold would not fill one image batch (images + videos)
        flags["train"]["batch_size"] = 16
        # confidence maps solved once per clip for all folds (UltraMAE's start-up cost), cached on disk
        flags["ultramae"] = {"confidence_cache": str(opt.work / "confidence_cache")}
    if opt.pretrain_batch:
        flags["train"]["batch_size"] = opt.pretrain_batch
    if probe is not None:
        flags["probe"] = {"data": str(probe)}
    return build_pretrain_config(method=method, preset=PRESETS[method], flags=flags)


def calibrate(ds: Dataset, method: str, opt: Options, res: Results) -> dict[str, Any]:
    """Images (or clips) per second of this method on this machine: a short run on fold 0's data."""
    from ultrassl import api, time_budget

    key = f"{ds.name}/{method}"
    have = res.doc.setdefault("calibration", {}).get(key)
    if have:
        return have
    k = min(opt.folds) if ds.name == "pocus" else min(opt.hc18_folds or opt.folds)
    manifest = pretrain_manifest(ds, k, method, opt.work / ds.name / "manifests" / f"fold{k}_{method}.csv")
    run = opt.work / ds.name / "calibration" / method
    if run.exists():
        import shutil

        shutil.rmtree(run)
    # the measurement and the step count are the package's (ultrassl.time_budget, as the benchmark's)
    measured = time_budget.calibrate(
        lambda where, n: api.pretrain(
            method_config(method, manifest, opt, n, calib=True), where, progress=opt.progress
        ),
        run,
        opt.calib_steps,
    )
    rate, batch, seconds = measured.samples_per_s, measured.batch, measured.seconds
    steps = time_budget.steps_for(opt.pretrain_minutes, rate, batch)
    have = {
        "samples_per_s": rate,
        "batch": batch,
        "steps": steps,
        "seconds_with_setup": round(seconds, 1),
        "precision": opt.precision,
    }
    res.doc["calibration"][key] = have
    res.save()
    opt.log(f"calibrated {key}: {rate:.1f} samples/s, batch {batch} -> {steps} steps")
    return have


def probe_figures(run: Path) -> dict[str, Any]:
    """The online probe's k-NN score at the end and at its best step (empty without a probe)."""
    rows = []
    with contextlib.suppress(OSError), (run / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("probe_knn")]
    if not rows:
        return {}
    best = max(rows, key=lambda r: float(r["probe_knn"]))
    return {
        "probe_knn_last": float(rows[-1]["probe_knn"]),
        "probe_knn_best": float(best["probe_knn"]),
        "probe_best_step": int(best["step"]),
        "probe_last_step": int(rows[-1]["step"]),
        "probes": len(rows),
    }


def pretrain_run(ds: Dataset, k: int, method: str, opt: Options, res: Results) -> Path:
    """Pre-train ``method`` on fold k's training part (resumable); returns the run folder."""
    from ultrassl import api

    run = opt.work / ds.name / "runs" / f"fold{k}" / method
    done = run / "bench_done.json"
    name = f"pretrain/{ds.name}/fold{k}/{method}"
    if done.exists():
        res.doc.setdefault("pretrain", {})[name] = json.loads(done.read_text())
        return run
    steps = calibrate(ds, method, opt, res)["steps"]
    manifest = pretrain_manifest(ds, k, method, opt.work / ds.name / "manifests" / f"fold{k}_{method}.csv")
    probe = None
    if opt.probe and ds.name == "pocus":
        probe = probe_manifest(ds, k, opt.work / ds.name / "manifests" / f"fold{k}_probe.csv")
    cfg = method_config(method, manifest, opt, steps, probe=probe)
    opt.log(f"{name}: {steps} steps ({opt.pretrain_minutes:g} min budget)")
    t0 = time.monotonic()
    result = api.pretrain(cfg, run, resume=True, progress=opt.progress)
    seconds = time.monotonic() - t0
    info = {
        **probe_figures(run),
        "steps": result.step,
        "planned_steps": steps,
        "train_seconds": round(result.seconds, 1),
        "seconds_with_setup": round(seconds, 1),
        "stopped_by": result.stopped_by,
        "last_loss": result.last_loss,
    }
    from ultrassl.atomic import atomic_write_text

    atomic_write_text(done, json.dumps(jsonable(info), indent=2))
    res.doc.setdefault("pretrain", {})[name] = info
    res.step(name, seconds)
    return run


# ----------------------------------------------------------------------------------------------------
# evaluation (data decoded once per process and shared by every evaluation)

_FRAMESETS: dict[Any, Any] = {}
_SEGDATA: dict[Any, Any] = {}


def scratch_spec(arch: str, opt: Options):
    from ultrassl.models.vit import EncoderSpec

    s = opt.img_size
    if arch == "scratch-r18":
        return EncoderSpec("resnet18", (s, s), 16, 1)
    if arch == "scratch-convvit":
        return EncoderSpec("convvit_tiny_patch16", (s, s), 16, 1)
    return EncoderSpec("vit_tiny_patch16_224", (s, s), 16, 1)


def classify_eval(weights: str | Path, data: Path, out: Path, cfg: Any, spec: Any = None) -> dict[str, Any]:
    """``finetune_classify`` with the labelled frames decoded (and resized) once for all evaluations."""
    from ultrassl.data.frameset import load_frameset
    from ultrassl.data.manifest import read_manifest
    from ultrassl.finetune.backbones import resolve_backbone
    from ultrassl.finetune.classify import finetune_classify

    report = out / "report.json"
    if report.exists():
        return json.loads(report.read_text())
    backbone = resolve_backbone(weights, scratch_spec=spec)
    size = tuple(cfg.img_size or backbone.spec.img_size)
    key = (str(data), backbone.spec.in_chans, cfg.frame_fps, cfg.max_frames_per_video, cfg.scan_area, size)
    if key not in _FRAMESETS:
        _FRAMESETS[key] = load_frameset(
            read_manifest(data), cfg, backbone.spec.in_chans, progress=False, size=size
        )
    finetune_classify(weights, data, out, cfg, scratch_spec=spec, progress=False, frameset=_FRAMESETS[key])
    return json.loads(report.read_text())


def segment_eval(weights: str | Path, data: Path, out: Path, cfg: Any, spec: Any = None) -> dict[str, Any]:
    """``finetune_segment`` with the images and masks decoded and resized once for all evaluations."""
    from ultrassl.data.manifest import read_manifest
    from ultrassl.finetune.backbones import resolve_backbone
    from ultrassl.finetune.segment import finetune_segment, load_segdata

    report = out / "report.json"
    if report.exists():
        return json.loads(report.read_text())
    backbone = resolve_backbone(weights, scratch_spec=spec)
    s = backbone.spec
    key = (str(data), tuple(s.img_size), s.in_chans, tuple(backbone.mean), tuple(backbone.std))
    if key not in _SEGDATA:
        _SEGDATA[key] = load_segdata(
            read_manifest(data), tuple(s.img_size), s.in_chans, backbone.mean, backbone.std, progress=False
        )
    finetune_segment(weights, data, out, cfg, scratch_spec=spec, progress=False, segdata=_SEGDATA[key])
    return json.loads(report.read_text())


def fold_metrics(report: dict[str, Any], fraction: float = 1.0) -> dict[str, dict[str, float]]:
    """``{level: {metric: value}}`` of a one-fold classification report at one label fraction."""
    out: dict[str, dict[str, float]] = {}
    for r in report["folds"]:
        if math.isclose(float(r["label_fraction"]), fraction):
            out[r["level"]] = {m: r["metrics"].get(m) for m in CLS_METRICS}
    return out


def scratch_names(methods: Sequence[str]) -> list[str]:
    """What ``scratch`` runs: the ViT-T and ResNet-18 baselines, and ConvViT-T's when a ConvMAE is named."""
    convvit = any(scratch_of(m) == "scratch-convvit" for m in methods)
    return ["scratch-vit", *(["scratch-convvit"] if convvit else []), "scratch-r18"]


def pocus_eval_names(methods: Sequence[str], probe: bool = False) -> list[str]:
    names = []
    for m in methods:
        names += scratch_names(methods) if m == "scratch" else [m]
        if probe and m in SSL_METHODS:
            names.append(f"{m}@best")  # the checkpoint the online probe picked
    return names


def pocus_modes(name: str, opt: Options) -> tuple[str, ...]:
    """The POCUS evaluation modes of one encoder: ``--modes`` if given, else its architecture's."""
    return opt.modes or MODES_BY_ARCH[scratch_of(name.removesuffix("@best"))]


def weights_for(name: str, ds: Dataset, k: int, opt: Options, res: Results) -> tuple[str | Path, Any]:
    if name.startswith("scratch"):
        return "scratch", scratch_spec(name, opt)
    if name.endswith("@best"):
        from ultrassl import api

        run = pretrain_run(ds, k, name.removesuffix("@best"), opt, res)
        export = run / "export_best"
        if not (export / "model.safetensors").exists():
            api.export(run, export, checkpoint="best")
        return export, None
    return pretrain_run(ds, k, name, opt, res), None


def run_pocus(ds: Dataset, opt: Options, res: Results) -> None:
    from ultrassl.finetune.classify import ClassifyConfig

    table = res.doc.setdefault("pocus", {})
    for k in opt.folds:
        for name in pocus_eval_names(opt.methods, opt.probe):
            recorded = table.get(name, {})
            todo = [m for m in pocus_modes(name, opt) if str(k) not in recorded.get(m, {})]
            if not todo:  # every mode's result is in the results file (the work folder may be gone)
                opt.log(f"pocus fold {k} {name}: recorded in {opt.out.name}, skipped")
                continue
            weights, spec = weights_for(name, ds, k, opt, res)
            for mode in todo:
                out = opt.work / "pocus" / "eval" / name / mode / f"fold{k}"
                cfg = ClassifyConfig(
                    mode=mode,
                    folds_file=str(ds.folds_file),
                    only_folds=(k,),
                    seeds=(opt.seed,),
                    epochs=opt.finetune_epochs,
                    scan_area=opt.scan_area,
                )
                t0 = time.monotonic()
                cached = (out / "report.json").exists()
                report = classify_eval(weights, ds.manifest, out, cfg, spec)
                per = fold_metrics(report)
                table.setdefault(name, {}).setdefault(mode, {})[str(k)] = per
                res.step(f"eval/pocus/fold{k}/{name}/{mode}", time.monotonic() - t0, cached=cached)
                finish(opt, res)  # the table grows with every evaluation
                opt.log(
                    f"pocus fold {k} {name:12s} {mode:7s} acc {per['frame']['accuracy']:.3f} "
                    f"video acc {per['video']['accuracy']:.3f}"
                )
        finish(opt, res)


def seg_eval_names(methods: Sequence[str], heads: Sequence[str]) -> list[tuple[str, str]]:
    """(encoder, head) pairs: the plain ViTs take ``heads``, the others their architecture's heads."""
    out = []
    for m in methods:
        for name in scratch_names(methods) if m == "scratch" else (m,):
            out += [(name, h) for h in SEG_HEADS_BY_ARCH.get(scratch_of(name), heads)]
    return out


def run_hc18(ds: Dataset, opt: Options, res: Results) -> None:
    from ultrassl.finetune.segment import SegmentConfig

    table = res.doc.setdefault("hc18", {})
    for k in opt.hc18_folds or opt.folds:
        for name, head in seg_eval_names(opt.methods, opt.seg_heads):
            weights, spec = weights_for(name, ds, k, opt, res)
            out = opt.work / "hc18" / "eval" / f"{name}-{head}" / f"fold{k}"
            cfg = SegmentConfig(
                head=head,
                folds_file=str(ds.folds_file),
                only_folds=(k,),
                seeds=(opt.seed,),
                epochs=opt.seg_epochs,
                batch_size=16,
                n_overlays=2,
            )
            t0 = time.monotonic()
            cached = (out / "report.json").exists()
            report = segment_eval(weights, ds.manifest, out, cfg, spec)
            m = report["folds"][0]["metrics"]
            table.setdefault(f"{name}/{head}", {})[str(k)] = {"dice": m["dice"], "iou": m["iou"]}
            res.step(f"eval/hc18/fold{k}/{name}/{head}", time.monotonic() - t0, cached=cached)
            finish(opt, res)
            opt.log(f"hc18 fold {k} {name:12s} {head:8s} dice {m['dice']:.3f} iou {m['iou']:.3f}")
        finish(opt, res)


def best_method(res: Results, opt: Options) -> str | None:
    """The SSL method with the highest mean linear-probe accuracy on POCUS (full fine-tuning breaks ties)."""
    table = res.doc.get("pocus", {})
    scores = {}
    for m in SSL_METHODS:
        if m in table:
            lin = _mean_over_folds(table[m].get("linear", {}), "frame", "accuracy")
            ft = _mean_over_folds(table[m].get("full", {}), "frame", "accuracy")
            scores[m] = (lin if lin is not None else -1, ft if ft is not None else -1)
    return max(scores, key=scores.get) if scores else None


def run_fewlabel(ds: Dataset, opt: Options, res: Results) -> None:
    from ultrassl.finetune.classify import ClassifyConfig

    best = best_method(res, opt)
    if best is None:
        opt.log("fewlabel: no SSL method evaluated on POCUS yet; skipped")
        return
    baseline = scratch_of(best)
    curve = res.doc.setdefault("fewlabel", {})
    curve["best"], curve["baseline"] = best, baseline
    fractions = tuple(f for f in opt.fewlabel_fractions if f < 1.0)
    for k in opt.folds:
        for name in (best, baseline):
            weights, spec = weights_for(name, ds, k, opt, res)
            for mode in opt.fewlabel_modes or pocus_modes(name, opt):
                out = opt.work / "pocus" / "fewlabel" / name / mode / f"fold{k}"
                cfg = ClassifyConfig(
                    mode=mode,
                    folds_file=str(ds.folds_file),
                    only_folds=(k,),
                    seeds=(opt.seed,),
                    label_fractions=fractions,
                    epochs=opt.finetune_epochs,
                    scan_area=opt.scan_area,
                )
                t0 = time.monotonic()
                cached = (out / "report.json").exists()
                report = classify_eval(weights, ds.manifest, out, cfg, spec)
                node = curve.setdefault(name, {}).setdefault(mode, {})
                for f in fractions:
                    node.setdefault(f"{f:g}", {})[str(k)] = fold_metrics(report, f)
                # 100 %: the main POCUS evaluation of the same fold (same folds, seed and recipe)
                full = res.doc.get("pocus", {}).get(name, {}).get(mode, {}).get(str(k))
                if full:
                    node.setdefault("1", {})[str(k)] = full
                res.step(f"eval/fewlabel/fold{k}/{name}/{mode}", time.monotonic() - t0, cached=cached)
        finish(opt, res)


# ----------------------------------------------------------------------------------------------------
# aggregation, table, plot


def _values(per_fold: dict[str, Any], level: str | None, metric: str) -> list[float]:
    vals = []
    for v in per_fold.values():
        x = (v.get(level) or {}).get(metric) if level else v.get(metric)
        if x is not None:
            vals.append(float(x))
    return vals


def _mean_over_folds(per_fold: dict[str, Any], level: str | None, metric: str) -> float | None:
    vals = _values(per_fold, level, metric)
    return float(np.mean(vals)) if vals else None


def _stat(per_fold: dict[str, Any], level: str | None, metric: str) -> dict[str, Any]:
    vals = _values(per_fold, level, metric)
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": float(np.mean(vals)),
        "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
        "n": len(vals),
    }


def summarize_results(res: Results) -> dict[str, Any]:
    out: dict[str, Any] = {"pocus": {}, "hc18": {}, "fewlabel": {}}
    for name, modes in res.doc.get("pocus", {}).items():
        for mode, per_fold in modes.items():
            out["pocus"].setdefault(name, {})[mode] = {
                level: {m: _stat(per_fold, level, m) for m in CLS_METRICS} for level in ("frame", "video")
            }
    for key, per_fold in res.doc.get("hc18", {}).items():
        out["hc18"][key] = {m: _stat(per_fold, None, m) for m in ("dice", "iou")}
    fl = res.doc.get("fewlabel", {})
    for name in (fl.get("best"), fl.get("baseline")):
        for mode, by_fraction in (fl.get(name) or {}).items():
            out["fewlabel"].setdefault(name, {})[mode] = {
                f: _stat(per_fold, "frame", "accuracy") for f, per_fold in by_fraction.items()
            }
    return out


def _paired_gap(table: dict[str, Any], name: str, base: str, mode: str) -> tuple[float | None, int]:
    """Mean accuracy difference (points) of ``name`` over ``base`` on the folds both have run."""
    a, b = table.get(name, {}).get(mode, {}), table.get(base, {}).get(mode, {})
    return paired_diff(a, b, lambda fold: fold["frame"]["accuracy"])


def acceptance(res: Results) -> dict[str, Any]:
    """Each SSL method vs scratch of the same architecture: accuracy gaps (linear, partial, full),
    paired over the folds both have run (so a method with more folds is never compared to fewer)."""
    table = res.doc.get("pocus", {})
    rows, folds = {}, {}
    for m in SSL_METHODS:
        base = scratch_of(m)
        gap = {}
        for mode in ("linear", "partial", "full"):
            g, n = _paired_gap(table, m, base, mode)
            if n:
                gap[mode], folds.setdefault(m, {})[mode] = g, n
        if gap:
            rows[m] = gap
    holds = any((g.get("linear") or -99) >= 10 and (g.get("full") or -99) > 0 for g in rows.values())
    return {
        "gap_points_vs_scratch": rows,
        "paired_folds": folds,
        "holds": holds,
        "hybrid_vs_vit": hybrid_vs_vit(res),
    }


def hybrid_vs_vit(res: Results) -> dict[str, Any]:
    """ConvViT-T method minus its ViT-T counterpart, fold by fold (points): POCUS frame accuracy per
    mode, HC18 Dice per head both ran (UPerNet); only folds both have run."""
    pocus, hc = res.doc.get("pocus", {}), res.doc.get("hc18", {})
    out: dict[str, Any] = {}
    for hybrid, vit in HYBRID_VS_VIT.items():
        row: dict[str, Any] = {}
        for mode in ("linear", "full"):
            a, b = pocus.get(hybrid, {}).get(mode, {}), pocus.get(vit, {}).get(mode, {})
            per = {
                k: round(100 * (a[k]["frame"]["accuracy"] - b[k]["frame"]["accuracy"]), 1)
                for k in sorted(set(a) & set(b))
            }
            if per:
                row[f"pocus/{mode}"] = per
        for head in ("upernet",):
            a, b = hc.get(f"{hybrid}/{head}", {}), hc.get(f"{vit}/{head}", {})
            per = {k: round(100 * (a[k]["dice"] - b[k]["dice"]), 1) for k in sorted(set(a) & set(b))}
            if per:
                row[f"hc18/{head}"] = per
        if row:
            out[hybrid] = row
    return out


def finish(opt: Options, res: Results) -> None:
    summary = summarize_results(res)
    res.doc["summary"] = summary
    res.doc["acceptance"] = acceptance(res)
    res.save()


# ----------------------------------------------------------------------------------------------------
# the command


def run(opt: Options) -> Results:
    res = Results(opt.out)
    import torch

    from ultrassl.distributed import select_device
    from ultrassl.precision import flag_rule_dtype

    # the CPU computes bf16 natively (a machine fact; `--precision auto` measures, per run)
    bf16 = flag_rule_dtype(select_device("auto")) is torch.bfloat16
    res.doc["machine"] = machine_info(native_bf16=bf16)
    machines = res.doc.setdefault("machines", [])
    same = ("cpu", "cores", "gpu", "torch", "timm", "python", "native_bf16")
    if not machines or any(machines[-1].get(k) != res.doc["machine"].get(k) for k in same):
        machines.append(res.doc["machine"])
    cfg = jsonable({k: v for k, v in asdict(opt).items() if k not in ("log", "command", "progress")})
    old = res.doc.get("config") or {}
    changed = [k for k in BUDGET_KEYS if k in old and old[k] != cfg[k]]
    if changed:
        detail = ", ".join(f"{k} {old[k]} -> {cfg[k]}" for k in changed)
        raise SystemExit(
            f"{opt.out} holds results at another budget ({detail}); pass the same budget or a new --out"
        )
    commands = res.doc.setdefault("commands", [res.doc["command"]] if res.doc.get("command") else [])
    res.doc["command"] = opt.command
    if opt.command not in commands:
        commands.append(opt.command)
    from ultrassl.finetune.classify import FINETUNE_REVISION

    # the fine-tuning revision of the fine-tuned rows: a file that holds rows already keeps its own (1
    # when it recorded none), so that rows of earlier code stay flagged on the page
    held = bool(res.doc.get("pocus") or res.doc.get("fewlabel"))
    cfg["finetune_revision"] = old.get("finetune_revision", 1) if held else FINETUNE_REVISION
    res.doc["config"] = cfg
    res.doc["config"]["presets"] = PRESETS
    res.save()
    if "pocus" in opt.tasks or "fewlabel" in opt.tasks:
        t0 = time.monotonic()
        pocus = prepare_pocus(opt)
        res.step("prepare/pocus", time.monotonic() - t0, cached=True)
        if "pocus" in opt.tasks:
            run_pocus(pocus, opt, res)
        if "fewlabel" in opt.tasks:
            run_fewlabel(pocus, opt, res)
    if "hc18" in opt.tasks:
        t0 = time.monotonic()
        hc18 = prepare_hc18(opt)
        res.step("prepare/hc18", time.monotonic() - t0, cached=True)
        run_hc18(hc18, opt, res)
    finish(opt, res)
    return res


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _strs(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Options()
    p.add_argument("--data", type=Path, default=d.data, help="folder holding pocus/ and hc18/")
    p.add_argument("--out", type=Path, default=d.out, help="results JSON")
    p.add_argument("--work", type=Path, default=d.work, help="run and evaluation folders (git-ignored)")
    p.add_argument("--tasks", default=",".join(d.tasks), help="pocus,hc18,fewlabel")
    p.add_argument(
        "--methods",
        default=",".join(d.methods),
        help="scratch (= scratch-vit + scratch-r18, + scratch-convvit with a ConvMAE),mae,deblur-mae,"
        "ultramae,convmae,deblur-convmae,uscl",
    )
    p.add_argument("--folds", default="0,1,2,3,4", help="test folds to run (POCUS and HC18)")
    p.add_argument("--hc18-folds", default=None, help="HC18 test folds (default: --folds)")
    p.add_argument("--pretrain-minutes", type=float, default=d.pretrain_minutes)
    p.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs)
    p.add_argument("--seg-epochs", type=int, default=d.seg_epochs)
    p.add_argument("--img-size", type=int, default=d.img_size)
    p.add_argument(
        "--modes",
        default=None,
        help="POCUS modes for every encoder: linear,full,partial (default: linear,full for ViTs, "
        "linear,partial for ResNet-18)",
    )
    p.add_argument("--fewlabel-modes", default=None, help="default: each encoder's POCUS modes")
    p.add_argument("--seg-heads", default=",".join(d.seg_heads), help="ViT heads: mae,upernet")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--calib-steps", type=int, default=d.calib_steps)
    p.add_argument("--pretrain-batch", type=int, default=None, help="override every preset's batch size")
    p.add_argument(
        "--precision",
        default=d.precision,
        help="pre-training precision: auto (the library's default), fp32, bf16",
    )
    p.add_argument(
        "--no-scan-area",
        action="store_true",
        help="switch the scan-area crop off (pre-training and evaluation)",
    )
    p.add_argument(
        "--probe",
        action="store_true",
        help="online probe on fold k's labelled training groups while pre-training; best.pt evaluated too",
    )
    p.add_argument("--progress", action="store_true")
    p.add_argument(
        "--summary-only", action="store_true", help="recompute the summary and acceptance of --out and stop"
    )
    a = p.parse_args(argv)
    if a.summary_only:
        finish(Options(out=a.out), Results(a.out))
        return
    unknown = set(_strs(a.methods)) - set(ALL_METHODS) - set(SCRATCH_ONLY)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(ALL_METHODS + SCRATCH_ONLY)}")
    opt = Options(
        data=a.data,
        out=a.out,
        work=a.work,
        tasks=_strs(a.tasks),
        methods=_strs(a.methods),
        folds=_ints(a.folds),
        hc18_folds=_ints(a.hc18_folds) if a.hc18_folds else None,
        pretrain_minutes=a.pretrain_minutes,
        finetune_epochs=a.finetune_epochs,
        seg_epochs=a.seg_epochs,
        img_size=a.img_size,
        modes=_strs(a.modes) if a.modes else None,
        fewlabel_modes=_strs(a.fewlabel_modes) if a.fewlabel_modes else None,
        seg_heads=_strs(a.seg_heads),
        seed=a.seed,
        calib_steps=a.calib_steps,
        pretrain_batch=a.pretrain_batch,
        precision=a.precision,
        scan_area=not a.no_scan_area,
        probe=a.probe,
        command=command_line(__file__, argv),
        progress=a.progress,
    )
    if not (opt.data / "pocus" / "manifest.csv").exists():
        p.error(f"{opt.data}: no pocus/manifest.csv here (pass --data)")
    t0 = time.monotonic()
    res = run(opt)
    print(f"done in {(time.monotonic() - t0) / 60:.1f} min: {opt.out}", flush=True)
    print(json.dumps(res.doc.get("acceptance"), indent=2))


if __name__ == "__main__":
    main()
