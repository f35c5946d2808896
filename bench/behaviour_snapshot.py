"""A behaviour snapshot: every number the package computes on a fixed tiny synthetic data set, in one JSON,
so that a refactor can be shown to change nothing ("behaviour unchanged, shown old code against new").

Why: refactors of the training loop, the config sections, the evaluation engine or the caches must keep
every loss, checkpoint and report figure bit-for-bit. Unit tests check properties; this checks the
numbers themselves, end to end, old code against new, on the same machine.

What one snapshot holds (all in fp32 on the CPU, one thread, fixed seeds):

- for every built-in pre-training method (``ultrassl.api.method_names()``): a 6-step test-size
  pre-training, every metrics.csv row (loss, lr, grad-norm, epoch, val-loss; not timings), a checksum of
  the final checkpoint's model tensors (per tensor and overall) and of the exported safetensors, and
  the export's config.json (paths relative to the work folder);
- 3-fold classification (linear probe, partial and full fine-tuning) on one ViT export, linear and full
  on ``scratch``; 2-fold segmentation with each segmentation head (``mae`` and ``upernet`` on the ViT
  export, ``unet`` and ``upernet`` on the ConvViT export, ``mae`` on scratch): every figure of
  report.json, the predictions (classification) and checksums of the saved fold models; then
  ``ultrassl evaluate`` (the fold-model ensemble) on four of them;
- a resume check: one method trained 6 steps straight, and 3 steps then resumed to 6 (``bit_exact``);
- cache checks: pre-training through the on-disk frame store and through a confidence-map cache (cold,
  warm), and a classification re-run that reads its finished folds back from the journal, each flagged
  ``same_as_plain`` / ``same_as_first`` against the run without the cache.

Usage (from anywhere; PYTHONPATH picks the package version to snapshot)::

    OMP_NUM_THREADS=1 python bench/behaviour_snapshot.py --out snap.json [--work DIR]
    # the same with the old code, e.g. a worktree of the commit before the refactor:
    git worktree add /tmp/base <commit>
    cd /tmp/base && PYTHONPATH=/tmp/base/src OMP_NUM_THREADS=1 python /path/to/bench/behaviour_snapshot.py \\
        --out /tmp/snap_base.json
    python bench/behaviour_snapshot.py --compare /tmp/snap_base.json snap.json [--tol 1e-6]

``--compare`` prints every path whose value differs (floats exactly unless ``--tol`` gives a relative
tolerance; strings such as checksums always exactly) and exits 1, or prints ``identical: N values`` and
exits 0. ``commit``, ``machine`` and ``command`` are not compared. Compare snapshots made on the same
machine with the same torch: other CPUs or libraries round differently.

``--work DIR`` keeps the runs for inspection (a folder this script made before is emptied first);
without it a temporary folder is used and removed. About 30 s on one core (2-core Xeon VM).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import cpu_name, git_revision  # noqa: E402

#: the test sizes of tests/tiny.py (copied, so the snapshot does not depend on the test helpers)
TINY_VIT_OVERRIDES = [
    "encoder.arch=tiny",
    "encoder.img_size=[32, 48]",
    "encoder.patch_size=8",
    "encoder.model_args={embed_dim: 32, depth: 2, num_heads: 2}",
]
TINY_CONVVIT_OVERRIDES = [
    "encoder.arch=convvit_tiny_patch16",
    "encoder.img_size=[32, 48]",
    "encoder.patch_size=16",
    "encoder.model_args={embed_dim: [8, 16, 32], depth: [1, 1, 2], num_heads: 2}",
]
TINY_SECTIONS = {
    "mae": ["mae.decoder_dim=32", "mae.decoder_depth=1", "mae.decoder_heads=2"],
    "ultramae": [
        "ultramae.decoder_dim=32",
        "ultramae.decoder_depth=1",
        "ultramae.decoder_heads=2",
        "ultramae.clip_frames=4",
        "ultramae.max_clips_per_video=1",
    ],
}
#: the synthetic data: 9 lung patients (one 6-frame clip each, three classes) + 16 lesion stills with masks
SYNTH = dict(n_patients=9, clips_per_patient=1, n_frames=6, size=(48, 64), n_lesion_images=16, seed=0)
LUNG_CLASSES = ("a_lines", "b_lines", "consolidation")
PRETRAIN_STEPS = 6
#: the method whose export the downstream evaluations use (a ViT), and the ConvViT one (for ``unet``)
VIT_METHOD = "mae"
CONVVIT_METHOD = "convmae"
RESUME_METHOD = "mae"
#: metrics.csv columns that measure time, not behaviour
TIME_COLUMNS = {"samples_per_s", "elapsed_s", "probe_s"}
#: report keys dropped wherever they appear (wall clock; none are written today, this guards new ones)
TIME_KEYS = {"seconds", "elapsed", "elapsed_s", "time", "time_s", "duration", "timestamp", "date", "started"}
#: keys of the JSON that --compare leaves out
META_KEYS = ("commit", "machine", "command")
MARKER = ".behaviour_snapshot"


# ----------------------------------------------------------------------------------------------------
# helpers


def machine() -> str:
    import torch

    return (
        f"{platform.platform()}; {cpu_name()}; python {platform.python_version()}; torch {torch.__version__}"
    )


def package_commit() -> str:
    """The git commit of the ultrassl package being snapshotted (its own checkout, not this script's);
    ``+dirty`` when its ``src/`` has uncommitted changes."""
    import ultrassl

    return git_revision(Path(ultrassl.__file__).resolve().parent, short=False, scope=".") or "unknown"


def tensor_digest(tensors: Mapping[str, Any], per_tensor: bool = False) -> dict[str, Any]:
    """sha256 over every tensor's name, dtype, shape and bytes in sorted key order, plus float64 sums
    (which ``--tol`` can compare where the checksum differs); ``per_tensor``: each tensor's own sha256."""
    import torch

    total = hashlib.sha256()
    each: dict[str, str] = {}
    n_tensors, n_values, value_sum, abs_sum = 0, 0, 0.0, 0.0
    for key in sorted(tensors):
        t = tensors[key]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        head = f"{key}|{t.dtype}|{tuple(t.shape)}|".encode()
        total.update(head + raw)
        if per_tensor:
            each[key] = hashlib.sha256(head + raw).hexdigest()[:16]
        n_tensors += 1
        n_values += t.numel()
        if t.is_floating_point() or t.is_complex():
            value_sum += float(t.double().sum())
            abs_sum += float(t.double().abs().sum())
    out: dict[str, Any] = {
        "sha256": total.hexdigest(),
        "n_tensors": n_tensors,
        "n_values": n_values,
        "sum": value_sum,
        "abs_sum": abs_sum,
    }
    if per_tensor:
        out["tensors"] = each
    return out


def safetensors_digest(path: Path, per_tensor: bool = False) -> dict[str, Any]:
    from safetensors.torch import load_file

    return tensor_digest(load_file(str(path)), per_tensor)


def checkpoint_digest(path: Path) -> dict[str, Any]:
    """The model tensors of a pre-training checkpoint (``state["model"]``) and its step."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return {"step": int(state["step"]), "model": tensor_digest(state["model"], per_tensor=True)}


def _number(text: str) -> Any:
    """A CSV cell as int, float or None (empty), else the text."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def scrub(value: Any, work: Path) -> Any:
    """A report's value without wall-clock keys, with paths under ``work`` made relative to it."""
    if isinstance(value, dict):
        return {str(k): scrub(v, work) for k, v in value.items() if str(k) not in TIME_KEYS}
    if isinstance(value, list | tuple):
        return [scrub(v, work) for v in value]
    if isinstance(value, str):
        for root in {str(work), str(work.resolve())}:
            value = value.replace(root + os.sep, "<work>/").replace(root, "<work>")
        return value
    return value


def read_metrics(run: Path) -> list[dict[str, Any]]:
    with (run / "metrics.csv").open() as f:
        return [{k: _number(v) for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(f)]


def read_csv_rows(path: Path, work: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [scrub({k: _number(v) for k, v in row.items()}, work) for row in csv.DictReader(f)]


def fold_models(out: Path) -> dict[str, Any]:
    """Checksums of an evaluation's saved fold models (``models/*.safetensors``)."""
    models = out / "models"
    return {p.name: safetensors_digest(p) for p in sorted(models.glob("*.safetensors"))}


# ----------------------------------------------------------------------------------------------------
# the runs


def pretrain_config(
    method: str,
    manifest: Path,
    *,
    train: dict[str, Any] | None = None,
    optim: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> Any:
    """A test-size, fp32, CPU config for ``method`` (as tests/methods/test_contract.py builds it)."""
    from ultrassl import api

    probe = api.build_pretrain_config(method)
    if probe.encoder.arch.startswith("resnet"):
        tiny = ["encoder.img_size=[32, 32]"]
    elif probe.encoder.arch.startswith("convvit"):
        tiny = list(TINY_CONVVIT_OVERRIDES)
    else:
        tiny = list(TINY_VIT_OVERRIDES)
    for section in vars(probe):
        tiny += TINY_SECTIONS.get(section, [])
    # one picture mid-run: the watchers must leave the training RNG alone
    overrides = [*(overrides or []), "previews.every=3"]
    flags: dict[str, Any] = {
        "data": {"manifest": str(manifest), "num_workers": 0},
        "train": {
            "max_steps": PRETRAIN_STEPS,
            "batch_size": 4,
            "precision": "fp32",
            "device": "cpu",
            "seed": 0,
            "tensorboard": False,
            "log_every": 1,
            "checkpoint_every": 3,
            **(train or {}),
        },
        # an explicit lr (base_lr x batch 4 / 256 would barely move the weights) and clipping, so that
        # metrics.csv records every step's gradient norm
        "optim": {"lr": 1e-3, "warmup_steps": 2, "clip_grad": 3.0, **(optim or {})},
    }
    return api.build_pretrain_config(method, flags=flags, overrides=[*tiny, *overrides])


def run_pretrain(cfg: Any, run: Path, work: Path, export: Path | None = None) -> dict[str, Any]:
    """Pre-train ``cfg`` into the new folder ``run``: the result, metrics.csv and the checkpoint's
    tensors; with ``export``, also the exported encoder and its config.json."""
    from ultrassl import api

    result = api.pretrain(cfg, run, resume="new", progress=False)
    record: dict[str, Any] = {
        "steps": int(result.step),
        "stopped_by": str(result.stopped_by),
        "last_loss": float(result.last_loss),
        "metrics": read_metrics(run),
        "checkpoint": checkpoint_digest(run / "checkpoints" / "last.pt"),
    }
    if export is not None:
        out = api.export(run, export)
        record["export"] = {
            "model": safetensors_digest(out / "model.safetensors", per_tensor=True),
            "config": scrub(json.loads((out / "config.json").read_text()), work),
        }
    return record


def run_cache_checks(manifest: Path, work: Path, plain: dict[str, Any]) -> dict[str, Any]:
    """The same runs through the caches: ``mae`` with every frame in the on-disk frame store
    (``data.ram_cache_gb=0``), ``ultramae`` with a confidence-map cache (cold, then warm), each
    ``same_as_plain`` when its checkpoint equals the run without the cache (``plain``: pretrain results)."""
    out: dict[str, Any] = {}

    def same(record: dict[str, Any], method: str) -> bool:
        return record["checkpoint"]["model"]["sha256"] == plain[method]["checkpoint"]["model"]["sha256"]

    cfg = pretrain_config("mae", manifest, overrides=["data.ram_cache_gb=0"])
    rec = run_pretrain(cfg, work / "caches" / "mae_frame_store", work)
    out["mae_frame_store"] = {**rec, "same_as_plain": same(rec, "mae")}
    cache = work / "caches" / "confidence"
    for name in ("ultramae_confidence_cold", "ultramae_confidence_warm"):
        cfg = pretrain_config("ultramae", manifest, overrides=[f"ultramae.confidence_cache={cache}"])
        rec = run_pretrain(cfg, work / "caches" / name, work)
        out[name] = {**rec, "same_as_plain": same(rec, "ultramae")}
    return out


def run_resume_check(manifest: Path, work: Path) -> dict[str, Any]:
    """``RESUME_METHOD`` 6 steps straight vs 3 steps (max_steps) then resumed to 6 in the same folder.

    The lr is held constant after warm-up (min_lr = lr): max_steps sets the cosine's length, so only a
    flat schedule makes the stopped run the first half of the straight one."""
    from ultrassl import api

    optim = {"lr": 2e-3, "min_lr": 2e-3}
    straight = work / "resume" / "straight"
    api.pretrain(
        pretrain_config(RESUME_METHOD, manifest, optim=optim), straight, resume="new", progress=False
    )
    split = work / "resume" / "split"
    half = pretrain_config(RESUME_METHOD, manifest, optim=optim, train={"max_steps": PRETRAIN_STEPS // 2})
    api.pretrain(half, split, resume="new", progress=False)
    stopped = checkpoint_digest(split / "checkpoints" / "last.pt")
    full = pretrain_config(RESUME_METHOD, manifest, optim=optim)
    api.pretrain(full, split, resume="auto", progress=False)
    a = checkpoint_digest(straight / "checkpoints" / "last.pt")
    b = checkpoint_digest(split / "checkpoints" / "last.pt")
    return {
        "method": RESUME_METHOD,
        "straight": {"metrics": read_metrics(straight), "checkpoint": a},
        "stopped": {"checkpoint": stopped},
        "resumed": {"metrics": read_metrics(split), "checkpoint": b},
        "bit_exact": a["model"]["sha256"] == b["model"]["sha256"],
    }


def split_manifests(manifest: Path, out: Path) -> tuple[Path, Path]:
    """The lung clips (3 classes) for classification, the lesion stills with masks for segmentation."""
    from ultrassl.data.manifest import read_manifest, write_manifest

    rows = read_manifest(manifest)
    lung = [r for r in rows if r.label in LUNG_CLASSES]
    lesion = [r for r in rows if r.mask_path]
    return write_manifest(lung, out / "classify.csv"), write_manifest(lesion, out / "segment.csv")


def run_classify(weights: Path | str, like: Path, data: Path, out: Path, mode: str, work: Path) -> dict:
    from ultrassl.finetune.classify import ClassifyConfig, finetune_classify

    cfg = ClassifyConfig(
        mode=mode,
        folds=3,
        seeds=(0,),
        frame_fps=None,
        max_frames_per_video=3,
        epochs=4,
        batch_size=8,
        lr=2e-3,
        patience=5,
        device="cpu",
        precision="fp32",
    )
    res = finetune_classify(weights, data, out, cfg, scratch_like=like, progress=False)
    return {
        "n_frames": res["n_frames"],
        "report": scrub(json.loads((out / "report.json").read_text()), work),
        "predictions": read_csv_rows(out / "predictions.csv", work),
        "fold_models": fold_models(out),
    }


def run_segment(weights: Path | str, like: Path, data: Path, out: Path, head: str, work: Path) -> dict:
    from ultrassl.finetune.segment import SegmentConfig, finetune_segment

    cfg = SegmentConfig(
        head=head,
        folds=2,
        seeds=(0,),
        epochs=4,
        batch_size=4,
        lr=2e-3,
        decoder_dim=32,
        decoder_depth=1,
        decoder_heads=2,
        upernet_channels=16,
        n_overlays=1,
        device="cpu",
        precision="fp32",
    )
    res = finetune_segment(weights, data, out, cfg, scratch_like=like, progress=False)
    return {
        "n_images": res["n_images"],
        "report": scrub(json.loads((out / "report.json").read_text()), work),
        "fold_models": fold_models(out),
    }


def run_evaluate(model: Path, data: Path, work: Path) -> dict[str, Any]:
    from ultrassl.finetune.evaluate import evaluate

    res = evaluate(model, data, model / "evaluate", device="cpu", progress=False)
    record = {"task": res["task"], "n": res["n"], "metrics": scrub(res["metrics"], work)}
    for name in sorted(res["paths"]):
        path = Path(res["paths"][name])
        if path.suffix == ".csv" and path.is_file():
            record[name] = read_csv_rows(path, work)
    return record


def snapshot(work: Path, log: Any = print) -> dict[str, Any]:
    """Every result, keyed by stage; ``work`` holds the data and runs."""
    import torch

    from ultrassl import api

    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    t0 = time.monotonic()

    def done(what: str) -> None:
        log(f"[{time.monotonic() - t0:6.1f} s] {what}")

    manifest = api.synth(work / "data", **SYNTH)
    cls_data, seg_data = split_manifests(manifest, work)
    results["data"] = {
        "synth": {k: list(v) if isinstance(v, tuple) else v for k, v in SYNTH.items()},
        "manifest": read_csv_rows(manifest, work),
    }
    done("synthetic data")

    exports: dict[str, Path] = {}
    results["pretrain"] = {}
    for method in api.method_names():
        exports[method] = work / "exports" / method
        cfg = pretrain_config(method, manifest)
        results["pretrain"][method] = run_pretrain(cfg, work / "runs" / method, work, exports[method])
        done(f"pretrain + export {method}")

    results["resume"] = run_resume_check(manifest, work)
    done("resume check")
    results["caches"] = run_cache_checks(manifest, work, results["pretrain"])
    done("cache checks")

    vit, convvit = exports[VIT_METHOD], exports[CONVVIT_METHOD]
    classify: dict[str, Any] = {}
    plan_cls = [(VIT_METHOD, vit, mode) for mode in ("linear", "partial", "full")]
    plan_cls += [("scratch", "scratch", mode) for mode in ("linear", "full")]
    for init, weights, mode in plan_cls:
        out = work / "classify" / f"{init}_{mode}"
        classify[f"{init}/{mode}"] = run_classify(weights, vit, cls_data, out, mode, work)
        done(f"classify {init} {mode}")
    results["classify"] = classify
    # the same evaluation again in its folder: finished folds are read back from its journal
    key = f"{VIT_METHOD}/full"
    again = run_classify(vit, vit, cls_data, work / "classify" / f"{VIT_METHOD}_full", "full", work)
    results["caches"]["classify_rerun"] = {**again, "same_as_first": again == classify[key]}
    done(f"classify {key} again (journal)")

    segment: dict[str, Any] = {}
    plan = [
        (VIT_METHOD, vit, vit, "mae"),
        (VIT_METHOD, vit, vit, "upernet"),
        (CONVVIT_METHOD, convvit, convvit, "unet"),
        (CONVVIT_METHOD, convvit, convvit, "upernet"),
        ("scratch", "scratch", vit, "mae"),
    ]
    for init, weights, like, head in plan:
        out = work / "segment" / f"{init}_{head}"
        segment[f"{init}/{head}"] = run_segment(weights, like, seg_data, out, head, work)
        done(f"segment {init} {head}")
    results["segment"] = segment

    # `ultrassl evaluate`: the saved fold models' ensemble on a manifest (here the evaluation's own data)
    evaluations: dict[str, Any] = {}
    for name, data in (
        (f"classify/{VIT_METHOD}_linear", cls_data),
        (f"classify/{VIT_METHOD}_full", cls_data),
        (f"segment/{VIT_METHOD}_mae", seg_data),
        (f"segment/{CONVVIT_METHOD}_unet", seg_data),
    ):
        evaluations[name] = run_evaluate(work / name, data, work)
        done(f"evaluate {name}")
    results["evaluate"] = evaluations
    return results


# ----------------------------------------------------------------------------------------------------
# comparison


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1, 2]}}`` -> ``{"a.b[0]": 1, "a.b[1]": 2}``; empty dicts and lists are leaves."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{path}.{k}" if path else str(k)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{path}[{i}]"))
        return out
    return {path: value}


def same(a: Any, b: Any, tol: float = 0.0) -> bool:
    """Equal values: numbers numerically (NaN equals NaN; ``tol`` relative), bools and the rest exactly."""
    numbers = (int, float)
    if isinstance(a, bool) or isinstance(b, bool) or not (isinstance(a, numbers) and isinstance(b, numbers)):
        return type(a) is type(b) and a == b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if a == b:
        return True
    if tol > 0 and math.isfinite(a) and math.isfinite(b):
        return abs(a - b) <= tol * max(abs(a), abs(b))
    return False


def compare(a: Mapping[str, Any], b: Mapping[str, Any], tol: float = 0.0) -> tuple[list[str], int]:
    """The differing paths of two snapshots (``commit``, ``machine``, ``command`` left out), as lines to
    print, and the number of values compared."""
    fa = flatten({k: v for k, v in a.items() if k not in META_KEYS})
    fb = flatten({k: v for k, v in b.items() if k not in META_KEYS})
    diffs = []
    for path in sorted(set(fa) | set(fb)):
        if path not in fb:
            diffs.append(f"{path}: only in A ({fa[path]!r})")
        elif path not in fa:
            diffs.append(f"{path}: only in B ({fb[path]!r})")
        elif not same(fa[path], fb[path], tol):
            diffs.append(f"{path}: {fa[path]!r} != {fb[path]!r}")
    return diffs, len(set(fa) | set(fb))


def _load(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


# ----------------------------------------------------------------------------------------------------
# command line


def _work_folder(path: Path | None) -> tuple[Path, bool]:
    """(the work folder, whether to remove it at the end). A given folder must be empty or made by this
    script before (then it is emptied): runs refuse to overwrite, and stale runs would be resumed."""
    if path is None:
        return Path(tempfile.mkdtemp(prefix="behaviour_snapshot_")), True
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise SystemExit(f"{path}: not empty and not a behaviour-snapshot work folder; choose another")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("made by bench/behaviour_snapshot.py; emptied on its next run\n")
    return path, False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="write the snapshot JSON here")
    p.add_argument("--work", type=Path, help="keep the runs in this folder (default: a temporary one)")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="compare two snapshots")
    p.add_argument("--tol", type=float, default=0.0, help="relative tolerance for numbers (default: exact)")
    args = p.parse_args(argv)
    if args.compare:
        a, b = (_load(f) for f in args.compare)
        diffs, n = compare(a, b, args.tol)
        for line in diffs:
            print(line)
        if diffs:
            print(f"differ: {len(diffs)} of {n} values ({args.compare[0]} vs {args.compare[1]})")
            return 1
        print(f"identical: {n} values")
        return 0
    if args.out is None:
        p.error("--out (or --compare A B) is required")
    # one thread everywhere (torch, and the BLAS under numpy/scikit-learn's linear probe), set before
    # anything numeric is imported: thread counts change reduction orders, so rounding
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    work, remove = _work_folder(args.work)
    t0 = time.monotonic()
    try:
        results = snapshot(work, log=lambda s: print(s, file=sys.stderr, flush=True))
    finally:
        if remove:
            shutil.rmtree(work, ignore_errors=True)
    doc = {"commit": package_commit(), "machine": machine(), "command": list(sys.argv), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    n = len(flatten(results))
    print(f"wrote {args.out}: {n} values in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
