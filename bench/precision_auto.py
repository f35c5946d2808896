"""Is ``--precision auto`` ever slower than the faster of fp32 and bf16? One row per method preset.

For each method at its CPU preset (batch 32, 112 px; UltraMAE per modality) this runs, in fresh
subprocesses on the same synthetic data: the training loop's ``auto`` choice (its probe on the first
batch, cache off), then the loop's own step timed in fp32 and in bf16 (``bench/speed.py``'s
``step_rate``), the two interleaved over ``--rounds`` rounds. *auto / best* is the rate of the precision
auto chose over the faster of the two measured rates (1.0: it chose the faster). Writes
``bench/results/precision_auto.json`` and the PRECISION_AUTO section of ``docs/benchmarks.md``.

    python bench/precision_auto.py [--methods mae,uscl] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import speed  # noqa: E402
from benchlib import METHOD_NAMES, ROOT, machine_info, write_doc_section  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "precision_auto.json"


def auto_choice(method: str, modality: str | None, manifest: str, work: str) -> dict[str, Any]:
    """What the loop's ``auto`` picks for this method (runs in a subprocess: --one-auto)."""
    import torch

    from ultrassl.api import build_model, build_pretrain_data, prepare_config
    from ultrassl.methods import build_pretrain_config
    from ultrassl.training import Trainer

    overrides = ["encoder.img_size=[112,112]"] + ([f"ultramae.modality={modality}"] if modality else [])
    flags = {
        "data": {"manifest": manifest, "frame_cache": str(Path(work) / "frame_store")},
        "train": {"batch_size": 32, "precision": "auto", "tensorboard": False, "max_steps": 0},
    }
    cfg = build_pretrain_config(method, speed.PRESETS[method], flags=flags, overrides=overrides)
    prepare_config(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    dataset = build_pretrain_data(cfg, progress=False).train
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, dataset, optim=cfg.optim, train=cfg.train, run_dir=run_dir, config={})
        trainer.fit()  # max_steps 0: settles the precision, trains nothing
        return dict(trainer.run_info["precision"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=None)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--one-auto", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one_auto:
        print(json.dumps(auto_choice(**json.loads(a.one_auto))))
        return
    wanted = set(a.methods.split(",")) if a.methods else None
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = str(speed.synthetic_manifest(Path(tmp)))
        for method, modality in speed.METHODS:
            if wanted and method not in wanted:
                continue
            work = str(Path(tmp) / f"{method}-{modality}")
            spec = {"method": method, "modality": modality, "manifest": manifest, "work": work}
            env = {**os.environ, "ULTRASSL_PRECISION_CACHE": "off", "PYTHONWARNINGS": "ignore"}
            out = subprocess.run(
                [sys.executable, __file__, "--one-auto", json.dumps(spec)],
                capture_output=True,
                text=True,
                env=env,
            )
            if out.returncode != 0:
                rows.append({"method": method, "modality": modality, "error": out.stderr.strip()[-300:]})
                continue
            chosen = json.loads(out.stdout.strip().splitlines()[-1])
            rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
            for _ in range(a.rounds):
                for precision in rates:
                    r = speed.run_one("step", {**spec, "precision": precision, "steps": a.steps}, threads)
                    if "samples_per_s" in r:
                        rates[precision].append(r["samples_per_s"])
            med = {p: statistics.median(v) for p, v in rates.items() if v}
            best = max(med.values()) if med else None
            row = {
                "method": method,
                "modality": modality,
                "auto": chosen["chosen"],
                "probe_samples_per_s": {p: 32 / s for p, s in chosen["seconds_per_step"].items()},
                "probe_seconds": chosen["probe_seconds"],
                "samples_per_s": med,
                "auto_over_best": med.get(chosen["chosen"], 0) / best if best else None,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    doc = {"machine": machine_info(), "rounds": a.rounds, "rows": rows}
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    if not a.no_doc:
        write_doc_section("PRECISION_AUTO", section(doc))
    print(section(doc))


def section(doc: dict[str, Any]) -> str:
    lines = [
        "## `--precision auto`: chosen by measurement",
        "",
        f"`python bench/precision_auto.py` on {doc['machine']['cpu']} ({doc['machine'].get('omp_num_threads') or doc['machine'].get('torch_threads', '?')} "
        "threads): each method's CPU preset at batch 32, 112 px. *auto*: what the loop's probe picked on "
        "the first batch (its own figures beside it); then the loop's step timed in fp32 and bf16, "
        f"interleaved, median of {doc['rounds']} rounds; *auto / best*: the chosen precision's rate over "
        "the faster one (1.00: it chose the faster; the rounds differ from each other by a few %).",
        "",
        "| method | probe: fp32 / bf16 samples/s | auto | probe s | step fp32 | step bf16 | auto / best |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in doc["rows"]:
        name = METHOD_NAMES.get(r["method"], r["method"]) + (f" ({r['modality']})" if r["modality"] else "")
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:80]} | | | | | |")
            continue
        p, s = r["probe_samples_per_s"], r["samples_per_s"]
        lines.append(
            f"| {name} | {p.get('fp32', 0):.0f} / {p.get('bf16', 0):.0f} | {r['auto']} | "
            f"{r['probe_seconds']:.1f} | {s.get('fp32', 0):.0f} | {s.get('bf16', 0):.0f} | "
            f"{r['auto_over_best']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
