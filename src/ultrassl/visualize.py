"""Reconstruction grids, to see what a masked auto-encoder has learned (training logs, reports)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: column titles for the keys :meth:`ultrassl.methods.mae.MAE.reconstruct` returns
TITLES = {
    "input": "input",
    "masked_input": "masked",
    "reconstruction": "reconstruction",
    "prediction": "prediction",
    "target": "target",
    "view1": "view 1 (mixed)",
    "view2": "view 2 (mixed)",
}
DEFAULT_COLUMNS = ("input", "masked_input", "reconstruction", "target")


def save_reconstruction_grid(
    images: dict[str, torch.Tensor],
    path: str | Path,
    max_rows: int = 8,
    columns: tuple[str, ...] | None = None,
    titles: Mapping[str, str] | None = None,
) -> Path:
    """Write a PNG: one row per sample, one column per image kind (``[B, C, H, W]`` in [0, 1]).

    ``columns`` defaults to input / masked / reconstruction / target when present, else every key in
    ``images``; ``titles`` names columns beyond :data:`TITLES`. Uses the Agg canvas directly, so it never touches pyplot's global backend or state.
    """
    if columns is None:
        columns = tuple(k for k in DEFAULT_COLUMNS if k in images) or tuple(images)
    missing = [k for k in columns if k not in images]
    if missing or not columns:
        raise ValueError(f"no images for columns {missing or columns}; got keys {list(images)}")
    rows = min(max_rows, min(int(images[k].shape[0]) for k in columns))
    h, w = images[columns[0]].shape[-2:]
    cell = 2.0
    fig = Figure(figsize=(cell * len(columns), cell * rows * h / w + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, len(columns), squeeze=False)
    for j, key in enumerate(columns):
        batch = images[key].detach().float().cpu().clamp(0, 1)
        for i in range(rows):
            ax = axes[i][j]
            img = batch[i]
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
            else:
                ax.imshow(img[:3].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title({**TITLES, **(titles or {})}.get(key, key), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
