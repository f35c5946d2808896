"""The SPEED section of docs/benchmarks.md, from the speed parts' JSON (``bench/speed_*.py``): the defaults
against today's path, the training step per method and option, scaling, the data pipeline, torchrun, and
what the numbers say (computed from the rows, so the words follow the numbers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib import fmt, label, read_results

#: the speed parts, each a script's results file, in the order the page merges their commands
PART_FILES = {
    "step": "speed_step.json",
    "scaling": "speed_scaling.json",
    "loader": "speed_loader.json",
    "decode": "speed_decode.json",
    "torchrun": "speed_torchrun.json",
    "defaults": "speed_defaults.json",
}
#: the parts the page's machine line describes (the first one present); the step rows carry their own
HEADER_PARTS = ("scaling", "loader", "decode", "torchrun", "step", "defaults")
#: the option row of ConvMAE's reference computation (stages 1-2 over the masked patches too)
DENSE = "dense stages 1-2 (reference)"


def speed_doc(results: Path) -> dict[str, Any] | None:
    """The parts' files as one document (the shape ``bench/speed.py`` once wrote alone): each part's
    figures under its name, the commands and wall times of all, ``machine`` the page's machine line and
    ``part_machines`` each part's; None when no part has run."""
    parts = {part: read_results(results / name) for part, name in PART_FILES.items()}
    parts = {part: d for part, d in parts.items() if part in d}
    if not parts:
        return None
    doc: dict[str, Any] = {"commands": {}, "wall_s": {}}
    for part, d in parts.items():
        doc[part] = d[part]
        doc["commands"].update(d.get("commands", {}))
        doc["wall_s"].update(d.get("wall_s", {}))
    doc["part_machines"] = {part: d.get("machine") or {} for part, d in parts.items()}
    doc["machine"] = next(doc["part_machines"][p] for p in HEADER_PARTS if p in parts)
    return doc


def elsewhere(doc: dict[str, Any]) -> str:
    """The table parts measured on another machine or commit than the page's machine line names."""
    head = doc["machine"]
    notes = [
        f"{part}: {m.get('cpu')}, git {m.get('git')}"
        for part, m in doc.get("part_machines", {}).items()
        if part in HEADER_PARTS[:4] and (m.get("cpu"), m.get("git")) != (head.get("cpu"), head.get("git"))
    ]
    return f" Measured on another machine or commit: {'; '.join(notes)}." if notes else ""


def others_names(part: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The defaults' variant names past the baseline, and those of them that ran in a process alone."""
    variants = [r for r in part.get("rows", []) if "how" in r]
    if not variants and part.get("others"):  # the headline not measured: the others' own columns
        return list(part["others"][0]["vs_baseline"])[1:], []
    return [r["option"] for r in variants[1:]], [r["option"] for r in variants[1:] if r["how"] == "lone"]


def others_table(rows: list[dict[str, Any]], names: list[str]) -> str:
    """The other methods' defaults rows: a column per variant in ``names`` (past the baseline)."""
    lines = [
        "| method | baseline samples/s | " + " | ".join(names) + " | auto chose |",
        "| --- | --- | " + " | ".join("---" for _ in names) + " | --- |",
    ]
    for r in rows:
        cells = [
            f"{r['vs_baseline'][n]:.2f}x ({', '.join(f'{x:.2f}' for x in r['rounds_vs_baseline'][n])})"
            if n in r["vs_baseline"]
            else "-"  # a row measured before this variant existed
            for n in names
        ]
        lines.append(
            f"| {label(r)} | {fmt(r['baseline_samples_per_s'])} | "
            + " | ".join(cells)
            + f" | {', '.join(r['auto_chose'])} |"
        )
    return "\n".join(lines)


def defaults_table(part: dict[str, Any]) -> str:
    lines = [
        "| path | samples/s | vs baseline (each round) | vs baseline | page faults/step | precision | attention |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in part["rows"]:
        rel = f"{r['vs_baseline']:.2f}x" if r.get("vs_baseline") else "-"
        rounds = ", ".join(f"{x:.2f}" for x in r.get("rounds_vs_baseline", []))
        # paired rows share a process whose models keep each other's memory: their faults mean nothing
        faults = r.get("page_faults_per_step") if r.get("how") == "lone" else None
        lines.append(
            f"| {r['option']} | {fmt(r.get('samples_per_s'))} | {rounds} | {rel} | "
            f"{'-' if faults is None else f'{faults:,.0f}'} | {r.get('precision_used', '')} | "
            f"{r.get('attention', '')} |"
        )
    return "\n".join(lines)


def step_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | option | samples/s | frames/s | ms/step | vs fp32 | peak memory (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    machines = list(dict.fromkeys(r["machine"] for r in rows if r.get("machine")))
    bases = {m: fp32_rates({"step": rows}, m) for m in machines} or {None: fp32_rates({"step": rows})}
    marks = {m: "*" * (i + 1) for i, m in enumerate(machines)} if len(machines) > 1 else {}
    for r in rows:
        mark = marks.get(r.get("machine"), "")
        if "error" in r:
            lines.append(f"| {label(r)}{mark} | {r['option']} | failed: {r['error'][:80]} | | | | |")
            continue
        ref = bases.get(r.get("machine"), {}).get(label(r))
        ratio = f"{r['samples_per_s'] / ref:.2f}x" if ref else ""
        lines.append(
            f"| {label(r)}{mark} | {r['option']} | {fmt(r['samples_per_s'])} | {fmt(r['frames_per_s'])} | "
            f"{fmt(r['step_ms'], 0)} | {ratio} | {fmt(r['peak_memory_mb'], 0)} |"
        )
    if marks:
        lines.append("")
        lines.append(
            "Rows measured on different machines (ratios only within one machine's rows): "
            + "; ".join(f"{m}: {k}" for k, m in marks.items())
            + "."
        )
    return "\n".join(lines)


def scaling_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | axis | value | samples/s | ms/step | peak memory (MB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        value = {
            "model": r.get("arch"),
            "image size": f"{r.get('img_size')} px",
            "batch": r.get("batch"),
            "clip length": f"{r.get('clip_frames')} frames",
        }[r["axis"]]
        if "error" in r:
            lines.append(f"| {label(r)} | {r['axis']} | {value} | failed: {r['error'][:80]} | | |")
            continue
        lines.append(
            f"| {label(r)} | {r['axis']} | {value} | {fmt(r['samples_per_s'])} | {fmt(r['step_ms'], 0)} | "
            f"{fmt(r['peak_memory_mb'], 0)} |"
        )
    return "\n".join(lines)


def fp32_rates(doc: dict[str, Any], machine: str | None = None) -> dict[str, float]:
    """Each model's fp32 step rate by row label, on one machine (default: the doc's; Deblurring MAE,
    the same network, falls back to MAE's)."""
    machine = machine or (doc.get("machine") or {}).get("cpu")
    rates = {
        label(r): r["samples_per_s"]
        for r in doc.get("step", [])
        if r.get("option") == "fp32" and "samples_per_s" in r and r.get("machine", machine) == machine
    }
    for same, net in (("deblur-mae", "mae"), ("deblur-convmae", "convmae")):
        if label({"method": net}) in rates:
            rates.setdefault(label({"method": same}), rates[label({"method": net})])
    return rates


def data_table(doc: dict[str, Any]) -> str:
    """Loader samples/s against the model's fp32 step rate for the same method (the need: >= 3x)."""
    model = fp32_rates(doc, loader_machine(doc))
    lines = [
        "| method | loader workers | loader samples/s | epoch start s | model samples/s (fp32 step) "
        "| loader / model |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in doc.get("loader", []):
        m = model.get(label(r))
        rate = r.get("samples_per_s")
        ratio = f"{rate / m:.1f}x" if rate and m else "-"
        lines.append(
            f"| {label(r)} | {r.get('workers', '-')} | {fmt(rate)} | {fmt(r.get('epoch_start_s'), 2)} | "
            f"{fmt(m)} | {ratio} |"
        )
    return "\n".join(lines)


def decode_table(doc: dict[str, Any]) -> str:
    dec = doc.get("decode") or {}
    lines = ["| source | how | frames/s |", "| --- | --- | --- |"]
    for key in ("mp4/workers0", "mp4/workers2", "dicom/workers0", "dicom/workers2", "store/warm"):
        if key in dec:
            src, how = key.split("/")
            how = {"workers0": "decode, 1 process", "workers2": "decode, 2 worker processes"}.get(
                how, "memory-mapped frame store, warm"
            )
            lines.append(
                f"| {src if src != 'store' else 'mp4 -> frame store'} | {how} | {fmt(dec[key]['frames_per_s'], 0)} |"
            )
    return "\n".join(lines)


def torchrun_table(doc: dict[str, Any]) -> str:
    lines = [
        "| processes | threads each | samples/s | wall s (incl. start-up) |",
        "| --- | --- | --- | --- |",
    ]
    for r in doc.get("torchrun", []):
        if "error" in r:
            lines.append(f"| {r['processes']} | failed: {r['error'][:80]} | | |")
        else:
            lines.append(
                f"| {r['processes']} | {r['threads_each']} | {fmt(r['samples_per_s'])} | {fmt(r['wall_s'], 0)} |"
            )
    return "\n".join(lines)


def findings(doc: dict[str, Any]) -> str:
    """The measured answers in words (computed from the rows, so they follow the numbers)."""
    out = []
    steps = [r for r in doc.get("step", []) if "samples_per_s" in r]
    base = fp32_rates(doc)
    model = fp32_rates(doc, loader_machine(doc))
    machines = list(dict.fromkeys(r.get("machine") for r in steps))
    per_machine = {m: fp32_rates(doc, m) for m in machines}

    def rel(r: dict[str, Any]) -> float | None:
        ref = per_machine.get(r.get("machine"), base).get(label(r))
        return r["samples_per_s"] / ref if ref else None

    def where(r: dict[str, Any]) -> str:
        return f" ({r['machine']})" if len(machines) > 1 and r.get("machine") else ""

    for option in ("bf16 autocast", "torch.compile", "no fused attention", "channels-last"):
        ratios = [
            f"{label(r)}{where(r)} {rel(r):.2f}x" for r in steps if r.get("option") == option and rel(r)
        ]
        if ratios:
            out.append(f"- {option} vs fp32: " + ", ".join(ratios) + ".")
    dense = [f"{label(r)}{where(r)} {1 / rel(r):.2f}x" for r in steps if r.get("option") == DENSE and rel(r)]
    if dense:
        out.append(
            "- ConvMAE, stages 1-2 on the visible patches only (the default) vs the reference's dense "
            "stages (same loss and gradients to float rounding, tested): " + ", ".join(dense) + "."
        )
    loader = [
        (label(r), r["workers"], r["samples_per_s"] / model[label(r)])
        for r in doc.get("loader", [])
        if r.get("samples_per_s") and model.get(label(r))
    ]
    if loader:
        worst = min(loader, key=lambda x: x[2])
        best_per = {}
        for name, _, ratio in loader:
            best_per[name] = max(best_per.get(name, 0.0), ratio)
        out.append(
            "- Per-step loading against the model (best worker count per method): "
            + ", ".join(f"{n} {v:.1f}x" for n, v in best_per.items())
            + f"; the slowest setting is {worst[0]} with {worst[1]} workers at {worst[2]:.1f}x "
            + ("(every loader keeps >= 3x ahead)." if min(best_per.values()) >= 3 else "(below the 3x goal).")
        )
    dec = doc.get("decode") or {}
    mp4 = max((dec.get(k, {}).get("frames_per_s", 0) for k in ("mp4/workers0", "mp4/workers2")), default=0)
    frames_needed = max((r.get("frames_per_s", 0) for r in steps if r.get("option") == "fp32"), default=0)
    if mp4 and frames_needed:
        store = dec.get("store/warm", {}).get("frames_per_s", 0)
        ratio = mp4 / frames_needed
        out.append(
            f"- Decoding the real mp4s (scan-area crop and resize included) runs at {mp4:.0f} frames/s, "
            f"{ratio:.1f}x the fastest frame consumer ({frames_needed:.0f} frames/s). "
            + (
                "Decoding per step would be the limit here, which is why"
                if ratio < 3
                else "Decoding per step would keep up; still,"
            )
            + " every run decodes each sampled frame once at start-up and trains from memory, and with "
            f"`data.frame_cache` once per data set: the warm store reads {store:.0f} frames/s, "
            f"{store / mp4:.0f}x decoding."
        )
    tr = {r["processes"]: r for r in doc.get("torchrun", []) if "samples_per_s" in r}
    if 1 in tr and 2 in tr:
        out.append(
            f"- torchrun, 2 processes x 1 thread vs 1 process x 2 threads: "
            f"{tr[2]['samples_per_s'] / tr[1]['samples_per_s']:.2f}x."
        )
    return "\n".join(out)


def defaults_section(doc: dict[str, Any]) -> list[str]:
    """The headline: today's path against the defaults and what a plain pre-training run logs."""
    part = doc.get("defaults")
    if not part or not part.get("rows"):
        return []
    rows = part["rows"]
    ratio = f"{rows[-1]['vs_baseline']:.2f}x" if rows[-1].get("vs_baseline") else "-"
    return [
        "### Defaults against today's path (MAE, ViT-T/16 + 128x2 decoder, 112 px, batch 32, 3 channels)\n",
        "The bare optimiser step on one repeated in-memory batch for the baseline (every speed-up off: "
        "fp32, torch's per-tensor AdamW, the fused attention kernel, glibc's allocator as the process "
        "starts: the path that ran at the reference MAE code's speed), each kept speed-up alone, and the "
        "defaults. The baseline, the tuned allocator and the defaults each run in a process of their own, "
        "as a user's run does (several models in one process keep each other's freed memory in use, which "
        "hides the allocator's page faults), one after the other, each set against the baseline of its "
        "round. The other speed-ups run side by side with a copy of the baseline in one process, taking "
        f"turns step by step ({part['steps']} steps each, the order rotating), each judged by the median "
        "ratio of its step time to the baseline copy's in the same turn; their samples/s is the lone "
        "baseline's times that ratio (the ratio is measured without the page faults a lone process "
        "takes, so it is the speed-up's own effect). *page faults/step* are a lone process's minor page "
        "faults per timed step. Then a plain `ultrassl pretrain --method mae --preset cpu-vit-t112 --batch-size 32 --set "
        "encoder.in_chans=3` (150 steps; the median `samples_per_s` it logs after step 20: data "
        "loading, logging and checkpoint writes included), set against the baseline's bare step of the "
        f"same round. {part['rounds']} rounds (git {part.get('git', '?')}); *samples/s* and *vs baseline* are "
        "medians over them; "
        "`precision` and `attention` are what the row ran with (auto measures in every round, no "
        "cache). *bf16 autocast* runs the attention as the loop now does under CPU bf16 "
        "(`ultrassl.attention`: the explicit path), *bf16 autocast, fused attention* as it did before.\n",
        defaults_table(part),
        f"\nThe plain run against the baseline's bare step: **{ratio}** (the issue's target: 1.3x)."
        + (
            f" By the run's own clock from step 20 to the end, the reconstruction pictures it draws "
            f"included (the logged figure leaves them out): {fmt(wall)} samples/s.\n"
            if (wall := rows[-1].get("wall_samples_per_s"))
            else "\n"
        ),
    ]


def defaults_others_section(doc: dict[str, Any]) -> list[str]:
    part = doc.get("defaults") or {}
    others = part.get("others")
    if not others:
        return []
    names, lone = others_names(part)
    spreads = [
        max(r["rounds_vs_baseline"][n]) / min(r["rounds_vs_baseline"][n])
        for r in others
        for n in lone
        if n in r["rounds_vs_baseline"] and min(r["rounds_vs_baseline"][n]) > 0
    ]
    return [
        "The same rows for the other methods' steps, measured the same way (CPU presets, 112 px, batch "
        "32; each cell the median ratio to the baseline over the rounds, the rounds in brackets). The "
        f"{' and '.join(f'*{n}*' for n in lone)} cells are separate processes set against the lone baseline "
        "a few seconds apart"
        + (
            f": their rounds disagree by up to {max(spreads):.1f}x here, so read them as rough"
            if spreads
            else ""
        )
        + "; the other cells are paired step by step and agree within a few %.\n",
        others_table(others, names),
        "",
    ]


def loader_machine(doc: dict[str, Any]) -> str | None:
    """The CPU the loaders ran on: their rates are set against that machine's fp32 step rows."""
    return (doc.get("part_machines", {}).get("loader") or {}).get("cpu")


def round_spread(doc: dict[str, Any]) -> str:
    """How far apart one step row's rounds are at most (the noise the median round stands against)."""
    spreads = [
        max(rs) / min(rs)
        for r in doc.get("step", [])
        if len(rs := r.get("rounds_samples_per_s") or []) > 1 and min(rs) > 0
    ]
    return f": the fastest round of one row is up to {max(spreads):.2f}x its slowest here" if spreads else ""


def compile_cost(doc: dict[str, Any]) -> str:
    """What torch.compile costs and gives in the step rows, against what bf16 autocast gives."""
    steps = [r for r in doc.get("step", []) if "samples_per_s" in r]
    compiled = [r for r in steps if r.get("option") == "torch.compile"]
    if not compiled:
        return "not measured here"
    # on the machines the compiled rows ran on (another machine's bf16 is another story)
    per_machine = {m: fp32_rates(doc, m) for m in {r.get("machine") for r in compiled}}

    def ratios(option: str) -> list[float]:
        return [
            r["samples_per_s"] / ref
            for r in steps
            if r.get("option") == option and (ref := per_machine.get(r.get("machine"), {}).get(label(r)))
        ]

    warm = [r["warmup_s"] for r in compiled if r.get("warmup_s")]
    c, b = ratios("torch.compile"), ratios("bf16 autocast")
    out = (
        f"its 2 warm-up steps, compilation included, took {min(warm):.0f}-{max(warm):.0f} s per input shape"
        if warm
        else "it compiles per input shape at start-up"
    )
    if c:
        out += f", for {min(c):.2f}-{max(c):.2f}x in fp32 in the rows above"
    if b:
        out += f", where bf16 autocast alone gives {min(b):.2f}-{max(b):.2f}x"
    return out


def section(results: Path) -> str | None:
    """The whole SPEED section, or None when no speed part has run."""
    doc = speed_doc(results)
    if doc is None:
        return None
    info = doc["machine"]
    machine = (
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['gpu'] or 'no GPU'}, native bf16: "
        f"{'yes' if info.get('native_bf16') else 'no'}; torch {info['torch']}, timm {info['timm']}, "
        f"Python {info['python']}, git {info['git']}.{elsewhere(doc)}"
    )
    commands = doc.get("commands") or {"all": doc.get("command", "")}
    dec = doc.get("decode") or {}
    parts = [
        "## Speed: training step, scaling, data pipeline, processes\n",
        "Commands (part: command): "
        + ", ".join(f"{k}: `{v.strip()}`" for k, v in commands.items())
        + f" (wall time per invocation, s: {doc.get('wall_s')}). {machine} "
        "Model rows: one subprocess each, the training loop's own optimiser step (forward, backward, "
        "optimiser, autocast) on one real batch of the method's synthetic data, median of the timed "
        "steps after 2 warm-up steps (`torch.compile` compiles during the warm-up); 2 torch threads. "
        "Every row runs in several rounds, the rows interleaved, and shows its median round (all rounds "
        f"in the JSON): the cores of this virtual machine are shared{round_spread(doc)}. Peak memory is the process's max RSS on a CPU (data set included), "
        "`max_memory_allocated` on CUDA. `--precision auto` (the default) times fp32 and bf16 on the "
        "run's first batch and keeps fp32 unless the other is more than 3% faster (this CPU "
        + ("has" if info.get("native_bf16") else "has no")
        + " native bf16). The defaults tables and this machine's step rows are current (each step row's "
        "git hash is in the JSON); the scaling, data and torchrun tables were measured at the git hash "
        "above, with fused AdamW, the fused attention kernel in every precision and glibc's allocator as "
        "started.\n",
        *defaults_section(doc),
        *defaults_others_section(doc),
        "### Training step per method and option (batch 32, CPU presets: 112 px, ViT-T/16, ConvViT-T/16 or ResNet-18; "
        "UltraMAE clips are its preset's 8 frames)\n",
        step_table(doc.get("step", [])),
        "\n### Scaling (fp32; one axis changed at a time from ViT-T/16, 112 px, batch 32; UltraMAE clips "
        "batch 8)\n",
        scaling_table(doc.get("scaling", [])),
        "\n### Data pipeline against the model\n",
        "Per-step loading (augmentation, Deblurring MAE's blur, USCL's sample pairs, collation) from the "
        "decoded frames, batches of 8, with N DataLoader workers (1 torch thread each), steady state (the first batch of "
        "each epoch, when workers start, is timed apart), against the same method's fp32 step rate above:\n",
        data_table(doc),
        f"\nStart-up decoding of {dec.get('videos', '?')} {dec.get('source', '')} videos (first 60 frames "
        f"each, contiguous; frames {dec.get('mp4/frame_hw')} px), the same frames as uncompressed DICOM "
        "cines, and the memory-mapped uint8 frame store (`data.frame_cache`) that later runs read "
        "instead of decoding:\n",
        decode_table(doc),
        "\n### 1 vs 2 processes (torchrun, gloo, CPU)\n",
        "MAE ViT-T/16 at 112 px, global batch 64 (one process with 2 threads, or 2 processes with 1 "
        "thread and batch 32 each), median samples/s over the logged windows of 30 steps:\n",
        torchrun_table(doc),
        "\n### What the numbers say (this machine)\n",
        findings(doc),
        "\nThe defaults follow these rows: `--precision auto` (measured per run, see above), fused AdamW, "
        "the tuned host allocator, fused attention on (the explicit path under bf16 on a CPU), "
        f"`torch.compile` off ({compile_cost(doc)}; the two together were not measured), channels-last on "
        "for CNN encoders. GPU rows are not in this table: no GPU was "
        "available to this project's runs; the same script writes them on a CUDA machine.",
    ]
    return "\n".join(parts)
