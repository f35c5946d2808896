"""The BUSI_RECIPES section of docs/benchmark-results.md: every pre-training recipe tried on BUSI dev
(``bench/busi_recipes.py``), each method's lift over the random ViT-T side by side, from the copies of
the recipes' benchmark results in ``bench/results/busi_recipes/<name>.json``.

As on the suite's page, everything is read from each file's ``lifts`` and ``pretrain``, and the verdict
is its sentence (:func:`benchmark_suite.resolution_sentence`): whether a lift is resolved is read off its
interval, whether it holds across the recipe's lifts off ``resolved_holm``. The recipes are compared side
by side, not tested against one another: picking the best of several also favours the luckiest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import benchmark_suite as suite
from .provenance import machine

#: the folder of the recipes' results files, below ``bench/results``
FOLDER = "busi_recipes"
TASK = "busi-classify"


def load(results: Path) -> list[dict[str, Any]]:
    """The recipes' results documents, by file name."""
    folder = results / FOLDER
    if not folder.is_dir():
        return []
    docs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    return [d for d in docs if d.get("recipe") and (d.get("lifts") or {}).get(TASK)]


def pretraining(doc: dict[str, Any], encoder: str) -> str:
    """How the encoder's pre-training runs went over the folds: their count, steps and final losses."""
    method, _, corpus = encoder.partition("@")
    runs = [
        v
        for k, v in (doc.get("pretrain") or {}).items()
        if k.startswith(f"{corpus or 'busi'}/") and k.endswith(f"/{method}")
    ]
    if not runs:
        return "-"
    steps = sorted({r["steps"] for r in runs if r.get("steps") is not None})
    text = f"{len(runs)} runs"
    if steps:
        text += f" of {steps[0]} steps" if len(steps) == 1 else f" of {steps[0]}-{steps[-1]} steps"
    losses = [r["final_loss"] for r in runs if r.get("final_loss") is not None]
    if losses:
        text += f", final loss {min(losses):.3f}-{max(losses):.3f}"
    return text


def rows(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(encoder, its twin, protocol -> lift) of every pre-trained encoder of one recipe."""
    out = []
    metric = suite.headline(doc, TASK)
    for enc, node in ((doc.get("lifts") or {}).get(TASK) or {}).items():
        out.append(
            (enc, node.get("baseline"), {p: (node.get(p) or {}).get(metric) for p in node if p != "baseline"})
        )
    return out


def section(results: Path) -> str | None:
    docs = load(results)
    if not docs:
        return None
    protos = [p for p in suite.PROTOCOL_ORDER if any(p in lifts for d in docs for _, _, lifts in rows(d))]
    metric = suite.METRIC_NAMES[suite.HEADLINE["classify"]]
    head = ["recipe", "encoder", "pre-training", *(f"{suite.PROTOCOL_NAMES[p]}: lift" for p in protos)]
    body, found = [], []
    for doc in docs:
        r = doc["recipe"]
        for i, (enc, twin, lifts) in enumerate(rows(doc)):
            body.append(
                [
                    f"`{r['name']}`: {r['change']}" if i == 0 else f"`{r['name']}`",  # said once
                    f"{suite.name(enc)} (vs {suite.name(twin)})",
                    pretraining(doc, enc),
                ]
                + [suite.lift_cell(lifts.get(p)) for p in protos]
            )
            found += [
                (f"`{r['name']}` {suite.name(enc)} ({suite.PROTOCOL_NAMES[p]})", lifts[p])
                for p in protos
                if lifts.get(p)
            ]
    verdict = (
        suite.resolution_sentence(
            found, f"On `{TASK}` ({metric}, points) the recipes' design", "each recipe's own lifts"
        )
        if found
        else "No recipe has a lift over its random twin yet."
    )
    lines = [
        "## Pre-training recipes on BUSI",
        "",
        f"Each recipe is one `ultrassl benchmark` on `{TASK}` with one change from the CPU preset; every "
        f"lift is the encoder's {metric} minus that of a random ViT-T, paired by fold, in points with its 95 % "
        "interval (the suite's conventions above).",
        "",
        *suite.table(head, body),
        "",
        verdict,
        "",
        *suite.outdated_finetune(*docs),
        "Made by:",
        "",
    ]
    for doc in docs:
        m = doc.get("machine") or {}
        cmds = ", ".join(f"`{c}`" for c in doc.get("commands") or [doc.get("command")] if c)
        lines.append(
            f"- `{doc['recipe']['name']}`: {cmds} (`{doc['recipe'].get('driver', 'python bench/busi_recipes.py')}`) "
            f"at git {doc.get('commit') or m.get('git_hash') or 'unknown'} on {machine(m)}; raw results "
            f"`bench/results/{FOLDER}/{doc['recipe']['name']}.json`."
        )
    return "\n".join(lines).rstrip()
