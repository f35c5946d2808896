"""Formatting shared by the downstream reports: numbers, mean ± std, Markdown tables, config lines,
and figures written atomically (Agg canvas, never pyplot's global state)."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ultrassl.atomic import atomic_write_bytes

DASH = "—"


def finite(x: Any) -> float | None:
    """A float, or None for None / NaN / inf / non-numbers (they print as a dash and plot as gaps)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def format_mean_std(d: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``"MEAN ± STD"`` (``digits`` decimals each); just the mean when std is missing/NaN; a dash when there is no mean."""
    if not isinstance(d, Mapping):
        return DASH
    mean = finite(d.get("mean"))
    if mean is None:
        return DASH
    std = finite(d.get("std"))
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt(x: Any, digits: int = 3) -> str:
    f = finite(x)
    return DASH if f is None else f"{f:.{digits}f}"


def fraction_key(label_fraction: float) -> str:
    """The string key of a label fraction in summaries (JSON objects need string keys): ``"0.1"``."""
    return str(float(label_fraction))


def fmt_fraction(f: float) -> str:
    return f"{f * 100:g}%"


def table_cell(x: Any) -> str:
    """A Markdown table cell: pipes escaped, newlines flattened."""
    return str(x).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(table_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(table_cell(c) for c in row) + " |" for row in rows]
    return lines


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample std (0 for one value); used where no summary dict exists (per class, curves)."""
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Dotted ``key: value`` pairs of scalars and short scalar lists, for the Markdown config section."""
    out: list[tuple[str, str]] = []
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out += flatten_config(v, key + ".")
        elif isinstance(v, (list, tuple)):
            if len(v) <= 8 and all(x is None or isinstance(x, (bool, int, float, str)) for x in v):
                out.append((key, "[" + ", ".join(str(x) for x in v) + "]"))
        elif v is None or isinstance(v, (bool, int, float, str, os.PathLike)):
            out.append((key, str(v)))
    return out


def save_figure(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.1)  # no label clipped at the edge
    return atomic_write_bytes(path, buf.getvalue())
