"""Pictures of what a method sees and predicts, drawn while it trains: the same frames and masks each
time, so the pictures of one run show the model learning and nothing else changing.

Masked-image methods draw input / masked / reconstruction / target (UltraMAE's target is the
confidence-weighted frame); USCL draws the two mixed views of each pair. A method that draws nothing
(no :attr:`~ultrassl.methods.base.PretrainMethod.preview_columns`) is left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ultrassl.config import PreviewConfig
from ultrassl.rng import preserved_rng
from ultrassl.visualize import save_reconstruction_grid

#: pictures per run when ``previews.every`` is not set (besides the start and the end)
DEFAULT_TIMES = 5


def preview_batch(dataset: Any, n: int) -> dict[str, torch.Tensor]:
    """``n`` evenly spaced items of one shape from a pre-training data set, stacked into one batch.

    Each item's augmentation (and mask seed) comes from the data set's own per-sample seed, so the
    same call gives the same batch; any global generator it might touch is restored."""
    with preserved_rng():
        items = [dataset[i] for i in dataset.preview_indices(n)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@torch.no_grad()
def preview_images(
    model: nn.Module, batch: dict[str, torch.Tensor], mean, std, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The method's pictures of ``batch`` in [0, 1] on the CPU (the normalisation undone), masks drawn
    from a generator seeded with ``seed`` (so every call masks the same patches)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    generator = torch.Generator(device=device).manual_seed(seed)
    views = model.preview(batch, generator=generator)  # type: ignore[operator]
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return {k: (v.detach().float().cpu() * s + m).clamp(0, 1) for k, v in views.items()}


class PreviewPictures:
    """A :class:`~ultrassl.training.Watcher` writing ``RUN/reconstructions/step_XXXXXX.png`` (and the
    same picture to TensorBoard). ``batch`` is None on processes other than rank 0."""

    def __init__(
        self,
        cfg: PreviewConfig,
        batch: dict[str, torch.Tensor] | None,
        run_dir: str | Path,
        columns: tuple[str, ...],
        titles: Mapping[str, str],
        mean,
        std,
        seed: int = 0,
    ):
        self.cfg, self.batch, self.out = cfg, batch, Path(run_dir) / "reconstructions"
        self.columns, self.titles, self.mean, self.std, self.seed = columns, titles, mean, std, seed

    def due(self, step: int, total_steps: int, final: bool) -> bool:
        if self.cfg.every == 0:
            return False
        every = self.cfg.every or max(1, math.ceil(total_steps / DEFAULT_TIMES))
        return final or step % every == 0

    def watch(self, model: nn.Module, step: int, log: Any) -> dict[str, float]:
        assert self.batch is not None, "pictures are drawn on rank 0 only"
        images = preview_images(model, self.batch, self.mean, self.std, self.seed)
        path = save_reconstruction_grid(
            images,
            self.out / f"step_{step:06d}.png",
            max_rows=self.cfg.n,
            columns=self.columns,
            titles=self.titles,
        )
        if log is not None and getattr(log, "tb", None) is not None:
            from PIL import Image

            log.image("reconstructions", np.asarray(Image.open(path).convert("RGB")), step)
        return {}
