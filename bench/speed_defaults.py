"""The defaults against today's path: MAE at ViT-T/16 + 128x2 decoder, 112 px, batch 32, 3 channels (the
reference's input), the bare optimiser step with every speed-up off (fp32, per-tensor AdamW, glibc's
allocator as started), each kept speed-up alone, the defaults, and a plain ``ultrassl pretrain``; then
the same rows for UltraMAE (images, clips) and USCL.

The baseline, the tuned allocator and the defaults each run in a process of their own (as a user's run
does: several models in one process keep each other's freed memory in use, which hides the allocator's
page faults); the other speed-ups run side by side with a copy of the baseline in one process, taking
turns step by step (``benchlib.paired_rates``). ``--rounds`` rounds; ``precision auto`` measures in each
(its cache off). Writes ``bench/results/speed_defaults.json`` (``--methods`` merges some methods' rows
into it); ``python bench/render_docs.py`` puts it in docs/benchmarks.md.

    python bench/speed_defaults.py --methods mae --steps 20 --rounds 3
    python bench/speed_defaults.py --methods ultramae,uscl --steps 12 --rounds 2
    python bench/speed_defaults.py --quick --out /tmp/speed_defaults.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    RESULTS,
    command_line,
    fmt,
    label,
    read_results,
    record_run,
    run_one,
    speed_arguments,
    speed_machine,
    synthetic_manifest,
    write_results,
)

#: the issue's headline model: MAE at ViT-T/16, 112 px, batch 32, 3 channels (the reference's input)
HEADLINE = {"method": "mae", "in_chans": 3}
#: today's path (every speed-up off; the reference MAE code's speed), each kept speed-up alone, and the
#: defaults a plain run gets. ``lone`` rows run in a process of their own, as a user's run does: the
#: allocator's effect shows only there (models side by side in one process keep each other's freed
#: memory in use, so glibc's trimming, and its page faults, all but vanish). ``paired`` rows run side by
#: side with the baseline in one process, taking turns step by step (``benchlib.paired_rates``)
DEFAULT_ROWS: tuple[dict[str, Any], ...] = (
    {
        "option": "baseline: fp32, per-tensor AdamW",
        "precision": "fp32",
        "fused_optim": False,
        "host_allocator": "default",
        "how": "lone",
    },
    {
        "option": "fused AdamW",
        "precision": "fp32",
        "fused_optim": True,
        "host_allocator": "default",
        "how": "paired",
    },
    {
        "option": "bf16 autocast, fused attention",
        "precision": "bf16",
        "fused_optim": False,
        "host_allocator": "default",
        "fused_attention_forced": True,
        "how": "paired",
    },
    {
        "option": "bf16 autocast",
        "precision": "bf16",
        "fused_optim": False,
        "host_allocator": "default",
        "how": "paired",
    },
    {
        "option": "tuned allocator",
        "precision": "fp32",
        "fused_optim": False,
        "host_allocator": "tuned",
        "how": "lone",
    },
    {
        "option": "default: precision auto, fused AdamW, tuned allocator",
        "precision": "auto",
        "fused_optim": None,
        "host_allocator": "tuned",
        "how": "lone",
    },
)
#: the subprocesses of this part: ``auto`` measures in every round, no cached figures
NO_PRECISION_CACHE = {"ULTRASSL_PRECISION_CACHE": "off"}
#: the other methods' steps, the same variants side by side (their CPU presets, 112 px, batch 32)
DEFAULT_OTHERS = (("ultramae", "images"), ("ultramae", "videos"), ("uscl", None))


def defaults_round(spec: dict[str, Any], steps: int, threads: int) -> list[dict[str, Any]] | str:
    """One round of DEFAULT_ROWS: each ``lone`` row in its own process (in turn, a few seconds apart:
    hence the rounds), set against the lone baseline; the ``paired`` rows in one process beside a copy
    of the baseline, each by its paired ratio. Returns the rows with ``vs_baseline``, or the error."""
    out: dict[str, dict[str, Any]] = {}
    for v in DEFAULT_ROWS:
        if v["how"] == "lone":
            res = run_one("step", {**spec, **v, "steps": steps}, threads, NO_PRECISION_CACHE)
            if "error" in res:
                return str(res["error"])
            out[v["option"]] = {**v, **res}
    base = out[DEFAULT_ROWS[0]["option"]]
    paired = [DEFAULT_ROWS[0]] + [v for v in DEFAULT_ROWS if v["how"] == "paired"]
    res = run_one("paired", {**spec, "steps": steps, "variants": paired}, threads, NO_PRECISION_CACHE)
    if "rows" not in res:
        return str(res.get("error"))
    for row in res["rows"][1:]:
        out[row["option"]] = {**row, "samples_per_s": base["samples_per_s"] * row["vs_first"]}
    rows = [out[v["option"]] for v in DEFAULT_ROWS]
    for row in rows:
        row["vs_baseline"] = row.get("vs_first") or row["samples_per_s"] / base["samples_per_s"]
    return rows


def defaults_others(
    manifest: Path, work: Path, steps: int, threads: int, rounds: int, methods: set[str] | None = None
) -> list[dict[str, Any]]:
    """DEFAULT_ROWS side by side (``defaults_round``) for UltraMAE and USCL: medians over ``rounds``."""
    out = []
    for method, modality in DEFAULT_OTHERS:
        if methods and method not in methods:
            continue
        spec = {"manifest": str(manifest), "work": str(work), "method": method, "modality": modality}
        per_round = []
        for r in range(rounds):
            res = defaults_round(spec, steps, threads)
            if isinstance(res, str):
                print(f"  [{r + 1}/{rounds}] {method} {modality or ''}: {res}")
                continue
            per_round.append(res)
            ratios = ", ".join(f"{row['vs_baseline']:.2f}x" for row in res)
            print(f"  [{r + 1}/{rounds}] {label(spec)}: {ratios}", flush=True)
        if per_round:
            out.append(
                {
                    "method": method,
                    "modality": modality,
                    "baseline_samples_per_s": statistics.median(x[0]["samples_per_s"] for x in per_round),
                    "vs_baseline": {
                        v["option"]: statistics.median(x[i]["vs_baseline"] for x in per_round)
                        for i, v in enumerate(DEFAULT_ROWS)
                    },
                    "rounds_vs_baseline": {
                        v["option"]: [round(x[i]["vs_baseline"], 3) for x in per_round]
                        for i, v in enumerate(DEFAULT_ROWS)
                    },
                    "auto_chose": sorted({x[-1]["precision_used"] for x in per_round}),
                }
            )
    return out


def defaults_part(
    manifest: Path, work: Path, steps: int, threads: int, rounds: int, quick: bool = False
) -> dict[str, Any]:
    """Per round: the DEFAULT_ROWS variants side by side (``defaults_round``), then a plain
    ``ultrassl pretrain`` run; each figure is the median over the rounds, the run set against the
    baseline's bare step of the same round."""
    spec = {"manifest": str(manifest), "work": str(work), **HEADLINE}
    paired, runs = [], []
    for r in range(rounds):
        res = defaults_round(spec, steps, threads)
        if isinstance(res, str):
            print(f"  [{r + 1}/{rounds}] paired steps: {res}")
        else:
            paired.append(res)
            for row in res:
                print(
                    f"  [{r + 1}/{rounds}] {row['option']}: {fmt(row['samples_per_s'])} "
                    f"({row['vs_baseline']:.2f}x, {row['page_faults_per_step']:.0f} page faults/step)"
                )
        run = run_one("pretrain", {**spec, "steps": 40 if quick else 150}, threads, NO_PRECISION_CACHE)
        runs.append((run, None if isinstance(res, str) else res[0]["samples_per_s"]))
        print(f"  [{r + 1}/{rounds}] ultrassl pretrain: {run.get('error') or fmt(run['samples_per_s'])}")
    rows = []
    for i, variant in enumerate(DEFAULT_ROWS):
        per_round = [p[i] for p in paired]
        rows.append(
            {
                **HEADLINE,
                **variant,
                "samples_per_s": statistics.median(x["samples_per_s"] for x in per_round),
                "vs_baseline": statistics.median(x["vs_baseline"] for x in per_round),
                "rounds_samples_per_s": [round(x["samples_per_s"], 1) for x in per_round],
                "rounds_vs_baseline": [round(x["vs_baseline"], 3) for x in per_round],
                "page_faults_per_step": statistics.median(x["page_faults_per_step"] for x in per_round),
                "precision_used": ",".join(sorted({x["precision_used"] for x in per_round})),
                "attention": ",".join(sorted({str(x["attention"]) for x in per_round})),
            }
        )
    good = [(run, base) for run, base in runs if "error" not in run and base]
    rows.append(
        {
            **HEADLINE,
            "option": "plain ultrassl pretrain",
            "samples_per_s": statistics.median(run["samples_per_s"] for run, _ in good) if good else None,
            "wall_samples_per_s": statistics.median(run["wall_samples_per_s"] for run, _ in good)
            if good
            else None,
            "vs_baseline": statistics.median(run["samples_per_s"] / base for run, base in good)
            if good
            else None,
            "rounds_samples_per_s": [round(run["samples_per_s"], 1) for run, _ in good],
            "rounds_vs_baseline": [round(run["samples_per_s"] / base, 3) for run, base in good],
            "precision_used": ",".join(sorted({str(run.get("precision_used")) for run, _ in good})),
            "attention": ",".join(sorted({str(run.get("attention")) for run, _ in good})),
        }
    )
    return {"rows": rows, "rounds": rounds, "steps": steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    speed_arguments(p, RESULTS / "speed_defaults.json")
    p.add_argument("--methods", default="", help="mae (the headline), ultramae, uscl: merged into --out")
    a = p.parse_args()
    t0 = time.monotonic()
    steps, rounds = (2, 1) if a.quick else (a.steps, a.rounds)
    a.work.mkdir(parents=True, exist_ok=True)
    manifest = synthetic_manifest(a.work)
    command = command_line(__file__)
    machine = speed_machine(command)
    chosen = {m for m in a.methods.split(",") if m}
    doc = read_results(a.out)
    print("defaults against today's path (MAE, ViT-T/16, 112 px, batch 32, 3 channels):", flush=True)
    part = doc.get("defaults", {})
    if not chosen or "mae" in chosen:
        part = {**part, **defaults_part(manifest, a.work, steps, a.threads, rounds, quick=a.quick)}
    others = defaults_others(manifest, a.work, steps, a.threads, rounds, chosen or None)
    done = {(r["method"], r["modality"]) for r in others}
    kept = [r for r in part.get("others", []) if (r["method"], r["modality"]) not in done]
    part["others"] = sorted(kept + others, key=lambda r: DEFAULT_OTHERS.index((r["method"], r["modality"])))
    part["git"] = machine["git"]
    if not chosen or "machine" not in doc:
        doc["machine"] = machine
    doc["defaults"] = part
    record_run(doc, f"defaults ({a.methods})" if chosen else "defaults", command, time.monotonic() - t0)
    print(f"wrote {write_results(a.out, doc)}")


if __name__ == "__main__":
    main()
