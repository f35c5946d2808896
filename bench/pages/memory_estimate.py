"""The MEMORY_ESTIMATE section of docs/benchmarks.md: memory per GPU of the MAE / Deblurring MAE presets
(ViT-B/16, ViT-L/16, ViT-H/14) and the DDP-or-FSDP choice drawn from it, from
``bench/memory_estimate.py``'s JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib import read_results

from .provenance import made_by


def section(results: Path) -> str | None:
    doc = read_results(results / "memory_estimate.json")
    return table(doc) if doc else None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f}"


def _choice(doc: dict[str, Any]) -> str:
    """DDP when every preset's conservative total fits in the usable share of the GPU; FSDP otherwise."""
    usable = doc["usable_share"] * doc["gpu_gb"] * 1e9
    over = [r["preset"] for r in doc["rows"] if r["totals"]["fp32"]["ddp_total"] > usable]
    if over:
        return (
            f"**Choice: FSDP** for {', '.join(over)}: with DDP their state and activations exceed "
            f"{doc['usable_share']:.0%} of {doc['gpu_gb']} GB."
        )
    big = max(doc["rows"], key=lambda r: r["totals"]["fp32"]["ddp_total"])
    return (
        f"**Choice: DDP.** The largest, {big['preset']}, needs {_gb(big['totals']['fp32']['ddp_total'])} GB "
        f"per GPU at its batch of {big['batch_per_gpu']} in the conservative count (fp32, explicit attention, "
        f"DDP's gradient buckets included): every preset fits in {doc['usable_share']:.0%} of an "
        f"{doc['gpu_gb']} GB GPU with the whole model, its gradients and AdamW's state on every GPU, "
        "without activation checkpointing. FSDP would shard the state (ViT-H's is "
        f"{_gb(big['totals']['fp32']['state'])} GB) across GPUs, which is not needed to fit, and it adds "
        "an all-gather of the weights in every forward and backward; ultrassl keeps DDP and adds no FSDP "
        "path. The last column shows the room left: the per-GPU batch could grow to that figure before "
        "FSDP or activation checkpointing would be needed."
    )


def table(doc: dict[str, Any]) -> str:
    rows, chk = doc["rows"], doc["cpu_check"]
    gpu = doc["gpu_gb"]
    lines = [
        "## Memory per GPU: ViT-B/16, ViT-L/16, ViT-H/14 presets, DDP or FSDP",
        "",
        f"{made_by(doc)} Nothing ran on a GPU: each preset's model was built on torch's `meta` device and "
        "one forward and backward ran there at the preset's per-GPU batch (`train.batch_size`), counting "
        "every tensor the forward keeps for the backward (`saved_tensors_hooks`, one count per storage, "
        "the parameters excluded). State: fp32 parameters, fp32 gradients, AdamW's two fp32 moments and "
        "DDP's gradient buckets (a second copy of the gradients). The meta count runs the explicit "
        "attention, which keeps a `[B, heads, S, S]` matrix per block; a GPU's fused attention (flash / "
        "memory-efficient) does not keep it, hence the second activation column. bf16 autocast keeps "
        "the same fp32 state plus bf16 copies of the weights; its activation figure (model and input in "
        "bf16) is a lower bound. GB = 10^9 bytes.",
        "",
        "| preset | encoder | tokens (visible) | batch / GPU | parameters (M) | state fp32 GB | "
        "activations fp32 GB | without attention matrices GB | activations bf16 GB | "
        f"total DDP fp32 GB | total DDP bf16 GB | largest batch / GPU in {doc['usable_share']:.0%} of "
        f"an {gpu} GB GPU (fp32) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        t32, t16 = r["totals"]["fp32"], r["totals"]["bf16"]
        visible = round(r["tokens"] * (1 - r["mask_ratio"]))
        lines.append(
            f"| `{r['preset']}` | {r['arch']} (patch {r['patch_size']}, width {r['embed_dim']}) | "
            f"{r['tokens']} ({visible}) | {r['batch_per_gpu']} | {r['params']['total'] / 1e6:.1f} | "
            f"{_gb(t32['state'])} | {_gb(t32['activations_explicit_attention'])} | "
            f"{_gb(t32['activations_fused_attention'])} | {_gb(t16['activations_explicit_attention'])} | "
            f"{_gb(t32['ddp_total'])} | {_gb(t16['ddp_total'])} | {r['max_batch_ddp_fp32']} |"
        )
    diff = chk["held_after_forward_cpu"] - chk["saved_bytes_cpu"]
    lines += [
        "",
        "MAE and Deblurring MAE share the model, and their rows agree: only the loss and the input's blur "
        "differ.",
        "",
        f"Check of the count against a real model (`{chk['preset']}` at a small width: "
        f"{', '.join(f'`{o}`' for o in chk['overrides'])}; batch {chk['batch']}, on the CPU): parameters "
        f"on the meta device {chk['params_meta']:,}, counted on the real model {chk['params_cpu_direct']:,}; "
        f"bytes kept for the backward, meta {chk['saved_bytes_meta']:,}, real CPU model "
        f"{chk['saved_bytes_cpu']:,}; bytes the CPU allocator held after the real forward "
        f"(`torch.profiler`, `profile_memory`) {chk['held_after_forward_cpu']:,}, {diff:+,} against the "
        "count.",
        "",
        _choice(doc),
    ]
    return "\n".join(lines)
