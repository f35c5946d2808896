"""Which codebase wrote a checkpoint (its key layout), the weights inside it, and the ViT key adapters
(timm's ``checkpoint_filter_fn`` recipe: drop decoder/head, sum RGB kernels, resample embeddings)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models import adapt_input_conv
from timm.models.vision_transformer import VisionTransformer

from ultrassl.checkpoint.convvit import is_convvit_keys
from ultrassl.checkpoint.io import CONFIG_FILE, MODEL_FILE, PathLike
from ultrassl.checkpoint.resnet import (
    is_resnet_keys,
    is_uscl_keys,
)
from ultrassl.errors import CheckpointError
from ultrassl.models.convvit import is_pretraining_key

#: Layouts ``detect_layout`` recognises, with the keys that identify them (shown in error messages).
KNOWN_LAYOUTS = {
    "ultrassl-train": "our training checkpoint {'model': {encoder.vit.*, decoder.*}, 'config': ...}",
    "mae": "facebookresearch/mae: cls_token, pos_embed, patch_embed.proj.weight, blocks.N.*, [decoder_*]",
    "timm-vit": "a timm VisionTransformer state dict (same encoder keys, maybe head.*, fc_norm.*)",
    "convmae": "Alpha-VL/ConvMAE, DeblurringMIM: patch_embed1-4.*, blocks1-3.N.*, pos_embed, "
    "[stage1/2_output_decode.*, decoder_*]",
    "uscl": "USCL's best_model.pth: features.0-7.* (a torchvision ResNet trunk) + l1/l2/fc or linear/fc",
    "timm-resnet": "a torchvision/timm ResNet state dict: conv1.weight, bn1.*, layer1-4.*, maybe fc.*",
}

#: Sub-dicts that hold the weights, tried in this order (timm ``load_state_dict`` / MAE / IJEPA style).
STATE_DICT_KEYS = ("model", "state_dict", "model_state", "encoder")
#: Prefixes removed from every key, in this order. ``str.removeprefix``, never ``lstrip``.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
ENCODER_PREFIXES = ("encoder.vit.", "encoder.", "backbone.")
#: Keys a model may lack after loading an encoder checkpoint (a fresh head, global-pool norm).
ALLOWED_MISSING_PREFIXES = ("head.", "fc_norm.")


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _select_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Descend into ``model``/``state_dict``/``model_state``/``encoder`` until the tensors are reached."""
    cur = obj
    for _ in range(len(STATE_DICT_KEYS) + 1):
        if not isinstance(cur, Mapping) or _is_tensor_dict(cur):
            break
        nxt = next((cur[k] for k in STATE_DICT_KEYS if isinstance(cur.get(k), Mapping)), None)
        if nxt is None:
            break
        cur = nxt
    if not isinstance(cur, Mapping):
        return {}
    return {str(k): v for k, v in cur.items() if isinstance(v, torch.Tensor)}


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    for p in prefixes:  # in order, each at most once: "module._orig_mod.encoder.vit.x" -> "x"
        key = key.removeprefix(p)
    return key


def _has_vit_encoder_keys(keys: set[str]) -> bool:
    return (
        "patch_embed.proj.weight" in keys
        and any(k.startswith("blocks.0.") for k in keys)
        and ("cls_token" in keys or "pos_embed" in keys)
    )


def detect_layout(sd: Mapping[str, Any], path: PathLike = "<state dict>") -> str:
    """Which known layout ``sd`` (a loaded checkpoint or a state dict) is; unknown -> ``CheckpointError``."""
    is_mae_file = isinstance(sd, Mapping) and isinstance(sd.get("args"), dict | argparse.Namespace)
    tensors = _select_state_dict(sd)
    keys = {_strip(k, WRAPPER_PREFIXES) for k in tensors}
    if any(k.startswith("encoder.vit.") for k in keys):
        return "ultrassl-train"
    if isinstance(sd, Mapping) and "config" in sd and any(k.startswith("encoder.conv1.") for k in keys):
        return "ultrassl-train"  # a ResNet run (USCL)
    if is_uscl_keys(keys):
        return "uscl"
    enc_keys = {_strip(k, ENCODER_PREFIXES) for k in keys}
    if _has_vit_encoder_keys(enc_keys):
        if is_mae_file or "mask_token" in enc_keys or any(k.startswith("decoder_") for k in enc_keys):
            return "mae"
        return "timm-vit"
    if is_convvit_keys(enc_keys):
        return "convmae"
    if is_resnet_keys(enc_keys):
        return "timm-resnet"
    sample = sorted(tensors)[:8] if tensors else sorted(map(str, sd))[:8] if isinstance(sd, Mapping) else []
    known = "; ".join(f"{name} ({desc})" for name, desc in KNOWN_LAYOUTS.items())
    raise CheckpointError(
        path,
        f"unrecognised checkpoint layout: {len(tensors)} tensors, keys like {sample}. "
        f"Known layouts: {known}; or an ultrassl export folder ({MODEL_FILE} + {CONFIG_FILE}).",
    )


def unwrap_state_dict(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The encoder-facing state dict: sub-dict selected, wrapper/encoder prefixes removed (timm names)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in _select_state_dict(obj).items():
        out[_strip(_strip(k, WRAPPER_PREFIXES), ENCODER_PREFIXES)] = v
    return out


def _num_prefix_tokens(model: VisionTransformer) -> int:
    return 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))


#: the first convolution of each encoder family that takes input channels (ViT, ConvViT)
_PATCH_KERNELS = ("patch_embed.proj.weight", "patch_embed1.proj.weight")


def _grid_of(model: VisionTransformer) -> tuple[int, int]:
    """The model's token grid: a timm ViT keeps it on its patch embedding, a ConvViT on itself."""
    grid = model.patch_embed.grid_size if hasattr(model, "patch_embed") else model.grid_size
    return int(grid[0]), int(grid[1])


def adapt_encoder_state_dict(
    sd: Mapping[str, torch.Tensor],
    model: VisionTransformer,
    old_grid: tuple[int, int] | None = None,
    path: PathLike = "<state dict>",
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Make an encoder state dict fit ``model`` (timm ``checkpoint_filter_fn`` recipe) and say what changed.

    Decoder keys and heads that do not fit are dropped; the patch kernel is adapted to the model's
    channels (RGB summed for grayscale, ``adapt_input_conv``) and patch size (``resample_patch_embed``);
    ``pos_embed`` is resampled bicubically to the model's grid, prefix tokens kept. ``old_grid`` is the
    checkpoint's (rows, cols) patch grid; without it the grid is assumed square.
    """
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    report: dict[str, list[str]] = {
        "missing": [],
        "unexpected": [],
        "adapted": [],
        "dropped": [],
        "mismatched": [],
    }
    for key, value in sd.items():
        if is_pretraining_key(key):  # MAE's decoder, ConvMAE's fusion convs
            report["dropped"].append(key)
            continue
        if key not in target:
            if key.startswith(ALLOWED_MISSING_PREFIXES) or key.startswith("pre_logits"):
                report["dropped"].append(key)  # a head the headless model does not have
            else:
                report["unexpected"].append(key)
            continue
        want = target[key].shape
        if key in _PATCH_KERNELS and value.shape != want:
            value = _adapt_patch_kernel(value, want, path)
            report["adapted"].append(f"{key}: {list(sd[key].shape)} -> {list(want)}")
        elif key == "pos_embed" and (value.shape != want or old_grid is not None):
            new = _adapt_pos_embed(value, model, old_grid, path)
            if new is not value:
                report["adapted"].append(f"{key}: {list(value.shape)} -> {list(new.shape)}")
            value = new
        if value.shape != want:
            if key.startswith(ALLOWED_MISSING_PREFIXES):
                report["dropped"].append(f"{key} (shape {list(value.shape)} != {list(want)})")
            else:
                report["mismatched"].append(f"{key}: checkpoint {list(value.shape)} != model {list(want)}")
            continue
        out[key] = value
    report["missing"] = [k for k in target if k not in out]
    return out, report


def _adapt_patch_kernel(w: torch.Tensor, want: torch.Size, path: PathLike) -> torch.Tensor:
    if w.ndim != 4:
        raise CheckpointError(path, f"the patch kernel has shape {list(w.shape)}; expected a conv kernel")
    if tuple(w.shape[-2:]) != tuple(want[-2:]):
        w = resample_patch_embed(w, list(want[-2:]), interpolation="bicubic", antialias=True)
    if w.shape[1] != want[1]:
        w = adapt_input_conv(int(want[1]), w, base_chans=int(w.shape[1]))
    return w


def _adapt_pos_embed(
    pos: torch.Tensor, model: VisionTransformer, old_grid: tuple[int, int] | None, path: PathLike
) -> torch.Tensor:
    npre = _num_prefix_tokens(model)
    n_old = pos.shape[1] - npre
    if old_grid is None or old_grid[0] * old_grid[1] != n_old:
        side = math.isqrt(max(n_old, 0))
        if side * side != n_old:
            raise CheckpointError(
                path,
                f"pos_embed holds {n_old} patch positions, which is not a square grid; "
                "pass old_grid=(rows, cols) "
                "(the checkpoint's image size divided by its patch size)",
            )
        old_grid = (side, side)
    new_grid = _grid_of(model)
    if tuple(old_grid) == new_grid:
        return pos
    return resample_abs_pos_embed(
        pos, new_size=list(new_grid), old_size=list(old_grid), num_prefix_tokens=npre, interpolation="bicubic"
    )
