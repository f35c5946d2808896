"""Why the loop runs the explicit attention path under bf16 on a CPU: the kernels side by side.

Forward + backward of one attention call at the shapes a ViT step meets (MAE ViT-T's visible tokens, its
decoder, a 224 px ViT's 197 tokens, a long 785-token sequence), torch's fused
``F.scaled_dot_product_attention`` against timm's explicit ``softmax(q k^T) v``, in float32 and bfloat16;
and the matmul rate in both dtypes (what bf16 can gain at all). The kernels take turns, median of
``--repeats``. Writes ``bench/results/attention_kernels.json`` (``python bench/render_docs.py``: the
ATTENTION_KERNELS section of docs/benchmarks.md); ``ultrassl.attention`` quotes it.

    OMP_NUM_THREADS=2 python bench/attention_kernels.py [--repeats 30] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from benchlib import RESULTS, command_line, machine_info, write_results
from pages.attention_kernels import table

#: (what, batch, heads, tokens, head dim)
SHAPES = (
    ("MAE ViT-T encoder, visible tokens", 32, 3, 13, 64),
    ("MAE decoder (128 wide, 4 heads)", 32, 4, 50, 32),
    ("ViT-T/16 at 224 px", 8, 3, 197, 64),
    ("ViT-B/16 at 224 px", 8, 12, 197, 64),
    ("a long sequence", 4, 12, 785, 64),
)
#: (m, k, n): the ViT-T step's matmuls at batch 32 (qkv, proj, MLP) and a large one
MATMULS = ((416, 192, 576), (416, 192, 768), (416, 768, 192), (1600, 128, 512), (4096, 768, 768))


def explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """timm's ``fused_attn=False`` path."""
    return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v


def _forward_backward(
    attention: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor
) -> None:
    attention(q, k, v).backward(grad)


def _median_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Each function ``repeats`` times, taking turns (after 3 untimed calls each); median ms."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def attention_rows(repeats: int) -> list[dict]:
    rows = []
    for what, b, h, n, d in SHAPES:
        row = {"shape": what, "batch": b, "heads": h, "tokens": n, "head_dim": d}
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v = (torch.randn(b, h, n, d, dtype=dtype, requires_grad=True) for _ in range(3))
            grad = torch.randn(b, h, n, d, dtype=dtype)
            fns = {
                "fused": partial(_forward_backward, F.scaled_dot_product_attention, q, k, v, grad),
                "explicit": partial(_forward_backward, explicit, q, k, v, grad),
            }
            ms = _median_ms(fns, repeats)
            name = str(dtype).removeprefix("torch.")
            row[name] = {**ms, "fused_over_explicit": ms["fused"] / ms["explicit"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def matmul_rows(repeats: int) -> list[dict]:
    rows = []
    for m, k, n in MATMULS:
        a, b = torch.randn(m, k), torch.randn(k, n)
        a16, b16 = a.bfloat16(), b.bfloat16()
        ms = _median_ms(
            {"float32": partial(torch.mm, a, b), "bfloat16": partial(torch.mm, a16, b16)}, repeats
        )
        gflops = {name: 2 * m * k * n / (t / 1000) / 1e9 for name, t in ms.items()}
        rows.append(
            {
                "m": m,
                "k": k,
                "n": n,
                "gflop_s": gflops,
                "bf16_over_fp32": gflops["bfloat16"] / gflops["float32"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--out", type=Path, default=RESULTS / "attention_kernels.json")
    a = p.parse_args()
    info = machine_info(command=command_line(__file__))
    doc = {"machine": info, "attention": attention_rows(a.repeats), "matmul": matmul_rows(a.repeats)}
    print(table(doc))
    print(f"wrote {write_results(a.out, doc)}")


if __name__ == "__main__":
    main()
