"""Where one pre-training step's time goes: data, forward, backward, gradient clip, optimiser.

The training loop's own pieces (its loader, ``autocast``, model, clip and optimiser) are timed one by
one around the real loader, and ``--ops`` adds a ``torch.profiler`` table of the bare step's top
operators. Prints the figures and writes ``bench/results/step_profile.json``; the profile in
docs/benchmarks.md ("Where a MAE step's time goes", written by hand) was made with it.

    OMP_NUM_THREADS=2 python bench/step_profile.py --method mae --precision fp32 [--fused-optim false] [--ops]
    OMP_NUM_THREADS=2 python bench/step_profile.py --steps 2 --out /tmp/step_profile.json   # a smoke run
"""

from __future__ import annotations

import argparse
import itertools
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    RESULTS,
    WORK,
    build_trainer,
    command_line,
    machine_info,
    synthetic_manifest,
    write_results,
)

PARTS = ("data", "forward", "backward", "clip", "optimiser")


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="mae")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--fused-optim", default="default", choices=("default", "true", "false"))
    ap.add_argument("--in-chans", type=int, default=3)
    ap.add_argument("--host-allocator", default="tuned", choices=("tuned", "default"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--ops", action="store_true", help="also a torch.profiler table of 5 bare steps")
    ap.add_argument("--work", type=Path, default=WORK / "speed", help="synthetic data and frame store")
    ap.add_argument("--out", type=Path, default=RESULTS / "step_profile.json")
    a = ap.parse_args()
    fused = {"default": None, "true": True, "false": False}[a.fused_optim]
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    manifest = synthetic_manifest(work)
    times: dict[str, list[float]] = {k: [] for k in (*PARTS, "step")}
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = build_trainer(
            a.method,
            str(manifest),
            str(work),
            run_dir,
            precision=a.precision,
            fused_optim=fused,
            in_chans=a.in_chans,
            train={"host_allocator": a.host_allocator},
        )
        batches = itertools.chain.from_iterable(trainer.loader(e, 0) for e in itertools.count())

        def step(record: bool) -> None:
            t = [time.perf_counter()]
            trainer.optimizer.zero_grad(set_to_none=True)
            batch = trainer.to_device(next(batches))
            t.append(time.perf_counter())
            with trainer.autocast():
                loss = trainer.ddp_model(batch)["loss"].float()
            t.append(time.perf_counter())
            loss.backward()
            t.append(time.perf_counter())
            if trainer.optim_cfg.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.optim_cfg.clip_grad)
            t.append(time.perf_counter())
            trainer.optimizer.step()
            trainer.scheduler.step()
            float(loss)
            t.append(time.perf_counter())
            if record:
                for name, t0, t1 in zip(PARTS, t, t[1:]):
                    times[name].append(t1 - t0)
                times["step"].append(t[-1] - t[0])

        for _ in range(3):
            step(False)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(a.steps):
            step(True)
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / a.steps
        ops = None
        if a.ops:
            from torch.profiler import ProfilerActivity, profile

            first = itertools.repeat(next(batches))
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(5):
                    trainer.train_step(first)
            ops = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        fused_used = bool(trainer.optimizer.param_groups[0].get("fused"))
    total = statistics.median(times["step"])
    result = {
        "machine": machine_info(command=command_line(__file__)),
        "method": a.method,
        "precision": a.precision,
        "fused_optim": fused_used,
        "in_chans": a.in_chans,
        "host_allocator": a.host_allocator,
        "steps": a.steps,
        "ms": {k: 1000 * statistics.median(v) for k, v in times.items()},
        "samples_per_s": 32 / total,
        "page_faults_per_step": faults,
    }
    write_results(a.out, result)
    print(
        f"{a.method} {a.precision} fused AdamW={fused_used}, allocator {a.host_allocator}: "
        f"{result['samples_per_s']:.1f} samples/s, {faults:.0f} page faults/step; "
        + ", ".join(
            f"{k} {result['ms'][k]:.1f} ms ({100 * result['ms'][k] / (1000 * total):.0f}%)" for k in PARTS
        )
    )
    if ops:
        print(ops)


if __name__ == "__main__":
    main()
