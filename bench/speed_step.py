"""Every method's training step at its CPU preset (batch 32, 112 px), in fp32 and with each speed option
changed alone: bf16 autocast, torch.compile, no fused attention, channels-last (USCL), ConvMAE's dense
reference stages.

Each row runs in its own subprocess (the loop's own ``Trainer.train_step`` on one real batch of the
method's synthetic data, median of the timed steps; ``benchlib.step_rate``), ``--rounds`` times with
the rows interleaved; a row keeps its median round. Rows carry the machine and commit they ran on;
``--methods``/``--options`` measure some rows and merge them into ``--out`` (the others are kept).
Writes ``bench/results/speed_step.json``; ``python bench/render_docs.py`` puts it in docs/benchmarks.md.

    python bench/speed_step.py                          # every row (about 12 minutes on 2 cores)
    python bench/speed_step.py --methods mae,convmae --options 'fp32,bf16 autocast'
    python bench/speed_step.py --quick --out /tmp/speed_step.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    CONVVIT_METHODS,
    METHODS,
    RESULTS,
    command_line,
    read_results,
    record_run,
    run_models,
    speed_arguments,
    speed_machine,
    synthetic_manifest,
    write_results,
)

#: the option row of ConvMAE's reference computation (stages 1-2 over the masked patches too)
DENSE = "dense stages 1-2 (reference)"
#: the order of a method's option rows
OPTIONS = ("fp32", "bf16 autocast", DENSE, "torch.compile", "no fused attention", "channels-last")


def step_rows(quick: bool, methods: set[str] | None = None) -> list[dict[str, Any]]:
    """Each method at its CPU preset size, batch 32, with each speed option changed alone."""
    rows = []
    for method, modality in METHODS:
        if methods and method not in methods:
            continue
        base = {"method": method, "modality": modality}
        variants: list[dict[str, Any]] = [
            {"option": "fp32"},
            {"option": "bf16 autocast", "precision": "bf16"},
        ]
        if method in CONVVIT_METHODS:
            variants.append({"option": DENSE, "dense_stages": True})
        if not quick:
            variants.append({"option": "torch.compile", "compile": True})
        if method == "uscl":
            variants.append({"option": "channels-last", "channels_last": "on"})
        else:
            variants.append({"option": "no fused attention", "fused_attn": False})
        rows += [{**base, **v} for v in variants]
    return rows


def merge_rows(kept: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``new`` replaces the rows of the same method, modality, option and machine in ``kept``; the rest
    stay, in METHODS and OPTIONS order."""

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return r.get("method"), r.get("modality"), r.get("option"), r.get("machine")

    done = {key(r) for r in new}
    order = {m: i for i, (m, _) in enumerate(METHODS)}
    return sorted(
        [r for r in kept if key(r) not in done] + new,
        key=lambda r: (
            order.get(r.get("method"), len(order)),
            str(r.get("modality")),
            OPTIONS.index(r["option"]) if r.get("option") in OPTIONS else len(OPTIONS),
        ),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    speed_arguments(p, RESULTS / "speed_step.json")
    p.add_argument("--methods", default="", help="these methods' rows only, merged into --out")
    p.add_argument("--options", default="", help="these option rows only (e.g. 'fp32,bf16 autocast')")
    a = p.parse_args()
    t0 = time.monotonic()
    steps, rounds = (2, 1) if a.quick else (a.steps, a.rounds)
    a.work.mkdir(parents=True, exist_ok=True)
    manifest = synthetic_manifest(a.work)
    command = command_line(__file__)
    machine = speed_machine(command)
    chosen = {m for m in a.methods.split(",") if m}
    options = {o for o in a.options.split(",") if o}
    print("training step, per method and option:", flush=True)
    todo = [r for r in step_rows(a.quick, chosen) if not options or r["option"] in options]
    rows = run_models(todo, manifest, a.work, steps, a.threads, rounds)
    for r in rows:  # rows merged from runs on other machines say so in the table
        r["machine"], r["git"] = machine["cpu"], machine["git"]
    doc = read_results(a.out)
    partial = bool(chosen or options)
    if partial:
        rows = merge_rows(doc.get("step", []), rows)
    if not partial or "machine" not in doc:
        doc["machine"] = machine
    doc["step"] = rows
    record_run(doc, f"step ({a.methods})" if partial else "step", command, time.monotonic() - t0)
    print(f"wrote {write_results(a.out, doc)}")


if __name__ == "__main__":
    main()
