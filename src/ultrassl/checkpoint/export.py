"""The export folder (``model.safetensors`` + ``config.json``) that plain timm loads, and its one
config -> EncoderSpec step."""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ultrassl.atomic import atomic_write_text
from ultrassl.checkpoint.hints import as_size2
from ultrassl.checkpoint.io import CONFIG_FILE, MODEL_FILE, PathLike, atomic_save_safetensors, safe_load
from ultrassl.checkpoint.load import read_config
from ultrassl.errors import CheckpointError, ConfigError
from ultrassl.models.vit import EncoderSpec, create_encoder, is_cnn_arch, resolve_arch


def _ultrassl_version() -> str:
    try:
        return importlib.metadata.version("ultrassl")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def export_encoder(
    encoder: torch.nn.Module,
    spec: EncoderSpec,
    out_dir: PathLike,
    *,
    method: str,
    mean: list[float],
    std: list[float],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` + ``config.json`` that ``timm.create_model`` loads (see module doc)."""
    out = Path(out_dir)
    if len(mean) != spec.in_chans or len(std) != spec.in_chans:
        raise ConfigError(
            f"mean/std have {len(mean)}/{len(std)} values but the encoder has {spec.in_chans} channels"
        )
    img_h, img_w = (int(s) for s in spec.img_size)
    cnn = is_cnn_arch(spec.arch)
    head = "fc." if cnn else "head."
    tensors = {k: v for k, v in encoder.state_dict().items() if not k.startswith(head)}
    if cnn:  # a CNN takes any size: the input size is only a hint in pretrained_cfg
        model_args: dict[str, Any] = dict(in_chans=int(spec.in_chans), num_classes=0)
    else:
        model_args = dict(
            img_size=[img_h, img_w],
            patch_size=int(spec.patch_size),
            in_chans=int(spec.in_chans),
            num_classes=0,
        )
    model_args.update(spec.model_args)
    config: dict[str, Any] = {
        "architecture": resolve_arch(spec.arch),
        "num_classes": 0,
        "num_features": int(encoder.num_features),
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [int(spec.in_chans), img_h, img_w],
            "fixed_input_size": not cnn,
            "mean": [float(x) for x in mean],
            "std": [float(x) for x in std],
            "interpolation": "bilinear" if cnn else "bicubic",
            "crop_pct": 1.0,
            "num_classes": 0,
            **({"first_conv": "conv1", "classifier": "fc"} if cnn else {}),
        },
        "method": method,
        "modality": "US",
        "ultrassl_version": _ultrassl_version(),
    }
    config.update(extra or {})
    atomic_save_safetensors(tensors, out / MODEL_FILE, metadata={"method": method})
    atomic_write_text(out / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return out


def spec_from_config(config: Mapping[str, Any]) -> EncoderSpec:
    ma = dict(config["model_args"])
    input_size = list(config.get("pretrained_cfg", {}).get("input_size", []))[1:]
    img = as_size2(ma.pop("img_size", None)) or as_size2(input_size) or (224, 224)
    patch = int(ma.pop("patch_size", 16))
    in_chans = int(ma.pop("in_chans", 3))
    ma.pop("num_classes", None)
    return EncoderSpec(
        arch=config["architecture"], img_size=img, patch_size=patch, in_chans=in_chans, model_args=ma
    )


def load_exported(model_dir: PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the encoder of an export folder with ``create_encoder`` and load its weights exactly."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    try:
        model = create_encoder(spec_from_config(config))
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(
            model_dir / CONFIG_FILE, f"cannot build the encoder it describes ({exc})"
        ) from exc
    sd = safe_load(model_dir / MODEL_FILE)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(model_dir / MODEL_FILE, f"weights do not match config.json ({exc})") from exc
    model.eval()
    return model, config
