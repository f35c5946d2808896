"""The REAL_DATA section of docs/benchmarks.md and its few-label figure, from ``bench/real_data.py``'s
JSON (its ``summary`` and ``acceptance`` are computed there, with the figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from benchlib import HYBRID_VS_VIT, ROOT, ROW_ORDER, SCRATCH_ONLY, paired_diff, read_results, scratch_of
from benchlib import ROW_NAMES as NAMES

#: the few-label figure (next to the page)
PLOT = ROOT / "docs" / "real_data_fewlabel.png"
#: the commit of the scan-area detector that fits fans (the one before it cut off part of the area);
#: ``bench/real_data.py`` records ``scan_area`` in its config since shortly after, so a file whose config
#: lacks the key was made with the earlier detector
FAN_FIT = "25c8959"


def section(results: Path) -> str | None:
    doc = read_results(results / "real_data.json")
    return markdown(doc) if doc else None


def figures(results: Path, docs: Path) -> list[Path]:
    """Draw the few-label figure from the JSON into ``docs``; the paths written."""
    doc = read_results(results / "real_data.json")
    path = plot_fewlabel(doc.get("summary") or {}, docs / PLOT.name) if doc else None
    return [path] if path else []


def pm(s: dict[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    if s["mean"] is None:
        return "-"
    if s.get("n", 2) < 2:  # one fold: no spread to report
        return f"{s['mean'] * scale:.{digits}f}"
    return f"{s['mean'] * scale:.{digits}f} ± {s['std'] * scale:.{digits}f}"


def seg_rows_in_order(table: dict[str, Any]) -> list[str]:
    """HC18 rows ``encoder/head`` in ``ROW_ORDER`` (grouped by architecture, scratch first)."""
    rank = {name: i for i, name in enumerate(ROW_ORDER)}
    return sorted(table, key=lambda key: (rank.get(key.split("/")[0], len(ROW_ORDER)), key))


def paired_dice_gap(table: dict[str, Any], key: str) -> tuple[float | None, int]:
    """Mean Dice difference (points) of ``encoder/head`` over scratch with the same architecture and
    head, on the folds both have run; (None, 0) for the scratch rows themselves."""
    name, head = key.split("/")
    if name in SCRATCH_ONLY:
        return None, 0
    return paired_diff(
        table.get(key, {}), table.get(f"{scratch_of(name)}/{head}", {}), lambda fold: fold["dice"]
    )


def hybrid_sentence(acc: dict[str, Any], task: str) -> list[str]:
    rows = acc.get("hybrid_vs_vit") or {}
    parts = []
    for hybrid, row in rows.items():
        for key, per in row.items():
            if not key.startswith(task + "/"):
                continue
            vals = list(per.values())
            folds = ", ".join(f"{v:+.1f}" for v in vals)
            parts.append(
                f"{NAMES[hybrid]} vs {NAMES[HYBRID_VS_VIT[hybrid]]} ({key.split('/')[1]}): "
                f"mean {float(np.mean(vals)):+.1f}, per fold {folds}"
            )
    if not parts:
        return []
    return ["", "Hybrid vs plain ViT (points, paired by fold): " + "; ".join(parts) + "."]


def outdated_full_rows(doc: dict[str, Any]) -> list[str]:
    """A warning when the file's ``full`` rows come from fine-tuning code of an earlier revision (its
    config records none, or an older one)."""
    from ultrassl.finetune.classify import FINETUNE_REVISION

    revision = (doc.get("config") or {}).get("finetune_revision", 1)
    full = any(
        isinstance(modes, dict) and "full" in modes  # fewlabel also holds "best" and "baseline" names
        for part in ("pocus", "fewlabel")
        for modes in (doc.get(part) or {}).values()
    )
    if not full or revision >= FINETUNE_REVISION:
        return []
    return [
        f"**Full fine-tuning: an earlier revision ({revision}).** The `full` rows were measured before "
        f"fine-tuning revision {FINETUNE_REVISION}, when `--mode full` ignored its layer-wise lr decay "
        "and trained every layer at the head's learning rate; read them as a weaker recipe than the "
        "guide describes. The [benchmark suite](benchmark-results.md) measures fine-tuning anew.",
        "",
    ]


def plot_fewlabel(summary: dict[str, Any], path: Path) -> Path | None:
    fl = summary.get("fewlabel") or {}
    if not fl:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    modes = sorted({mode for v in fl.values() for mode in v})
    fig = Figure(figsize=(4.2 * len(modes), 3.4), dpi=110)
    FigureCanvasAgg(fig)
    for i, mode in enumerate(modes):
        ax = fig.add_subplot(1, len(modes), i + 1)
        for name, by_mode in fl.items():
            pts = sorted((float(f), s) for f, s in by_mode.get(mode, {}).items() if s["mean"] is not None)
            if not pts:
                continue
            x = [100 * f for f, _ in pts]
            y = np.array([100 * s["mean"] for _, s in pts])
            e = np.array([100 * s["std"] for _, s in pts])
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=NAMES.get(name, name))
        ax.set_xscale("log")
        ax.set_xticks([10, 25, 50, 100], labels=["10", "25", "50", "100"])
        ax.set_xlabel("training patients with labels (%)")
        ax.set_ylabel("frame accuracy (%)")
        ax.set_title(f"POCUS few-label ({mode})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def markdown(doc: dict[str, Any]) -> str:
    summary = doc.get("summary") or {}
    cfg = doc.get("config", {})
    mach = doc.get("machine", {})
    lines = [
        "## Real data: POCUS classification, HC18 segmentation",
        "",
        "Commands (their results merge into one file; the budget below is the same for all): "
        + ", ".join(f"`{c}`" for c in doc.get("commands") or [doc.get("command", "")]),
        "",
        "Machines (in the order the commands ran): "
        + "; ".join(
            f"{m.get('cpu')}, {m.get('cores')} cores, {m.get('gpu') or 'no GPU'}, torch {m.get('torch')}, "
            f"timm {m.get('timm')}, Python {m.get('python')}, git {m.get('git')}"
            + {True: ", bf16 autocast", False: ", fp32", None: ""}[m.get("native_bf16")]
            for m in doc.get("machines") or [mach]
        )
        + " (`--precision auto`: bf16 autocast where the CPU computes bf16 natively). Step counts are fixed "
        "by the calibration (one per data set and method, on the machine that first ran it), so every "
        f"fold trains the same number of steps whichever machine runs it. Total wall time {sum(s['seconds'] for s in doc.get('steps', {}).values()) / 60:.0f} min.",
        "",
        f"Budgets: pre-training {cfg.get('pretrain_minutes')} min per method per fold (calibrated to a step "
        f"count per method, see `calibration` in the JSON), {cfg.get('img_size')} px, 1 channel; "
        f"fine-tuning {cfg.get('finetune_epochs')} epochs (POCUS), {cfg.get('seg_epochs')} epochs (HC18); "
        f"seed {cfg.get('seed')}; test folds from the data's own `fold` column (each row says how many "
        "it has run; a resumed or extended run adds folds). Pre-training for test fold k sees only "
        "the dev files of the other folds (no labels, except USCL's cross-entropy on the training groups). "
        "Raw numbers: `bench/results/real_data.json`.",
        "",
    ]
    old_crop = bool(doc.get("pocus") or doc.get("hc18")) and "scan_area" not in cfg
    if old_crop:
        lines += [
            "**Scan area: not the current detector.** These rows were measured with the scan-area detector "
            f"used before the fan fit (which commit {FAN_FIT} brought; the file's config records no "
            "`scan_area`), which cut off part of the scan area. The [crop section](#what-the-scan-area-crop-does-to-the-models-pocus) "
            "re-runs Deblurring MAE and a random ViT-T on POCUS with the current detector and with the crop "
            "off; the other rows have not been re-run.",
            "",
        ]
    lines += outdated_full_rows(doc)
    pocus = summary.get("pocus") or {}
    if pocus:
        lines += [
            "### POCUS (convex; covid / pneumonia / regular; 3 Hz, ≤ 30 frames per video)",
            "",
            "Mean ± std over folds (%; a single value where one fold has run): frame-level accuracy, balanced accuracy, macro-F1, and video-level "
            "accuracy (mean probability over a video's frames).",
            "",
            "| method | mode | accuracy | balanced acc. | macro-F1 | video accuracy | folds |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name in ROW_ORDER:
            for mode in ("linear", "partial", "full"):
                s = pocus.get(name, {}).get(mode)
                if not s:
                    continue
                fr, vi = s["frame"], s["video"]
                lines.append(
                    f"| {NAMES[name]} | {mode} | {pm(fr['accuracy'])} | {pm(fr['balanced_accuracy'])} | "
                    f"{pm(fr['macro_f1'])} | {pm(vi['accuracy'])} | {fr['accuracy']['n']} |"
                )
        acc = doc.get("acceptance") or {}
        gaps = acc.get("gap_points_vs_scratch") or {}
        if gaps:
            paired = acc.get("paired_folds") or {}
            parts = "; ".join(
                f"{NAMES[m]} "
                + ", ".join(
                    f"{mode} {v:+.1f} ({paired.get(m, {}).get(mode, '?')} folds)" for mode, v in g.items()
                )
                for m, g in gaps.items()
            )
            lines += [
                "",
                "Accuracy gain over scratch of the same architecture, points, paired over the folds both ran"
                + (" (the earlier scan-area detector)" if old_crop else "")
                + f": {parts}. Acceptance (≥ 10 points linear and better fine-tuned): "
                f"**{'holds' if acc.get('holds') else 'does not hold (yet)'}**.",
            ]
        lines += hybrid_sentence(acc, "pocus")
        lines.append("")
    hc = summary.get("hc18") or {}
    if hc:
        lines += [
            "### HC18 fetal head segmentation",
            "",
            "Dice and IoU per image at the mask's resolution, mean ± std over folds (%); the Dice gain over "
            "scratch of the same encoder architecture and head is paired over the folds both ran (points).",
            "",
            "| encoder | head | Dice | IoU | Dice gain vs scratch | folds |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for key in seg_rows_in_order(hc):
            s, (name, head) = hc[key], key.split("/")
            gain, n = paired_dice_gap(doc.get("hc18", {}), key)
            cell = f"{gain:+.1f} ({n} fold{'s' if n > 1 else ''})" if n else "-"
            lines.append(
                f"| {NAMES.get(name, name)} | {head} | {pm(s['dice'])} | {pm(s['iou'])} | {cell} | "
                f"{s['dice']['n']} |"
            )
        lines += hybrid_sentence(doc.get("acceptance") or {}, "hc18")
        lines.append("")
    fl = summary.get("fewlabel") or {}
    if fl:
        lines += [
            "### Few-label curve (POCUS)",
            "",
            "Frame accuracy (%) with 10 / 25 / 50 / 100 % of the training patients' labels (sub-sampled per "
            "class by patient, nested), best pre-trained method vs scratch of its architecture; "
            "pre-training itself is unchanged.",
            "",
            "| method | mode | " + " | ".join(f"{100 * f:g} %" for f in (0.1, 0.25, 0.5, 1.0)) + " |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, by_mode in fl.items():
            for mode, by_f in by_mode.items():
                cells = [pm(by_f[k]) if k in by_f else "-" for k in ("0.1", "0.25", "0.5", "1")]
                lines.append(f"| {NAMES.get(name, name)} | {mode} | " + " | ".join(cells) + " |")
        lines += ["", f"![few-label curve]({PLOT.name})"]  # drawn from the same figures (``figures``)
        lines.append("")
    steps = doc.get("steps", {})
    if steps:
        stages: dict[str, float] = {}
        for name, s in steps.items():
            stage = "/".join(name.split("/")[:2])
            stages[stage] = stages.get(stage, 0.0) + s["seconds"]
        lines += [
            "Wall time per stage (min): "
            + ", ".join(f"{k} {v / 60:.1f}" for k, v in sorted(stages.items()))
            + ".",
            "",
        ]
    return "\n".join(lines).rstrip()
