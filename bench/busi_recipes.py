"""Pre-training recipes on BUSI dev: which change lifts an encoder over its random twin on breast images.

Each recipe is one ``ultrassl benchmark`` on ``busi-classify`` (five grouped folds, probe seeds 0 and
1, classification fine-tuning on seed 0) with one thing changed from the CPU preset: the budget, the
mask ratio, the blur, the learning rate, the crops, the input size, or the pre-training corpus
(``METHOD@multi``: POCUS, BUSI and HC18 together). The ``base`` recipe calibrates its 2-minute budget to a step count on this machine;
every other recipe takes that step count (times its factor) as ``--pretrain-steps``, so recipes are
compared at equal steps however busy the machine was when they ran. Every recipe is compared with the same random ViT-T, fold by fold, so the page can set
the lifts side by side with their intervals. A recipe is resumable (the benchmark is); its results file
is copied to ``bench/results/busi_recipes/<name>.json`` with what the recipe changed, and
``bench/render_docs.py`` renders the BUSI_RECIPES section of docs/benchmark-results.md from them.

    python bench/busi_recipes.py --recipes base            # one recipe (about an hour on 2 cores)
    python bench/busi_recipes.py --recipes budget-x3,mask-0.9
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchlib import DATA, RESULTS, ROOT, WORK, command_line, write_results

#: where the copies of each recipe's results file go (one JSON per recipe)
OUT = RESULTS / "busi_recipes"
#: the base recipe's budget per pre-training
MINUTES = 2.0


@dataclass(frozen=True)
class Recipe:
    #: what the recipe changes from the CPU preset at the base budget, as the page says it
    change: str
    methods: tuple[str, ...] = ("deblur-mae",)
    #: the base recipe's calibrated steps times this (None: calibrate ``MINUTES`` on this machine)
    steps_factor: float | None = 1.0
    #: ``--pretrain-set`` items
    sets: tuple[str, ...] = ()
    #: every encoder's input size (``--img-size``; its random twin at the same size)
    img_size: int = 112


RECIPES = {
    "base": Recipe(
        "the CPU preset (mask ratio 0.75, blur sigma 1.1, lr 1e-3); MAE beside Deblurring MAE, and "
        "Deblurring MAE pre-trained on POCUS, BUSI and HC18 together",
        methods=("deblur-mae", "mae", "deblur-mae@multi"),
        steps_factor=None,
    ),
    "budget-x3": Recipe("three times the steps", steps_factor=3.0),
    "mask-0.9": Recipe("mask ratio 0.9", sets=("mae.mask_ratio=0.9",)),
    "blur-2": Recipe("a stronger blur (sigma 2)", sets=("blur.sigma=2.0",)),
    "lr-3e-4": Recipe("a lower learning rate (3e-4)", sets=("optim.base_lr=3e-4",)),
    # a crop of 20 % of a breast frame often leaves out the lesion the label is about
    "crop-0.5": Recipe("milder crops (scale 0.5-1 of the frame)", sets=("data.crop_scale=[0.5,1.0]",)),
    # BUSI's lesions are small at 112 px; at the same steps a 160-px step costs about twice the compute
    "size-160": Recipe("input 160 px, pre-training and probes", img_size=160),
}


def base_steps() -> int:
    """Deblurring MAE's calibrated steps in the base recipe: from its committed results (so that a fresh
    checkout runs the other recipes at the same steps), else from its run here (run it first)."""
    for path in (OUT / "base.json", WORK / "busi-recipes" / "base" / "benchmark.json"):
        calibration = json.loads(path.read_text()).get("calibration", {}) if path.exists() else {}
        if "busi/deblur-mae" in calibration:
            return int(calibration["busi/deblur-mae"]["steps"])
    raise SystemExit(f"{OUT / 'base.json'}: no calibrated base recipe; run --recipes base first")


def benchmark_command(name: str, recipe: Recipe, data: Path) -> list[str]:
    """The ``ultrassl benchmark`` command line of one recipe."""
    cmd = [
        "ultrassl",
        "benchmark",
        "--data",
        os.path.relpath(data, ROOT),
        "--out",
        str((WORK / "busi-recipes" / name).relative_to(ROOT)),
        "--tasks",
        "busi-classify",
        "--methods",
        ",".join(recipe.methods),
        *(
            ["--pretrain-minutes", f"{MINUTES:g}"]
            if recipe.steps_factor is None
            else ["--pretrain-steps", str(round(base_steps() * recipe.steps_factor))]
        ),
        "--seeds",
        "0,1",
        *(["--img-size", str(recipe.img_size)] if recipe.img_size != 112 else []),
    ]
    for item in recipe.sets:
        cmd += ["--pretrain-set", item]
    return cmd


def run(name: str, recipe: Recipe, data: Path) -> Path:
    """Run (or resume) one recipe and copy its results, with the recipe, to ``OUT/<name>.json``."""
    cmd = benchmark_command(name, recipe, data)
    print("$", shlex.join(cmd), flush=True)
    subprocess.run([sys.executable, "-m", "ultrassl", *cmd[1:]], cwd=ROOT, check=True)
    doc = json.loads((ROOT / cmd[cmd.index("--out") + 1] / "benchmark.json").read_text())
    doc["recipe"] = {
        "name": name,
        "change": recipe.change,
        "methods": list(recipe.methods),
        "steps_factor": recipe.steps_factor,
        "pretrain_set": list(recipe.sets),
        "img_size": recipe.img_size,
        "driver": command_line(__file__),
    }
    return write_results(OUT / f"{name}.json", doc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="base", help=f"comma-separated, from {', '.join(RECIPES)}")
    p.add_argument("--data", type=Path, default=DATA, help="the data root (default: ../shared/data)")
    a = p.parse_args()
    names = [n.strip() for n in a.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        p.error(f"unknown recipe {unknown[0]!r}; choose from {', '.join(RECIPES)}")
    for name in names:
        print(f"wrote {run(name, RECIPES[name], a.data)}")


if __name__ == "__main__":
    main()
