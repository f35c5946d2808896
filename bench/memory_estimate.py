"""Memory per GPU of the MAE / Deblurring MAE presets (ViT-B/16, ViT-L/16, ViT-H/14), computed without
a GPU: the model is built on torch's ``meta`` device (shapes, no storage), so a ViT-H costs nothing.

Per preset it writes to ``bench/results/memory_estimate.json``:

- parameters: counted on the meta-device model (all of them, and the trainable ones: MAE's fixed
  sin-cos position embeddings are frozen);
- training state: fp32 parameters (4 B each), fp32 gradients (4 B per trainable), AdamW's two fp32
  moments (8 B per trainable) and DDP's gradient buckets (4 B per trainable: the loop wraps the model in
  ``DistributedDataParallel`` without ``gradient_as_bucket_view``, so the buckets are a second copy of the
  gradients). bf16 autocast keeps all of these in fp32 and adds the bf16 copies of the weights that the
  forward casts and keeps for the backward (2 B per trainable).
- activations: what the forward keeps for the backward at the preset's per-GPU batch (``train.batch_size``),
  measured by running one forward and backward of the real module on the meta device with
  ``torch.autograd.graph.saved_tensors_hooks`` counting every tensor saved for the backward (one count
  per storage; the parameters' own storage excluded). The attention runs as the explicit
  ``softmax(q k^T) v`` there, which keeps a ``[B, heads, S, S]`` matrix per block; the fused kernels a
  GPU runs (flash / memory-efficient attention) keep only their output and a per-row log-sum-exp, so
  the table gives the figure without those matrices too. bf16: the same run with the model and input in
  bf16 (a lower bound: autocast keeps a few tensors, layer-norm inputs among them, in fp32).
- the check of that count against a real run: the same count on a real CPU model of a small width
  (it must equal the meta count exactly), and the bytes the CPU allocator holds after the forward,
  measured with ``torch.profiler`` (``profile_memory``), which must match it up to the outputs.

    python bench/memory_estimate.py                  # every preset; writes the JSON
    python bench/memory_estimate.py --batch 64       # another per-GPU batch (default: each preset's)

``bench/render_docs.py`` renders the section of docs/benchmarks.md from the JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import RESULTS, command_line, machine_info, write_results  # noqa: E402

#: the presets measured: MAE and Deblurring MAE share the model (only the loss and the input's blur
#: differ), so both are listed to show that they also share the memory
PRESETS = (
    "mae-vit-b16",
    "deblur-mae-vit-b16",
    "mae-vit-l16",
    "deblur-mae-vit-l16",
    "mae-vit-h14",
    "deblur-mae-vit-h14",
)
#: the GPU the choice is argued for, in GB (10^9 bytes, as the vendors count)
GPU_GB = 80
#: the share of the GPU the estimate may fill: the rest is for the CUDA context, the allocator's
#: cache and fragmentation, and the backward's transient buffers (gradients of activations)
USABLE_SHARE = 0.75
#: the small configuration of the CPU check (the ViT-H/14 preset's structure at a small width)
CHECK_PRESET = "mae-vit-h14"
CHECK_OVERRIDES = [
    "encoder.model_args={embed_dim: 192, depth: 4, num_heads: 3}",
    "mae.decoder_dim=128",
    "mae.decoder_depth=2",
    "mae.decoder_heads=4",
]
CHECK_BATCH = 8

BYTES = {"fp32": 4, "bf16": 2}


def preset_config(name: str, overrides: list[str] | None = None) -> Any:
    from ultrassl.methods import build_pretrain_config

    return build_pretrain_config(preset=name, overrides=overrides or [])


def build_model(cfg: Any, device: str = "meta") -> Any:
    """The preset's model on ``device`` (``meta``: shapes only, nothing allocated)."""
    import torch

    from ultrassl.methods import get_method

    with torch.device(device):
        model = get_method(cfg.method).build_model(cfg)
    # a parameter made from a CPU tensor (a fixed position embedding) stays on the CPU under the
    # device context: move it too
    return model.to(device)


def count_params(model: Any) -> dict[str, int]:
    params = list(model.parameters())
    return {
        "total": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
    }


def state_bytes(n_total: int, n_trainable: int, precision: str = "fp32") -> dict[str, int]:
    """Bytes of the training state that does not depend on the batch (see the module docstring)."""
    out = {
        "params": 4 * n_total,
        "grads": 4 * n_trainable,
        "adamw": 8 * n_trainable,
        "ddp_buckets": 4 * n_trainable,
    }
    if precision == "bf16":
        out["autocast_weight_copies"] = 2 * n_trainable
    return out


def saved_activation_bytes(model: Any, cfg: Any, batch: int, dtype: str = "fp32") -> dict[str, int]:
    """Bytes the forward keeps for the backward at ``batch`` (one forward + backward of ``model``; on the
    meta device or a real one), and the part of them that is ``[B, heads, S, S]`` attention matrices."""
    import torch

    from ultrassl.attention import set_fused_attention
    from ultrassl.models.masking import num_kept

    device = next(model.parameters()).device
    n = model.encoder.num_patches
    seqs = {1 + num_kept(n, cfg.mae.mask_ratio), 1 + n}  # the encoder's and the decoder's (cls first)
    tdtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    model = model.to(tdtype)
    set_fused_attention(model, False)  # the explicit path: its attention matrices are counted apart
    own = {id(p.untyped_storage()) for p in model.parameters()}
    kept: dict[int, Any] = {}  # storage id -> (storage, nbytes, is an attention matrix)

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if id(s) not in own and id(s) not in kept:
            square = (
                t.dim() == 4 and t.shape[0] == batch and t.shape[-1] == t.shape[-2] and t.shape[-1] in seqs
            )
            kept[id(s)] = (s, s.nbytes(), square)
        return t

    h, w = cfg.encoder.img_size
    x = torch.randn(batch, cfg.encoder.in_chans, h, w, device=device, dtype=tdtype)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model({"target": x, "input": x})
    out["loss"].float().backward()
    return {
        "total": sum(v[1] for v in kept.values()),
        "attention_matrices": sum(v[1] for v in kept.values() if v[2]),
    }


def held_after_forward(model: Any, cfg: Any, batch: int) -> dict[str, int]:
    """Measured on a real CPU model: bytes the allocator holds once the forward is done (its graph kept
    for the backward), from ``torch.profiler``'s memory events, and the bytes of what the forward
    returned (held too, but not kept for the backward)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from ultrassl.attention import set_fused_attention

    set_fused_attention(model, False)
    h, w = cfg.encoder.img_size
    x = torch.randn(batch, cfg.encoder.in_chans, h, w)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = model({"target": x, "input": x})
    held = sum(e.self_cpu_memory_usage for e in prof.key_averages())
    returned = sum(v.untyped_storage().nbytes() for v in out.values())
    return {"held": int(held), "returned": int(returned)}


def estimate(name: str, batch: int | None = None) -> dict[str, Any]:
    """One row of the table: parameters, state, activations and totals for preset ``name``."""
    cfg = preset_config(name)
    b = batch or cfg.train.batch_size
    t0 = time.perf_counter()
    n = count_params(build_model(cfg))
    act = {dt: saved_activation_bytes(build_model(cfg), cfg, b, dt) for dt in ("fp32", "bf16")}
    states = {dt: state_bytes(n["total"], n["trainable"], dt) for dt in ("fp32", "bf16")}
    totals = {}
    for dt in ("fp32", "bf16"):
        s = sum(states[dt].values())
        a = act[dt]
        totals[dt] = {
            "state": s,
            "activations_explicit_attention": a["total"],
            "activations_fused_attention": a["total"] - a["attention_matrices"],
            "ddp_total": s + a["total"],
            "ddp_total_fused_attention": s + a["total"] - a["attention_matrices"],
        }
    usable = USABLE_SHARE * GPU_GB * 1e9
    per_sample = act["fp32"]["total"] / b
    return {
        "preset": name,
        "method": cfg.method,
        "arch": cfg.encoder.arch,
        "patch_size": cfg.encoder.patch_size,
        "img_size": list(cfg.encoder.img_size),
        "embed_dim": int(build_model(cfg).encoder.embed_dim),
        "tokens": (cfg.encoder.img_size[0] // cfg.encoder.patch_size)
        * (cfg.encoder.img_size[1] // cfg.encoder.patch_size),
        "mask_ratio": cfg.mae.mask_ratio,
        "decoder": [cfg.mae.decoder_dim, cfg.mae.decoder_depth, cfg.mae.decoder_heads],
        "batch_per_gpu": b,
        "accum_steps": cfg.optim.accum_steps,
        "params": n,
        "state_bytes": states,
        "activation_bytes": act,
        "totals": totals,
        # the largest per-GPU batch whose fp32 state and explicit-attention activations (the
        # conservative figures) fit in USABLE_SHARE of the GPU with DDP
        "max_batch_ddp_fp32": int((usable - sum(states["fp32"].values())) // per_sample),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def cpu_check() -> dict[str, Any]:
    """The meta-device count against a real CPU model of the same small configuration."""
    import torch

    cfg = preset_config(CHECK_PRESET, CHECK_OVERRIDES)
    torch.manual_seed(0)
    meta = saved_activation_bytes(build_model(cfg), cfg, CHECK_BATCH)
    cpu_model = build_model(cfg, "cpu")
    direct = sum(p.numel() for p in cpu_model.parameters())
    cpu = saved_activation_bytes(cpu_model, cfg, CHECK_BATCH)
    measured = held_after_forward(build_model(cfg, "cpu"), cfg, CHECK_BATCH)
    return {
        "preset": CHECK_PRESET,
        "overrides": CHECK_OVERRIDES,
        "batch": CHECK_BATCH,
        "params_meta": count_params(build_model(cfg))["total"],
        "params_cpu_direct": direct,
        "saved_bytes_meta": meta["total"],
        "saved_bytes_cpu": cpu["total"],
        "held_after_forward_cpu": measured["held"],
        "returned_by_forward_cpu": measured["returned"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=list(PRESETS))
    p.add_argument("--batch", type=int, default=None, help="per-GPU batch (default: each preset's)")
    p.add_argument("--out", type=Path, default=RESULTS / "memory_estimate.json")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    doc = {
        "what": "memory per GPU of a training step, computed on the meta device",
        "command": command_line(__file__, argv),
        "gpu_gb": GPU_GB,
        "usable_share": USABLE_SHARE,
        "rows": [estimate(n, a.batch) for n in a.presets],
        "cpu_check": cpu_check(),
        "machine": machine_info(),
    }
    write_results(a.out, doc)
    print(f"wrote {a.out}")
    return doc


if __name__ == "__main__":
    main()
