"""The one-call Python API: the five steps of a project (index, pretrain, export, finetune, evaluate),
each one function that takes what the command line takes, under the same names, and returns a typed
result (:mod:`ultrassl.results`).

``import ultrassl`` offers these functions as ``ultrassl.index``, ``ultrassl.pretrain``, ... (loaded on
first use). They build their config and call :mod:`ultrassl.api` and the fine-tuning engines, which do
the work; nothing here trains or reads data itself. Nothing is printed: the library logs under the
``ultrassl`` logger (``logging.basicConfig(level=logging.INFO)`` shows its notes and progress lines).
This module imports no torch until a function runs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ultrassl.errors import ConfigError
from ultrassl.results import EvaluateResult, FinetuneResult, PretrainResult, headline_scores

if TYPE_CHECKING:
    from ultrassl.data.manifest import IndexSummary

__all__ = ["PRETRAIN_OPTIONS", "evaluate", "export", "finetune", "index", "pretrain", "pretrain_options"]

StrPath = str | os.PathLike[str]

#: the options ``ultrassl pretrain`` has as flags (``--max-steps`` is ``max_steps``, ``--from`` is
#: ``init_from``) and the config key each sets; :func:`pretrain` takes them as keywords of the same
#: names. Everything else is reached through a section (``train={...}``) or ``set=[...]``.
PRETRAIN_OPTIONS: dict[str, str] = {
    "data": "data.manifest",
    "init_from": "init_from",
    "max_steps": "train.max_steps",
    "epochs": "train.epochs",
    "time_limit": "train.time_limit",
    "schedule_to_time_limit": "train.schedule_to_time_limit",
    "checkpoint_every": "train.checkpoint_every",
    "batch_size": "train.batch_size",
    "workers": "data.num_workers",
    "seed": "train.seed",
    "device": "train.device",
    "precision": "train.precision",
    "compile": "train.compile",
    "label_fraction": "uscl.label_fraction",
    "probe_data": "probe.data",
    "probe_every": "probe.every",
}


def pretrain_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The config sections that the pre-training options in ``values`` set (nested dicts, as
    ``build_pretrain_config`` takes its ``flags``); an option whose value is None is left out."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        if name not in PRETRAIN_OPTIONS:
            raise ConfigError(f"unknown pre-training option {name!r}; valid: {', '.join(PRETRAIN_OPTIONS)}")
        *sections, key = PRETRAIN_OPTIONS[name].split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = _plain(value)
    return out


def _combine(first: Mapping[str, Any], second: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Two nested dicts of config values as one; a key given in both with different values is an error
    (``train={"max_steps": 5}`` and ``max_steps=3`` leave no way to tell which was meant)."""
    out = dict(first)
    for key, value in second.items():
        path = f"{where}.{key}" if where else key
        if key not in out:
            out[key] = value
        elif isinstance(out[key], Mapping) and isinstance(value, Mapping):
            out[key] = _combine(out[key], value, path)
        elif isinstance(out[key], Mapping) != isinstance(value, Mapping):
            other = value if isinstance(out[key], Mapping) else out[key]
            raise ConfigError(f"{path}: expected a mapping of its options, got {other!r}")
        elif out[key] != value:
            raise ConfigError(f"{path} is given twice, as {out[key]!r} and as {value!r}; give it once")
    return out


def _plain(value: Any) -> Any:
    """Config values as the config takes them: paths (``Path("clips.csv")``) as strings, at any depth."""
    if isinstance(value, Mapping):
        return {key: _plain(v) for key, v in value.items()}
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _as_list(items: str | Sequence[str] | None) -> list[str]:
    """``set=`` items: one ``"key=value"`` string or a list of them."""
    if items is None:
        return []
    return [items] if isinstance(items, str) else list(items)


# ----------------------------------------------------------------------------------------------------
# 1. index


def index(
    folder: StrPath,
    out: StrPath,
    *,
    labels: StrPath | None = None,
    group_pattern: str | None = None,
    strict_groups: bool = False,
    salt_file: StrPath | None = None,
    clear_patient_ids: bool = False,
    max_pixels: int | None = None,
    max_frames_per_file: int | None = None,
    file_timeout: float | None = None,
) -> IndexSummary:
    """Scan a folder of images, videos and DICOM files into a manifest CSV (``ultrassl index``).

    A top-level sub-folder's name is the label of the files under it. Unreadable or oversized files
    are skipped, never fatal: each is logged as a warning and listed with its reason.

    Args:
        folder: The folder to scan (sub-folders too).
        out: The manifest CSV to write.
        labels: A CSV with columns ``path,label`` whose labels replace the folder names.
        group_pattern: A regular expression on the file name whose first group is the patient (group)
            id, e.g. ``r"^(p\\d+)"``; folds never split a group. A file it does not match (and that
            has no PatientID or labels-CSV group id) becomes a group of its own, with one warning; the
            summary lists them (``unmatched_group_pattern``).
        strict_groups: Make a file that ``group_pattern`` does not match an error naming the files.
        salt_file: The salt of the DICOM PatientID pseudonyms (default ``<out>.salt``, created when
            missing); give one file to every index of the same patients.
        clear_patient_ids: Write DICOM PatientIDs in clear as group ids instead of salted hashes.
        max_pixels: Files with frames of more pixels are skipped (default 40,000,000).
        max_frames_per_file: Files with more frames are skipped (default 50,000).
        file_timeout: Seconds one video may take to decode while indexing (default 120).

    Returns:
        The summary: files indexed and skipped (with reasons), counts by kind, the manifest's path,
        the skipped-files CSV (``<out stem>_skipped.csv``), the salt file, where written, and the
        files ``group_pattern`` did not match.

    Raises:
        UltrasslError: ``folder`` is not a folder, or ``strict_groups`` and ``group_pattern`` missed a file.
    """
    from ultrassl import api
    from ultrassl.data.limits import ReadLimits
    from ultrassl.data.skipped import report_skipped

    default = ReadLimits()
    limits = ReadLimits(
        default.max_pixels if max_pixels is None else max_pixels,
        default.max_frames if max_frames_per_file is None else max_frames_per_file,
        default.max_seconds if file_timeout is None else file_timeout,
    )
    summary = api.index(
        folder,
        out,
        labels_csv=labels,
        group_pattern=group_pattern,
        strict_groups=strict_groups,
        clear_patient_ids=clear_patient_ids,
        salt_file=salt_file,
        limits=limits,
    )
    report_skipped(summary.skipped)
    return summary


# ----------------------------------------------------------------------------------------------------
# 2. pretrain


def pretrain(
    method: str | None,
    data: StrPath | Mapping[str, Any],
    out: StrPath,
    *,
    preset: str | None = None,
    resume: Literal["auto", "fresh", "new"] = "auto",
    set: str | Sequence[str] | None = None,  # the name of --set (shadows the builtin here only)
    init_from: StrPath | None = None,
    max_steps: int | None = None,
    epochs: int | None = None,
    time_limit: float | None = None,
    schedule_to_time_limit: bool | None = None,
    checkpoint_every: int | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    precision: str | None = None,
    compile: bool | None = None,  # the name of --compile
    label_fraction: float | None = None,
    probe_data: StrPath | None = None,
    probe_every: int | None = None,
    **sections: Mapping[str, Any],
) -> PretrainResult:
    """Self-supervised pre-training into a run folder (``ultrassl pretrain``).

    The config is built in the command line's layers: the method's defaults, then ``preset``, then the
    options and ``sections`` given here, then ``set``; the final values are checked once. An unknown
    section or key is a :class:`~ultrassl.errors.ConfigError` that names it and the valid ones.

    Args:
        method: A registered method (``mae``, ``deblur-mae``, ``ultramae``, ``uscl``, ``convmae``,
            ``deblur-convmae``, or a plugin's); None takes the preset's, else ``mae``.
        data: The manifest CSV of the training data (``ultrassl.index`` writes one), or the whole
            ``data`` config section as a dict that names its ``manifest``.
        out: The run folder.
        preset: A built-in preset's name (``ultrassl presets`` lists them, e.g. ``cpu-vit-t112``) or a
            YAML file.
        resume: ``auto`` continues a run folder that holds a checkpoint of the same config (so the same
            call again continues an interrupted run) and refuses one of another config; ``fresh``
            starts over, removing the folder's checkpoints and metrics; ``new`` refuses any folder that
            holds a run.
        set: ``--set`` items, ``["blur.sigma=2.0", "train.log_every=20"]`` (values read as YAML).
        init_from: A run folder, export folder or checkpoint to start from (``--from``).
        max_steps: Stop after this many optimisation steps (``train.max_steps``).
        epochs: Passes over the training data, the schedule's length (``train.epochs``).
        time_limit: Stop cleanly, with a checkpoint, after this many minutes (``train.time_limit``).
        schedule_to_time_limit: Size the schedule to ``time_limit``: a short calibration run measures
            this machine's rate and sets ``max_steps`` (and the warm-up) to fill it; the same call
            again keeps the schedule (``train.schedule_to_time_limit``, :mod:`ultrassl.time_budget`).
        checkpoint_every: Write ``checkpoints/last.pt`` every this many steps (and at the end).
        batch_size: Samples per step in each process (``train.batch_size``).
        workers: DataLoader processes feeding the loop (``data.num_workers``; 0: the loop's own).
        seed: Seed of the model's initialisation, masks and augmentation (``train.seed``).
        device: ``auto``, ``cpu`` or ``cuda`` (``train.device``).
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (``train.precision``).
        compile: ``torch.compile`` the model (``train.compile``).
        label_fraction: ``uscl`` only: keep the labels of this fraction of the training videos.
        probe_data: A labelled manifest to score the frozen encoder on by k-NN while training;
            ``best.pt`` keeps the best score (``probe.data``).
        probe_every: Probe every this many steps (``probe.every``).
        **sections: Config sections as dicts, e.g. ``train={"epochs": 5}``, ``blur={"sigma": 2.0}``,
            ``optim={"base_lr": 1e-3}``.

    Returns:
        What the run did: its folder, last and best checkpoints, steps done of the total, why it
        stopped, the seconds it took and the final training loss.

    Raises:
        ConfigError: An unknown method, preset, section or key, a value of the wrong type, an option
            given twice, or a run folder that holds a run of another config.
    """
    from ultrassl import api

    sections = _plain(sections)
    if isinstance(data, Mapping):
        sections = _combine(sections, {"data": _plain(data)})
        data = None
    options = {
        "data": data,
        "init_from": init_from,
        "max_steps": max_steps,
        "epochs": epochs,
        "time_limit": time_limit,
        "schedule_to_time_limit": schedule_to_time_limit,
        "checkpoint_every": checkpoint_every,
        "batch_size": batch_size,
        "workers": workers,
        "seed": seed,
        "device": device,
        "precision": precision,
        "compile": compile,
        "label_fraction": label_fraction,
        "probe_data": probe_data,
        "probe_every": probe_every,
    }
    flags = _combine(sections, pretrain_options(options))
    cfg = api.build_pretrain_config(method, preset, flags, _as_list(set))
    done = api.pretrain(cfg, out, resume=resume)
    best = Path(done.checkpoint).parent / "best.pt"
    return PretrainResult(
        run_dir=Path(out),
        method=cfg.method,
        last_checkpoint=Path(done.checkpoint),
        best_checkpoint=best if done.best and best.exists() else None,
        steps=done.step,
        total_steps=done.total_steps,
        stopped_by=done.stopped_by,
        seconds=done.seconds,
        final_loss=done.last_loss if math.isfinite(done.last_loss) else None,
    )


# ----------------------------------------------------------------------------------------------------
# 3. export


def export(run: StrPath, out: StrPath, checkpoint: Literal["last", "best"] = "last") -> Path:
    """Write a run's encoder as a folder that timm loads (``ultrassl export``).

    Args:
        run: A pre-training run folder (or one of its checkpoint files).
        out: The export folder to write: ``model.safetensors`` and ``config.json`` (input size,
            mean/std, the pre-training config and steps).
        checkpoint: ``last`` (the end of training) or ``best`` (``best.pt``: the best online-probe
            score of a run with ``probe_data``, else the lowest validation loss).

    Returns:
        The export folder.

    Raises:
        CheckpointError: The run holds no such checkpoint.
    """
    from ultrassl import api

    return Path(api.export(run, out, checkpoint=checkpoint))


# ----------------------------------------------------------------------------------------------------
# 4. finetune


def finetune(
    weights: StrPath,
    data: StrPath,
    out: StrPath,
    *,
    task: Literal["classify", "segment"] = "classify",
    preset: str | None = None,
    mode: Literal["linear", "partial", "full"] | None = None,
    folds: int | None = None,
    seeds: Sequence[int] | None = None,
    label_fractions: Sequence[float] | None = None,
    like: StrPath | None = None,
    arch: str | None = None,
    patch_size: int = 16,
    in_chans: int = 1,
    set: str | Sequence[str] | None = None,  # the name of --set (shadows the builtin here only)
    **options: Any,
) -> FinetuneResult:
    """Score an encoder on labelled data with grouped k-fold cross-validation (``ultrassl finetune``).

    Every fold trains on some patients, selects on others and tests once on patients it never saw;
    the selected fold models are kept for :func:`evaluate`. The same call again reads finished runs
    back instead of training them again. The options are built as the command line's: the task's
    defaults, then ``preset``, then the options given here, then ``set``; an unknown option is a
    :class:`~ultrassl.errors.ConfigError` listing the valid ones.

    Args:
        weights: An export folder, a run folder, a checkpoint file, or ``"scratch"`` (the same
            network untrained: give ``like`` or ``arch``).
        data: A manifest CSV with labels (classification) or masks (segmentation) and group ids.
        out: The evaluation folder.
        task: ``classify`` or ``segment``.
        preset: A fine-tuning preset's name or a YAML file.
        mode: Classification only: ``linear`` (a linear probe on frozen features, the default),
            ``partial`` (the last blocks trained) or ``full`` (all, with layer-wise lr decay).
        folds: Folds of the grouped k-fold (default 5).
        seeds: Each seed repeats every fold; the first also draws the folds (default ``(0,)``).
        label_fractions: Train on these fractions of each class's training patients, one run each:
            a few-label curve (default ``(1.0,)``).
        like: With ``weights="scratch"``: take the architecture and normalisation from this run or
            export, so pre-trained and scratch compare the same network.
        arch: With ``weights="scratch"``: a timm architecture or ``tiny``, ``small``, ``base``.
        patch_size: With ``arch``: the ViT patch size.
        in_chans: With ``arch``: input channels.
        set: ``--set`` items, ``["lr=1e-4", "epochs=10"]``.
        **options: Any other field of :class:`~ultrassl.finetune.options.ClassifyConfig` or
            :class:`~ultrassl.finetune.options.SegmentConfig` by name (``epochs=10``,
            ``max_frames_per_video=8``, ``head="unet"``, ...), as the command line's flags.

    Returns:
        The headline scores, the count of labelled items, and the report and fold-model paths. It also
        reads as the engines' dict (``result["summary"]``).

    Raises:
        ConfigError: An unknown task or option, or a value out of range.
    """
    from ultrassl.finetune.options import TASKS, scratch_encoder, task_config
    from ultrassl.finetune.saved import CARD, MODELS_DIR

    if task not in TASKS:
        raise ConfigError(f"task must be one of {'|'.join(TASKS)}, got {task!r}")
    named = {"mode": mode, "folds": folds, "seeds": seeds, "label_fractions": label_fractions}
    given = {k: v for k, v in named.items() if v is not None} | options
    cfg = task_config(TASKS[task], preset, given, _as_list(set))
    spec = scratch_encoder(weights, arch, patch_size=patch_size, in_chans=in_chans, img_size=cfg.img_size)
    if task == "segment":
        from ultrassl.finetune.segment import finetune_segment as run
    else:
        from ultrassl.finetune.classify import finetune_classify as run
    evaluation = run(weights, data, out, cfg, scratch_like=like, scratch_spec=spec)
    out_dir = Path(out)
    paths = {name: Path(p) for name, p in evaluation.paths.items()}
    models = out_dir / MODELS_DIR
    return FinetuneResult(
        task=task,
        out_dir=out_dir,
        scores=headline_scores(evaluation.summary),
        n_items=evaluation.n_items,
        report=paths["report_md"],
        report_json=paths["report_json"],
        models=models if (models / CARD).exists() else None,
        predictions=paths.get("predictions"),
        paths=paths,
        evaluation=evaluation,
    )


# ----------------------------------------------------------------------------------------------------
# 5. evaluate


def evaluate(
    model: StrPath, data: StrPath, out: StrPath | None = None, *, device: str = "auto"
) -> EvaluateResult:
    """Predict new data with the fold models a :func:`finetune` kept (``ultrassl evaluate``).

    Every fold's model predicts and their probabilities are averaged; the data are fed exactly as in
    the evaluation (frame rate, frames per video, scan-area crop, input size, normalisation).

    Args:
        model: The evaluation folder :func:`finetune` wrote (or its ``models/`` sub-folder).
        data: A manifest CSV (``ultrassl.index``); labels or masks, where present, are scored.
        out: The folder to write (default ``<model>/evaluate_<manifest name>``).
        device: ``auto``, ``cpu`` or ``cuda``.

    Returns:
        The prediction files and, where the manifest has labels or masks, the metrics.

    Raises:
        CheckpointError: ``model`` holds no saved fold models.
        UltrasslError: The data's labels are not among the model's classes, or nothing could be read.
    """
    from ultrassl.finetune.evaluate import evaluate as predict

    done = predict(model, data, out, device=device)
    paths = {name: Path(p) for name, p in done["paths"].items()}
    classify = done["task"] == "classify"
    return EvaluateResult(
        task=done["task"],
        out_dir=paths["metrics"].parent,
        n_items=int(done["n"]),
        predictions=paths["predictions_videos" if classify else "predictions"],
        frame_predictions=paths.get("predictions_frames"),
        metrics_file=paths["metrics"],
        metrics=done["metrics"] or None,
        paths=paths,
    )
