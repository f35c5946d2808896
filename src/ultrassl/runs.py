"""Run folders: what a run records about itself, loading it back, resuming it, starting from it.

Above the methods (it rebuilds a run's model through the registry) and below the facade: the Python
API and the fine-tuning engines both read runs through here, so neither imports the other.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from ultrassl import __version__
from ultrassl.checkpoint.store import CheckpointStore, load_checkpoint
from ultrassl.config import PretrainConfig, to_dict
from ultrassl.errors import CheckpointError, ConfigError
from ultrassl.methods import PretrainMethod, config_from_dict, get_method


def run_info() -> dict[str, Any]:
    """Versions and git hash, written into every run folder."""
    import timm

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
RESUMABLE_CHANGES = {
    "train.max_steps",
    "train.epochs",
    "train.time_limit",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.log_interval_s",
    "train.device",
    "train.tensorboard",
    "train.host_allocator",
    "data.num_workers",
    "data.manifest",
    "data.frame_cache",
    "data.ram_cache_gb",
    "data.decode_workers",
    "data.decode_timeout",
    "ultramae.confidence_cache",
}
#: whole sections that only watch the run (probe, pictures) and may change between a run and its resumption
RESUMABLE_SECTIONS = ("probe.", "previews.")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "model_args":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_resume_config(saved: dict[str, Any], new: dict[str, Any], path: Path) -> None:
    """Refuse a resume whose settings differ from the run's. The saved config is read through the
    dataclasses first, so options added since the run was made compare at their defaults."""
    try:
        saved = to_dict(config_from_dict(saved, str(path)))
    except ConfigError as exc:
        raise ConfigError(f"{path}: the run's saved config no longer reads ({exc})") from exc
    a, b = _flatten(saved), _flatten(new)
    diff = sorted(
        k
        for k in set(a) | set(b)
        if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES and not k.startswith(RESUMABLE_SECTIONS)
    )
    if diff:
        detail = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:6])
        raise ConfigError(
            f"{path}: the run here has a different config ({detail}); use the run's own settings to continue "
            "it, --fresh to start it over, or a new --out"
        )


def build_model(cfg: PretrainConfig) -> PretrainMethod:
    """The method's model for a config, through the registry."""
    return get_method(cfg.method).build_model(cfg)


def load_run(
    run_dir: str | Path, checkpoint: str = "last"
) -> tuple[PretrainConfig, PretrainMethod, dict[str, Any]]:
    """(config, model with the run's weights, raw checkpoint) from a run folder or a checkpoint file.

    ``checkpoint``: ``last`` (the end of training) or ``best`` (the best online-probe score of a run
    with ``--probe-data``, else the lowest validation loss of a method that holds data out, e.g. USCL).
    """
    if checkpoint not in ("last", "best"):
        raise ConfigError(f"checkpoint must be last|best, got {checkpoint!r}")
    path = Path(run_dir)
    if path.is_dir() and checkpoint == "last":
        found = CheckpointStore(path / "checkpoints").latest()  # a corrupt last.pt falls back, with a warning
        if found is None:
            raise CheckpointError(
                path / "checkpoints" / "last.pt", "no checkpoint here (expected RUN/checkpoints/last.pt)"
            )
        path, state = found
    else:
        if path.is_dir():
            path = path / "checkpoints" / f"{checkpoint}.pt"
        if not path.exists():
            hint = (
                " (best.pt is written by runs with --probe-data and by methods with a validation split, e.g. uscl)"
                if checkpoint == "best"
                else ""
            )
            raise CheckpointError(
                path, f"no checkpoint here (expected RUN/checkpoints/{checkpoint}.pt){hint}"
            )
        state = load_checkpoint(path)
    if "config" not in state or "model" not in state:
        raise CheckpointError(path, "not an ultrassl training checkpoint (no 'config'/'model')")
    cfg = config_from_dict(state["config"], str(path))
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    model.eval()
    return cfg, model, state


def init_from(model: PretrainMethod, source: str | Path) -> dict[str, Any]:
    """Start from a run folder (the whole model), else whatever the method loads itself
    (:meth:`~ultrassl.methods.base.PretrainMethod.load_pretrained`: an export folder, a foreign file)."""
    source = Path(source)
    found = CheckpointStore(source / "checkpoints").latest() if (source / "checkpoints").is_dir() else None
    if found is not None:
        state = found[1]
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
        if unexpected or missing:
            raise CheckpointError(
                source, f"run does not match this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        return {"loaded": "full model from run"}
    return model.load_pretrained(source)
