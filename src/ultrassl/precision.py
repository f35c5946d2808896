"""Training precision chosen by measurement, not by CPU flags.

Whether bf16 autocast pays depends on the chip *and* the model: on this project's Intel Xeons with
AMX-BF16 it was slower than fp32 for the ViT steps yet faster for ResNet-18, and on an AMD EPYC faster
for both (docs/benchmarks.md#--precision-auto-chosen-by-measurement and the step table of
docs/benchmarks.md#speed-training-step-scaling-data-pipeline-processes). So ``--precision auto`` times a few optimiser steps of the run's own model on its
first batch in each candidate precision and trains in the faster one.

The probe works on a copy of the model with a throw-away optimiser of the run's class, so the run's
weights, optimiser and random streams are those of a run started with the chosen precision given by
hand. Its figures and its cost are printed and recorded in ``run_info.json``; a resumed run keeps the
recorded choice (bit exactness). A JSON cache keyed by machine, model and input shapes skips the probe
when the same run shape comes again: ``$ULTRASSL_PRECISION_CACHE``, else
``$XDG_CACHE_HOME/ultrassl/precision.json`` (``~/.cache``); ``ULTRASSL_PRECISION_CACHE=off`` disables it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ultrassl.attention import fused_attention_for, set_fused_attention
from ultrassl.errors import ConfigError
from ultrassl.hardware import cpu_name
from ultrassl.rng import capture_rng, restore_rng

#: the names ``train.precision`` takes, and the autocast dtype of each (None: no autocast)
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: timed optimiser steps per candidate, after two untimed warm-up steps each; the candidates take turns
#: step by step (the order flips every pair) and each is judged by the median of its step times over
#: fp32's neighbouring ones. Rounds of three steps per candidate, fastest round kept, still chose the
#: slower precision on some method presets on this project's shared 2-core VM (the noise of separate
#: rounds; docs/benchmarks.md#--precision-auto-chosen-by-measurement has what this probe chooses).
PROBE_STEPS = 8
WARMUP_STEPS = 2
#: part of the cache key: a changed probe measures again
PROBE_VERSION = 4
#: a candidate must be this much faster than fp32 to be chosen (closer is noise; fp32 is the exact one)
MARGIN = 0.03


@dataclass
class PrecisionChoice:
    """What ``auto`` chose and why: seconds per optimiser step of each candidate (fp32's median; the others by their paired ratio to it)."""

    chosen: str
    seconds_per_step: dict[str, float] = field(default_factory=dict)
    probe_seconds: float = 0.0
    source: str = "probe"  # probe | cache | checkpoint | only-candidate

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self, batch_size: int) -> str:
        if self.source == "checkpoint":
            return f"precision auto: {self.chosen} (the choice recorded in the run's checkpoint)"
        if not self.seconds_per_step:
            return f"precision auto: {self.chosen} (the only candidate on this device)"
        rates = ", ".join(f"{k} {batch_size / v:.0f} samples/s" for k, v in self.seconds_per_step.items())
        how = f"probe {self.probe_seconds:.1f} s of start-up" if self.source == "probe" else "cached figures"
        return f"precision auto: {rates} -> {self.chosen} ({how})"


#: (model, batch) -> the scalar loss of one step; by default a pre-training method's ``forward(batch)["loss"]``
LossOf = Callable[[nn.Module, Any], torch.Tensor]


def _method_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    return model(batch)["loss"]


def fixed_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision given by name (None: fp32); ``auto`` is settled elsewhere."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("fp16 autocast needs CUDA; use --precision bf16 or fp32 on the CPU")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    raise ConfigError(f"precision must be fp32|bf16|fp16|auto, got {precision!r}")


def flag_rule_dtype(device: torch.device) -> torch.dtype | None:
    """The ``auto`` rule of runs saved before the probe existed: bf16 where the device computes it
    natively. Only a resumed old checkpoint uses it, so that it replays as it ran."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def name_of(dtype: torch.dtype | None) -> str:
    """``DTYPES``'s name for an autocast dtype."""
    return next(k for k, v in DTYPES.items() if v == dtype)


def candidates(device: torch.device) -> tuple[str, ...]:
    """fp32 and bf16; on a CUDA device without bf16, fp16 (with the loss scaler) instead."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return ("fp32", "fp16")
    if device.type in ("cpu", "cuda"):
        return ("fp32", "bf16")
    return ("fp32",)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, name: str) -> contextlib.AbstractContextManager:
    dtype = DTYPES[name]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def time_precisions(
    model: nn.Module,
    batch: Any,
    device: torch.device,
    names: tuple[str, ...],
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    steps: int = PROBE_STEPS,
    fused_attn: bool = True,
    loss_of: LossOf = _method_loss,
) -> dict[str, float]:
    """Seconds per optimiser step (forward, backward, step) of a copy of ``model`` in each precision,
    ``steps`` of each taken in turns (see ``PROBE_STEPS``), each with the attention kernel the loop
    would run it with (``attention.fused_attention_for`` of ``fused_attn``).

    ``model`` is not touched; the random streams are restored afterwards. ``loss_of(model, batch)``
    gives a step's loss (a fine-tuning task's loss function; by default the method's own).
    """
    state = capture_rng()
    try:
        probe = copy.deepcopy(model).to(device).train()
        optimizer = make_optimizer(probe)
        scalers = {n: torch.amp.GradScaler("cuda", enabled=n == "fp16") for n in names}

        def step(name: str) -> None:
            set_fused_attention(probe, fused_attention_for(fused_attn, device, DTYPES[name]))
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, name):
                loss = loss_of(probe, batch).float()
            scalers[name].scale(loss).backward()
            scalers[name].step(optimizer)
            scalers[name].update()

        for _ in range(WARMUP_STEPS):  # allocator, kernels' first-call costs, optimiser state
            for name in names:
                step(name)
        times: dict[str, list[float]] = {n: [] for n in names}
        for i in range(steps):
            for name in names if i % 2 == 0 else names[::-1]:
                _sync(device)
                t0 = time.perf_counter()
                step(name)
                _sync(device)
                times[name].append(time.perf_counter() - t0)
        # the first candidate (fp32) by its median step; each other by its median ratio to fp32's
        # step beside it, so a slow spell of the machine cancels out of the comparison
        ref = statistics.median(times[names[0]])
        out = {names[0]: ref}
        for name in names[1:]:
            out[name] = ref * statistics.median(t / r for t, r in zip(times[name], times[names[0]]))
        return out
    finally:
        restore_rng(state)


def pick(seconds_per_step: dict[str, float], margin: float = MARGIN) -> str:
    """The fastest candidate; fp32 unless another beats it by more than ``margin``."""
    best = min(seconds_per_step, key=seconds_per_step.__getitem__)
    if "fp32" in seconds_per_step and seconds_per_step[best] > (1 - margin) * seconds_per_step["fp32"]:
        return "fp32"
    return best


# ---------------------------------------------------------------------------------------------- cache


def cache_path() -> Path | None:
    where = os.environ.get("ULTRASSL_PRECISION_CACHE")
    if where == "off":
        return None
    if where:
        return Path(where)
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "ultrassl" / "precision.json"


def _shapes(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return [list(batch.shape), str(batch.dtype)]
    if isinstance(batch, dict):
        return {k: _shapes(v) for k, v in sorted(batch.items())}
    if isinstance(batch, (list, tuple)):
        return [_shapes(v) for v in batch]
    return type(batch).__name__


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} x{torch.get_num_threads()} threads"


def cache_key(model: nn.Module, batch: Any, device: torch.device, names: tuple[str, ...], extra: str) -> str:
    """Machine, torch version, model (class, parameter count and dtypes), input shapes and candidates."""
    n_params = sum(p.numel() for p in model.parameters())
    what = [
        PROBE_VERSION,  # figures of an earlier probe are measured again
        _machine(device),
        torch.__version__,
        type(model).__name__,
        n_params,
        _shapes(batch),
        list(names),
        extra,
    ]
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Best effort: a cache that cannot be written costs a probe next time, nothing else."""
    from ultrassl.atomic import atomic_write_text

    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data[key] = entry
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))


def choose_precision(
    model: nn.Module,
    batch: Any,
    device: torch.device,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    extra_key: str = "",
    fused_attn: bool = True,
    loss_of: LossOf = _method_loss,
) -> PrecisionChoice:
    """Measure (or look up) each candidate precision for this model and batch and pick the fastest."""
    names = candidates(device)
    if len(names) == 1:
        return PrecisionChoice(names[0], source="only-candidate")
    path = cache_path()
    key = cache_key(model, batch, device, names, extra_key)
    if path is not None:
        hit = _read_cache(path).get(key)
        if isinstance(hit, dict) and set(hit.get("seconds_per_step", {})) == set(names):
            figures = {k: float(v) for k, v in hit["seconds_per_step"].items()}
            return PrecisionChoice(pick(figures), figures, 0.0, "cache")
    t0 = time.perf_counter()
    figures = time_precisions(
        model, batch, device, names, make_optimizer, fused_attn=fused_attn, loss_of=loss_of
    )
    choice = PrecisionChoice(pick(figures), figures, time.perf_counter() - t0, "probe")
    if path is not None:
        _write_cache(path, key, {"seconds_per_step": figures, "machine": _machine(device)})
    return choice
