"""The Python API: one typed function per command. The CLI only parses arguments and calls these."""

from __future__ import annotations

import csv
import io
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from ultrassl import checkpoint as ckpt
from ultrassl import distributed
from ultrassl.config import PretrainConfig, build_pretrain_config, from_dict, to_dict
from ultrassl.data.datasets import PretrainFrames, load_frame_cache
from ultrassl.data.manifest import IndexSummary, index_folder, read_manifest
from ultrassl.errors import CheckpointError, ConfigError, UltrasslError
from ultrassl.methods.mae import MAE
from ultrassl.training import Trainer, TrainResult
from ultrassl.transforms.blur import Blur
from ultrassl.transforms.pairs import PairTransform

__all__ = [
    "PretrainConfig",
    "build_pretrain_config",
    "synth",
    "index",
    "pretrain",
    "load_run",
    "export",
    "convert",
    "reconstruct",
]


# ----------------------------------------------------------------------------------------------------
# data


def synth(out_dir: str | Path, *, seed: int = 0, **kwargs: Any) -> Path:
    """Write the built-in synthetic ultrasound data set; returns its manifest path."""
    from ultrassl.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(out_dir, seed=seed, **kwargs)


def index(
    data_dir: str | Path,
    out_csv: str | Path,
    labels_csv: str | Path | None = None,
    group_pattern: str | None = None,
) -> IndexSummary:
    """Scan a folder into a manifest CSV; unreadable files are listed with a reason, never fatal."""
    if not Path(data_dir).is_dir():
        raise UltrasslError(f"{data_dir}: not a folder")
    return index_folder(data_dir, out_csv, labels_csv=labels_csv, group_pattern=group_pattern)


# ----------------------------------------------------------------------------------------------------
# pre-training


def build_model(cfg: PretrainConfig) -> torch.nn.Module:
    """The method module for a config (MAE and Deblurring MAE share one class)."""
    if cfg.method in ("mae", "deblur-mae"):
        return MAE(cfg.encoder, cfg.mae)
    if cfg.method == "ultramae":
        from ultrassl.methods.ultramae import UltraMAE

        return UltraMAE(cfg.encoder, cfg.ultramae)
    if cfg.method == "uscl":
        from ultrassl.methods.uscl import USCL

        return USCL(cfg.encoder, cfg.uscl)
    raise ConfigError(f"unknown method {cfg.method!r}")


def build_pretrain_dataset(cfg: PretrainConfig, progress: bool = True) -> torch.utils.data.Dataset:
    if not cfg.data.manifest:
        raise ConfigError("no data: pass --data MANIFEST (make one with `ultrassl index DATA_DIR`)")
    if cfg.method == "uscl":  # videos as items, 20% held out
        return build_pretrain_datasets(cfg, progress)[0]
    rows = read_manifest(cfg.data.manifest)
    if cfg.method == "ultramae":  # images and clips, in one-modality batches
        from ultrassl.data.clips import build_clip_dataset

        return build_clip_dataset(rows, cfg.data, cfg.encoder, cfg.ultramae, cfg.train.seed, progress)
    cache = load_frame_cache(
        rows,
        rgb=cfg.encoder.in_chans == 3,
        video_fps=cfg.data.video_fps,
        max_frames_per_video=cfg.data.max_frames_per_video,
        scan_area=cfg.data.scan_area,
        progress=progress,
        cache_dir=cfg.data.frame_cache,
        workers=cfg.data.decode_workers,
    )
    for path, reason in cache.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    degrade = Blur(cfg.blur) if cfg.blur.kind != "none" else None
    transform = PairTransform(
        size=tuple(cfg.encoder.img_size),
        scale=cfg.data.crop_scale,
        ratio=cfg.data.crop_ratio,
        hflip=cfg.data.hflip,
        mean=cfg.data.mean,
        std=cfg.data.std,
        degrade=degrade,
    )
    return PretrainFrames(cache, transform, cfg.encoder.in_chans, seed=cfg.train.seed)


def build_pretrain_datasets(
    cfg: PretrainConfig, progress: bool = True
) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset | None]:
    """(training set, held-out validation set or None): USCL holds 20% of the videos out."""
    if cfg.method != "uscl":
        return build_pretrain_dataset(cfg, progress), None
    from ultrassl.data.video_items import build_video_items

    if not cfg.data.manifest:
        raise ConfigError("no data: pass --data MANIFEST (make one with `ultrassl index DATA_DIR`)")
    rows = read_manifest(cfg.data.manifest)
    train, val = build_video_items(rows, cfg.data, cfg.encoder, cfg.uscl, cfg.train.seed, progress)
    for path, reason in train.cache.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return train, val


def resolve_data_classes(cfg: PretrainConfig) -> None:
    """USCL's classifier size comes from the manifest's labels; store them in the config (in place)."""
    if cfg.method == "uscl" and not cfg.uscl.classes and cfg.data.manifest:
        from ultrassl.data.video_items import classes_of

        cfg.uscl.classes = classes_of(read_manifest(cfg.data.manifest))


def run_info() -> dict[str, Any]:
    """Versions and git hash, written into every run folder."""
    import timm

    from ultrassl import __version__

    git = None
    try:
        git = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "ultrassl": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # TorchVersion is not plain data for weights_only loads
        "timm": timm.__version__,
        "platform": platform.platform(),
        "git_hash": git,
        "argv": sys.argv,
    }


#: config parts that may change between a run and its resumption (they do not change the maths)
_RESUMABLE_CHANGES = {
    "train.max_steps",
    "train.epochs",
    "train.time_limit",
    "train.checkpoint_every",
    "train.log_every",
    "train.device",
    "train.tensorboard",
    "data.num_workers",
    "data.manifest",
    "data.frame_cache",
    "data.decode_workers",
}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "model_args":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _check_resume_config(saved: dict[str, Any], new: dict[str, Any], path: Path) -> None:
    """Refuse a resume whose settings differ from the run's. The saved config is read through the
    dataclasses first, so options added since the run was made compare at their defaults."""
    try:
        saved = to_dict(from_dict(PretrainConfig, saved))
    except ConfigError as exc:
        raise ConfigError(f"{path}: the run's saved config no longer reads ({exc})") from exc
    a, b = _flatten(saved), _flatten(new)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in _RESUMABLE_CHANGES)
    if diff:
        detail = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:6])
        raise ConfigError(
            f"{path}: --resume with a different config ({detail}). Use the run's own settings, or a new --out."
        )


def pretrain(
    cfg: PretrainConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> TrainResult:
    """Pre-train ``cfg.method`` on ``cfg.data.manifest`` into the run folder ``out_dir``."""
    run_dir = Path(out_dir)
    resolve_data_classes(cfg)
    config = to_dict(cfg)
    last = run_dir / "checkpoints" / "last.pt"
    if resume and last.exists():
        _check_resume_config(ckpt.safe_load(last)["config"], config, last)
    elif not resume and last.exists():
        raise UltrasslError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose a new --out"
        )
    dist_info, _ = distributed.init_distributed(cfg.train.device)
    torch.manual_seed(cfg.train.seed)  # model initialisation
    model = build_model(cfg)
    if cfg.init_from and not (resume and last.exists()):
        report = init_from(model, cfg.init_from)
        if dist_info.is_main:
            print(f"initialised from {cfg.init_from}: {report}", file=sys.stderr)
    dataset, val_dataset = build_pretrain_datasets(cfg, progress=progress and dist_info.is_main)
    info = run_info()
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        ckpt.atomic_write_text(run_dir / "run_info.json", json.dumps(info, indent=2))
        if dataset.cache.skipped:
            ckpt.atomic_write_text(run_dir / "skipped_files.csv", _skipped_csv(dataset.cache.skipped))
    trainer = Trainer(
        model,
        dataset,
        optim=cfg.optim,
        train=cfg.train,
        run_dir=run_dir,
        config=config,
        resume=resume,
        run_info=info,
        num_workers=cfg.data.num_workers,
        val_dataset=val_dataset,
        # USCL keeps the checkpoint with the lowest validation NT-Xent (its best_model.pth)
        val_key="nt_xent" if cfg.method == "uscl" else "loss",
    )
    return trainer.fit()


def _skipped_csv(skipped: list[tuple[str, str]]) -> str:
    """Files that could not be decoded at start-up (path, reason), as CSV."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "reason"])
    writer.writerows(skipped)
    return buf.getvalue()


def init_from(model: torch.nn.Module, source: str | Path) -> dict[str, Any]:
    """Start from a run folder, an export folder or a foreign checkpoint (MAE, DeblurringMIM, timm).

    The encoder always loads (adapted to this model's channels and grid). A MAE/DeblurringMIM file
    that also holds the decoder (``*_full.pth``, ``mae_visualize_*.pth``) gives its decoder too when the
    shapes match this model's, so pre-training continues rather than restarting the decoder.
    """
    source = Path(source)
    if (source / "checkpoints" / "last.pt").exists():
        state = ckpt.safe_load(source / "checkpoints" / "last.pt")
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
        if unexpected or missing:
            raise CheckpointError(
                source, f"run does not match this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        return {"loaded": "full model from run"}
    if (source / "model.safetensors").exists():
        source = source / "model.safetensors"
    if not hasattr(model.encoder, "vit"):
        raise ConfigError(f"init_from {source}: not supported for this method's encoder (only for ViT MAEs)")
    report = ckpt.load_encoder_weights(model.encoder.vit, source)
    report["decoder"] = _load_mae_decoder(model, source)
    return report


def _load_mae_decoder(model: torch.nn.Module, source: Path) -> str:
    """MAE's decoder keys (``decoder_*``, ``mask_token``) are ours under ``decoder.``; load if they fit."""
    if source.suffix == ".safetensors" or not hasattr(model, "decoder"):
        return "none in checkpoint"
    raw = ckpt.safe_load(source)
    sd = raw.get("model", raw) if isinstance(raw, dict) else {}
    decoder_sd = {
        k.removeprefix("module."): v
        for k, v in sd.items()
        if k.removeprefix("module.").startswith("decoder_") or k.removeprefix("module.") == "mask_token"
    }
    if not decoder_sd:
        return "none in checkpoint"
    own = model.decoder.state_dict()
    if set(decoder_sd) != set(own) or any(decoder_sd[k].shape != own[k].shape for k in own):
        return "not loaded: its shape differs from this model's decoder (trained from scratch)"
    model.decoder.load_state_dict(decoder_sd)
    return "loaded"


def load_run(
    run_dir: str | Path, checkpoint: str = "last"
) -> tuple[PretrainConfig, torch.nn.Module, dict[str, Any]]:
    """(config, model with the run's weights, raw checkpoint) from a run folder or a checkpoint file.

    ``checkpoint``: ``last`` (the end of training) or ``best`` (lowest validation loss, for methods that
    hold data out, e.g. USCL).
    """
    if checkpoint not in ("last", "best"):
        raise ConfigError(f"checkpoint must be last|best, got {checkpoint!r}")
    path = Path(run_dir)
    if path.is_dir():
        path = path / "checkpoints" / f"{checkpoint}.pt"
    if not path.exists():
        hint = (
            " (only methods with a validation split, e.g. uscl, write best.pt)"
            if checkpoint == "best"
            else ""
        )
        raise CheckpointError(path, f"no checkpoint here (expected RUN/checkpoints/{checkpoint}.pt){hint}")
    state = ckpt.safe_load(path)
    if "config" not in state or "model" not in state:
        raise CheckpointError(path, "not an ultrassl training checkpoint (no 'config'/'model')")
    cfg = from_dict(PretrainConfig, state["config"])
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    model.eval()
    return cfg, model, state


def export(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "last") -> Path:
    """Write the run's encoder as ``model.safetensors`` + ``config.json`` that timm loads directly.

    ``checkpoint="best"`` exports the lowest-validation-loss weights (USCL's ``best_model.pth``).
    """
    cfg, model, state = load_run(run_dir, checkpoint)
    encoder, spec = model.exportable_encoder()
    per_channel = spec.in_chans if len(cfg.data.mean) == 1 else 1  # one value given for every channel
    extra = {"pretrain_steps": int(state["step"]), "pretrain_config": state["config"]}
    if "val_loss" in state:
        extra["val_loss"] = float(state["val_loss"])
    return ckpt.export_encoder(
        encoder,
        spec,
        out_dir,
        method=cfg.method,
        mean=list(cfg.data.mean) * per_channel,
        std=list(cfg.data.std) * per_channel,
        extra={**extra, "checkpoint": checkpoint},
    )


def convert(checkpoint: str | Path, out_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Import a foreign checkpoint (MAE, DeblurringMIM, timm, USCL, torchvision ResNet) into an export folder."""
    return ckpt.convert_checkpoint(checkpoint, out_dir, **kwargs)


@torch.no_grad()
def reconstruct(
    run_dir: str | Path, data: str | Path, out_png: str | Path, *, n: int = 8, seed: int = 0
) -> Path:
    """Draw input / masked / reconstruction / target for ``n`` frames of ``data`` (a manifest)."""
    from ultrassl.visualize import save_reconstruction_grid

    cfg, model, _ = load_run(run_dir)
    cfg.data.manifest = str(data)
    cfg.train.seed = seed
    dataset = build_pretrain_dataset(cfg, progress=False)
    if hasattr(dataset, "preview_indices"):  # items of one shape (UltraMAE: images, else clips)
        indices = dataset.preview_indices(n)
    else:
        indices = list(range(0, len(dataset), max(1, len(dataset) // n)))[:n]
    items = [dataset[i] for i in indices]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    gen = torch.Generator().manual_seed(seed)
    views = model.reconstruct(batch, generator=gen)
    mean = torch.tensor(cfg.data.mean).view(1, -1, 1, 1)
    std = torch.tensor(cfg.data.std).view(1, -1, 1, 1)
    images = {k: (v.float() * std + mean).clamp(0, 1) for k, v in views.items()}
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    # a model trained on every patch (Deblurring MAE's loss) predicts the sharp frame everywhere: show
    # that prediction; a masked-loss MAE is shown as MAE's demo does (visible patches pasted back)
    columns = (
        "input",
        "masked_input",
        "prediction" if cfg.mae.loss_on == "all" else "reconstruction",
        "target",
    )
    save_reconstruction_grid(images, out_png, max_rows=n, columns=columns)
    return out_png


# ----------------------------------------------------------------------------------------------------
# demo


def demo(out_dir: str | Path = "demo", **kwargs: Any) -> Any:
    """The whole story on synthetic data (see :mod:`ultrassl.demo`); returns a ``DemoResult``."""
    from ultrassl.demo import run_demo

    return run_demo(out_dir, **kwargs)


def confidence(data: str | Path, out: str | Path, **kwargs: Any) -> Any:
    """`ultrassl confidence`: maps for every frame of DATA -> OUT (see confidence_cache.precompute)."""
    from ultrassl.confidence_cache import precompute

    return precompute(data, out, **kwargs)
