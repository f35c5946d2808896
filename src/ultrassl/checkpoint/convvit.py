"""ConvMAE's checkpoints (Alpha-VL/ConvMAE, DeblurringMIM): recognising their keys and reading the
ConvViT's sizes off the weights, so ``ultrassl convert`` can rebuild the encoder they hold.

The reference saves MAE's way (``{'model': state_dict, 'optimizer', 'epoch', 'args'}``) with the
ConvViT's own names (``patch_embed1..4``, ``blocks1..3``, ``pos_embed`` without a class slot, ``norm``);
pre-training files add the fusion convs (``stage{1,2}_output_decode``), ``mask_token`` and ``decoder_*``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from ultrassl.checkpoint.hints import as_size2
from ultrassl.checkpoint.io import PathLike
from ultrassl.errors import CheckpointError
from ultrassl.models.convvit import CONVVIT_SIZES, TOKEN_STRIDE
from ultrassl.models.vit import EncoderSpec


def is_convvit_keys(keys: set[str]) -> bool:
    return "patch_embed1.proj.weight" in keys and any(k.startswith("blocks3.") for k in keys)


def method_of(source_model: str | None) -> str:
    """The ultrassl method of a reference ``args.model`` (DeblurringMIM's ``dconvmae_*`` is deblurring)."""
    name = (source_model or "").lower()
    return "deblur-convmae" if name.startswith(("dconvmae", "convdmae")) else "convmae"


def _heads(dim: int) -> int:
    """64-wide heads as ConvMAE's sizes (16-wide below 64), a divisor of ``dim``: the weights don't say."""
    heads = dim // 64 if dim >= 64 else max(1, dim // 16)
    while dim % heads:
        heads -= 1
    return heads


def _depth(sd: Mapping[str, torch.Tensor], stage: int) -> int:
    ids = {int(m.group(1)) for k in sd if (m := re.match(rf"blocks{stage}\.(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def infer_convvit_spec(
    sd: Mapping[str, torch.Tensor],
    *,
    in_chans: int | None = None,
    img_size: tuple[int, int] | int | None = None,
    model_args: Mapping[str, Any] | None = None,
    hints: Mapping[str, Any] | None = None,
    path: PathLike = "<state dict>",
) -> tuple[EncoderSpec, dict[str, Any]]:
    """The ConvViT a state dict holds: stage widths (the patch-embed kernels), depths (block indices),
    MLP ratios, channels and the source grid (``pos_embed``, square unless the checkpoint says its image
    size). Heads are not in the weights: a known size gets its own, another 64-wide heads (16-wide
    below 64) unless the checkpoint's config or ``model_args`` says."""
    hints = dict(hints or {})
    dims = []
    for i in (1, 2, 3):
        w = sd.get(f"patch_embed{i}.proj.weight")
        if w is None or w.ndim != 4:
            raise CheckpointError(path, f"cannot read the ConvViT: no 4-D patch_embed{i}.proj.weight")
        dims.append(int(w.shape[0]))
    src_chans = int(sd["patch_embed1.proj.weight"].shape[1])
    depths = [_depth(sd, i) for i in (1, 2, 3)]
    ratios = []
    for i, dim in zip((1, 2, 3), dims):
        fc1 = sd.get(f"blocks{i}.0.mlp.fc1.weight")
        ratios.append(int(fc1.shape[0]) / dim if fc1 is not None else 4.0)
    pos = sd.get("pos_embed")
    n = int(pos.shape[1]) if pos is not None else 0
    hinted = as_size2(hints.get("img_size"))
    grid = (hinted[0] // TOKEN_STRIDE, hinted[1] // TOKEN_STRIDE) if hinted else None
    if grid is None or grid[0] * grid[1] != n:
        side = math.isqrt(n)
        if side * side != n or n == 0:
            raise CheckpointError(
                path, f"pos_embed holds {n} positions, not a square grid; pass img_size=(H, W)"
            )
        grid = (side, side)
    src_img = (grid[0] * TOKEN_STRIDE, grid[1] * TOKEN_STRIDE)
    known = next(
        (name for name, (d, dp, _) in CONVVIT_SIZES.items() if list(d) == dims and list(dp) == depths), None
    )
    args: dict[str, Any] = {}
    if known is None:
        heads = (hints.get("model_args") or {}).get("num_heads") or hints.get("num_heads") or _heads(dims[2])
        args = {"embed_dim": dims, "depth": depths, "num_heads": int(heads)}
    if any(r != 4.0 for r in ratios):
        args["mlp_ratio"] = ratios
    if "blocks3.0.attn.qkv.weight" in sd and "blocks3.0.attn.qkv.bias" not in sd:
        args["qkv_bias"] = False
    args.update(model_args or {})
    spec = EncoderSpec(
        arch=known or "convvit_base_patch16",
        img_size=as_size2(img_size) or src_img,
        patch_size=TOKEN_STRIDE,
        in_chans=int(in_chans or src_chans),
        model_args=args,
    )
    inferred = {
        "embed_dim": dims,
        "depth": depths,
        "source_in_chans": src_chans,
        "source_img_size": list(src_img),
        "source_grid": list(grid),
    }
    return spec, inferred
