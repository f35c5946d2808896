"""Is ``--precision auto`` ever slower than the faster of fp32 and bf16? One row per method preset.

For each method at its CPU preset (batch 32, 112 px; UltraMAE per modality) this runs, in fresh
subprocesses on the same synthetic data: the training loop's ``auto`` choice (its probe on the first
batch, cache off; ``benchlib.auto_choice``), then the loop's own step timed in fp32 and in bf16
(``benchlib.step_rate``), the two interleaved over ``--rounds`` rounds. *auto / best* is the rate of the
precision auto chose over the faster of the two measured rates (1.0: it chose the faster). Writes
``bench/results/precision_auto.json`` (``python bench/render_docs.py``: the PRECISION_AUTO section of
docs/benchmarks.md).

    python bench/precision_auto.py [--methods mae,uscl] [--rounds 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    METHODS,
    RESULTS,
    command_line,
    machine_info,
    run_one,
    synthetic_manifest,
    write_results,
)
from pages.precision_auto import table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=None)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", type=Path, default=RESULTS / "precision_auto.json")
    a = ap.parse_args()
    wanted = set(a.methods.split(",")) if a.methods else None
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = str(synthetic_manifest(Path(tmp)))
        for method, modality in METHODS:
            if wanted and method not in wanted:
                continue
            work = str(Path(tmp) / f"{method}-{modality}")
            spec = {"method": method, "modality": modality, "manifest": manifest, "work": work}
            chosen = run_one("auto", spec, threads, {"ULTRASSL_PRECISION_CACHE": "off"})
            if "error" in chosen:
                rows.append({"method": method, "modality": modality, "error": chosen["error"][-300:]})
                continue
            rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
            for _ in range(a.rounds):
                for precision in rates:
                    r = run_one("step", {**spec, "precision": precision, "steps": a.steps}, threads)
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
    doc = {"machine": machine_info(command=command_line(__file__)), "rounds": a.rounds, "rows": rows}
    print(table(doc))
    print(f"wrote {write_results(a.out, doc)}")


if __name__ == "__main__":
    main()
