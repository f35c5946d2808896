"""Loading an encoder's weights into a model from any source, with the missing keys *checked*
(MAE ``main_finetune`` style)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer

from ultrassl.checkpoint.hints import checkpoint_hints, grid_from_hints
from ultrassl.checkpoint.io import CONFIG_FILE, MODEL_FILE, PathLike, safe_load
from ultrassl.checkpoint.layouts import (
    ALLOWED_MISSING_PREFIXES,
    adapt_encoder_state_dict,
    detect_layout,
    unwrap_state_dict,
)
from ultrassl.errors import CheckpointError


def read_source(source: PathLike | Mapping[str, Any]) -> tuple[dict[str, Any], Path | str]:
    """A file, an export folder or an in-memory checkpoint -> (loaded object, name for messages)."""
    if isinstance(source, Mapping):
        return dict(source), "<state dict>"
    path = Path(source)
    if path.is_dir():
        config = read_config(path)
        return {"model": safe_load(path / MODEL_FILE), "config": config}, path
    return safe_load(path), path


def read_config(model_dir: Path) -> dict[str, Any]:
    cfg_path = model_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(model_dir, f"not an export folder: {CONFIG_FILE} is missing")
    if not (model_dir / MODEL_FILE).is_file():
        raise CheckpointError(model_dir, f"not an export folder: {MODEL_FILE} is missing")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(cfg_path, f"unreadable config ({exc})") from exc
    if not isinstance(config, dict) or "architecture" not in config or "model_args" not in config:
        raise CheckpointError(
            cfg_path, "config.json lacks 'architecture'/'model_args'; not an ultrassl export"
        )
    return config


def load_checked(
    model: VisionTransformer,
    sd: Mapping[str, torch.Tensor],
    *,
    old_grid: tuple[int, int] | None,
    strict_keys: bool,
    path: PathLike,
) -> dict[str, list[str]]:
    new_sd, report = adapt_encoder_state_dict(sd, model, old_grid=old_grid, path=path)
    result = model.load_state_dict(new_sd, strict=False)
    report["missing"] = list(result.missing_keys)
    report["unexpected"] = sorted(set(report["unexpected"]) | set(result.unexpected_keys))
    if strict_keys:
        bad_missing = [k for k in report["missing"] if not k.startswith(ALLOWED_MISSING_PREFIXES)]
        problems = []
        if bad_missing:
            problems.append(
                f"missing encoder keys {bad_missing[:10]}{' ...' if len(bad_missing) > 10 else ''}"
            )
        if report["unexpected"]:
            problems.append(f"unexpected keys {report['unexpected'][:10]}")
        if report["mismatched"]:
            problems.append(f"shape mismatches {report['mismatched'][:10]}")
        if problems:
            raise CheckpointError(
                path,
                "the checkpoint does not fit this encoder: "
                + "; ".join(problems)
                + " (only head.*/fc_norm.* may be missing; check the architecture,"
                " or pass strict_keys=False)",
            )
    return report


def load_encoder_weights(
    model: VisionTransformer,
    source: PathLike | Mapping[str, Any],
    strict_keys: bool = True,
    old_grid: tuple[int, int] | None = None,
) -> dict[str, list[str]]:
    """Load any known checkpoint (file, export folder or loaded dict) into ``model`` and check the keys.

    With ``strict_keys`` only ``head.*``/``fc_norm.*`` may be missing and nothing may be left over
    (MAE ``main_finetune`` asserts the same); otherwise the report says what was skipped.
    """
    obj, path = read_source(source)
    detect_layout(obj, path)
    sd = unwrap_state_dict(obj)
    grid = old_grid or grid_from_hints(checkpoint_hints(obj), sd)
    return load_checked(model, sd, old_grid=grid, strict_keys=strict_keys, path=path)
