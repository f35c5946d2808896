"""Per-step data loading against the model's appetite: each method's DataLoader (augmentation, Deblurring
MAE's blur, USCL's sample pairs, collation) from the decoded frames, batches of 8, with 0 and 2 worker
processes (one torch thread each), steady state (the first batch of each epoch, when workers start, is
timed apart). The pages set each rate against the same method's fp32 step (``speed_step.py``).

Each loader runs in its own subprocess (``benchlib.loader_rate``). Writes
``bench/results/speed_loader.json``; ``python bench/render_docs.py`` puts it in docs/benchmarks.md.

    python bench/speed_loader.py                       # about 2 minutes on 2 cores
    python bench/speed_loader.py --quick --out /tmp/speed_loader.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    METHODS,
    fmt,
    label,
    run_one,
    run_speed_part,
    synthetic_manifest,
)

WORKERS = (0, 2)


def main() -> None:
    run_speed_part("loader", __file__, __doc__, "data loaders", loader_rows)


def loader_rows(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Samples/s of every method's loader with each worker count (one process each)."""
    manifest = synthetic_manifest(a.work)
    rows = []
    for method, modality in METHODS[:1] if a.quick else METHODS:
        for workers in WORKERS:
            spec = {"method": method, "modality": modality, "manifest": str(manifest), "work": str(a.work)}
            spec.update(workers=workers, batches=4 if a.quick else 32)
            res = run_one("loader", spec, 1 if workers else a.threads)
            rows.append({"method": method, "modality": modality, **res})
            print(
                f"  loader {label(rows[-1])} workers={workers}: {fmt(res.get('samples_per_s'))}", flush=True
            )
    return rows


if __name__ == "__main__":
    main()
