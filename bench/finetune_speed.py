"""Fine-tuning speed of this checkout against another one, side by side in one run.

Why: the fine-tuning loop was reshaped for GPUs (batches made through a DataLoader, augmentation drawn
apart from the pixel work, one read of the loss per epoch); on a CPU it must be no slower than before.
Each round runs the same evaluation (full fine-tuning classification and segmentation of a scratch
ViT-T on synthetic data) once with each source tree, in turn, in fresh processes; the figure is the
median of the per-round ratios (baseline seconds / these seconds), so a machine that drifts between
rounds cancels out of it.

    python bench/finetune_speed.py --baseline-src /path/to/other/checkout/src [--rounds 3]

Writes ``bench/results/finetune_speed.json`` (with the command, both commits and the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import ROOT, command_line, git_revision, machine_info, write_results

OUT = ROOT / "bench" / "results" / "finetune_speed.json"

#: one evaluation, timed inside its process (imports and data synthesis left out); the same code
#: runs against either source tree, so it uses only what both offer
DRIVER = r"""
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[4]))
from ultrassl.models.vit import EncoderSpec
task, manifest, out = sys.argv[1:4]
spec = EncoderSpec("tiny", (112, 112), 16, 1)
t0 = time.perf_counter()
if task == "classify":
    from ultrassl.finetune.classify import ClassifyConfig, finetune_classify
    cfg = ClassifyConfig(mode="full", folds=2, epochs=10, max_frames_per_video=12, batch_size=16)
    finetune_classify("scratch", manifest, out, cfg, scratch_spec=spec, progress=False)
else:
    from ultrassl.finetune.segment import SegmentConfig, finetune_segment
    cfg = SegmentConfig(folds=2, epochs=12, batch_size=8, decoder_dim=64, decoder_depth=1, decoder_heads=2)
    finetune_segment("scratch", manifest, out, cfg, scratch_spec=spec, progress=False)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""

TASKS = ("classify", "segment")


def run_once(src: Path, task: str, manifest: Path, work: Path, threads: int) -> float:
    """Seconds of one evaluation with the package at ``src``."""
    out = Path(tempfile.mkdtemp(dir=work))
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, task, str(manifest), str(out), str(threads)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{task} with {src} failed:\n{done.stderr[-2000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline-src", type=Path, required=True, help="the other checkout's src/ folder")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args()
    here = ROOT / "src"
    sys.path.insert(0, str(here))
    from ultrassl.data.synthetic import make_synthetic_dataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = make_synthetic_dataset(
            work / "data",
            n_patients=8,
            clips_per_patient=1,
            n_frames=12,
            size=(112, 112),
            n_lesion_images=24,
            seed=0,
        )
        for task in TASKS:
            pairs = []
            for r in range(a.rounds):
                order = [("baseline", a.baseline_src), ("this", here)]
                if r % 2:
                    order.reverse()
                t = {name: run_once(src, task, manifest, work, a.threads) for name, src in order}
                pairs.append(t)
                print(
                    f"{task} round {r + 1}: baseline {t['baseline']:.1f} s, this {t['this']:.1f} s",
                    flush=True,
                )
            ratios = [t["baseline"] / t["this"] for t in pairs]
            rows.append(
                {
                    "task": task,
                    "baseline_s": [t["baseline"] for t in pairs],
                    "this_s": [t["this"] for t in pairs],
                    "speed_ratio": ratios,
                    "speed_ratio_median": statistics.median(ratios),
                }
            )
    doc = {
        "command": command_line(__file__),
        "commit": git_revision(),
        "baseline_commit": git_revision(a.baseline_src.parent),
        "machine": machine_info(threads=a.threads),
        "when": time.strftime("%Y-%m-%d"),
        "what": "full fine-tuning classification (2 folds x 10 epochs, 144 frames) and segmentation (2 folds x 12 epochs, "
        "48 images) of "
        "a scratch ViT-T/16 at 112 px on synthetic data; speed_ratio = baseline seconds / this checkout's",
        "rows": rows,
    }
    write_results(a.out, doc)
    for row in rows:
        print(
            f"{row['task']}: this checkout is {row['speed_ratio_median']:.2f}x the baseline's speed (median)"
        )


if __name__ == "__main__":
    main()
