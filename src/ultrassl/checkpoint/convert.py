"""Converting foreign checkpoints (MAE, DeblurringMIM, ConvMAE, timm, USCL, torchvision ResNet) into
export folders, with a key-by-key report."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ultrassl.atomic import atomic_write_text
from ultrassl.checkpoint.convvit import infer_convvit_spec, is_convvit_keys, method_of
from ultrassl.checkpoint.export import export_encoder
from ultrassl.checkpoint.hints import as_size2, checkpoint_hints, grid_from_hints
from ultrassl.checkpoint.io import PathLike
from ultrassl.checkpoint.layouts import detect_layout, unwrap_state_dict
from ultrassl.checkpoint.load import load_checked, read_source
from ultrassl.checkpoint.resnet import (
    adapt_stem,
    infer_resnet_arch,
    is_resnet_keys,
    split_head,
    uscl_to_resnet,
)
from ultrassl.errors import CheckpointError, ConfigError
from ultrassl.models.vit import EncoderSpec, create_encoder, resolve_arch

REPORT_FILE = "convert_report.json"

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
#: ImageNet statistics averaged over RGB, for a grayscale model whose RGB kernels were summed.
IMAGENET_GRAY_MEAN = [0.449]
IMAGENET_GRAY_STD = [0.226]

#: timm names and head counts for the standard ViT sizes, keyed by (embed_dim, depth).
_KNOWN_VITS = {
    (192, 12): ("vit_tiny", 3),
    (384, 12): ("vit_small", 6),
    (768, 12): ("vit_base", 12),
    (1024, 24): ("vit_large", 16),
    (1280, 32): ("vit_huge", 16),
}


def _default_num_heads(dim: int) -> int:
    """Heads cannot be read from weights: 64-wide heads (MAE/timm), 16-wide below 64, dividing ``dim``."""
    heads = dim // 64 if dim >= 64 else max(1, dim // 16)
    while dim % heads:
        heads -= 1
    return heads


def _known_arch(dim: int, depth: int, patch: int) -> str | None:
    if (dim, depth) not in _KNOWN_VITS:
        return None
    size = _KNOWN_VITS[(dim, depth)][0]
    import timm

    for name in (f"{size}_patch{patch}_224", f"{size}_patch16_224", f"{size}_patch14_224"):
        if timm.is_model(name):
            return name
    return None


def infer_encoder_spec(
    sd: Mapping[str, torch.Tensor],
    *,
    in_chans: int | None = None,
    img_size: tuple[int, int] | int | None = None,
    patch_size: int | None = None,
    arch: str | None = None,
    model_args: Mapping[str, Any] | None = None,
    hints: Mapping[str, Any] | None = None,
    path: PathLike = "<state dict>",
) -> tuple[EncoderSpec, dict[str, Any]]:
    """An ``EncoderSpec`` for timm-named encoder weights; explicit arguments win over what is inferred.

    Read from the weights: width (``patch_embed.proj.weight``), depth (``blocks.N``), patch size and
    channels (the kernel), MLP ratio (``mlp.fc1``), qkv bias, layer scale, and the image size (the
    ``pos_embed`` grid times the patch, square unless the checkpoint's config says otherwise). Not in
    the weights: the head count. Standard sizes (tiny/small/base/large/huge by width and depth) use timm's
    names and heads; other widths get ``dim // 64`` heads (``max(1, dim // 16)`` below 64), so pass
    ``model_args={"num_heads": ...}`` if the source used another count.
    """
    hints = dict(hints or {})
    w = sd.get("patch_embed.proj.weight")
    if w is None or w.ndim != 4:
        raise CheckpointError(path, "cannot infer the encoder: no 4-D patch_embed.proj.weight")
    dim, src_chans, ph, pw = (int(s) for s in w.shape)
    if ph != pw:
        raise CheckpointError(path, f"non-square patch kernel {ph}x{pw} is not supported")
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    depth = max(blocks) + 1 if blocks else 0
    inferred: dict[str, Any] = {
        "embed_dim": dim,
        "depth": depth,
        "source_patch_size": ph,
        "source_in_chans": src_chans,
    }

    grid = grid_from_hints(hints, sd)
    pos = sd.get("pos_embed")
    if pos is not None:
        npre = 1 if "cls_token" in sd else 0
        n = int(pos.shape[1]) - npre - sum(int(sd[k].shape[1]) for k in ("reg_token",) if k in sd)
        if grid is None or grid[0] * grid[1] != n:
            side = math.isqrt(max(n, 0))
            if side * side != n:
                raise CheckpointError(
                    path, f"pos_embed holds {n} positions, not a square grid; pass img_size=(H, W)"
                )
            grid = (side, side)
    src_img = (grid[0] * ph, grid[1] * pw) if grid else (224, 224)
    inferred["source_img_size"] = list(src_img)

    extra: dict[str, Any] = {}
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None and int(fc1.shape[0]) != 4 * dim:
        extra["mlp_ratio"] = int(fc1.shape[0]) / dim
    if "blocks.0.attn.qkv.weight" in sd and "blocks.0.attn.qkv.bias" not in sd:
        extra["qkv_bias"] = False
    if "blocks.0.ls1.gamma" in sd:
        extra["init_values"] = 1e-5  # layer scale present; the value comes from the weights

    name = arch or hints.get("arch")
    if name is None and _known_arch(dim, depth, ph) is not None:
        name = _known_arch(dim, depth, ph)  # a standard size: timm's own defaults describe it
    else:
        # Any other name is only a template: width, depth and heads are given explicitly.
        name = name or "vit_base_patch16_224"
        base_args = dict(hints.get("model_args") or {})
        base_args.pop("num_classes", None)
        base_args.update(embed_dim=dim, depth=depth)
        heads = base_args.get("num_heads") or hints.get("num_heads")
        heads = heads or _KNOWN_VITS.get((dim, depth), (None, _default_num_heads(dim)))[1]
        base_args["num_heads"] = heads
        extra = {**base_args, **extra}
    extra.update(model_args or {})

    size = as_size2(img_size) if img_size is not None else None
    new_patch = int(patch_size or ph)
    spec = EncoderSpec(
        arch=resolve_arch(name),
        img_size=size or src_img,
        patch_size=new_patch,
        in_chans=int(in_chans or src_chans),
        model_args=extra,
    )
    inferred["source_grid"] = list(grid) if grid else None
    return spec, inferred


def _normalisation(
    mean: list[float] | None,
    std: list[float] | None,
    hints: Mapping[str, Any],
    channels: int,
    fallback: tuple[list[float], list[float]] | None = None,
) -> tuple[list[float], list[float]]:
    """The mean/std a converted encoder expects: given values, else the checkpoint's own (one value is
    repeated per channel), else ``fallback``, else ImageNet's (gray for 1 channel), else 0.5/0.5."""
    if mean is not None and std is not None:
        return list(mean), list(std)
    hm, hs = hints.get("mean"), hints.get("std")
    if isinstance(hm, list) and isinstance(hs, list) and len(hm) == len(hs) and len(hm) in (1, channels):
        hm, hs = hm * (channels // len(hm)), hs * (channels // len(hs))
    elif fallback is not None:
        hm, hs = fallback
    elif channels == 1:
        hm, hs = IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD
    elif channels == 3:
        hm, hs = IMAGENET_MEAN, IMAGENET_STD
    else:
        hm, hs = [0.5] * channels, [0.5] * channels
    return list(mean or hm), list(std or hs)


def convert_checkpoint(
    src: PathLike,
    out_dir: PathLike,
    *,
    in_chans: int | None = None,
    img_size: tuple[int, int] | int | None = None,
    patch_size: int | None = None,
    arch: str | None = None,
    model_args: dict[str, Any] | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> dict[str, Any]:
    """Import a MAE/DeblurringMIM, timm, safetensors, ultrassl-train checkpoint or export folder to an export.

    ResNets (USCL's ``best_model.pth``, torchvision/timm state dicts, our USCL runs) go through
    :func:`_convert_resnet`: the trunk is renamed to timm/torchvision keys and the heads are dropped.

    The architecture is inferred from the weights (see ``infer_encoder_spec``); the keyword arguments
    override it (a new ``in_chans``/``img_size``/``patch_size`` adapts the kernel and position embedding).
    Normalisation comes from the source's config when it has one, else ImageNet statistics (averaged over
    RGB for a 1-channel model). The report is returned and written to ``out_dir/convert_report.json``.
    """
    obj, path = read_source(src)
    layout = "ultrassl-export" if Path(src).is_dir() else detect_layout(obj, path)
    sd = unwrap_state_dict(obj)
    hints = checkpoint_hints(obj)
    if layout in ("uscl", "timm-resnet") or is_resnet_keys(set(sd)):
        return _convert_resnet(
            sd,
            layout,
            hints,
            path,
            out_dir,
            in_chans=in_chans,
            img_size=img_size,
            arch=arch,
            mean=mean,
            std=std,
        )
    convvit = is_convvit_keys(set(sd))
    if convvit and patch_size not in (None, 16):
        raise ConfigError(
            f"{path}: a ConvViT's token stride is 16 (stages 4, 2, 2); patch_size {patch_size} cannot be"
        )
    if convvit:  # ConvMAE / DeblurringMIM's hybrid encoder (or an ultrassl ConvMAE run or export)
        spec, inferred = infer_convvit_spec(
            sd, in_chans=in_chans, img_size=img_size, model_args=model_args, hints=hints, path=path
        )
        if arch is not None or (hints.get("arch") and hints["arch"] != spec.arch):
            spec.arch = arch or hints["arch"]
        if layout == "convmae":
            hints["method"] = method_of(hints.get("source_model"))
    else:
        spec, inferred = infer_encoder_spec(
            sd,
            in_chans=in_chans,
            img_size=img_size,
            patch_size=patch_size,
            arch=arch,
            model_args=model_args,
            hints=hints,
            path=path,
        )
    try:
        model = create_encoder(spec)
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(path, f"cannot build the inferred encoder {spec} ({exc})") from exc
    old_grid = tuple(inferred["source_grid"]) if inferred["source_grid"] else None
    keys = load_checked(model, sd, old_grid=old_grid, strict_keys=True, path=path)

    mean, std = _normalisation(mean, std, hints, spec.in_chans)
    method = hints.get("method") or {"mae": "mae", "ultrassl-train": "unknown"}.get(layout, "imported")
    out = export_encoder(
        model,
        spec,
        out_dir,
        method=str(method),
        mean=list(mean),
        std=list(std),
        extra={"converted_from": str(path), "source_layout": layout},
    )
    report: dict[str, Any] = {
        "source": str(path),
        "layout": layout,
        "out_dir": str(out),
        "architecture": spec.arch,
        "img_size": list(spec.img_size),
        "patch_size": spec.patch_size,
        "in_chans": spec.in_chans,
        "model_args": spec.model_args,
        "inferred": inferred,
        "source_model": hints.get("source_model"),
        **keys,
    }
    atomic_write_text(out / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report


#: heads a ResNet checkpoint may carry: torchvision/timm's classifier, our USCL projector and classifier
_RESNET_HEADS = ("fc.", "projector.", "classifier.")


def _convert_resnet(
    sd: dict[str, torch.Tensor],
    layout: str,
    hints: Mapping[str, Any],
    path: PathLike,
    out_dir: PathLike,
    *,
    in_chans: int | None,
    img_size: tuple[int, int] | int | None,
    arch: str | None,
    mean: list[float] | None,
    std: list[float] | None,
) -> dict[str, Any]:
    """USCL / torchvision / timm / our USCL-run ResNet -> export folder of the bare trunk (heads dropped).

    The keys must fit the inferred ``resnetN`` exactly (nothing missing, nothing left over): USCL's
    ``features`` then compute the same features as the exported model.
    """
    if layout == "uscl":
        trunk, dropped, unexpected = uscl_to_resnet(sd)
    else:
        trunk, dropped = split_head(sd, _RESNET_HEADS)
        unexpected = []
    name = arch or infer_resnet_arch(trunk, path)
    c = int(in_chans or trunk["conv1.weight"].shape[1])
    adapted = adapt_stem(trunk, c)
    spec = EncoderSpec(
        arch=name, img_size=as_size2(img_size) or hints.get("img_size") or (224, 224), in_chans=c
    )
    model = create_encoder(spec)
    result = model.load_state_dict(trunk, strict=False)
    unexpected = sorted(set(unexpected) | set(result.unexpected_keys))
    if result.missing_keys or unexpected:
        raise CheckpointError(
            path,
            f"the weights do not fit timm {name}: missing {list(result.missing_keys)[:10]}, "
            f"unexpected {unexpected[:10]}",
        )
    # USCL normalises every channel with (0.5, 0.25)
    mean, std = _normalisation(mean, std, hints, c, ([0.5] * c, [0.25] * c) if layout == "uscl" else None)
    method = hints.get("method") or ("uscl" if layout == "uscl" else "imported")
    out = export_encoder(
        model,
        spec,
        out_dir,
        method=str(method),
        mean=list(mean),
        std=list(std),
        extra={"converted_from": str(path), "source_layout": layout},
    )
    report: dict[str, Any] = {
        "source": str(path),
        "layout": layout,
        "out_dir": str(out),
        "architecture": name,
        "img_size": list(spec.img_size),
        "in_chans": c,
        "missing": [],
        "unexpected": [],
        "adapted": adapted,
        "dropped": sorted(dropped),
        "mismatched": [],
    }
    atomic_write_text(out / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report
