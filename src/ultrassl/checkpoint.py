"""Atomic saves, safe loads, and the export folder that timm loads without ultrassl.

Why this module exists: users hold checkpoints from facebookresearch/mae, DeblurringMIM, timm and our
own training runs, and want the encoder out of them without key surgery. Everything goes through one
path: ``safe_load`` (``weights_only=True`` or safetensors, never plain unpickling) -> ``unwrap_state_dict``
-> ``adapt_encoder_state_dict`` (timm's ``checkpoint_filter_fn`` recipe: drop decoder/head, sum RGB
kernels for grayscale, resample patch and position embeddings) -> a non-strict load whose missing keys
are then *checked* (MAE ``main_finetune`` style).

The export folder (``model.safetensors`` + ``config.json``) is the interchange format. It loads in plain
timm, offline (verified with timm 1.0.31; ``file`` in ``pretrained_cfg`` is read from disk and no hub is
contacted)::

    import json, timm
    cfg = json.load(open(MODEL_DIR / "config.json"))
    model = timm.create_model(
        cfg["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(MODEL_DIR / "model.safetensors")),
        **cfg["model_args"],  # img_size, patch_size, in_chans, num_classes=0 (+ embed_dim, depth, ...)
    )
    # or, equivalently: timm.create_model(f"local-dir:{MODEL_DIR}", pretrained=True)

``num_classes=0`` is needed: with timm's default 1000 classes the model gets a head that the file does
not hold and timm's strict load fails. Images go in as ``[B, C, H, W]`` float32 in [0, 1], normalised
with ``cfg["pretrained_cfg"]["mean"/"std"]``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import pathlib
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models import adapt_input_conv
from timm.models.vision_transformer import VisionTransformer

from ultrassl.atomic import atomic_write, atomic_write_text  # noqa: F401  (re-exported)
from ultrassl.errors import CheckpointError, ConfigError
from ultrassl.models.vit import EncoderSpec, create_encoder, is_cnn_arch, resolve_arch
from ultrassl.resnet_checkpoints import (
    adapt_stem,
    infer_resnet_arch,
    is_resnet_keys,
    is_uscl_keys,
    split_head,
    uscl_to_resnet,
)

__all__ = [
    "KNOWN_LAYOUTS",
    "adapt_encoder_state_dict",
    "atomic_save",
    "atomic_save_safetensors",
    "atomic_write_text",
    "convert_checkpoint",
    "detect_layout",
    "export_encoder",
    "infer_encoder_spec",
    "load_encoder_weights",
    "load_exported",
    "safe_load",
    "unwrap_state_dict",
]

PathLike = str | os.PathLike[str]

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
REPORT_FILE = "convert_report.json"

#: Layouts ``detect_layout`` recognises, with the keys that identify them (shown in error messages).
KNOWN_LAYOUTS = {
    "ultrassl-train": "our training checkpoint {'model': {encoder.vit.*, decoder.*}, 'config': ...}",
    "mae": "facebookresearch/mae: cls_token, pos_embed, patch_embed.proj.weight, blocks.N.*, [decoder_*]",
    "timm-vit": "a timm VisionTransformer state dict (same encoder keys, maybe head.*, fc_norm.*)",
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


# --------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` that never leaves a half-written file at ``path`` (a crash keeps the old one)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, write)


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Save tensors as safetensors atomically (contiguous CPU copies, as safetensors requires)."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    return atomic_write(path, lambda tmp: safetensors.torch.save_file(clean, str(tmp), metadata=meta))


# --------------------------------------------------------------------------------------------------
# Safe loading
# --------------------------------------------------------------------------------------------------


def _plain_data_globals() -> list[Any]:
    """Classes/reconstructors of plain data that MAE-style checkpoints pickle. No general callables.

    ``argparse.Namespace`` (MAE ``args``), numpy scalars/arrays/dtypes (``np.float64`` metrics in args),
    and pure paths. The numpy reconstructors only rebuild values from bytes; anything nested inside them
    still goes through the weights-only unpickler.
    """
    allowed: list[Any] = [argparse.Namespace, pathlib.PurePosixPath, pathlib.PureWindowsPath]
    if os.name == "posix":
        allowed.append(pathlib.PosixPath)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch installs
        return allowed
    core = getattr(np, "_core", None) or np.core
    scalar, reconstruct = core.multiarray.scalar, core.multiarray._reconstruct
    allowed += [np.dtype, np.ndarray, scalar, reconstruct]
    # Files written with numpy < 2 name the reconstructors under ``numpy.core``.
    allowed += [(scalar, "numpy.core.multiarray.scalar"), (reconstruct, "numpy.core.multiarray._reconstruct")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def _global_name(entry: Any) -> str:
    if isinstance(entry, tuple):
        return entry[1]
    return f"{entry.__module__}.{entry.__qualname__}"


def _iter_pickle_globals(data: bytes, max_pickles: int = 6) -> Iterator[str]:
    """Names of the globals a pickle stream would import, read with ``pickletools`` (nothing executes)."""
    pos = 0
    for _ in range(max_pickles):
        if pos >= len(data):
            return
        strings: list[str] = []
        end = pos
        try:
            for op, arg, offset in pickletools.genops(data[pos:]):
                end = pos + offset
                if op.name == "GLOBAL":
                    yield str(arg).replace(" ", ".")
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    yield f"{strings[-2]}.{strings[-1]}"
                elif isinstance(arg, str):
                    strings.append(arg)
                if op.name == "STOP":
                    break
        except Exception:  # garbage after the pickles (legacy storages) or a corrupt stream
            return
        pos = end + 1


def _unsafe_globals(path: Path) -> list[str]:
    """Globals in ``path`` that the weights-only unpickler would refuse, for the error message."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                pkls = [n for n in zf.namelist() if n.endswith(".pkl")]
                data = b"".join(zf.read(n) for n in pkls)
        else:
            with open(path, "rb") as f:
                data = f.read(64 * 1024 * 1024)  # the pickles of a legacy file come before its storages
    except (OSError, zipfile.BadZipFile):
        return []
    allowed = {_global_name(g) for g in _plain_data_globals()} | {"collections.OrderedDict"}
    try:  # torch's own allow-list (private, so optional)
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed |= set(_get_allowed_globals())
    except Exception:  # pragma: no cover
        pass
    names = []
    for name in _iter_pickle_globals(data):
        if name in allowed or name.startswith("torch.") or name in names:
            continue
        names.append(name)
    return names


def _refused(path: Path, names: list[str]) -> CheckpointError:
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return CheckpointError(
        path,
        f"refused to load: the file holds pickled objects that are not plain data ({shown}); ultrassl never "
        "unpickles arbitrary code. If you trust the file, re-save its state_dict with plain types, e.g. in a "
        "trusted Python session: ckpt = torch.load(path, weights_only=False); "
        "torch.save({'model': ckpt['model']}, 'clean.pth') (or save it as .safetensors), and load that.",
    )


def _namespaces_to_dicts(obj: Any) -> Any:
    """``argparse.Namespace`` -> dict, recursively through dicts/lists (tensors are left alone)."""
    if isinstance(obj, argparse.Namespace):
        return {k: _namespaces_to_dicts(v) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {k: _namespaces_to_dicts(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_namespaces_to_dicts(v) for v in obj]
    return obj


def safe_load(path: PathLike) -> dict[str, Any]:
    """Load a checkpoint without ever running pickled code: safetensors, or ``torch.load(weights_only)``.

    Only plain data types are allowed (``_plain_data_globals``); anything else raises ``CheckpointError``
    naming the offending global. ``argparse.Namespace`` values come back as plain dicts.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "no such file")
    if path.is_dir():
        raise CheckpointError(
            path, "is a folder, not a checkpoint file (an export folder loads with load_exported)"
        )
    if path.suffix == ".safetensors":
        try:
            return dict(safetensors.torch.load_file(str(path), device="cpu"))
        except Exception as exc:  # safetensors raises its own error type for truncated/corrupt files
            raise CheckpointError(
                path, f"not a readable safetensors file ({type(exc).__name__}: {exc})"
            ) from exc
    try:
        with torch.serialization.safe_globals(_plain_data_globals()), warnings.catch_warnings():
            # torch warns about pickle protocols > 2 even when the load then succeeds or is refused cleanly
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        names = _unsafe_globals(path)
        if names:
            raise _refused(path, names) from exc
        detail = next((ln.strip() for ln in reversed(str(exc).splitlines()) if ln.strip()), "")
        raise CheckpointError(
            path, f"not a loadable PyTorch checkpoint: the weights-only unpickler rejected it ({detail})"
        ) from exc
    except OSError as exc:
        raise CheckpointError(path, f"cannot read the file ({exc})") from exc
    except Exception as exc:  # truncated zip (RuntimeError), text file (KeyError), empty file (EOFError)
        if "weights only" in str(exc).lower() and (names := _unsafe_globals(path)):
            raise _refused(path, names) from exc
        msg = str(exc).split(". ")[0] or type(exc).__name__
        raise CheckpointError(
            path,
            f"not a PyTorch checkpoint, or a truncated/corrupt one ({type(exc).__name__}: {msg})",
        ) from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a dict of weights")
    return _namespaces_to_dicts(dict(obj))


# --------------------------------------------------------------------------------------------------
# Layouts and key adaptation
# --------------------------------------------------------------------------------------------------


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


def _is_decoder_key(key: str) -> bool:
    return key.startswith(("decoder_", "decoder.")) or key == "mask_token"


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
        if _is_decoder_key(key):
            report["dropped"].append(key)
            continue
        if key not in target:
            if key.startswith(ALLOWED_MISSING_PREFIXES) or key.startswith("pre_logits"):
                report["dropped"].append(key)  # a head the headless model does not have
            else:
                report["unexpected"].append(key)
            continue
        want = target[key].shape
        if key == "patch_embed.proj.weight" and value.shape != want:
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
        raise CheckpointError(
            path, f"patch_embed.proj.weight has shape {list(w.shape)}; expected a conv kernel"
        )
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
    new_grid = tuple(model.patch_embed.grid_size)
    if tuple(old_grid) == new_grid:
        return pos
    return resample_abs_pos_embed(
        pos, new_size=list(new_grid), old_size=list(old_grid), num_prefix_tokens=npre, interpolation="bicubic"
    )


# --------------------------------------------------------------------------------------------------
# Hints from the checkpoint's own config (grid, heads, normalisation)
# --------------------------------------------------------------------------------------------------


def _size2(v: Any) -> tuple[int, int] | None:
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


def _hints(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the checkpoint says about itself: image size, patch, heads, mean/std, method (may be empty).

    Sources: an export ``config.json`` (``model_args``), our training ``config`` (the dict holding
    ``img_size``) and MAE ``args`` (``input_size``, ``model``).
    """
    hints: dict[str, Any] = {}
    cfg = obj.get("config") if isinstance(obj.get("config"), dict) else None
    if cfg is not None and "model_args" in cfg and "architecture" in cfg:  # export folder
        ma = dict(cfg["model_args"])
        hints.update(
            img_size=_size2(ma.get("img_size")), patch_size=ma.get("patch_size"), arch=cfg["architecture"]
        )
        hints["num_heads"] = ma.get("num_heads")
        pcfg = cfg.get("pretrained_cfg", {})
        hints.update(mean=pcfg.get("mean"), std=pcfg.get("std"), method=cfg.get("method"))
        hints["model_args"] = {k: v for k, v in ma.items() if k not in ("img_size", "patch_size", "in_chans")}
    elif cfg is not None:  # our training checkpoint
        enc = _find_dict_with(cfg, "img_size")
        if enc is not None:
            hints.update(img_size=_size2(enc.get("img_size")), patch_size=enc.get("patch_size"))
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
        hints.setdefault("img_size", _size2(args.get("input_size")))
        if isinstance(args.get("model"), str):
            hints["source_model"] = args["model"]
        hints.setdefault("method", "mae")
    return {k: v for k, v in hints.items() if v is not None}


def _grid_from_hints(hints: Mapping[str, Any], sd: Mapping[str, torch.Tensor]) -> tuple[int, int] | None:
    size = hints.get("img_size")
    w = sd.get("patch_embed.proj.weight")
    if size is None or w is None or w.ndim != 4:
        return None
    return (size[0] // int(w.shape[-2]), size[1] // int(w.shape[-1]))


# --------------------------------------------------------------------------------------------------
# Loading into a model
# --------------------------------------------------------------------------------------------------


def _read_source(source: PathLike | Mapping[str, Any]) -> tuple[dict[str, Any], Path | str]:
    """A file, an export folder or an in-memory checkpoint -> (loaded object, name for messages)."""
    if isinstance(source, Mapping):
        return dict(source), "<state dict>"
    path = Path(source)
    if path.is_dir():
        config = _read_config(path)
        return {"model": safe_load(path / MODEL_FILE), "config": config}, path
    return safe_load(path), path


def _read_config(model_dir: Path) -> dict[str, Any]:
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


def _load_checked(
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
    obj, path = _read_source(source)
    detect_layout(obj, path)
    sd = unwrap_state_dict(obj)
    grid = old_grid or _grid_from_hints(_hints(obj), sd)
    return _load_checked(model, sd, old_grid=grid, strict_keys=strict_keys, path=path)


# --------------------------------------------------------------------------------------------------
# Export folder
# --------------------------------------------------------------------------------------------------


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


def _spec_from_config(config: Mapping[str, Any]) -> EncoderSpec:
    ma = dict(config["model_args"])
    input_size = list(config.get("pretrained_cfg", {}).get("input_size", []))[1:]
    img = _size2(ma.pop("img_size", None)) or _size2(input_size) or (224, 224)
    patch = int(ma.pop("patch_size", 16))
    in_chans = int(ma.pop("in_chans", 3))
    ma.pop("num_classes", None)
    return EncoderSpec(
        arch=config["architecture"], img_size=img, patch_size=patch, in_chans=in_chans, model_args=ma
    )


def load_exported(model_dir: PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the encoder of an export folder with ``create_encoder`` and load its weights exactly."""
    model_dir = Path(model_dir)
    config = _read_config(model_dir)
    try:
        model = create_encoder(_spec_from_config(config))
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


# --------------------------------------------------------------------------------------------------
# Converting foreign checkpoints
# --------------------------------------------------------------------------------------------------


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

    grid = _grid_from_hints(hints, sd)
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

    size = _size2(img_size) if img_size is not None else None
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
    obj, path = _read_source(src)
    layout = "ultrassl-export" if Path(src).is_dir() else detect_layout(obj, path)
    sd = unwrap_state_dict(obj)
    hints = _hints(obj)
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
    keys = _load_checked(model, sd, old_grid=old_grid, strict_keys=True, path=path)

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
        arch=name, img_size=_size2(img_size) or hints.get("img_size") or (224, 224), in_chans=c
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
