"""What a run leaves behind for a person to read when it ends or stops: ``RUN/curves.png`` (loss,
learning rate, probe score, throughput over the steps) and a one-page ``RUN/summary.md``."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ultrassl.atomic import atomic_write_bytes, atomic_write_text

#: panel title -> the metrics.csv columns drawn in it
PANELS = {
    "loss": ("loss", "val_loss"),
    "learning rate": ("lr",),
    "probe score (balanced accuracy, held-out groups)": ("probe_knn", "probe_linear"),
    "throughput (samples/s)": ("samples_per_s",),
}


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """metrics.csv as rows of the numbers they hold (empty cells left out)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return []
    rows = []
    with path.open() as f:
        for row in csv.DictReader(f):
            values = {}
            for k, v in row.items():
                try:
                    values[k] = float(v)
                except (TypeError, ValueError):
                    continue
            rows.append(values)
    return rows


def _series(rows: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if key in r and "step" in r and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def write_curves(run_dir: str | Path, best: Mapping[str, Any] | None = None) -> Path | None:
    """``RUN/curves.png``: one panel per quantity that the run logged; the best checkpoint's step is
    marked. Returns None when metrics.csv holds nothing to draw."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    panels = [(t, [k for k in keys if _series(rows, k)[0]]) for t, keys in PANELS.items()]
    panels = [(t, keys) for t, keys in panels if keys]
    if not panels:
        return None
    fig = Figure(figsize=(10, 2.4 * math.ceil(len(panels) / 2) + 0.3), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(math.ceil(len(panels) / 2), 2, squeeze=False).ravel()
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            x, y = _series(rows, key)
            ax.plot(x, y, marker="o" if len(x) <= 30 else None, markersize=3, label=key)
        if best is not None and best.get("key") in keys:
            ax.axvline(
                best["step"],
                color="tab:red",
                linestyle="--",
                linewidth=1,
                label=f"best.pt (step {best['step']})",
            )
        if title == "loss" and all(v > 0 for k in keys for v in _series(rows, k)[1]):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    path = run_dir / "curves.png"
    atomic_write_bytes(path, buf.getvalue())
    return path


#: what best.pt was chosen by, in words
WHY = {
    "probe_knn": "highest k-NN balanced accuracy of the online probe on its held-out groups",
    "probe_linear": "highest linear-probe balanced accuracy of the online probe on its held-out groups",
    "val_loss": "lowest loss on the held-out validation set",
}


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def write_summary(
    run_dir: str | Path,
    config: Mapping[str, Any],
    *,
    steps: int | None,
    total_steps: int | None = None,
    seconds: float | None,
    stopped_by: str,
    best: Mapping[str, Any] | None,
) -> Path:
    """``RUN/summary.md``: config highlights, steps, time, how it stopped, best checkpoint and why."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    last = {k: v for r in rows for k, v in r.items()}  # the newest value of each column
    highlights = [
        ("method", "method"),
        ("encoder", "encoder.arch"),
        ("input size", "encoder.img_size"),
        ("channels", "encoder.in_chans"),
        ("batch size (per process)", "train.batch_size"),
        ("base lr", "optim.base_lr"),
        ("precision", "train.precision"),
        ("seed", "train.seed"),
        ("data", "data.manifest"),
        ("probe data", "probe.data"),
    ]
    lines = [f"# Pre-training run `{run_dir.name}`", "", "| setting | value |", "| --- | --- |"]
    lines += [
        f"| {name} | {_get(config, key)} |" for name, key in highlights if _get(config, key) not in (None, "")
    ]
    done = "?" if steps is None else str(steps)
    lines += [
        "",
        f"**Steps**: {done}" + (f" of {total_steps}" if total_steps else "") + f"; stopped by: {stopped_by}.",
        f"**Time**: {seconds:.0f} s." if seconds is not None else "**Time**: unknown.",
    ]
    if "loss" in last:
        lines.append(f"**Last logged loss**: {last['loss']:.4f}.")
    probe_rows = [r for r in rows if "probe_knn" in r]
    if probe_rows:
        first, newest = probe_rows[0], probe_rows[-1]
        lines.append(
            f"**Probe (k-NN)**: {first['probe_knn']:.3f} at step {first['step']:.0f} -> {newest['probe_knn']:.3f} "
            f"at step {newest['step']:.0f} ({len(probe_rows)} probes, {sum(r.get('probe_s', 0) for r in probe_rows):.1f} s in all)."
        )
    lines.append("")
    if best:
        why = WHY.get(str(best.get("key")), f"best {best.get('key')}")
        lines.append(
            f"**Best checkpoint**: `checkpoints/best.pt`, step {best['step']}: {best['key']} = {best['value']:.4f} ({why}). "
            "Export it with `ultrassl export RUN -o DIR --checkpoint best`."
        )
    else:
        lines.append(
            "**Best checkpoint**: none (pass `--probe-data LABELLED.csv` to keep one by the online probe)."
        )
    files = ["checkpoints/last.pt", "metrics.csv", "config.yaml", "run_info.json"]
    files += [
        name
        for name in ("curves.png", "reconstructions/", "tensorboard/")
        if (run_dir / name.rstrip("/")).exists()
    ]
    lines += ["", "Files: " + ", ".join(f"`{f}`" for f in files) + ".", ""]
    path = run_dir / "summary.md"
    atomic_write_text(path, "\n".join(lines))
    return path
