"""Atomic saves and safe loads: ``weights_only=True`` or safetensors, never plain unpickling; a file
carrying a pickled payload is refused before anything of it runs."""

from __future__ import annotations

import argparse
import os
import pathlib
import pickle
import pickletools
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from ultrassl.atomic import atomic_write
from ultrassl.errors import CheckpointError

PathLike = str | os.PathLike[str]

#: the two files of an export folder
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


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
