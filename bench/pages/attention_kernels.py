"""The ATTENTION_KERNELS section of docs/benchmarks.md, from ``bench/attention_kernels.py``'s JSON."""

from __future__ import annotations

from pathlib import Path

from benchlib import read_results


def section(results: Path) -> str | None:
    doc = read_results(results / "attention_kernels.json")
    return table(doc) if doc else None


def table(doc: dict) -> str:
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
