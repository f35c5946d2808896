"""Hints from a checkpoint's own config (grid, heads, normalisation): MAE's ``args``, timm's
``pretrained_cfg``, our ``config``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ultrassl.models.vit import resolve_arch


def as_size2(v: Any) -> tuple[int, int] | None:
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return (int(v[0]), int(v[1]))
    return None


def _find_dict_with(obj: Any, key: str, depth: int = 4) -> dict[str, Any] | None:
    if not isinstance(obj, dict) or depth < 0:
        return None
    if key in obj:
        return obj
    for v in obj.values():
        found = _find_dict_with(v, key, depth - 1)
        if found is not None:
            return found
    return None


def checkpoint_hints(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the checkpoint says about itself: image size, patch, heads, mean/std, method (may be empty).

    Sources: an export ``config.json`` (``model_args``), our training ``config`` (the dict holding
    ``img_size``) and MAE ``args`` (``input_size``, ``model``).
    """
    hints: dict[str, Any] = {}
    cfg = obj.get("config") if isinstance(obj.get("config"), dict) else None
    if cfg is not None and "model_args" in cfg and "architecture" in cfg:  # export folder
        ma = dict(cfg["model_args"])
        hints.update(
            img_size=as_size2(ma.get("img_size")), patch_size=ma.get("patch_size"), arch=cfg["architecture"]
        )
        hints["num_heads"] = ma.get("num_heads")
        pcfg = cfg.get("pretrained_cfg", {})
        hints.update(mean=pcfg.get("mean"), std=pcfg.get("std"), method=cfg.get("method"))
        hints["model_args"] = {k: v for k, v in ma.items() if k not in ("img_size", "patch_size", "in_chans")}
    elif cfg is not None:  # our training checkpoint
        enc = _find_dict_with(cfg, "img_size")
        if enc is not None:
            hints.update(img_size=as_size2(enc.get("img_size")), patch_size=enc.get("patch_size"))
            if isinstance(enc.get("model_args"), dict):
                hints["model_args"] = dict(enc["model_args"])
                hints["num_heads"] = enc["model_args"].get("num_heads")
            if isinstance(enc.get("arch"), str):
                hints["arch"] = resolve_arch(enc["arch"])
        for name in ("mean", "std"):
            holder = _find_dict_with(cfg, name)
            if holder is not None and isinstance(holder[name], list | tuple):
                hints[name] = [float(x) for x in holder[name]]
        method = cfg.get("method")
        hints["method"] = method.get("name") if isinstance(method, dict) else method
    args = obj.get("args")
    if isinstance(args, dict):  # MAE / DeblurringMIM
        hints.setdefault("img_size", as_size2(args.get("input_size")))
        if isinstance(args.get("model"), str):
            hints["source_model"] = args["model"]
        hints.setdefault("method", "mae")
    return {k: v for k, v in hints.items() if v is not None}


def grid_from_hints(hints: Mapping[str, Any], sd: Mapping[str, torch.Tensor]) -> tuple[int, int] | None:
    size = hints.get("img_size")
    w = sd.get("patch_embed.proj.weight")
    if size is None or w is None or w.ndim != 4:
        return None
    return (size[0] // int(w.shape[-2]), size[1] // int(w.shape[-1]))
