"""Which attention kernel a training step runs: timm's fused ``F.scaled_dot_product_attention`` or its
explicit ``softmax(q k^T) v`` (two matmuls and a softmax).

The fused kernel is the faster in float32 and on CUDA, but torch's CPU kernel under bf16 (and fp16)
autocast is not: at the short sequences of a masked ViT (MAE's visible tokens, its decoder, up to a
ViT/16 at 224 px) it is several times slower than the explicit path, and only catches up at sequences
far longer than these models use. The explicit path's matmuls run at bf16's full rate instead, which is
what a ViT step gains from bf16 on a CPU at all; with the fused kernel, bf16 autocast barely moved a MAE
step against float32, with the explicit path it is clearly faster. The figures, with the machine and
command that measured them: docs/benchmarks.md#attention-kernels-under-bf16-on-a-cpu
(``bench/attention_kernels.py``) and the defaults table in
docs/benchmarks.md#speed-training-step-scaling-data-pipeline-processes (``bench/speed.py --parts
defaults``: one process, the variants taking turns step by step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

#: autocast dtypes under which torch's CPU fused attention is the slow path
_SLOW_ON_CPU = (torch.bfloat16, torch.float16)


def fused_attention_for(requested: bool, device: torch.device, autocast_dtype: torch.dtype | None) -> bool:
    """``train.fused_attn`` resolved for a device and precision: the fused kernel where it is the fast
    path, the explicit one under low-precision autocast on a CPU (and wherever it is not ``requested``)."""
    return requested and not (device.type == "cpu" and autocast_dtype in _SLOW_ON_CPU)


def set_fused_attention(model: nn.Module, enabled: bool) -> int:
    """Switch every timm attention block of ``model`` to (or off) F.scaled_dot_product_attention.

    timm decides at construction (``use_fused_attn()``, on by default); this flips the built blocks, so
    the loop (and a benchmark) can choose per precision on one model. Returns the number switched.
    """
    n = 0
    for module in model.modules():
        if isinstance(getattr(module, "fused_attn", None), bool):
            module.fused_attn = bool(enabled)
            n += 1
    return n


def fused_attention_of(model: nn.Module) -> bool | None:
    """Whether ``model``'s timm attention blocks run the fused kernel (the first block's flag; None
    for a model without any)."""
    for module in model.modules():
        flag = getattr(module, "fused_attn", None)
        if isinstance(flag, bool):
            return flag
    return None


@contextlib.contextmanager
def attention_kernel_for(
    model: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None
) -> Iterator[None]:
    """Inside: the kernel that is fast in ``autocast_dtype`` (the model's own setting is the request,
    so a model built without the fused kernel keeps the explicit one); after: the model's own setting."""
    own = fused_attention_of(model)
    if own is None:
        yield
        return
    set_fused_attention(model, fused_attention_for(own, device, autocast_dtype))
    try:
        yield
    finally:
        set_fused_attention(model, own)
