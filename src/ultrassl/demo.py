"""``ultrassl demo``: the whole story on built-in synthetic data, in a few minutes on 2 CPU cores.

synthetic lung clips + lesion stills -> index -> Deblurring MAE pre-training (tiny ViT) -> reconstructions
and a timm export -> 5-fold classification (linear probe and full fine-tuning, pre-trained vs scratch,
the same architecture) -> 5-fold lesion segmentation (pre-trained vs scratch) -> one ``report.md`` that
says what came out, each table followed by what it shows in sentences computed from the run (pre-trained
minus scratch, paired by fold, worded by :func:`verdict`), what a demo of this size cannot show, and
where the files are. Every stage is resumable: a re-run skips what is done.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ultrassl import api
from ultrassl.atomic import atomic_write_text
from ultrassl.data.manifest import read_manifest, write_manifest
from ultrassl.finetune.classify import ClassifyConfig, finetune_classify
from ultrassl.finetune.segment import SegmentConfig, finetune_segment
from ultrassl.monitor.curves import read_metrics
from ultrassl.training import TrainResult

LUNG_CLASSES = ("a_lines", "b_lines", "consolidation")
#: synthetic lung patients (one clip each) and lesion stills the demo makes
N_PATIENTS = 20
N_LESION_IMAGES = 40


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
                api.synth(
                    data_dir, seed=seed, n_patients=N_PATIENTS, n_frames=12, n_lesion_images=N_LESION_IMAGES
                ),
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


# --------------------------------------------------------------------------------------------------
# The report: each table followed by what it says, in sentences computed from this run's results
# --------------------------------------------------------------------------------------------------

HELPED = "pre-training helped (difference larger than the fold-to-fold spread)"
UNRESOLVED = "no difference this demo can resolve"
WORSE = "pre-training did worse here (scratch ahead by more than the fold-to-fold spread)"
#: fewer folds than this give no verdict but UNRESOLVED
MIN_FOLDS = 3

#: where the results on real data are (the figures live only in that generated page, never here)
BENCHMARKS = (
    "`docs/benchmarks.md` of the ultrassl repository, section "
    "*Real data: POCUS classification, HC18 segmentation*"
)


def verdict(difference: float, spread: float | None, n: int) -> str:
    """The words for a pre-trained minus scratch ``difference`` against its fold-to-fold ``spread``
    over ``n`` folds.

    Helped when the difference is larger than the spread, worse when it is below minus the spread,
    otherwise no difference the demo can resolve; so too with fewer than :data:`MIN_FOLDS` folds or
    no spread (the standard deviation of 2 differences says little about the next fold).
    """
    if n < MIN_FOLDS or spread is None or not math.isfinite(spread) or not math.isfinite(difference):
        return UNRESOLVED
    if difference > spread:
        return HELPED
    if difference < -spread:
        return WORSE
    return UNRESOLVED


@dataclass(frozen=True)
class Comparison:
    """Pre-trained against scratch on one metric: the two means over the same folds, the spread of
    their difference and, when paired, the difference fold by fold."""

    pretrained: float
    scratch: float
    n: int
    #: sample std of the per-fold differences (paired), or of the two encoders' fold scores combined
    #: as sqrt(sd_pre^2 + sd_scratch^2) (unpaired); None with fewer than 2 folds
    spread: float | None
    paired: bool
    per_fold: tuple[float, ...] = ()

    @property
    def difference(self) -> float:
        return self.pretrained - self.scratch

    @property
    def verdict(self) -> str:
        return verdict(self.difference, self.spread, self.n)


def compare_folds(pretrained: Mapping[Any, float], scratch: Mapping[Any, float]) -> Comparison | None:
    """Paired comparison over the folds both have (keys: (fold, seed)); None when they share none."""
    keys = sorted(pretrained.keys() & scratch.keys())
    if not keys:
        return None
    diffs = tuple(pretrained[k] - scratch[k] for k in keys)
    return Comparison(
        statistics.fmean(pretrained[k] for k in keys),
        statistics.fmean(scratch[k] for k in keys),
        len(keys),
        statistics.stdev(diffs) if len(diffs) > 1 else None,
        True,
        diffs,
    )


def compare_summaries(
    pretrained: Mapping[str, Any] | None, scratch: Mapping[str, Any] | None
) -> Comparison | None:
    """Unpaired comparison of two ``{"mean", "std", "n"}`` summaries (when the fold results are not
    there to pair); None when either mean is missing."""
    pre, scr = pretrained or {}, scratch or {}
    if pre.get("mean") is None or scr.get("mean") is None:
        return None
    n = min(int(pre.get("n") or 0), int(scr.get("n") or 0))
    spread = None
    if n > 1 and pre.get("std") is not None and scr.get("std") is not None:
        spread = math.hypot(float(pre["std"]), float(scr["std"]))
    return Comparison(float(pre["mean"]), float(scr["mean"]), n, spread, False)


def comparison_sentence(what: str, metric: str, c: Comparison | None) -> str:
    """One sentence: the two means, their difference, its spread over folds and the verdict."""
    if c is None:
        return f"{what}: {metric} was not measured for both encoders in this run."
    head = (
        f"{what}: {metric} {c.pretrained:.3f} pre-trained vs {c.scratch:.3f} scratch, "
        f"a difference of {c.difference:+.3f}"
    )
    if c.spread is None:
        spread = f"no spread: {c.n} fold"
    elif c.paired:
        spread = f"spread {c.spread:.3f}, the standard deviation of the {c.n} per-fold differences"
    else:
        spread = f"spread {c.spread:.3f}, unpaired: the two encoders' fold standard deviations combined"
    details = [spread]
    if c.paired:
        ahead = sum(d > 0 for d in c.per_fold)
        details = [
            "per fold " + ", ".join(f"{d:+.3f}" for d in c.per_fold),
            f"pre-trained ahead on {ahead} of {c.n}",
            spread,
        ]
    few = f" (fewer than {MIN_FOLDS} folds: too few to judge by)" if c.n < MIN_FOLDS else ""
    return f"{head} ({'; '.join(details)}): {c.verdict}{few}."


def _fold_scores(eval_dir: Path, metric: str) -> dict[tuple[int, int], float] | None:
    """{(fold, seed): metric} at an evaluation's headline setting (classification: its headline level
    and label fraction; segmentation: the largest fraction), from its report.json; None without one."""
    path = eval_dir / "report.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    rows = report.get("folds") or []
    if not rows:
        return None
    headline = report.get("headline") or {}
    level = headline.get("level")
    fraction = headline.get("label_fraction", max(r["label_fraction"] for r in rows))
    scores = {}
    for r in rows:
        value = r.get("metrics", {}).get(metric)
        if r.get("level") != level or not math.isclose(r["label_fraction"], fraction) or value is None:
            continue
        if math.isfinite(float(value)):
            scores[(int(r["fold"]), int(r["seed"]))] = float(value)
    return scores


def _read_splits(eval_dir: Path) -> Any:
    path = eval_dir / "folds.json"
    return json.loads(path.read_text()) if path.exists() else None


def _compare(
    pre_dir: Path, scratch_dir: Path, metric: str, pre: Mapping[str, Any], scratch: Mapping[str, Any]
) -> Comparison | None:
    """Paired fold by fold when both evaluations ran on the same splits and folds, else unpaired."""
    a, b = _fold_scores(pre_dir, metric), _fold_scores(scratch_dir, metric)
    splits = _read_splits(pre_dir)
    if a and b and a.keys() == b.keys() and splits is not None and splits == _read_splits(scratch_dir):
        return compare_folds(a, b)
    return compare_summaries(pre.get(metric), scratch.get(metric))


def _test_groups_per_fold(eval_dir: Path) -> str | None:
    """'4' or '3-4': how many groups (patients, lesion cases) each test fold of an evaluation held."""
    splits = _read_splits(eval_dir)
    counts = sorted({len(f.get("test_groups", [])) for f in (splits or {}).get("folds", [])})
    if not counts:
        return None
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def _training_seconds(rows: list[dict[str, float]]) -> float | None:
    """Training time from metrics.csv's elapsed_s, summed over the starts of a resumed run (each start
    counts from 0 again)."""
    total, last = 0.0, None
    for r in rows:
        t = r.get("elapsed_s")
        if t is None:
            continue
        if last is not None and t < last:
            total += last
        last = t
    return None if last is None else total + last


@dataclass(frozen=True)
class PretrainFacts:
    steps: int | None
    seconds: float | None
    first: tuple[int, float] | None  # (step, loss) of the first logged row
    last: tuple[int, float] | None


def pretrain_facts(run_dir: Path, train: TrainResult | None) -> PretrainFacts:
    """Steps, training time and the loss at the first and last logged step, read from the run's
    metrics.csv (a re-run that skips finished pre-training has them too); TrainResult where it lacks them."""
    rows = read_metrics(run_dir)
    losses = [
        (int(r["step"]), r["loss"]) for r in rows if "step" in r and math.isfinite(r.get("loss", math.nan))
    ]
    steps = max((int(r["step"]) for r in rows if "step" in r), default=None)
    seconds = _training_seconds(rows)
    if train is not None:
        steps = train.step if steps is None else steps
        seconds = train.seconds if seconds is None else seconds
    return PretrainFacts(steps, seconds, losses[0] if losses else None, losses[-1] if losses else None)


def _pretraining_text(f: PretrainFacts) -> list[str]:
    if f.steps is None:
        return ["No pre-training record (run/metrics.csv) was found."]
    took = f" in about {f.seconds:.0f} s of training" if f.seconds is not None else ""
    text = f"Deblurring MAE pre-training ran {f.steps} steps{took}"
    if f.first is None or f.last is None or f.first[0] == f.last[0]:
        return [text + "; its loss was not logged at two steps, so whether it fell is not known."]
    (s0, l0), (s1, l1) = f.first, f.last
    text += (
        f"; its reconstruction loss went from {l0:.4f} at step {s0} to {l1:.4f} at step {s1} "
        f"({(l1 - l0) / l0:+.0%}; every logged step in `run/metrics.csv`, the picture in `run/curves.png`)."
    )
    if l1 < l0:
        then = (
            "A falling loss says the encoder learnt to restore this synthetic data's blurred, masked "
            "patches, not that its features help a task: that is what the tables below test."
        )
    else:
        then = (
            "The loss did not fall: the encoder learnt little from pre-training in this run, so the "
            "tables below compare it against scratch in that state."
        )
    return [text, "", then, "", "Its reconstructions of a few of the images: `reconstruction.png`."]


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
    """``out/report.md``: the tables of ``results`` (summaries keyed as :class:`DemoResult.results`),
    each followed by what it says, computed from the run in ``out`` (the evaluations' report.json and
    folds.json, run/metrics.csv)."""
    out = Path(out)
    facts = pretrain_facts(out / "run", train)
    lines = [
        "# ultrassl demo",
        "",
        "Synthetic lung clips (A-lines / B-lines / consolidation, one class per patient) and lesion stills "
        "with masks; Deblurring MAE pre-training of a tiny ViT (2 blocks, width 32, 64 px); "
        f"{folds}-fold cross-validation grouped by patient, model selection on validation patients only.",
        "",
        "Each table is followed by what it says, computed from this run. A difference is pre-trained "
        "minus scratch, paired fold by fold (both encoders are tested on the same patients), and its "
        "spread is the standard deviation of the per-fold differences. The rule: a difference larger "
        f'than its spread reads "{HELPED}", one below minus the spread "{WORSE}", anything between '
        f'(or fewer than {MIN_FOLDS} folds) "{UNRESOLVED}".',
        "",
        "## Pre-training",
        "",
        *_pretraining_text(facts),
        "",
        "## Classification (frame level; video = mean probability over a clip's frames)",
        "",
        "| protocol | encoder | accuracy | balanced accuracy | macro-F1 | video accuracy |",
        "|---|---|---|---|---|---|",
    ]
    protocols = {"linear": "Linear probe", "full": "Full fine-tuning"}
    for mode in protocols:
        for init in ("pretrained", "scratch"):
            s = results.get(f"classify/{mode}/{init}", {})
            video = s.get("video", {})
            video_acc = next(iter(video.values()), {}).get("accuracy") if video else None
            lines.append(
                f"| {'linear probe' if mode == 'linear' else 'full fine-tuning'} | {init} | "
                f"{_mean_std(s.get('accuracy'))} | {_mean_std(s.get('balanced_accuracy'))} | "
                f"{_mean_std(s.get('macro_f1'))} | {_mean_std(video_acc)} |"
            )
    comparisons: list[Comparison | None] = []
    lines.append("")
    for mode, what in protocols.items():
        c = _compare(
            out / "classify" / f"{mode}_pretrained",
            out / "classify" / f"{mode}_scratch",
            "accuracy",
            results.get(f"classify/{mode}/pretrained", {}),
            results.get(f"classify/{mode}/scratch", {}),
        )
        comparisons.append(c)
        lines += [comparison_sentence(what, "frame accuracy", c), ""]
    lines += [
        "The other columns of each encoder, fold by fold: `classify/<protocol>_<encoder>/report.md`.",
        "",
        "## Lesion segmentation (MAE-style decoder head)",
        "",
        "| encoder | Dice | IoU |",
        "|---|---|---|",
    ]
    for init in ("pretrained", "scratch"):
        s = results.get(f"segment/{init}", {})
        lines.append(f"| {init} | {_mean_std(s.get('dice'))} | {_mean_std(s.get('iou'))} |")
    c = _compare(
        out / "segment" / "pretrained",
        out / "segment" / "scratch",
        "dice",
        results.get("segment/pretrained", {}),
        results.get("segment/scratch", {}),
    )
    comparisons.append(c)
    lines += ["", comparison_sentence("Segmentation", "Dice", c), ""]
    lines += ["## What this demo can and cannot tell you", "", _limits_text(out, facts, comparisons, folds)]
    lines += ["", "## Time (this run, seconds)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in seconds.items()]
    lines += [
        "",
        f"In all {sum(seconds.values()):.0f} s. A re-run skips the stages already done, so its times are "
        "of what ran that time.",
        "",
        "## Files",
        "",
    ]
    files = {
        "data + manifest": "data/, manifest.csv (classify.csv, segment.csv: the two tasks' subsets)",
        "pre-training run": "run/ (config.yaml, metrics.csv, curves.png, summary.md, checkpoints/last.pt)",
        "reconstructions": "reconstruction.png",
        "timm export": "export/ (model.safetensors + config.json)",
        "classification reports": "classify/<mode>_<init>/report.md (+ report.json, figures, predictions.csv, models/)",
        "segmentation reports": "segment/<init>/report.md (+ overlays/, models/)",
        "predict new data": "ultrassl evaluate --model demo/classify/full_pretrained --data NEW.csv",
    }
    lines += [f"- {k}: `{v}`" for k, v in files.items()]
    return atomic_write_text(out / "report.md", "\n".join(lines) + "\n")


def _limits_text(out: Path, facts: PretrainFacts, comparisons: list[Comparison | None], folds: int) -> str:
    """Why a demo of this size cannot settle whether pre-training helps, with this run's own numbers."""
    budget = "pre-trained"
    if facts.steps is not None:
        budget += f" for {facts.steps} steps"
        if facts.seconds is not None:
            budget += f" (about {facts.seconds:.0f} s)"
    patients = _test_groups_per_fold(out / "classify" / "linear_pretrained")
    cases = _test_groups_per_fold(out / "segment" / "pretrained")
    held = ""
    if patients or cases:
        parts = [f"{patients} patients per classification test fold"] if patients else []
        parts += [f"{cases} lesion cases per segmentation test fold"] if cases else []
        held = f", with {' and '.join(parts)}"
    spreads = [c.spread for c in comparisons if c is not None and c.spread is not None]
    spread = ""
    if spreads:
        lo, hi = min(spreads), max(spreads)
        span = f"{lo:.3f}" if f"{lo:.3f}" == f"{hi:.3f}" else f"{lo:.3f} to {hi:.3f}"
        spread = (
            f" Across its folds the differences above spread by {span}, so only an effect larger than "
            "that can show here, and every verdict rests on one seed."
        )
    return (
        "This demo shows that the whole pipeline runs and what it writes; it cannot settle whether "
        f"pre-training helps. Its encoder is a 2-block ViT of width 32 at 64 px, {budget} on synthetic "
        f"images that only imitate ultrasound, and it is judged by {folds}-fold cross-validation on 20 "
        f"synthetic patients{held}.{spread} Whether pre-training helps on real ultrasound, with a larger "
        f"encoder and longer pre-training, is measured in {BENCHMARKS}; its figures are kept there only."
    )
