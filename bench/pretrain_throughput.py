"""Pre-training throughput and peak memory: MAE vs Deblurring MAE, ViT-T/S, 112/224 px, fp32 vs bf16.

Each configuration runs in its own subprocess (so peak RSS is its own), all in one invocation on one
machine, so the figures compare side by side. Writes ``bench/results/pretrain_throughput.json`` and the
table in ``docs/benchmarks.md`` (between the PRETRAIN_THROUGHPUT markers).

    python bench/pretrain_throughput.py               # full grid (about 10 minutes on 2 cores)
    python bench/pretrain_throughput.py --quick       # ViT-T at 112 only
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchlib import machine_info, write_doc_section

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "pretrain_throughput.json"
DOC = ROOT / "docs" / "benchmarks.md"
PRESETS = {"vit-t": "cpu-vit-t112", "vit-s": "cpu-vit-s112"}


def measure(method: str, model: str, size: int, precision: str, batch: int, steps: int, warmup: int) -> dict:
    """One configuration, in this process: images/s of full training steps and the blur's cost."""
    import torch

    from ultrassl.config import build_pretrain_config
    from ultrassl.methods.mae import MAE
    from ultrassl.training import param_groups, resolve_precision
    from ultrassl.transforms.blur import Blur

    torch.manual_seed(0)
    cfg = build_pretrain_config(method, PRESETS[model], overrides=[f"encoder.img_size=[{size},{size}]"])
    net = MAE(cfg.encoder, cfg.mae).train()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device)
    opt = torch.optim.AdamW(param_groups(net, 0.05), lr=1e-4, betas=(0.9, 0.95))
    dtype = resolve_precision(precision, device)
    x = torch.rand(batch, cfg.encoder.in_chans, size, size)
    blur = Blur(cfg.blur) if cfg.blur.kind != "none" else None
    t0 = time.perf_counter()
    inp = torch.stack([blur(img) for img in x]) if blur else x
    blur_ms = (time.perf_counter() - t0) * 1000 / batch if blur else 0.0
    batch_dict = {"input": inp.to(device), "target": x.to(device)}

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if dtype is None:
            loss = net(batch_dict)["loss"]
        else:
            with torch.autocast(device.type, dtype=dtype):
                loss = net(batch_dict)["loss"]
        loss.float().backward()
        opt.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak_mb = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "method": method,
        "model": model,
        "img_size": size,
        "precision": precision,
        "batch": batch,
        "steps": steps,
        "images_per_s": batch * steps / seconds,
        "peak_memory_mb": peak_mb,
        "peak_memory_kind": "cuda max allocated" if device.type == "cuda" else "process max RSS",
        "blur_ms_per_image": blur_ms,
        "device": str(device),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| method | model | px | precision | batch | images/s | bf16 speed-up | peak memory (MB) | blur ms/img |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    fp32 = {
        (r["method"], r["model"], r["img_size"]): r["images_per_s"] for r in rows if r["precision"] == "fp32"
    }
    for r in rows:
        key = (r["method"], r["model"], r["img_size"])
        ratio = f"{r['images_per_s'] / fp32[key]:.2f}x" if r["precision"] != "fp32" and key in fp32 else ""
        lines.append(
            f"| {r['method']} | {r['model']} | {r['img_size']} | {r['precision']} | {r['batch']} | "
            f"{r['images_per_s']:.1f} | {ratio} | {r['peak_memory_mb']:.0f} | {r['blur_ms_per_image']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration as JSON
    a = p.parse_args()
    if a.one:
        spec = json.loads(a.one)
        print(json.dumps(measure(**spec)))
        return
    models = ["vit-t"] if a.quick else ["vit-t", "vit-s"]
    sizes = [112] if a.quick else [112, 224]
    rows = []
    for model in models:
        for size in sizes:
            for method in ("mae", "deblur-mae"):
                for precision in ("fp32", "bf16"):
                    spec = dict(
                        method=method,
                        model=model,
                        size=size,
                        precision=precision,
                        batch=a.batch,
                        steps=a.steps,
                        warmup=a.warmup,
                    )
                    out = subprocess.run(
                        [sys.executable, __file__, "--one", json.dumps(spec)],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                    print(
                        f"{method:10s} {model} {size}px {precision}: {row['images_per_s']:.1f} img/s, "
                        f"peak {row['peak_memory_mb']:.0f} MB",
                        flush=True,
                    )
                    rows.append(row)
    info = machine_info()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    cmd = "python bench/pretrain_throughput.py" + (" --quick" if a.quick else "")
    cmd += f" --steps {a.steps} --warmup {a.warmup} --batch {a.batch}"
    section = (
        "## Pre-training throughput\n\n"
        f"Command: `{cmd}` (batch {a.batch}, {a.steps} timed steps after {a.warmup} warm-up, one "
        "subprocess per row, all rows in one run). A step = forward + backward + AdamW update of "
        "encoder and decoder (presets `cpu-vit-t112` / `cpu-vit-s112`, decoder 128x2 / 192x2, mask 0.75). "
        "Deblurring MAE's blur runs in the data loader; its cost per image is the last column. "
        "MAE and Deblurring MAE rows of one shape do the same arithmetic, so their difference shows the "
        "run-to-run noise on this machine's shared cores.\n\n"
        f"Machine: {info['cores']} cores ({info['cpu']}), torch {info['torch']} with "
        f"{info['torch_threads']} threads, Python {info['python']}, {info['gpu'] or 'no GPU'}.\n\n"
        + table(rows)
    )
    write_doc_section("PRETRAIN_THROUGHPUT", section)
    print(f"wrote {RESULTS} and {DOC}")


if __name__ == "__main__":
    main()
