"""Why the loop runs the explicit attention path under bf16 on a CPU: the kernels side by side.

Forward + backward of one attention call at the shapes a ViT step meets (MAE ViT-T's visible tokens, its
decoder, a 224 px ViT's 197 tokens, a long 785-token sequence), torch's fused
``F.scaled_dot_product_attention`` against timm's explicit ``softmax(q k^T) v``, in float32 and bfloat16;
and the matmul rate in both dtypes (what bf16 can gain at all). The kernels take turns, median of
``--repeats``. Writes ``bench/results/attention_kernels.json`` and the ATTENTION_KERNELS section of
docs/benchmarks.md; ``ultrassl.attention`` quotes it.

    OMP_NUM_THREADS=2 python bench/attention_kernels.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from benchlib import ROOT, machine_info, write_doc_section

RESULTS = ROOT / "bench" / "results" / "attention_kernels.json"
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


def section(doc: dict) -> str:
    info = doc["machine"]
    lines = [
        "## Attention kernels under bf16 on a CPU\n",
        f"`{info['command']}` on {info['cpu']} ({info['torch_threads']} threads), torch {info['torch']}, "
        f"git {info['git']}. Forward + backward of one attention call, torch's fused "
        "`scaled_dot_product_attention` against the explicit softmax(QK^T)V path (timm's `fused_attn=False`), "
        "the kernels taking turns, median ms. This is why the training loop runs the explicit path under "
        "bf16/fp16 autocast on a CPU (`ultrassl.attention`) and keeps the fused kernel in float32 and on "
        "CUDA.\n",
        "| shape (batch x heads x tokens x head dim) | fp32 fused | fp32 explicit | bf16 fused | bf16 explicit | bf16: fused / explicit |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in doc["attention"]:
        f, b = r["float32"], r["bfloat16"]
        lines.append(
            f"| {r['shape']} ({r['batch']}x{r['heads']}x{r['tokens']}x{r['head_dim']}) | {f['fused']:.2f} | "
            f"{f['explicit']:.2f} | {b['fused']:.2f} | {b['explicit']:.2f} | {b['fused_over_explicit']:.1f}x |"
        )
    lines += [
        "\nMatmul rate, GFLOP/s (what bf16 can gain at all):\n",
        "| m x k x n | float32 | bfloat16 | bf16 / fp32 |",
        "| --- | --- | --- | --- |",
    ]
    for r in doc["matmul"]:
        g = r["gflop_s"]
        lines.append(
            f"| {r['m']}x{r['k']}x{r['n']} | {g['float32']:.0f} | {g['bfloat16']:.0f} | {r['bf16_over_fp32']:.1f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--no-doc", action="store_true")
    a = p.parse_args()
    info = machine_info()
    info["command"] = "python bench/attention_kernels.py " + shlex.join(sys.argv[1:])
    doc = {"machine": info, "attention": attention_rows(a.repeats), "matmul": matmul_rows(a.repeats)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    text = section(doc)
    print(text)
    if not a.no_doc:
        write_doc_section("ATTENTION_KERNELS", text)


if __name__ == "__main__":
    main()
