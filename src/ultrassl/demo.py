"""``ultrassl demo``: the whole story on built-in synthetic data, in a few minutes on 2 CPU cores.

synthetic lung clips + lesion stills -> index -> Deblurring MAE pre-training (tiny ViT) -> reconstructions
and a timm export -> 5-fold classification (linear probe and full fine-tuning, pre-trained vs scratch,
the same architecture) -> 5-fold lesion segmentation (pre-trained vs scratch) -> one ``report.md`` that
says what came out and where the files are. Every stage is resumable: a re-run skips what is done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ultrassl import api
from ultrassl.atomic import atomic_write_text
from ultrassl.data.manifest import read_manifest, write_manifest
from ultrassl.finetune.classify import ClassifyConfig, finetune_classify
from ultrassl.finetune.segment import SegmentConfig, finetune_segment
from ultrassl.training import TrainResult

LUNG_CLASSES = ("a_lines", "b_lines", "consolidation")


@dataclass
class DemoResult:
    out_dir: Path
    data_dir: Path
    manifest: Path
    run_dir: Path
    export_dir: Path
    grid: Path
    train: TrainResult | None
    report: Path
    #: "classify/linear/pretrained" -> {"accuracy": {"mean", "std"}, ...}; "segment/pretrained" -> Dice...
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _split_manifests(manifest: Path, out: Path) -> tuple[Path, Path]:
    """The lung clips (3 classes) for classification and the lesion stills with masks for segmentation."""
    rows = read_manifest(manifest)
    lung = [r for r in rows if r.label in LUNG_CLASSES]
    lesion = [r for r in rows if r.mask_path]
    return write_manifest(lung, out / "classify.csv"), write_manifest(lesion, out / "segment.csv")


def _timed(seconds: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    t0 = time.monotonic()
    value = fn()
    seconds[name] = seconds.get(name, 0.0) + time.monotonic() - t0
    return value


def _summary_or_run(out: Path, run: Callable[[], Any]) -> dict[str, Any]:
    """The evaluation's report.json summary, running it only when the report is not there yet."""
    report = out / "report.json"
    if not report.exists():
        run()
    return json.loads(report.read_text())["summary"]


def run_demo(
    out_dir: str | Path = "demo",
    *,
    max_steps: int = 1500,
    folds: int = 5,
    finetune_epochs: int = 10,
    segment_epochs: int = 25,
    seed: int = 0,
    progress: bool = True,
) -> DemoResult:
    out = Path(out_dir)
    seconds: dict[str, float] = {}
    data_dir = out / "data"
    manifest = out / "manifest.csv"
    if not manifest.exists():
        _timed(
            seconds,
            "synthesise + index",
            lambda: (
                api.synth(data_dir, seed=seed, n_patients=20, n_frames=12, n_lesion_images=40),
                api.index(data_dir, manifest, group_pattern=r"^([pl]\d+)"),
            ),
        )
    cls_manifest, seg_manifest = _split_manifests(manifest, out)

    cfg = api.build_pretrain_config(
        method="deblur-mae",
        preset="tiny",
        flags={"data": {"manifest": str(manifest)}, "train": {"max_steps": max_steps, "seed": seed}},
    )
    run_dir = out / "run"
    train = _timed(seconds, "pre-train", lambda: api.pretrain(cfg, run_dir, resume=True, progress=progress))
    grid = _timed(
        seconds,
        "reconstruct + export",
        lambda: api.reconstruct(run_dir, manifest, out / "reconstruction.png"),
    )
    export_dir = _timed(seconds, "reconstruct + export", lambda: api.export(run_dir, out / "export"))

    results: dict[str, dict[str, Any]] = {}
    # Synthetic clips are short (12 frames at 10 fps): take up to 8 frames of each, not POCUS' 3 Hz.
    for mode in ("linear", "full"):
        ccfg = ClassifyConfig(
            mode=mode,
            folds=folds,
            seeds=(seed,),
            frame_fps=None,
            max_frames_per_video=8,
            epochs=finetune_epochs,
            batch_size=32,
            lr=2e-3,
            device="auto",
        )
        for init, weights in (("pretrained", export_dir), ("scratch", "scratch")):
            eval_dir = out / "classify" / f"{mode}_{init}"
            results[f"classify/{mode}/{init}"] = _timed(
                seconds,
                f"classify ({mode})",
                lambda weights=weights, eval_dir=eval_dir, ccfg=ccfg: _summary_or_run(
                    eval_dir,
                    lambda: finetune_classify(
                        weights, cls_manifest, eval_dir, ccfg, scratch_like=export_dir, progress=False
                    ),
                ),
            )
    scfg = SegmentConfig(folds=folds, seeds=(seed,), epochs=segment_epochs, batch_size=8, lr=1e-3)
    for init, weights in (("pretrained", export_dir), ("scratch", "scratch")):
        eval_dir = out / "segment" / init
        results[f"segment/{init}"] = _timed(
            seconds,
            "segment",
            lambda weights=weights, eval_dir=eval_dir: _summary_or_run(
                eval_dir,
                lambda: finetune_segment(
                    weights, seg_manifest, eval_dir, scfg, scratch_like=export_dir, progress=False
                ),
            ),
        )
    report = write_demo_report(out, results, seconds, train, folds)
    return DemoResult(out, data_dir, manifest, run_dir, export_dir, grid, train, report, results, seconds)


def _mean_std(d: dict[str, Any] | None) -> str:
    if not d or d.get("mean") is None:
        return "-"
    return f"{d['mean']:.3f} ± {d['std']:.3f}"


def write_demo_report(
    out: Path,
    results: dict[str, dict[str, Any]],
    seconds: dict[str, float],
    train: TrainResult | None,
    folds: int,
) -> Path:
    lines = [
        "# ultrassl demo",
        "",
        "Synthetic lung clips (A-lines / B-lines / consolidation, one class per patient) and lesion stills "
        "with masks; Deblurring MAE pre-training of a tiny ViT (2 blocks, width 32, 64 px); "
        f"{folds}-fold cross-validation grouped by patient, model selection on validation patients only.",
        "",
        "## Classification (frame level; video = mean probability over a clip's frames)",
        "",
        "| protocol | encoder | accuracy | balanced accuracy | macro-F1 | video accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for mode in ("linear", "full"):
        for init in ("pretrained", "scratch"):
            s = results.get(f"classify/{mode}/{init}", {})
            video = s.get("video", {})
            video_acc = next(iter(video.values()), {}).get("accuracy") if video else None
            lines.append(
                f"| {'linear probe' if mode == 'linear' else 'full fine-tuning'} | {init} | "
                f"{_mean_std(s.get('accuracy'))} | {_mean_std(s.get('balanced_accuracy'))} | "
                f"{_mean_std(s.get('macro_f1'))} | {_mean_std(video_acc)} |"
            )
    lines += [
        "",
        "## Lesion segmentation (MAE-style decoder head)",
        "",
        "| encoder | Dice | IoU |",
        "|---|---|---|",
    ]
    for init in ("pretrained", "scratch"):
        s = results.get(f"segment/{init}", {})
        lines.append(f"| {init} | {_mean_std(s.get('dice'))} | {_mean_std(s.get('iou'))} |")
    lines += ["", "## Time (this run, seconds)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in seconds.items()]
    lines += ["", "## Files", ""]
    files = {
        "data + manifest": "data/, manifest.csv (classify.csv, segment.csv: the two tasks' subsets)",
        "pre-training run": "run/ (config.yaml, metrics.csv, checkpoints/last.pt)",
        "reconstructions": "reconstruction.png",
        "timm export": "export/ (model.safetensors + config.json)",
        "classification reports": "classify/<mode>_<init>/report.md (+ report.json, figures, predictions.csv, models/)",
        "segmentation reports": "segment/<init>/report.md (+ overlays/, models/)",
        "predict new data": "ultrassl evaluate --model demo/classify/full_pretrained --data NEW.csv",
    }
    lines += [f"- {k}: `{v}`" for k, v in files.items()]
    if train is not None:
        lines += ["", f"Pre-training: {train.step} steps, last loss {train.last_loss:.4f}."]
    return atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
