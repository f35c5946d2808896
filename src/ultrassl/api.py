"""The Python API: one typed function per command. The CLI only parses arguments and calls these."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ultrassl import checkpoint as ckpt
from ultrassl import distributed
from ultrassl.checkpoint.store import CheckpointStore
from ultrassl.confidence_cache import PrecomputeSummary, precompute
from ultrassl.config import PretrainConfig, to_dict
from ultrassl.data.manifest import IndexSummary, index_folder
from ultrassl.data.readers import ReadLimits
from ultrassl.data.skipped import report_skipped, skipped_csv
from ultrassl.data.synthetic import make_synthetic_dataset
from ultrassl.errors import ConfigError, UltrasslError
from ultrassl.host_allocator import set_host_allocator
from ultrassl.methods import (
    MethodSpec,
    PretrainData,
    as_method_config,
    build_pretrain_config,
    get_method,
    method_names,
    register_method,
)
from ultrassl.monitor import build_watchers, finish_run, preview_batch, preview_images
from ultrassl.runs import build_model, check_resume_config, init_from, load_run, run_info
from ultrassl.time_budget import RECORD, fit_schedule
from ultrassl.training import Trainer, TrainResult, agreed_latest
from ultrassl.visualize import save_reconstruction_grid

log = logging.getLogger(__name__)

__all__ = [
    "MethodSpec",
    "PretrainConfig",
    "build_model",
    "build_pretrain_config",
    "build_pretrain_data",
    "confidence",
    "convert",
    "export",
    "get_method",
    "index",
    "init_from",
    "load_run",
    "method_names",
    "prepare_config",
    "pretrain",
    "reconstruct",
    "register_method",
    "synth",
]


# ----------------------------------------------------------------------------------------------------
# data


def synth(out_dir: str | Path, *, seed: int = 0, **kwargs: Any) -> Path:
    """Write the built-in synthetic ultrasound data set; returns its manifest path."""
    return make_synthetic_dataset(out_dir, seed=seed, **kwargs)


def index(
    data_dir: str | Path,
    out_csv: str | Path,
    labels_csv: str | Path | None = None,
    group_pattern: str | None = None,
    *,
    strict_groups: bool = False,
    clear_patient_ids: bool = False,
    salt_file: str | Path | None = None,
    limits: ReadLimits | None = None,
) -> IndexSummary:
    """Scan a folder into a manifest CSV; unreadable files are listed with a reason, never fatal.

    DICOM PatientIDs are written as salted-hash pseudonyms (salt in ``<manifest>.salt`` or
    ``salt_file``) unless ``clear_patient_ids``. ``limits``: pixels, frames and seconds a file may take
    (decompression bombs and endless streams are skipped with a reason). A file ``group_pattern`` does
    not match becomes a group of its own, with a warning (``strict_groups``: an error naming the files)."""
    if not Path(data_dir).is_dir():
        raise UltrasslError(f"{data_dir}: not a folder")
    return index_folder(
        data_dir,
        out_csv,
        labels_csv=labels_csv,
        group_pattern=group_pattern,
        strict_groups=strict_groups,
        clear_patient_ids=clear_patient_ids,
        salt_file=salt_file,
        limits=limits or ReadLimits(),
    )


# ----------------------------------------------------------------------------------------------------
# pre-training


def prepare_config(cfg: PretrainConfig) -> PretrainConfig:
    """Fill the config values a method takes from the data (USCL's class names), in place."""
    spec = get_method(cfg.method)
    if spec.prepare is not None:
        spec.prepare(cfg)
    return cfg


def build_pretrain_data(cfg: PretrainConfig, progress: bool = True) -> PretrainData:
    """The method's data (training set, held-out set or None, skipped files); skipped files are listed."""
    data = get_method(cfg.method).build_data(cfg, progress)
    report_skipped(data.skipped)
    return data


#: what ``pretrain`` does with a run folder that already holds checkpoints
RESUME_MODES = ("auto", "fresh", "new")


def _resume_mode(resume: bool | str) -> str:
    if resume is True:  # the old ``resume=True``
        return "auto"
    if resume is False:  # the old default: this must be a new run
        return "new"
    if resume not in RESUME_MODES:
        raise ConfigError(f"resume must be one of {'|'.join(RESUME_MODES)}, got {resume!r}")
    return resume


def clear_run(run_dir: Path) -> None:
    """What a run writes about its training (checkpoints, metrics, TensorBoard, pictures, curves, summary,
    skipped files, the fitted schedule), removed
    for ``--fresh``; only in a folder that holds a run (``config.yaml`` or ``checkpoints/``). Anything
    else the user keeps in the folder stays."""
    import shutil

    if not ((run_dir / "config.yaml").exists() or (run_dir / "checkpoints").is_dir()):
        return
    CheckpointStore(run_dir / "checkpoints").clear()
    for name in ("metrics.csv", "skipped_files.csv", "curves.png", "summary.md", RECORD):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    shutil.rmtree(run_dir / "reconstructions", ignore_errors=True)


def pretrain(
    cfg: PretrainConfig, out_dir: str | Path, *, resume: bool | str = "auto", progress: bool = True
) -> TrainResult:
    """Pre-train ``cfg.method`` on ``cfg.data.manifest`` into the run folder ``out_dir``.

    ``resume``: ``auto`` (default) continues a run folder that holds a checkpoint of the same config (so
    a crashed or pre-empted job, or torchrun's restart, needs only the same command again) and refuses
    one of another config; ``fresh`` starts over, removing the folder's checkpoints; ``new`` refuses any
    folder that holds a run. A corrupt newest checkpoint is passed over for the one before it.
    """
    run_dir = Path(out_dir)
    cfg = as_method_config(cfg)
    cfg = dataclasses.replace(cfg, data=cfg.data.with_run_dir(run_dir.resolve()))
    mode = _resume_mode(resume)
    spec = get_method(cfg.method)
    config = to_dict(prepare_config(cfg))
    dist_info, device = distributed.init_distributed(cfg.train.device)
    store = CheckpointStore(run_dir / "checkpoints", keep=cfg.train.keep_checkpoints)
    if mode == "fresh" and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        mode = "auto"  # torchrun re-runs the command after a failure: --fresh meant the first start only
    if mode == "fresh":
        distributed.on_main(
            lambda: clear_run(run_dir), device, UltrasslError(f"{run_dir}: rank 0 could not clear it")
        )
    found = agreed_latest(store, dist_info)  # rank 0 picks; every process resumes from the same file
    if found is not None and mode == "new":
        raise UltrasslError(
            f"{run_dir} already holds a run; continue it with the same command (resume=auto) or choose a new --out"
        )
    if cfg.train.schedule_to_time_limit:  # a calibration run sets max_steps; a resumed run keeps its own
        cfg = fit_schedule(
            cfg,
            run_dir,
            found,
            lambda short, folder: pretrain(short, folder, resume="fresh", progress=progress),
            world_size=dist_info.world_size,
            is_main=dist_info.is_main,
        )
        config = to_dict(cfg)
    if found is not None:
        check_resume_config(found[1]["config"], config, found[0])
    allocator = set_host_allocator(cfg.train.host_allocator)  # before the data: decoding gains too
    torch.manual_seed(cfg.train.seed)  # model initialisation
    model = spec.build_model(cfg)
    if cfg.init_from and found is None:
        report = init_from(model, cfg.init_from)
        if dist_info.is_main:
            log.info(f"initialised from {cfg.init_from}: {report}")
    # under torchrun every process builds the data at once: with a frame store, each decodes its share of
    # the files into it (data.decode_pipeline), and an error in any process is raised in all of them
    data = build_pretrain_data(cfg, progress=progress and dist_info.is_main)
    info = {**run_info(), "host_allocator": allocator}  # the trainer adds what it settles, then writes it
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        if data.skipped:
            ckpt.atomic_write_text(run_dir / "skipped_files.csv", skipped_csv(data.skipped))
    watch = build_watchers(cfg, model, data.train, run_dir, is_main=dist_info.is_main, progress=progress)
    trainer = Trainer(
        model,
        data.train,
        optim=cfg.optim,
        train=cfg.train,
        run_dir=run_dir,
        config=config,
        resume_state=found,
        run_info=info,
        num_workers=cfg.data.num_workers,
        val_dataset=data.val,
        val_key=spec.val_key,
        watchers=watch.watchers,
        select_key=watch.select_key,
        select_id=watch.select_id,
    )
    del found  # the trainer holds the only reference to the loaded state and drops it once restored
    t0 = time.monotonic()
    report = {"run_dir": run_dir, "config": config}
    try:
        result = trainer.fit()
    except BaseException as exc:
        if dist_info.is_main:
            finish_run(
                **report,
                steps=getattr(trainer, "step", None),
                total_steps=getattr(trainer, "total_steps", None),
                seconds=time.monotonic() - t0,
                stopped_by=f"an error ({type(exc).__name__}: {exc})",
                best=trainer.best_info,
            )
        raise
    if dist_info.is_main:
        finish_run(
            **report,
            steps=result.step,
            total_steps=trainer.total_steps,
            seconds=result.seconds,
            stopped_by=result.stopped_by,
            best=result.best,
        )
    return result


def export(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "last") -> Path:
    """Write the run's encoder as ``model.safetensors`` + ``config.json`` that timm loads directly.

    ``checkpoint="best"`` exports ``best.pt``: the best online-probe score of a run with ``--probe-data``,
    else the lowest validation loss (USCL's ``best_model.pth``). A ``last`` checkpoint short of the run's
    total steps is exported with a warning saying so (:func:`unfinished_note`). The recorded pre-training
    config leaves out the training machine's cache folders (:func:`portable_config`).
    """
    cfg, model, state = load_run(run_dir, checkpoint)
    encoder, spec = model.exportable_encoder()
    per_channel = spec.in_chans if len(cfg.data.mean) == 1 else 1  # one value given for every channel
    extra: dict[str, Any] = {
        "pretrain_steps": int(state["step"]),
        "pretrain_config": portable_config(state["config"]),
    }
    if checkpoint == "last":
        if state.get("total_steps") is not None:
            extra["pretrain_total_steps"] = int(state["total_steps"])
        if state.get("stopped_by"):
            extra["pretrain_stopped_by"] = str(state["stopped_by"])
        note = unfinished_note(run_dir, state)
        if note is not None:
            log.warning(note)
    if "val_loss" in state:
        extra["val_loss"] = float(state["val_loss"])
    if state.get("best"):
        extra["best"] = dict(state["best"])
    return ckpt.export_encoder(
        encoder,
        spec,
        out_dir,
        method=cfg.method,
        mean=list(cfg.data.mean) * per_channel,
        std=list(cfg.data.std) * per_channel,
        extra={**extra, "checkpoint": checkpoint},
    )


#: config entries that are folders of the machine the run trained on (caches: where decoded frames or
#: confidence maps were kept); they do not change the weights and mean nothing elsewhere
MACHINE_LOCAL = (("data", "frame_cache"), ("ultramae", "confidence_cache"))


def portable_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config as an export records it: without :data:`MACHINE_LOCAL`'s cache folders."""
    out = dict(config)
    for section, key in MACHINE_LOCAL:
        if isinstance(out.get(section), dict) and key in out[section]:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def unfinished_note(run_dir: str | Path, state: dict[str, Any]) -> str | None:
    """One line when the checkpoint ``state`` of ``run_dir`` is short of the run's total steps (a run
    stopped by ``--time-limit``, a signal, or still going); None when it reached them or they are not
    known. Checkpoints from before the total was saved fall back to ``train.max_steps``."""
    step = int(state.get("step", 0))
    total = state.get("total_steps")
    if total is None:
        total = ((state.get("config") or {}).get("train") or {}).get("max_steps")
    if total is None or step >= int(total):
        return None
    how = state.get("stopped_by")
    if how:
        where = f"{run_dir} stopped at step {step} of {int(total)} ({how})"
    else:  # a checkpoint saved on the way: the run is still going, or was killed before its end
        where = (
            f"{run_dir}: its last checkpoint is at step {step} of {int(total)} (the run is still going, "
            "or ended before it could say why)"
        )
    return f"{where}; the same pretrain command continues it"


def convert(checkpoint: str | Path, out_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Import a foreign checkpoint (MAE, DeblurringMIM, timm, USCL, torchvision ResNet) into an export folder."""
    return ckpt.convert_checkpoint(checkpoint, out_dir, **kwargs)


@torch.no_grad()
def reconstruct(
    run_dir: str | Path, data: str | Path, out_png: str | Path, *, n: int = 8, seed: int = 0
) -> Path:
    """Draw input / masked / reconstruction / target for ``n`` frames of ``data`` (a manifest)."""
    cfg, model, _ = load_run(run_dir)
    if not model.preview_columns:
        raise ConfigError(f"{run_dir}: method {cfg.method!r} draws no reconstructions")
    cfg.data.manifest = str(data)
    cfg.train.seed = seed
    dataset = build_pretrain_data(cfg, progress=False).train
    images = preview_images(model, preview_batch(dataset, n), cfg.data.mean, cfg.data.std, seed)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    save_reconstruction_grid(
        images, out_png, max_rows=n, columns=model.preview_columns, titles=model.preview_titles
    )
    return out_png


# ----------------------------------------------------------------------------------------------------
# confidence maps


def confidence(data: str | Path, out: str | Path, **kwargs: Any) -> PrecomputeSummary:
    """`ultrassl confidence`: maps for every frame of DATA -> OUT (see confidence_cache.precompute)."""
    return precompute(data, out, **kwargs)
